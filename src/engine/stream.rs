//! [`ByteStream`]: a range of a file as verified, decrypted chunks in order, fetched ahead
//! of its consumer in a window that adapts to the consumer's pace.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::{FutureExt, Stream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::AbortOnDropHandle;

use super::error::ReadError;
use super::handle::FileHandle;
use crate::core::geometry::SegmentIndex;
use crate::core::planner::SegmentSlice;
use crate::core::range::GetRange;
use crate::metrics::Metrics;

impl FileHandle {
    /// The bytes of `range` (clamped to the file) as a stream of chunks, in order.
    ///
    /// Segments are fetched ahead of the consumer in a window that follows it: the window
    /// doubles when the consumer has to wait and shrinks when chunks wait for the consumer,
    /// between one segment and [`read_ahead`](Self::read_ahead). A fast reader gets every
    /// core; a slow one (a video player at playback speed) holds about one segment.
    /// Dropping the stream cancels its fetches.
    ///
    /// ```no_run
    /// # async fn demo(file: segvault::FileHandle) -> Result<(), segvault::ReadError> {
    /// use futures::TryStreamExt;
    /// let mut chunks = file.stream(1 << 20..);
    /// while let Some(chunk) = chunks.try_next().await? {
    ///     // send `chunk` on; memory stays at the read-ahead window
    /// #   drop(chunk);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, range: impl Into<GetRange>) -> ByteStream {
        self.stream_with_window(range.into(), 2)
    }

    /// Like [`stream`](Self::stream), starting with a window of one segment (for readers that
    /// may stop or seek soon).
    pub fn stream_slow_start(&self, range: impl Into<GetRange>) -> ByteStream {
        self.stream_with_window(range.into(), 1)
    }

    fn stream_with_window(&self, range: GetRange, initial: usize) -> ByteStream {
        let range = range.resolve(self.len());
        ByteStream::new(
            self.clone(),
            Box::new(self.slices(range)),
            initial,
            self.read_ahead(),
        )
    }
}

/// A chunk being produced: a stream's first runs in the consumer's own task (no hop to
/// another thread before the first byte); the rest run in tasks of their own, so the chunks
/// in flight use every core. Dropping either cancels it.
enum Chunk {
    Inline(BoxFuture<'static, Result<Bytes, ReadError>>),
    Ahead(Ahead),
}

impl Chunk {
    fn poll(
        &mut self,
        handle: &FileHandle,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, ReadError>> {
        loop {
            match self {
                Chunk::Inline(future) => return future.poll_unpin(cx),
                Chunk::Ahead(ahead) => match ahead.poll(cx) {
                    Polled::Ready(result) => return Poll::Ready(result),
                    Polled::Pending => return Poll::Pending,
                    // Let go, or never given room: its reader fetches it in its own task.
                    Polled::FetchHere(slice) => *self = Chunk::Inline(handle.slice_chunk(slice)),
                },
            }
        }
    }
}

/// A chunk fetched ahead in a task of its own, within the client's read-ahead memory
/// ([`ReaderConfig::read_ahead_memory`](super::ReaderConfig::read_ahead_memory)): it waits for
/// room before fetching, unless its reader reaches it first, which then fetches it itself
/// (a reader's next chunk never waits on others' read-ahead). Ready, it waits for its reader
/// for the handle's `read_ahead_release`; a reader that has not taken it by then (a stalled
/// or paused client, whose connection no longer pulls) loses it and fetches it again if it
/// resumes. So a stalled reader holds no read-ahead, only what its connection buffers, and
/// all readers together hold at most the read-ahead memory.
struct Ahead {
    slot: Arc<Slot>,
    slice: SegmentSlice,
    metrics: Arc<Metrics>,
    _task: AbortOnDropHandle<()>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    waker: AtomicWaker,
}

#[derive(Default)]
enum SlotState {
    /// Waiting for room in the read-ahead memory.
    #[default]
    Queued,
    Fetching,
    /// Fetched, holding its share of the read-ahead memory until taken or let go.
    Ready(Result<Bytes, ReadError>, Option<OwnedSemaphorePermit>),
    Taken,
    Released,
}

enum Polled {
    Ready(Result<Bytes, ReadError>),
    Pending,
    /// The reader fetches this chunk itself: it was let go, or never got room.
    FetchHere(SegmentSlice),
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ahead {
    fn spawn(handle: &FileHandle, slice: SegmentSlice) -> Ahead {
        let slot = Arc::new(Slot::default());
        let fetch = handle.slice_chunk(slice.clone());
        let release_after = handle.read_ahead_release();
        let memory = handle.read_ahead_memory().clone();
        let metrics = handle.node().metrics().clone();
        // A chunk never asks for more than the whole memory (it would wait forever).
        let kib = (slice
            .within
            .end
            .saturating_sub(slice.within.start)
            .div_ceil(1024))
        .clamp(1, handle.read_ahead_memory_kib());
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        // Room now: fetching from the start. Else queued, and its reader may take it over.
        let room = memory.clone().try_acquire_many_owned(kib).ok();
        if room.is_some() {
            *slot.lock() = SlotState::Fetching;
        }
        let task = {
            let (slot, metrics) = (slot.clone(), metrics.clone());
            tokio::spawn(async move {
                let permit = match room {
                    Some(permit) => Some(permit),
                    None => {
                        // Waiting no longer than a fetched chunk would wait for its reader:
                        // a stalled reader's queued chunks leave the queue instead of
                        // taking room, one after another, only to be let go.
                        let permit =
                            tokio::time::timeout(release_after, memory.acquire_many_owned(kib))
                                .await;
                        let mut state = slot.lock();
                        if !matches!(*state, SlotState::Queued) {
                            return; // its reader got there first and fetches it itself
                        }
                        match permit {
                            Ok(permit) => {
                                *state = SlotState::Fetching;
                                permit.ok()
                            }
                            Err(_) => {
                                *state = SlotState::Released;
                                return;
                            }
                        }
                    }
                };
                // A panic must still wake the reader, with an error rather than never.
                let result = std::panic::AssertUnwindSafe(fetch)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(ReadError::Internal("a read task panicked".into())));
                let held = result.as_ref().map_or(0, |bytes| bytes.len() as i64);
                // Room is held only for bytes held: an error or nothing holds none.
                let permit = permit.filter(|_| held > 0);
                {
                    // Every change to the slot and the count goes under its lock.
                    let mut state = slot.lock();
                    if !matches!(*state, SlotState::Fetching) {
                        return; // dropped by its stream while this finished
                    }
                    *state = SlotState::Ready(result, permit);
                    metrics.read_ahead_held(held);
                }
                slot.waker.wake();
                if held == 0 {
                    return;
                }
                tokio::time::sleep(release_after).await;
                let mut state = slot.lock();
                if matches!(*state, SlotState::Ready(..)) {
                    *state = SlotState::Released;
                    metrics.read_ahead_held(-held);
                    metrics.read_ahead_released();
                }
            })
        };
        Ahead {
            slot,
            slice,
            metrics,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Polled {
        self.slot.waker.register(cx.waker());
        let mut state = self.slot.lock();
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Ready(result, _permit) => {
                if let Ok(bytes) = &result {
                    self.metrics.read_ahead_held(-(bytes.len() as i64));
                }
                Polled::Ready(result)
            }
            SlotState::Released | SlotState::Queued => Polled::FetchHere(self.slice.clone()),
            SlotState::Fetching => {
                *state = SlotState::Fetching;
                Polled::Pending
            }
            SlotState::Taken => {
                Polled::Ready(Err(ReadError::Internal("a chunk was taken twice".into())))
            }
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        if let SlotState::Ready(Ok(bytes), _) = &*state {
            self.metrics.read_ahead_held(-(bytes.len() as i64));
        }
        // Gives back its memory now, whatever the task is doing.
        *state = SlotState::Taken;
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
    pub(super) fn new(
        handle: FileHandle,
        slices: Box<dyn Iterator<Item = SegmentSlice> + Send + Sync>,
        initial_window: usize,
        max_window: usize,
    ) -> ByteStream {
        ByteStream {
            handle,
            slices,
            pending: VecDeque::new(),
            window: initial_window.clamp(1, max_window),
            max_window,
            waited: false,
            ready_batches: 0,
            started: false,
            failed: false,
        }
    }

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
            let batching = this.handle.node().is_remote();
            let _batch_fetches: Vec<_> = batch
                .chunks(group)
                .filter(|run| batching && run.len() >= 2)
                .map(|run| {
                    let segments: Vec<SegmentIndex> = run.iter().map(|s| s.segment).collect();
                    this.handle.node().segment_run(&segments)
                })
                .collect();
            for (i, slice) in batch.into_iter().enumerate() {
                let chunk = if this.started {
                    Chunk::Ahead(Ahead::spawn(&this.handle, slice))
                } else {
                    this.started = true;
                    Chunk::Inline(this.handle.slice_chunk(slice))
                };
                this.pending.push_back((chunk, i % group == 0));
            }
        }
        let Some((chunk, opens_batch)) = this.pending.front_mut() else {
            return Poll::Ready(None);
        };
        let opens_batch = *opens_batch;
        let result = match chunk.poll(&this.handle, cx) {
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
