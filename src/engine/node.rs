//! The per-file node: everything learned about one file, kept across reads and shared by
//! every concurrent reader of it. It holds the verified UEB, the verified hash-tree nodes,
//! the share map with each share's health, and the segment fetches in flight (one fetch per
//! segment however many readers want it). It only ever handles ciphertext; keys stay in
//! [`FileHandle`](super::FileHandle)s.
//!
//! Shares are found by asking every server at once; a file opens as soon as k distinct shares
//! are known and later answers join the share map as they come (Tahoe-LAFS #928). Each block
//! request goes to the share [`choice`](crate::core::choice) ranks best by its server's
//! measured latency and load; a request that runs late for its server makes the fetch ask one
//! more share, and the first k verified blocks win.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared, WeakShared};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::ReaderConfig;
use super::error::{ReadError, ReportLine, ShareReport};
use super::segment::SegmentData;
use crate::cache::{CiphertextRecord, DiskCache};
use crate::core::cache_entry::BlockKey;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::choice::{self, Candidate};
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::planner::{Record, RecordRequest, next_subset, record_hashes};
use crate::core::share_header::ShareHeader;
use crate::core::tree::{self, PartialTree};
use crate::core::ueb::{UEB_LEN, Ueb};
use crate::grid::{Grid, Server};
use crate::metrics::{Eviction, Metrics, Rejection};
use crate::store::StoreError;

/// Blocks at least this large are hashed and decoded on the blocking pool rather than on an
/// async worker (about 70 µs of BLAKE3 at this size).
const INLINE_CPU_LIMIT: u64 = 256 << 10;
/// k-subsets decoded for one segment before giving up: enough to leave out each share of a
/// k+1 set once, and never fewer than 16.
fn max_decode_attempts(k: usize) -> usize {
    (2 * (k + 1)).max(16)
}
/// Shares are listed again when a read runs out of candidates, but not more often than this.
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

type SegmentResult = Result<Arc<SegmentData>, ReadError>;
pub(crate) type SharedSegment = Shared<BoxFuture<'static, SegmentResult>>;

/// Why one share could not serve one request.
#[derive(Debug, Clone)]
pub(crate) enum Problem {
    /// Transient: I/O error, timeout, a broken answer. The share is avoided for a while and
    /// its server is marked failing.
    Unavailable(String),
    /// The share is gone from the server.
    Missing,
    /// The share's header, UEB or share chain is bad: the whole share is unusable.
    CorruptShare(String),
    /// One block failed its hash check; the share may still serve other segments.
    CorruptBlock(String),
    /// The share's UEB is the one the cap's hash names, but the cap's parameters differ from
    /// it: the cap, not the share, is wrong.
    AlteredCap,
    /// The share is of the cap's file (its header names the storage index) but holds another
    /// UEB (with this hash) than the cap names: a corrupt or forged share, or, when every
    /// share agrees on it, a cap whose UEB hash was altered.
    OtherUeb(Hash),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unavailable(why) => write!(f, "unavailable: {why}"),
            Problem::Missing => f.write_str("listed but now missing"),
            Problem::CorruptShare(why) => write!(f, "corrupt share: {why}"),
            Problem::CorruptBlock(why) => write!(f, "corrupt block: {why}"),
            Problem::AlteredCap => f.write_str("the cap's parameters differ from the file's"),
            Problem::OtherUeb(_) => f.write_str("corrupt share: UEB does not match the cap's hash"),
        }
    }
}

impl Problem {
    fn from_store(error: StoreError) -> Problem {
        match error {
            StoreError::NotFound => Problem::Missing,
            StoreError::OutOfBounds { .. } => Problem::CorruptShare(format!("truncated: {error}")),
            other => Problem::Unavailable(other.to_string()),
        }
    }

    fn rejection(&self) -> Rejection {
        match self {
            Problem::Unavailable(_) => Rejection::Unavailable,
            Problem::Missing => Rejection::Missing,
            Problem::CorruptShare(_) | Problem::OtherUeb(_) => Rejection::CorruptShare,
            Problem::CorruptBlock(_) => Rejection::CorruptBlock,
            Problem::AlteredCap => Rejection::AlteredCap,
        }
    }

    /// Whether the share's bytes are bad (worth telling its server).
    fn is_corruption(&self) -> bool {
        matches!(
            self,
            Problem::CorruptShare(_) | Problem::CorruptBlock(_) | Problem::OtherUeb(_)
        )
    }
}

/// Reads `ranges` of a share from `server` within `timeout`, keeping the server's health:
/// requests in flight, latency of answers, and a failing mark when it errs or stays silent.
async fn timed_read(
    server: &Server,
    si: StorageIndex,
    share: ShareNum,
    ranges: Vec<Range<u64>>,
    config: &ReaderConfig,
    sample_latency: bool,
    metrics: &Metrics,
) -> Result<Vec<Bytes>, Problem> {
    let (timeout, failure_ttl) = (config.request_timeout, config.failure_ttl);
    let health = server.health();
    let request = health.begin();
    let answer = tokio::time::timeout(timeout, server.store().read(si, share, ranges)).await;
    metrics.share_request(server.name(), request.started().elapsed());
    match answer {
        Ok(Ok(parts)) => {
            if sample_latency {
                health.succeeded(request.started().elapsed());
            } else {
                health.answered();
            }
            Ok(parts)
        }
        // Silence and transport failures are the server's: every file avoids it a while.
        Err(_) => {
            let problem = Problem::Unavailable(format!("no answer within {timeout:?}"));
            health.failed(&problem.to_string(), failure_ttl);
            Err(problem)
        }
        Ok(Err(error @ (StoreError::Io { .. } | StoreError::Timeout(_)))) => {
            let problem = Problem::from_store(error);
            health.failed(&problem.to_string(), failure_ttl);
            Err(problem)
        }
        // The server answered; only this share (or this answer) is at fault.
        Ok(Err(error)) => {
            if sample_latency {
                health.succeeded(request.started().elapsed());
            } else {
                health.answered();
            }
            Err(Problem::from_store(error))
        }
    }
}

/// Lists shares of `si` on every server at once and waits for all. Share numbers of `n` or
/// more cannot belong to the file (a stray file in a share directory, a confused server) and
/// are dropped.
pub(crate) async fn discover(
    grid: &Grid,
    si: StorageIndex,
    n: u16,
    timeout: Duration,
) -> Vec<Result<Vec<ShareNum>, String>> {
    let lists = grid
        .servers()
        .iter()
        .map(|server| list_one(server, si, n, timeout));
    futures::future::join_all(lists).await
}

async fn list_one(
    server: &Server,
    si: StorageIndex,
    n: u16,
    timeout: Duration,
) -> Result<Vec<ShareNum>, String> {
    match tokio::time::timeout(timeout, server.store().list(si)).await {
        Ok(Ok(mut shares)) => {
            shares.retain(|s| u16::from(s.0) < n);
            Ok(shares)
        }
        Ok(Err(e)) => Err(format!("listing failed: {e}")),
        Err(_) => Err(format!("listing failed: no answer within {timeout:?}")),
    }
}

/// One (server, share) pair found by discovery.
#[derive(Debug)]
struct Slot {
    server: usize,
    share: ShareNum,
    failures: u32,
    avoid_until: Option<Instant>,
    problem: Option<String>,
    /// The server was told this share is corrupt (once is enough).
    reported: bool,
}

impl Slot {
    fn new(server: usize, share: ShareNum) -> Slot {
        Slot {
            server,
            share,
            failures: 0,
            avoid_until: None,
            problem: None,
            reported: false,
        }
    }

    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until.is_some_and(|t| t > now)
    }
}

/// What the servers said they hold, filled in as their answers arrive.
#[derive(Default)]
struct ShareMap {
    /// Slots are only ever appended, so an index names one slot for the node's life.
    slots: Vec<Slot>,
    /// Per server: the listing error, if its last listing failed.
    listing_errors: HashMap<usize, String>,
    /// Servers whose listing is in flight.
    listing: HashSet<usize>,
    listed_at: Option<Instant>,
}

impl ShareMap {
    fn distinct_shares(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.share)
            .collect::<HashSet<_>>()
            .len()
    }

    fn reject_at_open(&mut self, si: StorageIndex, slot: usize, problem: &Problem) {
        let slot = &mut self.slots[slot];
        debug!(%si, share = %slot.share, %problem, "share rejected while opening");
        slot.problem = Some(problem.to_string());
        slot.failures += 1;
    }

    fn merge(&mut self, server: usize, listing: Result<Vec<ShareNum>, String>) {
        self.listing.remove(&server);
        match listing {
            Ok(shares) => {
                self.listing_errors.remove(&server);
                for share in shares {
                    if !self
                        .slots
                        .iter()
                        .any(|s| s.server == server && s.share == share)
                    {
                        self.slots.push(Slot::new(server, share));
                    }
                }
            }
            Err(e) => {
                self.listing_errors.insert(server, e);
            }
        }
    }
}

/// The share map with a signal for each change. Shared with the listing task.
#[derive(Default)]
struct Shares {
    map: Mutex<ShareMap>,
    changed: Notify,
}

impl Shares {
    fn lock(&self) -> MutexGuard<'_, ShareMap> {
        // Every critical section leaves the map consistent even if it panics midway.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every server for its shares of `si`, merging answers as they arrive, unless a
    /// listing is already in flight. Returns at once; see [`wait_until`](Self::wait_until).
    fn start_listing(self: &Arc<Self>, grid: &Grid, si: StorageIndex, n: u16, timeout: Duration) {
        {
            let mut map = self.lock();
            if !map.listing.is_empty() {
                return;
            }
            map.listing = (0..grid.len()).collect();
            map.listed_at = Some(Instant::now());
        }
        let (shares, grid) = (self.clone(), grid.clone());
        // A task of its own: the answers are worth keeping even if the read that asked is
        // dropped, and the timeout bounds it.
        tokio::spawn(async move {
            // However the task ends (done, or dropped with its runtime), the listing is over.
            let _over = ListingOver(shares.clone());
            let mut answers: FuturesUnordered<_> =
                grid.servers()
                    .iter()
                    .enumerate()
                    .map(|(index, server)| async move {
                        (index, list_one(server, si, n, timeout).await)
                    })
                    .collect();
            while let Some((server, listing)) = answers.next().await {
                shares.lock().merge(server, listing);
                shares.changed.notify_waiters();
            }
        });
    }

    /// Waits until `done` holds or no listing is in flight.
    async fn wait_until(&self, done: impl Fn(&ShareMap) -> bool) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let map = self.lock();
                if map.listing.is_empty() || done(&map) {
                    return;
                }
            }
            changed.await;
        }
    }
}

/// Marks a listing over when dropped: servers that never answered are no longer waited for.
struct ListingOver(Arc<Shares>);

impl Drop for ListingOver {
    fn drop(&mut self) {
        self.0.lock().listing.clear();
        self.0.changed.notify_waiters();
    }
}

/// Verified hash-tree nodes.
struct Trees {
    share_tree: PartialTree,
    block_trees: Vec<Option<PartialTree>>,
    ciphertext_tree: PartialTree,
}

/// A verified block with what came with it.
#[derive(Clone)]
struct VerifiedBlock {
    share: ShareNum,
    data: Bytes,
    leaf: Hash,
    ciphertext_chain: Vec<Hash>,
}

/// The unverified records of a batch of segments: per share (by slot), one per segment.
struct RunRecords {
    records: Vec<(usize, Vec<Bytes>)>,
}

/// A block request of a segment fetch in flight.
struct Attempt {
    share: ShareNum,
    server: usize,
    /// When it counts as late (its server's hedge delay after it started).
    late_at: Instant,
    late: bool,
}

/// Everything known about one file. See the module documentation.
pub struct FileNode {
    cap: VerifyCap,
    layout: ShareLayout,
    codec: Codec,
    grid: Grid,
    config: Arc<ReaderConfig>,
    ueb: Ueb,
    shares: Arc<Shares>,
    trees: Mutex<Trees>,
    inflight: Mutex<HashMap<u64, WeakShared<BoxFuture<'static, SegmentResult>>>>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<DiskCache>>,
}

impl fmt::Debug for FileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNode")
            .field("storage_index", &self.cap.storage_index())
            .finish_non_exhaustive()
    }
}

type HeaderRead = tokio::task::JoinHandle<(usize, Result<Vec<u8>, Problem>)>;

impl FileNode {
    /// Finds the file's shares and verifies its UEB against the cap.
    pub(crate) async fn open(
        grid: Grid,
        config: Arc<ReaderConfig>,
        cap: VerifyCap,
        metrics: Arc<Metrics>,
        cache: Option<Arc<DiskCache>>,
    ) -> Result<Arc<FileNode>, ReadError> {
        let si = cap.storage_index();
        let geometry = *cap.geometry();
        let k = usize::from(geometry.k());
        let layout = ShareLayout::new(&geometry);
        let codec = Codec::new(geometry.k(), geometry.n())
            .map_err(|e| ReadError::Internal(e.to_string()))?;
        let shares = Arc::new(Shares::default());
        shares.start_listing(&grid, si, geometry.n(), config.request_timeout);

        // A file with blocks in the disk cache opens from the UEB they carry, checked against
        // the cap like one from a share: cached reads then need no server at all, and the
        // listing goes on in the background for the segments the cache lacks.
        if let Some(cache) = &cache {
            let reader = cache.clone();
            let cached = tokio::task::spawn_blocking(move || reader.file_prefix(si, UEB_LEN))
                .await
                .ok()
                .flatten();
            if let Some(bytes) = cached
                && hash::ueb(&bytes) == cap.ueb_hash()
                && let Ok(ueb) = Ueb::from_bytes(&bytes)
            {
                if ueb.geometry != geometry {
                    return Err(ReadError::AlteredCap { storage_index: si });
                }
                debug!(%si, "opened from the disk cache");
                let cache = Some(cache.clone());
                return Ok(FileNode::with_ueb(
                    grid, config, cap, layout, codec, ueb, shares, metrics, cache,
                ));
            }
        }

        // The UEB is the same in every share; take it from the first that proves it. Headers
        // are read k at a time, in parallel: one proves the UEB, and the others open the
        // very share files the first segment will be read from. A header read that runs late
        // is hedged like a block request.
        let mut tried: HashSet<usize> = HashSet::new();
        // Shares that hold another UEB than the cap names, by that UEB's hash: when k shares
        // agree on one and none matches the cap, the cap is what is wrong.
        let mut other_uebs: HashMap<Hash, HashSet<ShareNum>> = HashMap::new();
        let mut running: FuturesUnordered<HeaderRead> = FuturesUnordered::new();
        // Header reads in flight and not yet late: slot → when it is late.
        let mut deadlines: HashMap<usize, Instant> = HashMap::new();
        let mut want = k.max(1);
        // Reading starts once k shares are known, but primaries save decoding: the ones not
        // yet heard of get a short grace (on a local grid every server has answered by then).
        shares.wait_until(|map| map.distinct_shares() >= k).await;
        let primaries_known = |map: &ShareMap| {
            (0..geometry.k()).all(|p| map.slots.iter().any(|s| u16::from(s.share.0) == p))
        };
        let _ =
            tokio::time::timeout(config.primary_grace, shares.wait_until(primaries_known)).await;
        let ueb_bytes = loop {
            if running.is_empty() {
                shares
                    .wait_until(|map| map.distinct_shares() >= k && map.slots.len() > tried.len())
                    .await;
            }
            // Armed before looking, so shares merged while we pick are not missed.
            let mut more_shares = std::pin::pin!(shares.changed.notified());
            more_shares.as_mut().enable();
            let (picks, report) = {
                let map = shares.lock();
                let picks = pick_slots(
                    &grid,
                    &config,
                    &map,
                    geometry.k(),
                    want.saturating_sub(running.len()),
                    &tried,
                    &HashSet::new(),
                );
                let exhausted = picks.is_empty() && running.is_empty() && map.listing.is_empty();
                let too_few = map.listing.is_empty() && map.distinct_shares() < k;
                let report = (exhausted || too_few).then(|| {
                    (
                        map.distinct_shares(),
                        build_report(&grid, &map, &HashMap::new()),
                    )
                });
                (picks, report)
            };
            if let Some((distinct, report)) = report {
                if other_uebs.values().any(|shares| shares.len() >= k) {
                    return Err(ReadError::AlteredCap { storage_index: si });
                }
                return Err(if distinct == 0 {
                    ReadError::NoShares {
                        storage_index: si,
                        report,
                    }
                } else {
                    ReadError::NotEnoughShares {
                        storage_index: si,
                        segment: None,
                        needed: geometry.k(),
                        usable: if distinct < k { distinct } else { 0 },
                        report,
                    }
                });
            }
            for slot in picks {
                tried.insert(slot);
                let (server_index, share) = {
                    let map = shares.lock();
                    (map.slots[slot].server, map.slots[slot].share)
                };
                let server = grid.servers()[server_index].clone();
                let delay = choice::hedge_delay(&server.health().latency(), &config.share_choice);
                deadlines.insert(slot, Instant::now() + delay);
                let (region, config) = (layout.header_region(), config.clone());
                let (cap, layout, metrics) = (cap, layout, metrics.clone());
                running.push(tokio::spawn(async move {
                    let read =
                        timed_read(&server, si, share, vec![region], &config, true, &metrics);
                    let mut read = std::pin::pin!(read);
                    // Late or not, the read goes on (it may still open the file); a late one
                    // marks its server slow, even when another read already opened the file.
                    let read = tokio::select! {
                        read = &mut read => read,
                        () = tokio::time::sleep(delay) => {
                            server.health().ran_late(config.slow_ttl);
                            read.await
                        }
                    };
                    let checked = read.and_then(|parts| {
                        check_header_region(
                            &cap,
                            &layout,
                            share,
                            parts.first().map_or(&[][..], |p| &p[..]),
                        )
                    });
                    (slot, checked)
                }));
            }
            if running.is_empty() {
                // Every known share was tried; wait for more answers.
                continue;
            }
            let next_late = deadlines.values().min().copied();
            let late = async {
                match next_late {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = running.next() => {
                    let (slot, outcome) = joined
                        .map_err(|e| ReadError::Internal(format!("header read failed: {e}")))?;
                    deadlines.remove(&slot);
                    match outcome {
                        Ok(ueb_bytes) => break ueb_bytes,
                        Err(Problem::AlteredCap) => {
                            return Err(ReadError::AlteredCap { storage_index: si });
                        }
                        Err(problem) => {
                            metrics.share_rejected(problem.rejection());
                            let mut map = shares.lock();
                            if let Problem::OtherUeb(hash) = problem {
                                other_uebs.entry(hash).or_default().insert(map.slots[slot].share);
                            }
                            map.reject_at_open(si, slot, &problem);
                        }
                    }
                }
                () = late => {
                    // Each late read is replaced by one more (its task marks its server).
                    let now = Instant::now();
                    deadlines.retain(|_, &mut at| {
                        let late = at <= now;
                        if late {
                            want += 1;
                            metrics.hedged();
                        }
                        !late
                    });
                }
                // New shares may serve a hedge that found no candidate before.
                () = &mut more_shares => {}
            }
        };
        // The other reads started together and are usually done within microseconds: wait
        // for them up to their hedge deadline, so their failures are recorded and no request
        // outlives the open. Any still running go on in their tasks, warming share files.
        let deadline = deadlines
            .values()
            .min()
            .copied()
            .unwrap_or_else(Instant::now);
        let drain = async {
            while let Some(joined) = running.next().await {
                if let Ok((slot, Err(problem))) = joined {
                    metrics.share_rejected(problem.rejection());
                    shares.lock().reject_at_open(si, slot, &problem);
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), drain).await;
        let ueb = Ueb::from_bytes(&ueb_bytes).map_err(|e| ReadError::Internal(e.to_string()))?;
        Ok(FileNode::with_ueb(
            grid, config, cap, layout, codec, ueb, shares, metrics, cache,
        ))
    }

    /// The node of a file whose UEB is verified.
    #[allow(clippy::too_many_arguments)]
    fn with_ueb(
        grid: Grid,
        config: Arc<ReaderConfig>,
        cap: VerifyCap,
        layout: ShareLayout,
        codec: Codec,
        ueb: Ueb,
        shares: Arc<Shares>,
        metrics: Arc<Metrics>,
        cache: Option<Arc<DiskCache>>,
    ) -> Arc<FileNode> {
        let geometry = cap.geometry();
        let trees = Trees {
            share_tree: PartialTree::new(geometry.share_tree(), ueb.share_root),
            block_trees: vec![None; usize::from(geometry.n())],
            ciphertext_tree: PartialTree::new(geometry.segment_tree(), ueb.ciphertext_root),
        };
        Arc::new(FileNode {
            cap,
            layout,
            codec,
            grid,
            config,
            ueb,
            shares,
            trees: Mutex::new(trees),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            cache,
        })
    }

    /// The verify cap this node was opened with.
    pub fn verify_cap(&self) -> &VerifyCap {
        &self.cap
    }

    /// The storage index.
    pub fn storage_index(&self) -> StorageIndex {
        self.cap.storage_index()
    }

    /// The verified UEB.
    pub fn ueb(&self) -> &Ueb {
        &self.ueb
    }

    /// Whether the file's servers include any across a network.
    pub fn is_remote(&self) -> bool {
        self.grid.is_remote()
    }

    /// The share layout.
    pub fn layout(&self) -> &ShareLayout {
        &self.layout
    }

    /// Distinct share numbers currently known and not marked as failing.
    pub fn healthy_shares(&self) -> usize {
        let map = self.shares.lock();
        let now = Instant::now();
        map.slots
            .iter()
            .filter(|s| !s.avoided(now))
            .map(|s| s.share)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Verified hash-tree nodes held, and their approximate memory.
    pub fn tree_memory(&self) -> (usize, usize) {
        let trees = self.lock_trees();
        let all = std::iter::once(&trees.share_tree)
            .chain(std::iter::once(&trees.ciphertext_tree))
            .chain(trees.block_trees.iter().flatten());
        all.fold((0, 0), |(n, b), t| (n + t.known(), b + t.memory_bytes()))
    }

    /// Approximate bytes this node holds: verified tree nodes, the share map, and a fixed
    /// part for the UEB and bookkeeping.
    pub fn memory_bytes(&self) -> u64 {
        const FIXED: u64 = 2048;
        let slots = self.shares.lock().slots.len() as u64;
        FIXED + self.tree_memory().1 as u64 + slots * std::mem::size_of::<Slot>() as u64
    }

    /// The current share report.
    pub fn report(&self) -> ShareReport {
        build_report(&self.grid, &self.shares.lock(), &HashMap::new())
    }

    fn lock_trees(&self) -> MutexGuard<'_, Trees> {
        // Every critical section leaves the trees consistent even if it panics midway.
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verified ciphertext of segment `s`, fetching it unless another reader already is.
    /// Dropping every copy of the returned future cancels the fetch.
    pub(crate) fn segment(self: &Arc<Self>, s: SegmentIndex) -> SharedSegment {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = inflight.get(&s.0).and_then(WeakShared::upgrade) {
            return existing;
        }
        // No task of its own: whichever reader polls the shared future drives the fetch (the
        // readers' own tasks spread segments over the cores), and when the last reader drops
        // it, the fetch is dropped with it.
        let shared = self.clone().fetch_segment(s).boxed().shared();
        if inflight.len() >= 64 {
            inflight.retain(|_, weak| weak.upgrade().is_some());
        }
        if let Some(weak) = shared.downgrade() {
            inflight.insert(s.0, weak);
        }
        shared
    }

    /// The verified ciphertext of each of `segments` (consecutive), like
    /// [`segment`](Self::segment) for each, but those not already being fetched are fetched
    /// together: one request per share brings all their records (a sequential reader's
    /// read-ahead then costs one exchange per share per batch, not per segment). Each
    /// segment is then verified and decoded by its own reader, so a batch still uses every
    /// core. Anything unusual — a failed or late share, a record or decode that does not
    /// check — sends that segment through the single-segment fetch, with all its hedging
    /// and retries.
    pub(crate) fn segment_run(self: &Arc<Self>, segments: &[SegmentIndex]) -> Vec<SharedSegment> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Segments the disk cache holds need no request: they take the single-segment path,
        // which reads them from it.
        let fresh: Vec<SegmentIndex> = segments
            .iter()
            .copied()
            .filter(|s| inflight.get(&s.0).and_then(WeakShared::upgrade).is_none())
            .filter(|&s| !self.fully_cached(s))
            .collect();
        let mut batched = HashMap::new();
        if fresh.len() >= 2 {
            let run = self.clone().fetch_run(fresh.clone()).boxed().shared();
            for (i, &segment) in fresh.iter().enumerate() {
                let (node, run) = (self.clone(), run.clone());
                let one = async move {
                    let outcome = match run.await {
                        Ok(records) => node.clone().decode_run_segment(&records, i, segment).await,
                        Err(why) => Err(ReadError::Internal(why)),
                    };
                    match outcome {
                        Ok(data) => Ok(data),
                        Err(why) => {
                            debug!(si = %node.storage_index(), %segment, %why, "batched fetch fell back to one segment");
                            node.fetch_segment(segment).await
                        }
                    }
                }
                .boxed()
                .shared();
                if let Some(weak) = one.downgrade() {
                    inflight.insert(segment.0, weak);
                }
                batched.insert(segment.0, one);
            }
        }
        drop(inflight);
        segments
            .iter()
            .map(|&s| batched.remove(&s.0).unwrap_or_else(|| self.segment(s)))
            .collect()
    }

    /// Fetches the records of `segments` from k shares, one request each, unverified; see
    /// [`segment_run`](Self::segment_run).
    async fn fetch_run(
        self: Arc<Self>,
        segments: Vec<SegmentIndex>,
    ) -> Result<Arc<RunRecords>, String> {
        let k = usize::from(self.cap.geometry().k());
        let slots = self.pick(k, &HashSet::new(), &HashSet::new());
        if slots.len() < k {
            return Err("too few shares known".into());
        }
        let this = &self;
        let fetches = slots.iter().map(|&slot| {
            let server = this.shares.lock().slots[slot].server;
            let health = this.grid.servers()[server].health();
            // Late, as for one block, but with time to carry every block of the batch.
            let late = choice::hedge_delay(&health.latency(), &this.config.share_choice)
                .saturating_mul(segments.len() as u32);
            let segments = &segments;
            async move {
                let fetch = this.fetch_records(slot, segments);
                match tokio::time::timeout(late, fetch).await {
                    Ok(result) => (slot, result.map_err(Some)),
                    Err(_) => {
                        health.ran_late(this.config.slow_ttl);
                        (slot, Err(None))
                    }
                }
            }
        });
        let mut records = Vec::with_capacity(k);
        for (slot, result) in futures::future::join_all(fetches).await {
            match result {
                Ok(parts) => records.push((slot, parts)),
                Err(None) => return Err("a share was late".into()),
                Err(Some(problem)) => {
                    self.log_rejection(slot, segments[0], &problem);
                    self.record(slot, Err(&problem));
                    return Err(problem.to_string());
                }
            }
        }
        Ok(Arc::new(RunRecords { records }))
    }

    /// Verifies and decodes segment `segment`, the `index`-th of a batch, from its records.
    async fn decode_run_segment(
        self: Arc<Self>,
        run: &RunRecords,
        index: usize,
        segment: SegmentIndex,
    ) -> SegmentResult {
        let mut blocks = Vec::with_capacity(run.records.len());
        for (slot, parts) in &run.records {
            let share = self.shares.lock().slots[*slot].share;
            match self
                .verify_record(share, segment, parts[index].clone())
                .await
            {
                Ok(block) => blocks.push(block),
                Err(problem) => {
                    self.log_rejection(*slot, segment, &problem);
                    self.record(*slot, Err(&problem));
                    return Err(ReadError::Internal(problem.to_string()));
                }
            }
        }
        let chains = blocks.iter().map(|b| b.ciphertext_chain.clone()).collect();
        let data = self
            .clone()
            .decode_and_check(segment, blocks.clone(), chains)
            .await
            .map_err(ReadError::Internal)?;
        if self.cache.is_some() {
            self.metrics.cache_lookups(0, blocks.len() as u64);
            self.cache_blocks(segment, &blocks);
        }
        Ok(data)
    }

    /// A share's first failure is a warning; repeats (a share damaged throughout) are debug.
    fn log_rejection(&self, slot: usize, segment: SegmentIndex, problem: &Problem) {
        let map = self.shares.lock();
        let s = &map.slots[slot];
        let server = self.grid.servers()[s.server].name();
        let si = self.storage_index();
        if s.failures == 0 {
            warn!(%si, %segment, share = %s.share, server, %problem, "share rejected");
        } else {
            debug!(%si, %segment, share = %s.share, server, %problem, "share rejected again");
        }
    }

    fn record(&self, slot_index: usize, outcome: Result<(), &Problem>) {
        let mut map = self.shares.lock();
        let slot = &mut map.slots[slot_index];
        match outcome {
            Ok(()) => {
                slot.failures /= 2;
                slot.avoid_until = None;
                slot.problem = None;
            }
            Err(problem) => {
                self.metrics.share_rejected(problem.rejection());
                slot.failures = slot.failures.saturating_add(1);
                slot.problem = Some(problem.to_string());
                let ttl = match problem {
                    Problem::Unavailable(_) | Problem::Missing => Some(self.config.failure_ttl),
                    Problem::CorruptShare(_) | Problem::OtherUeb(_) => {
                        Some(self.config.failure_ttl * 10)
                    }
                    Problem::CorruptBlock(_) | Problem::AlteredCap => None,
                };
                slot.avoid_until = ttl.map(|ttl| Instant::now() + ttl);
                if problem.is_corruption() && !slot.reported {
                    slot.reported = true;
                    self.report_corruption(slot.server, slot.share, problem.to_string());
                }
            }
        }
    }

    /// Tells a server that one of its shares is corrupt, in the background (a courtesy: its
    /// operator can repair it; nothing here waits for or depends on the answer).
    fn report_corruption(&self, server: usize, share: ShareNum, reason: String) {
        let store = self.grid.servers()[server].store().clone();
        let (si, timeout) = (self.storage_index(), self.config.request_timeout);
        tokio::spawn(async move {
            let report = store.report_corrupt(si, share, reason);
            if tokio::time::timeout(timeout, report).await.is_err() {
                debug!(%si, %share, server = store.name(), "corruption report not answered");
            }
        });
    }

    /// Lists shares again (at most every [`REDISCOVERY_INTERVAL`]) and waits until a new
    /// (server, share) pair turns up or the listing ends.
    async fn rediscover(&self) {
        let known = {
            let map = self.shares.lock();
            if map.listing.is_empty()
                && map
                    .listed_at
                    .is_some_and(|t| t.elapsed() < REDISCOVERY_INTERVAL)
            {
                return;
            }
            map.slots.len()
        };
        self.shares.start_listing(
            &self.grid,
            self.storage_index(),
            self.cap.geometry().n(),
            self.config.request_timeout,
        );
        self.shares.wait_until(|map| map.slots.len() > known).await;
    }

    /// Picks up to `count` slots holding distinct shares not in `skip_shares`, never a slot
    /// in `tried`; see [`choice::choose`].
    fn pick(
        &self,
        count: usize,
        tried: &HashSet<usize>,
        skip_shares: &HashSet<ShareNum>,
    ) -> Vec<usize> {
        let map = self.shares.lock();
        pick_slots(
            &self.grid,
            &self.config,
            &map,
            self.cap.geometry().k(),
            count,
            tried,
            skip_shares,
        )
    }

    fn cache_key(&self, share: ShareNum, segment: SegmentIndex) -> BlockKey {
        BlockKey {
            storage_index: self.storage_index(),
            share,
            segment,
        }
    }

    /// Whether the cache holds k blocks of `segment` (no I/O: its index only).
    fn fully_cached(&self, segment: SegmentIndex) -> bool {
        let g = self.cap.geometry();
        self.cache.as_ref().is_some_and(|cache| {
            cache
                .shares_cached(self.storage_index(), segment, g.n())
                .len()
                >= usize::from(g.k())
        })
    }

    /// Up to k blocks of `segment` from the disk cache, each verified like a block from a
    /// server (an entry is the share's whole record, so it proves itself up to the UEB even
    /// when this node has none of its tree yet). A bad entry is dropped and counted.
    async fn cached_blocks(&self, segment: SegmentIndex) -> BTreeMap<ShareNum, VerifiedBlock> {
        let mut verified = BTreeMap::new();
        let Some(cache) = &self.cache else {
            return verified;
        };
        let (k, n) = (self.cap.geometry().k(), self.cap.geometry().n());
        let mut shares = cache.shares_cached(self.storage_index(), segment, n);
        shares.truncate(usize::from(k));
        if !shares.is_empty() {
            let keys: Vec<BlockKey> = shares.iter().map(|&s| self.cache_key(s, segment)).collect();
            let record = self.layout.record_range(segment);
            let body_len = (UEB_LEN as u64) + record.end - record.start;
            let reader = cache.clone();
            let records = tokio::task::spawn_blocking(move || {
                keys.into_iter()
                    .filter_map(|key| Some((key, reader.read(&key, body_len)?)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let ueb = self.ueb.to_bytes();
            for (key, body) in records {
                let record = body.slice(UEB_LEN..);
                let checked = if body[..UEB_LEN] != ueb[..] {
                    Err(Problem::CorruptBlock(
                        "cache entry: another file's UEB".into(),
                    ))
                } else {
                    match self.verify_record(key.share, segment, record.clone()).await {
                        Ok(block) => self
                            .check_whole_proof(&block, segment, &record)
                            .map(|()| block),
                        Err(problem) => Err(problem),
                    }
                };
                match checked {
                    Ok(block) => {
                        verified.insert(key.share, block);
                    }
                    Err(problem) => {
                        warn!(si = %self.storage_index(), %segment, share = %key.share, %problem, "cache entry failed its check; dropped");
                        self.metrics.share_rejected(Rejection::CacheEntry);
                        let cache = cache.clone();
                        tokio::task::spawn_blocking(move || cache.discard(&key, Eviction::Corrupt));
                    }
                }
            }
        }
        let hits = verified.len().min(usize::from(k));
        self.metrics
            .cache_lookups(hits as u64, (usize::from(k) - hits) as u64);
        verified
    }

    /// A cached record must prove its block at every level, up to the UEB's share root: the
    /// usual check uses only the levels this node still lacks, and rot in the others would
    /// stay in the cache unnoticed. (Its ciphertext chain is compared once the segment is
    /// decoded; see [`check_cached_ciphertext_chains`](Self::check_cached_ciphertext_chains).)
    fn check_whole_proof(
        &self,
        block: &VerifiedBlock,
        segment: SegmentIndex,
        record: &[u8],
    ) -> Result<(), Problem> {
        let bad = |why: &str| Problem::CorruptBlock(format!("cache entry: {why}"));
        let parsed =
            Record::parse(&self.layout, segment, record).ok_or_else(|| bad("wrong length"))?;
        let share_chain = parsed
            .share_chain
            .ok_or_else(|| bad("not a whole record"))?;
        let g = self.cap.geometry();
        let root = tree::root_from_chain(
            &g.segment_tree(),
            segment.0,
            block.leaf,
            &parsed.block_chain,
        )
        .map_err(|e| bad(&e.to_string()))?;
        let share_root = tree::root_from_chain(
            &g.share_tree(),
            u64::from(block.share.0),
            root,
            &share_chain,
        )
        .map_err(|e| bad(&e.to_string()))?;
        if share_root != self.ueb.share_root {
            return Err(bad("its hashes do not lead to the UEB's share root"));
        }
        Ok(())
    }

    /// After `segment` decoded, the ciphertext chain of each block read from the cache must be
    /// the verified one; an entry whose chain differs is dropped (its block was good, so the
    /// segment stands).
    fn check_cached_ciphertext_chains(
        &self,
        segment: SegmentIndex,
        verified: &BTreeMap<ShareNum, VerifiedBlock>,
        from_cache: &HashSet<ShareNum>,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        let known = self.lock_trees().ciphertext_tree.chain(segment.0);
        for share in from_cache {
            let Some(block) = verified.get(share) else {
                continue;
            };
            if known.as_ref() != Some(&block.ciphertext_chain) {
                warn!(si = %self.storage_index(), %segment, %share, "cache entry's ciphertext chain is wrong; dropped");
                self.metrics.share_rejected(Rejection::CacheEntry);
                let (cache, key) = (cache.clone(), self.cache_key(*share, segment));
                tokio::task::spawn_blocking(move || cache.discard(&key, Eviction::Corrupt));
            }
        }
    }

    /// Stores verified `blocks` of `segment` in the disk cache (in the background), each as
    /// its share's whole record rebuilt from the verified trees.
    fn cache_blocks<'a>(
        &self,
        segment: SegmentIndex,
        blocks: impl IntoIterator<Item = &'a VerifiedBlock>,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        let j = segment.0;
        for block in blocks {
            let hashes = {
                let trees = self.lock_trees();
                let block_chain = trees.block_trees[block.share.index()]
                    .as_ref()
                    .and_then(|t| t.chain(j));
                let ciphertext_chain = trees.ciphertext_tree.chain(j);
                let share_chain = trees.share_tree.chain(u64::from(block.share.0));
                match (block_chain, ciphertext_chain, share_chain) {
                    (Some(b), Some(c), Some(s)) => record_hashes(&self.layout, &b, &c, &s),
                    _ => None,
                }
            };
            match hashes {
                Some(hashes) => cache.insert(
                    self.cache_key(block.share, segment),
                    CiphertextRecord::verified(self.ueb.to_bytes(), block.data.clone(), hashes),
                ),
                None => {
                    debug!(si = %self.storage_index(), %segment, share = %block.share, "block not cached: its proof is not all known")
                }
            }
        }
    }

    async fn fetch_segment(self: Arc<Self>, segment: SegmentIndex) -> SegmentResult {
        let k = usize::from(self.cap.geometry().k());
        let mut verified: BTreeMap<ShareNum, VerifiedBlock> = self.cached_blocks(segment).await;
        let from_cache: HashSet<ShareNum> = verified.keys().copied().collect();
        let mut tried: HashSet<usize> = HashSet::new();
        let mut problems: HashMap<usize, String> = HashMap::new();
        let mut decoded: HashSet<Vec<ShareNum>> = HashSet::new();
        let mut attempts: HashMap<usize, Attempt> = HashMap::new();
        type BlockFetch<'a> =
            Pin<Box<dyn Future<Output = (usize, Result<VerifiedBlock, Problem>)> + Send + 'a>>;
        let mut active: FuturesUnordered<BlockFetch<'_>> = FuturesUnordered::new();
        let mut want = k;
        let mut rediscovered = false;
        loop {
            if verified.len() >= want {
                let shares: Vec<ShareNum> = verified.keys().copied().collect();
                match next_subset(&shares, k, &decoded) {
                    Some(subset) if decoded.len() < max_decode_attempts(k) => {
                        decoded.insert(subset.clone());
                        let blocks: Vec<VerifiedBlock> =
                            subset.iter().map(|s| verified[s].clone()).collect();
                        // Any record's ciphertext-tree levels will do, not only the subset's.
                        let chains: Vec<Vec<Hash>> = verified
                            .values()
                            .map(|b| b.ciphertext_chain.clone())
                            .collect();
                        let fetched: Vec<VerifiedBlock> = blocks
                            .iter()
                            .filter(|b| !from_cache.contains(&b.share))
                            .cloned()
                            .collect();
                        match self.clone().decode_and_check(segment, blocks, chains).await {
                            // Requests still in flight are dropped here, and so cancelled.
                            Ok(data) => {
                                self.cache_blocks(segment, &fetched);
                                self.check_cached_ciphertext_chains(
                                    segment,
                                    &verified,
                                    &from_cache,
                                );
                                return Ok(data);
                            }
                            Err(why) => {
                                warn!(si = %self.storage_index(), %segment, ?subset, %why, "decoded segment rejected");
                            }
                        }
                    }
                    // Every combination of what we hold failed: fetch one more share to make
                    // new ones.
                    _ if decoded.len() < max_decode_attempts(k)
                        && want < usize::from(self.cap.geometry().n()) =>
                    {
                        want += 1
                    }
                    _ => return Err(self.give_up(segment, &verified, &problems, decoded.len())),
                }
                continue;
            }

            // A late request no longer counts: ask as many more shares as are missing.
            let on_time = attempts.values().filter(|a| !a.late).count();
            let missing = want - verified.len();
            // Armed before looking: a listing answer that arrives after the pick found too few
            // candidates wakes the fetch instead of leaving it on a stalled request.
            let mut more_shares = std::pin::pin!(self.shares.changed.notified());
            more_shares.as_mut().enable();
            let mut short_of_candidates = false;
            if missing > on_time {
                let skip: HashSet<ShareNum> = verified
                    .keys()
                    .copied()
                    .chain(attempts.values().map(|a| a.share))
                    .collect();
                let picks = self.pick(missing - on_time, &tried, &skip);
                short_of_candidates = picks.len() < missing - on_time;
                for slot in picks {
                    tried.insert(slot);
                    let (server, share) = {
                        let map = self.shares.lock();
                        (map.slots[slot].server, map.slots[slot].share)
                    };
                    let delay = choice::hedge_delay(
                        &self.grid.servers()[server].health().latency(),
                        &self.config.share_choice,
                    );
                    attempts.insert(
                        slot,
                        Attempt {
                            share,
                            server,
                            late_at: Instant::now() + delay,
                            late: false,
                        },
                    );
                    let this = &self;
                    active.push(Box::pin(async move {
                        (slot, this.fetch_block(slot, segment).await)
                    }));
                }
            }
            if active.is_empty() {
                if !rediscovered {
                    rediscovered = true;
                    self.rediscover().await;
                    continue;
                }
                return Err(self.give_up(segment, &verified, &problems, decoded.len()));
            }

            let listing = !self.shares.lock().listing.is_empty();
            let next_late = attempts
                .values()
                .filter(|a| !a.late)
                .map(|a| a.late_at)
                .min();
            let late = async {
                match next_late {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((slot, result)) = active.next() => {
                    attempts.remove(&slot);
                    match result {
                        Ok(block) => {
                            self.record(slot, Ok(()));
                            verified.entry(block.share).or_insert(block);
                        }
                        Err(problem) => {
                            self.log_rejection(slot, segment, &problem);
                            self.record(slot, Err(&problem));
                            problems.insert(slot, problem.to_string());
                        }
                    }
                }
                () = late => {
                    let now = Instant::now();
                    for attempt in attempts.values_mut().filter(|a| !a.late && a.late_at <= now) {
                        attempt.late = true;
                        self.metrics.hedged();
                        let server = &self.grid.servers()[attempt.server];
                        server.health().ran_late(self.config.slow_ttl);
                        debug!(si = %self.storage_index(), %segment, share = %attempt.share, server = server.name(), "block request late; asking another share");
                    }
                }
                () = &mut more_shares, if short_of_candidates && listing => {}
            }
        }
    }

    fn give_up(
        &self,
        segment: SegmentIndex,
        verified: &BTreeMap<ShareNum, VerifiedBlock>,
        problems: &HashMap<usize, String>,
        attempts: usize,
    ) -> ReadError {
        let report = build_report(&self.grid, &self.shares.lock(), problems);
        let si = self.storage_index();
        if attempts > 0 && verified.len() >= usize::from(self.cap.geometry().k()) {
            ReadError::Inconsistent {
                storage_index: si,
                segment,
                attempts,
                report,
            }
        } else {
            ReadError::NotEnoughShares {
                storage_index: si,
                segment: Some(segment),
                needed: self.cap.geometry().k(),
                usable: verified.len(),
                report,
            }
        }
    }

    /// Fetches one share's block of `segment` with every hash node still missing (one
    /// request), and verifies it up to the UEB.
    async fn fetch_block(
        &self,
        slot_index: usize,
        segment: SegmentIndex,
    ) -> Result<VerifiedBlock, Problem> {
        let share = self.shares.lock().slots[slot_index].share;
        let mut records = self.fetch_records(slot_index, &[segment]).await?;
        let record = records.pop().unwrap_or_default();
        self.verify_record(share, segment, record).await
    }

    /// Fetches one share's records of `segments` (each block with the hash nodes still
    /// missing), in one request of one range per segment, unverified.
    async fn fetch_records(
        &self,
        slot_index: usize,
        segments: &[SegmentIndex],
    ) -> Result<Vec<Bytes>, Problem> {
        let si = self.storage_index();
        let (server, share) = {
            let map = self.shares.lock();
            let slot = &map.slots[slot_index];
            (slot.server, slot.share)
        };
        let ranges = {
            let trees = self.lock_trees();
            segments
                .iter()
                .map(|&segment| {
                    RecordRequest::plan(
                        &self.layout,
                        segment,
                        trees.block_trees[share.index()].as_ref(),
                        &trees.ciphertext_tree,
                    )
                    .range(&self.layout)
                })
                .collect()
        };
        let parts = timed_read(
            &self.grid.servers()[server],
            si,
            share,
            ranges,
            &self.config,
            // A latency sample is one block's worth: longer answers would skew hedge delays.
            segments.len() == 1,
            &self.metrics,
        )
        .await?;
        if parts.len() != segments.len() {
            return Err(Problem::Unavailable(
                "the answer has the wrong number of parts".into(),
            ));
        }
        Ok(parts)
    }

    /// Verifies one record (a block and the hash nodes that came with it) up to the UEB.
    async fn verify_record(
        &self,
        share: ShareNum,
        segment: SegmentIndex,
        bytes: Bytes,
    ) -> Result<VerifiedBlock, Problem> {
        let record = Record::parse(&self.layout, segment, &bytes).ok_or_else(|| {
            Problem::CorruptShare("the server returned the wrong number of bytes".into())
        })?;
        let data = bytes.slice(..record.block.len());
        let Record {
            block_chain,
            ciphertext_chain,
            share_chain,
            ..
        } = record;
        let leaf = if data.len() as u64 >= INLINE_CPU_LIMIT {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash::block_leaf(&data))
                .await
                .map_err(|e| Problem::Unavailable(format!("hashing task failed: {e}")))?
        } else {
            hash::block_leaf(&data)
        };

        let mut trees = self.lock_trees();
        let trees = &mut *trees;
        let j = segment.0;
        if trees.block_trees[share.index()].is_none() {
            // The first block from this share: hash it all the way up to the UEB's share root.
            let shape = self.cap.geometry().segment_tree();
            let chain = share_chain
                .as_ref()
                .ok_or_else(|| Problem::CorruptBlock("record lacks its share chain".into()))?;
            let root = tree::root_from_chain(&shape, j, leaf, &block_chain)
                .map_err(|e| Problem::CorruptBlock(format!("segment {segment}: {e}")))?;
            trees
                .share_tree
                .verify_leaf(u64::from(share.0), root, chain)
                .map_err(|e| {
                    Problem::CorruptBlock(format!(
                        "segment {segment} does not hash up to the UEB's share root ({e})"
                    ))
                })?;
            trees.block_trees[share.index()] = Some(PartialTree::new(shape, root));
        }
        if let Some(tree) = trees.block_trees[share.index()].as_mut() {
            tree.verify_leaf(j, leaf, &block_chain).map_err(|e| {
                Problem::CorruptBlock(format!("segment {segment} fails its hash check ({e})"))
            })?;
        }
        Ok(VerifiedBlock {
            share,
            data,
            leaf,
            ciphertext_chain,
        })
    }

    /// Decodes `blocks` (k verified blocks) and checks the result against the ciphertext tree
    /// through any of `chains`.
    async fn decode_and_check(
        self: Arc<Self>,
        segment: SegmentIndex,
        blocks: Vec<VerifiedBlock>,
        chains: Vec<Vec<Hash>>,
    ) -> Result<Arc<SegmentData>, String> {
        let big = self.cap.geometry().block_size(segment) >= INLINE_CPU_LIMIT;
        let node = self.clone();
        let work = move || node.decode_and_check_blocking(segment, blocks, &chains);
        if big {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| format!("decoding task failed: {e}"))?
        } else {
            work()
        }
    }

    fn decode_and_check_blocking(
        &self,
        segment: SegmentIndex,
        blocks: Vec<VerifiedBlock>,
        chains: &[Vec<Hash>],
    ) -> Result<Arc<SegmentData>, String> {
        let g = self.cap.geometry();
        let k = usize::from(g.k());
        let all_primary = blocks.iter().enumerate().all(|(m, b)| b.share.index() == m);
        let (data, leaves): (Vec<Bytes>, Vec<Hash>) = if all_primary && blocks.len() == k {
            blocks.iter().map(|b| (b.data.clone(), b.leaf)).unzip()
        } else {
            let inputs: Vec<(usize, &[u8])> = blocks
                .iter()
                .map(|b| (b.share.index(), &b.data[..]))
                .collect();
            let rebuilt = self.codec.decode(&inputs).map_err(|e| e.to_string())?;
            rebuilt
                .into_iter()
                .enumerate()
                .map(
                    |(m, bytes)| match blocks.iter().find(|b| b.share.index() == m) {
                        Some(b) => (b.data.clone(), b.leaf),
                        None => {
                            let leaf = hash::block_leaf(&bytes);
                            (Bytes::from(bytes), leaf)
                        }
                    },
                )
                .unzip()
        };
        let leaf = hash::ciphertext_leaf(&leaves);
        let mut trees = self.lock_trees();
        let tree = &mut trees.ciphertext_tree;
        let mut last_error = None;
        for chain in chains {
            match tree.verify_leaf(segment.0, leaf, chain) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(format!(
                "decoded segment does not match the ciphertext tree ({e})"
            ));
        }
        Ok(Arc::new(SegmentData::new(
            data,
            g.segment_len(segment) as usize,
        )))
    }
}

/// Checks a header region (header and UEB) against the cap. Returns the UEB bytes.
pub(crate) fn check_header_region(
    cap: &VerifyCap,
    layout: &ShareLayout,
    share: ShareNum,
    region: &[u8],
) -> Result<Vec<u8>, Problem> {
    let corrupt = |why: String| Problem::CorruptShare(why);
    let header_bytes = region
        .get(..HEADER_LEN as usize)
        .ok_or_else(|| corrupt("header truncated".into()))?;
    let header =
        ShareHeader::from_bytes(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
    // The UEB first: if it is the one the cap names but the cap's numbers disagree with it,
    // the cap is at fault, not this share.
    let ueb_range = layout.ueb_range();
    let ueb_bytes = region
        .get(ueb_range.start as usize..ueb_range.end as usize)
        .ok_or_else(|| corrupt("UEB truncated".into()))?;
    let ueb_hash = hash::ueb(ueb_bytes);
    if ueb_hash != cap.ueb_hash() {
        if header.storage_index == cap.storage_index() && header.share == share {
            return Err(Problem::OtherUeb(ueb_hash));
        }
        return Err(corrupt("UEB does not match the cap's hash".into()));
    }
    let ueb = Ueb::from_bytes(ueb_bytes).map_err(|e| corrupt(format!("bad UEB: {e}")))?;
    if ueb.geometry != *cap.geometry() {
        return Err(Problem::AlteredCap);
    }
    if header.share != share {
        return Err(corrupt(format!("header says it is share {}", header.share)));
    }
    if header.storage_index != cap.storage_index() {
        return Err(corrupt("header names another file".into()));
    }
    if header.geometry != *cap.geometry() {
        return Err(corrupt("header parameters differ from the cap's".into()));
    }
    Ok(ueb_bytes.to_vec())
}

/// Picks up to `count` slots of `map` holding distinct shares not in `skip_shares`, never a
/// slot in `tried`, ranked by [`choice::choose`] over each share's record and its server's
/// health.
fn pick_slots(
    grid: &Grid,
    config: &ReaderConfig,
    map: &ShareMap,
    k: u16,
    count: usize,
    tried: &HashSet<usize>,
    skip_shares: &HashSet<ShareNum>,
) -> Vec<usize> {
    if count == 0 {
        return Vec::new();
    }
    let now = Instant::now();
    let indexes: Vec<usize> = (0..map.slots.len())
        .filter(|i| !tried.contains(i) && !skip_shares.contains(&map.slots[*i].share))
        .collect();
    let candidates: Vec<Candidate> = indexes
        .iter()
        .map(|&i| {
            let slot = &map.slots[i];
            Candidate {
                share: slot.share,
                primary: u16::from(slot.share.0) < k,
                // A share that failed twice in a row (a bad block tree, a liar) goes to the
                // back even where failures set no expiring mark.
                avoided: slot.avoided(now) || slot.failures >= 2,
                failures: slot.failures,
                server: grid.servers()[slot.server].health().view(now),
            }
        })
        .collect();
    choice::choose(&candidates, count, &config.share_choice)
        .into_iter()
        .map(|c| indexes[c])
        .collect()
}

fn build_report(grid: &Grid, map: &ShareMap, problems: &HashMap<usize, String>) -> ShareReport {
    let mut lines = Vec::new();
    for (index, server) in grid.servers().iter().enumerate() {
        let line = |share, problem| ReportLine {
            server: server.name().to_owned(),
            share,
            problem,
        };
        if let Some(error) = map.listing_errors.get(&index) {
            lines.push(line(None, Some(error.clone())));
            continue;
        }
        let mut any = false;
        for (slot_index, slot) in map
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.server == index)
        {
            any = true;
            let problem = problems.get(&slot_index).or(slot.problem.as_ref()).cloned();
            lines.push(line(Some(slot.share), problem));
        }
        if !any {
            let problem = if map.listing.contains(&index) {
                "has not answered yet"
            } else {
                "holds no shares of this file"
            };
            lines.push(line(None, Some(problem.into())));
        }
    }
    ShareReport { lines }
}
