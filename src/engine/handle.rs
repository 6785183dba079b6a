//! Reading a file: [`FileHandle::read`] for a range at once, [`FileHandle::stream`] for a
//! range in order with a bounded read-ahead window, [`FileHandle::reader`] for
//! `AsyncRead + AsyncSeek`.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use tokio_util::task::AbortOnDropHandle;

use super::ReaderConfig;
use super::error::ReadError;
use super::node::FileNode;
use super::reader::FileReader;
use super::segment::SegmentData;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::cipher::Keystream;
use crate::core::geometry::SegmentIndex;
use crate::core::planner::{SegmentSlice, clamp};

/// An open file: a shared [`FileNode`] plus the key. Cheap to clone.
#[derive(Clone)]
pub struct FileHandle {
    node: Arc<FileNode>,
    keystream: Keystream,
    config: Arc<ReaderConfig>,
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
    ) -> FileHandle {
        FileHandle {
            node,
            keystream,
            config,
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

    /// Segments of read-ahead a stream may keep in flight (at least 1).
    pub fn read_ahead(&self) -> usize {
        let segment = self.node.verify_cap().geometry().segment_size().max(1);
        let by_bytes = (self.config.read_ahead_bytes / segment).max(1) as usize;
        self.config.read_ahead_segments.clamp(1, by_bytes.max(1))
    }

    /// Reads `len` bytes at `offset`. A read reaching past the end returns the bytes up to
    /// the end; one starting at or past the end returns nothing. The result is one buffer, so
    /// ranges above [`ReaderConfig::max_read_bytes`] are refused: use
    /// [`stream`](Self::stream) for those.
    ///
    /// ```no_run
    /// # async fn demo(file: segvault::FileHandle) -> Result<(), segvault::ReadError> {
    /// let last_byte = file.read(file.len().saturating_sub(1), 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, ReadError> {
        let range = clamp(self.node.verify_cap().geometry(), offset, len);
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
            return Ok(decrypt_slice(
                &segment,
                &slice,
                self.segment_start(slice.segment),
                &self.keystream,
            ));
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut stream = self.stream(range);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    /// Fetches and decrypts one slice in a task of its own, so the slices in flight use
    /// every core; dropping the handle cancels it.
    fn spawn_slice(&self, slice: SegmentSlice) -> AbortOnDropHandle<Result<Bytes, ReadError>> {
        let fetch = self.node.segment(slice.segment);
        let keystream = self.keystream.clone();
        let segment_start = self.segment_start(slice.segment);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let segment = fetch.await?;
            Ok(decrypt_slice(&segment, &slice, segment_start, &keystream))
        }))
    }

    /// The bytes of `range` (clamped to the file) as a stream of chunks, in order, with up to
    /// [`read_ahead`](Self::read_ahead) segments fetched ahead of the consumer and never more.
    /// Dropping the stream cancels its fetches.
    pub fn stream(&self, range: Range<u64>) -> ByteStream {
        let window = self.read_ahead();
        self.stream_with_window(range, window)
    }

    /// Like [`stream`](Self::stream), starting with a window of one segment that doubles with
    /// every segment consumed (for readers that may stop or seek soon).
    pub fn stream_slow_start(&self, range: Range<u64>) -> ByteStream {
        self.stream_with_window(range, 1)
    }

    fn stream_with_window(&self, range: Range<u64>, initial: usize) -> ByteStream {
        let range = clamp(
            self.node.verify_cap().geometry(),
            range.start,
            range.end.saturating_sub(range.start),
        );
        let max_window = self.read_ahead();
        ByteStream {
            handle: self.clone(),
            slices: Box::new(self.slices(range)),
            pending: VecDeque::new(),
            window: initial.clamp(1, max_window),
            max_window,
            failed: false,
        }
    }

    /// An `AsyncRead + AsyncSeek` view of the file, positioned at 0.
    pub fn reader(&self) -> FileReader {
        FileReader::new(self.clone())
    }

    fn slices(
        &self,
        range: Range<u64>,
    ) -> impl Iterator<Item = SegmentSlice> + Send + Sync + 'static {
        crate::core::planner::plan_range(self.node.verify_cap().geometry(), range)
    }

    fn segment_start(&self, segment: SegmentIndex) -> u64 {
        self.node.verify_cap().geometry().segment_start(segment)
    }
}

fn decrypt_slice(
    segment: &SegmentData,
    slice: &SegmentSlice,
    segment_start: u64,
    keystream: &Keystream,
) -> Bytes {
    let within = slice.within.start as usize..slice.within.end as usize;
    let mut out = BytesMut::zeroed(within.len());
    segment.decrypt_into(within, segment_start, keystream, &mut out);
    out.freeze()
}

/// A range of a file as a stream of verified, decrypted chunks (one per segment touched).
pub struct ByteStream {
    handle: FileHandle,
    slices: Box<dyn Iterator<Item = SegmentSlice> + Send + Sync>,
    pending: VecDeque<AbortOnDropHandle<Result<Bytes, ReadError>>>,
    window: usize,
    max_window: usize,
    failed: bool,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("in_flight", &self.pending.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl ByteStream {
    /// Segments currently being fetched or held for the consumer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        while this.pending.len() < this.window {
            let Some(slice) = this.slices.next() else {
                break;
            };
            this.pending.push_back(this.handle.spawn_slice(slice));
        }
        let Some(task) = this.pending.front_mut() else {
            return Poll::Ready(None);
        };
        let result = match task.poll_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(result)) => result,
            Poll::Ready(Err(e)) => Err(ReadError::Internal(format!("read task failed: {e}"))),
        };
        this.pending.pop_front();
        match result {
            Ok(chunk) => {
                this.window = (this.window * 2).min(this.max_window);
                Poll::Ready(Some(Ok(chunk)))
            }
            Err(e) => {
                // Nothing after a failed segment is delivered; drop the fetches ahead of it.
                this.failed = true;
                this.pending.clear();
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}
