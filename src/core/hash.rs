//! BLAKE3 with one derive-key context per use, so a hash made for one purpose can never be
//! passed off as a hash for another (a block leaf as a tree node, a UEB as a leaf, …).
//!
//! Each context key is computed once; every hash then starts from it
//! (`blake3::hazmat::HasherExt::new_from_context_key`), which is exactly BLAKE3's
//! `derive_key` mode without re-hashing the context string on the hot path.

use std::fmt;
use std::sync::LazyLock;

use blake3::hazmat::{ContextKey, HasherExt, hash_derive_key_context};

/// Length of every hash in the format.
pub const HASH_LEN: usize = 32;

/// A 32-byte BLAKE3 output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Reads a hash from exactly 32 bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        bytes.try_into().ok().map(Hash)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The derive-key contexts, one per use. Changing any of them changes the format version.
pub mod contexts {
    /// Leaf of a block hash tree: one erasure-coded block.
    pub const BLOCK_LEAF: &str = "segvault 2026-11-23 block leaf v1";
    /// Leaf of the ciphertext hash tree: the leaves of a segment's k data blocks.
    pub const CIPHERTEXT_LEAF: &str = "segvault 2026-11-23 ciphertext segment leaf v1";
    /// Interior node of any Merkle tree: left child ‖ right child.
    pub const NODE: &str = "segvault 2026-11-23 merkle node v1";
    /// Padding leaf of any Merkle tree (positions past the last real leaf).
    pub const EMPTY_LEAF: &str = "segvault 2026-11-23 merkle empty leaf v1";
    /// The URI extension block, whose hash the caps carry.
    pub const UEB: &str = "segvault 2026-11-23 uri extension block v1";
    /// Storage index from the file key.
    pub const STORAGE_INDEX: &str = "segvault 2026-11-23 storage index from key v1";
    /// Placement of shares on servers (not a secret; spreads load).
    pub const PLACEMENT: &str = "segvault 2026-11-23 server permutation v1";
}

struct Keys {
    block_leaf: ContextKey,
    ciphertext_leaf: ContextKey,
    node: ContextKey,
    ueb: ContextKey,
    storage_index: ContextKey,
    placement: ContextKey,
    empty_leaf: Hash,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    block_leaf: hash_derive_key_context(contexts::BLOCK_LEAF),
    ciphertext_leaf: hash_derive_key_context(contexts::CIPHERTEXT_LEAF),
    node: hash_derive_key_context(contexts::NODE),
    ueb: hash_derive_key_context(contexts::UEB),
    storage_index: hash_derive_key_context(contexts::STORAGE_INDEX),
    placement: hash_derive_key_context(contexts::PLACEMENT),
    empty_leaf: Hash(blake3::derive_key(contexts::EMPTY_LEAF, b"")),
});

fn hasher(key: &ContextKey) -> blake3::Hasher {
    blake3::Hasher::new_from_context_key(key)
}

fn finish(hasher: &blake3::Hasher) -> Hash {
    Hash(*hasher.finalize().as_bytes())
}

/// Leaf hash of one erasure-coded block (primary or parity).
pub fn block_leaf(block: &[u8]) -> Hash {
    finish(hasher(&KEYS.block_leaf).update(block))
}

/// Leaf hash of a segment in the ciphertext tree.
///
/// It commits to the segment's k *data* blocks (the zero-padded ciphertext cut in k) through
/// their block-leaf hashes, so a reader that already hashed the primary blocks gets it for
/// the price of hashing `k * 32` bytes.
pub fn ciphertext_leaf(data_block_leaves: &[Hash]) -> Hash {
    let mut h = hasher(&KEYS.ciphertext_leaf);
    for leaf in data_block_leaves {
        h.update(&leaf.0);
    }
    finish(&h)
}

/// Interior Merkle node from its two children.
pub fn node(left: &Hash, right: &Hash) -> Hash {
    finish(hasher(&KEYS.node).update(&left.0).update(&right.0))
}

/// The padding leaf used past the last real leaf of every tree.
pub fn empty_leaf() -> Hash {
    KEYS.empty_leaf
}

/// Hash of an encoded UEB; the caps carry it.
pub fn ueb(encoded: &[u8]) -> Hash {
    finish(hasher(&KEYS.ueb).update(encoded))
}

/// 16-byte storage index derived from the 32-byte file key.
pub fn storage_index(key: &[u8; 32]) -> [u8; 16] {
    let full = finish(hasher(&KEYS.storage_index).update(key));
    let mut si = [0u8; 16];
    si.copy_from_slice(&full.0[..16]);
    si
}

/// Rank of a server for a storage index: servers are sorted by it to place shares.
pub fn placement_rank(storage_index: &[u8; 16], server_name: &str) -> Hash {
    finish(
        hasher(&KEYS.placement)
            .update(storage_index)
            .update(server_name.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_gives_a_different_hash_for_the_same_input() {
        let data = [7u8; 64];
        let left = Hash(data[..32].try_into().unwrap());
        let right = Hash(data[32..].try_into().unwrap());
        let all = [
            block_leaf(&data),
            ciphertext_leaf(&[left, right]),
            node(&left, &right),
            ueb(&data),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn cached_context_keys_match_plain_derive_key() {
        assert_eq!(
            block_leaf(b"abc").0,
            blake3::derive_key(contexts::BLOCK_LEAF, b"abc")
        );
        assert_eq!(ueb(b"").0, blake3::derive_key(contexts::UEB, b""));
    }
}
