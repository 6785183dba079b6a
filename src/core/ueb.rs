//! The URI extension block (UEB): the file's parameters and hash-tree roots, fixed-length and
//! canonical. Its hash is in every cap, which makes it the root of trust for everything a
//! server sends.

use super::codec::{Codec, DecodeError, Reader};
use super::geometry::Geometry;
use super::hash::{self, HASH_LEN, Hash};

/// Magic bytes at the start of a UEB.
pub const UEB_MAGIC: &[u8; 4] = b"SVUB";
/// The only UEB version this build reads and writes.
pub const UEB_VERSION: u16 = 1;
/// Encoded length of a version-1 UEB.
pub const UEB_LEN: usize = 4 + 2 + 4 + 2 + 2 + 4 + 8 + HASH_LEN + HASH_LEN;

/// Cipher identifier: AES-256-CTR, counter = byte offset / 16 (128-bit big-endian).
pub const CIPHER_AES256_CTR: u8 = 1;
/// Code identifier: `reed-solomon-erasure` systematic Vandermonde code over GF(2^8), 0x11d.
pub const CODE_RS_VANDERMONDE_GF256: u8 = 1;
/// Hash identifier: BLAKE3 with the version-1 derive-key contexts.
pub const HASHES_BLAKE3_V1: u8 = 1;

/// A decoded, validated UEB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ueb {
    /// File parameters and sizes.
    pub geometry: Geometry,
    /// Root of the share hash tree (leaf i = root of share i's block tree).
    pub share_root: Hash,
    /// Root of the ciphertext hash tree (one leaf per segment).
    pub ciphertext_root: Hash,
}

impl Ueb {
    /// The hash a cap carries for this UEB.
    pub fn hash(&self) -> Hash {
        hash::ueb(&self.to_bytes())
    }
}

impl Codec for Ueb {
    const NAME: &'static str = "UEB";

    fn encode(&self, out: &mut Vec<u8>) {
        let g = &self.geometry;
        out.extend_from_slice(UEB_MAGIC);
        out.extend_from_slice(&UEB_VERSION.to_be_bytes());
        out.extend_from_slice(&[
            CIPHER_AES256_CTR,
            CODE_RS_VANDERMONDE_GF256,
            HASHES_BLAKE3_V1,
            0,
        ]);
        out.extend_from_slice(&g.k().to_be_bytes());
        out.extend_from_slice(&g.n().to_be_bytes());
        // The segment size is at most 16 MiB, so it fits the u32 field.
        out.extend_from_slice(&(g.segment_size() as u32).to_be_bytes());
        out.extend_from_slice(&g.size().to_be_bytes());
        out.extend_from_slice(&self.share_root.0);
        out.extend_from_slice(&self.ciphertext_root.0);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Ueb, DecodeError> {
        r.expect(UEB_MAGIC, "UEB magic")?;
        let at = r.position();
        let version = r.u16("UEB version")?;
        if version != UEB_VERSION {
            return Err(r.invalid(
                "UEB version",
                at,
                format!("version {version} is not supported (this build reads {UEB_VERSION})"),
            ));
        }
        for (what, expected) in [
            ("UEB cipher", CIPHER_AES256_CTR),
            ("UEB erasure code", CODE_RS_VANDERMONDE_GF256),
            ("UEB hash suite", HASHES_BLAKE3_V1),
            ("UEB reserved byte", 0),
        ] {
            let at = r.position();
            let found = r.u8(what)?;
            if found != expected {
                return Err(r.invalid(what, at, format!("unknown value {found}")));
            }
        }
        let at = r.position();
        let k = r.u16("UEB k")?;
        let n = r.u16("UEB n")?;
        let segment_size = r.u32("UEB segment size")?;
        let size = r.u64("UEB file size")?;
        let geometry = Geometry::new(size, u64::from(segment_size), k, n)
            .map_err(|e| r.invalid("UEB parameters", at, e.to_string()))?;
        let share_root = Hash(r.array("UEB share root")?);
        let ciphertext_root = Hash(r.array("UEB ciphertext root")?);
        Ok(Ueb {
            geometry,
            share_root,
            ciphertext_root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ueb {
        Ueb {
            geometry: Geometry::new(1_000_000, 131_072, 3, 10).unwrap(),
            share_root: hash::block_leaf(b"s"),
            ciphertext_root: hash::block_leaf(b"c"),
        }
    }

    #[test]
    fn round_trips_at_its_fixed_length() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len(), UEB_LEN);
        assert_eq!(Ueb::from_bytes(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_field_is_validated() {
        let good = sample().to_bytes();
        for (offset, value) in [(0, b'X'), (5, 2), (6, 9), (7, 9), (8, 9), (9, 1), (11, 0)] {
            let mut bad = good.clone();
            bad[offset] = value;
            assert!(Ueb::from_bytes(&bad).is_err(), "byte {offset} = {value}");
        }
        assert!(Ueb::from_bytes(&good[..UEB_LEN - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Ueb::from_bytes(&long),
            Err(DecodeError::Trailing { .. })
        ));
    }
}
