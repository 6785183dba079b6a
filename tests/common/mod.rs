//! Shared test fixtures: a grid of fault-injecting directory stores with one file on it.

#![allow(dead_code)]

pub mod grid;
pub mod http;
pub mod http2;
pub mod process;
pub mod s3;
pub mod tls;
pub mod vault;

use std::sync::Arc;

use segvault::core::geometry::ShareNum;
use segvault::store::testing::fault::{Faults, FaultyStore};
use segvault::store::{DirectoryStore, ShareStore};
use segvault::{Grid, PutOptions, PutSource, ReadCap};

/// Every file under `dir`, recursively, sorted (none if it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `n` directory stores wrapped in fault injectors, and one file uploaded to them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub stores: Vec<Arc<FaultyStore>>,
    pub grid: Grid,
    pub plaintext: Vec<u8>,
    pub cap: ReadCap,
}

/// `k`-of-`n` options with a segment size below the upload minimum: small segments exercise
/// segment edges cheaply.
pub fn small_segments(k: u16, n: u16, segment_size: u64) -> PutOptions {
    let mut options = PutOptions::new(k, n).with_segment_size(segment_size);
    options.unchecked_segment_size = true;
    options
}

impl Fixture {
    pub async fn new(size: usize, segment_size: u64, k: u16, n: u16) -> Fixture {
        Fixture::with_options(size, small_segments(k, n, segment_size)).await
    }

    pub async fn with_options(size: usize, options: PutOptions) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores: Vec<Arc<FaultyStore>> = (0..options.n)
            .map(|i| {
                let store =
                    DirectoryStore::open(dir.path().join(format!("server-{i:02}"))).expect("store");
                Arc::new(FaultyStore::new(Arc::new(store)))
            })
            .collect();
        let grid = Grid::new(
            stores
                .iter()
                .map(|s| s.clone() as Arc<dyn ShareStore>)
                .collect(),
        );
        let plaintext = random_bytes(
            size,
            size as u64 ^ u64::from(options.k) << 32 ^ u64::from(options.n) << 48,
        );
        let cap = segvault::upload::put(&grid, PutSource::Bytes(plaintext.clone()), &options)
            .await
            .expect("put");
        Fixture {
            dir,
            stores,
            grid,
            plaintext,
            cap,
        }
    }

    /// Applies `faults` to every store.
    pub fn set_faults(&self, faults: &Faults) {
        for store in &self.stores {
            store.set_faults(faults.clone());
        }
    }

    /// Faults that hide shares `0..h` everywhere, where `h` is as many primaries as can go
    /// while k shares remain, so reads must decode from parity (add others to them before
    /// [`set_faults`](Self::set_faults)). `None` when n = k.
    pub fn parity_faults(&self) -> Option<Faults> {
        let g = self.cap.geometry();
        let hide = usize::from(g.k().min(g.n() - g.k()));
        if hide == 0 {
            return None;
        }
        Some(Faults {
            hidden: (0..hide).map(|s| ShareNum(s as u8)).collect(),
            ..Faults::default()
        })
    }

    /// The store holding `share`.
    pub async fn store_holding(&self, share: ShareNum) -> &Arc<FaultyStore> {
        for store in &self.stores {
            if store
                .list(self.cap.storage_index())
                .await
                .expect("list")
                .contains(&share)
            {
                return store;
            }
        }
        panic!("no store holds share {share}");
    }

    /// Total `read` requests across all stores.
    pub fn reads(&self) -> u64 {
        self.stores
            .iter()
            .map(|s| {
                s.counters()
                    .reads
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// The plaintext a read of `len` bytes at `offset` must return.
    pub fn expected(&self, offset: u64, len: u64) -> &[u8] {
        let size = self.plaintext.len() as u64;
        let start = offset.min(size);
        let end = offset.saturating_add(len).min(size).max(start);
        &self.plaintext[start as usize..end as usize]
    }
}
