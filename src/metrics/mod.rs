//! Counters for operators: what the gateway served, how the grid answered, what the cache
//! saved. The gateway exposes them at `GET /metrics` in the OpenMetrics text format (what
//! Prometheus asks for; plain Prometheus text parsers read it too).
//!
//! Labels are a status code, a server's name, or a fixed reason: never a cap, a storage
//! index or a path a client chose, so neither secrets nor unbounded label sets can appear.
//!
//! The counters the library itself reads back (hedges, cache hits and misses) are kept
//! whatever the build; the exported families and `Metrics::render` come with the `metrics`
//! feature (on with `gateway`), so a library-only build does not compile an exporter.
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! use segvault::metrics::{Metrics, Rejection};
//! let metrics = Metrics::default();
//! metrics.share_rejected(Rejection::CorruptBlock);
//! assert!(metrics.render().contains("segvault_shares_rejected_total{reason=\"corrupt_block\"} 1"));
//! # }
//! ```

#[cfg(feature = "metrics")]
mod exported;

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The media type of [`Metrics::render`]'s output.
#[cfg(feature = "metrics")]
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a share's bytes were not used.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// An I/O error, timeout or malformed answer.
    Unavailable,
    /// Listed, then not found.
    Missing,
    /// The header, UEB or share chain is bad.
    CorruptShare,
    /// A block failed its hash check.
    CorruptBlock,
    /// The cap's parameters differ from the file's.
    AlteredCap,
    /// A disk-cache entry failed its check (it is dropped).
    CacheEntry,
}

impl Rejection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unavailable => "unavailable",
            Rejection::Missing => "missing",
            Rejection::CorruptShare => "corrupt_share",
            Rejection::CorruptBlock => "corrupt_block",
            Rejection::AlteredCap => "altered_cap",
            Rejection::CacheEntry => "cache_entry",
        }
    }
}

/// Why a cache entry left the cache.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used, to make room.
    Lru,
    /// Unused for longer than the cache's time to live.
    Expired,
    /// Unreadable or failed its check.
    Corrupt,
    /// Its file was gone (removed by hand).
    Missing,
}

impl Eviction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::Expired => "expired",
            Eviction::Corrupt => "corrupt",
            Eviction::Missing => "missing",
        }
    }
}

/// Every counter of one client (and the gateway over it). Cheap to update from any thread.
#[derive(Default)]
pub struct Metrics {
    hedges: AtomicU64,
    primary_blocks: AtomicU64,
    parity_blocks: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    read_ahead_bytes: AtomicI64,
    #[cfg(feature = "metrics")]
    exported: exported::Exported,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The OpenMetrics text of every counter ([`CONTENT_TYPE`]).
    #[cfg(feature = "metrics")]
    pub fn render(&self) -> String {
        self.exported.render()
    }

    /// A gateway response with `status` and `body_bytes` of body.
    pub fn http_response(&self, status: u16, body_bytes: u64) {
        #[cfg(feature = "metrics")]
        self.exported.http_response(status, body_bytes);
        let _ = (status, body_bytes);
    }

    /// A share read on `server` answered (with data or an error) after `elapsed`.
    pub fn share_request(&self, server: &str, elapsed: Duration) {
        #[cfg(feature = "metrics")]
        self.exported.share_request(server, elapsed);
        let _ = (server, elapsed);
    }

    /// Another share was asked because a request ran late.
    pub fn hedged(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.hedges.inc();
    }

    /// Share bytes were not used.
    pub fn share_rejected(&self, reason: Rejection) {
        #[cfg(feature = "metrics")]
        self.exported.share_rejected(reason);
        let _ = reason;
    }

    /// A segment was decoded from `primary` primary blocks and `parity` parity ones.
    pub fn blocks_used(&self, primary: u64, parity: u64) {
        self.primary_blocks.fetch_add(primary, Ordering::Relaxed);
        self.parity_blocks.fetch_add(parity, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.blocks_used(primary, parity);
    }

    /// Blocks decoded so far: (primary, parity). On a healthy grid nearly all are primary
    /// (no decoding); parity means readers routed around slow or failed servers.
    pub fn share_mix(&self) -> (u64, u64) {
        (
            self.primary_blocks.load(Ordering::Relaxed),
            self.parity_blocks.load(Ordering::Relaxed),
        )
    }

    /// Plaintext fetched ahead of its reader changed by `delta` bytes (ready and waiting for
    /// a consumer that has not taken it yet).
    pub fn read_ahead_held(&self, delta: i64) {
        self.read_ahead_bytes.fetch_add(delta, Ordering::Relaxed);
        // Added, not set: updates from several threads may land in any order.
        #[cfg(feature = "metrics")]
        self.exported.read_ahead_bytes.inc_by(delta);
    }

    /// Bytes fetched ahead and waiting for their readers now.
    pub fn read_ahead_bytes(&self) -> u64 {
        u64::try_from(self.read_ahead_bytes.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// A segment fetched ahead was let go because its reader stopped taking bytes.
    pub fn read_ahead_released(&self) {
        #[cfg(feature = "metrics")]
        self.exported.read_ahead_released.inc();
    }

    /// Hedged requests so far.
    pub fn hedges(&self) -> u64 {
        self.hedges.load(Ordering::Relaxed)
    }

    /// Blocks served from the cache and blocks it lacked.
    pub fn cache_lookups(&self, hits: u64, misses: u64) {
        self.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.cache_misses.fetch_add(misses, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.cache_lookups(hits, misses);
    }

    /// Cache hits and misses so far.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// A block entered the cache.
    pub fn cache_inserted(&self) {
        #[cfg(feature = "metrics")]
        self.exported.cache_insertions.inc();
    }

    /// Entries left the cache.
    pub fn cache_evicted(&self, reason: Eviction, entries: u64) {
        #[cfg(feature = "metrics")]
        self.exported.cache_evicted(reason, entries);
        let _ = (reason, entries);
    }

    /// The cache now holds `entries` entries of `bytes` bytes in all.
    pub fn cache_size(&self, entries: usize, bytes: u64) {
        #[cfg(feature = "metrics")]
        self.exported.cache_size(entries, bytes);
        let _ = (entries, bytes);
    }

    /// A background repair event (`queued`, `skipped`, `dropped`, or an outcome).
    pub fn background_repair(&self, event: &'static str) {
        #[cfg(feature = "metrics")]
        self.exported.background_repair(event);
        let _ = event;
    }

    /// `files` file nodes hold `bytes` of metadata.
    pub fn open_files(&self, files: usize, bytes: u64) {
        #[cfg(feature = "metrics")]
        self.exported.open_files(files, bytes);
        let _ = (files, bytes);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_labels() {
        let m = Metrics::default();
        m.http_response(206, 65536);
        m.http_response(206, 10);
        m.share_request("http://127.0.0.1:7001", Duration::from_millis(3));
        m.hedged();
        m.cache_lookups(3, 1);
        m.cache_evicted(Eviction::Lru, 2);
        m.cache_size(5, 1000);
        m.open_files(2, 4096);
        m.blocks_used(3, 0);
        m.blocks_used(2, 1);
        m.background_repair("queued");
        m.background_repair("repaired");
        let text = m.render();
        for line in [
            "segvault_http_requests_total{status=\"206\"} 2",
            "segvault_http_response_body_bytes_total 65546",
            "segvault_share_request_seconds_count{server=\"http://127.0.0.1:7001\"} 1",
            "segvault_hedged_requests_total 1",
            "segvault_cache_hits_total 3",
            "segvault_cache_misses_total 1",
            "segvault_cache_evictions_total{reason=\"lru\"} 2",
            "segvault_cache_bytes 1000",
            "segvault_cache_entries 5",
            "segvault_open_files 2",
            "segvault_open_files_bytes 4096",
            "segvault_blocks_used_total{kind=\"primary\"} 5",
            "segvault_blocks_used_total{kind=\"parity\"} 1",
            "segvault_background_repairs_total{event=\"queued\"} 1",
            "segvault_background_repairs_total{event=\"repaired\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.share_mix(), (5, 1));
    }
}
