//! The format of one disk-cache entry: a fixed header naming the block it holds, then its body:
//! the file's UEB followed by that share's whole record for the segment (block, every chain
//! level, the share chain), byte for byte as the share stores it.
//!
//! An entry carries its own proof: the UEB is checked against the cap's UEB hash, and the
//! record against the UEB's roots, so a cache outlives the process that filled it and a file
//! whose blocks are cached opens without asking any server. The header
//! binds the bytes to their key, so an entry copied or renamed to another key is refused
//! before any hashing. Nothing here is secret: the record is ciphertext and hashes of it.
//!
//! ```
//! use segvault::core::cache_entry::{BlockKey, encode_header, parse};
//! use segvault::core::{cap::StorageIndex, geometry::{SegmentIndex, ShareNum}};
//! let key = BlockKey { storage_index: StorageIndex([9; 16]), share: ShareNum(4), segment: SegmentIndex(70) };
//! let mut entry = encode_header(&key, 3).to_vec();
//! entry.extend_from_slice(b"abc");
//! assert_eq!(parse(&entry), Ok((key, &b"abc"[..])));
//! assert!(parse(&entry[..entry.len() - 1]).is_err());
//! ```

use std::fmt;

use super::cap::StorageIndex;
use super::geometry::{SegmentIndex, ShareNum};

/// First bytes of every entry (the format's version is its last byte).
pub const MAGIC: [u8; 8] = *b"SVCACHE2";
/// Length of the header before the record.
pub const HEADER_LEN: usize = MAGIC.len() + 16 + 1 + 8 + 4;

/// What an entry holds: one share's block of one segment of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The file.
    pub storage_index: StorageIndex,
    /// The share the block belongs to.
    pub share: ShareNum,
    /// The segment.
    pub segment: SegmentIndex,
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}-{}",
            self.storage_index, self.share, self.segment.0
        )
    }
}

/// Why bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Shorter than a header.
    #[error("entry truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a segvault cache entry of this version.
    #[error("not a cache entry of this version")]
    BadMagic,
    /// The header's record length disagrees with the bytes.
    #[error("entry holds {have} record bytes, header says {said}")]
    WrongLength {
        /// Bytes after the header.
        have: usize,
        /// What the header says.
        said: u32,
    },
}

/// The header of an entry for `key` with a record of `record_len` bytes.
pub fn encode_header(key: &BlockKey, record_len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    let (magic, rest) = header.split_at_mut(MAGIC.len());
    magic.copy_from_slice(&MAGIC);
    let (si, rest) = rest.split_at_mut(16);
    si.copy_from_slice(&key.storage_index.0);
    let (share, rest) = rest.split_at_mut(1);
    share[0] = key.share.0;
    let (segment, len) = rest.split_at_mut(8);
    segment.copy_from_slice(&key.segment.0.to_le_bytes());
    len.copy_from_slice(&record_len.to_le_bytes());
    header
}

/// The key and body length a header names (`bytes` at least [`HEADER_LEN`] long; only the
/// header is read).
pub fn parse_header(bytes: &[u8]) -> Result<(BlockKey, u32), EntryError> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or(EntryError::Truncated(bytes.len()))?;
    let (magic, rest) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(EntryError::BadMagic);
    }
    let (si, rest) = rest.split_at(16);
    let (share, rest) = rest.split_at(1);
    let (segment, len) = rest.split_at(8);
    let mut si_bytes = [0u8; 16];
    si_bytes.copy_from_slice(si);
    let mut segment_bytes = [0u8; 8];
    segment_bytes.copy_from_slice(segment);
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(len);
    let key = BlockKey {
        storage_index: StorageIndex(si_bytes),
        share: ShareNum(share[0]),
        segment: SegmentIndex(u64::from_le_bytes(segment_bytes)),
    };
    Ok((key, u32::from_le_bytes(len_bytes)))
}

/// Splits an entry into the key its header names and its body.
pub fn parse(bytes: &[u8]) -> Result<(BlockKey, &[u8]), EntryError> {
    let (key, said) = parse_header(bytes)?;
    let record = &bytes[HEADER_LEN..];
    if record.len() as u64 != u64::from(said) {
        return Err(EntryError::WrongLength {
            have: record.len(),
            said,
        });
    }
    Ok((key, record))
}

/// The entry's file name inside its file's directory (`<share>-<segment>`), and back.
pub fn file_name(share: ShareNum, segment: SegmentIndex) -> String {
    format!("{}-{}", share.0, segment.0)
}

/// Parses a [`file_name`]; only the canonical form (no sign, no leading zeros) is accepted,
/// so one key has one name.
pub fn parse_file_name(name: &str) -> Option<(ShareNum, SegmentIndex)> {
    let (share, segment) = name.split_once('-')?;
    let canonical = |t: &str| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0'))
    };
    if !canonical(share) || !canonical(segment) {
        return None;
    }
    Some((
        ShareNum(share.parse().ok()?),
        SegmentIndex(segment.parse().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(si in any::<[u8; 16]>(), share in any::<u8>(), segment in any::<u64>(), record in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = BlockKey { storage_index: StorageIndex(si), share: ShareNum(share), segment: SegmentIndex(segment) };
            let mut entry = encode_header(&key, record.len() as u32).to_vec();
            entry.extend_from_slice(&record);
            prop_assert_eq!(parse(&entry), Ok((key, &record[..])));
            prop_assert_eq!(parse_file_name(&file_name(key.share, key.segment)), Some((key.share, key.segment)));
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..120), name in ".{0,30}") {
            crate::fuzzing::cache_entry(&bytes);
            crate::fuzzing::cache_file_name(name.as_bytes());
        }
    }

    #[test]
    fn file_names_are_canonical() {
        assert_eq!(
            parse_file_name("3-17"),
            Some((ShareNum(3), SegmentIndex(17)))
        );
        for bad in [
            "03-17",
            "3-017",
            "+3-1",
            "3-",
            "-1",
            "256-1",
            "3-1-2",
            "3_1",
            "",
            "3-18446744073709551616",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
