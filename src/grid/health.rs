//! What readers have learned about each server of a grid, shared by every file they read
//! (it lives with the [`Server`](crate::grid::Server), below the engine that updates it): latency,
//! requests in flight, and expiring marks for servers that failed or ran late. Marks expire,
//! so a server that recovers is used again (Tahoe-LAFS #1679 kept them for the node's life).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::choice::{LatencyEstimate, ServerView};

/// One server's record. See the module documentation.
#[derive(Debug, Default)]
pub struct ServerHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    latency: LatencyEstimate,
    in_flight: u32,
    failing_until: Option<Instant>,
    slow_until: Option<Instant>,
    /// Spells of lateness since the server last answered a request.
    late_streak: u32,
    /// When its latency was last measured.
    last_sample: Option<Instant>,
    last_problem: Option<String>,
    requests: u64,
    failures: u64,
    hedges: u64,
}

/// A snapshot of a server's record, for reports and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthSnapshot {
    /// Smoothed block-request latency, if measured.
    pub latency: Option<Duration>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Marked failing now.
    pub failing: bool,
    /// Marked slow now.
    pub slow: bool,
    /// The last failure, if any.
    pub last_problem: Option<String>,
    /// Requests made.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Requests that ran late and made the engine ask another share.
    pub hedges: u64,
}

/// A request in flight to a server; it stops counting when dropped (completed or cancelled).
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    health: &'a ServerHealth,
    started: Instant,
}

impl InFlight<'_> {
    /// When the request started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.health.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl ServerHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request as in flight until the returned guard drops.
    pub(crate) fn begin(&self) -> InFlight<'_> {
        let mut state = self.lock();
        state.in_flight += 1;
        state.requests += 1;
        InFlight {
            health: self,
            started: Instant::now(),
        }
    }

    /// A block request succeeded after `elapsed`.
    pub(crate) fn succeeded(&self, elapsed: Duration) {
        let mut state = self.lock();
        state.latency.observe(elapsed);
        state.last_sample = Some(Instant::now());
        state.failing_until = None;
        state.late_streak = 0;
    }

    /// A request failed in a way that says the server is unwell; avoid it for `ttl`.
    pub(crate) fn failed(&self, problem: &str, ttl: Duration) {
        let mut state = self.lock();
        state.failures += 1;
        state.failing_until = Some(Instant::now() + ttl);
        state.last_problem = Some(problem.to_owned());
    }

    /// A request succeeded but its time says nothing about a block's (a batch of blocks).
    pub(crate) fn answered(&self) {
        let mut state = self.lock();
        // In use: its estimate is not one left behind by a server passed over.
        state.last_sample = Some(Instant::now());
        state.failing_until = None;
        state.late_streak = 0;
    }

    /// A request ran past its hedge delay; prefer other servers for `ttl`, doubled for each
    /// spell of lateness since the server last answered (up to 64×): a server that stays
    /// silent (stopped, partitioned) is probed, and costs a hedge delay, ever more rarely.
    /// Requests that run late together (a read-ahead window in flight when the server
    /// stalled) are one spell: only a probe after the mark expired doubles it, so a moment's
    /// load does not bench a server for minutes.
    pub(crate) fn ran_late(&self, ttl: Duration) {
        let mut state = self.lock();
        state.hedges += 1;
        let now = Instant::now();
        if state.slow_until.is_some_and(|until| until > now) {
            return;
        }
        let backoff = 1u32 << state.late_streak.min(6);
        state.late_streak = state.late_streak.saturating_add(1);
        state.slow_until = Some(now + ttl.saturating_mul(backoff));
    }

    /// The latency estimate.
    pub(crate) fn latency(&self) -> LatencyEstimate {
        self.lock().latency
    }

    /// What share choice needs to know, as of `now`.
    pub(crate) fn view(&self, now: Instant) -> ServerView {
        let state = self.lock();
        ServerView {
            latency: state.latency,
            in_flight: state.in_flight,
            failing: state.failing_until.is_some_and(|t| t > now),
            slow: state.slow_until.is_some_and(|t| t > now),
            // Whether the store is on this machine is the grid's to say (see `Server`).
            local: false,
            idle: state
                .last_sample
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
        }
    }

    /// A snapshot for reports.
    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        let state = self.lock();
        HealthSnapshot {
            latency: state.latency.smoothed,
            in_flight: state.in_flight,
            failing: state.failing_until.is_some_and(|t| t > now),
            slow: state.slow_until.is_some_and(|t| t > now),
            last_problem: state.last_problem.clone(),
            requests: state.requests,
            failures: state.failures,
            hedges: state.hedges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stays_late_is_probed_ever_more_rarely() {
        let health = ServerHealth::default();
        let ttl = Duration::from_secs(10);
        let slow_for = |health: &ServerHealth| {
            let until = health.lock().slow_until.unwrap();
            until.saturating_duration_since(Instant::now())
        };
        health.ran_late(ttl);
        assert!(slow_for(&health) <= ttl);
        // Requests late together are one spell: the mark does not grow.
        for _ in 0..16 {
            health.ran_late(ttl);
        }
        assert!(slow_for(&health) <= ttl);
        // Each probe after the mark expired that runs late again doubles it, up to 64×.
        tokio::time::advance(slow_for(&health) + Duration::from_millis(1)).await;
        health.ran_late(ttl);
        assert!(slow_for(&health) > ttl * 3 / 2);
        for _ in 0..20 {
            tokio::time::advance(slow_for(&health) + Duration::from_millis(1)).await;
            health.ran_late(ttl);
        }
        assert!(slow_for(&health) <= ttl * 64);
        assert!(slow_for(&health) > ttl * 60);
        tokio::time::advance(slow_for(&health) + Duration::from_millis(1)).await;
        health.succeeded(Duration::from_millis(1));
        health.ran_late(ttl);
        assert!(slow_for(&health) <= ttl, "an answer resets the backoff");
        assert!(health.view(Instant::now()).slow);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_not_measured_lately_says_how_long() {
        let health = ServerHealth::default();
        assert_eq!(health.view(Instant::now()).idle, Duration::ZERO);
        health.succeeded(Duration::from_millis(3));
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(health.view(Instant::now()).idle, Duration::from_millis(700));
        health.succeeded(Duration::from_millis(3));
        assert_eq!(health.view(Instant::now()).idle, Duration::ZERO);
    }
}
