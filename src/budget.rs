//! A byte budget shared by a server's responses, that a client who stops reading cannot
//! keep from the others.
//!
//! Every piece of a response counts against the budget from when it is read until the
//! socket has taken it (the piece's `Bytes` is dropped). A response that must wait for room
//! longer than [`RECLAIM_AFTER`] closes the connection of the response whose client has
//! taken nothing for longest, if that is at least [`STALLED_AFTER`]: its pieces are dropped
//! with its connection and their bytes come back. Memory stays bounded by the budget, and a
//! client that stops reading delays the others by about a second, instead of for as long as
//! it keeps its connection open.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use crate::serving::ConnectionCloser;

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
    holders: Mutex<HashMap<u64, Arc<Holder>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// One response's share of the budget.
#[derive(Debug)]
struct Holder {
    closer: Option<ConnectionCloser>,
    /// Bytes read for this response and not yet taken by its socket.
    held: AtomicU64,
    /// When its socket last took a piece (ms since the budget's epoch).
    last_progress_ms: AtomicU64,
}

/// A response registered with the budget; unregistered when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<ResponseBudget>,
    id: u64,
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
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Holder>>> {
        // Every critical section leaves the map consistent whatever panicked in it.
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a response; `closer` closes its connection if it has to give way.
    pub fn lease(self: &Arc<Self>, closer: Option<ConnectionCloser>) -> Lease {
        let holder = Arc::new(Holder {
            closer,
            held: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(self.now_ms()),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, holder.clone());
        Lease {
            budget: self.clone(),
            id,
            holder,
        }
    }

    /// Closes the connection of the response stalled longest, other than `waiting`'s.
    fn reclaim(&self, waiting: &Holder) {
        let now = self.now_ms();
        let stalled = STALLED_AFTER.as_millis() as u64;
        let victim = {
            let holders = self.lock();
            holders
                .values()
                .filter(|h| !std::ptr::eq(h.as_ref(), waiting))
                .filter(|h| h.closer.is_some() && h.held.load(Ordering::Relaxed) > 0)
                .map(|h| (h.last_progress_ms.load(Ordering::Relaxed), h.clone()))
                .filter(|(at, _)| now.saturating_sub(*at) >= stalled)
                .min_by_key(|(at, _)| *at)
                .map(|(_, h)| h)
        };
        if let Some(victim) = victim {
            info!(
                held = victim.held.load(Ordering::Relaxed),
                "closing a connection whose client stopped reading: others wait for its memory"
            );
            if let Some(closer) = &victim.closer {
                closer.close();
            }
            // Not chosen again while its connection winds down.
            victim.held.store(0, Ordering::Relaxed);
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
        loop {
            let waiting = tokio::time::timeout(
                RECLAIM_AFTER,
                self.budget.bytes.clone().acquire_many_owned(bytes),
            );
            match waiting.await {
                Ok(permit) => {
                    let permit = permit.map_err(io::Error::other)?;
                    self.holder
                        .held
                        .fetch_add(u64::from(bytes), Ordering::Relaxed);
                    return Ok(Room {
                        permit: Arc::new(permit),
                        holder: self.holder.clone(),
                        budget: self.budget.clone(),
                    });
                }
                Err(_) => self.budget.reclaim(&self.holder),
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.lock().remove(&self.id);
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
    async fn a_stalled_holder_gives_way_to_a_waiting_one_and_an_active_one_does_not() {
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
