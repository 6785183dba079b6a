//! From a byte range to what must be fetched: which segments, which part of each, and which
//! byte ranges of a share bring a block together with the hash nodes still missing.
//!
//! The planner is pure: it takes what the caller already knows (as tree levels needed) and
//! returns ranges; the engine does the fetching.

use std::collections::HashSet;
use std::ops::Range;

use super::geometry::{Geometry, SegmentIndex, ShareNum};
use super::hash::{HASH_LEN, Hash};
use super::layout::{CHAIN_LEVEL_LEN, ShareLayout};
use super::tree::PartialTree;

/// The part of one segment a read needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSlice {
    /// The segment.
    pub segment: SegmentIndex,
    /// Offsets inside the segment.
    pub within: Range<u64>,
    /// Where these bytes go in the read's output.
    pub output_offset: u64,
}

/// Clamps a read of `len` bytes at `offset` to the file: a read past the end returns fewer
/// bytes (none when it starts at or past the end).
pub fn clamp(geometry: &Geometry, offset: u64, len: u64) -> Range<u64> {
    let start = offset.min(geometry.size());
    let end = offset.saturating_add(len).min(geometry.size());
    start..end.max(start)
}

/// The segments a (clamped) byte range touches, in order, each with the slice it needs.
///
/// ```
/// use segvault::core::{geometry::{Geometry, SegmentIndex}, planner::plan_range};
/// let g = Geometry::new(100, 40, 1, 1).unwrap();
/// let plan: Vec<_> = plan_range(&g, 30..90).collect();
/// assert_eq!(plan.len(), 3);
/// assert_eq!((plan[0].segment, plan[0].within.clone()), (SegmentIndex(0), 30..40));
/// assert_eq!((plan[2].segment, plan[2].within.clone()), (SegmentIndex(2), 0..10));
/// ```
pub fn plan_range(
    geometry: &Geometry,
    range: Range<u64>,
) -> impl Iterator<Item = SegmentSlice> + use<> {
    let g = *geometry;
    let range = clamp(&g, range.start, range.end.saturating_sub(range.start));
    g.segments_overlapping(range.clone()).map(move |s| {
        let segment = SegmentIndex(s);
        let seg = g.segment_range(segment);
        let start = range.start.max(seg.start);
        let end = range.end.min(seg.end);
        SegmentSlice {
            segment,
            within: start - seg.start..end - seg.start,
            output_offset: start - range.start,
        }
    })
}

/// What one request to one share for one segment must bring: always one contiguous range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRequest {
    /// The segment.
    pub segment: SegmentIndex,
    /// Chain levels to bring after the block.
    pub levels: u32,
    /// Whether the whole path up to the UEB is needed (the share's block-tree root is not
    /// verified yet), which means the whole record.
    pub share_chain: bool,
}

impl RecordRequest {
    /// Plans a request for `segment` given how much of the trees is known.
    ///
    /// `block_tree` is `None` while this share's block-tree root is unverified: then the
    /// whole record is needed, to compute the root and prove it through the share chain.
    pub fn plan(
        layout: &ShareLayout,
        segment: SegmentIndex,
        block_tree: Option<&PartialTree>,
        ciphertext_tree: &PartialTree,
    ) -> RecordRequest {
        let j = segment.0;
        match block_tree {
            None => RecordRequest {
                segment,
                levels: layout.depth(),
                share_chain: true,
            },
            Some(tree) => RecordRequest {
                segment,
                levels: tree.levels_needed(j).max(ciphertext_tree.levels_needed(j)),
                share_chain: false,
            },
        }
    }

    /// The byte range to ask the share for.
    pub fn range(&self, layout: &ShareLayout) -> Range<u64> {
        layout.record_read(self.segment, self.levels, self.share_chain)
    }
}

/// A record (or a prefix of one) read back: the block and the hashes that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The block bytes.
    pub block: &'a [u8],
    /// Block-tree siblings, bottom-up.
    pub block_chain: Vec<Hash>,
    /// Ciphertext-tree siblings, bottom-up.
    pub ciphertext_chain: Vec<Hash>,
    /// Share-tree siblings, bottom-up, when the whole record was read.
    pub share_chain: Option<Vec<Hash>>,
}

impl<'a> Record<'a> {
    /// Parses the bytes of [`ShareLayout::record_read`] for `segment`: a whole record, or a
    /// block followed by whole chain levels. `None` for any other length.
    pub fn parse(
        layout: &ShareLayout,
        segment: SegmentIndex,
        bytes: &'a [u8],
    ) -> Option<Record<'a>> {
        let block_len = layout.geometry().block_size(segment) as usize;
        let (block, rest) = bytes.split_at_checked(block_len)?;
        let chain_len = layout.depth() as usize * CHAIN_LEVEL_LEN as usize;
        let share_len = layout.share_chain_levels() as usize * HASH_LEN;
        let (chain, share_chain) = if rest.len() == chain_len + share_len {
            let (chain, share) = rest.split_at(chain_len);
            (chain, Some(parse_share_chain(share)?))
        } else if rest.len() % CHAIN_LEVEL_LEN as usize == 0 && rest.len() <= chain_len {
            (rest, None)
        } else {
            return None;
        };
        let mut block_chain = Vec::with_capacity(chain.len() / 64);
        let mut ciphertext_chain = Vec::with_capacity(chain.len() / 64);
        for level in chain.chunks_exact(CHAIN_LEVEL_LEN as usize) {
            let (b, c) = level.split_at(HASH_LEN);
            block_chain.push(Hash::from_slice(b)?);
            ciphertext_chain.push(Hash::from_slice(c)?);
        }
        Some(Record {
            block,
            block_chain,
            ciphertext_chain,
            share_chain,
        })
    }
}

/// The hashes that follow a block in its whole record, exactly as a share stores them: every
/// (block-tree, ciphertext-tree) sibling level, then the share chain. The block followed by
/// these is the whole record, which [`Record::parse`] reads back. `None` when a chain has the
/// wrong number of levels for the layout.
///
/// ```
/// use segvault::core::{geometry::{Geometry, SegmentIndex}, hash::Hash, layout::ShareLayout};
/// use segvault::core::planner::{Record, record_hashes};
/// let g = Geometry::new(1 << 20, 1 << 17, 3, 10).unwrap();
/// let layout = ShareLayout::new(&g);
/// let s = SegmentIndex(5);
/// let chain = vec![Hash([1; 32]); 3];
/// let share_chain = vec![Hash([2; 32]); 4];
/// let mut record = vec![7u8; g.block_size(s) as usize];
/// record.extend(record_hashes(&layout, &chain, &chain, &share_chain).unwrap());
/// let parsed = Record::parse(&layout, s, &record).unwrap();
/// assert_eq!(parsed.share_chain, Some(share_chain));
/// ```
pub fn record_hashes(
    layout: &ShareLayout,
    block_chain: &[Hash],
    ciphertext_chain: &[Hash],
    share_chain: &[Hash],
) -> Option<Vec<u8>> {
    let depth = layout.depth() as usize;
    if block_chain.len() != depth
        || ciphertext_chain.len() != depth
        || share_chain.len() != layout.share_chain_levels() as usize
    {
        return None;
    }
    let mut bytes =
        Vec::with_capacity(depth * CHAIN_LEVEL_LEN as usize + share_chain.len() * HASH_LEN);
    for (b, c) in block_chain.iter().zip(ciphertext_chain) {
        bytes.extend_from_slice(b.as_bytes());
        bytes.extend_from_slice(c.as_bytes());
    }
    for h in share_chain {
        bytes.extend_from_slice(h.as_bytes());
    }
    Some(bytes)
}

/// The next k-subset of `shares` (sorted, primaries first) to decode that is not in `tried`.
///
/// Subsets are taken by *leaving out* shares, in order: after the first k fail together, a
/// reader fetches one more share and tries each set that leaves one share out, the lowest
/// first. When a single share is inconsistent, at most k + 1 decodes find the good set.
///
/// ```
/// use std::collections::HashSet;
/// use segvault::core::{geometry::ShareNum, planner::next_subset};
/// let shares: Vec<ShareNum> = [0, 1, 2, 3].into_iter().map(ShareNum).collect();
/// let mut tried = HashSet::new();
/// tried.insert(vec![ShareNum(0), ShareNum(1), ShareNum(2)]);
/// assert_eq!(next_subset(&shares, 3, &tried), Some(vec![ShareNum(1), ShareNum(2), ShareNum(3)]));
/// ```
pub fn next_subset(
    shares: &[ShareNum],
    k: usize,
    tried: &HashSet<Vec<ShareNum>>,
) -> Option<Vec<ShareNum>> {
    if shares.len() < k || k == 0 {
        return None;
    }
    let drop = shares.len() - k;
    // Combinations of indices to leave out, in lexicographic order.
    let mut out: Vec<usize> = (0..drop).collect();
    for _ in 0..10_000 {
        let subset: Vec<ShareNum> = shares
            .iter()
            .enumerate()
            .filter(|(i, _)| !out.contains(i))
            .map(|(_, s)| *s)
            .collect();
        if !tried.contains(&subset) {
            return Some(subset);
        }
        let mut i = drop;
        loop {
            if i == 0 {
                return None;
            }
            i -= 1;
            if out[i] < shares.len() - drop + i {
                break;
            }
        }
        out[i] += 1;
        for j in i + 1..drop {
            out[j] = out[j - 1] + 1;
        }
    }
    None
}

/// Parses a share chain section (levels × 32 bytes) into hashes.
pub fn parse_share_chain(bytes: &[u8]) -> Option<Vec<Hash>> {
    if !bytes.len().is_multiple_of(HASH_LEN) {
        return None;
    }
    bytes.chunks_exact(HASH_LEN).map(Hash::from_slice).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tree::TreeShape;

    #[test]
    fn subsets_leave_shares_out_lowest_first_and_skip_tried_ones() {
        let shares: Vec<ShareNum> = [0, 1, 4, 7].into_iter().map(ShareNum).collect();
        let mut tried = HashSet::new();
        let mut seen = Vec::new();
        while let Some(s) = next_subset(&shares, 3, &tried) {
            seen.push(s.iter().map(|x| x.0).collect::<Vec<_>>());
            tried.insert(s);
        }
        assert_eq!(
            seen,
            vec![vec![1, 4, 7], vec![0, 4, 7], vec![0, 1, 7], vec![0, 1, 4]]
        );
        let mut pairs = Vec::new();
        let mut tried = HashSet::new();
        while let Some(s) = next_subset(&shares, 2, &tried) {
            pairs.push(s.clone());
            tried.insert(s);
        }
        assert_eq!(pairs.len(), 6, "every 2-subset of 4 once");
        assert_eq!(next_subset(&shares[..1], 2, &HashSet::new()), None);
        assert_eq!(
            next_subset(&shares, 4, &HashSet::new()),
            Some(shares.clone())
        );
    }

    #[test]
    fn reads_past_eof_are_clamped() {
        let g = Geometry::new(10, 4, 1, 1).unwrap();
        assert_eq!(clamp(&g, 8, 100), 8..10);
        assert_eq!(clamp(&g, 10, 5), 10..10);
        assert_eq!(clamp(&g, u64::MAX, u64::MAX), 10..10);
        assert_eq!(plan_range(&g, 12..20).count(), 0);
        assert_eq!(plan_range(&g, 3..3).count(), 0);
    }

    #[test]
    fn cold_requests_take_the_whole_record_and_warm_ones_a_prefix() {
        let g = Geometry::new(1000, 100, 2, 4).unwrap();
        let layout = ShareLayout::new(&g);
        let ct = PartialTree::new(TreeShape::new(10), Hash::default());
        let cold = RecordRequest::plan(&layout, SegmentIndex(7), None, &ct);
        assert_eq!(cold.range(&layout), layout.record_range(SegmentIndex(7)));
        let bytes = vec![
            0u8;
            (layout.record_range(SegmentIndex(7)).end - layout.record_range(SegmentIndex(7)).start)
                as usize
        ];
        let record = Record::parse(&layout, SegmentIndex(7), &bytes).unwrap();
        assert_eq!((record.block.len(), record.block_chain.len()), (50, 4));
        assert_eq!(record.share_chain.map(|c| c.len()), Some(2));
        let warm_tree = PartialTree::new(TreeShape::new(10), Hash::default());
        let warm = RecordRequest::plan(&layout, SegmentIndex(7), Some(&warm_tree), &ct);
        assert!(!warm.share_chain);
        assert_eq!(warm.levels, 4, "nothing but the root is known");
        assert!(Record::parse(&layout, SegmentIndex(7), &bytes[..bytes.len() - 1]).is_none());
    }
}
