//! Capabilities: the strings that name a file.
//!
//! * A **read cap** holds the key, so whoever has it can read the file:
//!   `sv1-read:<key>:<ueb-hash>:<k>:<n>:<segment-size>:<size>`.
//! * A **verify cap** holds the storage index instead of the key: it can locate and check
//!   every share but cannot decrypt: `sv1-verify:<storage-index>:<ueb-hash>:<k>:<n>:<segment-size>:<size>`.
//!
//! Binary fields are RFC 4648 base32, lowercase, unpadded; numbers are decimal without
//! leading zeros. Each cap has exactly one spelling, and parsing accepts only that spelling.
//! The parameters in the cap let a reader compute every offset in a share before it has
//! seen one, so a cold read of any segment costs one round trip per share.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};

use super::cipher::FileKey;
use super::codec::{DecodeError, Reader};
use super::geometry::{Geometry, GeometryError};
use super::hash::Hash;

/// Prefix of a read cap.
pub const READ_CAP_PREFIX: &str = "sv1-read";
/// Prefix of a verify cap.
pub const VERIFY_CAP_PREFIX: &str = "sv1-verify";

static BASE32: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    spec.encoding()
        .unwrap_or_else(|e| unreachable!("valid base32 specification: {e}"))
});

/// Lowercase unpadded base32 (the alphabet of caps and share paths).
pub fn base32_encode(bytes: &[u8]) -> String {
    BASE32.encode(bytes)
}

/// Decodes [`base32_encode`]'s form of exactly `N` bytes.
pub fn base32_decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != BASE32.encode_len(N) {
        return None;
    }
    BASE32.decode(text).ok()?.try_into().ok()
}

/// Names the shares of one file on every server. Derived from the key; not a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageIndex(pub [u8; 16]);

impl StorageIndex {
    /// Text length of a storage index.
    pub const TEXT_LEN: usize = 26;

    /// The base32 form used in paths and logs.
    pub fn to_base32(&self) -> String {
        base32_encode(&self.0)
    }

    /// Parses the base32 form.
    pub fn from_base32(text: &str) -> Option<StorageIndex> {
        base32_decode::<16>(text.as_bytes()).map(StorageIndex)
    }
}

impl fmt::Display for StorageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base32())
    }
}

impl fmt::Debug for StorageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageIndex({self})")
    }
}

/// Why a string is not a valid cap. Never quotes the cap (it may hold a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The string does not start with a known prefix.
    #[error(
        "not a segvault cap: it must start with \"{READ_CAP_PREFIX}:\" or \"{VERIFY_CAP_PREFIX}:\""
    )]
    UnknownPrefix,
    /// A field is missing or malformed.
    #[error("malformed {kind} cap: {field}: {reason}")]
    Field {
        /// "read" or "verify".
        kind: &'static str,
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The numbers do not describe a valid file.
    #[error("invalid {kind} cap: {source}")]
    Parameters {
        /// "read" or "verify".
        kind: &'static str,
        /// The parameter problem.
        source: GeometryError,
    },
    /// A read cap was needed but a verify cap was given.
    #[error("this is a verify cap: it can check shares but not decrypt; a read cap is needed")]
    NotReadCap,
}

/// A capability to read (and verify) one file.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadCap {
    key: FileKey,
    ueb_hash: Hash,
    geometry: Geometry,
}

/// A capability to locate and verify the shares of one file, without the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyCap {
    storage_index: StorageIndex,
    ueb_hash: Hash,
    geometry: Geometry,
}

/// Either kind of cap.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Cap {
    /// Can read.
    Read(ReadCap),
    /// Can only verify.
    Verify(VerifyCap),
}

impl fmt::Debug for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadCap")
            .field("storage_index", &self.storage_index())
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for VerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyCap({self})")
    }
}

impl ReadCap {
    /// Builds a cap from its parts.
    pub fn new(key: FileKey, ueb_hash: Hash, geometry: Geometry) -> ReadCap {
        ReadCap {
            key,
            ueb_hash,
            geometry,
        }
    }

    /// The file key.
    pub fn key(&self) -> &FileKey {
        &self.key
    }

    /// Hash of the file's UEB.
    pub fn ueb_hash(&self) -> Hash {
        self.ueb_hash
    }

    /// File parameters.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The storage index (derived from the key).
    pub fn storage_index(&self) -> StorageIndex {
        StorageIndex(self.key.storage_index())
    }

    /// The verify cap for the same file.
    pub fn verify_cap(&self) -> VerifyCap {
        VerifyCap {
            storage_index: self.storage_index(),
            ueb_hash: self.ueb_hash,
            geometry: self.geometry,
        }
    }

    /// The cap's text. It is a secret: show it to its owner, never log it.
    ///
    /// ```
    /// use segvault::core::cap::ReadCap;
    /// let text = format!("sv1-read:{}:{}:3:10:131072:5", "a".repeat(52), "a".repeat(52));
    /// let cap: ReadCap = text.parse().unwrap();
    /// assert_eq!(cap.geometry().size(), 5);
    /// assert_eq!(*cap.to_secret_string(), text);
    /// ```
    ///
    /// The text is wiped from memory when dropped.
    pub fn to_secret_string(&self) -> zeroize::Zeroizing<String> {
        let key = zeroize::Zeroizing::new(base32_encode(self.key.as_bytes()));
        let params = params_text(&self.ueb_hash, &self.geometry);
        // Built at its final size, so no copy of the key is left in a freed buffer.
        let mut text = zeroize::Zeroizing::new(String::with_capacity(
            READ_CAP_PREFIX.len() + 2 + key.len() + params.len(),
        ));
        text.push_str(READ_CAP_PREFIX);
        text.push(':');
        text.push_str(&key);
        text.push(':');
        text.push_str(&params);
        text
    }
}

impl VerifyCap {
    /// Builds a verify cap from its parts.
    pub fn new(storage_index: StorageIndex, ueb_hash: Hash, geometry: Geometry) -> VerifyCap {
        VerifyCap {
            storage_index,
            ueb_hash,
            geometry,
        }
    }

    /// The storage index.
    pub fn storage_index(&self) -> StorageIndex {
        self.storage_index
    }

    /// Hash of the file's UEB.
    pub fn ueb_hash(&self) -> Hash {
        self.ueb_hash
    }

    /// File parameters.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
}

impl Cap {
    /// The verify cap of either kind.
    pub fn verify_cap(&self) -> VerifyCap {
        match self {
            Cap::Read(cap) => cap.verify_cap(),
            Cap::Verify(cap) => *cap,
        }
    }
}

fn params_text(ueb_hash: &Hash, g: &Geometry) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        base32_encode(&ueb_hash.0),
        g.k(),
        g.n(),
        g.segment_size(),
        g.size()
    )
}

impl fmt::Display for VerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERIFY_CAP_PREFIX}:{}:{}",
            self.storage_index,
            params_text(&self.ueb_hash, &self.geometry)
        )
    }
}

fn field_error(kind: &'static str, e: DecodeError) -> CapError {
    let (field, reason) = match e {
        DecodeError::Truncated { what, .. } => (
            what,
            "missing (a cap has 7 fields separated by ':')".to_owned(),
        ),
        DecodeError::Invalid { what, reason, .. } => (what, reason),
        DecodeError::Trailing { what, count } => (what, format!("{count} extra characters")),
    };
    CapError::Field {
        kind,
        field,
        reason,
    }
}

fn decimal<T: TryFrom<u64>>(
    r: &mut Reader<'_>,
    last: bool,
    what: &'static str,
) -> Result<T, DecodeError> {
    let at = r.position();
    let text = if last { r.rest() } else { r.until(b':', what)? };
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.iter().all(u8::is_ascii_digit)
        && (text == b"0" || text[0] != b'0');
    let value = canonical
        .then(|| std::str::from_utf8(text).ok()?.parse::<u64>().ok())
        .flatten()
        .and_then(|v| T::try_from(v).ok());
    value.ok_or_else(|| {
        r.invalid(
            what,
            at,
            "must be a decimal number without leading zeros, in range",
        )
    })
}

fn binary<const N: usize>(r: &mut Reader<'_>, what: &'static str) -> Result<[u8; N], DecodeError> {
    let at = r.position();
    let text = r.until(b':', what)?;
    base32_decode::<N>(text).ok_or_else(|| {
        r.invalid(
            what,
            at,
            format!(
                "must be {} lowercase base32 characters (a-z, 2-7), found {}",
                BASE32.encode_len(N),
                text.len()
            ),
        )
    })
}

struct Parsed<const N: usize> {
    id: [u8; N],
    ueb_hash: Hash,
    geometry: Geometry,
}

fn parse_body<const N: usize>(
    r: &mut Reader<'_>,
    kind: &'static str,
    id_name: &'static str,
) -> Result<Parsed<N>, CapError> {
    let fields = (|| {
        let id = binary::<N>(r, id_name)?;
        let ueb_hash = Hash(binary::<32>(r, "UEB hash")?);
        let k = decimal::<u16>(r, false, "k")?;
        let n = decimal::<u16>(r, false, "n")?;
        let segment_size = decimal::<u64>(r, false, "segment size")?;
        let size = decimal::<u64>(r, true, "file size")?;
        Ok((id, ueb_hash, k, n, segment_size, size))
    })()
    .map_err(|e| field_error(kind, e))?;
    let (id, ueb_hash, k, n, segment_size, size) = fields;
    let geometry = Geometry::new(size, segment_size, k, n)
        .map_err(|source| CapError::Parameters { kind, source })?;
    Ok(Parsed {
        id,
        ueb_hash,
        geometry,
    })
}

impl FromStr for Cap {
    type Err = CapError;

    fn from_str(text: &str) -> Result<Cap, CapError> {
        let mut r = Reader::new(text.as_bytes());
        let prefix = r
            .until(b':', "prefix")
            .map_err(|_| CapError::UnknownPrefix)?;
        if prefix == READ_CAP_PREFIX.as_bytes() {
            let p = parse_body::<32>(&mut r, "read", "key")?;
            Ok(Cap::Read(ReadCap::new(
                FileKey::from_bytes(p.id),
                p.ueb_hash,
                p.geometry,
            )))
        } else if prefix == VERIFY_CAP_PREFIX.as_bytes() {
            let p = parse_body::<16>(&mut r, "verify", "storage index")?;
            Ok(Cap::Verify(VerifyCap::new(
                StorageIndex(p.id),
                p.ueb_hash,
                p.geometry,
            )))
        } else {
            Err(CapError::UnknownPrefix)
        }
    }
}

impl FromStr for ReadCap {
    type Err = CapError;

    fn from_str(text: &str) -> Result<ReadCap, CapError> {
        match text.parse::<Cap>()? {
            Cap::Read(cap) => Ok(cap),
            Cap::Verify(_) => Err(CapError::NotReadCap),
        }
    }
}

impl FromStr for VerifyCap {
    type Err = CapError;

    fn from_str(text: &str) -> Result<VerifyCap, CapError> {
        text.parse::<Cap>().map(|cap| cap.verify_cap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReadCap {
        ReadCap::new(
            FileKey::from_bytes([0xa5; 32]),
            Hash([0x3c; 32]),
            Geometry::new(1_000_001, 131_072, 3, 10).unwrap(),
        )
    }

    #[test]
    fn read_and_verify_caps_round_trip() {
        let cap = sample();
        let text = cap.to_secret_string();
        assert!(text.starts_with("sv1-read:"));
        assert_eq!(text.parse::<ReadCap>().unwrap(), cap);
        let verify = cap.verify_cap().to_string();
        assert!(verify.starts_with("sv1-verify:"));
        assert_eq!(verify.parse::<VerifyCap>().unwrap(), cap.verify_cap());
        assert_eq!(text.parse::<VerifyCap>().unwrap(), cap.verify_cap());
        assert_eq!(verify.parse::<ReadCap>(), Err(CapError::NotReadCap));
    }

    #[test]
    fn non_canonical_spellings_are_refused() {
        let text = sample().to_secret_string().to_string();
        let variants = [
            text.to_uppercase(),
            text.replace(":3:10:", ":03:10:"),
            text.replace(":3:10:", ":+3:10:"),
            format!("{text} "),
            format!("{text}:"),
            text.replacen("sv1-read", "sv2-read", 1),
            text[..text.len() - 1].to_owned() + "x",
            text.replace(":3:10:", ":11:10:"),
        ];
        for v in variants {
            assert!(v.parse::<Cap>().is_err(), "{v}");
        }
    }

    #[test]
    fn errors_never_quote_the_key() {
        let text = sample().to_secret_string();
        let key_text = base32_encode(&[0xa5; 32]);
        let broken = text.replace(":131072:", ":notanumber:");
        let err = broken.parse::<Cap>().unwrap_err().to_string();
        assert!(!err.contains(&key_text), "{err}");
        assert!(err.contains("segment size"), "{err}");
        assert!(!format!("{:?}", sample()).contains(&key_text));
    }
}
