//! One bounds-checked reader that every wire type (UEB, share header, caps) decodes through.
//!
//! Nothing here indexes a slice directly: every read asks the reader for `n` bytes and gets
//! an error naming the field when they are not there.

use std::fmt;

/// Why decoding a wire type failed, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error(
        "{what}: truncated at byte {offset} (the field needs {needed} bytes, {available} left)"
    )]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A field was present but its value is not allowed.
    #[error("{what} at byte {offset}: {reason}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes were left over after the last field.
    #[error("{count} unexpected bytes after the end of the {what}")]
    Trailing {
        /// The type being decoded.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
}

/// A cursor over untrusted bytes.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("len", &self.buf.len())
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Current offset from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.get(..n) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available: rest.len(),
            }),
        }
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Requires the next bytes to be exactly `expected` (a magic number, a prefix).
    pub fn expect(&mut self, expected: &[u8], what: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.take(expected.len(), what)?;
        if found == expected {
            Ok(())
        } else {
            Err(DecodeError::Invalid {
                what,
                offset,
                reason: format!("expected {:?}", String::from_utf8_lossy(expected)),
            })
        }
    }

    /// Takes bytes up to (not including) the next `delimiter`, and consumes the delimiter.
    pub fn until(&mut self, delimiter: u8, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == delimiter) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: rest.len() + 1,
                available: rest.len(),
            }),
        }
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    /// An `Invalid` error for a field that started at `offset`.
    pub fn invalid(
        &self,
        what: &'static str,
        offset: usize,
        reason: impl Into<String>,
    ) -> DecodeError {
        DecodeError::Invalid {
            what,
            offset,
            reason: reason.into(),
        }
    }

    /// Requires that every byte was consumed.
    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { what, count }),
        }
    }
}

/// A wire type with exactly one encoding.
pub trait Codec: Sized {
    /// Name used in error messages.
    const NAME: &'static str;

    /// Appends the canonical encoding.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes one value, leaving the reader after it.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The canonical encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a value that must fill `bytes` exactly.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let value = Self::decode(&mut reader)?;
        reader.finish(Self::NAME)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_name_the_field() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("first").unwrap(), 0x0102);
        let err = r.u32("second").unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "second",
                offset: 2,
                needed: 4,
                available: 1
            }
        );
        assert_eq!(r.u8("third").unwrap(), 3);
        r.finish("thing").unwrap();
    }

    #[test]
    fn until_consumes_the_delimiter() {
        let mut r = Reader::new(b"ab:cd");
        assert_eq!(r.until(b':', "a").unwrap(), b"ab");
        assert!(r.until(b':', "b").is_err());
        assert_eq!(r.rest(), b"cd");
    }
}
