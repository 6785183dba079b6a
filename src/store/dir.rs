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
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use lru::LruCache;

use super::{ShareStore, SpooledShare, StoreError, validate_ranges};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// How long a store remembers which upload wrote a share, so the upload can take it back
/// if it is abandoned (longer than any upload's placement takes).
const LEDGER_TTL: Duration = Duration::from_secs(3600);
/// Most shares remembered at once (the oldest are forgotten first).
const LEDGER_MAX: usize = 100_000;
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

/// Who wrote a share: an upload abandoned before its cap was handed out may remove the
/// shares it wrote itself, and only those (see [`ShareStore::abandon`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UploadOwner([u8; 32]);

impl fmt::Debug for UploadOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UploadOwner(<redacted>)")
    }
}

impl UploadOwner {
    /// A new owner no one else can claim to be.
    pub fn random() -> UploadOwner {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // No randomness: still distinct per owner in this process and across processes.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let mut hasher = blake3::Hasher::new_derive_key("segvault 2026 upload owner fallback");
            hasher.update(&u64::from(std::process::id()).to_le_bytes());
            hasher.update(
                &COUNTER
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_le_bytes(),
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            hasher.update(&now.to_le_bytes());
            bytes = *hasher.finalize().as_bytes();
        }
        UploadOwner(bytes)
    }

    /// The owner proven by a secret an uploader presents (a storage node keeps only this
    /// hash of it).
    pub fn from_secret(secret: &[u8]) -> UploadOwner {
        UploadOwner(blake3::derive_key("segvault 2026 upload owner", secret))
    }
}

/// A write in progress, in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    /// Being written by this owner (see [`WriteTicket`]).
    Writing(UploadOwner),
    /// Abandoned by its owner while being written: removed as soon as it lands.
    Abandoned(UploadOwner),
}

type ShareKey = (StorageIndex, ShareNum);

/// Take-backs remembered for writes that had not begun (a PUT still on its way).
const EARLY_MAX: usize = 10_000;
/// How long such a take-back waits for its write.
const EARLY_TTL: Duration = Duration::from_secs(600);

/// Which recent upload wrote which share, in memory only.
#[derive(Debug)]
struct Ledger {
    /// Writes in progress: as many as uploads being received.
    in_flight: std::collections::HashMap<ShareKey, InFlight>,
    /// Shares created, and by whom: the most recent [`LEDGER_MAX`], for [`LEDGER_TTL`].
    created: LruCache<ShareKey, (UploadOwner, Instant)>,
    /// Take-backs of shares not (yet) written, kept apart so they cannot push out the
    /// records of created shares.
    early: LruCache<ShareKey, (UploadOwner, Instant)>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        let capacity = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ledger {
            in_flight: std::collections::HashMap::new(),
            created: LruCache::new(capacity(LEDGER_MAX)),
            early: LruCache::new(capacity(EARLY_MAX)),
        }
    }
}

impl Ledger {
    /// Who created `key`, if that was recent enough to be remembered.
    fn creator(&mut self, key: &ShareKey) -> Option<UploadOwner> {
        match self.created.peek(key) {
            Some((owner, at)) if at.elapsed() < LEDGER_TTL => Some(*owner),
            Some(_) => {
                self.created.pop(key);
                None
            }
            None => None,
        }
    }

    /// Takes an early take-back of `key` by `owner`, if there is a fresh one.
    fn take_early(&mut self, key: &ShareKey, owner: UploadOwner) -> bool {
        match self.early.peek(key) {
            Some((by, at)) if *by == owner && at.elapsed() < EARLY_TTL => {
                self.early.pop(key);
                true
            }
            _ => false,
        }
    }
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

    fn write_blocking(
        &self,
        spool: SpooledShare,
        mut ticket: WriteTicket,
    ) -> Result<(), StoreError> {
        let (si, share) = ticket.key;
        let dir = self.file_dir(&si);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating share directory", e))?;
        if self.durability == Durability::Fsync {
            // New directories are only durable once their parents' entries are. Synced on
            // every write, not only by the writer that created them: a concurrent writer
            // that found the directory made may otherwise acknowledge its share first.
            for parent in dir.ancestors().skip(1).take(2) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StoreError::io("syncing share directory", e))?;
            }
        }
        let temp = spool.into_temp_file();
        let created = match self.persist(temp, si, share) {
            Err(Persist::CrossDevice(spool)) => {
                // Built on another filesystem: copy it beside the shares so the rename is
                // atomic (into a spool of our own, locked like any other).
                let len = spool
                    .as_file()
                    .metadata()
                    .map_err(|e| StoreError::io("reading spool", e))?
                    .len();
                let local = SpooledShare::create(&self.root.join("tmp"), len)
                    .map_err(|e| StoreError::io("creating spool", e))?;
                io::copy(&mut spool.as_file(), &mut local.file())
                    .map_err(|e| StoreError::io("copying spool", e))?;
                match self.persist(local.into_temp_file(), si, share) {
                    Err(Persist::CrossDevice(_)) => Err(StoreError::Io {
                        context: "moving share into place",
                        message: "the store's tmp directory is on another filesystem".into(),
                    }),
                    Err(Persist::Failed(e)) => Err(e),
                    Ok(created) => Ok(created),
                }
            }
            Err(Persist::Failed(e)) => Err(e),
            Ok(created) => Ok(created),
        }?;
        {
            let key = ticket.key;
            let mut ledger = self.lock_ledger();
            let state = if ticket.holds {
                ticket.holds = false;
                ledger.in_flight.remove(&key)
            } else {
                None
            };
            let ours = created || ledger.creator(&key) == Some(ticket.owner);
            if state == Some(InFlight::Abandoned(ticket.owner)) && ours {
                // Taken back while this write (or a repeat of one that had landed) ran.
                ledger.created.pop(&key);
                self.remove_share(si, share)?;
                return Err(StoreError::Forbidden(
                    "the upload was abandoned while this share was being written".into(),
                ));
            }
            if !created {
                // The same bytes were stored already. If another upload wrote them, two
                // uploads now rely on this share, and neither may take it back.
                if !ours {
                    ledger.created.pop(&key);
                }
            } else if state.is_some() {
                ledger.created.put(key, (ticket.owner, Instant::now()));
            }
        }
        if self.durability == Durability::Fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("syncing share directory", e))?;
        }
        Ok(())
    }

    /// Syncs (if durable) and renames `temp` to the share's path without overwriting.
    /// Whether it created the share (false: the same bytes were there already).
    fn persist(
        &self,
        temp: tempfile::NamedTempFile,
        si: StorageIndex,
        share: ShareNum,
    ) -> Result<bool, Persist> {
        if self.durability == Durability::Fsync {
            temp.as_file()
                .sync_all()
                .map_err(|e| Persist::Failed(StoreError::io("syncing share", e)))?;
        }
        let final_path = self.share_path(&si, share);
        match temp.persist_noclobber(&final_path) {
            Ok(_) => Ok(true),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                let same = same_contents(e.file.as_file(), &final_path).map_err(|e| {
                    Persist::Failed(StoreError::io("comparing with the stored share", e))
                })?;
                if same {
                    Ok(false)
                } else {
                    Err(Persist::Failed(StoreError::Conflict {
                        storage_index: si,
                        share,
                    }))
                }
            }
            Err(e) if e.error.kind() == io::ErrorKind::CrossesDevices => {
                Err(Persist::CrossDevice(e.file))
            }
            Err(e) => Err(Persist::Failed(StoreError::io(
                "moving share into place",
                e.error,
            ))),
        }
    }
}

enum Persist {
    CrossDevice(tempfile::NamedTempFile),
    Failed(StoreError),
}

/// Share numbers are written in canonical decimal; anything else in the directory is ignored.
fn parse_share_name(name: &str) -> Option<ShareNum> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical
        .then(|| name.parse::<u8>().ok().map(ShareNum))
        .flatten()
}

fn same_contents(candidate: &File, existing: &Path) -> io::Result<bool> {
    let mut existing = File::open(existing)?;
    let (la, lb) = (candidate.metadata()?.len(), existing.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    let mut a = vec![0u8; 1 << 16];
    let mut b = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < la {
        let n = (la - offset).min(a.len() as u64) as usize;
        candidate.read_exact_at(&mut a[..n], offset)?;
        existing.read_exact(&mut b[..n])?;
        if a[..n] != b[..n] {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

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
mod tests {
    use super::*;

    #[test]
    fn only_canonical_share_names_are_listed() {
        assert_eq!(parse_share_name("0"), Some(ShareNum(0)));
        assert_eq!(parse_share_name("255"), Some(ShareNum(255)));
        for bad in ["", "00", "07", "256", "-1", "1a", "spool-x.part", " 1"] {
            assert_eq!(parse_share_name(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::open(dir.path()).unwrap();
        crate::store::testing::conformance::run(&store).await;
    }

    fn spool_of(store: &DirectoryStore, bytes: &[u8]) -> SpooledShare {
        let spool = SpooledShare::create(&store.root().join("tmp"), bytes.len() as u64).unwrap();
        spool.file().write_all_at(bytes, 0).unwrap();
        spool
    }

    #[tokio::test]
    async fn only_the_upload_that_wrote_a_share_takes_it_back_even_while_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::open(dir.path()).unwrap();
        let (si, share) = (StorageIndex([3; 16]), ShareNum(1));
        let (alice, bob) = (UploadOwner::random(), UploadOwner::random());
        let path = store.share_path(&si, share);

        // Written by Alice: Bob cannot take it back, Alice can.
        let ticket = store.begin_write(si, share, alice);
        store
            .write_with(spool_of(&store, b"alice"), ticket)
            .await
            .unwrap();
        let refused = store.abandon_as(si, share, bob).await;
        assert!(
            matches!(refused, Err(StoreError::Forbidden(_))),
            "{refused:?}"
        );
        store.abandon_as(si, share, alice).await.unwrap();
        assert!(!path.exists() && !path.parent().unwrap().exists());

        // Abandoned while Alice's write is in flight: removed the moment it lands.
        let ticket = store.begin_write(si, share, alice);
        store.abandon_as(si, share, alice).await.unwrap();
        let landed = store.write_with(spool_of(&store, b"alice"), ticket).await;
        assert!(
            matches!(landed, Err(StoreError::Forbidden(_))),
            "{landed:?}"
        );
        assert!(!path.exists());

        // Bob writing the same share meanwhile does not let him take Alice's.
        let ticket = store.begin_write(si, share, alice);
        let bobs = store.begin_write(si, share, bob);
        assert!(matches!(
            store.abandon_as(si, share, bob).await,
            Err(StoreError::Forbidden(_))
        ));
        store
            .write_with(spool_of(&store, b"same"), ticket)
            .await
            .unwrap();
        store
            .write_with(spool_of(&store, b"same"), bobs)
            .await
            .unwrap();
        assert!(store.abandon_as(si, share, bob).await.is_err());
        assert!(path.exists());

        // A share this process never wrote (stored before, or by another process) stays.
        let other = DirectoryStore::open(dir.path()).unwrap();
        assert!(matches!(
            other.abandon(si, share).await,
            Err(StoreError::Forbidden(_))
        ));
        // A take-back that overtook its write removes the share when the write lands.
        let early = StorageIndex([9; 16]);
        store.abandon_as(early, share, alice).await.unwrap();
        let ticket = store.begin_write(early, share, alice);
        let landed = store.write_with(spool_of(&store, b"late"), ticket).await;
        assert!(matches!(landed, Err(StoreError::Forbidden(_))));
        assert!(!store.share_path(&early, share).exists());
        // A write that fails leaves no record behind.
        let ticket = store.begin_write(StorageIndex([8; 16]), share, alice);
        drop(ticket);
        assert!(store.inner.lock_ledger().in_flight.is_empty());

        // Stored again by Bob with the same bytes, Alice's share is no longer hers alone.
        let twice = StorageIndex([7; 16]);
        let ticket = store.begin_write(twice, share, alice);
        store
            .write_with(spool_of(&store, b"twin"), ticket)
            .await
            .unwrap();
        let ticket = store.begin_write(twice, share, bob);
        store
            .write_with(spool_of(&store, b"twin"), ticket)
            .await
            .unwrap();
        assert!(store.abandon_as(twice, share, alice).await.is_err());
        assert!(store.share_path(&twice, share).exists());
    }

    #[tokio::test]
    async fn share_paths_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::open(dir.path()).unwrap();
        let path = store.share_path(&StorageIndex([0xff; 16]), ShareNum(255));
        assert!(path.starts_with(dir.path().join("shares")));
        assert_eq!(path.file_name().unwrap(), "255");
    }
}
