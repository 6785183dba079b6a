//! From a byte range to what must be fetched: which segments, which part of each, and which
//! byte ranges of a share bring a block together with the hash nodes still missing.
//!
//! The planner is pure: it takes what the caller already knows (as tree levels needed) and
//! returns ranges; the engine does the fetching.

use std::ops::Range;

use super::geometry::{Geometry, SegmentIndex};
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

/// What one request to one share for one segment must bring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRequest {
    /// The segment.
    pub segment: SegmentIndex,
    /// Whether the header region (header, UEB, share chain) is needed too.
    pub header: bool,
    /// Chain levels to bring after the block.
    pub levels: u32,
}

impl RecordRequest {
    /// Plans a request for `segment` given how much of the trees is known.
    ///
    /// `block_tree` is `None` while this share's block-tree root is unverified: then the full
    /// chain is needed (to compute the root) and so is the share chain from the header.
    pub fn plan(
        layout: &ShareLayout,
        segment: SegmentIndex,
        block_tree: Option<&PartialTree>,
        ciphertext_tree: &PartialTree,
        have_share_chain: bool,
    ) -> RecordRequest {
        let j = segment.0;
        let (block_levels, header) = match block_tree {
            Some(tree) => (tree.levels_needed(j), false),
            None => (layout.depth(), !have_share_chain),
        };
        RecordRequest {
            segment,
            header,
            levels: block_levels.max(ciphertext_tree.levels_needed(j)),
        }
    }

    /// The byte ranges to ask the share for, ascending and merged when adjacent.
    pub fn ranges(&self, layout: &ShareLayout) -> Vec<Range<u64>> {
        let record = layout.record_read(self.segment, self.levels);
        if !self.header {
            return vec![record];
        }
        let header = layout.header_region();
        if header.end == record.start {
            vec![header.start..record.end]
        } else {
            vec![header, record]
        }
    }

    /// Splits the bytes returned for [`ranges`](Self::ranges) into the header region (if
    /// asked for) and the record. `None` if the lengths are not what was asked for.
    pub fn split<'a>(
        &self,
        layout: &ShareLayout,
        parts: &'a [impl AsRef<[u8]>],
    ) -> Option<(Option<&'a [u8]>, &'a [u8])> {
        let ranges = self.ranges(layout);
        if parts.len() != ranges.len()
            || parts
                .iter()
                .zip(&ranges)
                .any(|(p, r)| p.as_ref().len() as u64 != r.end - r.start)
        {
            return None;
        }
        let header_len = layout.header_region().end as usize;
        match (self.header, parts) {
            (false, [record]) => Some((None, record.as_ref())),
            (true, [joined]) => {
                let (h, rec) = joined.as_ref().split_at(header_len);
                Some((Some(h), rec))
            }
            (true, [h, rec]) => Some((Some(h.as_ref()), rec.as_ref())),
            _ => None,
        }
    }
}

/// A record read back: the block and the chain levels that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The block bytes.
    pub block: &'a [u8],
    /// Block-tree siblings, bottom-up.
    pub block_chain: Vec<Hash>,
    /// Ciphertext-tree siblings, bottom-up.
    pub ciphertext_chain: Vec<Hash>,
}

impl<'a> Record<'a> {
    /// Parses the bytes of [`ShareLayout::record_read`] for `segment`. `None` if the length
    /// is not a block plus whole chain levels.
    pub fn parse(
        layout: &ShareLayout,
        segment: SegmentIndex,
        bytes: &'a [u8],
    ) -> Option<Record<'a>> {
        let block_len = layout.geometry().block_size(segment) as usize;
        let (block, chain) = bytes.split_at_checked(block_len)?;
        if chain.len() as u64 % CHAIN_LEVEL_LEN != 0
            || chain.len() as u64 / CHAIN_LEVEL_LEN > u64::from(layout.depth())
        {
            return None;
        }
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
        })
    }
}

/// Parses a share chain section (levels × 32 bytes) into hashes.
pub fn parse_share_chain(bytes: &[u8]) -> Option<Vec<Hash>> {
    if bytes.len() % HASH_LEN != 0 {
        return None;
    }
    bytes.chunks_exact(HASH_LEN).map(Hash::from_slice).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tree::TreeShape;

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
    fn cold_request_for_segment_zero_is_one_range() {
        let g = Geometry::new(1000, 100, 2, 4).unwrap();
        let layout = ShareLayout::new(&g);
        let ct = PartialTree::new(TreeShape::new(10), Hash::default());
        let req = RecordRequest::plan(&layout, SegmentIndex(0), None, &ct, false);
        assert!(req.header);
        assert_eq!(req.levels, 4);
        assert_eq!(
            req.ranges(&layout),
            vec![0..layout.record_read(SegmentIndex(0), 4).end]
        );
        let later = RecordRequest::plan(&layout, SegmentIndex(7), None, &ct, false);
        assert_eq!(later.ranges(&layout).len(), 2);
        let warm = RecordRequest::plan(&layout, SegmentIndex(7), None, &ct, true);
        assert_eq!(
            warm.ranges(&layout),
            vec![layout.record_read(SegmentIndex(7), 4)]
        );
    }
}
