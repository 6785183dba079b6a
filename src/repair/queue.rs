//! Repair on read: reads that find a file's shares missing or corrupt queue a repair of it,
//! run in the background one at a time, so a busy gateway heals what its readers touch
//! without delaying them.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Outcome, RepairOptions, repair};
use crate::core::cap::VerifyCap;
use crate::engine::{Damage, DamageHook};
use crate::grid::Grid;
use crate::metrics::Metrics;

/// How much background repair a queue may do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueLimits {
    /// Files waiting at most; damage found beyond that is dropped (and counted), to be
    /// found again by a later read.
    pub capacity: usize,
    /// Least time between the starts of two repairs: at most one runs at a time, and this
    /// leaves the grid to readers in between.
    pub gap: Duration,
    /// A file repaired is not queued again for this long (a read of a file that cannot be
    /// healed, below k or with every spare server refusing, would otherwise loop).
    pub quiet: Duration,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            capacity: 64,
            gap: Duration::from_secs(1),
            quiet: Duration::from_secs(600),
        }
    }
}

/// Files whose repair is queued or running, and when each recent one finished; by whole
/// verify cap, so that a forged cap naming a file's storage index cannot hold its repair off.
struct Seen {
    pending: HashSet<VerifyCap>,
    finished: LruCache<VerifyCap, Instant>,
}

/// A background repairer fed by reads (see [`hook`](Self::hook)).
///
/// ```no_run
/// # async fn demo(grid: segvault::Grid) {
/// use std::sync::Arc;
/// use segvault::repair::{RepairOptions, queue::{QueueLimits, RepairQueue}};
/// use segvault::{Client, ReaderConfig, metrics::Metrics};
/// let queue = RepairQueue::start(grid.clone(), RepairOptions::new(), QueueLimits::default(),
///     Arc::new(Metrics::default()));
/// let mut config = ReaderConfig::default();
/// config.on_damage = Some(queue.hook());
/// let client = Client::new(grid, config);
/// # }
/// ```
#[derive(Clone)]
pub struct RepairQueue {
    sender: mpsc::Sender<VerifyCap>,
    seen: Arc<Mutex<Seen>>,
    quiet: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RepairQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairQueue").finish_non_exhaustive()
    }
}

impl RepairQueue {
    /// Starts the repairer on the current Tokio runtime. It stops when every handle to the
    /// queue (and every hook made from it) is gone.
    pub fn start(
        grid: Grid,
        options: RepairOptions,
        limits: QueueLimits,
        metrics: Arc<Metrics>,
    ) -> RepairQueue {
        let (sender, receiver) = mpsc::channel(limits.capacity.max(1));
        let seen = Arc::new(Mutex::new(Seen {
            pending: HashSet::new(),
            finished: LruCache::new(NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN)),
        }));
        tokio::spawn(run(
            grid,
            options,
            limits.gap,
            receiver,
            seen.clone(),
            metrics.clone(),
        ));
        RepairQueue {
            sender,
            seen,
            quiet: limits.quiet,
            metrics,
        }
    }

    /// Queues a repair of the file `cap` names unless one is queued or running, or one
    /// finished lately; never waits. Whether it was queued.
    pub fn offer(&self, cap: &VerifyCap) -> bool {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let lately = seen
                .finished
                .peek(cap)
                .is_some_and(|done| done.elapsed() < self.quiet);
            if lately || seen.pending.contains(cap) {
                self.metrics.background_repair("skipped");
                return false;
            }
            seen.pending.insert(*cap);
        }
        match self.sender.try_send(*cap) {
            Ok(()) => {
                self.metrics.background_repair("queued");
                true
            }
            Err(_) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pending
                    .remove(cap);
                self.metrics.background_repair("dropped");
                false
            }
        }
    }

    /// A [`DamageHook`] for a [`ReaderConfig`](crate::ReaderConfig) that offers each
    /// damaged file to this queue.
    pub fn hook(&self) -> DamageHook {
        let queue = self.clone();
        DamageHook::new(move |cap, _damage: Damage| {
            queue.offer(cap);
        })
    }

    /// A hook for a queue started later (the queue may need what the client it hooks
    /// into makes, such as its metrics): damage found before [`OnceLock::set`] is ignored.
    pub fn hook_for(later: Arc<OnceLock<RepairQueue>>) -> DamageHook {
        DamageHook::new(move |cap, _damage: Damage| {
            if let Some(queue) = later.get() {
                queue.offer(cap);
            }
        })
    }
}

async fn run(
    grid: Grid,
    options: RepairOptions,
    gap: Duration,
    mut receiver: mpsc::Receiver<VerifyCap>,
    seen: Arc<Mutex<Seen>>,
    metrics: Arc<Metrics>,
) {
    while let Some(cap) = receiver.recv().await {
        let started = Instant::now();
        let si = cap.storage_index();
        let report = repair(&grid, &cap, &options).await;
        metrics.background_repair(match report.outcome {
            Outcome::Healthy => "healthy",
            Outcome::Repaired => "repaired",
            Outcome::HappinessMet => "happy",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Unrecoverable => "unrecoverable",
            Outcome::AlteredCap => "altered_cap",
        });
        if report.outcome.is_success() {
            info!(%si, summary = %report.summary(), "background repair");
        } else {
            warn!(%si, summary = %report.summary(), "background repair");
        }
        {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.pending.remove(&cap);
            seen.finished.put(cap, Instant::now());
        }
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
}
