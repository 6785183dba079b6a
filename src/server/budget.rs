//! A byte budget shared by a server's responses, that a client who stops reading cannot
//! keep from the others.
//!
//! Every piece of a response counts against the budget from when it is read until the
//! socket has taken it (the piece's `Bytes` is dropped). While a response waits for room
//! longer than [`RECLAIM_AFTER`], the connections of responses that hold room and whose
//! clients have taken nothing for [`STALLED_AFTER`] are closed: their pieces are dropped with
//! their connections and their bytes come back. Memory stays bounded by the budget, and a
//! client that stops reading delays the others by about a second, instead of for as long as
//! it keeps its connection open.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use crate::server::ConnectionCloser;

/// How long a response waits for room before it takes some back from a stalled client.
pub const RECLAIM_AFTER: Duration = Duration::from_millis(500);
/// A response whose client took nothing for this long may lose its connection when others
/// wait for room.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// The budget. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ResponseBudget {
    bytes: Arc<Semaphore>,
    total: u32,
    /// Every response that holds or may hold room: registered until its lease and the last
    /// of its pieces are gone (pieces outlive the body in hyper's queue).
    holders: Mutex<HashMap<u64, Weak<Holder>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// When a connection was last closed to make room (ms since the epoch): one at a time.
    last_reclaim_ms: AtomicU64,
}

/// One response's share of the budget.
#[derive(Debug)]
struct Holder {
    id: u64,
    budget: Weak<ResponseBudget>,
    closer: Option<ConnectionCloser>,
    /// Bytes read for this response and not yet taken by its socket.
    held: AtomicU64,
    /// When its socket last took a piece, or it last got room after holding none (ms since
    /// the budget's epoch).
    last_progress_ms: AtomicU64,
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.upgrade() {
            budget.lock().remove(&self.id);
        }
    }
}

/// A response registered with the budget (until it and its pieces are gone).
#[derive(Debug)]
pub struct Lease {
    budget: Arc<ResponseBudget>,
    holder: Arc<Holder>,
}

impl ResponseBudget {
    /// A budget of `bytes` (at most 4 GiB).
    pub fn new(bytes: u64) -> Arc<ResponseBudget> {
        let total = bytes.min(u64::from(u32::MAX)) as u32;
        Arc::new(ResponseBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
            holders: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            last_reclaim_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<Holder>>> {
        // Every critical section leaves the map consistent whatever panicked in it.
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a response; `closer` closes its connection if it has to give way.
    pub fn lease(self: &Arc<Self>, closer: Option<ConnectionCloser>) -> Lease {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holder = Arc::new(Holder {
            id,
            budget: Arc::downgrade(self),
            closer,
            held: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(self.now_ms()),
        });
        self.lock().insert(id, Arc::downgrade(&holder));
        Lease {
            budget: self.clone(),
            holder,
        }
    }

    /// Closes the connections of every response, other than `waiting`'s, that holds room
    /// and whose client has taken nothing for [`STALLED_AFTER`]: while anyone waits for
    /// memory, clients that stopped reading lose it. One sweep per [`RECLAIM_AFTER`],
    /// however many wait.
    fn reclaim(&self, waiting: &Holder) {
        let now = self.now_ms();
        let spacing = RECLAIM_AFTER.as_millis() as u64;
        let last = self.last_reclaim_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < spacing {
            return;
        }
        self.last_reclaim_ms.store(now.max(1), Ordering::Relaxed);
        let stalled = STALLED_AFTER.as_millis() as u64;
        // Upgraded under the lock, looked at (and dropped, which may unregister one) after.
        let holders: Vec<Arc<Holder>> = self.lock().values().filter_map(Weak::upgrade).collect();
        let mut closed = 0;
        let mut freed = 0;
        for holder in &holders {
            let held = holder.held.load(Ordering::Relaxed);
            let idle = now.saturating_sub(holder.last_progress_ms.load(Ordering::Relaxed));
            if std::ptr::eq(holder.as_ref(), waiting) || held == 0 || idle < stalled {
                continue;
            }
            if let Some(closer) = &holder.closer {
                closer.close();
                // Not counted again while its connection winds down.
                holder.held.store(0, Ordering::Relaxed);
                closed += 1;
                freed += held;
            }
        }
        drop(holders);
        if closed > 0 {
            info!(
                connections = closed,
                bytes = freed,
                "closed connections whose clients stopped reading: others wait for their memory"
            );
        }
    }
}

impl Lease {
    /// Waits for room for `bytes` (taking some back from a stalled client if the wait is
    /// long), then wraps `parts` (whose lengths add up to `bytes`) so that each returns its
    /// bytes when dropped.
    pub async fn take(&self, bytes: u64) -> io::Result<Room> {
        let bytes = u32::try_from(bytes)
            .ok()
            .filter(|b| *b <= self.budget.total)
            .ok_or_else(|| io::Error::other("a piece larger than the whole budget"))?;
        let permit = match self.budget.bytes.clone().try_acquire_many_owned(bytes) {
            // Room at once, the usual case: no timer.
            Ok(permit) => permit,
            Err(_) => {
                // One acquire for the whole wait: the semaphore is fair, and a waiter keeps
                // its place in line while it asks stalled clients to make room.
                let acquire = self.budget.bytes.clone().acquire_many_owned(bytes);
                let mut acquire = std::pin::pin!(acquire);
                let start = tokio::time::Instant::now() + RECLAIM_AFTER;
                let mut ticks = tokio::time::interval_at(start, RECLAIM_AFTER);
                loop {
                    tokio::select! {
                        biased;
                        permit = &mut acquire => break permit.map_err(io::Error::other)?,
                        _ = ticks.tick() => self.budget.reclaim(&self.holder),
                    }
                }
            }
        };
        // Room after holding none starts the clock on its client anew: waiting for room is
        // not stalling.
        if self
            .holder
            .held
            .fetch_add(u64::from(bytes), Ordering::Relaxed)
            == 0
        {
            self.holder
                .last_progress_ms
                .store(self.budget.now_ms(), Ordering::Relaxed);
        }
        Ok(Room {
            permit: Arc::new(permit),
            holder: self.holder.clone(),
            budget: self.budget.clone(),
        })
    }
}

/// Room taken in the budget for one piece.
#[derive(Debug)]
pub struct Room {
    permit: Arc<OwnedSemaphorePermit>,
    holder: Arc<Holder>,
    budget: Arc<ResponseBudget>,
}

impl Room {
    /// `part` as `Bytes` that give their share of the room back when the socket took them.
    pub fn wrap(&self, part: Bytes) -> Bytes {
        Bytes::from_owner(Budgeted {
            bytes: part,
            _permit: self.permit.clone(),
            holder: self.holder.clone(),
            budget: self.budget.clone(),
        })
    }
}

/// A part of a response, counted against the budget until dropped.
struct Budgeted {
    bytes: Bytes,
    _permit: Arc<OwnedSemaphorePermit>,
    holder: Arc<Holder>,
    budget: Arc<ResponseBudget>,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        let len = self.bytes.len() as u64;
        let _ = self
            .holder
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(len))
            });
        self.holder
            .last_progress_ms
            .store(self.budget.now_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stopped_reading_loses_its_connection_when_others_wait() {
        let budget = ResponseBudget::new(100);
        let closer = ConnectionCloser::for_test();
        let stalled = budget.lease(Some(closer.clone()));
        let room = stalled.take(100).await.unwrap();
        // Its body ended (the lease is gone) but its last piece sits unsent in a queue.
        let queued = room.wrap(Bytes::from(vec![1u8; 100]));
        drop((room, stalled));
        let started = Instant::now();
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.lease(None).take(50).await.map(drop) }
        });
        while !closer.is_closed() {
            assert!(
                started.elapsed() < STALLED_AFTER + RECLAIM_AFTER * 4,
                "never reclaimed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            started.elapsed() >= STALLED_AFTER - RECLAIM_AFTER,
            "closed before it stalled"
        );
        // Closing the connection drops what it had queued; the waiter then gets its room.
        drop(queued);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn room_comes_back_when_the_socket_takes_a_piece_and_not_before() {
        let budget = ResponseBudget::new(100);
        let stalled = budget.lease(None);
        let room = stalled.take(100).await.unwrap();
        let held = room.wrap(Bytes::from(vec![1u8; 100]));
        // Without a connection to close, nothing gives way: the waiter keeps waiting.
        let other = budget.lease(None);
        let waited = tokio::time::timeout(RECLAIM_AFTER * 3, other.take(50)).await;
        assert!(waited.is_err());
        // Once the socket takes the piece, its room is back.
        drop((held, room));
        assert!(other.take(50).await.is_ok());
        assert_eq!(stalled.holder.held.load(Ordering::Relaxed), 0);
    }
}
