//! The per-file node: everything learned about one file, kept across reads and shared by
//! every concurrent reader of it. It holds the verified UEB, the verified hash-tree nodes,
//! the share map with each share's health, and the segment fetches in flight (one fetch per
//! segment however many readers want it). It only ever handles ciphertext; keys stay in
//! [`FileHandle`](super::FileHandle)s.
//!
//! The node's work is spread over one file per idea, each adding an `impl FileNode` block:
//! - [`shares`](shares): finding shares and keeping each one's record;
//! - [`open`](open): the hedged open that proves the UEB;
//! - [`fetch`](fetch): one segment from k shares, hedged, retried over subsets;
//! - [`batch`](batch): consecutive segments with one request per share;
//! - [`cached`](cached): blocks from and to the disk cache;
//! - [`decode`](decode): verifying records and decoding k blocks into a segment.
//!
//! Whether bytes are what the UEB commits to is decided by the pure
//! [`verifier`](crate::core::verifier) alone.

mod batch;
mod cached;
pub(crate) mod decode;
mod fetch;
pub(crate) mod open;
pub(crate) mod shares;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use tracing::Instrument;

use super::ReaderConfig;
use super::error::{ReadError, ShareReport};
use super::segment::SegmentData;
use crate::cache::DiskCache;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::erasure::Codec;
use crate::core::geometry::SegmentIndex;
use crate::core::layout::ShareLayout;
use crate::core::ueb::Ueb;
use crate::core::verifier::FileTrees;
use crate::grid::Grid;
use crate::metrics::Metrics;
use shares::{Shares, Slot, build_report};

pub(super) type SegmentResult = Result<Arc<SegmentData>, ReadError>;
pub(crate) type SharedSegment = Shared<BoxFuture<'static, SegmentResult>>;

/// Everything known about one file. See the module documentation.
pub struct FileNode {
    cap: VerifyCap,
    layout: ShareLayout,
    codec: Codec,
    grid: Grid,
    config: Arc<ReaderConfig>,
    ueb: Ueb,
    shares: Arc<Shares>,
    trees: Mutex<FileTrees>,
    inflight: Mutex<HashMap<u64, WeakShared<BoxFuture<'static, SegmentResult>>>>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<DiskCache>>,
    /// Whether [`ReaderConfig::on_damage`] was told of a corrupt share.
    corruption_told: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for FileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNode")
            .field("storage_index", &self.cap.storage_index())
            .finish_non_exhaustive()
    }
}

/// What a node is made of once its file's UEB is verified (see [`FileNode::open`]).
pub(crate) struct NodeParts {
    grid: Grid,
    config: Arc<ReaderConfig>,
    cap: VerifyCap,
    layout: ShareLayout,
    codec: Codec,
    shares: Arc<Shares>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<DiskCache>>,
}

impl FileNode {
    /// The node of a file whose UEB is verified.
    pub(super) fn new(parts: NodeParts, ueb: Ueb) -> Arc<FileNode> {
        let NodeParts {
            grid,
            config,
            cap,
            layout,
            codec,
            shares,
            metrics,
            cache,
        } = parts;
        shares.opened(cap.geometry().n());
        Arc::new(FileNode {
            cap,
            layout,
            codec,
            grid,
            config,
            trees: Mutex::new(FileTrees::new(&ueb)),
            ueb,
            shares,
            inflight: Mutex::new(HashMap::new()),
            metrics,
            cache,
            corruption_told: std::sync::atomic::AtomicBool::new(false),
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

    /// The grid the file is read from.
    pub fn grid(&self) -> &Grid {
        &self.grid
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
        trees
            .trees()
            .fold((0, 0), |(n, b), t| (n + t.known(), b + t.memory_bytes()))
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

    /// The verified trees.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn lock_trees(&self) -> MutexGuard<'_, FileTrees> {
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
        let shared = self
            .clone()
            .fetch_segment(s)
            .instrument(self.segment_span(s))
            .boxed()
            .shared();
        if inflight.len() >= 64 {
            inflight.retain(|_, weak| weak.upgrade().is_some());
        }
        if let Some(weak) = shared.downgrade() {
            inflight.insert(s.0, weak);
        }
        shared
    }

    /// The span of everything done to read segment `s`: its events need not repeat the file
    /// or the segment. (Info level, so that warnings inside it keep them.)
    pub(super) fn segment_span(&self, s: SegmentIndex) -> tracing::Span {
        tracing::info_span!("segment", si = %self.storage_index(), segment = %s)
    }
}
