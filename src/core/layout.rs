//! Where everything sits inside a share (format version 1).
//!
//! ```text
//! header            64 B   magic, version, share number, parameters, storage index
//! UEB               90 B   identical in every share
//! share chain       dN×32  this share's siblings in the share tree, bottom-up
//! record 0 … s-1           block s, then d chain levels of 64 B each:
//!                          (block-tree sibling, ciphertext-tree sibling), bottom-up
//! block tree        (2P-1)×32  this share's whole block tree, array order
//! ciphertext tree   (2P-1)×32  the whole ciphertext tree, array order
//! ```
//!
//! `P` is the segment tree width, `d = log2 P`, `dN = log2 next_pow2(n)`. Every offset
//! follows from the parameters in the cap, so a reader never trusts an offset read from a
//! share, and a cold read of segment `s` is one request for `[0, records)` plus record `s`
//! (one range when `s = 0`). A block and every hash node that verifies it are contiguous,
//! lowest levels first, so a warm reader asks for the block plus a short prefix of its chain.

use std::ops::Range;

use super::geometry::{Geometry, SegmentIndex};
use super::hash::HASH_LEN;
use super::tree::NodeIndex;
use super::ueb::UEB_LEN;

/// Length of the fixed share header.
pub const HEADER_LEN: u64 = 64;
/// Bytes per chain level in a record: block-tree sibling then ciphertext-tree sibling.
pub const CHAIN_LEVEL_LEN: u64 = 2 * HASH_LEN as u64;

/// Byte offsets of one share's sections, computed from the file's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareLayout {
    geometry: Geometry,
    depth: u32,
    share_chain_offset: u64,
    share_chain_levels: u32,
    records_offset: u64,
    full_record_len: u64,
    block_tree_offset: u64,
    tree_len: u64,
    share_len: u64,
}

impl ShareLayout {
    /// The layout of every share of a file with this geometry.
    ///
    /// ```
    /// use segvault::core::{geometry::{Geometry, SegmentIndex}, layout::ShareLayout};
    /// let g = Geometry::new(1 << 20, 1 << 17, 3, 10).unwrap(); // 8 segments
    /// let layout = ShareLayout::new(&g);
    /// let cold = layout.record_read(SegmentIndex(5), 3);
    /// assert_eq!(cold.end - cold.start, 43_691 + 3 * 64); // block + full chain
    /// ```
    pub fn new(geometry: &Geometry) -> ShareLayout {
        // Geometry bounds (size ≤ 2^52, segments ≤ 2^32, depth ≤ 32) keep all of this < 2^63.
        let depth = geometry.segment_tree().depth();
        let share_chain_levels = geometry.share_tree().depth();
        let share_chain_offset = HEADER_LEN + UEB_LEN as u64;
        let records_offset = share_chain_offset + u64::from(share_chain_levels) * HASH_LEN as u64;
        let chain_len = u64::from(depth) * CHAIN_LEVEL_LEN;
        let full_record_len = geometry.full_block_size() + chain_len;
        let block_tree_offset =
            records_offset + geometry.share_data_len() + geometry.num_segments() * chain_len;
        let tree_len = geometry.segment_tree().node_count() * HASH_LEN as u64;
        ShareLayout {
            geometry: *geometry,
            depth,
            share_chain_offset,
            share_chain_levels,
            records_offset,
            full_record_len,
            block_tree_offset,
            tree_len,
            share_len: block_tree_offset + 2 * tree_len,
        }
    }

    /// The geometry this layout was computed from.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Levels in each record's chain (depth of the segment trees).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Header, UEB and share chain: everything before the first record.
    pub fn header_region(&self) -> Range<u64> {
        0..self.records_offset
    }

    /// The UEB inside the header region.
    pub fn ueb_range(&self) -> Range<u64> {
        HEADER_LEN..HEADER_LEN + UEB_LEN as u64
    }

    /// The share chain inside the header region.
    pub fn share_chain_range(&self) -> Range<u64> {
        self.share_chain_offset..self.records_offset
    }

    /// Levels in the share chain.
    pub fn share_chain_levels(&self) -> u32 {
        self.share_chain_levels
    }

    /// First byte of record `s`.
    pub fn record_offset(&self, s: SegmentIndex) -> u64 {
        self.records_offset + s.0 * self.full_record_len
    }

    /// The block of segment `s`.
    pub fn block_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.record_offset(s);
        start..start + self.geometry.block_size(s)
    }

    /// The full chain of segment `s` (all `depth` levels).
    pub fn chain_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.block_range(s).end;
        start..start + u64::from(self.depth) * CHAIN_LEVEL_LEN
    }

    /// One request's worth of record `s`: the block plus the lowest `levels` chain levels.
    pub fn record_read(&self, s: SegmentIndex, levels: u32) -> Range<u64> {
        let block = self.block_range(s);
        block.start..block.end + u64::from(levels.min(self.depth)) * CHAIN_LEVEL_LEN
    }

    /// This share's whole block tree.
    pub fn block_tree_range(&self) -> Range<u64> {
        self.block_tree_offset..self.block_tree_offset + self.tree_len
    }

    /// The whole ciphertext tree.
    pub fn ciphertext_tree_range(&self) -> Range<u64> {
        let start = self.block_tree_offset + self.tree_len;
        start..start + self.tree_len
    }

    /// Offset of `node` inside a tree section starting at `tree_start`.
    pub fn node_offset(tree_start: u64, node: NodeIndex) -> u64 {
        tree_start + node.0 * HASH_LEN as u64
    }

    /// Total share length.
    pub fn share_len(&self) -> u64 {
        self.share_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_tile_the_share() {
        let g = Geometry::new(10, 4, 3, 5).unwrap();
        let l = ShareLayout::new(&g);
        // 3 segments → width 4, depth 2; 5 shares → share tree depth 3.
        assert_eq!(l.depth(), 2);
        assert_eq!(l.share_chain_levels(), 3);
        assert_eq!(l.header_region(), 0..64 + 90 + 96);
        let r0 = l.record_offset(SegmentIndex(0));
        assert_eq!(r0, 250);
        assert_eq!(
            l.block_range(SegmentIndex(1)),
            250 + 2 + 128..250 + 2 + 128 + 2
        );
        assert_eq!(
            l.chain_range(SegmentIndex(2)).end,
            l.block_tree_range().start
        );
        assert_eq!(l.block_tree_range().end, l.ciphertext_tree_range().start);
        assert_eq!(l.ciphertext_tree_range().end, l.share_len());
        assert_eq!(
            l.block_tree_range().end - l.block_tree_range().start,
            7 * 32
        );
    }

    #[test]
    fn empty_file_share_is_header_and_two_one_node_trees() {
        let g = Geometry::new(0, 4, 1, 1).unwrap();
        let l = ShareLayout::new(&g);
        assert_eq!(l.share_len(), 64 + 90 + 64);
    }
}
