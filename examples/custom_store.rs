//! A share store of your own: shares kept in memory. It passes the conformance suite every
//! backend passes (the `testing` feature), then holds a file 2-of-3.
//!
//! `cargo run --example custom_store --features testing`

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use segvault::core::geometry::ShareNum;
use segvault::store::{ShareStore, SpooledShare, StoreError, validate_ranges};
use segvault::{GetRange, Grid, PutOptions, StorageIndex, Vault};

/// Shares in a map. Only ciphertext and hashes ever reach a store.
#[derive(Debug, Default)]
struct MemoryStore {
    name: String,
    shares: Mutex<HashMap<(StorageIndex, ShareNum), Bytes>>,
}

impl MemoryStore {
    fn new(name: &str) -> MemoryStore {
        MemoryStore {
            name: name.to_owned(),
            ..MemoryStore::default()
        }
    }

    fn share(&self, si: StorageIndex, share: ShareNum) -> Option<Bytes> {
        self.shares.lock().unwrap().get(&(si, share)).cloned()
    }
}

impl ShareStore for MemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn list(&self, si: StorageIndex) -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>> {
        let mut found: Vec<ShareNum> = (self.shares.lock().unwrap().keys())
            .filter(|(s, _)| *s == si)
            .map(|(_, share)| *share)
            .collect();
        found.sort_unstable();
        Box::pin(async move { Ok(found) })
    }

    fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>> {
        Box::pin(async move {
            validate_ranges(&ranges)?;
            let bytes = self.share(si, share).ok_or(StoreError::NotFound)?;
            let len = bytes.len() as u64;
            ranges
                .into_iter()
                .map(|r| match r.end <= len {
                    true => Ok(bytes.slice(r.start as usize..r.end as usize)),
                    false => Err(StoreError::OutOfBounds {
                        start: r.start,
                        end: r.end,
                        len,
                    }),
                })
                .collect()
        })
    }

    fn write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let bytes = Bytes::from(
                std::fs::read(spool.path()).map_err(|e| StoreError::io("reading the spool", e))?,
            );
            let mut shares = self.shares.lock().unwrap();
            match shares.get(&(si, share)) {
                // Shares are immutable: the same bytes again are fine, others are not.
                Some(existing) if *existing != bytes => Err(StoreError::Conflict {
                    storage_index: si,
                    share,
                }),
                Some(_) => Ok(()),
                None => {
                    shares.insert((si, share), bytes);
                    Ok(())
                }
            }
        })
    }

    /// An upload cancelled before its cap was handed out takes its shares back. Every share
    /// in this map was written through this handle, so any may go (a shared store would have
    /// to remember who wrote what, as `DirectoryStore` does).
    fn abandon(&self, si: StorageIndex, share: ShareNum) -> BoxFuture<'_, Result<(), StoreError>> {
        self.shares.lock().unwrap().remove(&(si, share));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    segvault::store::testing::conformance::run(&MemoryStore::new("conformance")).await;
    println!("MemoryStore passes the ShareStore conformance suite");

    let stores: Vec<Arc<MemoryStore>> = ["a", "b", "c"].map(MemoryStore::new).map(Arc::new).into();
    let grid = Grid::new(
        stores
            .iter()
            .map(|s| s.clone() as Arc<dyn ShareStore>)
            .collect(),
    );
    let vault = Vault::new(grid.clone()).put_options(PutOptions::new(2, 3));
    let cap = vault
        .put(&b"shares in memory, any two of three"[..])
        .await?;

    // Lose one store: any two still read every byte.
    stores[0].shares.lock().unwrap().clear();
    let reader = Vault::new(grid);
    let tail = reader.read(&cap, GetRange::Offset(18)).await?;
    assert_eq!(&tail[..], b"any two of three");
    println!(
        "read {:?} with one store of three emptied",
        String::from_utf8_lossy(&tail)
    );
    Ok(())
}
