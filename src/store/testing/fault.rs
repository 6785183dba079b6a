//! A store wrapper that injects faults and counts requests: latency, stalls, errors, hidden
//! shares, flipped bytes and wrong lengths. Shipped as a real module (not test-only) so the
//! fault tests, benchmarks and users' own tests can use it.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;

use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::store::{ShareStore, SpooledShare, StoreError};

/// Which faults to inject. The default injects none.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Shares that are listed as absent and read as not found.
    pub hidden: HashSet<ShareNum>,
    /// Delay added to every call.
    pub latency: Option<Duration>,
    /// Every call waits forever (like a SIGSTOPped server).
    pub stall: bool,
    /// Every call fails with this message.
    pub error: Option<String>,
    /// Flip one bit in every buffer read (at a position derived from this seed).
    pub flip_seed: Option<u64>,
    /// Return every buffer one byte short.
    pub short_reads: bool,
    /// Reads (only) wait forever: the server lists its shares, then stops answering.
    pub stall_reads: bool,
    /// Report the store as across a network (readers then batch and read further ahead).
    pub remote: bool,
}

/// Counters of what was asked of the store.
#[derive(Debug, Default)]
pub struct Counters {
    /// `list` calls.
    pub lists: AtomicU64,
    /// `read` calls.
    pub reads: AtomicU64,
    /// Bytes asked for by `read` calls.
    pub bytes_read: AtomicU64,
    /// `report_corrupt` calls.
    pub corruption_reports: AtomicU64,
}

/// One logged read: the share and the ranges asked for.
pub type LoggedRead = (ShareNum, Vec<Range<u64>>);

/// Wraps a store and misbehaves on request.
pub struct FaultyStore {
    inner: Arc<dyn ShareStore>,
    faults: Mutex<Faults>,
    counters: Counters,
    log: Mutex<Option<Vec<LoggedRead>>>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FaultyStore {
    /// Wraps `inner` with no faults.
    pub fn new(inner: Arc<dyn ShareStore>) -> FaultyStore {
        FaultyStore {
            inner,
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
            log: Mutex::new(None),
        }
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Starts recording every read's share and ranges.
    pub fn start_log(&self) {
        *self.log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Stops recording and returns the reads recorded.
    pub fn take_log(&self) -> Vec<LoggedRead> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn before_call(&self, faults: &Faults) -> Result<(), StoreError> {
        if faults.stall {
            futures::future::pending::<()>().await;
        }
        if let Some(latency) = faults.latency {
            tokio::time::sleep(latency).await;
        }
        match &faults.error {
            Some(message) => Err(StoreError::Io {
                context: "injected fault",
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn flip(buf: Bytes, seed: u64) -> Bytes {
    if buf.is_empty() {
        return buf;
    }
    let mut owned = BytesMut::from(&buf[..]);
    let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ buf.len() as u64;
    let at = (mix % buf.len() as u64) as usize;
    owned[at] ^= 1 << (mix % 8);
    owned.freeze()
}

impl ShareStore for FaultyStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn list(&self, si: StorageIndex) -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>> {
        Box::pin(async move {
            self.counters.lists.fetch_add(1, Ordering::Relaxed);
            let faults = self.faults();
            self.before_call(&faults).await?;
            let mut shares = self.inner.list(si).await?;
            shares.retain(|s| !faults.hidden.contains(s));
            Ok(shares)
        })
    }

    fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>> {
        Box::pin(async move {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            let asked: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
            self.counters.bytes_read.fetch_add(asked, Ordering::Relaxed);
            if let Some(log) = self.log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                log.push((share, ranges.clone()));
            }
            let faults = self.faults();
            self.before_call(&faults).await?;
            if faults.stall_reads {
                futures::future::pending::<()>().await;
            }
            if faults.hidden.contains(&share) {
                return Err(StoreError::NotFound);
            }
            let mut parts = self.inner.read(si, share, ranges).await?;
            if let Some(seed) = faults.flip_seed {
                parts = parts.into_iter().map(|p| flip(p, seed)).collect();
            }
            if faults.short_reads {
                parts = parts
                    .into_iter()
                    .map(|p| p.slice(..p.len().saturating_sub(1)))
                    .collect();
            }
            Ok(parts)
        })
    }

    fn write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let faults = self.faults();
            self.before_call(&faults).await?;
            self.inner.write(si, share, spool).await
        })
    }

    fn abandon(&self, si: StorageIndex, share: ShareNum) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.abandon(si, share)
    }

    fn replace_corrupt(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let faults = self.faults();
            self.before_call(&faults).await?;
            self.inner.replace_corrupt(si, share, spool).await
        })
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        self.inner.spool_dir()
    }

    fn is_remote(&self) -> bool {
        self.faults().remote || self.inner.is_remote()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let faults = self.faults();
            self.before_call(&faults).await?;
            self.inner.check().await
        })
    }

    fn report_corrupt(
        &self,
        si: StorageIndex,
        share: ShareNum,
        reason: String,
    ) -> BoxFuture<'_, ()> {
        self.counters
            .corruption_reports
            .fetch_add(1, Ordering::Relaxed);
        self.inner.report_corrupt(si, share, reason)
    }
}
