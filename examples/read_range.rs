//! Store a file on a grid of four directories (any two of which restore it) and read byte
//! ranges of it back: a bounded range, the tail, and a stream.
//!
//! `cargo run --example read_range [FILE]` (without FILE, it stores 1 MiB of its own)

use futures::TryStreamExt;
use segvault::{GetRange, Grid, PutOptions, Vault};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let grid = Grid::directories((0..4).map(|i| root.path().join(format!("disk{i}"))))?;
    let vault = Vault::new(grid).put_options(PutOptions::new(2, 4));

    let data: Vec<u8> = match std::env::args_os().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => (0..1u32 << 20).map(|i| (i % 251) as u8).collect(),
    };
    let cap = vault.put(data.clone()).await?;
    println!("stored {} bytes as {}", data.len(), cap.storage_index());

    let file = vault.open(&cap).await?;
    let middle = file.read(GetRange::at(1000, 100)).await?;
    assert_eq!(&middle[..], &data[1000..1100]);
    let tail = file.read(GetRange::Suffix(10)).await?;
    assert_eq!(&tail[..], &data[data.len().saturating_sub(10)..]);

    // A stream keeps memory at its read-ahead window, however long the range.
    let mut streamed = 0;
    let mut chunks = file.stream(..);
    while let Some(chunk) = chunks.try_next().await? {
        streamed += chunk.len();
    }
    assert_eq!(streamed, data.len());
    println!(
        "read 100 bytes at 1000, the last 10, and all {streamed} streamed: every byte verified"
    );
    Ok(())
}
