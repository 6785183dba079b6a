//! The disk cache seen from a file node: which segments it holds, reading blocks back (each
//! re-verified from the UEB down, as if from an untrusted server) and storing verified ones
//! as whole records, so that an entry always proves itself.

use std::collections::{BTreeMap, HashSet};

use tracing::{debug, warn};

use super::FileNode;
use super::decode::{Proof, VerifiedBlock};
use crate::cache::CiphertextRecord;
use crate::core::cache_entry::BlockKey;
use crate::core::codec::Codec as _;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::ueb::UEB_LEN;
use crate::core::verifier::VerifyError;
use crate::engine::error::Problem;
use crate::metrics::{Eviction, Rejection};

impl FileNode {
    fn cache_key(&self, share: ShareNum, segment: SegmentIndex) -> BlockKey {
        BlockKey {
            storage_index: self.storage_index(),
            share,
            segment,
        }
    }

    /// Whether the cache holds k blocks of `segment` (no I/O: its index only).
    pub(super) fn fully_cached(&self, segment: SegmentIndex) -> bool {
        let g = self.cap.geometry();
        self.cache.as_ref().is_some_and(|cache| {
            cache
                .shares_cached(self.storage_index(), segment, g.n())
                .len()
                >= usize::from(g.k())
        })
    }

    /// Up to k blocks of `segment` from the disk cache, each verified like a block from a
    /// server, and more: an entry is the share's whole record, so its whole proof up to the
    /// UEB's share root is checked, even the levels this node already knows. A bad entry is
    /// dropped and counted. (Its ciphertext chain is compared once the segment is decoded;
    /// see [`check_cached_ciphertext_chains`](Self::check_cached_ciphertext_chains).)
    pub(super) async fn cached_blocks(
        &self,
        segment: SegmentIndex,
    ) -> BTreeMap<ShareNum, VerifiedBlock> {
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
                let share = key.share;
                let checked = if body.get(..UEB_LEN) != Some(&ueb[..]) {
                    Err(Problem::CorruptBlock(VerifyError::OtherUeb {
                        share,
                        segment,
                    }))
                } else {
                    let record = body.slice(UEB_LEN..);
                    self.verify_record(share, segment, record, Proof::Whole)
                        .await
                };
                match checked {
                    Ok(block) => {
                        verified.insert(share, block);
                    }
                    Err(problem) => {
                        warn!(%share, %problem, "cache entry failed its check; dropped");
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

    /// After `segment` decoded, the ciphertext chain of each block read from the cache must be
    /// the verified one; an entry whose chain differs is dropped (its block was good, so the
    /// segment stands).
    pub(super) fn check_cached_ciphertext_chains(
        &self,
        segment: SegmentIndex,
        verified: &BTreeMap<ShareNum, VerifiedBlock>,
        from_cache: &HashSet<ShareNum>,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        let known = self.lock_trees().ciphertext_tree().chain(segment.0);
        for share in from_cache {
            let Some(block) = verified.get(share) else {
                continue;
            };
            if known.as_ref() != Some(&block.ciphertext_chain) {
                warn!(%share, "cache entry's ciphertext chain is wrong; dropped");
                self.metrics.share_rejected(Rejection::CacheEntry);
                let (cache, key) = (cache.clone(), self.cache_key(*share, segment));
                tokio::task::spawn_blocking(move || cache.discard(&key, Eviction::Corrupt));
            }
        }
    }

    /// Stores verified `blocks` of `segment` in the disk cache (in the background), each as
    /// its share's whole record rebuilt from the verified trees.
    pub(super) fn cache_blocks<'a>(
        &self,
        segment: SegmentIndex,
        blocks: impl IntoIterator<Item = &'a VerifiedBlock>,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        for block in blocks {
            let hashes = self
                .lock_trees()
                .record_hashes(&self.layout, block.share, segment);
            match hashes {
                Some(hashes) => cache.insert(
                    self.cache_key(block.share, segment),
                    CiphertextRecord::verified(self.ueb.to_bytes(), block.data.clone(), hashes),
                ),
                None => {
                    debug!(share = %block.share, "block not cached: its proof is not all known")
                }
            }
        }
    }
}
