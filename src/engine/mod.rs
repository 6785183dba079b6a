//! The reading engine: a [`Client`] over a [`Grid`] keeps one [`FileNode`] per open file
//! (LRU-bounded), fetches each segment's k blocks with their missing hash nodes in one request
//! per share, verifies everything up to the cap, decodes, checks the ciphertext tree, and
//! hands out decrypted bytes through [`FileHandle`]s.

pub mod audit;
mod error;
mod handle;
mod node;
mod reader;
mod segment;
mod stream;

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::OnceCell;

pub use crate::core::range::GetRange;
pub use crate::grid::health::{HealthSnapshot, ServerHealth};
pub use error::{ReadError, ReportLine, ShareReport};
pub use handle::FileHandle;
pub use node::FileNode;
pub use reader::FileReader;
pub use segment::SegmentData;
pub use stream::ByteStream;

use crate::cache::DiskCache;
use crate::core::cap::{ReadCap, VerifyCap};
use crate::core::choice::Policy;
use crate::core::cipher::Keystream;
use crate::core::geometry::ShareNum;
use crate::grid::Grid;
use crate::metrics::Metrics;

/// How a client reads. Built once, passed down.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReaderConfig {
    /// Most segments a stream may fetch ahead of its consumer (its window adapts below this).
    /// On a local grid 4 keeps both cores busy: 8 measured no faster and held 30 % more
    /// memory with 16 slow clients.
    pub read_ahead_segments: usize,
    /// The same limit when any server is across a network: deeper, so that batches of
    /// segments fetched together (one request per share) overlap the next batch's round
    /// trip. Measured with ten storage nodes on loopback (`benches/grid.sh`), as a fraction
    /// of the embedded grid's full-file throughput: 0.46–0.54 with 4 and single-segment
    /// requests, 0.61–0.68 with 8 (batches of 4), 0.73–0.74 with 16 (batches of 8).
    pub remote_read_ahead_segments: usize,
    /// Bytes of segments a stream may fetch ahead (caps the window for large segments).
    pub read_ahead_bytes: u64,
    /// The same cap across a network, where a window must hold the servers' latency times
    /// the rate (`target_read_rate`): a bucket 30 ms away needs 30 MiB in flight for
    /// 1 GiB/s. A stream only grows its window while its consumer waits for it, so slow
    /// clients hold far less.
    pub remote_read_ahead_bytes: u64,
    /// The rate (bytes per second) a stream's window is sized for when servers are far
    /// away: across a network the window grows from `remote_read_ahead_segments` towards
    /// `remote_read_ahead_bytes` to hold the servers' measured latency times this rate (S3
    /// buckets tens of milliseconds away need several times the loopback window).
    pub target_read_rate: u64,
    /// File nodes kept open (least recently used are dropped).
    pub open_files: usize,
    /// Bytes of per-file metadata (verified tree nodes, share maps) kept for files no reader
    /// holds: when opening a file finds the open nodes above this, the least recently opened
    /// are dropped (a reader still holding one keeps it; the next open fetches what it
    /// needs again). Trees are sparse, so a node costs what was read of its file.
    pub metadata_bytes: u64,
    /// Time limit for any one request to a store.
    pub request_timeout: Duration,
    /// How long a share that failed transiently is avoided (corrupt shares: ten times this).
    pub failure_ttl: Duration,
    /// Largest range [`FileHandle::read`] returns in one buffer; larger ranges are for
    /// [`FileHandle::stream`], whose memory stays at the read-ahead window.
    pub max_read_bytes: u64,
    /// How shares are chosen and when a late request is hedged.
    pub share_choice: Policy,
    /// How long a server whose request ran late is used only after the others (doubled for
    /// each further late request before it answers one, up to 64×).
    pub slow_ttl: Duration,
    /// Opening starts reading once any k shares are known; a primary share not yet known by
    /// then is waited for this much longer (primaries save decoding; a stalled server then
    /// costs this once per file opened, not a request timeout).
    pub primary_grace: Duration,
    /// How long a segment fetched ahead waits for a reader that stopped taking bytes (a
    /// stalled or paused client) before it is let go; fetched again if the reader resumes.
    /// A stalled reader then holds no read-ahead, only what its connection buffers.
    pub read_ahead_release: Duration,
    /// Bytes all of a client's streams together may hold fetched ahead of their readers (a
    /// gateway's read-ahead, whatever the number of clients). A reader's next chunk never
    /// waits for it: past it, readers fetch one segment at a time in their own tasks.
    pub read_ahead_memory: u64,
    /// Told when a read finds a file's shares damaged (see [`DamageHook`]); `None`: nobody.
    pub on_damage: Option<DamageHook>,
}

/// What a read found wrong with a file's shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Damage {
    /// Every server answered its listing and fewer than n shares were found.
    Missing,
    /// A share failed verification (its server is also told).
    Corrupt,
}

/// A function a [`Client`] calls when a read finds a file's shares missing or corrupt,
/// with the file's verify cap: to queue a repair, say. It runs on the read's task, so it
/// must return at once (queue the work, never do it); it is called at most once per kind
/// of damage per open file.
///
/// ```
/// use segvault::engine::{Damage, DamageHook, ReaderConfig};
/// let mut config = ReaderConfig::default();
/// config.on_damage = Some(DamageHook::new(|cap, damage: Damage| {
///     eprintln!("file {} has {damage:?} shares", cap.storage_index());
/// }));
/// ```
#[derive(Clone)]
pub struct DamageHook(Arc<DamageFn>);

type DamageFn = dyn Fn(&VerifyCap, Damage) + Send + Sync;

impl DamageHook {
    /// A hook calling `tell`.
    pub fn new(tell: impl Fn(&VerifyCap, Damage) + Send + Sync + 'static) -> DamageHook {
        DamageHook(Arc::new(tell))
    }

    pub(crate) fn tell(&self, cap: &VerifyCap, damage: Damage) {
        (self.0)(cap, damage);
    }
}

impl fmt::Debug for DamageHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DamageHook")
    }
}

impl Default for ReaderConfig {
    fn default() -> ReaderConfig {
        ReaderConfig {
            read_ahead_segments: 4,
            remote_read_ahead_segments: 16,
            read_ahead_bytes: 8 << 20,
            remote_read_ahead_bytes: 32 << 20,
            target_read_rate: 1 << 30,
            open_files: 256,
            metadata_bytes: 64 << 20,
            request_timeout: Duration::from_secs(30),
            failure_ttl: Duration::from_secs(60),
            max_read_bytes: 256 << 20,
            share_choice: Policy::default(),
            slow_ttl: Duration::from_secs(10),
            primary_grace: Duration::from_millis(20),
            read_ahead_release: Duration::from_secs(2),
            read_ahead_memory: 64 << 20,
            on_damage: None,
        }
    }
}

type NodeCell = Arc<OnceCell<Arc<FileNode>>>;

/// The distinct share numbers (below `cap`'s n) of a file found on `grid`; servers that fail
/// or do not answer within `timeout` are skipped.
pub async fn list_shares(grid: &Grid, cap: &VerifyCap, timeout: Duration) -> Vec<ShareNum> {
    let (si, n) = (cap.storage_index(), cap.geometry().n());
    let mut found: Vec<ShareNum> = node::shares::discover(grid, si, n, timeout)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Opens files on a grid. Cheap to clone; clones share their open file nodes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    grid: Grid,
    config: Arc<ReaderConfig>,
    nodes: Mutex<LruCache<VerifyCap, NodeCell>>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<DiskCache>>,
    read_ahead_memory: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("grid", &self.inner.grid)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `grid`.
    pub fn new(grid: Grid, config: ReaderConfig) -> Client {
        Client::build(grid, config, Arc::new(Metrics::default()), None)
    }

    /// A client for `grid` that keeps verified ciphertext blocks in `cache` and reads them
    /// back from it (re-verified) before asking the grid. It counts into the cache's metrics.
    ///
    /// ```no_run
    /// # fn demo(grid: segvault::Grid) -> Result<(), segvault::cache::CacheError> {
    /// use std::{sync::Arc, time::Duration};
    /// use segvault::cache::{CacheConfig, DiskCache};
    /// use segvault::{Client, metrics::Metrics};
    /// let mut config = CacheConfig::new("/var/cache/segvault", 1 << 30);
    /// config.ttl = Duration::from_secs(3600);
    /// let cache = DiskCache::open(config, Arc::new(Metrics::default()))?;
    /// let client = Client::with_cache(grid, Default::default(), cache);
    /// # Ok(()) }
    /// ```
    pub fn with_cache(grid: Grid, config: ReaderConfig, cache: Arc<DiskCache>) -> Client {
        Client::build(grid, config, cache.metrics().clone(), Some(cache))
    }

    fn build(
        grid: Grid,
        config: ReaderConfig,
        metrics: Arc<Metrics>,
        cache: Option<Arc<DiskCache>>,
    ) -> Client {
        let capacity = NonZeroUsize::new(config.open_files).unwrap_or(NonZeroUsize::MIN);
        let read_ahead_kib = handle::read_ahead_memory_kib(&config) as usize;
        Client {
            inner: Arc::new(Inner {
                read_ahead_memory: Arc::new(tokio::sync::Semaphore::new(read_ahead_kib)),
                grid,
                config: Arc::new(config),
                nodes: Mutex::new(LruCache::new(capacity)),
                metrics,
                cache,
            }),
        }
    }

    /// The counters this client (and a gateway over it) keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The disk cache, if any.
    pub fn cache(&self) -> Option<&Arc<DiskCache>> {
        self.inner.cache.as_ref()
    }

    /// Every counter in the OpenMetrics text format, with the open-file gauges brought up to
    /// date.
    #[cfg(feature = "metrics")]
    pub fn render_metrics(&self) -> String {
        let (files, bytes) = self.metadata();
        self.inner.metrics.open_files(files, bytes);
        self.inner.metrics.render()
    }

    /// The grid.
    pub fn grid(&self) -> &Grid {
        &self.inner.grid
    }

    /// The configuration.
    pub fn config(&self) -> &ReaderConfig {
        &self.inner.config
    }

    /// Opens a file for reading: finds its shares and verifies its UEB (once per file while
    /// its node stays open).
    pub async fn open(&self, cap: &ReadCap) -> Result<FileHandle, ReadError> {
        let node = self.open_node(&cap.verify_cap()).await?;
        Ok(FileHandle::new(
            node,
            Keystream::new(cap.key()),
            self.inner.config.clone(),
            self.inner.read_ahead_memory.clone(),
        ))
    }

    /// The shared node of a file, for ciphertext-level access with only a verify cap.
    pub async fn open_node(&self, cap: &VerifyCap) -> Result<Arc<FileNode>, ReadError> {
        let cell = {
            let mut nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .get_or_insert(*cap, || Arc::new(OnceCell::new()))
                .clone()
        };
        let node = cell
            .get_or_try_init(|| {
                FileNode::open(
                    self.inner.grid.clone(),
                    self.inner.config.clone(),
                    *cap,
                    self.inner.metrics.clone(),
                    self.inner.cache.clone(),
                )
            })
            .await?;
        self.trim_metadata();
        Ok(node.clone())
    }

    /// Open file nodes and the bytes of metadata they hold.
    pub fn metadata(&self) -> (usize, u64) {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .filter_map(|(_, cell)| cell.get())
            .fold((0, 0), |(n, bytes), node| {
                (n + 1, bytes + node.memory_bytes())
            })
    }

    /// Drops the least recently opened nodes while the open ones hold more than the budget
    /// (always keeping the most recent).
    fn trim_metadata(&self) {
        let budget = self.inner.config.metadata_bytes;
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = nodes
            .iter()
            .filter_map(|(_, cell)| cell.get())
            .map(|node| node.memory_bytes())
            .sum();
        while total > budget && nodes.len() > 1 {
            let Some((_, cell)) = nodes.pop_lru() else {
                break;
            };
            total = total.saturating_sub(cell.get().map_or(0, |node| node.memory_bytes()));
        }
    }
}
