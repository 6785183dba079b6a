//! AES-256-CTR over the whole file as one keystream: counter block = byte offset / 16,
//! 128-bit big-endian, starting from zero. Any byte range can be encrypted or decrypted on
//! its own, which is what makes random access cheap.

use std::fmt;

use aes::Aes256;
use aes::cipher::{KeyInit, StreamCipher, StreamCipherSeek};
use ctr::cipher::{InnerIvInit, StreamCipherCoreWrapper};
use zeroize::{Zeroize, ZeroizeOnDrop};

type CtrCore = ctr::CtrCore<Aes256, ctr::flavors::Ctr128BE>;
type Aes256Ctr = StreamCipherCoreWrapper<CtrCore>;

/// Length of a file key.
pub const KEY_LEN: usize = 32;

/// A file's secret key. Zeroed on drop; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; KEY_LEN]);

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

impl FileKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> Result<FileKey, getrandom::Error> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)?;
        Ok(FileKey(key))
    }

    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> FileKey {
        FileKey(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The storage index this key names.
    pub fn storage_index(&self) -> [u8; 16] {
        super::hash::storage_index(&self.0)
    }
}

/// The expanded key, ready to encrypt or decrypt at any offset (cloning it and seeking
/// costs nanoseconds, far less than a key schedule).
#[derive(Clone)]
pub struct Keystream {
    aes: Aes256,
}

impl fmt::Debug for Keystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keystream(<redacted>)")
    }
}

impl Keystream {
    /// Expands `key`.
    pub fn new(key: &FileKey) -> Keystream {
        Keystream {
            aes: Aes256::new(key.as_bytes().into()),
        }
    }

    fn at(&self, offset: u64) -> Aes256Ctr {
        let core = CtrCore::inner_iv_init(self.aes.clone(), &[0u8; 16].into());
        let mut cipher = Aes256Ctr::from_core(core);
        // Offsets are bounded by the maximum file size, far below the 2^132-byte keystream.
        cipher.seek(offset);
        cipher
    }

    /// XORs the keystream for file bytes `offset..offset + buf.len()` into `buf`
    /// (encrypts plaintext, decrypts ciphertext).
    ///
    /// ```
    /// use segvault::core::cipher::{FileKey, Keystream};
    /// let ks = Keystream::new(&FileKey::from_bytes([9; 32]));
    /// let mut whole = *b"attack at dawn, or at dusk";
    /// ks.apply(0, &mut whole);
    /// let mut tail = whole[7..].to_vec();
    /// ks.apply(7, &mut tail);
    /// assert_eq!(&tail, b"at dawn, or at dusk");
    /// ```
    pub fn apply(&self, offset: u64, buf: &mut [u8]) {
        self.at(offset).apply_keystream(buf);
    }

    /// Like [`apply`](Self::apply) but reads `input` and writes `output` (same length).
    pub fn apply_into(&self, offset: u64, input: &[u8], output: &mut [u8]) {
        let len = input.len().min(output.len());
        let output = &mut output[..len];
        let result = self.at(offset).apply_keystream_b2b(&input[..len], output);
        debug_assert!(result.is_ok(), "buffers of equal length");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_decrypts_on_its_own() {
        let ks = Keystream::new(&FileKey::from_bytes([3; 32]));
        let plain: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut cipher = plain.clone();
        ks.apply(0, &mut cipher);
        assert_ne!(cipher, plain);
        for (start, end) in [(0, 1), (15, 17), (16, 32), (999, 1000), (5, 900)] {
            let mut piece = vec![0; end - start];
            ks.apply_into(start as u64, &cipher[start..end], &mut piece);
            assert_eq!(piece, &plain[start..end]);
        }
    }

    #[test]
    fn counter_is_offset_over_16_big_endian() {
        // Known-answer: AES-256 of counter block 1 gives keystream bytes 16..32.
        use aes::cipher::BlockEncrypt;
        let key = FileKey::from_bytes([0x42; 32]);
        let aes = Aes256::new(key.as_bytes().into());
        let mut block = [0u8; 16];
        block[15] = 1;
        let mut block = block.into();
        aes.encrypt_block(&mut block);
        let mut zeros = [0u8; 16];
        Keystream::new(&key).apply(16, &mut zeros);
        assert_eq!(zeros, block.as_slice());
    }
}
