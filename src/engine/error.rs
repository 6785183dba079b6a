//! Read errors, the per-share report that says what was found where and why each share was
//! or was not used, and the [`Problem`] each rejection records.

use std::fmt;

use crate::core::cap::StorageIndex;
use crate::core::geometry::{SegmentIndex, ShareNum};
use crate::core::hash::Hash;
use crate::core::verifier::VerifyError;
use crate::metrics::Rejection;
use crate::store::StoreError;

/// One line of a share report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    /// The server.
    pub server: String,
    /// The share, or `None` for a line about the server itself.
    pub share: Option<ShareNum>,
    /// What happened: `None` when the share was fine (or not needed).
    pub problem: Option<String>,
}

/// What was found on every server: shares, and why each was rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareReport {
    /// One line per server problem or share found.
    pub lines: Vec<ReportLine>,
}

impl ShareReport {
    /// Shares that had no problem.
    pub fn usable(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.share.is_some() && l.problem.is_none())
            .count()
    }
}

impl fmt::Display for ShareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            let status = line.problem.as_deref().unwrap_or("ok");
            match line.share {
                Some(share) => writeln!(f, "  share {share} on {}: {status}", line.server)?,
                None => writeln!(f, "  {}: {status}", line.server)?,
            }
        }
        Ok(())
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No server holds any share of the file.
    #[error("file {storage_index} not found: no server holds any of its shares\n{report}")]
    NoShares {
        /// The file.
        storage_index: StorageIndex,
        /// What each server said.
        report: ShareReport,
    },
    /// Fewer than k good shares could be found or read.
    #[error(
        "not enough shares of file {storage_index}{}: {needed} needed, {usable} usable\n{report}",
        segment.map(|s| format!(" for segment {s}")).unwrap_or_default()
    )]
    NotEnoughShares {
        /// The file.
        storage_index: StorageIndex,
        /// The segment being read, if the failure was while reading one.
        segment: Option<SegmentIndex>,
        /// k.
        needed: u16,
        /// Distinct shares that were found and not rejected.
        usable: usize,
        /// What was found where, and why each share was rejected.
        report: ShareReport,
    },
    /// Every combination of verified blocks tried decodes to something the ciphertext tree
    /// rejects: the shares were made inconsistently.
    #[error(
        "file {storage_index}, segment {segment}: no combination of verified blocks matches the \
         ciphertext hash tree ({attempts} tried); its shares are inconsistent\n{report}"
    )]
    Inconsistent {
        /// The file.
        storage_index: StorageIndex,
        /// The segment.
        segment: SegmentIndex,
        /// Combinations tried.
        attempts: usize,
        /// What was found where.
        report: ShareReport,
    },
    /// The cap names a file but does not match it: its parameters differ from those of the
    /// UEB its hash names, or k shares agree on another UEB and none holds the cap's. It was
    /// altered or mistyped (or every server that answered holds a forged share).
    #[error(
        "the cap does not match file {storage_index}: it was altered or mistyped (its UEB hash, size or coding parameters differ from the file's)"
    )]
    AlteredCap {
        /// The file.
        storage_index: StorageIndex,
    },
    /// A `read` asked for more than fits in one buffer.
    #[error(
        "a read of {len} bytes exceeds the {max}-byte limit for one buffer; stream the range instead"
    )]
    TooLarge {
        /// Bytes asked for (after clamping to the file).
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A bug or a runtime failure (a task that panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ReadError {
    /// Whether the file simply is not there (HTTP 404) rather than damaged or unreachable.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NoShares { .. })
    }
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> std::io::Error {
        let kind = match e {
            ReadError::NoShares { .. } => std::io::ErrorKind::NotFound,
            ReadError::Inconsistent { .. } => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Why one share could not serve one request.
#[derive(Debug, Clone)]
pub(crate) enum Problem {
    /// Transient: I/O error, timeout, a broken answer. The share is avoided for a while and
    /// its server is marked failing.
    Unavailable(String),
    /// The share is gone from the server.
    Missing,
    /// The share's header, UEB or share chain is bad: the whole share is unusable.
    CorruptShare(String),
    /// One record failed verification; the share may still serve other segments.
    CorruptBlock(VerifyError),
    /// The share's UEB is the one the cap's hash names, but the cap's parameters differ from
    /// it: the cap, not the share, is wrong.
    AlteredCap,
    /// The share is of the cap's file (its header names the storage index) but holds another
    /// UEB (with this hash) than the cap names: a corrupt or forged share, or, when every
    /// share agrees on it, a cap whose UEB hash was altered.
    OtherUeb(Hash),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unavailable(why) => write!(f, "unavailable: {why}"),
            Problem::Missing => f.write_str("listed but now missing"),
            Problem::CorruptShare(why) => write!(f, "corrupt share: {why}"),
            Problem::CorruptBlock(why) => write!(f, "corrupt block: {why}"),
            Problem::AlteredCap => f.write_str("the cap's parameters differ from the file's"),
            Problem::OtherUeb(_) => f.write_str("corrupt share: UEB does not match the cap's hash"),
        }
    }
}

impl From<VerifyError> for Problem {
    fn from(error: VerifyError) -> Problem {
        match error {
            // The server answered a range with another length: it does not hold the share
            // as laid out, so none of its records can be trusted to parse.
            VerifyError::RecordLength { .. } => Problem::CorruptShare(error.to_string()),
            other => Problem::CorruptBlock(other),
        }
    }
}

impl Problem {
    pub(crate) fn from_store(error: StoreError) -> Problem {
        match error {
            StoreError::NotFound => Problem::Missing,
            StoreError::OutOfBounds { .. } => Problem::CorruptShare(format!("truncated: {error}")),
            other => Problem::Unavailable(other.to_string()),
        }
    }

    pub(crate) fn rejection(&self) -> Rejection {
        match self {
            Problem::Unavailable(_) => Rejection::Unavailable,
            Problem::Missing => Rejection::Missing,
            Problem::CorruptShare(_) | Problem::OtherUeb(_) => Rejection::CorruptShare,
            Problem::CorruptBlock(_) => Rejection::CorruptBlock,
            Problem::AlteredCap => Rejection::AlteredCap,
        }
    }

    /// Whether the share's bytes are bad (worth telling its server).
    pub(crate) fn is_corruption(&self) -> bool {
        matches!(
            self,
            Problem::CorruptShare(_) | Problem::CorruptBlock(_) | Problem::OtherUeb(_)
        )
    }
}
