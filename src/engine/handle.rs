//! Reading a file: [`FileHandle::read`] for a range at once, [`FileHandle::stream`] for a
//! range in order with a bounded read-ahead window ([`ByteStream`](super::ByteStream)), [`FileHandle::reader`]
//! for `AsyncRead + AsyncSeek`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::ReaderConfig;
use super::error::ReadError;
use super::node::FileNode;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::choice::read_ahead_window;
use crate::core::cipher::Keystream;
use crate::core::geometry::SegmentIndex;
use crate::core::planner::SegmentSlice;
use crate::core::range::GetRange;
use tokio::sync::Semaphore;

/// An open file: a shared [`FileNode`] plus the key. Cheap to clone.
#[derive(Clone)]
pub struct FileHandle {
    node: Arc<FileNode>,
    keystream: Keystream,
    config: Arc<ReaderConfig>,
    read_ahead_memory: Arc<Semaphore>,
}

impl fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileHandle")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FileHandle {
    pub(crate) fn new(
        node: Arc<FileNode>,
        keystream: Keystream,
        config: Arc<ReaderConfig>,
        read_ahead_memory: Arc<Semaphore>,
    ) -> FileHandle {
        FileHandle {
            node,
            keystream,
            config,
            read_ahead_memory,
        }
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.node.verify_cap().geometry().size()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's storage index (safe to log).
    pub fn storage_index(&self) -> StorageIndex {
        self.node.storage_index()
    }

    /// The file's verify cap.
    pub fn verify_cap(&self) -> VerifyCap {
        *self.node.verify_cap()
    }

    /// The shared per-file node.
    pub fn node(&self) -> &Arc<FileNode> {
        &self.node
    }

    /// Segments of read-ahead a stream may keep in flight (at least 1). Across a network it
    /// follows the servers' measured latency ([`read_ahead_window`]).
    pub fn read_ahead(&self) -> usize {
        let geometry = self.node.verify_cap().geometry();
        let segment = geometry.segment_size().max(1);
        let by_bytes = (self.config.read_ahead_bytes / segment).max(1) as usize;
        if !self.node.is_remote() {
            return self.config.read_ahead_segments.clamp(1, by_bytes);
        }
        let remote_bytes = self
            .config
            .remote_read_ahead_bytes
            .max(self.config.read_ahead_bytes);
        read_ahead_window(
            self.node.grid().kth_latency(usize::from(geometry.k())),
            segment,
            self.config.target_read_rate,
            self.config.remote_read_ahead_segments.min(by_bytes),
            (remote_bytes / segment).max(1) as usize,
        )
    }

    /// Reads `range` of the file in one buffer: `a..b`, `a..`, `..b`, `..`,
    /// [`GetRange::at(offset, len)`](GetRange::at) or [`GetRange::Suffix(n)`](GetRange::Suffix).
    /// What lies past the end is left out (a range wholly past it reads nothing). Ranges above
    /// [`ReaderConfig::max_read_bytes`] are refused: [`stream`](Self::stream) those.
    ///
    /// ```no_run
    /// # async fn demo(file: segvault::FileHandle) -> Result<(), segvault::ReadError> {
    /// use segvault::GetRange;
    /// let head = file.read(0..1024).await?;
    /// let last_byte = file.read(GetRange::Suffix(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, range: impl Into<GetRange>) -> Result<Bytes, ReadError> {
        let range = range.into().resolve(self.len());
        if range.end - range.start > self.config.max_read_bytes {
            return Err(ReadError::TooLarge {
                len: range.end - range.start,
                max: self.config.max_read_bytes,
            });
        }
        let segments = self
            .node
            .verify_cap()
            .geometry()
            .segments_overlapping(range.clone());
        if segments.end - segments.start <= 1 {
            let Some(slice) = self.slices(range).next() else {
                return Ok(Bytes::new());
            };
            let segment = self.node.segment(slice.segment).await?;
            let within = slice.within.start as usize..slice.within.end as usize;
            return Ok(segment.decrypt(within, self.segment_start(slice.segment), &self.keystream));
        }
        let mut out =
            zeroize::Zeroizing::new(Vec::with_capacity((range.end - range.start) as usize));
        let mut stream = self.stream(range);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(super::segment::plaintext_bytes(std::mem::take(&mut *out)))
    }

    /// Fetches and decrypts one slice.
    pub(super) fn slice_chunk(
        &self,
        slice: SegmentSlice,
    ) -> BoxFuture<'static, Result<Bytes, ReadError>> {
        let fetch = self.node.segment(slice.segment);
        let keystream = self.keystream.clone();
        let segment_start = self.segment_start(slice.segment);
        Box::pin(async move {
            let segment = fetch.await?;
            let within = slice.within.start as usize..slice.within.end as usize;
            Ok(segment.decrypt(within, segment_start, &keystream))
        })
    }

    pub(super) fn read_ahead_release(&self) -> std::time::Duration {
        self.config.read_ahead_release
    }

    /// The client's read-ahead memory, in permits of a KiB.
    pub(super) fn read_ahead_memory(&self) -> &Arc<Semaphore> {
        &self.read_ahead_memory
    }

    pub(super) fn read_ahead_memory_kib(&self) -> u64 {
        read_ahead_memory_kib(&self.config)
    }

    pub(super) fn slices(
        &self,
        range: Range<u64>,
    ) -> impl Iterator<Item = SegmentSlice> + Send + Sync + 'static {
        crate::core::planner::plan_range(self.node.verify_cap().geometry(), range)
    }

    pub(super) fn segment_start(&self, segment: SegmentIndex) -> u64 {
        self.node.verify_cap().geometry().segment_start(segment)
    }
}

/// The read-ahead memory of `config` in KiB, as semaphore permits.
pub(super) fn read_ahead_memory_kib(config: &ReaderConfig) -> u64 {
    (config.read_ahead_memory / 1024).clamp(1, u64::from(u32::MAX >> 3))
}
