//! The fixed 64-byte header at the start of every share. It makes a share file
//! self-describing; a reader checks it against the cap but never takes an offset from it.

use super::cap::StorageIndex;
use super::codec::{Codec, DecodeError, Reader};
use super::geometry::{Geometry, ShareNum};
use super::layout::HEADER_LEN;
use super::ueb::UEB_LEN;

/// Magic bytes at the start of a share.
pub const SHARE_MAGIC: &[u8; 4] = b"SVSH";
/// The only share layout version this build reads and writes.
pub const LAYOUT_VERSION: u16 = 1;
const RESERVED_LEN: usize = 20;

/// A decoded, validated share header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareHeader {
    /// Which share this is.
    pub share: ShareNum,
    /// File parameters (must equal the cap's).
    pub geometry: Geometry,
    /// The file's storage index.
    pub storage_index: StorageIndex,
}

impl Codec for ShareHeader {
    const NAME: &'static str = "share header";

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let g = &self.geometry;
        out.extend_from_slice(SHARE_MAGIC);
        out.extend_from_slice(&LAYOUT_VERSION.to_be_bytes());
        out.push(self.share.0);
        out.push(0);
        out.extend_from_slice(&g.k().to_be_bytes());
        out.extend_from_slice(&g.n().to_be_bytes());
        out.extend_from_slice(&(g.segment_size() as u32).to_be_bytes());
        out.extend_from_slice(&g.size().to_be_bytes());
        out.extend_from_slice(&self.storage_index.0);
        out.extend_from_slice(&(UEB_LEN as u32).to_be_bytes());
        out.extend_from_slice(&[0; RESERVED_LEN]);
        debug_assert_eq!(out.len() - start, HEADER_LEN as usize);
    }

    fn decode(r: &mut Reader<'_>) -> Result<ShareHeader, DecodeError> {
        r.expect(SHARE_MAGIC, "share magic (not a segvault share)")?;
        let at = r.position();
        let version = r.u16("share layout version")?;
        if version != LAYOUT_VERSION {
            return Err(r.invalid(
                "share layout version",
                at,
                format!("version {version} is not supported (this build reads {LAYOUT_VERSION})"),
            ));
        }
        let share = ShareNum(r.u8("share number")?);
        let at = r.position();
        if r.u8("share header reserved byte")? != 0 {
            return Err(r.invalid("share header reserved byte", at, "must be zero"));
        }
        let at = r.position();
        let k = r.u16("share k")?;
        let n = r.u16("share n")?;
        let segment_size = r.u32("share segment size")?;
        let size = r.u64("share file size")?;
        let geometry = Geometry::new(size, u64::from(segment_size), k, n)
            .map_err(|e| r.invalid("share parameters", at, e.to_string()))?;
        if u16::from(share.0) >= n {
            return Err(r.invalid(
                "share number",
                6,
                format!("share {share} is not below n={n}"),
            ));
        }
        let storage_index = StorageIndex(r.array("share storage index")?);
        let at = r.position();
        let ueb_len = r.u32("share UEB length")?;
        if ueb_len as usize != UEB_LEN {
            return Err(r.invalid(
                "share UEB length",
                at,
                format!("{ueb_len} is not {UEB_LEN}"),
            ));
        }
        let at = r.position();
        if r.take(RESERVED_LEN, "share header reserved bytes")?
            .iter()
            .any(|&b| b != 0)
        {
            return Err(r.invalid("share header reserved bytes", at, "must be zero"));
        }
        Ok(ShareHeader {
            share,
            geometry,
            storage_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_64_bytes() {
        let h = ShareHeader {
            share: ShareNum(9),
            geometry: Geometry::new(12345, 4096, 3, 10).unwrap(),
            storage_index: StorageIndex([7; 16]),
        };
        let bytes = h.to_bytes();
        assert_eq!(bytes.len() as u64, HEADER_LEN);
        assert_eq!(ShareHeader::from_bytes(&bytes).unwrap(), h);
    }

    #[test]
    fn share_number_must_be_below_n() {
        let h = ShareHeader {
            share: ShareNum(2),
            geometry: Geometry::new(1, 1, 1, 3).unwrap(),
            storage_index: StorageIndex([0; 16]),
        };
        let mut bytes = h.to_bytes();
        bytes[6] = 3;
        assert!(ShareHeader::from_bytes(&bytes).is_err());
    }
}
