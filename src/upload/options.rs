//! What an upload takes: its source, its options, and how it can fail.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use crate::core::geometry::{Geometry, GeometryError, MAX_SEGMENT_SIZE, min_upload_segment_size};

/// What to upload: bytes in memory, a file, or a stream (async or blocking). Streams of
/// unknown length are encrypted into a spool file first (ciphertext only), since the
/// segment size depends on the length.
///
/// ```
/// use segvault::PutSource;
/// let _ = PutSource::from(b"bytes in memory".to_vec());
/// let _ = PutSource::from(std::path::Path::new("movie.mp4"));
/// let _ = PutSource::reader(tokio::io::empty());
/// ```
#[non_exhaustive]
pub enum PutSource {
    /// A file; its size is known up front.
    Path(PathBuf),
    /// An async stream of unknown length (a request body, a socket).
    AsyncReader(Box<dyn AsyncRead + Send + Unpin>),
    /// A blocking stream of unknown length (stdin, a pipe), read on the encoder's thread.
    Reader(Box<dyn Read + Send>),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

impl PutSource {
    /// An async stream of unknown length.
    pub fn reader(reader: impl AsyncRead + Send + Unpin + 'static) -> PutSource {
        PutSource::AsyncReader(Box::new(reader))
    }

    /// A blocking stream of unknown length (read on a thread of its own, never on the
    /// runtime's workers).
    pub fn blocking_reader(reader: impl Read + Send + 'static) -> PutSource {
        PutSource::Reader(Box::new(reader))
    }

    /// The source as the encoder's thread reads it: an async stream is bridged to blocking
    /// reads on this runtime.
    pub(super) fn for_encoder(self) -> PutSource {
        match self {
            PutSource::AsyncReader(reader) => {
                PutSource::Reader(Box::new(SyncIoBridge::new(reader)))
            }
            other => other,
        }
    }
}

impl From<Vec<u8>> for PutSource {
    fn from(bytes: Vec<u8>) -> PutSource {
        PutSource::Bytes(bytes)
    }
}

impl From<&[u8]> for PutSource {
    fn from(bytes: &[u8]) -> PutSource {
        PutSource::Bytes(bytes.to_vec())
    }
}

impl From<bytes::Bytes> for PutSource {
    fn from(bytes: bytes::Bytes) -> PutSource {
        PutSource::Bytes(bytes.into())
    }
}

impl From<PathBuf> for PutSource {
    fn from(path: PathBuf) -> PutSource {
        PutSource::Path(path)
    }
}

impl From<&Path> for PutSource {
    fn from(path: &Path) -> PutSource {
        PutSource::Path(path.to_owned())
    }
}

impl fmt::Debug for PutSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutSource::Path(p) => write!(f, "Path({})", p.display()),
            PutSource::AsyncReader(_) => f.write_str("AsyncReader"),
            PutSource::Reader(_) => f.write_str("Reader"),
            PutSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

/// Progress callback: bytes of input processed so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// See `PutOptions::tamper` (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub type Tamper = Arc<
    dyn Fn(crate::core::geometry::ShareNum, crate::core::geometry::SegmentIndex, &mut [u8])
        + Send
        + Sync,
>;

/// How to encode and place a file.
#[derive(Clone)]
#[non_exhaustive]
pub struct PutOptions {
    /// Shares needed to read (1..=n).
    pub k: u16,
    /// Shares written (1..=256).
    pub n: u16,
    /// Segment size; `None` picks it from the file size ([`Geometry::choose_segment_size`]).
    pub segment_size: Option<u64>,
    /// Servers that must take their shares for the upload to succeed; `None`: `min(n,
    /// servers)`, that is, every server must take one. Servers that do not answer the
    /// upload's first check get no shares (the others take theirs in turn), so with `happy`
    /// below that an upload survives servers that are down.
    pub happy: Option<u16>,
    /// Encoding threads.
    pub threads: usize,
    /// Called as input is processed.
    pub progress: Option<Progress>,
    /// Cancels the upload when triggered (Ctrl-C): encoding stops, spools are removed, and
    /// shares already stored are taken back ([`ShareStore::abandon`]); `put` then fails with
    /// [`PutError::Cancelled`]. Dropping the `put` future does the same.
    ///
    /// [`ShareStore::abandon`]: crate::store::ShareStore::abandon
    pub cancel: Option<CancellationToken>,
    /// For tests of the segment arithmetic only: allows segments below
    /// [`min_upload_segment_size`].
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub unchecked_segment_size: bool,
    /// Simulates a malicious or buggy uploader, for tests: called on every block after
    /// encoding and before hashing, it may change the block. The ciphertext tree still names
    /// the data as encoded, so a tampered share is authentic (its hashes lead to the cap) yet
    /// disagrees with the others.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub tamper: Option<Tamper>,
}

impl fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutOptions")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("segment_size", &self.segment_size)
            .field("happy", &self.happy)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Default for PutOptions {
    fn default() -> PutOptions {
        PutOptions {
            k: 3,
            n: 10,
            segment_size: None,
            happy: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: None,
            cancel: None,
            #[cfg(any(test, feature = "testing"))]
            unchecked_segment_size: false,
            #[cfg(any(test, feature = "testing"))]
            tamper: None,
        }
    }
}

impl PutOptions {
    /// Checks the options on their own (k, n, segment size, happy), before anything is read
    /// or written.
    ///
    /// ```
    /// use segvault::PutOptions;
    /// assert!(PutOptions::default().validate().is_ok());
    /// assert!(PutOptions::new(3, 300).validate().is_err());
    /// assert!(PutOptions::default().with_segment_size(1).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), PutError> {
        let min = min_upload_segment_size(self.k);
        if let Some(size) = self.segment_size
            && size < min
            && !self.segment_size_unchecked()
        {
            Geometry::new(0, MAX_SEGMENT_SIZE, self.k, self.n)?;
            return Err(PutError::SegmentTooSmall {
                size,
                min,
                k: self.k,
            });
        }
        Geometry::new(0, self.segment_size.unwrap_or(min), self.k, self.n)?;
        if let Some(happy) = self.happy
            && (happy == 0 || happy > self.n)
        {
            return Err(PutError::Happy { happy, n: self.n });
        }
        Ok(())
    }

    /// Options for `k`-of-`n` shares, the rest as [`Default`].
    ///
    /// ```
    /// use segvault::PutOptions;
    /// let options = PutOptions::new(2, 4).with_segment_size(64 << 10).with_happy(3);
    /// assert!(options.validate().is_ok());
    /// ```
    pub fn new(k: u16, n: u16) -> PutOptions {
        PutOptions {
            k,
            n,
            ..PutOptions::default()
        }
    }

    /// With a fixed segment size (else chosen from the file's size).
    pub fn with_segment_size(mut self, segment_size: u64) -> PutOptions {
        self.segment_size = Some(segment_size);
        self
    }

    /// With `happy`: servers that must take their shares.
    pub fn with_happy(mut self, happy: u16) -> PutOptions {
        self.happy = Some(happy);
        self
    }

    /// With a progress callback, called with the bytes of input processed so far.
    pub fn with_progress(mut self, progress: impl Fn(u64) + Send + Sync + 'static) -> PutOptions {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// With a cancellation token ([`PutOptions::cancel`]).
    pub fn with_cancel(mut self, cancel: CancellationToken) -> PutOptions {
        self.cancel = Some(cancel);
        self
    }

    fn segment_size_unchecked(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.unchecked_segment_size;
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// The segment size for a file of `size` bytes.
    pub(super) fn segment_size_for(&self, size: u64) -> u64 {
        self.segment_size.unwrap_or_else(|| {
            Geometry::choose_segment_size(size).max(min_upload_segment_size(self.k))
        })
    }
}

/// Why an upload failed. Nothing partial is left where a reader could find it as a share.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// k, n or the segment size are invalid, or the file is too large for them.
    #[error(transparent)]
    Parameters(#[from] GeometryError),
    /// A segment size whose blocks would carry more hash than data.
    #[error(
        "segment size {size} is too small: uploads with k={k} use at least {min} bytes \
         (smaller segments store more hashes than data)"
    )]
    SegmentTooSmall {
        /// Asked for.
        size: u64,
        /// The smallest allowed.
        min: u64,
        /// Shares needed.
        k: u16,
    },
    /// The upload was cancelled: its spools are gone, and the shares it had stored were
    /// taken back except those listed.
    #[error("the upload was cancelled{}", cancelled_detail(.left_behind))]
    Cancelled {
        /// One line per share stored that could not be taken back (empty: none is left).
        left_behind: String,
    },
    /// `happy` outside `1..=n`.
    #[error("happy ({happy}) must be between 1 and n ({n})")]
    Happy {
        /// Asked for.
        happy: u16,
        /// Total shares.
        n: u16,
    },
    /// The grid has no servers.
    #[error("there are no storage servers to upload to")]
    NoServers,
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Input(io::Error),
    /// The input file grew or shrank while it was read.
    #[error("the input changed size while it was being read")]
    InputChanged,
    /// Writing a spool failed (disk full, permissions).
    #[error("writing shares to {dir}: {source}")]
    Spool {
        /// Where.
        dir: String,
        /// What failed.
        source: io::Error,
    },
    /// The operating system gave no randomness for the key.
    #[error("cannot generate a key: {0}")]
    Random(String),
    /// `happy` above the number of servers given.
    #[error("happy ({happy}) cannot exceed the {servers} servers given")]
    HappyServers {
        /// Asked for.
        happy: u16,
        /// Servers in the grid.
        servers: usize,
    },
    /// Too few servers answered to make the upload happy; nothing was sent.
    #[error(
        "only {reachable} of {servers} servers answered; at least {happy} must take shares (see --happy):\n{failures}"
    )]
    TooFewServers {
        /// Servers that answered.
        reachable: usize,
        /// Servers in the grid.
        servers: usize,
        /// Required.
        happy: usize,
        /// One line per server that did not answer.
        failures: String,
    },
    /// Too few servers took their shares.
    #[error("only {stored} servers stored their shares; at least {happy} must:\n{failures}")]
    NotHappy {
        /// Servers that stored everything sent to them.
        stored: usize,
        /// Required.
        happy: usize,
        /// One line per failed share.
        failures: String,
    },
    /// A bug or runtime failure.
    #[error("internal error: {0}")]
    Internal(String),
}

pub(super) fn cancelled_detail(left_behind: &str) -> String {
    if left_behind.is_empty() {
        "; nothing of it is left on the servers".into()
    } else {
        format!("; these shares it stored could not be taken back:\n{left_behind}")
    }
}
