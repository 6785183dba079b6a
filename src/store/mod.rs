//! Share stores: where shares live. One small trait, with backends (a local directory now,
//! HTTP storage nodes later), test doubles that inject faults, and one conformance suite
//! every backend passes.

pub mod dir;
pub mod http;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

pub use dir::{DirectoryStore, Durability, UploadOwner, WriteTicket};
pub use http::{HttpOptions, HttpStore, UrlError};
#[cfg(feature = "s3")]
pub use s3::{S3Options, S3Store, S3UrlError};

/// Largest number of bytes one `read` call may ask for (bounds what a request can allocate).
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// What went wrong talking to a store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store holds no such share.
    #[error("share not found")]
    NotFound,
    /// A range reaches past the end of the share.
    #[error("range {start}..{end} is past the end of the {len}-byte share")]
    OutOfBounds {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Share length.
        len: u64,
    },
    /// The request itself was malformed (reversed or oversized ranges).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A different share with the same name already exists (shares are immutable).
    #[error("a different share {share} of {storage_index} is already stored")]
    Conflict {
        /// File.
        storage_index: StorageIndex,
        /// Share.
        share: ShareNum,
    },
    /// The store answered, but not as the protocol says (wrong lengths, garbage).
    #[error("broken answer: {0}")]
    Protocol(String),
    /// The store did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The store has no room for the share.
    #[error("not enough space: {free} bytes free, the share needs {needed}")]
    NoSpace {
        /// Bytes free.
        free: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The store refuses the operation to this client (removing a share another upload
    /// wrote).
    #[error("refused: {0}")]
    Forbidden(String),
    /// An I/O or transport error.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error, as text (errors travel between tasks and must be `Clone`).
        message: String,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: &'static str, error: io::Error) -> StoreError {
        match error.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound,
            _ => StoreError::Io {
                context,
                message: error.to_string(),
            },
        }
    }
}

/// A share number as a file or object name spells it: canonical decimal 0-255 (`7`, never
/// `07`), so that one share has one name.
pub(crate) fn parse_share_name(name: &str) -> Option<ShareNum> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical
        .then(|| name.parse::<u8>().ok().map(ShareNum))
        .flatten()
}

/// Checks ranges before any I/O: ascending bounds, and not more than [`MAX_READ_BYTES`] in all.
pub fn validate_ranges(ranges: &[Range<u64>]) -> Result<(), StoreError> {
    let mut total: u64 = 0;
    for r in ranges {
        if r.start > r.end {
            return Err(StoreError::InvalidRequest(format!(
                "range {}..{} is reversed",
                r.start, r.end
            )));
        }
        total = total.saturating_add(r.end - r.start);
    }
    if total > MAX_READ_BYTES {
        return Err(StoreError::InvalidRequest(format!(
            "{total} bytes requested; the limit per request is {MAX_READ_BYTES}"
        )));
    }
    Ok(())
}

/// Name of the lock file in a spool directory: creating a spool holds it shared, sweeping
/// holds it exclusive, so a sweep never sees a spool between its creation and its lock.
const SPOOL_DIR_LOCK: &str = "spool.lock";
/// Without working locks, spools older than this are taken for leftovers of a dead upload.
const UNLOCKED_SPOOL_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn lock_file(file: &File, exclusive: bool, wait: bool) -> io::Result<()> {
    match (exclusive, wait) {
        (true, true) => file.lock(),
        (false, true) => file.lock_shared(),
        (true, false) => file.try_lock().map_err(io::Error::from),
        (false, false) => file.try_lock_shared().map_err(io::Error::from),
    }
}

/// Whether `dir` is shared with other users: sticky and world-writable, like `/tmp`.
fn is_shared(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o1002 == 0o1002)
}

fn spool_dir_lock(dir: &Path, exclusive: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(dir.join(SPOOL_DIR_LOCK))?;
    lock_file(&file, exclusive, true)?;
    Ok(file)
}

/// Removes the spools in `dir` that no live process holds: an upload keeps a lock on each
/// of its spools until it is done with it, so an unlocked spool is the leftover of a process
/// that was killed, whatever its age. Where locks do not work, only spools older than a day
/// are removed. Returns how many were removed. Blocking.
pub fn sweep_spools(dir: &Path) -> usize {
    // A directory shared with other users (`/tmp`) holds their files, and its lock file
    // could be anyone's: never swept.
    if is_shared(dir) {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let dir_lock = spool_dir_lock(dir, true);
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("spool-") && name.ends_with(".part")) {
            continue;
        }
        let path = entry.path();
        let abandoned = match (&dir_lock, File::open(&path)) {
            (Ok(_), Ok(file)) => lock_file(&file, true, false).is_ok(),
            (Err(_), _) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNLOCKED_SPOOL_AGE),
            (_, Err(_)) => false,
        };
        if abandoned && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed spools of uploads that were interrupted");
    }
    removed
}

/// A share being built in a local temporary file (ciphertext and hashes only), written at
/// arbitrary offsets, then handed to a store's [`ShareStore::write`]. Dropped unwritten, the
/// file is deleted; while it exists, it is locked, so that if the process dies the next
/// [`sweep_spools`] removes it.
pub struct SpooledShare {
    file: tempfile::NamedTempFile,
    len: u64,
}

impl fmt::Debug for SpooledShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpooledShare")
            .field("path", &self.file.path())
            .field("len", &self.len)
            .finish()
    }
}

impl SpooledShare {
    /// A zero-filled (sparse) spool of `len` bytes in `dir`.
    pub fn create(dir: &Path, len: u64) -> io::Result<SpooledShare> {
        std::fs::create_dir_all(dir)?;
        // Without locks (some network filesystems) spools still work; only the sweep of a
        // dead process's spools waits for their age. In a directory shared with other users
        // (`/tmp`) the lock file could be anyone's, held to make us wait, and nothing sweeps
        // there anyway: no directory lock.
        let dir_lock = if is_shared(dir) {
            None
        } else {
            spool_dir_lock(dir, false).ok()
        };
        let file = tempfile::Builder::new()
            .prefix("spool-")
            .suffix(".part")
            .tempfile_in(dir)?;
        if dir_lock.is_some() {
            // A spool that cannot be locked where locks work would be swept as a dead one.
            lock_file(file.as_file(), true, false)?;
        }
        drop(dir_lock);
        file.as_file().set_len(len)?;
        Ok(SpooledShare { file, len })
    }

    /// A second spool of the same finished share, to hand to a store while this one is kept
    /// (a share that may need a second server if the first refuses it): a hard link beside
    /// this one where the filesystem allows, else a copy. It is covered by this spool's lock
    /// (one inode), so it must not outlive this spool.
    pub fn duplicate(&self) -> io::Result<SpooledShare> {
        let dir = self.path().parent().unwrap_or_else(|| Path::new("."));
        let linked = tempfile::Builder::new()
            .prefix("spool-")
            .suffix(".part")
            .make_in(dir, |path| {
                std::fs::hard_link(self.path(), path)?;
                File::open(path)
            });
        match linked {
            Ok(file) => Ok(SpooledShare {
                file,
                len: self.len,
            }),
            Err(_) => {
                let copy = SpooledShare::create(dir, self.len)?;
                std::fs::copy(self.path(), copy.path())?;
                Ok(copy)
            }
        }
    }

    /// The spool's file, for positional writes.
    pub fn file(&self) -> &File {
        self.file.as_file()
    }

    /// Where the spool is.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Final share length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the share is empty (never, for a valid share).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The temporary file, for stores that move it into place.
    pub fn into_temp_file(self) -> tempfile::NamedTempFile {
        self.file
    }
}

/// A place that holds shares and serves byte ranges of them.
///
/// Implementations must be safe to call concurrently. A share, once written, never changes.
pub trait ShareStore: Send + Sync + fmt::Debug {
    /// A name for messages (a path or URL; never a secret).
    fn name(&self) -> &str;

    /// Share numbers held for `storage_index` (empty when none).
    fn list(&self, storage_index: StorageIndex)
    -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>>;

    /// Reads each of `ranges` of a share. Every range must lie inside the share; the result
    /// has one buffer per range, each exactly as long as its range.
    fn read(
        &self,
        storage_index: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>>;

    /// Stores a finished share atomically: a reader sees all of it or nothing. Writing the
    /// same bytes again succeeds; different bytes are refused with [`StoreError::Conflict`].
    fn write(
        &self,
        storage_index: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether requests cross a network (each costs a round trip and an HTTP exchange), so
    /// readers should keep more in flight. The default: no.
    fn is_remote(&self) -> bool {
        false
    }

    /// Where an uploader should build spools so that [`write`](Self::write) can move them
    /// into place instead of copying them. `None`: anywhere.
    fn spool_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Whether the store is reachable and accepts us (an uploader asks before placing
    /// shares). The default: always.
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Removes a share that this store handle itself wrote (and nobody else had written
    /// before), for an upload abandoned before its cap was handed out. A write still in
    /// flight is removed as soon as it lands. Removing a share that is not there succeeds;
    /// one written by anyone else is refused with [`StoreError::Forbidden`]. The default is
    /// for stores that cannot remove anything: it says so.
    fn abandon(
        &self,
        storage_index: StorageIndex,
        share: ShareNum,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = (storage_index, share);
        Box::pin(std::future::ready(Err(StoreError::InvalidRequest(
            "this store cannot take shares back".into(),
        ))))
    }

    /// Puts `spool` (a share the caller rebuilt and verified against the file's cap) in
    /// place of this store's copy of the share, which the caller found corrupt. Stores
    /// that never overwrite a share refuse, as the default does, and a repairer stores the
    /// share elsewhere. Replacing a copy that turns out good is harmless: both are the one
    /// share the uploader made.
    fn replace_corrupt(
        &self,
        storage_index: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = (storage_index, share, spool);
        Box::pin(std::future::ready(Err(StoreError::InvalidRequest(
            "this store never overwrites a share".into(),
        ))))
    }

    /// Tells the store that a share failed verification (why, in `reason`: never a secret),
    /// so its operator can repair or remove it. Best effort: the default does nothing.
    fn report_corrupt(
        &self,
        storage_index: StorageIndex,
        share: ShareNum,
        reason: String,
    ) -> BoxFuture<'_, ()> {
        let _ = (storage_index, share, reason);
        Box::pin(std::future::ready(()))
    }
}
