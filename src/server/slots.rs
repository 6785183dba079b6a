//! Connection slots (see the [module above](super)): which connection gives way when every
//! slot is taken, and the bookkeeping that tells idle connections from busy ones.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;
use tracing::debug;

use super::Body;

/// One accepted connection, as the slot table sees it.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) id: u64,
    /// Milliseconds since the slot table's epoch.
    pub(super) accepted_ms: u64,
    /// Requests whose headers arrived on this connection.
    pub(super) requests: AtomicU64,
    /// Requests being answered (0 or 1 over HTTP/1.1).
    pub(super) in_flight: AtomicU64,
    /// When the last request finished (ms since the epoch); the accept time before that.
    pub(super) idle_since_ms: AtomicU64,
    pub(super) evicted: AtomicBool,
    pub(super) evict: Notify,
}

impl Connection {
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.evicted.load(Ordering::Acquire)
    }

    /// Completes once the connection was chosen to make room for another.
    pub(super) async fn evicted(&self) {
        loop {
            let notified = self.evict.notified();
            if self.evicted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The connection slots of one server (see the module documentation).
#[derive(Debug)]
pub(super) struct Slots {
    pub(super) max: usize,
    pub(super) epoch: Instant,
    pub(super) open: Mutex<HashMap<u64, Arc<Connection>>>,
    pub(super) next_id: AtomicU64,
    /// Woken when a slot frees or a connection becomes idle.
    pub(super) changed: Notify,
}

impl Slots {
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // The map stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection: a free one, or one an idle connection gives up.
    pub(super) fn admit(&self) -> Option<Arc<Connection>> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let victim = self.longest_idle(&open)?;
            if let Some(victim) = open.remove(&victim) {
                close(&victim);
                debug!(
                    requests = victim.requests.load(Ordering::Relaxed),
                    "all connection slots taken: closing the longest-idle connection"
                );
            }
        }
        let now = self.now_ms();
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            accepted_ms: now,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(now),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        open.insert(connection.id, connection.clone());
        Some(connection)
    }

    /// Waits until [`admit`](Self::admit) succeeds: a slot frees, a connection goes idle,
    /// or an idle one's grace ends.
    pub(super) async fn admit_when_possible(&self) -> Arc<Connection> {
        loop {
            let changed = self.changed.notified();
            if let Some(connection) = self.admit() {
                return connection;
            }
            let _ = tokio::time::timeout(Duration::from_millis(GRACE_MS), changed).await;
        }
    }

    /// Which idle connection gives way: one that never completed a request's headers (the
    /// oldest first), else the keep-alive connection idle longest. A new connection is spared
    /// for [`GRACE_MS`], one whose response just ended for [`SERVED_GRACE_MS`].
    pub(super) fn longest_idle(&self, open: &HashMap<u64, Arc<Connection>>) -> Option<u64> {
        let now = self.now_ms();
        open.values()
            .filter(|c| c.is_idle())
            .filter_map(|c| {
                let served = c.requests.load(Ordering::Relaxed) > 0;
                let since = if served {
                    c.idle_since_ms.load(Ordering::Relaxed)
                } else {
                    c.accepted_ms
                };
                let grace = if served { SERVED_GRACE_MS } else { GRACE_MS };
                (now.saturating_sub(since) >= grace).then_some(((served, since), c.id))
            })
            .min()
            .map(|(_, id)| id)
    }

    /// Closes the longest-idle connection (out of file descriptors). Whether there was one.
    pub(super) fn evict_one(&self) -> bool {
        let mut open = self.lock();
        let Some(victim) = self.longest_idle(&open).and_then(|id| open.remove(&id)) else {
            return false;
        };
        close(&victim);
        drop(open);
        self.changed.notify_one();
        true
    }

    pub(super) fn release(&self, connection: &Connection) {
        self.lock().remove(&connection.id);
        self.changed.notify_one();
    }
}

/// How long a new connection is spared when room is made for another (a client sends its
/// request within a round trip).
pub(super) const GRACE_MS: u64 = 250;
/// How long a connection whose response ended is spared: the response's last bytes may still
/// be on their way out of hyper's and the kernel's buffers to a slow client.
pub(super) const SERVED_GRACE_MS: u64 = 2_000;

pub(super) fn close(connection: &Connection) {
    connection.evicted.store(true, Ordering::Release);
    connection.evict.notify_one();
}

/// Gives a connection's slot back when its task ends, however it ends.
pub(super) struct SlotGuard {
    pub(super) slots: Arc<Slots>,
    pub(super) connection: Arc<Connection>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(&self.connection);
    }
}

/// Lets a request's handler close its own connection, busy or not: a storage node takes
/// back memory from a client that stopped reading while others wait for it. Found in each
/// request's extensions.
#[derive(Clone, Debug)]
pub struct ConnectionCloser {
    pub(super) slots: Arc<Slots>,
    pub(super) connection: Arc<Connection>,
}

impl ConnectionCloser {
    /// A closer of a connection of a server of one slot, for tests.
    #[cfg(test)]
    pub(crate) fn for_test() -> ConnectionCloser {
        let slots = Arc::new(Slots::new(1));
        let connection = slots.admit().expect("an empty server has room");
        ConnectionCloser { slots, connection }
    }

    /// Whether [`close`](Self::close) was called, for tests.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.connection.evicted.load(Ordering::Acquire)
    }

    /// Closes the connection (at once: a response in flight is cut off) and frees its slot.
    pub fn close(&self) {
        self.slots.lock().remove(&self.connection.id);
        close(&self.connection);
        self.slots.changed.notify_one();
    }
}

/// Marks a request in flight on its connection until dropped (when the response body is
/// done or abandoned).
pub(super) struct RequestInFlight {
    pub(super) slots: Arc<Slots>,
    pub(super) connection: Arc<Connection>,
    done: AtomicBool,
}

impl RequestInFlight {
    pub(super) fn begin(slots: &Arc<Slots>, connection: &Arc<Connection>) -> RequestInFlight {
        connection.requests.fetch_add(1, Ordering::Relaxed);
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestInFlight {
            slots: slots.clone(),
            connection: connection.clone(),
            done: AtomicBool::new(false),
        }
    }

    pub(super) fn finish(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        self.connection
            .idle_since_ms
            .store(self.slots.now_ms(), Ordering::Relaxed);
        if self.connection.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slots.changed.notify_one();
        }
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A response body that keeps its request counted as in flight until it ends.
pub(super) struct Tracked {
    pub(super) inner: Body,
    pub(super) request: RequestInFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.request.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
