//! The library's front door as a program uses it: `Vault` over real directories, every kind
//! of put source, every kind of range, and the runtimes it runs on.

use futures::TryStreamExt;
use segvault::{GetRange, Grid, PutOptions, PutSource, Vault};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn round_trip(vault: &Vault, source: PutSource, expected: &[u8]) {
    let cap = vault.put(source).await.expect("put");
    let file = vault.open(&cap).await.expect("open");
    let len = expected.len() as u64;
    assert_eq!(file.len(), len);
    let cases: Vec<(GetRange, std::ops::Range<usize>)> = vec![
        (GetRange::from(..), 0..expected.len()),
        (GetRange::at(0, 1), 0..1.min(expected.len())),
        (
            GetRange::from(len.saturating_sub(1)..),
            expected.len().saturating_sub(1)..expected.len(),
        ),
        (
            GetRange::Suffix(70_000),
            expected.len().saturating_sub(70_000)..expected.len(),
        ),
        (GetRange::Suffix(u64::MAX), 0..expected.len()),
        (
            GetRange::from(65_530..=65_541),
            65_530.min(expected.len())..65_542.min(expected.len()),
        ),
        (
            GetRange::from(len..len + 10),
            expected.len()..expected.len(),
        ),
        (GetRange::from(5..5), 0..0),
    ];
    for (range, want) in cases {
        let read = file.read(range.clone()).await.expect("read");
        assert_eq!(&read[..], &expected[want.clone()], "read {range:?}");
        let chunks: Vec<bytes::Bytes> = file
            .stream(range.clone())
            .try_collect()
            .await
            .expect("stream");
        let streamed = chunks.concat();
        assert_eq!(&streamed[..], &expected[want], "stream {range:?}");
    }
    let report = vault.verify(&cap.verify_cap()).await;
    assert!(report.is_healthy(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_and_every_range_reads_back_exactly() {
    let root = tempfile::tempdir().unwrap();
    let grid = Grid::directories((0..5).map(|i| root.path().join(format!("d{i}")))).unwrap();
    let vault = Vault::new(grid).put_options(PutOptions::new(3, 5));
    let bytes = data(300_000);
    round_trip(&vault, PutSource::from(bytes.clone()), &bytes).await;
    round_trip(&vault, PutSource::from(&bytes[..1]), &bytes[..1]).await;
    round_trip(&vault, PutSource::from(Vec::new()), &[]).await;
    let path = root.path().join("input");
    std::fs::write(&path, &bytes).unwrap();
    round_trip(&vault, PutSource::from(path.as_path()), &bytes).await;
    round_trip(
        &vault,
        PutSource::reader(std::io::Cursor::new(bytes.clone())),
        &bytes,
    )
    .await;
    round_trip(
        &vault,
        PutSource::blocking_reader(std::io::Cursor::new(bytes.clone())),
        &bytes,
    )
    .await;
}

#[test]
fn a_current_thread_runtime_puts_and_reads_an_async_source() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let vault = Vault::new(Grid::embedded(root.path()).unwrap());
        let bytes = data(200_000);
        let (mut writer, reader) = tokio::io::duplex(4096);
        let feed = {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                tokio::io::AsyncWriteExt::write_all(&mut writer, &bytes)
                    .await
                    .unwrap();
            })
        };
        let cap = vault.put(PutSource::reader(reader)).await.expect("put");
        feed.await.unwrap();
        let read = vault.read(&cap, GetRange::Offset(1)).await.expect("read");
        assert_eq!(&read[..], &bytes[1..]);
    });
}
