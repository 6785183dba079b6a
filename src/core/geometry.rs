//! Segment geometry: how a file of `size` bytes is cut into segments, and each segment into
//! `k` data blocks plus `n - k` parity blocks.
//!
//! Segment `s` holds file bytes `[s * segment_size, min((s + 1) * segment_size, size))`. Its
//! blocks are `ceil(len / k)` bytes; the segment is zero-padded to `k * block_size` before
//! coding (only the last primary block of a segment can hold padding). Every segment but the
//! last is full; the last ("tail") segment is shorter and so are its blocks. An empty file
//! has no segments.

use std::fmt;
use std::ops::Range;

use super::tree::TreeShape;

/// Smallest segment size a file may use.
pub const MIN_SEGMENT_SIZE: u64 = 1;
/// Smallest segment size an upload may choose. Every block carries its hashes (64 bytes
/// per level of the segment tree, 32 per level of the share tree, about 128 of tree nodes):
/// with blocks of 1 KiB or more they weigh at most about twice the block, even for a file
/// of 2^32 segments, and a few percent at the default segment size. Smaller segments only
/// multiply what is stored (`--segment-size 1` turned 3 MB into 67 GB). Files already stored
/// with smaller segments stay readable: this is a rule for new uploads, not the format.
pub const MIN_UPLOAD_SEGMENT_SIZE: u64 = 4 << 10;
/// Smallest block (segment size / k) an upload may choose; see [`MIN_UPLOAD_SEGMENT_SIZE`].
pub const MIN_UPLOAD_BLOCK_SIZE: u64 = 1 << 10;

/// The smallest segment size an upload with `k` data shares may use.
///
/// ```
/// use segvault::core::geometry::min_upload_segment_size;
/// assert_eq!(min_upload_segment_size(3), 4096);
/// assert_eq!(min_upload_segment_size(10), 10 * 1024);
/// ```
pub fn min_upload_segment_size(k: u16) -> u64 {
    MIN_UPLOAD_SEGMENT_SIZE.max(u64::from(k) * MIN_UPLOAD_BLOCK_SIZE)
}

/// Largest segment size: bounds the memory one segment in flight can take.
pub const MAX_SEGMENT_SIZE: u64 = 16 << 20;
/// Segment size for ordinary files (see [`Geometry::choose_segment_size`]).
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 10;
/// The automatic rule grows segments until a file has at most this many.
pub const TARGET_MAX_SEGMENTS: u64 = 1 << 16;
/// Hard limit on the number of segments of one file (tree indexes stay far below 2^63).
pub const MAX_SEGMENTS: u64 = 1 << 32;
/// Largest file size the format describes (4 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 52;
/// Largest number of shares (`n`): the field GF(2^8) has 256 evaluation points.
pub const MAX_SHARES: u16 = 256;

/// Index of a segment within a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentIndex(pub u64);

impl fmt::Display for SegmentIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Share number: which of the `n` coded blocks of every segment a share holds. Shares
/// `0..k` are *primary*: their blocks are the ciphertext itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShareNum(pub u8);

impl ShareNum {
    /// As an index into per-share tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShareNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parameters that do not describe a valid file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// `k` must be at least 1.
    #[error("k (shares needed) must be at least 1")]
    ZeroK,
    /// `k` must not exceed `n`.
    #[error("k ({k}) must not exceed n ({n})")]
    KAboveN {
        /// Shares needed.
        k: u16,
        /// Total shares.
        n: u16,
    },
    /// `n` is limited by the field.
    #[error("n (total shares) is {n}; it must be between 1 and {MAX_SHARES}")]
    NOutOfRange {
        /// Total shares.
        n: u16,
    },
    /// The segment size is outside the allowed range.
    #[error("segment size {size} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE} bytes")]
    SegmentSize {
        /// The segment size asked for.
        size: u64,
    },
    /// The file is larger than the format allows.
    #[error("file size {size} exceeds the maximum of {MAX_FILE_SIZE} bytes")]
    FileTooLarge {
        /// The size asked for.
        size: u64,
    },
    /// Too many segments for the segment size.
    #[error(
        "a {size}-byte file in {segment_size}-byte segments has {segments} segments; \
         the limit is {MAX_SEGMENTS}: use a larger segment size"
    )]
    TooManySegments {
        /// File size.
        size: u64,
        /// Segment size.
        segment_size: u64,
        /// Resulting number of segments.
        segments: u64,
    },
}

/// The validated shape of a file: sizes, segments, blocks and tree widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    size: u64,
    segment_size: u64,
    k: u16,
    n: u16,
    num_segments: u64,
}

impl Geometry {
    /// Validates parameters. Every method below is then free of overflow.
    ///
    /// ```
    /// use segvault::core::geometry::{Geometry, SegmentIndex};
    /// let g = Geometry::new(300_000, 128 * 1024, 3, 10).unwrap();
    /// assert_eq!(g.num_segments(), 3);
    /// assert_eq!(g.segment_len(SegmentIndex(2)), 300_000 - 2 * 131_072);
    /// assert_eq!(g.block_size(SegmentIndex(0)), 43_691); // ceil(131072 / 3)
    /// ```
    pub fn new(size: u64, segment_size: u64, k: u16, n: u16) -> Result<Geometry, GeometryError> {
        if n == 0 || n > MAX_SHARES {
            return Err(GeometryError::NOutOfRange { n });
        }
        if k == 0 {
            return Err(GeometryError::ZeroK);
        }
        if k > n {
            return Err(GeometryError::KAboveN { k, n });
        }
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(GeometryError::SegmentSize { size: segment_size });
        }
        if size > MAX_FILE_SIZE {
            return Err(GeometryError::FileTooLarge { size });
        }
        let num_segments = size.div_ceil(segment_size);
        if num_segments > MAX_SEGMENTS {
            return Err(GeometryError::TooManySegments {
                size,
                segment_size,
                segments: num_segments,
            });
        }
        Ok(Geometry {
            size,
            segment_size,
            k,
            n,
            num_segments,
        })
    }

    /// The automatic segment size for a file of `size` bytes: 128 KiB, doubled while the file
    /// would have more than 2^16 segments, up to 16 MiB (so files up to 8 GiB keep 128 KiB
    /// segments and a 1 TiB file gets 16 MiB ones). Small segments keep small random reads
    /// cheap; the cap on the count keeps each hash tree under 2^17 nodes and each record's
    /// hash chain under 17 levels.
    pub fn choose_segment_size(size: u64) -> u64 {
        let mut segment_size = DEFAULT_SEGMENT_SIZE;
        while size.div_ceil(segment_size) > TARGET_MAX_SEGMENTS && segment_size < MAX_SEGMENT_SIZE {
            segment_size *= 2;
        }
        segment_size
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Nominal segment size (every segment but the tail has exactly this length).
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Shares needed to read.
    pub fn k(&self) -> u16 {
        self.k
    }

    /// Shares written.
    pub fn n(&self) -> u16 {
        self.n
    }

    /// Number of segments (0 for an empty file).
    pub fn num_segments(&self) -> u64 {
        self.num_segments
    }

    /// Whether `s` names a segment of this file.
    pub fn contains(&self, s: SegmentIndex) -> bool {
        s.0 < self.num_segments
    }

    /// First file byte of segment `s`.
    pub fn segment_start(&self, s: SegmentIndex) -> u64 {
        s.0.saturating_mul(self.segment_size).min(self.size)
    }

    /// Length of segment `s` (0 outside the file).
    pub fn segment_len(&self, s: SegmentIndex) -> u64 {
        let start = self.segment_start(s);
        (self.size - start).min(self.segment_size)
    }

    /// File bytes covered by segment `s`.
    pub fn segment_range(&self, s: SegmentIndex) -> Range<u64> {
        let start = self.segment_start(s);
        start..start + self.segment_len(s)
    }

    /// Size of each of the `n` blocks of segment `s`.
    pub fn block_size(&self, s: SegmentIndex) -> u64 {
        self.segment_len(s).div_ceil(u64::from(self.k))
    }

    /// Block size of every full segment.
    pub fn full_block_size(&self) -> u64 {
        self.segment_size.div_ceil(u64::from(self.k))
    }

    /// Segment `s` zero-padded to `k` blocks.
    pub fn padded_segment_len(&self, s: SegmentIndex) -> u64 {
        self.block_size(s) * u64::from(self.k)
    }

    /// The segment holding file byte `offset` (`offset < size`).
    pub fn segment_of(&self, offset: u64) -> SegmentIndex {
        SegmentIndex(offset / self.segment_size)
    }

    /// Segments that overlap file bytes `range` (clamped to the file).
    pub fn segments_overlapping(&self, range: Range<u64>) -> Range<u64> {
        let start = range.start.min(self.size);
        let end = range.end.min(self.size);
        if start >= end {
            return 0..0;
        }
        start / self.segment_size..(end - 1) / self.segment_size + 1
    }

    /// Bytes of segment `s` (offsets within the segment) that primary block `m` holds before
    /// padding; empty when the block is all padding.
    pub fn primary_span(&self, s: SegmentIndex, m: u16) -> Range<u64> {
        let block = self.block_size(s);
        let len = self.segment_len(s);
        let start = (u64::from(m) * block).min(len);
        start..(start + block).min(len)
    }

    /// Shape of the block trees and the ciphertext tree (one leaf per segment).
    pub fn segment_tree(&self) -> TreeShape {
        TreeShape::new(self.num_segments)
    }

    /// Shape of the share tree (one leaf per share).
    pub fn share_tree(&self) -> TreeShape {
        TreeShape::new(u64::from(self.n))
    }

    /// Total bytes of one share's blocks (excluding hashes).
    pub fn share_data_len(&self) -> u64 {
        if self.num_segments == 0 {
            return 0;
        }
        let tail = SegmentIndex(self.num_segments - 1);
        tail.0 * self.full_block_size() + self.block_size(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_segment_and_padding() {
        let g = Geometry::new(10, 4, 3, 5).unwrap();
        assert_eq!(g.num_segments(), 3);
        assert_eq!(g.segment_range(SegmentIndex(2)), 8..10);
        assert_eq!(g.block_size(SegmentIndex(0)), 2);
        assert_eq!(g.padded_segment_len(SegmentIndex(0)), 6);
        assert_eq!(g.block_size(SegmentIndex(2)), 1);
        assert_eq!(g.primary_span(SegmentIndex(2), 2), 2..2);
        assert_eq!(g.share_data_len(), 2 + 2 + 1);
    }

    #[test]
    fn empty_file_has_no_segments() {
        let g = Geometry::new(0, DEFAULT_SEGMENT_SIZE, 3, 10).unwrap();
        assert_eq!(g.num_segments(), 0);
        assert_eq!(g.segments_overlapping(0..10), 0..0);
        assert_eq!(g.share_data_len(), 0);
    }

    #[test]
    fn parameter_errors_are_specific() {
        assert_eq!(Geometry::new(1, 1, 0, 1), Err(GeometryError::ZeroK));
        assert_eq!(
            Geometry::new(1, 1, 4, 3),
            Err(GeometryError::KAboveN { k: 4, n: 3 })
        );
        assert_eq!(
            Geometry::new(1, 1, 1, 257),
            Err(GeometryError::NOutOfRange { n: 257 })
        );
        assert!(matches!(
            Geometry::new(1 << 40, 1, 1, 1),
            Err(GeometryError::TooManySegments { .. })
        ));
        assert!(Geometry::new(1, 1, 256, 256).is_ok());
    }

    #[test]
    fn segment_size_rule_keeps_the_count_moderate() {
        assert_eq!(Geometry::choose_segment_size(0), DEFAULT_SEGMENT_SIZE);
        assert_eq!(Geometry::choose_segment_size(8 << 30), DEFAULT_SEGMENT_SIZE);
        assert_eq!(Geometry::choose_segment_size((8 << 30) + 1), 256 << 10);
        assert_eq!(Geometry::choose_segment_size(1 << 40), 16 << 20);
        assert_eq!(
            Geometry::choose_segment_size(MAX_FILE_SIZE),
            MAX_SEGMENT_SIZE
        );
    }
}
