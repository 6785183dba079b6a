//! Fetching one segment: ask the k shares [`choice`](crate::core::choice) ranks best for
//! their block of it, each with the hash nodes still missing, in one request per share. A
//! request that runs late for its server makes the fetch ask one more share, and the first k
//! verified blocks win. If they decode to something the ciphertext tree refuses, other
//! k-subsets are tried (fetching more shares to make new ones) before the fetch gives up with
//! a report of what was found where.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{debug, warn};

use super::decode::{Proof, VerifiedBlock};
use super::shares::{build_report, timed_read};
use super::{FileNode, SegmentResult};
use crate::core::choice;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::hash::Hash;
use crate::core::planner::{RecordRequest, next_subset};
use crate::engine::error::{Problem, ReadError};

/// k-subsets decoded for one segment before giving up: enough to leave out each share of a
/// k+1 set once, and never fewer than 16.
fn max_decode_attempts(k: usize) -> usize {
    (2 * (k + 1)).max(16)
}

/// A block request of a segment fetch in flight.
struct Attempt {
    share: ShareNum,
    server: usize,
    /// When it counts as late (its server's hedge delay after it started).
    late_at: Instant,
    late: bool,
}

/// Where one segment fetch stands.
struct Progress {
    segment: SegmentIndex,
    k: usize,
    /// Verified blocks, by share.
    verified: BTreeMap<ShareNum, VerifiedBlock>,
    /// Shares whose block came from the disk cache.
    from_cache: HashSet<ShareNum>,
    /// Slots asked (each at most once).
    tried: HashSet<usize>,
    /// What went wrong with each slot, for the report.
    problems: HashMap<usize, String>,
    /// k-subsets decoded and refused.
    decoded: HashSet<Vec<ShareNum>>,
    /// Requests in flight, by slot.
    attempts: HashMap<usize, Attempt>,
    /// Verified blocks wanted before decoding (k, more after refused decodes).
    want: usize,
}

/// What a decode step leads to.
enum Decoded {
    Segment(SegmentResult),
    /// Try again: with another subset, or after fetching one more share.
    Again,
}

/// What woke a waiting fetch.
enum Event {
    Answer(usize, Result<VerifiedBlock, Problem>),
    Late,
    MoreShares,
}

impl FileNode {
    /// The verified ciphertext of `segment`: from the disk cache where it holds blocks, from
    /// shares for the rest. See the module documentation.
    pub(super) async fn fetch_segment(self: Arc<Self>, segment: SegmentIndex) -> SegmentResult {
        let k = usize::from(self.cap.geometry().k());
        let verified = self.cached_blocks(segment).await;
        let mut progress = Progress {
            segment,
            k,
            from_cache: verified.keys().copied().collect(),
            verified,
            tried: HashSet::new(),
            problems: HashMap::new(),
            decoded: HashSet::new(),
            attempts: HashMap::new(),
            want: k,
        };
        type BlockFetch<'a> =
            Pin<Box<dyn Future<Output = (usize, Result<VerifiedBlock, Problem>)> + Send + 'a>>;
        let mut active: FuturesUnordered<BlockFetch<'_>> = FuturesUnordered::new();
        let mut rediscovered = false;
        loop {
            if progress.verified.len() >= progress.want {
                match self.clone().decode_some(&mut progress).await {
                    // Requests still in flight are dropped here, and so cancelled.
                    Decoded::Segment(result) => return result,
                    Decoded::Again => continue,
                }
            }

            // Armed before looking: a listing answer that arrives after the pick found too few
            // candidates wakes the fetch instead of leaving it on a stalled request.
            let mut more_shares = std::pin::pin!(self.shares.changed.notified());
            more_shares.as_mut().enable();
            let mut short_of_candidates = false;
            for slot in self.ask_more(&mut progress, &mut short_of_candidates) {
                let this = &self;
                active.push(Box::pin(async move {
                    (slot, this.fetch_block(slot, segment).await)
                }));
            }
            if active.is_empty() {
                // Servers still answering the listing may hold the shares this segment
                // needs (a file opened from the cache starts reading before any answer):
                // wait for the next share to turn up, or for the listing to end, before
                // counting what is known as all there is.
                let known = {
                    let map = self.shares.lock();
                    (!map.listing.is_empty()).then_some(map.slots.len())
                };
                if let Some(known) = known {
                    self.shares.wait_until(|map| map.slots.len() > known).await;
                    continue;
                }
                if !rediscovered {
                    rediscovered = true;
                    self.rediscover().await;
                    continue;
                }
                return Err(self.give_up(&progress));
            }

            let listing = !self.shares.lock().listing.is_empty();
            let next_late = progress
                .attempts
                .values()
                .filter(|a| !a.late)
                .map(|a| a.late_at)
                .min();
            let late = async {
                match next_late {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                Some((slot, result)) = active.next() => Event::Answer(slot, result),
                () = late => Event::Late,
                () = &mut more_shares, if short_of_candidates && listing => Event::MoreShares,
            };
            match event {
                Event::Answer(slot, result) => self.take_answer(&mut progress, slot, result),
                Event::Late => self.mark_late(&mut progress),
                // New shares may serve a request that found no candidate before.
                Event::MoreShares => {}
            }
        }
    }

    /// Decodes the next k-subset of the verified blocks not yet tried; when every subset of
    /// them failed, wants one more share (or gives up).
    async fn decode_some(self: Arc<Self>, p: &mut Progress) -> Decoded {
        let shares: Vec<ShareNum> = p.verified.keys().copied().collect();
        let budget_left = p.decoded.len() < max_decode_attempts(p.k);
        let subset = next_subset(&shares, p.k, &p.decoded).filter(|_| budget_left);
        let Some(subset) = subset else {
            // Every combination of what we hold failed: fetch one more share to make new ones.
            if budget_left && p.want < usize::from(self.cap.geometry().n()) {
                p.want += 1;
                return Decoded::Again;
            }
            return Decoded::Segment(Err(self.give_up(p)));
        };
        p.decoded.insert(subset.clone());
        let blocks: Vec<VerifiedBlock> = subset.iter().map(|s| p.verified[s].clone()).collect();
        // Any record's ciphertext-tree levels will do, not only the subset's.
        let chains: Vec<Vec<Hash>> = p
            .verified
            .values()
            .map(|b| b.ciphertext_chain.clone())
            .collect();
        let fetched: Vec<VerifiedBlock> = blocks
            .iter()
            .filter(|b| !p.from_cache.contains(&b.share))
            .cloned()
            .collect();
        match self
            .clone()
            .decode_and_check(p.segment, blocks, chains)
            .await
        {
            Ok(data) => {
                self.cache_blocks(p.segment, &fetched);
                self.check_cached_ciphertext_chains(p.segment, &p.verified, &p.from_cache);
                Decoded::Segment(Ok(data))
            }
            Err(why) => {
                warn!(?subset, %why, "decoded segment rejected");
                Decoded::Again
            }
        }
    }

    /// Picks the slots to ask now: as many as verified blocks are missing, less the requests
    /// still on time (a late request no longer counts). Records them as in flight.
    fn ask_more(&self, p: &mut Progress, short_of_candidates: &mut bool) -> Vec<usize> {
        let on_time = p.attempts.values().filter(|a| !a.late).count();
        let missing = p.want - p.verified.len();
        if missing <= on_time {
            return Vec::new();
        }
        let skip: HashSet<ShareNum> = p
            .verified
            .keys()
            .copied()
            .chain(p.attempts.values().map(|a| a.share))
            .collect();
        let picks = self.pick(missing - on_time, &p.tried, &skip);
        *short_of_candidates = picks.len() < missing - on_time;
        for &slot in &picks {
            p.tried.insert(slot);
            let (server, share) = self.slot(slot);
            let delay = choice::hedge_delay(
                &self.grid.servers()[server].health().latency(),
                &self.config.share_choice,
            );
            let attempt = Attempt {
                share,
                server,
                late_at: Instant::now() + delay,
                late: false,
            };
            p.attempts.insert(slot, attempt);
        }
        picks
    }

    fn take_answer(&self, p: &mut Progress, slot: usize, result: Result<VerifiedBlock, Problem>) {
        p.attempts.remove(&slot);
        match result {
            Ok(block) => {
                self.record(slot, Ok(()));
                p.verified.entry(block.share).or_insert(block);
            }
            Err(problem) => {
                self.log_rejection(slot, &problem);
                self.record(slot, Err(&problem));
                p.problems.insert(slot, problem.to_string());
            }
        }
    }

    /// Marks requests past their hedge delay late (and their servers slow), so that the next
    /// round asks as many more shares.
    fn mark_late(&self, p: &mut Progress) {
        let now = Instant::now();
        for attempt in p
            .attempts
            .values_mut()
            .filter(|a| !a.late && a.late_at <= now)
        {
            attempt.late = true;
            self.metrics.hedged();
            let server = &self.grid.servers()[attempt.server];
            server.health().ran_late(self.config.slow_ttl);
            debug!(share = %attempt.share, server = server.name(), "block request late; asking another share");
        }
    }

    /// The error of a fetch that cannot go on: shares inconsistent if k verified blocks were
    /// decoded and refused, too few shares otherwise.
    fn give_up(&self, p: &Progress) -> ReadError {
        let report = build_report(&self.grid, &self.shares.lock(), &p.problems);
        let si = self.storage_index();
        if !p.decoded.is_empty() && p.verified.len() >= p.k {
            ReadError::Inconsistent {
                storage_index: si,
                segment: p.segment,
                attempts: p.decoded.len(),
                report,
            }
        } else {
            ReadError::NotEnoughShares {
                storage_index: si,
                segment: Some(p.segment),
                needed: self.cap.geometry().k(),
                usable: p.verified.len(),
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
        let (_, share) = self.slot(slot_index);
        let mut records = self.fetch_records(slot_index, &[segment]).await?;
        let record = records.pop().unwrap_or_default();
        self.verify_record(share, segment, record, Proof::Needed)
            .await
    }

    /// Fetches one share's records of `segments` (each block with the hash nodes still
    /// missing), in one request of one range per segment, unverified.
    pub(super) async fn fetch_records(
        &self,
        slot_index: usize,
        segments: &[SegmentIndex],
    ) -> Result<Vec<Bytes>, Problem> {
        let (server, share) = self.slot(slot_index);
        let ranges = {
            let trees = self.lock_trees();
            segments
                .iter()
                .map(|&segment| {
                    RecordRequest::plan(
                        &self.layout,
                        segment,
                        trees.block_tree(share),
                        trees.ciphertext_tree(),
                    )
                    .range(&self.layout)
                })
                .collect()
        };
        let parts = timed_read(
            &self.grid.servers()[server],
            self.storage_index(),
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
}
