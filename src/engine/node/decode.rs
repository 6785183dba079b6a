//! From share bytes to a verified segment: a record is verified into a [`VerifiedBlock`]
//! (through the pure [`verifier`](crate::core::verifier)), and k verified blocks are decoded
//! and checked against the ciphertext tree. Large blocks are hashed and decoded on the
//! blocking pool, off the async threads.

use std::sync::Arc;

use bytes::Bytes;

use super::FileNode;
use crate::core::erasure::ErasureError;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::verifier::{self, VerifyError};
use crate::engine::error::Problem;
use crate::engine::segment::SegmentData;

/// Blocks at least this large are hashed and decoded on the blocking pool rather than on an
/// async worker (about 70 µs of BLAKE3 at this size).
const INLINE_CPU_LIMIT: u64 = 256 << 10;

/// A verified block with what came with it.
#[derive(Clone)]
pub(super) struct VerifiedBlock {
    pub(super) share: ShareNum,
    pub(super) data: Bytes,
    pub(super) leaf: Hash,
    /// The ciphertext-tree levels its record brought (checked once the segment is decoded).
    pub(super) ciphertext_chain: Vec<Hash>,
}

/// How much of a record's proof to walk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Proof {
    /// Only the levels below what the node already trusts (a record from a server).
    Needed,
    /// Every level up to the UEB's share root, trusting nothing the node holds (a cache
    /// entry: rot in levels the node already knows would otherwise stay unnoticed).
    Whole,
}

/// Why k verified blocks did not give a segment.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum DecodeError {
    /// The decoded segment does not match the ciphertext tree: the shares disagree.
    #[error(transparent)]
    Mismatch(VerifyError),
    /// The blocks could not be decoded at all (they are verified, so this is a bug).
    #[error("erasure decoding failed: {0}")]
    Erasure(ErasureError),
    /// The decoding task panicked or was cancelled.
    #[error("decoding task failed: {0}")]
    Task(String),
}

impl FileNode {
    /// Verifies share `share`'s record of `segment` (a block and the hash nodes that came
    /// with it) up to the UEB, learning the nodes it proves.
    pub(super) async fn verify_record(
        &self,
        share: ShareNum,
        segment: SegmentIndex,
        bytes: Bytes,
        proof: Proof,
    ) -> Result<VerifiedBlock, Problem> {
        let record = verifier::parse_record(&self.layout, share, segment, &bytes)?;
        let data = bytes.slice(..record.block.len());
        let leaf = if data.len() as u64 >= INLINE_CPU_LIMIT {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash::block_leaf(&data))
                .await
                .map_err(|e| Problem::Unavailable(format!("hashing task failed: {e}")))?
        } else {
            hash::block_leaf(&data)
        };
        if proof == Proof::Whole {
            verifier::verify_whole_proof(&self.ueb, share, segment, leaf, &record)?;
        }
        self.lock_trees()
            .verify_record(share, segment, leaf, &record)?;
        Ok(VerifiedBlock {
            share,
            data,
            leaf,
            ciphertext_chain: record.ciphertext_chain,
        })
    }

    /// Decodes `blocks` (k verified blocks) and checks the result against the ciphertext tree
    /// through any of `chains`.
    pub(super) async fn decode_and_check(
        self: Arc<Self>,
        segment: SegmentIndex,
        blocks: Vec<VerifiedBlock>,
        chains: Vec<Vec<Hash>>,
    ) -> Result<Arc<SegmentData>, DecodeError> {
        let k = self.cap.geometry().k();
        let primaries = blocks.iter().filter(|b| u16::from(b.share.0) < k).count() as u64;
        self.metrics
            .blocks_used(primaries, blocks.len() as u64 - primaries);
        let big = self.cap.geometry().block_size(segment) >= INLINE_CPU_LIMIT;
        let node = self.clone();
        let work = move || node.decode_and_check_blocking(segment, blocks, &chains);
        if big {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| DecodeError::Task(e.to_string()))?
        } else {
            work()
        }
    }

    fn decode_and_check_blocking(
        &self,
        segment: SegmentIndex,
        blocks: Vec<VerifiedBlock>,
        chains: &[Vec<Hash>],
    ) -> Result<Arc<SegmentData>, DecodeError> {
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
            let rebuilt = self.codec.decode(&inputs).map_err(DecodeError::Erasure)?;
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
        self.lock_trees()
            .verify_segment(segment, leaf, chains)
            .map_err(DecodeError::Mismatch)?;
        Ok(Arc::new(SegmentData::new(
            data,
            g.segment_len(segment) as usize,
        )))
    }
}
