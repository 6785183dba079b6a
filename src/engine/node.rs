//! The per-file node: everything learned about one file, kept across reads and shared by
//! every concurrent reader of it. It holds the verified UEB, the verified hash-tree nodes,
//! the share map with each share's health, and the segment fetches in flight (one fetch per
//! segment however many readers want it). It only ever handles ciphertext; keys stay in
//! [`FileHandle`](super::FileHandle)s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use tracing::{debug, warn};

use super::ReaderConfig;
use super::error::{ReadError, ReportLine, ShareReport};
use super::segment::SegmentData;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::planner::{Record, RecordRequest, next_subset};
use crate::core::share_header::ShareHeader;
use crate::core::tree::{self, PartialTree};
use crate::core::ueb::Ueb;
use crate::grid::Grid;
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
    /// Transient: I/O error or timeout. The share is avoided for a while.
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
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unavailable(why) => write!(f, "unavailable: {why}"),
            Problem::Missing => f.write_str("listed but now missing"),
            Problem::CorruptShare(why) => write!(f, "corrupt share: {why}"),
            Problem::CorruptBlock(why) => write!(f, "corrupt block: {why}"),
            Problem::AlteredCap => f.write_str("the cap's parameters differ from the file's"),
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
}

/// One (server, share) pair found by discovery.
#[derive(Debug)]
struct Slot {
    server: usize,
    share: ShareNum,
    failures: u32,
    avoid_until: Option<Instant>,
    problem: Option<String>,
}

impl Slot {
    fn new(server: usize, share: ShareNum) -> Slot {
        Slot {
            server,
            share,
            failures: 0,
            avoid_until: None,
            problem: None,
        }
    }

    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until.is_some_and(|t| t > now)
    }
}

struct State {
    slots: Vec<Slot>,
    /// Per server: the listing error, if listing failed.
    listing_errors: HashMap<usize, String>,
    discovered_at: Instant,
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

/// Everything known about one file. See the module documentation.
pub struct FileNode {
    cap: VerifyCap,
    layout: ShareLayout,
    codec: Codec,
    grid: Grid,
    config: Arc<ReaderConfig>,
    ueb: Ueb,
    state: Mutex<State>,
    inflight: Mutex<HashMap<u64, WeakShared<BoxFuture<'static, SegmentResult>>>>,
}

impl fmt::Debug for FileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNode")
            .field("storage_index", &self.cap.storage_index())
            .finish_non_exhaustive()
    }
}

/// Lists shares of `si` on every server at once. Share numbers of `n` or more cannot belong
/// to the file (a stray file in a share directory, a confused server) and are dropped.
pub(crate) async fn discover(
    grid: &Grid,
    si: StorageIndex,
    n: u16,
    timeout: Duration,
) -> Vec<Result<Vec<ShareNum>, String>> {
    let lists = grid.servers().iter().map(|server| async move {
        match tokio::time::timeout(timeout, server.store().list(si)).await {
            Ok(Ok(mut shares)) => {
                shares.retain(|s| u16::from(s.0) < n);
                Ok(shares)
            }
            Ok(Err(e)) => Err(format!("listing failed: {e}")),
            Err(_) => Err(format!("listing failed: no answer within {timeout:?}")),
        }
    });
    futures::future::join_all(lists).await
}

impl FileNode {
    /// Finds the file's shares and verifies its UEB against the cap.
    pub(crate) async fn open(
        grid: Grid,
        config: Arc<ReaderConfig>,
        cap: VerifyCap,
    ) -> Result<Arc<FileNode>, ReadError> {
        let si = cap.storage_index();
        let geometry = *cap.geometry();
        let layout = ShareLayout::new(&geometry);
        let codec = Codec::new(geometry.k(), geometry.n())
            .map_err(|e| ReadError::Internal(e.to_string()))?;
        let (mut slots, listing_errors) = Self::slots_from_listing(
            discover(&grid, si, geometry.n(), config.request_timeout).await,
        );

        let distinct = slots.iter().map(|s| s.share).collect::<HashSet<_>>().len();
        let report = |slots: &[Slot], listing_errors: &HashMap<usize, String>| {
            build_report(&grid, slots, listing_errors, &HashMap::new())
        };
        if slots.is_empty() {
            return Err(ReadError::NoShares {
                storage_index: si,
                report: report(&slots, &listing_errors),
            });
        }
        if distinct < usize::from(geometry.k()) {
            return Err(ReadError::NotEnoughShares {
                storage_index: si,
                segment: None,
                needed: geometry.k(),
                usable: distinct,
                report: report(&slots, &listing_errors),
            });
        }

        // The UEB is the same in every share; take it from the first that proves it.
        slots.sort_by_key(|s| {
            (
                s.share.0 >= geometry.k() as u8 && geometry.k() < 256,
                s.share,
                s.server,
            )
        });
        // Headers are read k at a time, in parallel: one proves the UEB, and the others open
        // the very share files the first segment will be read from.
        let header_region = layout.header_region();
        let timeout = config.request_timeout;
        let (cap_ref, layout_ref) = (&cap, &layout);
        let read_header = |slot: &Slot| {
            let store = grid.servers()[slot.server].store().clone();
            let (share, region) = (slot.share, header_region.clone());
            async move {
                let (cap, layout) = (cap_ref, layout_ref);
                match tokio::time::timeout(timeout, store.read(si, share, vec![region])).await {
                    Err(_) => Err(Problem::Unavailable(format!(
                        "no answer within {timeout:?}"
                    ))),
                    Ok(Err(e)) => Err(Problem::from_store(e)),
                    Ok(Ok(parts)) => check_header_region(
                        cap,
                        layout,
                        share,
                        parts.first().map_or(&[][..], |p| &p[..]),
                    ),
                }
            }
        };
        let mut verified = None;
        for batch in (0..slots.len())
            .collect::<Vec<_>>()
            .chunks(usize::from(geometry.k()).max(1))
        {
            let outcomes =
                futures::future::join_all(batch.iter().map(|&i| read_header(&slots[i]))).await;
            for (&i, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Ok(ueb_bytes) => {
                        verified.get_or_insert(ueb_bytes);
                    }
                    Err(Problem::AlteredCap) => {
                        return Err(ReadError::AlteredCap { storage_index: si });
                    }
                    Err(problem) => {
                        debug!(%si, share = %slots[i].share, %problem, "share rejected while opening");
                        slots[i].problem = Some(problem.to_string());
                        slots[i].failures += 1;
                    }
                }
            }
            if verified.is_some() {
                break;
            }
        }
        let Some(ueb_bytes) = verified else {
            return Err(ReadError::NotEnoughShares {
                storage_index: si,
                segment: None,
                needed: geometry.k(),
                usable: 0,
                report: report(&slots, &listing_errors),
            });
        };
        let ueb = Ueb::from_bytes(&ueb_bytes).map_err(|e| ReadError::Internal(e.to_string()))?;
        let segment_tree = geometry.segment_tree();
        let state = State {
            slots,
            listing_errors,
            discovered_at: Instant::now(),
            share_tree: PartialTree::new(geometry.share_tree(), ueb.share_root),
            block_trees: vec![None; usize::from(geometry.n())],
            ciphertext_tree: PartialTree::new(segment_tree, ueb.ciphertext_root),
        };
        Ok(Arc::new(FileNode {
            cap,
            layout,
            codec,
            grid,
            config,
            ueb,
            state: Mutex::new(state),
            inflight: Mutex::new(HashMap::new()),
        }))
    }

    fn slots_from_listing(
        listing: Vec<Result<Vec<ShareNum>, String>>,
    ) -> (Vec<Slot>, HashMap<usize, String>) {
        let mut slots = Vec::new();
        let mut errors = HashMap::new();
        for (server, result) in listing.into_iter().enumerate() {
            match result {
                Ok(shares) => {
                    slots.extend(shares.into_iter().map(|share| Slot::new(server, share)))
                }
                Err(e) => {
                    errors.insert(server, e);
                }
            }
        }
        (slots, errors)
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

    /// The share layout.
    pub fn layout(&self) -> &ShareLayout {
        &self.layout
    }

    /// Distinct share numbers currently known and not marked as failing.
    pub fn healthy_shares(&self) -> usize {
        let state = self.lock();
        let now = Instant::now();
        state
            .slots
            .iter()
            .filter(|s| !s.avoided(now))
            .map(|s| s.share)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Verified hash-tree nodes held, and their approximate memory.
    pub fn tree_memory(&self) -> (usize, usize) {
        let state = self.lock();
        let trees = std::iter::once(&state.share_tree)
            .chain(std::iter::once(&state.ciphertext_tree))
            .chain(state.block_trees.iter().flatten());
        trees.fold((0, 0), |(n, b), t| (n + t.known(), b + t.memory_bytes()))
    }

    /// The current share report.
    pub fn report(&self) -> ShareReport {
        let state = self.lock();
        build_report(
            &self.grid,
            &state.slots,
            &state.listing_errors,
            &HashMap::new(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent even if it panics midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Picks up to `count` slots holding distinct shares not in `skip_shares`, never a slot
    /// in `tried`: healthy before failing, primary before parity.
    fn pick(
        &self,
        count: usize,
        tried: &HashSet<usize>,
        skip_shares: &HashSet<ShareNum>,
    ) -> Vec<usize> {
        let state = self.lock();
        let now = Instant::now();
        let k = self.cap.geometry().k();
        let mut candidates: Vec<usize> = (0..state.slots.len())
            .filter(|i| !tried.contains(i) && !skip_shares.contains(&state.slots[*i].share))
            .collect();
        candidates.sort_by_key(|&i| {
            let slot = &state.slots[i];
            (
                slot.avoided(now),
                slot.failures,
                u16::from(slot.share.0) >= k,
                slot.share,
                slot.server,
            )
        });
        let mut picked = Vec::with_capacity(count);
        let mut shares = HashSet::new();
        for i in candidates {
            if picked.len() == count {
                break;
            }
            if shares.insert(state.slots[i].share) {
                picked.push(i);
            }
        }
        picked
    }

    /// A share's first failure is a warning; repeats (a share damaged throughout) are debug.
    fn log_rejection(&self, slot: usize, segment: SegmentIndex, problem: &Problem) {
        let state = self.lock();
        let s = &state.slots[slot];
        let server = self.grid.servers()[s.server].name();
        let si = self.storage_index();
        if s.failures == 0 {
            warn!(%si, %segment, share = %s.share, server, %problem, "share rejected");
        } else {
            debug!(%si, %segment, share = %s.share, server, %problem, "share rejected again");
        }
    }

    fn record(&self, slot: usize, outcome: Result<(), &Problem>) {
        let mut state = self.lock();
        let slot = &mut state.slots[slot];
        match outcome {
            Ok(()) => {
                slot.failures /= 2;
                slot.avoid_until = None;
                slot.problem = None;
            }
            Err(problem) => {
                slot.failures = slot.failures.saturating_add(1);
                slot.problem = Some(problem.to_string());
                let ttl = match problem {
                    Problem::Unavailable(_) | Problem::Missing => Some(self.config.failure_ttl),
                    Problem::CorruptShare(_) => Some(self.config.failure_ttl * 10),
                    Problem::CorruptBlock(_) | Problem::AlteredCap => None,
                };
                slot.avoid_until = ttl.map(|ttl| Instant::now() + ttl);
            }
        }
    }

    /// Lists shares again (rate-limited) and adds any new (server, share) pairs.
    async fn rediscover(&self) {
        if self.lock().discovered_at.elapsed() < REDISCOVERY_INTERVAL {
            return;
        }
        let n = self.cap.geometry().n();
        let listing = discover(
            &self.grid,
            self.storage_index(),
            n,
            self.config.request_timeout,
        )
        .await;
        let mut state = self.lock();
        state.discovered_at = Instant::now();
        for (server, result) in listing.into_iter().enumerate() {
            match result {
                Ok(shares) => {
                    state.listing_errors.remove(&server);
                    for share in shares {
                        if !state
                            .slots
                            .iter()
                            .any(|s| s.server == server && s.share == share)
                        {
                            state.slots.push(Slot::new(server, share));
                        }
                    }
                }
                Err(e) => {
                    state.listing_errors.insert(server, e);
                }
            }
        }
    }

    async fn fetch_segment(self: Arc<Self>, segment: SegmentIndex) -> SegmentResult {
        let k = usize::from(self.cap.geometry().k());
        let mut verified: BTreeMap<ShareNum, VerifiedBlock> = BTreeMap::new();
        let mut tried: HashSet<usize> = HashSet::new();
        let mut problems: HashMap<usize, String> = HashMap::new();
        let mut decoded: HashSet<Vec<ShareNum>> = HashSet::new();
        let mut want = k;
        let mut rediscovered = false;
        loop {
            if verified.len() < want {
                let skip: HashSet<ShareNum> = verified.keys().copied().collect();
                let picks = self.pick(want - verified.len(), &tried, &skip);
                if picks.is_empty() {
                    if !rediscovered {
                        rediscovered = true;
                        self.rediscover().await;
                        continue;
                    }
                    return Err(self.give_up(segment, &verified, &problems, decoded.len()));
                }
                tried.extend(&picks);
                let fetches = picks.iter().map(|&slot| self.fetch_block(slot, segment));
                for (slot, result) in picks.iter().zip(futures::future::join_all(fetches).await) {
                    match result {
                        Ok(block) => {
                            self.record(*slot, Ok(()));
                            verified.entry(block.share).or_insert(block);
                        }
                        Err(problem) => {
                            self.log_rejection(*slot, segment, &problem);
                            self.record(*slot, Err(&problem));
                            problems.insert(*slot, problem.to_string());
                        }
                    }
                }
                continue;
            }
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
                    match self.clone().decode_and_check(segment, blocks, chains).await {
                        Ok(data) => return Ok(data),
                        Err(why) => {
                            warn!(si = %self.storage_index(), %segment, ?subset, %why, "decoded segment rejected");
                        }
                    }
                }
                // Every combination of what we hold failed: fetch one more share to make new ones.
                _ if decoded.len() < max_decode_attempts(k)
                    && want < usize::from(self.cap.geometry().n()) =>
                {
                    want += 1
                }
                _ => return Err(self.give_up(segment, &verified, &problems, decoded.len())),
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
        let state = self.lock();
        let report = build_report(&self.grid, &state.slots, &state.listing_errors, problems);
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
        let si = self.storage_index();
        let (server, share, request) = {
            let state = self.lock();
            let slot = &state.slots[slot_index];
            let request = RecordRequest::plan(
                &self.layout,
                segment,
                state.block_trees[slot.share.index()].as_ref(),
                &state.ciphertext_tree,
            );
            (slot.server, slot.share, request)
        };
        let store = self.grid.servers()[server].store();
        let timeout = self.config.request_timeout;
        let read = store.read(si, share, vec![request.range(&self.layout)]);
        let bytes = match tokio::time::timeout(timeout, read).await {
            Err(_) => {
                return Err(Problem::Unavailable(format!(
                    "no answer within {timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(Problem::from_store(e)),
            Ok(Ok(parts)) => parts.into_iter().next().unwrap_or_default(),
        };
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

        let mut state = self.lock();
        let state = &mut *state;
        let j = segment.0;
        if state.block_trees[share.index()].is_none() {
            // The first block from this share: hash it all the way up to the UEB's share root.
            let shape = self.cap.geometry().segment_tree();
            let chain = share_chain
                .as_ref()
                .ok_or_else(|| Problem::CorruptBlock("record lacks its share chain".into()))?;
            let root = tree::root_from_chain(&shape, j, leaf, &block_chain)
                .map_err(|e| Problem::CorruptBlock(format!("segment {segment}: {e}")))?;
            state
                .share_tree
                .verify_leaf(u64::from(share.0), root, chain)
                .map_err(|e| {
                    Problem::CorruptBlock(format!(
                        "segment {segment} does not hash up to the UEB's share root ({e})"
                    ))
                })?;
            state.block_trees[share.index()] = Some(PartialTree::new(shape, root));
        }
        if let Some(tree) = state.block_trees[share.index()].as_mut() {
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
        let mut state = self.lock();
        let tree = &mut state.ciphertext_tree;
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
    if hash::ueb(ueb_bytes) != cap.ueb_hash() {
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

fn build_report(
    grid: &Grid,
    slots: &[Slot],
    listing_errors: &HashMap<usize, String>,
    problems: &HashMap<usize, String>,
) -> ShareReport {
    let mut lines = Vec::new();
    for (index, server) in grid.servers().iter().enumerate() {
        if let Some(error) = listing_errors.get(&index) {
            lines.push(ReportLine {
                server: server.name().to_owned(),
                share: None,
                problem: Some(error.clone()),
            });
            continue;
        }
        let mut any = false;
        for (slot_index, slot) in slots.iter().enumerate().filter(|(_, s)| s.server == index) {
            any = true;
            lines.push(ReportLine {
                server: server.name().to_owned(),
                share: Some(slot.share),
                problem: problems.get(&slot_index).or(slot.problem.as_ref()).cloned(),
            });
        }
        if !any {
            lines.push(ReportLine {
                server: server.name().to_owned(),
                share: None,
                problem: Some("holds no shares of this file".into()),
            });
        }
    }
    ShareReport { lines }
}
