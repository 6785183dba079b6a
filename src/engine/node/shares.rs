//! Where a file's shares are and how each is doing: discovery (every server asked at once,
//! answers merged as they come), the share map with each share's failures and marks, which
//! shares to ask next, and the report of what was found where.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tracing::{Instrument, debug, warn};

use super::FileNode;
use crate::core::cap::StorageIndex;
use crate::core::choice::{self, Candidate};
use crate::core::geometry::ShareNum;
use crate::engine::error::{Problem, ReportLine, ShareReport};
use crate::engine::{Damage, ReaderConfig};
use crate::grid::{Grid, Server};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Shares are listed again when a read runs out of candidates, but not more often than this.
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

/// Reads `ranges` of a share from `server` within `timeout`, keeping the server's health:
/// requests in flight, latency of answers, and a failing mark when it errs or stays silent.
pub(super) async fn timed_read(
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
pub(super) struct Slot {
    pub(super) server: usize,
    pub(super) share: ShareNum,
    pub(super) failures: u32,
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

    pub(super) fn avoided(&self, now: Instant) -> bool {
        self.avoid_until.is_some_and(|t| t > now)
    }
}

/// What the servers said they hold, filled in as their answers arrive.
/// What the servers said they hold, filled in as their answers arrive.
#[derive(Default)]
pub(super) struct ShareMap {
    /// Slots are only ever appended, so an index names one slot for the node's life.
    pub(super) slots: Vec<Slot>,
    /// Per server: the listing error, if its last listing failed.
    listing_errors: HashMap<usize, String>,
    /// Servers whose listing is in flight.
    pub(super) listing: HashSet<usize>,
    listed_at: Option<Instant>,
}

impl ShareMap {
    /// Whether some server could not say what it holds (its last listing failed): a file
    /// found nowhere else may be there.
    pub(super) fn any_listing_failed(&self) -> bool {
        !self.listing_errors.is_empty()
    }

    pub(super) fn distinct_shares(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.share)
            .collect::<HashSet<_>>()
            .len()
    }

    pub(super) fn reject_at_open(&mut self, slot: usize, problem: &Problem) {
        let slot = &mut self.slots[slot];
        debug!(share = %slot.share, %problem, "share rejected while opening");
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
pub(super) struct Shares {
    map: Mutex<ShareMap>,
    /// Signalled after every change to the map.
    pub(super) changed: Notify,
    /// Called once, when a listing every server answered finds fewer than n shares of a
    /// file whose UEB a share proved (see [`opened`](Self::opened)).
    pub(super) on_missing: Option<Box<dyn Fn() + Send + Sync>>,
    missing_told: std::sync::atomic::AtomicBool,
    /// Whether the file opened: its UEB proven, so the cap is not a forged one.
    is_open: std::sync::atomic::AtomicBool,
}

impl Shares {
    /// An empty map whose first complete listing that finds shares missing calls
    /// `on_missing`.
    pub(super) fn telling(on_missing: Option<Box<dyn Fn() + Send + Sync>>) -> Shares {
        Shares {
            on_missing,
            ..Shares::default()
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ShareMap> {
        // Every critical section leaves the map consistent even if it panics midway.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every server for its shares of `si`, merging answers as they arrive, unless a
    /// listing is already in flight. Returns at once; see [`wait_until`](Self::wait_until).
    pub(super) fn start_listing(
        self: &Arc<Self>,
        grid: &Grid,
        si: StorageIndex,
        n: u16,
        timeout: Duration,
    ) {
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
        tokio::spawn(
            async move {
                // However the task ends (done, or dropped with its runtime), the listing is over.
                let _over = ListingOver(shares.clone());
                let mut answers: FuturesUnordered<_> = grid
                    .servers()
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
                shares.tell_if_missing(n);
            }
            .in_current_span(),
        );
    }

    /// Calls [`on_missing`](Self::on_missing) (once) if every server answered and fewer
    /// than `n` shares were found.
    fn tell_if_missing(&self, n: u16) {
        use std::sync::atomic::Ordering;
        let Some(tell) = &self.on_missing else {
            return;
        };
        if !self.is_open.load(Ordering::Acquire) {
            return;
        }
        let missing = {
            let map = self.lock();
            map.listing_errors.is_empty() && map.distinct_shares() < usize::from(n)
        };
        if missing && !self.missing_told.swap(true, Ordering::Relaxed) {
            tell();
        }
    }

    /// The file opened (its UEB proven): missing shares found by a listing, finished or
    /// not, may now be told.
    pub(super) fn opened(&self, n: u16) {
        self.is_open
            .store(true, std::sync::atomic::Ordering::Release);
        if self.lock().listing.is_empty() {
            self.tell_if_missing(n);
        }
    }

    /// Waits until `done` holds or no listing is in flight.
    pub(super) async fn wait_until(&self, done: impl Fn(&ShareMap) -> bool) {
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
/// Picks up to `count` slots of `map` holding distinct shares not in `skip_shares`, never a
/// slot in `tried`, ranked by [`choice::choose`] over each share's record and its server's
/// health.
pub(super) fn pick_slots(
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
                server: {
                    let server = &grid.servers()[slot.server];
                    let mut view = server.health().view(now);
                    view.local = !server.store().is_remote();
                    view
                },
            }
        })
        .collect();
    choice::choose(&candidates, count, &config.share_choice)
        .into_iter()
        .map(|c| indexes[c])
        .collect()
}

/// What was found on each server: its listing error, or each share it holds with its
/// problem (from `problems`, by slot, else the share's last).
pub(super) fn build_report(
    grid: &Grid,
    map: &ShareMap,
    problems: &HashMap<usize, String>,
) -> ShareReport {
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

impl FileNode {
    /// A share's first failure is a warning; repeats (a share damaged throughout) are debug.
    pub(super) fn log_rejection(&self, slot: usize, problem: &Problem) {
        let map = self.shares.lock();
        let s = &map.slots[slot];
        let server = self.grid.servers()[s.server].name();
        if s.failures == 0 {
            warn!(share = %s.share, server, %problem, "share rejected");
        } else {
            debug!(share = %s.share, server, %problem, "share rejected again");
        }
    }

    /// Records how a request to a slot went: a success halves its failures and lifts its
    /// mark; a problem counts, marks it for a while (by kind), and a corrupt share is told
    /// to its server once.
    pub(super) fn record(&self, slot_index: usize, outcome: Result<(), &Problem>) {
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
                    let tell = !matches!(problem, Problem::OtherUeb(_))
                        && !self
                            .corruption_told
                            .swap(true, std::sync::atomic::Ordering::Relaxed);
                    drop(map);
                    // Outside the lock: the hook is the caller's code.
                    if let (true, Some(hook)) = (tell, &self.config.on_damage) {
                        hook.tell(&self.cap, Damage::Corrupt);
                    }
                }
            }
        }
    }

    /// Tells a server that one of its shares is corrupt, in the background (a courtesy: its
    /// operator can repair it; nothing here waits for or depends on the answer).
    fn report_corruption(&self, server: usize, share: ShareNum, reason: String) {
        let store = self.grid.servers()[server].store().clone();
        let (si, timeout) = (self.storage_index(), self.config.request_timeout);
        tokio::spawn(
            async move {
                let report = store.report_corrupt(si, share, reason);
                if tokio::time::timeout(timeout, report).await.is_err() {
                    debug!(%share, server = store.name(), "corruption report not answered");
                }
            }
            .in_current_span(),
        );
    }

    /// Lists shares again (at most every [`REDISCOVERY_INTERVAL`]) and waits until a new
    /// (server, share) pair turns up or the listing ends.
    pub(super) async fn rediscover(&self) {
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
    pub(super) fn pick(
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

    /// The server and share number of a slot.
    pub(super) fn slot(&self, slot: usize) -> (usize, ShareNum) {
        let map = self.shares.lock();
        (map.slots[slot].server, map.slots[slot].share)
    }
}
