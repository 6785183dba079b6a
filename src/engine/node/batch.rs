//! Fetching consecutive segments together: one request per share brings the records of a
//! whole batch (a sequential reader's read-ahead then costs one exchange per share per
//! batch, not per segment). Each segment is then verified and decoded by its own reader, so a
//! batch still uses every core. Anything unusual — a failed or late share, a record or decode
//! that does not check — sends that segment through the single-segment
//! [`fetch`](super::fetch), with all its hedging and retries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::WeakShared;
use tracing::{Instrument, debug};

use super::decode::{DecodeError, Proof};
use super::{FileNode, SharedSegment};
use crate::core::choice;
use crate::core::geometry::SegmentIndex;
use crate::engine::error::Problem;
use crate::engine::segment::SegmentData;

/// The unverified records of a batch of segments: per share (by slot), one per segment.
struct RunRecords {
    records: Vec<(usize, Vec<Bytes>)>,
}

/// Why a segment of a batch goes through the single-segment fetch instead.
#[derive(Debug, Clone, thiserror::Error)]
enum Fallback {
    #[error("too few shares known")]
    TooFewShares,
    #[error("a share was late")]
    Late,
    #[error("{0}")]
    Share(Problem),
    #[error("{0}")]
    Decode(DecodeError),
}

impl FileNode {
    /// The verified ciphertext of each of `segments` (consecutive), like
    /// [`segment`](Self::segment) for each, but those not already being fetched (nor held by
    /// the disk cache) are fetched together; see the module documentation.
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
            let span = tracing::info_span!(
                "batch",
                si = %self.storage_index(),
                first = %fresh[0],
                segments = fresh.len()
            );
            let run = self
                .clone()
                .fetch_run(fresh.clone())
                .instrument(span)
                .boxed()
                .shared();
            for (i, &segment) in fresh.iter().enumerate() {
                let (node, run) = (self.clone(), run.clone());
                let one = async move {
                    let outcome = match run.await {
                        Ok(records) => node.clone().decode_run_segment(&records, i, segment).await,
                        Err(why) => Err(why),
                    };
                    match outcome {
                        Ok(data) => Ok(data),
                        Err(why) => {
                            debug!(%why, "batched fetch fell back to one segment");
                            node.fetch_segment(segment).await
                        }
                    }
                }
                .instrument(self.segment_span(segment))
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

    /// Fetches the records of `segments` from k shares, one request each, unverified.
    async fn fetch_run(
        self: Arc<Self>,
        segments: Vec<SegmentIndex>,
    ) -> Result<Arc<RunRecords>, Fallback> {
        let k = usize::from(self.cap.geometry().k());
        let slots = self.pick(k, &HashSet::new(), &HashSet::new());
        if slots.len() < k {
            return Err(Fallback::TooFewShares);
        }
        let this = &self;
        let fetches = slots.iter().map(|&slot| {
            let (server, _) = this.slot(slot);
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
                Err(None) => return Err(Fallback::Late),
                Err(Some(problem)) => {
                    self.log_rejection(slot, &problem);
                    self.record(slot, Err(&problem));
                    return Err(Fallback::Share(problem));
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
    ) -> Result<Arc<SegmentData>, Fallback> {
        let mut blocks = Vec::with_capacity(run.records.len());
        for (slot, parts) in &run.records {
            let (_, share) = self.slot(*slot);
            let record = parts[index].clone();
            match self
                .verify_record(share, segment, record, Proof::Needed)
                .await
            {
                Ok(block) => blocks.push(block),
                Err(problem) => {
                    self.log_rejection(*slot, &problem);
                    self.record(*slot, Err(&problem));
                    return Err(Fallback::Share(problem));
                }
            }
        }
        let chains = blocks.iter().map(|b| b.ciphertext_chain.clone()).collect();
        let data = self
            .clone()
            .decode_and_check(segment, blocks.clone(), chains)
            .await
            .map_err(Fallback::Decode)?;
        if self.cache.is_some() {
            self.metrics.cache_lookups(0, blocks.len() as u64);
            self.cache_blocks(segment, &blocks);
        }
        Ok(data)
    }
}
