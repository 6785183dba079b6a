//! Where everything sits inside a share (format version 1).
//!
//! ```text
//! header            64 B       magic, version, share number, parameters, storage index
//! UEB               90 B       identical in every share
//! record 0 … s-1               block s, then the path from it to the UEB, bottom-up:
//!                              d levels of 64 B (block-tree sibling, ciphertext-tree sibling)
//!                              then dN levels of 32 B (share-tree siblings of this share)
//! block tree        (2P-1)×32  this share's whole block tree, array order
//! ciphertext tree   (2P-1)×32  the whole ciphertext tree, array order
//! ```
//!
//! `P` is the segment tree width, `d = log2 P`, `dN = log2 next_pow2(n)`. Every offset
//! follows from the parameters in the cap, so a reader never trusts an offset read from a
//! share. A block and every hash node that verifies it, all the way to the UEB, are one
//! contiguous range, lowest levels first: a cold read of segment `s` is one range, and a
//! warm reader asks for the block plus the short prefix of its chain it lacks.

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
    share_chain_levels: u32,
    full_record_len: u64,
    block_tree_offset: u64,
    tree_len: u64,
    share_len: u64,
}

/// Where the records start: right after the header and the UEB.
pub const RECORDS_OFFSET: u64 = HEADER_LEN + UEB_LEN as u64;

impl ShareLayout {
    /// The layout of every share of a file with this geometry.
    ///
    /// ```
    /// use segvault::core::{geometry::{Geometry, SegmentIndex}, layout::ShareLayout};
    /// let g = Geometry::new(1 << 20, 1 << 17, 3, 10).unwrap(); // 8 segments, 10 shares
    /// let layout = ShareLayout::new(&g);
    /// let cold = layout.record_read(SegmentIndex(5), 3, true);
    /// assert_eq!(cold.end - cold.start, 43_691 + 3 * 64 + 4 * 32); // block + whole path
    /// let warm = layout.record_read(SegmentIndex(5), 0, false);
    /// assert_eq!(warm, layout.block_range(SegmentIndex(5)));
    /// ```
    pub fn new(geometry: &Geometry) -> ShareLayout {
        // Geometry bounds (size ≤ 2^52, segments ≤ 2^32, depth ≤ 32) keep all of this < 2^63.
        let depth = geometry.segment_tree().depth();
        let share_chain_levels = geometry.share_tree().depth();
        let path_len =
            u64::from(depth) * CHAIN_LEVEL_LEN + u64::from(share_chain_levels) * HASH_LEN as u64;
        let full_record_len = geometry.full_block_size() + path_len;
        let block_tree_offset =
            RECORDS_OFFSET + geometry.share_data_len() + geometry.num_segments() * path_len;
        let tree_len = geometry.segment_tree().node_count() * HASH_LEN as u64;
        ShareLayout {
            geometry: *geometry,
            depth,
            share_chain_levels,
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

    /// Levels of block-tree / ciphertext-tree siblings in each record (depth of the segment trees).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Levels of share-tree siblings at the end of each record.
    pub fn share_chain_levels(&self) -> u32 {
        self.share_chain_levels
    }

    /// Header and UEB: what a reader needs once per file.
    pub fn header_region(&self) -> Range<u64> {
        0..RECORDS_OFFSET
    }

    /// The UEB inside the header region.
    pub fn ueb_range(&self) -> Range<u64> {
        HEADER_LEN..RECORDS_OFFSET
    }

    /// First byte of record `s`.
    pub fn record_offset(&self, s: SegmentIndex) -> u64 {
        RECORDS_OFFSET + s.0 * self.full_record_len
    }

    /// The block of segment `s`.
    pub fn block_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.record_offset(s);
        start..start + self.geometry.block_size(s)
    }

    /// The `depth` levels of (block-tree, ciphertext-tree) siblings of segment `s`.
    pub fn chain_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.block_range(s).end;
        start..start + u64::from(self.depth) * CHAIN_LEVEL_LEN
    }

    /// The share chain stored in record `s` (the same in every record of a share).
    pub fn share_chain_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.chain_range(s).end;
        start..start + u64::from(self.share_chain_levels) * HASH_LEN as u64
    }

    /// All of record `s`.
    pub fn record_range(&self, s: SegmentIndex) -> Range<u64> {
        self.record_offset(s)..self.share_chain_range(s).end
    }

    /// One request's worth of record `s`: the whole record when the share chain is needed,
    /// else the block plus the lowest `levels` chain levels.
    pub fn record_read(&self, s: SegmentIndex, levels: u32, share_chain: bool) -> Range<u64> {
        if share_chain {
            return self.record_range(s);
        }
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
        assert_eq!((l.depth(), l.share_chain_levels()), (2, 3));
        assert_eq!(l.header_region(), 0..154);
        assert_eq!(l.record_offset(SegmentIndex(0)), 154);
        // Full record: 2-byte block + 2 × 64 + 3 × 32.
        assert_eq!(l.record_offset(SegmentIndex(1)), 154 + 2 + 128 + 96);
        assert_eq!(
            l.block_range(SegmentIndex(1)).end - l.block_range(SegmentIndex(1)).start,
            2
        );
        assert_eq!(
            l.chain_range(SegmentIndex(1)).end,
            l.share_chain_range(SegmentIndex(1)).start
        );
        assert_eq!(
            l.record_range(SegmentIndex(2)).end,
            l.block_tree_range().start
        );
        assert_eq!(l.block_tree_range().end, l.ciphertext_tree_range().start);
        assert_eq!(l.ciphertext_tree_range().end, l.share_len());
        assert_eq!(
            l.block_tree_range().end - l.block_tree_range().start,
            7 * 32
        );
        assert_eq!(
            l.record_read(SegmentIndex(1), 9, false),
            l.block_range(SegmentIndex(1)).start..l.chain_range(SegmentIndex(1)).end
        );
    }

    #[test]
    fn empty_file_share_is_header_and_two_one_node_trees() {
        let g = Geometry::new(0, 4, 1, 1).unwrap();
        let l = ShareLayout::new(&g);
        assert_eq!(l.share_len(), 64 + 90 + 64);
    }
}
