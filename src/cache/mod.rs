//! The disk cache: verified ciphertext records of share blocks, keyed by (storage index,
//! share, segment), so repeated and seeking reads skip the network.
//!
//! Only a [`CiphertextRecord`] can enter it, and only the engine can make one, from a block it
//! has verified; plaintext and keys never reach it (Tahoe-LAFS #527's plaintext cache is what
//! this replaces). Each entry is the file's UEB and the share's whole record for its segment —
//! the block with every hash it needs up to the UEB — so the engine re-verifies every entry
//! it reads back (a bad one is a miss and is dropped), and after a restart a file whose
//! blocks are cached opens and reads them without asking any server.
//!
//! On disk (`DIR` is `--cache-dir`):
//!
//! ```text
//! DIR/CACHEDIR.TAG              marks the directory as a cache (backup tools skip it)
//! DIR/lock                      held (flock) by the one process using the cache
//! DIR/tmp/                      entries being written; emptied at start
//! DIR/v1/<storage index>/<share>-<segment>   one entry (see core::cache_entry)
//! ```
//!
//! - **Bounded by bytes**, least recently used first out; entries unused for the TTL expire
//!   (a sweep runs every quarter TTL, at most every minute). Last use is kept in the entry's
//!   mtime, so order and expiry survive restarts.
//! - **Atomic writes**: an entry is written under `tmp/` and renamed into place, never
//!   fsynced: a crash can leave a torn or empty entry only after a power loss, and a torn entry
//!   fails verification like any corrupt one. `kill -9` at any moment leaves whole entries and
//!   stray temporary files, which the next start removes.
//! - **One process per directory**: the first takes an exclusive lock on `DIR/lock`; a second
//!   gateway pointed at the same directory fails at start with a clear error rather than
//!   sharing it (two processes each keeping the byte bound would overshoot it, and neither
//!   would see the other's LRU order). Give each process its own directory.
//! - Directories are 0700 and files 0600. A directory that is neither new, empty, nor tagged
//!   is refused untouched: the cache deletes files in it.

mod dir;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use tracing::{debug, warn};

use crate::core::cache_entry::{self, BlockKey, HEADER_LEN};
use crate::core::cap::StorageIndex;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::metrics::{Eviction, Metrics};
use dir::{claim, create_private_dir, private_file_options, scan};

/// Bytes of entries waiting to be written; blocks beyond this are not cached (a reader never
/// waits for the cache, and memory stays bounded when the disk is slower than the grid).
const MAX_PENDING_WRITE_BYTES: u64 = 32 << 20;

/// Where and how much to cache.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// The cache directory (created 0700 if missing).
    pub dir: PathBuf,
    /// Most bytes of entries kept.
    pub max_bytes: u64,
    /// Entries unused this long are removed.
    pub ttl: Duration,
}

impl CacheConfig {
    /// A cache in `dir` of at most `max_bytes`, entries kept a day after their last use.
    ///
    /// ```
    /// let config = segvault::cache::CacheConfig::new("/var/cache/segvault", 1 << 30);
    /// assert_eq!(config.ttl, std::time::Duration::from_secs(86_400));
    /// ```
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> CacheConfig {
        CacheConfig {
            dir: dir.into(),
            max_bytes,
            ttl: Duration::from_secs(86_400),
        }
    }
}

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The directory holds other things: the cache removes files in its directory, so it
    /// only takes a new, empty, or already tagged one.
    #[error(
        "{0} is not empty and not a segvault cache (no segvault CACHEDIR.TAG); give --cache-dir a new or empty directory"
    )]
    NotACache(PathBuf),
    /// Another process holds the directory.
    #[error(
        "cache directory {0} is in use by another segvault process (give each process its own --cache-dir)"
    )]
    InUse(PathBuf),
    /// The directory could not be created or read.
    #[error("cache directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A share's whole record for one segment, already verified by the engine: the only thing
/// the cache accepts. It can only be built inside this crate, from a verified ciphertext block
/// and the hashes that prove it.
#[derive(Debug, Clone)]
pub struct CiphertextRecord {
    ueb: Vec<u8>,
    block: Bytes,
    hashes: Vec<u8>,
}

impl CiphertextRecord {
    /// The file's verified UEB, a verified block and its
    /// [`record_hashes`](crate::core::planner::record_hashes).
    pub(crate) fn verified(ueb: Vec<u8>, block: Bytes, hashes: Vec<u8>) -> CiphertextRecord {
        CiphertextRecord { ueb, block, hashes }
    }

    fn len(&self) -> usize {
        self.ueb.len() + self.block.len() + self.hashes.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    used: Instant,
}

#[derive(Debug)]
struct State {
    lru: LruCache<BlockKey, Entry>,
    bytes: u64,
    writing: HashSet<BlockKey>,
    writing_bytes: u64,
    /// Entries out of the index whose files are being removed: not written again until
    /// they are gone, so a late removal never deletes a fresh copy.
    removing: HashSet<BlockKey>,
    /// Verified records for keys still being removed, written as soon as the removal is
    /// done (a segment read again right after its bad entry was dropped must be cached
    /// again). Counted in `writing_bytes`.
    refill: HashMap<BlockKey, CiphertextRecord>,
}

/// The cache. Shared by every file a client reads; see the module documentation.
#[derive(Debug)]
pub struct DiskCache {
    entries_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    ttl: Duration,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// Held for the cache's life: the exclusive lock on `DIR/lock`.
    _lock: File,
}

impl DiskCache {
    /// Opens (creating if needed) the cache in `config.dir`: takes the directory's lock,
    /// removes partial files, and indexes the entries found (dropping expired ones and, if
    /// the bound shrank, the least recently used). Blocking; call it at start.
    pub fn open(config: CacheConfig, metrics: Arc<Metrics>) -> Result<Arc<DiskCache>, CacheError> {
        let dir = config.dir.clone();
        if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            return Err(io_error(&dir)(io::Error::other(
                "it exists and is not a directory",
            )));
        }
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        claim(&dir)?;
        create_private_dir(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join("lock");
        let lock = private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(CacheError::InUse(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let tmp_dir = dir.join("tmp");
        let entries_dir = dir.join("v1");
        for own in [&tmp_dir, &entries_dir] {
            if fs::symlink_metadata(own).is_ok_and(|m| !m.is_dir()) {
                return Err(CacheError::Io {
                    path: own.clone(),
                    source: io::Error::other("not a directory (a file or a symbolic link)"),
                });
            }
        }
        if tmp_dir.exists() {
            // Entries a killed process was writing: never renamed into place, never read.
            fs::remove_dir_all(&tmp_dir).map_err(io_error(&tmp_dir))?;
        }
        create_private_dir(&tmp_dir).map_err(io_error(&tmp_dir))?;
        create_private_dir(&entries_dir).map_err(io_error(&entries_dir))?;

        let found = scan(&entries_dir, config.ttl)?;
        let mut state = State {
            lru: LruCache::unbounded(),
            bytes: 0,
            writing: HashSet::new(),
            writing_bytes: 0,
            removing: HashSet::new(),
            refill: HashMap::new(),
        };
        let now = Instant::now();
        for (key, bytes, age) in found {
            state.bytes += bytes;
            let used = now.checked_sub(age).unwrap_or(now);
            state.lru.push(key, Entry { bytes, used });
        }
        let cache = Arc::new(DiskCache {
            entries_dir,
            tmp_dir,
            max_bytes: config.max_bytes,
            ttl: config.ttl,
            state: Mutex::new(state),
            metrics,
            _lock: lock,
        });
        let victims = cache.make_room(&mut cache.lock(), 0);
        cache.remove_files(&victims);
        cache.publish_size();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let every = (cache.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
            runtime.spawn(sweep_periodically(Arc::downgrade(&cache), every));
        }
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent even if it panics midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, key: &BlockKey) -> PathBuf {
        self.entries_dir
            .join(key.storage_index.to_base32())
            .join(cache_entry::file_name(key.share, key.segment))
    }

    /// Waits (up to ten seconds) until every write started so far is on disk: for a
    /// short-lived process about to exit.
    pub async fn flush(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let busy = |state: &State| {
            !state.writing.is_empty() || !state.refill.is_empty() || !state.removing.is_empty()
        };
        while busy(&self.lock()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The counters the cache keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.lock();
        (state.lru.len(), state.bytes)
    }

    /// The bound on bytes held.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn publish_size(&self) {
        let (entries, bytes) = self.usage();
        self.metrics.cache_size(entries, bytes);
    }

    /// The shares below `n` with an entry for `segment` of `si` that has not expired.
    pub fn shares_cached(&self, si: StorageIndex, segment: SegmentIndex, n: u16) -> Vec<ShareNum> {
        let state = self.lock();
        let now = Instant::now();
        (0..n.min(256))
            .filter_map(|share| {
                let key = BlockKey {
                    storage_index: si,
                    share: ShareNum(share as u8),
                    segment,
                };
                let entry = state.lru.peek(&key)?;
                (now.duration_since(entry.used) < self.ttl).then_some(key.share)
            })
            .collect()
    }

    /// The record of `key`, if cached, readable and `record_len` bytes long (not yet
    /// verified: the caller checks it and [`discard`](Self::discard)s it if bad). Counts as a
    /// use. Blocking.
    pub fn read(&self, key: &BlockKey, record_len: u64) -> Option<Bytes> {
        self.lock().lru.get_mut(key)?;
        let path = self.path_of(key);
        let expected = HEADER_LEN as u64 + record_len;
        let mut bytes = Vec::new();
        let opened = File::open(&path).and_then(|file| {
            // Never more than an entry's size into memory, whatever the file has become.
            let len = file.metadata()?.len();
            if len != expected {
                return Err(io::Error::other(format!(
                    "{len} bytes, an entry has {expected}"
                )));
            }
            (&file).take(expected).read_to_end(&mut bytes)?;
            Ok(file)
        });
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed by hand: forget it.
                self.discard(key, Eviction::Missing);
                return None;
            }
            Err(e) => {
                warn!(entry = %key, error = %e, "cache entry unreadable; dropped");
                self.discard(key, Eviction::Corrupt);
                return None;
            }
        };
        match cache_entry::parse(&bytes) {
            Ok((named, _)) if named == *key => {}
            Ok(_) => {
                warn!(entry = %key, "cache entry names another block; dropped");
                self.discard(key, Eviction::Corrupt);
                return None;
            }
            Err(e) => {
                warn!(entry = %key, error = %e, "cache entry malformed; dropped");
                self.discard(key, Eviction::Corrupt);
                return None;
            }
        }
        let now = Instant::now();
        if let Some(entry) = self.lock().lru.get_mut(key) {
            entry.used = now;
        }
        // Last use survives a restart as the mtime (a failure only costs LRU accuracy).
        let _ = file.set_modified(SystemTime::now());
        Some(Bytes::from(bytes).slice(HEADER_LEN..))
    }

    /// The first `len` bytes of the body of some entry of file `si` (the file's UEB comes
    /// first in every one), unverified: the caller checks it against the cap. Blocking.
    pub fn file_prefix(&self, si: StorageIndex, len: usize) -> Option<Vec<u8>> {
        let dir = self.entries_dir.join(si.to_base32());
        let names = fs::read_dir(&dir).ok()?;
        for name in names.flatten().take(4) {
            let Some((share, segment)) = name
                .file_name()
                .to_str()
                .and_then(cache_entry::parse_file_name)
            else {
                continue;
            };
            let key = BlockKey {
                storage_index: si,
                share,
                segment,
            };
            if !self.lock().lru.contains(&key) {
                continue;
            }
            let mut bytes = Vec::new();
            let read = File::open(name.path())
                .and_then(|file| file.take((HEADER_LEN + len) as u64).read_to_end(&mut bytes));
            if read.is_err() || bytes.len() != HEADER_LEN + len {
                continue;
            }
            if let Ok((named, body_len)) = cache_entry::parse_header(&bytes)
                && named == key
                && body_len as usize >= len
            {
                return Some(bytes.split_off(HEADER_LEN));
            }
        }
        None
    }

    /// Removes `key` (a bad or unreadable entry). Blocking.
    pub fn discard(&self, key: &BlockKey, reason: Eviction) {
        let removed = {
            let mut state = self.lock();
            let removed = state.lru.pop(key);
            if let Some(entry) = &removed {
                state.bytes = state.bytes.saturating_sub(entry.bytes);
                state.removing.insert(*key);
            }
            removed
        };
        if removed.is_some() {
            self.metrics.cache_evicted(reason, 1);
            self.remove_files(&[*key]);
            self.publish_size();
        }
    }

    /// Stores `record` as `key` in the background, unless it is already cached, being
    /// written, larger than the cache, or too many writes are pending.
    pub fn insert(self: &Arc<Self>, key: BlockKey, record: CiphertextRecord) {
        let size = (HEADER_LEN + record.len()) as u64;
        {
            let mut state = self.lock();
            if size > self.max_bytes
                || state.lru.contains(&key)
                || state.writing.contains(&key)
                || state.refill.contains_key(&key)
                || state.writing_bytes + size > MAX_PENDING_WRITE_BYTES
            {
                return;
            }
            state.writing_bytes += size;
            if state.removing.contains(&key) {
                state.refill.insert(key, record);
                return;
            }
            state.writing.insert(key);
        }
        let cache = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || cache.store(key, record, size));
            }
            Err(_) => cache.store(key, record, size),
        }
    }

    /// Writes an entry reserved in `writing` and indexes it. Blocking.
    fn store(&self, key: BlockKey, record: CiphertextRecord, size: u64) {
        let written = self.write_entry(&key, &record);
        let inserted = written.is_ok();
        let victims = {
            let mut state = self.lock();
            state.writing.remove(&key);
            state.writing_bytes = state.writing_bytes.saturating_sub(size);
            match written {
                Ok(()) => {
                    let victims = self.make_room(&mut state, size);
                    state.bytes += size;
                    let entry = Entry {
                        bytes: size,
                        used: Instant::now(),
                    };
                    // Never replaces an entry (inserts skip cached keys), but keep the
                    // count exact if it ever does.
                    if let Some((_, old)) = state.lru.push(key, entry) {
                        state.bytes = state.bytes.saturating_sub(old.bytes);
                    }
                    victims
                }
                Err(e) => {
                    debug!(entry = %key, error = %e, "cache write failed");
                    Vec::new()
                }
            }
        };
        if inserted {
            self.metrics.cache_inserted();
        }
        self.remove_files(&victims);
        self.publish_size();
    }

    fn write_entry(&self, key: &BlockKey, record: &CiphertextRecord) -> io::Result<()> {
        let header =
            cache_entry::encode_header(key, u32::try_from(record.len()).map_err(io::Error::other)?);
        // tempfile creates 0600 files.
        let mut temp = tempfile::Builder::new()
            .prefix("entry-")
            .tempfile_in(&self.tmp_dir)?;
        temp.write_all(&header)?;
        temp.write_all(&record.ueb)?;
        temp.write_all(&record.block)?;
        temp.write_all(&record.hashes)?;
        let path = self.path_of(key);
        let parent = path.parent().unwrap_or(&self.entries_dir);
        if !parent.is_dir() {
            create_private_dir(parent)?;
        }
        match temp.persist(&path) {
            Ok(_) => Ok(()),
            // The file's directory was removed as it emptied, just now: make it again.
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                create_private_dir(parent)?;
                e.file.persist(&path).map(|_| ()).map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    /// Pops least recently used entries until `incoming` more bytes fit. Returns their keys
    /// (the caller removes the files outside the lock).
    fn make_room(&self, state: &mut State, incoming: u64) -> Vec<BlockKey> {
        let mut victims = Vec::new();
        while state.bytes + incoming > self.max_bytes {
            let Some((key, entry)) = state.lru.pop_lru() else {
                break;
            };
            state.bytes = state.bytes.saturating_sub(entry.bytes);
            state.removing.insert(key);
            victims.push(key);
        }
        if !victims.is_empty() {
            self.metrics
                .cache_evicted(Eviction::Lru, victims.len() as u64);
        }
        victims
    }

    /// Removes the files of `keys` (already out of the index and in `removing`), and their
    /// file's directory once empty.
    fn remove_files(&self, keys: &[BlockKey]) {
        for key in keys {
            let path = self.path_of(key);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(entry = %key, error = %e, "cannot remove cache entry");
            }
            if let Some(parent) = path.parent() {
                // Fails while other entries of the file remain, as it should.
                let _ = fs::remove_dir(parent);
            }
        }
        let refills: Vec<(BlockKey, CiphertextRecord)> = {
            let mut state = self.lock();
            let mut refills = Vec::new();
            for key in keys {
                state.removing.remove(key);
                if let Some(record) = state.refill.remove(key) {
                    state.writing.insert(*key);
                    refills.push((*key, record));
                }
            }
            refills
        };
        // Records that arrived while their key was being removed: written now.
        for (key, record) in refills {
            let size = (HEADER_LEN + record.len()) as u64;
            self.store(key, record, size);
        }
    }

    /// Removes entries unused for longer than the TTL. Blocking.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<BlockKey> = {
            let mut state = self.lock();
            let mut expired = Vec::new();
            while let Some((_, entry)) = state.lru.peek_lru() {
                if now.duration_since(entry.used) < self.ttl {
                    break;
                }
                if let Some((key, entry)) = state.lru.pop_lru() {
                    state.bytes = state.bytes.saturating_sub(entry.bytes);
                    state.removing.insert(key);
                    expired.push(key);
                }
            }
            expired
        };
        if !expired.is_empty() {
            self.metrics
                .cache_evicted(Eviction::Expired, expired.len() as u64);
            self.remove_files(&expired);
            self.publish_size();
        }
        expired.len()
    }
}

async fn sweep_periodically(cache: Weak<DiskCache>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        // File removal can block; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || cache.sweep_expired()).await;
    }
}

#[cfg(test)]
mod tests;
