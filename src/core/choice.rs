//! Which shares to ask for a segment's blocks, and when a request is late enough to ask one
//! more: pure policy over numbers the engine measures (per-server latency, requests in
//! flight, failure marks).
//!
//! A candidate's cost is the time its block is expected to take: the server's smoothed
//! latency, stretched by the requests already waiting on it (so read-ahead spreads over more
//! than k servers), plus, for a parity share, the extra work of decoding. Primary shares are
//! therefore preferred when servers are close, and a fast parity share beats a slow primary.
//! Servers marked failing or slow come after every healthy one, whatever their numbers.

use std::time::Duration;

use super::geometry::ShareNum;

/// Smoothed latency and its mean deviation (RFC 6298's SRTT and RTTVAR).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyEstimate {
    /// Smoothed latency; `None` before the first sample.
    pub smoothed: Option<Duration>,
    /// Mean deviation of the samples from the smoothed latency.
    pub deviation: Duration,
}

impl LatencyEstimate {
    /// Takes one sample (gains 1/8 and 1/4, as TCP does).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use segvault::core::choice::LatencyEstimate;
    /// let mut estimate = LatencyEstimate::default();
    /// for _ in 0..50 {
    ///     estimate.observe(Duration::from_millis(4));
    /// }
    /// assert!(estimate.smoothed.unwrap().abs_diff(Duration::from_millis(4)) < Duration::from_micros(10));
    /// ```
    pub fn observe(&mut self, sample: Duration) {
        match self.smoothed {
            None => {
                self.smoothed = Some(sample);
                self.deviation = sample / 2;
            }
            Some(smoothed) => {
                self.deviation = (self.deviation * 3 + smoothed.abs_diff(sample)) / 4;
                self.smoothed = Some((smoothed * 7 + sample) / 8);
            }
        }
    }
}

/// What is known about the server holding a candidate share.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServerView {
    /// Its latency so far.
    pub latency: LatencyEstimate,
    /// Requests to it in flight now.
    pub in_flight: u32,
    /// It failed recently (error, timeout, broken answer): use only if nothing else will do.
    pub failing: bool,
    /// A request to it ran late recently (it was hedged): use only after healthy servers.
    pub slow: bool,
    /// On this machine (a directory): its requests in flight share the disks and cores of
    /// every other local store, so they do not make it slower than its neighbours, and load
    /// is no reason to leave a primary for parity (which costs decoding on those same
    /// cores). Only servers across a network are stretched by their load.
    pub local: bool,
    /// Time since its latency was last measured. An estimate nobody refreshes (a server
    /// passed over since a slow spell) fades toward the best server's, so the server is
    /// asked again and measured anew instead of being shunned on old numbers.
    pub idle: Duration,
}

/// One (server, share) pair that could serve a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The share.
    pub share: ShareNum,
    /// Whether it is a primary share (its block is ciphertext as is; no decoding).
    pub primary: bool,
    /// This share on this server failed recently (missing, corrupt).
    pub avoided: bool,
    /// How often this share on this server has failed (halved on each success).
    pub failures: u32,
    /// Its server.
    pub server: ServerView,
}

/// The knobs of the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    /// Extra time a parity block is charged over a primary one: decoding, hashing the rebuilt
    /// blocks, and the hash nodes a share not read before still lacks. Set well above
    /// local-disk jitter (tens of µs), so that primaries are not traded for parity on noise;
    /// on a local grid, where decoding competes for the same cores, that is the right call.
    pub parity_cost: Duration,
    /// [`parity_cost`](Self::parity_cost) for a share on a local store. Decoding runs on the
    /// cores that local reads wait for, and differences between local stores' latencies
    /// are mostly the reader's own queueing, not the disks': a local primary is left for
    /// parity only when it is this much slower (a stalled one is hedged and marked anyway).
    pub local_parity_cost: Duration,
    /// How much each request already in flight to a server stretches its expected latency
    /// (0.5: a server with two requests waiting looks twice as slow).
    pub load_weight: f64,
    /// A request is never late before this.
    pub hedge_floor: Duration,
    /// When a request to a server with no latency history is late.
    pub hedge_unknown: Duration,
    /// A request is always late after this.
    pub hedge_ceiling: Duration,
    /// How fast an idle server's excess latency over the best server's fades (see
    /// [`ServerView::idle`]): halved every this long. A primary inflated tenfold by a
    /// moment's load is asked again within about a second of its last sample.
    pub idle_half_life: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            parity_cost: Duration::from_millis(1),
            local_parity_cost: Duration::from_millis(10),
            load_weight: 0.5,
            hedge_floor: Duration::from_millis(25),
            hedge_unknown: Duration::from_millis(250),
            hedge_ceiling: Duration::from_secs(5),
            idle_half_life: Duration::from_millis(200),
        }
    }
}

/// Expected time for `candidate` to deliver a block. Servers without history are assumed to
/// be as fast as `optimistic` (the best known), so that they get tried.
fn expected(candidate: &Candidate, optimistic: Duration, policy: &Policy) -> f64 {
    let best = optimistic.as_secs_f64();
    let latency = match candidate.server.latency.smoothed {
        None => best,
        Some(smoothed) => {
            let excess = (smoothed.as_secs_f64() - best).max(0.0);
            let half_lives =
                candidate.server.idle.as_secs_f64() / policy.idle_half_life.as_secs_f64().max(1e-6);
            best + excess * 0.5f64.powf(half_lives)
        }
    };
    let load = if candidate.server.local {
        0.0
    } else {
        policy.load_weight * f64::from(candidate.server.in_flight)
    };
    let stretched = latency * (1.0 + load);
    let parity = if candidate.primary {
        0.0
    } else if candidate.server.local {
        policy.local_parity_cost.as_secs_f64()
    } else {
        policy.parity_cost.as_secs_f64()
    };
    stretched + parity
}

/// Orders candidates best first: healthy before slow before failing, then by expected cost,
/// then by fewer failures, share number and position (so equal candidates keep a stable,
/// primary-first order).
pub fn rank(candidates: &[Candidate], policy: &Policy) -> Vec<usize> {
    let optimistic = candidates
        .iter()
        .filter_map(|c| c.server.latency.smoothed)
        .min()
        .unwrap_or(Duration::ZERO);
    let tier =
        |c: &Candidate| u8::from(c.server.slow) + 2 * u8::from(c.avoided || c.server.failing);
    let costs: Vec<f64> = candidates
        .iter()
        .map(|c| expected(c, optimistic, policy))
        .collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        tier(ca)
            .cmp(&tier(cb))
            .then_with(|| costs[a].total_cmp(&costs[b]))
            .then_with(|| ca.failures.cmp(&cb.failures))
            .then_with(|| ca.share.cmp(&cb.share))
            .then_with(|| a.cmp(&b))
    });
    order
}

/// Picks up to `count` candidates holding distinct shares, best first (see [`rank`]).
///
/// ```
/// # use segvault::core::choice::*;
/// # use segvault::core::geometry::ShareNum;
/// let candidate = |share, primary| Candidate {
///     share: ShareNum(share), primary, avoided: false, failures: 0, server: ServerView::default(),
/// };
/// let all = [candidate(5, false), candidate(1, true), candidate(0, true), candidate(1, true)];
/// assert_eq!(choose(&all, 2, &Policy::default()), vec![2, 1]);
/// ```
pub fn choose(candidates: &[Candidate], count: usize, policy: &Policy) -> Vec<usize> {
    let mut picked = Vec::with_capacity(count);
    let mut shares = Vec::with_capacity(count);
    for i in rank(candidates, policy) {
        if picked.len() == count {
            break;
        }
        if !shares.contains(&candidates[i].share) {
            shares.push(candidates[i].share);
            picked.push(i);
        }
    }
    picked
}

/// How long a block request to `server` may run before it counts as late and one more share
/// is asked: its smoothed latency plus four deviations (TCP's retransmission timeout),
/// within the policy's floor and ceiling.
pub fn hedge_delay(server: &LatencyEstimate, policy: &Policy) -> Duration {
    let delay = match server.smoothed {
        None => policy.hedge_unknown,
        Some(smoothed) => smoothed.saturating_add(server.deviation.saturating_mul(4)),
    };
    delay.clamp(
        policy.hedge_floor,
        policy.hedge_ceiling.max(policy.hedge_floor),
    )
}

/// Segments a stream should keep in flight to read at `target_rate` bytes per second from
/// servers `latency` away: each batch costs a round trip, so the window must hold
/// `latency × rate` bytes (the bandwidth-delay product) to keep the pipe full. Never below
/// `floor` (what a loopback grid needs) nor above `ceiling` (the memory bound per read).
///
/// ```
/// # use std::time::Duration;
/// # use segvault::core::choice::read_ahead_window;
/// let segment = 128 << 10;
/// // A bucket 30 ms away: 62 segments (7.7 MiB) in flight to read 256 MiB/s.
/// assert_eq!(read_ahead_window(Some(Duration::from_millis(30)), segment, 256 << 20, 16, 64), 62);
/// // Storage nodes on loopback: the floor.
/// assert_eq!(read_ahead_window(Some(Duration::from_micros(500)), segment, 256 << 20, 16, 64), 16);
/// assert_eq!(read_ahead_window(None, segment, 256 << 20, 16, 64), 16);
/// ```
pub fn read_ahead_window(
    latency: Option<Duration>,
    segment_size: u64,
    target_rate: u64,
    floor: usize,
    ceiling: usize,
) -> usize {
    let ceiling = ceiling.max(1);
    let floor = floor.clamp(1, ceiling);
    let Some(latency) = latency else {
        return floor;
    };
    let bytes = latency.as_secs_f64() * target_rate as f64;
    let segments = (bytes / segment_size.max(1) as f64).ceil();
    if segments.is_finite() && segments < ceiling as f64 {
        (segments as usize).max(floor)
    } else {
        ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(ms: u64) -> ServerView {
        let mut latency = LatencyEstimate::default();
        latency.observe(Duration::from_millis(ms));
        ServerView {
            latency,
            ..ServerView::default()
        }
    }

    fn candidate(share: u8, k: u8, server: ServerView) -> Candidate {
        Candidate {
            share: ShareNum(share),
            primary: share < k,
            avoided: false,
            failures: 0,
            server,
        }
    }

    #[test]
    fn primaries_win_when_close_and_fast_parity_beats_slow_primaries() {
        let policy = Policy::default();
        let even: Vec<_> = (0..10).rev().map(|s| candidate(s, 3, server(2))).collect();
        let picked: Vec<u8> = choose(&even, 3, &policy)
            .iter()
            .map(|&i| even[i].share.0)
            .collect();
        assert_eq!(picked, vec![0, 1, 2]);

        let mut uneven = even.clone();
        uneven[9].server = server(40); // share 0 is slow
        let picked: Vec<u8> = choose(&uneven, 3, &policy)
            .iter()
            .map(|&i| uneven[i].share.0)
            .collect();
        assert_eq!(picked, vec![1, 2, 3]);
    }

    #[test]
    fn load_spreads_reads_over_more_servers() {
        let policy = Policy::default();
        let mut all: Vec<_> = (0..10).map(|s| candidate(s, 3, server(2))).collect();
        for c in &mut all[..3] {
            c.server.in_flight = 3;
        }
        let picked: Vec<u8> = choose(&all, 3, &policy)
            .iter()
            .map(|&i| all[i].share.0)
            .collect();
        assert_eq!(picked, vec![3, 4, 5]);
    }

    #[test]
    fn load_on_local_stores_does_not_push_reads_onto_parity() {
        let policy = Policy::default();
        let mut all: Vec<_> = (0..10).map(|s| candidate(s, 3, server(2))).collect();
        for c in &mut all {
            c.server.local = true;
        }
        for c in &mut all[..3] {
            c.server.in_flight = 3;
        }
        let picked: Vec<u8> = choose(&all, 3, &policy)
            .iter()
            .map(|&i| all[i].share.0)
            .collect();
        assert_eq!(picked, vec![0, 1, 2]);
    }

    #[test]
    fn marked_servers_and_shares_come_last() {
        let policy = Policy::default();
        let mut all: Vec<_> = (0..5).map(|s| candidate(s, 3, server(1))).collect();
        all[0].server.failing = true;
        all[1].server.slow = true;
        all[2].avoided = true;
        all[4].server = server(500);
        let order: Vec<u8> = rank(&all, &policy)
            .iter()
            .map(|&i| all[i].share.0)
            .collect();
        assert_eq!(order, vec![3, 4, 1, 0, 2]);
    }

    #[test]
    fn unknown_servers_are_assumed_as_fast_as_the_best() {
        let policy = Policy::default();
        let all = [
            candidate(0, 3, server(10)),
            candidate(1, 3, ServerView::default()),
            candidate(2, 3, server(3)),
        ];
        let order: Vec<u8> = rank(&all, &policy)
            .iter()
            .map(|&i| all[i].share.0)
            .collect();
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn a_primary_passed_over_since_a_slow_spell_is_asked_again() {
        let policy = Policy::default();
        let mut all: Vec<_> = (0..10).map(|s| candidate(s, 3, server(1))).collect();
        // Share 0's server was measured at 20 ms during a spell of load, then passed over.
        all[0].server = server(20);
        let picked = |all: &[Candidate]| -> Vec<u8> {
            let mut shares: Vec<u8> = choose(all, 3, &policy)
                .iter()
                .map(|&i| all[i].share.0)
                .collect();
            shares.sort_unstable();
            shares
        };
        assert_eq!(picked(&all), vec![1, 2, 3], "fresh: the slow primary loses");
        all[0].server.idle = Duration::from_millis(200);
        assert_eq!(
            picked(&all),
            vec![1, 2, 3],
            "one half-life: still worse than parity"
        );
        all[0].server.idle = Duration::from_secs(1);
        assert_eq!(picked(&all), vec![0, 1, 2], "after a second: asked again");
        // The others are being measured all along: their idle time stays near zero.
        all[0].server = server(20);
        all[0].server.idle = Duration::from_secs(3600);
        assert_eq!(picked(&all), vec![0, 1, 2]);
    }

    #[test]
    fn hedge_delays_follow_the_server_within_bounds() {
        let policy = Policy::default();
        assert_eq!(
            hedge_delay(&LatencyEstimate::default(), &policy),
            policy.hedge_unknown
        );
        let mut steady = LatencyEstimate::default();
        for _ in 0..100 {
            steady.observe(Duration::from_micros(300));
        }
        assert_eq!(hedge_delay(&steady, &policy), policy.hedge_floor);
        let mut wan = LatencyEstimate::default();
        for ms in [80, 120, 90, 110, 100, 95, 105] {
            wan.observe(Duration::from_millis(ms));
        }
        let delay = hedge_delay(&wan, &policy);
        assert!(
            delay > Duration::from_millis(110) && delay < Duration::from_millis(400),
            "{delay:?}"
        );
        let mut stalled = LatencyEstimate::default();
        stalled.observe(Duration::from_secs(600));
        assert_eq!(hedge_delay(&stalled, &policy), policy.hedge_ceiling);
    }
}
