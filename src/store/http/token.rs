//! The shared secret between storage nodes and their clients, read from a token file. It
//! travels as `Authorization: Bearer <token>`; it is never logged, and `Debug` hides it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Shortest token accepted: 128 bits of base32 or hex is 26–32 characters.
pub const MIN_TOKEN_LEN: usize = 24;
/// Longest token accepted (it must fit in a request header).
pub const MAX_TOKEN_LEN: usize = 1024;

/// A storage-node access token.
#[derive(Clone)]
pub struct Token {
    secret: Zeroizing<String>,
    /// What the server compares: a hash, so the comparison's time says nothing of the token.
    digest: blake3::Hash,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file's contents are not a usable token.
    #[error("token file {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the token itself).
        why: String,
    },
}

impl Token {
    /// Reads a token file: its first line, surrounding whitespace ignored. The token must be
    /// [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII characters.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            );
        let invalid = |why: &str| TokenError::Invalid {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        let line = text.lines().next().unwrap_or("").trim();
        if line.len() < MIN_TOKEN_LEN {
            return Err(invalid(&format!(
                "the token must be at least {MIN_TOKEN_LEN} characters (try `head -c 32 /dev/urandom | base32`)"
            )));
        }
        if line.len() > MAX_TOKEN_LEN {
            return Err(invalid(&format!(
                "the token must be at most {MAX_TOKEN_LEN} characters"
            )));
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the token may only hold visible ASCII characters (no spaces)",
            ));
        }
        Ok(Token::new(line))
    }

    fn new(secret: &str) -> Token {
        Token {
            digest: blake3::hash(secret.as_bytes()),
            secret: Zeroizing::new(secret.to_owned()),
        }
    }

    /// The `Authorization` header value a client sends.
    pub fn header_value(&self) -> hyper::header::HeaderValue {
        let mut value =
            hyper::header::HeaderValue::try_from(format!("Bearer {}", self.secret.as_str()))
                .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("Bearer -"));
        value.set_sensitive(true);
        value
    }

    /// Whether an `Authorization` header value carries this token. Takes the same time
    /// whatever the presented value (the comparison is of hashes, in constant time).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let presented = authorization
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })
            .unwrap_or(b"");
        // blake3::Hash's equality is constant-time.
        blake3::hash(presented) == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_checked_and_tokens_compared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        for bad in [
            "",
            "short",
            &"x".repeat(MAX_TOKEN_LEN + 1),
            "has a space in it somewhere",
        ] {
            std::fs::write(&file, bad).unwrap();
            let error = Token::from_file(&file).unwrap_err().to_string();
            assert!(bad.is_empty() || !error.contains(bad), "{error}");
        }
        std::fs::write(&file, "  abcdefghijklmnopqrstuvwxyz234567\nignored\n").unwrap();
        let token = Token::from_file(&file).unwrap();
        assert!(!format!("{token:?}").contains("abcdef"));
        assert!(token.admits(Some(b"Bearer abcdefghijklmnopqrstuvwxyz234567")));
        assert!(token.admits(Some(token.header_value().as_bytes())));
        assert!(
            token.admits(Some(b"bearer abcdefghijklmnopqrstuvwxyz234567")),
            "the scheme is case-insensitive"
        );
        for wrong in [
            None,
            Some(&b""[..]),
            Some(b"Bearer "),
            Some(b"Basic abcdefghijklmnopqrstuvwxyz234567"),
            Some(b"Bearer abcdefghijklmnopqrstuvwxyz23456"),
            Some(b"Bearer abcdefghijklmnopqrstuvwxyz2345678"),
        ] {
            assert!(!token.admits(wrong), "{wrong:?}");
        }
        assert!(Token::from_file(&dir.path().join("missing")).is_err());
    }
}
