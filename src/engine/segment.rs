//! A decoded, verified segment: its k data blocks (for primary shares, the very buffers the
//! store returned) and its unpadded length.

use std::ops::Range;

use bytes::Bytes;

use crate::core::cipher::Keystream;

/// The verified ciphertext of one segment.
#[derive(Debug)]
pub struct SegmentData {
    blocks: Vec<Bytes>,
    block_size: usize,
    len: usize,
}

impl SegmentData {
    pub(crate) fn new(blocks: Vec<Bytes>, len: usize) -> SegmentData {
        let block_size = blocks.first().map_or(0, Bytes::len);
        SegmentData {
            blocks,
            block_size,
            len,
        }
    }

    /// Unpadded length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty (never, for a real segment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces of ciphertext covering `within` (offsets inside the segment), in order.
    pub fn ciphertext(&self, within: Range<usize>) -> impl Iterator<Item = Bytes> + '_ {
        let within = within.start.min(self.len)..within.end.min(self.len);
        let size = self.block_size.max(1);
        let first = within.start / size;
        self.blocks
            .iter()
            .enumerate()
            .skip(first)
            .map_while(move |(m, block)| {
                let block_start = m * size;
                if block_start >= within.end {
                    return None;
                }
                let from = within.start.max(block_start) - block_start;
                let to = within.end.min(block_start + size) - block_start;
                Some(block.slice(from..to))
            })
    }

    /// Decrypts `within` into `out` (`out.len() == within.len()`); `segment_start` is the
    /// file offset of the segment's first byte.
    pub fn decrypt_into(
        &self,
        within: Range<usize>,
        segment_start: u64,
        keystream: &Keystream,
        out: &mut [u8],
    ) {
        let mut offset = within.start;
        let mut written = 0;
        for piece in self.ciphertext(within) {
            let n = piece.len();
            keystream.apply_into(
                segment_start + offset as u64,
                &piece,
                &mut out[written..written + n],
            );
            written += n;
            offset += n;
        }
    }
}

impl SegmentData {
    /// Decrypts `within` (offsets inside the segment) into a new buffer.
    ///
    /// (Decrypting in place in the store's buffers when a reader holds the only reference
    /// was measured: it yields one piece per block, and the extra pieces cost more downstream
    /// than the saved copy: 3-7 % slower end to end.)
    pub fn decrypt(
        &self,
        within: Range<usize>,
        segment_start: u64,
        keystream: &Keystream,
    ) -> Bytes {
        let within = within.start.min(self.len)..within.end.min(self.len);
        let mut out = vec![0u8; within.len()];
        self.decrypt_into(within, segment_start, keystream, &mut out);
        plaintext_bytes(out)
    }
}

/// Plaintext handed out as `Bytes`: zeroed in memory when the last reference to it goes, so
/// it does not linger in freed heap.
pub(crate) fn plaintext_bytes(plaintext: Vec<u8>) -> Bytes {
    Bytes::from_owner(WipedOnDrop(plaintext))
}

/// A buffer wiped when dropped. `zeroize` writes byte by byte through volatile stores (about
/// a byte per cycle: 16 % of a full GET's throughput at 128 KiB per segment); a plain fill
/// runs at memory speed, and `black_box` keeps the compiler from dropping it as a dead store.
struct WipedOnDrop(Vec<u8>);

impl AsRef<[u8]> for WipedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_exactly_the_range_and_skip_padding() {
        let seg = SegmentData::new(
            vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b"def"),
                Bytes::from_static(b"g\0\0"),
            ],
            7,
        );
        let text = |r: Range<usize>| {
            seg.ciphertext(r)
                .flat_map(|b| b.to_vec())
                .collect::<Vec<u8>>()
        };
        assert_eq!(text(0..7), b"abcdefg");
        assert_eq!(text(2..4), b"cd");
        assert_eq!(text(3..6), b"def");
        assert_eq!(text(6..9), b"g");
        assert_eq!(text(5..5), b"");
    }
}
