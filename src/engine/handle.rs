//! Reading a file: [`FileHandle::read`] for a range at once, [`FileHandle::stream`] for a
//! range in order with a bounded read-ahead window, [`FileHandle::reader`] for
//! `AsyncRead + AsyncSeek`.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio_util::task::AbortOnDropHandle;

use super::ReaderConfig;
use super::error::ReadError;
use super::node::FileNode;
use super::reader::FileReader;
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
        let segments = if self.node.is_remote() {
            self.config.remote_read_ahead_segments
        } else {
            self.config.read_ahead_segments
        };
        segments.clamp(1, by_bytes.max(1))
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
    fn slice_chunk(&self, slice: SegmentSlice) -> BoxFuture<'static, Result<Bytes, ReadError>> {
        let fetch = self.node.segment(slice.segment);
        let keystream = self.keystream.clone();
        let segment_start = self.segment_start(slice.segment);
        Box::pin(async move {
            let segment = fetch.await?;
            let within = slice.within.start as usize..slice.within.end as usize;
            Ok(segment.decrypt(within, segment_start, &keystream))
        })
    }

    /// The bytes of `range` (clamped to the file) as a stream of chunks, in order.
    ///
    /// Segments are fetched ahead of the consumer in a window that follows it: the window
    /// doubles when the consumer has to wait and shrinks when chunks wait for the consumer,
    /// between one segment and [`read_ahead`](Self::read_ahead). A fast reader gets every
    /// core; a slow one (a video player at playback speed) holds about one segment.
    /// Dropping the stream cancels its fetches.
    pub fn stream(&self, range: Range<u64>) -> ByteStream {
        self.stream_with_window(range, 2)
    }

    /// Like [`stream`](Self::stream), starting with a window of one segment (for readers that
    /// may stop or seek soon).
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
            waited: false,
            ready_batches: 0,
            started: false,
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

/// A chunk being produced: a stream's first runs in the consumer's own task (no hop to
/// another thread before the first byte); the rest run in tasks of their own, so the chunks
/// in flight use every core. Dropping either cancels it.
enum Chunk {
    Inline(BoxFuture<'static, Result<Bytes, ReadError>>),
    Spawned(AbortOnDropHandle<Result<Bytes, ReadError>>),
}

impl Chunk {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ReadError>> {
        match self {
            Chunk::Inline(future) => future.poll_unpin(cx),
            Chunk::Spawned(task) => task.poll_unpin(cx).map(|joined| {
                joined
                    .unwrap_or_else(|e| Err(ReadError::Internal(format!("read task failed: {e}"))))
            }),
        }
    }
}

/// A range of a file as a stream of verified, decrypted chunks (one per segment touched).
pub struct ByteStream {
    handle: FileHandle,
    slices: Box<dyn Iterator<Item = SegmentSlice> + Send + Sync>,
    /// Chunks in order, each marked if it opens a batch (its later chunks arrive with it).
    pending: VecDeque<(Chunk, bool)>,
    window: usize,
    max_window: usize,
    /// Whether the consumer has waited for the chunk now at the front.
    waited: bool,
    /// Batches in a row whose first chunk was ready before the consumer asked.
    ready_batches: u32,
    /// Whether the first chunk has been started (only it runs in the consumer's task).
    started: bool,
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
        // The window refills in batches once half of it has drained: the segments of a batch
        // are fetched together, one request per share (see `FileNode::segment_run`).
        if this.pending.len() <= this.window / 2 {
            let mut batch = Vec::new();
            while this.pending.len() + batch.len() < this.window {
                let Some(slice) = this.slices.next() else {
                    break;
                };
                batch.push(slice);
            }
            // Batches of half a window, so that one is in flight while the one before is
            // consumed (and its shares' servers look busy: the next batch may go elsewhere).
            let group = (this.window / 2).max(1);
            // Held until every chunk holds its own segment future.
            // Only across a network: locally a request costs a page-cache read, and fetching
            // segments one by one spreads them over the cores with no batch to wait for.
            let batching = this.handle.node.is_remote();
            let _batch_fetches: Vec<_> = batch
                .chunks(group)
                .filter(|run| batching && run.len() >= 2)
                .map(|run| {
                    let segments: Vec<SegmentIndex> = run.iter().map(|s| s.segment).collect();
                    this.handle.node.segment_run(&segments)
                })
                .collect();
            for (i, slice) in batch.into_iter().enumerate() {
                let chunk = this.handle.slice_chunk(slice);
                let chunk = if this.started {
                    Chunk::Spawned(AbortOnDropHandle::new(tokio::spawn(chunk)))
                } else {
                    this.started = true;
                    Chunk::Inline(chunk)
                };
                this.pending.push_back((chunk, i % group == 0));
            }
        }
        let Some((chunk, opens_batch)) = this.pending.front_mut() else {
            return Poll::Ready(None);
        };
        let opens_batch = *opens_batch;
        let result = match chunk.poll(cx) {
            Poll::Pending => {
                this.waited = true;
                return Poll::Pending;
            }
            Poll::Ready(result) => result,
        };
        this.pending.pop_front();
        match result {
            Ok(chunk) => {
                // The window follows the consumer: if it had to wait, fetch further ahead (up
                // to the limit); if the chunk was already waiting for it, the consumer is the
                // slow side and holding more ahead would only cost memory. (A batch's later
                // chunks arrive with its first, so only the first says who waited.)
                // Two batches fetched side by side finish together, so one ready batch says
                // little: the window shrinks on the second in a row.
                if this.waited {
                    this.window = (this.window * 2).min(this.max_window);
                    this.ready_batches = 0;
                } else if opens_batch {
                    this.ready_batches += 1;
                    if this.ready_batches >= 2 {
                        this.window = (this.window - 1).max(1);
                    }
                }
                this.waited = false;
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
