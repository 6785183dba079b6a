//! Uploading: plaintext in, shares out, a read cap back.
//!
//! Pass 1 streams the input a segment at a time: encrypt, pad, Reed–Solomon encode, hash
//! every block, and write each block and its leaf hash straight into its share's spool file.
//! Pass 2 builds every tree inside the spools, writes each record's hash chain next to its
//! block, and the header, UEB and share chain at the front. Memory stays at a few segments
//! (plus a few hundred kilobytes per tree level being built) whatever the file size. The
//! finished spools are then handed to their stores, which move them into place atomically.
//!
//! Input of unknown length (a pipe) is first spooled to an unnamed temporary file *already
//! encrypted*, because the share layout depends on the size; plaintext never touches disk.

mod tree_file;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::io::AsyncRead;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::core::cap::{ReadCap, StorageIndex};
use crate::core::cipher::{FileKey, Keystream};
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::{
    Geometry, GeometryError, MAX_SEGMENT_SIZE, SegmentIndex, ShareNum, min_upload_segment_size,
};
use crate::core::hash::{self, Hash};
use crate::core::layout::ShareLayout;
use crate::core::share_header::ShareHeader;
use crate::core::tree;
use crate::core::ueb::Ueb;
use crate::grid::Grid;
use crate::store::SpooledShare;
use tree_file::TreeSection;

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
    fn for_encoder(self) -> PutSource {
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
pub type Tamper = Arc<dyn Fn(ShareNum, SegmentIndex, &mut [u8]) + Send + Sync>;

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
    fn segment_size_for(&self, size: u64) -> u64 {
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

fn cancelled_detail(left_behind: &str) -> String {
    if left_behind.is_empty() {
        "; nothing of it is left on the servers".into()
    } else {
        format!("; these shares it stored could not be taken back:\n{left_behind}")
    }
}

/// Encodes `source` onto `grid` and returns its read cap.
///
/// ```no_run
/// # async fn demo(grid: segvault::Grid) -> Result<(), segvault::PutError> {
/// use segvault::{PutOptions, PutSource};
/// let options = PutOptions::new(2, 4);
/// let cap = segvault::upload::put(&grid, PutSource::Path("movie.mp4".into()), &options).await?;
/// println!("{}", cap.to_secret_string().as_str());
/// # Ok(()) }
/// ```
pub async fn put(
    grid: &Grid,
    source: PutSource,
    options: &PutOptions,
) -> Result<ReadCap, PutError> {
    options.validate()?;
    if grid.is_empty() {
        return Err(PutError::NoServers);
    }
    if let Some(happy) = options.happy
        && usize::from(happy) > grid.len()
    {
        return Err(PutError::HappyServers {
            happy,
            servers: grid.len(),
        });
    }
    let cancel = options
        .cancel
        .as_ref()
        .map_or_else(CancellationToken::new, CancellationToken::child_token);
    // The upload runs as a task of its own: if this future is dropped (a client that went
    // away), the guard cancels it, and the task still removes what it had stored.
    let on_drop = cancel.clone().drop_guard();
    let task = tokio::spawn(upload(grid.clone(), source, options.clone(), cancel));
    let outcome = task
        .await
        .map_err(|e| PutError::Internal(format!("upload task failed: {e}")))?;
    on_drop.disarm();
    outcome
}

/// How long a cancelled upload waits for its encoder to stop (one reading a pipe that
/// sends nothing never does; it holds no named spool yet).
const ENCODER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long taking back one stored share may take.
const TAKE_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What became of one share's write: `None` when it was cut off by cancellation (it may
/// still have landed).
type Placed = (usize, usize, Option<Result<(), crate::store::StoreError>>);

async fn upload(
    grid: Grid,
    source: PutSource,
    options: PutOptions,
    cancel: CancellationToken,
) -> Result<ReadCap, PutError> {
    // Bridged here, on the runtime: the encoder's thread has none.
    let source = source.for_encoder();
    // Ask every server first: shares go only to those that answer, and an upload that could
    // not be happy fails before any encoding.
    let (responsive, unreachable) = tokio::select! {
        checked = preflight(&grid) => checked,
        () = cancel.cancelled() => return Err(PutError::Cancelled { left_behind: String::new() }),
    };
    let happy = options
        .happy
        .map_or(grid.len().min(usize::from(options.n)), usize::from);
    let reachable_happy = responsive.len().min(usize::from(options.n));
    if reachable_happy < happy || responsive.is_empty() {
        return Err(PutError::TooFewServers {
            reachable: responsive.len(),
            servers: grid.len(),
            happy,
            failures: unreachable,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    // A thread of its own, not the runtime's blocking pool: the encoder may wait long on its
    // input (a slow uploader, a pipe), and the pool's threads are what every store's file I/O
    // needs; twenty slow uploads must not stop reads.
    let (done, mut encoding) = tokio::sync::oneshot::channel();
    {
        let (grid, options, stop) = (grid.clone(), options.clone(), stop.clone());
        std::thread::Builder::new()
            .name("segvault-encode".into())
            .spawn(move || {
                let _ = done.send(encode(&grid, &responsive, source, &options, &stop));
            })
            .map_err(|e| PutError::Internal(format!("cannot start the encoder: {e}")))?;
    }
    let encoded = tokio::select! {
        encoded = &mut encoding => encoded
            .map_err(|_| PutError::Internal("the encoder thread died".into()))??,
        () = cancel.cancelled() => {
            stop.store(true, Ordering::SeqCst);
            let _ = tokio::time::timeout(ENCODER_STOP_WAIT, encoding).await;
            return Err(PutError::Cancelled {
                left_behind: String::new(),
            });
        }
    };
    let si = encoded.cap.storage_index();
    let started = std::time::Instant::now();
    let writes = encoded.spools.into_iter().enumerate().map(|(i, spool)| {
        let server = encoded.placement[i];
        let store = grid.servers()[server].store().clone();
        let cancel = cancel.clone();
        async move {
            let write = store.write(si, ShareNum(i as u8), spool);
            // A directory write is short and cannot stop halfway; a network upload is cut
            // off (the node discards it) and taken back below in case it had landed.
            let outcome = if store.is_remote() {
                tokio::select! {
                    written = write => Some(written),
                    () = cancel.cancelled() => None,
                }
            } else {
                Some(write.await)
            };
            (i, server, outcome)
        }
    });
    let results: Vec<Placed> = futures::future::join_all(writes).await;
    debug!(%si, commit_ms = started.elapsed().as_millis(), "shares handed to their stores");
    if cancel.is_cancelled() {
        let left_behind = take_back(&grid, si, &results).await;
        return Err(PutError::Cancelled { left_behind });
    }

    let mut failed_servers = std::collections::HashSet::new();
    let mut failures = String::new();
    for (share, server, result) in &results {
        if let Some(Err(e)) = result {
            failed_servers.insert(*server);
            failures.push_str(&format!(
                "  share {share} on {}: {e}\n",
                grid.servers()[*server].name()
            ));
        }
    }
    let used: std::collections::HashSet<usize> = encoded.placement.iter().copied().collect();
    let stored = used.len() - failed_servers.len();
    // However few servers must be happy, fewer than k stored shares is no file at all.
    let shares_stored = results
        .iter()
        .filter(|(_, _, r)| matches!(r, Some(Ok(()))))
        .count();
    let k = usize::from(options.k);
    if stored < happy || shares_stored < k {
        // Its cap is never handed out: the shares that were stored are only clutter.
        let left_behind = take_back(&grid, si, &results).await;
        if !left_behind.is_empty() {
            failures.push_str("  and these shares, stored, could not be taken back:\n");
            failures.push_str(&left_behind);
        }
        if shares_stored < k {
            failures.insert_str(
                0,
                &format!("  only {shares_stored} shares were stored and reading needs {k}\n"),
            );
        }
        failures.insert_str(0, &unreachable);
        return Err(PutError::NotHappy {
            stored,
            happy,
            failures,
        });
    }
    info!(%si, size = encoded.cap.geometry().size(), shares = results.len() - failures.lines().count(), "uploaded");
    Ok(encoded.cap)
}

/// Removes the shares of an upload whose cap will never be handed out: every share that was
/// stored, or whose write was cut off and may have landed.
/// Removes the shares of an upload whose cap will never be handed out: every share whose
/// write was attempted (even one that failed: it may have landed before the answer was
/// lost; taking back what is not there costs a request). Returns a line for each share that
/// was or may have been stored and could not be taken back.
async fn take_back(grid: &Grid, si: StorageIndex, results: &[Placed]) -> String {
    let removals = results.iter().map(|(share, server, outcome)| async move {
        let server = &grid.servers()[*server];
        let share = ShareNum(*share as u8);
        let removed =
            tokio::time::timeout(TAKE_BACK_TIMEOUT, server.store().abandon(si, share)).await;
        let why = match removed {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TAKE_BACK_TIMEOUT:?}"),
        };
        if matches!(outcome, Some(Err(_))) {
            // Its write failed: most likely nothing is there to take back.
            debug!(%si, %share, server = server.name(), %why, "not taken back");
            return None;
        }
        warn!(%si, %share, server = server.name(), %why, "cannot take back a share of an abandoned upload");
        Some(format!("  share {share} on {}: {why}\n", server.name()))
    });
    futures::future::join_all(removals)
        .await
        .into_iter()
        .flatten()
        .collect()
}

struct Encoded {
    cap: ReadCap,
    spools: Vec<SpooledShare>,
    placement: Vec<usize>,
}

fn spool_error(dir: impl fmt::Display) -> impl FnOnce(io::Error) -> PutError {
    let dir = dir.to_string();
    move |source| PutError::Spool { dir, source }
}

/// The input, positioned at its start, with its size and whether it is already encrypted.
fn open_input(
    grid: &Grid,
    source: PutSource,
    keystream: &Keystream,
    progress: Option<&Progress>,
    stop: &AtomicBool,
) -> Result<(Box<dyn Read + Send>, u64, bool), PutError> {
    match source {
        PutSource::Path(path) => {
            // Read a segment at a time straight into the segment buffer: no BufReader copy.
            let file = File::open(&path).map_err(PutError::Input)?;
            let size = file.metadata().map_err(PutError::Input)?.len();
            Ok((Box::new(file), size, false))
        }
        PutSource::Bytes(bytes) => {
            let size = bytes.len() as u64;
            // Plaintext: wiped when the encoder is done with it.
            Ok((
                Box::new(io::Cursor::new(Zeroizing::new(bytes))),
                size,
                false,
            ))
        }
        PutSource::AsyncReader(_) => Err(PutError::Internal(
            "an async source reached the encoder unbridged".into(),
        )),
        PutSource::Reader(mut reader) => {
            let dir = grid
                .servers()
                .iter()
                .find_map(|s| s.store().spool_dir())
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir).map_err(spool_error(dir.display()))?;
            let mut spool = tempfile::tempfile_in(&dir).map_err(spool_error(dir.display()))?;
            let mut buffer = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Err(PutError::Cancelled {
                        left_behind: String::new(),
                    });
                }
                let n = match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(PutError::Input(e)),
                };
                keystream.apply(size, &mut buffer[..n]);
                spool
                    .write_all(&buffer[..n])
                    .map_err(spool_error(dir.display()))?;
                size += n as u64;
                if let Some(progress) = progress {
                    progress(size);
                }
            }
            spool.rewind().map_err(spool_error(dir.display()))?;
            Ok((
                Box::new(io::BufReader::with_capacity(1 << 20, spool)),
                size,
                true,
            ))
        }
    }
}

/// How long an uploader waits for a server to say it is there and accepts us.
const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks every server at once: the indexes of those that answered, and a line for each
/// that did not.
async fn preflight(grid: &Grid) -> (Vec<usize>, String) {
    let checks = grid.servers().iter().map(|server| async move {
        match tokio::time::timeout(PREFLIGHT_TIMEOUT, server.store().check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PREFLIGHT_TIMEOUT:?}")),
        }
    });
    let mut responsive = Vec::new();
    let mut unreachable = String::new();
    for (index, outcome) in futures::future::join_all(checks)
        .await
        .into_iter()
        .enumerate()
    {
        match outcome {
            Ok(()) => responsive.push(index),
            Err(why) => {
                warn!(server = grid.servers()[index].name(), %why, "server unavailable for upload");
                unreachable.push_str(&format!("  {}: {why}\n", grid.servers()[index].name()));
            }
        }
    }
    (responsive, unreachable)
}

fn encode(
    grid: &Grid,
    responsive: &[usize],
    source: PutSource,
    options: &PutOptions,
    stop: &AtomicBool,
) -> Result<Encoded, PutError> {
    let key = FileKey::generate().map_err(|e| PutError::Random(e.to_string()))?;
    let keystream = Keystream::new(&key);
    let si = StorageIndex(key.storage_index());
    let (mut input, size, encrypted) =
        open_input(grid, source, &keystream, options.progress.as_ref(), stop)?;
    let segment_size = options.segment_size_for(size);
    let geometry = Geometry::new(size, segment_size, options.k, options.n)?;
    let layout = ShareLayout::new(&geometry);
    let placement = grid.placement_among(&si, options.n, responsive);
    debug!(%si, size, segment_size, k = options.k, n = options.n, "encoding");

    let spools = placement
        .iter()
        .map(|&server| {
            let dir = grid.servers()[server]
                .store()
                .spool_dir()
                .unwrap_or_else(std::env::temp_dir);
            SpooledShare::create(&dir, layout.share_len()).map_err(spool_error(dir.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let encoder = SegmentEncoder {
        geometry,
        layout,
        keystream: &keystream,
        encrypted,
        codec: Codec::new(options.k, options.n).map_err(|e| PutError::Internal(e.to_string()))?,
        spools: &spools,
        #[cfg(any(test, feature = "testing"))]
        tamper: options.tamper.as_ref(),
        stop,
    };
    let started = std::time::Instant::now();
    encoder.encode_all(&mut *input, options)?;
    let encoded = started.elapsed();
    let ueb_hash = finish_shares(&geometry, &layout, si, &spools, options.threads, stop)?;
    debug!(%si, encode_ms = encoded.as_millis(), trees_ms = (started.elapsed() - encoded).as_millis(), "shares built");
    Ok(Encoded {
        cap: ReadCap::new(key, ueb_hash, geometry),
        spools,
        placement,
    })
}

struct SegmentEncoder<'a> {
    geometry: Geometry,
    layout: ShareLayout,
    keystream: &'a Keystream,
    encrypted: bool,
    codec: Codec,
    spools: &'a [SpooledShare],
    #[cfg(any(test, feature = "testing"))]
    tamper: Option<&'a Tamper>,
    /// Set when the upload is cancelled.
    stop: &'a AtomicBool,
}

impl SegmentEncoder<'_> {
    fn section(&self, share: usize, ciphertext: bool) -> TreeSection<'_> {
        let range = if ciphertext {
            self.layout.ciphertext_tree_range()
        } else {
            self.layout.block_tree_range()
        };
        TreeSection {
            file: self.spools[share].file(),
            base: range.start,
            shape: self.geometry.segment_tree(),
        }
    }

    /// Reads the input a segment at a time and encodes segments on `options.threads` threads,
    /// with a fixed pool of segment buffers (memory: threads + 2 segments).
    fn encode_all(&self, input: &mut dyn Read, options: &PutOptions) -> Result<(), PutError> {
        let g = &self.geometry;
        let threads = options.threads.max(1);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<PutError>> = Mutex::new(None);
        let fail = |e: PutError| {
            failed.store(true, Ordering::SeqCst);
            first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        };
        let done = AtomicU64::new(0);
        let (job_tx, job_rx) = mpsc::sync_channel::<(SegmentIndex, Vec<u8>)>(threads);
        let job_rx = Mutex::new(job_rx);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let (leaf_tx, leaf_rx) = mpsc::channel::<(SegmentIndex, Vec<Hash>)>();
        let mut leaves = LeafRuns::new(self);
        std::thread::scope(|scope| {
            // Buffers keep their full length between segments, so nothing is zeroed twice.
            for _ in 0..threads + 2 {
                let _ = free_tx.send(vec![0u8; g.padded_segment_len(SegmentIndex(0)) as usize]);
            }
            for worker in 0..threads {
                let (job_rx, free_tx, leaf_tx, failed, fail) =
                    (&job_rx, free_tx.clone(), leaf_tx.clone(), &failed, &fail);
                // Each thread walks the share files from a different one, so two threads
                // rarely wait on the same file's lock.
                let first_share = worker * usize::from(g.n()) / threads;
                scope.spawn(move || {
                    let mut parity =
                        vec![vec![0u8; g.full_block_size() as usize]; usize::from(g.n() - g.k())];
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((segment, mut buffer)) = job else {
                            break;
                        };
                        if !failed.load(Ordering::SeqCst) {
                            match self.encode_segment(
                                segment,
                                &mut buffer,
                                &mut parity,
                                first_share,
                            ) {
                                Ok(hashes) => {
                                    let _ = leaf_tx.send((segment, hashes));
                                }
                                Err(e) => fail(e),
                            }
                        }
                        let _ = free_tx.send(buffer);
                    }
                });
            }
            drop(leaf_tx);
            for s in 0..g.num_segments() {
                if self.stop.load(Ordering::Relaxed) {
                    fail(PutError::Cancelled {
                        left_behind: String::new(),
                    });
                }
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut buffer) = free_rx.recv() else {
                    break;
                };
                let segment = SegmentIndex(s);
                let len = g.segment_len(segment) as usize;
                if let Err(e) = input.read_exact(&mut buffer[..len]) {
                    fail(if e.kind() == io::ErrorKind::UnexpectedEof {
                        PutError::InputChanged
                    } else {
                        PutError::Input(e)
                    });
                    break;
                }
                if job_tx.send((segment, buffer)).is_err() {
                    break;
                }
                let total = done.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
                if let Some(progress) = &options.progress {
                    progress(total);
                }
                for (segment, hashes) in leaf_rx.try_iter() {
                    if let Err(e) = leaves.add(segment, hashes) {
                        fail(e);
                    }
                }
            }
            // Closing the queue lets the workers finish what they hold and exit.
            drop(job_tx);
            for (segment, hashes) in leaf_rx.iter() {
                if let Err(e) = leaves.add(segment, hashes) {
                    fail(e);
                }
            }
        });
        if let Err(e) = leaves.flush() {
            fail(e);
        }
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        match input.read(&mut [0u8; 1]) {
            Ok(0) => Ok(()),
            Ok(_) => Err(PutError::InputChanged),
            Err(e) => Err(PutError::Input(e)),
        }
    }

    /// Encrypts, codes and hashes one segment and writes its blocks (starting with share
    /// `first_share`). Returns the n block leaves followed by the ciphertext leaf.
    fn encode_segment(
        &self,
        segment: SegmentIndex,
        buffer: &mut [u8],
        parity: &mut [Vec<u8>],
        first_share: usize,
    ) -> Result<Vec<Hash>, PutError> {
        let g = &self.geometry;
        let (k, n) = (usize::from(g.k()), usize::from(g.n()));
        let block = g.block_size(segment) as usize;
        let len = g.segment_len(segment) as usize;
        let buffer = &mut buffer[..block * k];
        if !self.encrypted {
            self.keystream
                .apply(g.segment_start(segment), &mut buffer[..len]);
        }
        buffer[len..].fill(0);
        {
            let data: Vec<&[u8]> = buffer.chunks_exact(block).collect();
            let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(|p| &mut p[..block]).collect();
            self.codec
                .encode(&data, &mut parity)
                .map_err(|e| PutError::Internal(e.to_string()))?;
        }
        // A tampering test uploader commits its ciphertext tree to the data as it should be,
        // then changes blocks: each tampered share is authentic yet disagrees with the rest.
        #[cfg(any(test, feature = "testing"))]
        let honest_leaf = self.tamper.map(|tamper| {
            let leaves: Vec<Hash> = buffer.chunks_exact(block).map(hash::block_leaf).collect();
            for (share, bytes) in buffer
                .chunks_exact_mut(block)
                .chain(parity.iter_mut().map(|p| &mut p[..block]))
                .enumerate()
            {
                tamper(ShareNum(share as u8), segment, bytes);
            }
            hash::ciphertext_leaf(&leaves)
        });
        #[cfg(not(any(test, feature = "testing")))]
        let honest_leaf: Option<Hash> = None;
        let blocks: Vec<&[u8]> = buffer
            .chunks_exact(block)
            .chain(parity.iter().map(|p| &p[..block]))
            .collect();
        let mut hashes: Vec<Hash> = blocks.iter().map(|b| hash::block_leaf(b)).collect();
        hashes.push(honest_leaf.unwrap_or_else(|| hash::ciphertext_leaf(&hashes[..k])));
        let offset = self.layout.block_range(segment).start;
        for share in (first_share..n).chain(0..first_share) {
            self.spools[share]
                .file()
                .write_all_at(blocks[share], offset)
                .map_err(spool_error(self.spools[share].path().display()))?;
        }
        Ok(hashes)
    }
}

/// Leaf hashes arrive a segment at a time and out of order; they are written to the tree
/// sections in contiguous runs (one write per share per run, not one per leaf).
struct LeafRuns<'a> {
    encoder: &'a SegmentEncoder<'a>,
    next: u64,
    waiting: std::collections::BTreeMap<u64, Vec<Hash>>,
    /// Per share, then the ciphertext tree: the run being gathered.
    runs: Vec<Vec<u8>>,
    run_start: u64,
}

/// Leaves gathered before a run is written.
const LEAF_RUN: usize = 256;

impl<'a> LeafRuns<'a> {
    fn new(encoder: &'a SegmentEncoder<'a>) -> LeafRuns<'a> {
        let trees = usize::from(encoder.geometry.n()) + 1;
        LeafRuns {
            encoder,
            next: 0,
            waiting: std::collections::BTreeMap::new(),
            runs: vec![Vec::with_capacity(LEAF_RUN * 32); trees],
            run_start: 0,
        }
    }

    fn add(&mut self, segment: SegmentIndex, hashes: Vec<Hash>) -> Result<(), PutError> {
        self.waiting.insert(segment.0, hashes);
        while let Some(hashes) = self.waiting.remove(&self.next) {
            for (run, hash) in self.runs.iter_mut().zip(&hashes) {
                run.extend_from_slice(&hash.0);
            }
            self.next += 1;
            if self.next - self.run_start == LEAF_RUN as u64 {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PutError> {
        let n = self.runs.len() - 1;
        for (tree, run) in self.runs.iter_mut().enumerate() {
            if run.is_empty() {
                continue;
            }
            let (share, ciphertext) = if tree == n { (0, true) } else { (tree, false) };
            let section = self.encoder.section(share, ciphertext);
            section
                .write_leaves(self.run_start, run)
                .map_err(spool_error(self.encoder.spools[share].path().display()))?;
            run.clear();
        }
        self.run_start = self.next;
        Ok(())
    }
}

/// Builds every tree, writes chains, headers, UEB and share chains. Returns the UEB hash.
fn finish_shares(
    geometry: &Geometry,
    layout: &ShareLayout,
    si: StorageIndex,
    spools: &[SpooledShare],
    threads: usize,
    stop: &AtomicBool,
) -> Result<Hash, PutError> {
    let cancelled = || io::Error::new(io::ErrorKind::Interrupted, "cancelled");
    let shape = geometry.segment_tree();
    let section = |share: usize, range: std::ops::Range<u64>| TreeSection {
        file: spools[share].file(),
        base: range.start,
        shape,
    };
    let chunk = spools.len().div_ceil(threads.max(1));
    let roots: Vec<Hash> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spools.len())
            .collect::<Vec<_>>()
            .chunks(chunk.max(1))
            .map(|shares| {
                let shares = shares.to_vec();
                scope.spawn(move || {
                    shares
                        .into_iter()
                        .map(|i| {
                            if stop.load(Ordering::Relaxed) {
                                return Err(cancelled());
                            }
                            section(i, layout.block_tree_range()).build()
                        })
                        .collect::<io::Result<Vec<Hash>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("tree thread panicked")))
            })
            .collect::<io::Result<Vec<Vec<Hash>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })
    .map_err(|e| cancelled_or(e, stop))?;
    let ciphertext = section(0, layout.ciphertext_tree_range());
    let ciphertext_root = ciphertext.build().map_err(spool_error("share spools"))?;
    let share_tree = tree::build(&roots);
    let ueb = Ueb {
        geometry: *geometry,
        share_root: share_tree[0],
        ciphertext_root,
    };
    let ueb_bytes = ueb.to_bytes();

    let finish_one = |i: usize| -> io::Result<()> {
        let file = spools[i].file();
        if i != 0 {
            ciphertext.copy_to(file, layout.ciphertext_tree_range().start)?;
        }
        let blocks = section(i, layout.block_tree_range());
        let mut block_chains = blocks.chain_reader();
        let mut ciphertext_chains = ciphertext.chain_reader();
        // Every record ends with the same share chain: the path from the block-tree root on
        // to the UEB's share root, so one contiguous read verifies a block from nothing.
        let share_chain: Vec<u8> = tree::chain_of(&share_tree, &geometry.share_tree(), i as u64)
            .iter()
            .flat_map(|h| h.0)
            .collect();
        let mut path = Vec::with_capacity(layout.depth() as usize * 64 + share_chain.len());
        for s in 0..geometry.num_segments() {
            if s % 1024 == 0 && stop.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            path.clear();
            for level in 0..layout.depth() {
                path.extend_from_slice(&block_chains.sibling(s, level)?.0);
                path.extend_from_slice(&ciphertext_chains.sibling(s, level)?.0);
            }
            path.extend_from_slice(&share_chain);
            file.write_all_at(&path, layout.chain_range(SegmentIndex(s)).start)?;
        }
        let mut front = ShareHeader {
            share: ShareNum(i as u8),
            geometry: *geometry,
            storage_index: si,
        }
        .to_bytes();
        front.extend_from_slice(&ueb_bytes);
        debug_assert_eq!(front.len() as u64, layout.header_region().end);
        file.write_all_at(&front, 0)
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spools.len())
            .collect::<Vec<_>>()
            .chunks(chunk.max(1))
            .map(|shares| {
                let shares = shares.to_vec();
                let finish_one = &finish_one;
                scope.spawn(move || shares.into_iter().try_for_each(finish_one))
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("share thread panicked")))
        })
    })
    .map_err(|e| cancelled_or(e, stop))?;
    Ok(hash::ueb(&ueb_bytes))
}

/// A spool error, or the cancellation that caused it.
fn cancelled_or(error: io::Error, stop: &AtomicBool) -> PutError {
    if stop.load(Ordering::Relaxed) {
        PutError::Cancelled {
            left_behind: String::new(),
        }
    } else {
        spool_error("share spools")(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input of unknown length is spooled to disk before encoding; the spool must hold only
    /// ciphertext (the CLI scan cannot see it: it has no name).
    #[test]
    fn the_stdin_spool_holds_only_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::embedded_with(dir.path(), 1, crate::store::Durability::Fsync).unwrap();
        let plaintext: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let key = FileKey::from_bytes([5; 32]);
        let keystream = Keystream::new(&key);
        let source = PutSource::Reader(Box::new(io::Cursor::new(plaintext.clone())));
        let (mut spool, size, encrypted) =
            open_input(&grid, source, &keystream, None, &AtomicBool::new(false)).unwrap();
        assert!(encrypted);
        assert_eq!(size, plaintext.len() as u64);
        let mut stored = Vec::new();
        spool.read_to_end(&mut stored).unwrap();
        let mut expected = plaintext.clone();
        keystream.apply(0, &mut expected);
        assert_eq!(stored, expected, "the spool is the ciphertext");
        let windows: std::collections::HashSet<&[u8]> = plaintext.chunks_exact(32).collect();
        assert!(
            stored.windows(32).all(|w| !windows.contains(w)),
            "no plaintext in the spool"
        );
    }
}
