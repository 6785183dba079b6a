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
use futures::{FutureExt, Stream};

use super::ReaderConfig;
use super::error::ReadError;
use super::node::{FileNode, SharedSegment};
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
        self.config.read_ahead_segments.clamp(1, by_bytes.max(1))
    }

    /// Reads `len` bytes at `offset`. A read reaching past the end returns the bytes up to
    /// the end; one starting at or past the end returns nothing.
    ///
    /// ```no_run
    /// # async fn demo(file: segvault::FileHandle) -> Result<(), segvault::ReadError> {
    /// let last_byte = file.read(file.len().saturating_sub(1), 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, ReadError> {
        let range = clamp(self.node.verify_cap().geometry(), offset, len);
        let mut out = BytesMut::zeroed((range.end - range.start) as usize);
        let mut pending = VecDeque::new();
        let mut slices = self.slices(range);
        let window = self.read_ahead();
        loop {
            while pending.len() < window {
                let Some(slice) = slices.next() else { break };
                let fetch = self.node.segment(slice.segment);
                pending.push_back((slice, fetch));
            }
            let Some((slice, fetch)) = pending.pop_front() else {
                break;
            };
            let segment = fetch.await?;
            let start = slice.output_offset as usize;
            let end = start + (slice.within.end - slice.within.start) as usize;
            let segment_start = self.segment_start(slice.segment);
            segment.decrypt_into(
                slice.within.start as usize..slice.within.end as usize,
                segment_start,
                &self.keystream,
                &mut out[start..end],
            );
        }
        Ok(out.freeze())
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

    fn slices(&self, range: Range<u64>) -> impl Iterator<Item = SegmentSlice> + Send + 'static {
        crate::core::planner::plan_range(self.node.verify_cap().geometry(), range)
    }

    fn segment_start(&self, segment: SegmentIndex) -> u64 {
        self.node.verify_cap().geometry().segment_start(segment)
    }
}

/// A range of a file as a stream of verified, decrypted chunks (one per segment touched).
pub struct ByteStream {
    handle: FileHandle,
    slices: Box<dyn Iterator<Item = SegmentSlice> + Send>,
    pending: VecDeque<(SegmentSlice, SharedSegment)>,
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
            let fetch = this.handle.node.segment(slice.segment);
            this.pending.push_back((slice, fetch));
        }
        let Some((_, fetch)) = this.pending.front_mut() else {
            return Poll::Ready(None);
        };
        let result = match fetch.poll_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        let Some((slice, _)) = this.pending.pop_front() else {
            return Poll::Ready(None);
        };
        match result {
            Ok(segment) => {
                this.window = (this.window * 2).min(this.max_window);
                let within = slice.within.start as usize..slice.within.end as usize;
                let mut out = BytesMut::zeroed(within.len());
                let start = this.handle.segment_start(slice.segment);
                segment.decrypt_into(within, start, &this.handle.keystream, &mut out);
                Poll::Ready(Some(Ok(out.freeze())))
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
