//! A share store in a local directory:
//!
//! ```text
//! <root>/shares/<first 2 chars of SI>/<SI in base32>/<share number>
//! <root>/tmp/spool-*.part        shares being built (renamed into place when complete)
//! ```
//!
//! Paths are built only from a typed storage index (26 base32 characters) and a share
//! number (0-255), so no request can name a path outside the root. Writes go to `tmp/`,
//! are fsynced, renamed into place without overwriting, and the directory is fsynced: a
//! crash leaves either the whole share or none of it under `shares/`.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use lru::LruCache;

mod ledger;
mod write;

pub use ledger::UploadOwner;
use ledger::{InFlight, Ledger, ShareKey};

use super::{ShareStore, SpooledShare, StoreError, parse_share_name, validate_ranges};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// Open share files kept for reuse.
const OPEN_FILES: usize = 128;

/// An open share: the file, its length, and when (ms since the store opened) it was last
/// checked to still be in place.
type OpenShare = Arc<(File, u64, std::sync::atomic::AtomicU64)>;

/// How often an open share is checked for having been deleted: a deleted share may be
/// served for up to this long (its bytes still verify); checking on every read would cost a
/// syscall per block.
const RECHECK_MS: u64 = 1000;

/// When a written share counts as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// After the share and its directory are fsynced: it survives a power failure.
    #[default]
    Fsync,
    /// After the rename: it survives a crash of the process, and a power failure may lose
    /// it (never corrupt a read: readers verify every byte). Much faster on one disk, where
    /// erasure coding writes n/k times the file.
    Rename,
}

/// A write of one share on behalf of an upload, from before its body arrives until it is
/// stored: abandoning the upload meanwhile removes the share as soon as it lands. Dropped
/// unused (the upload failed first), it is forgotten.
pub struct WriteTicket {
    store: Arc<Inner>,
    key: ShareKey,
    owner: UploadOwner,
    /// Whether this ticket holds the ledger's entry (another upload of the same share may
    /// already hold it).
    holds: bool,
}

impl fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTicket")
            .field("share", &self.key.1)
            .finish()
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        if self.holds {
            self.store.lock_ledger().in_flight.remove(&self.key);
        }
    }
}

/// Shares in a directory tree. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct DirectoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    name: String,
    durability: Durability,
    epoch: std::time::Instant,
    open: Mutex<LruCache<(StorageIndex, ShareNum), OpenShare>>,
    /// The owner of writes through [`ShareStore::write`] on this handle.
    owner: UploadOwner,
    ledger: Mutex<Ledger>,
}

impl fmt::Debug for DirectoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl DirectoryStore {
    /// A durable store rooted at `root`, created if missing. Removes stale spools.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<DirectoryStore> {
        DirectoryStore::open_with(root, Durability::Fsync)
    }

    /// A store rooted at `root` with the given durability, created if missing.
    pub fn open_with(
        root: impl Into<PathBuf>,
        durability: Durability,
    ) -> io::Result<DirectoryStore> {
        let root = std::path::absolute(root.into())?;
        fs::create_dir_all(root.join("shares"))?;
        fs::create_dir_all(root.join("tmp"))?;
        let inner = Inner::new(root, durability);
        super::sweep_spools(&inner.root.join("tmp"));
        Ok(DirectoryStore {
            inner: Arc::new(inner),
        })
    }

    /// A store for a directory that may not exist: nothing is created, and calls fail with
    /// a clear error while it is missing (like a server that is down).
    pub fn detached(root: impl Into<PathBuf>) -> DirectoryStore {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        DirectoryStore {
            inner: Arc::new(Inner::new(root, Durability::Fsync)),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Path of a share (whether or not it exists).
    pub fn share_path(&self, si: &StorageIndex, share: ShareNum) -> PathBuf {
        self.inner.share_path(si, share)
    }

    /// The length of a stored share (a storage node checks ranges against it before
    /// streaming them).
    pub async fn share_len(&self, si: StorageIndex, share: ShareNum) -> Result<u64, StoreError> {
        // A share already open answers without a trip to the blocking pool.
        if let Some(opened) = self.inner.cached(si, share) {
            return Ok(opened.1);
        }
        let this = self.inner.clone();
        blocking(move || this.open_share(si, share).map(|opened| opened.1)).await
    }

    /// Starts a write of `share` on behalf of `owner` (a storage node, as soon as an upload
    /// is accepted and before its body arrives): from now on the owner can abandon it.
    pub fn begin_write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        owner: UploadOwner,
    ) -> WriteTicket {
        self.inner.begin_write((si, share), owner)
    }

    /// [`ShareStore::write`] on behalf of the ticket's owner.
    pub async fn write_with(
        &self,
        spool: SpooledShare,
        ticket: WriteTicket,
    ) -> Result<(), StoreError> {
        let this = self.inner.clone();
        blocking(move || this.write_blocking(spool, ticket)).await
    }

    /// [`ShareStore::abandon`] on behalf of `owner`.
    pub async fn abandon_as(
        &self,
        si: StorageIndex,
        share: ShareNum,
        owner: UploadOwner,
    ) -> Result<(), StoreError> {
        let this = self.inner.clone();
        blocking(move || this.abandon_blocking(si, share, owner)).await
    }
}

impl Inner {
    fn new(root: PathBuf, durability: Durability) -> Inner {
        Inner {
            name: root.display().to_string(),
            root,
            durability,
            epoch: std::time::Instant::now(),
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_FILES).unwrap_or(NonZeroUsize::MIN),
            )),
            owner: UploadOwner::random(),
            ledger: Mutex::new(Ledger::default()),
        }
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin_write(self: &Arc<Self>, key: ShareKey, owner: UploadOwner) -> WriteTicket {
        let mut ledger = self.lock_ledger();
        // A share another write is landing stays with that write.
        let holds = !ledger.in_flight.contains_key(&key);
        if holds {
            let state = if ledger.take_early(&key, owner) {
                InFlight::Abandoned(owner)
            } else {
                InFlight::Writing(owner)
            };
            ledger.in_flight.insert(key, state);
        }
        WriteTicket {
            store: self.clone(),
            key,
            owner,
            holds,
        }
    }

    /// Removes a share `owner` created, or marks one it is still writing (or has not begun
    /// writing) to be removed when it lands.
    fn abandon_blocking(
        &self,
        si: StorageIndex,
        share: ShareNum,
        owner: UploadOwner,
    ) -> Result<(), StoreError> {
        let key = (si, share);
        let mut ledger = self.lock_ledger();
        match ledger.in_flight.get(&key).copied() {
            Some(InFlight::Writing(writer)) if writer == owner => {
                ledger.in_flight.insert(key, InFlight::Abandoned(owner));
                return Ok(());
            }
            Some(InFlight::Abandoned(writer)) if writer == owner => return Ok(()),
            Some(_) => {
                return Err(StoreError::Forbidden(
                    "another upload is writing this share".into(),
                ));
            }
            None => {}
        }
        match ledger.creator(&key) {
            Some(creator) if creator == owner => {
                ledger.created.pop(&key);
                self.remove_share(si, share)
            }
            Some(_) => Err(StoreError::Forbidden(
                "another upload wrote this share".into(),
            )),
            None if self.share_path(&si, share).exists() => Err(StoreError::Forbidden(
                "this share was not written by this upload".into(),
            )),
            None => {
                // Not written (yet): its write may still be on its way.
                ledger.early.put(key, (owner, Instant::now()));
                Ok(())
            }
        }
    }

    fn remove_share(&self, si: StorageIndex, share: ShareNum) -> Result<(), StoreError> {
        self.lock_open().pop(&(si, share));
        match fs::remove_file(self.share_path(&si, share)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("removing share", e)),
        }
        // The file's directory goes with its last share (fails while others remain).
        let _ = fs::remove_dir(self.file_dir(&si));
        Ok(())
    }

    fn file_dir(&self, si: &StorageIndex) -> PathBuf {
        let text = si.to_base32();
        self.root.join("shares").join(&text[..2]).join(text)
    }

    fn share_path(&self, si: &StorageIndex, share: ShareNum) -> PathBuf {
        self.file_dir(si).join(share.0.to_string())
    }

    fn open_share(&self, si: StorageIndex, share: ShareNum) -> Result<OpenShare, StoreError> {
        if let Some(found) = self.cached(si, share) {
            return Ok(found);
        }
        let file = File::open(self.share_path(&si, share))
            .map_err(|e| StoreError::io("opening share", e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading share metadata", e))?
            .len();
        let now = self.epoch.elapsed().as_millis() as u64;
        let opened = Arc::new((file, len, std::sync::atomic::AtomicU64::new(now)));
        self.lock_open().put((si, share), opened.clone());
        Ok(opened)
    }

    /// An open handle to a share that is still in place. A deleted share stays readable
    /// through an open handle; a store must stop serving it, so an unlinked file is dropped.
    fn cached(&self, si: StorageIndex, share: ShareNum) -> Option<OpenShare> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        let found = self.lock_open().get(&(si, share)).cloned()?;
        let now = self.epoch.elapsed().as_millis() as u64;
        if now.saturating_sub(found.2.load(Ordering::Relaxed)) < RECHECK_MS {
            return Some(found);
        }
        if found.0.metadata().is_ok_and(|m| m.nlink() > 0) {
            found.2.store(now, Ordering::Relaxed);
            Some(found)
        } else {
            self.lock_open().pop(&(si, share));
            None
        }
    }

    fn lock_open(
        &self,
    ) -> std::sync::MutexGuard<'_, LruCache<(StorageIndex, ShareNum), OpenShare>> {
        // A panic while holding this lock cannot leave the cache inconsistent.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn list_blocking(&self, si: StorageIndex) -> Result<Vec<ShareNum>, StoreError> {
        let mut shares: Vec<ShareNum> = match fs::read_dir(self.file_dir(&si)) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|entry| parse_share_name(&entry.file_name().to_string_lossy()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.root.join("shares").is_dir() {
                    return Err(StoreError::Io {
                        context: "listing shares",
                        message: "the storage directory does not exist".into(),
                    });
                }
                Vec::new()
            }
            Err(e) => return Err(StoreError::io("listing shares", e)),
        };
        shares.sort_unstable();
        self.forget_missing(si, &shares);
        Ok(shares)
    }

    /// Drops open handles of `si`'s shares that are no longer listed, so they stop being served.
    fn forget_missing(&self, si: StorageIndex, listed: &[ShareNum]) {
        let mut open = self.lock_open();
        let stale: Vec<(StorageIndex, ShareNum)> = open
            .iter()
            .map(|(key, _)| *key)
            .filter(|(s, share)| *s == si && !listed.contains(share))
            .collect();
        for key in stale {
            open.pop(&key);
        }
    }

    /// Reads without blocking: only from a share already open and only if every byte is in
    /// the page cache (`preadv2` with `RWF_NOWAIT`). `None` means "use the blocking pool":
    /// a thread hop costs more than reading a cached block, but a disk read must not stall
    /// an async worker.
    #[cfg(target_os = "linux")]
    fn read_cached(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: &[Range<u64>],
    ) -> Option<Result<Vec<Bytes>, StoreError>> {
        use rustix::io::{ReadWriteFlags, preadv2};
        use std::sync::atomic::{AtomicBool, Ordering};
        // Kernels or filesystems without RWF_NOWAIT: stop trying after the first refusal.
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if UNSUPPORTED.load(Ordering::Relaxed) || validate_ranges(ranges).is_err() {
            return None;
        }
        let opened = self.cached(si, share)?;
        let (file, len) = (&opened.0, opened.1);
        let mut parts = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.end > len {
                return None;
            }
            let mut buf = BytesMut::zeroed((r.end - r.start) as usize);
            let mut filled = 0;
            while filled < buf.len() {
                let mut slices = [io::IoSliceMut::new(&mut buf[filled..])];
                match preadv2(
                    file,
                    &mut slices,
                    r.start + filled as u64,
                    ReadWriteFlags::NOWAIT,
                ) {
                    Ok(0) => return None,
                    Ok(n) => filled += n,
                    Err(rustix::io::Errno::AGAIN) => return None,
                    Err(
                        rustix::io::Errno::OPNOTSUPP
                        | rustix::io::Errno::INVAL
                        | rustix::io::Errno::NOSYS,
                    ) => {
                        UNSUPPORTED.store(true, Ordering::Relaxed);
                        return None;
                    }
                    Err(_) => return None,
                }
            }
            parts.push(buf.freeze());
        }
        Some(Ok(parts))
    }

    #[cfg(not(target_os = "linux"))]
    fn read_cached(
        &self,
        _: StorageIndex,
        _: ShareNum,
        _: &[Range<u64>],
    ) -> Option<Result<Vec<Bytes>, StoreError>> {
        None
    }

    fn read_blocking(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, StoreError> {
        validate_ranges(ranges)?;
        let opened = self.open_share(si, share)?;
        let (file, len) = (&opened.0, opened.1);
        ranges
            .iter()
            .map(|r| {
                if r.end > len {
                    return Err(StoreError::OutOfBounds {
                        start: r.start,
                        end: r.end,
                        len,
                    });
                }
                let mut buf = BytesMut::zeroed((r.end - r.start) as usize);
                file.read_exact_at(&mut buf, r.start)
                    .map_err(|e| StoreError::io("reading share", e))?;
                Ok(buf.freeze())
            })
            .collect()
    }
}

/// Share numbers are written in canonical decimal; anything else in the directory is ignored.
fn blocking<T: Send + 'static>(
    task: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(task)
            .await
            .map_err(|e| StoreError::Io {
                context: "store task",
                message: e.to_string(),
            })?
    })
}

impl ShareStore for DirectoryStore {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn list(&self, si: StorageIndex) -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>> {
        let this = self.inner.clone();
        blocking(move || this.list_blocking(si))
    }

    fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>> {
        let this = self.inner.clone();
        Box::pin(async move {
            if let Some(cached) = this.read_cached(si, share, &ranges) {
                return cached;
            }
            blocking(move || this.read_blocking(si, share, &ranges)).await
        })
    }

    fn write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let ticket = self.inner.begin_write((si, share), self.inner.owner);
        let this = self.inner.clone();
        blocking(move || this.write_blocking(spool, ticket))
    }

    fn replace_corrupt(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let this = self.inner.clone();
        blocking(move || this.replace_blocking(spool, si, share))
    }

    fn abandon(&self, si: StorageIndex, share: ShareNum) -> BoxFuture<'_, Result<(), StoreError>> {
        let this = self.inner.clone();
        let owner = this.owner;
        blocking(move || this.abandon_blocking(si, share, owner))
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        Some(self.inner.root.join("tmp"))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let this = self.inner.clone();
        blocking(move || {
            let shares = this.root.join("shares");
            match fs::metadata(&shares) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(StoreError::Io {
                    context: "checking the store",
                    message: format!("{} is not a directory", shares.display()),
                }),
                Err(e) => Err(StoreError::Io {
                    context: "checking the store",
                    message: format!("{}: {e}", shares.display()),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests;
