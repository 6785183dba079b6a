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
        let mut out = recycled_buffer(within.len());
        self.decrypt_into(within, segment_start, keystream, &mut out);
        plaintext_bytes(out)
    }
}

/// Plaintext buffers given back (wiped) for the next segment: a fresh 128 KiB buffer costs a
/// zeroing pass and page faults, and buffers freed and allocated by the thousand fragment the
/// heap (a gateway that had served 1,000 stalled clients kept their peak after they left).
static RECYCLED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Most buffers kept for reuse (32 × 128 KiB = 4 MiB at the default segment size).
const RECYCLED_BUFFERS: usize = 32;

/// Buffers this size or more (up to `MAX`) are worth keeping; smaller ones are cheap to make.
const RECYCLED_MIN: usize = 32 << 10;
const RECYCLED_MAX: usize = 4 << 20;

fn lock_recycled() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    RECYCLED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A zeroed buffer of `len` bytes, recycled when one large enough is kept.
fn recycled_buffer(len: usize) -> Vec<u8> {
    if (RECYCLED_MIN..=RECYCLED_MAX).contains(&len) {
        let mut kept = lock_recycled();
        // Not much larger than asked: memory counted for a chunk is what it holds.
        if let Some(i) = kept
            .iter()
            .rposition(|b| (len..=len.saturating_mul(2)).contains(&b.capacity()))
        {
            let mut buffer = kept.swap_remove(i);
            drop(kept);
            // Wiped when given back: only a longer length writes zeros, past the old one.
            buffer.resize(len, 0);
            return buffer;
        }
    }
    vec![0u8; len]
}

fn give_back(buffer: Vec<u8>) {
    if (RECYCLED_MIN..=RECYCLED_MAX).contains(&buffer.capacity()) {
        let mut kept = lock_recycled();
        if kept.len() < RECYCLED_BUFFERS {
            kept.push(buffer);
        }
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
        give_back(std::mem::take(&mut self.0));
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

    #[test]
    fn recycled_plaintext_buffers_are_wiped_and_decrypt_exactly() {
        let keystream = Keystream::new(&crate::core::cipher::FileKey::from_bytes([7u8; 32]));
        let block =
            |seed: u8| Bytes::from((0..50_000).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>());
        let seg = SegmentData::new(vec![block(1), block(2), block(3)], 140_000);
        let expect = |within: Range<usize>| {
            let mut plain: Vec<u8> = seg
                .ciphertext(within.clone())
                .flat_map(|b| b.to_vec())
                .collect();
            keystream.apply(1_000 + within.start as u64, &mut plain);
            plain
        };
        for within in [
            0..140_000,
            10..100_000,
            40_000..140_000,
            0..140_000,
            99..40_099,
        ] {
            let plain = seg.decrypt(within.clone(), 1_000, &keystream);
            assert_eq!(&plain[..], &expect(within)[..]);
            drop(plain);
            assert!(
                lock_recycled().iter().all(|b| b.iter().all(|&x| x == 0)),
                "a kept buffer holds plaintext"
            );
        }
        assert!(lock_recycled().len() <= RECYCLED_BUFFERS);
    }
}
