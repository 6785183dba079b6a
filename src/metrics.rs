//! Counters for operators: what the gateway served, how the grid answered, what the cache
//! saved. The gateway exposes them at `GET /metrics` in the OpenMetrics text format (what
//! Prometheus asks for; plain Prometheus text parsers read it too).
//!
//! Labels are a status code, a server's name, or a fixed reason: never a cap, a storage
//! index or a path a client chose, so neither secrets nor unbounded label sets can appear.
//!
//! ```
//! use segvault::metrics::{Metrics, Rejection};
//! let metrics = Metrics::default();
//! metrics.share_rejected(Rejection::CorruptBlock);
//! assert!(metrics.render().contains("segvault_shares_rejected_total{reason=\"corrupt_block\"} 1"));
//! ```

use std::fmt;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a share's bytes were not used.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Why a cache entry left the cache.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

impl EncodeLabelValue for Eviction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Rejection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    reason: Eviction,
}

type LatencyFamily = Family<ServerLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s: a page-cache hit on a local store up to a request near its timeout.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every counter of one client (and the gateway over it). Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<StatusLabels, Counter>,
    http_bytes: Counter,
    share_requests: LatencyFamily,
    hedges: Counter,
    shares_rejected: Family<ReasonLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_insertions: Counter,
    cache_evictions: Family<EvictionLabels, Counter>,
    cache_bytes: Gauge<i64, AtomicI64>,
    cache_entries: Gauge<i64, AtomicI64>,
    open_files: Gauge<i64, AtomicI64>,
    metadata_bytes: Gauge<i64, AtomicI64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("segvault");
        let http_requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Gateway requests answered, by status code",
            http_requests.clone(),
        );
        let http_bytes = Counter::default();
        registry.register(
            "http_response_body_bytes",
            "Body bytes the gateway sent",
            http_bytes.clone(),
        );
        let share_requests = LatencyFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "share_request_seconds",
            "Time to answer each share read, by server",
            share_requests.clone(),
        );
        let hedges = Counter::default();
        registry.register(
            "hedged_requests",
            "Extra share requests sent because one ran late",
            hedges.clone(),
        );
        let shares_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "shares_rejected",
            "Share reads whose bytes were not used, by reason",
            shares_rejected.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Blocks read from the disk cache (verified)",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Blocks a cached read had to fetch from the grid",
            cache_misses.clone(),
        );
        let cache_insertions = Counter::default();
        registry.register(
            "cache_insertions",
            "Blocks written to the disk cache",
            cache_insertions.clone(),
        );
        let cache_evictions = Family::<EvictionLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Entries removed from the disk cache, by reason",
            cache_evictions.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes of entries in the disk cache",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the disk cache",
            cache_entries.clone(),
        );
        let open_files = Gauge::default();
        registry.register(
            "open_files",
            "File nodes held in memory",
            open_files.clone(),
        );
        let metadata_bytes = Gauge::default();
        registry.register(
            "open_files_bytes",
            "Approximate memory of the open file nodes' metadata",
            metadata_bytes.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_bytes,
            share_requests,
            hedges,
            shares_rejected,
            cache_hits,
            cache_misses,
            cache_insertions,
            cache_evictions,
            cache_bytes,
            cache_entries,
            open_files,
            metadata_bytes,
        }
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The OpenMetrics text of every counter ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A gateway response with `status` and `body_bytes` of body.
    pub fn http_response(&self, status: u16, body_bytes: u64) {
        self.http_requests
            .get_or_create(&StatusLabels { status })
            .inc();
        self.http_bytes.inc_by(body_bytes);
    }

    /// A share read on `server` answered (with data or an error) after `elapsed`.
    pub fn share_request(&self, server: &str, elapsed: Duration) {
        self.share_requests
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Another share was asked because a request ran late.
    pub fn hedged(&self) {
        self.hedges.inc();
    }

    /// Share bytes were not used.
    pub fn share_rejected(&self, reason: Rejection) {
        self.shares_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Hedged requests so far.
    pub fn hedges(&self) -> u64 {
        self.hedges.get()
    }

    /// Blocks served from the cache and blocks it lacked.
    pub fn cache_lookups(&self, hits: u64, misses: u64) {
        self.cache_hits.inc_by(hits);
        self.cache_misses.inc_by(misses);
    }

    /// Cache hits and misses so far.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        (self.cache_hits.get(), self.cache_misses.get())
    }

    /// A block entered the cache.
    pub fn cache_inserted(&self) {
        self.cache_insertions.inc();
    }

    /// Entries left the cache.
    pub fn cache_evicted(&self, reason: Eviction, entries: u64) {
        self.cache_evictions
            .get_or_create(&EvictionLabels { reason })
            .inc_by(entries);
    }

    /// The cache now holds `entries` entries of `bytes` bytes in all.
    pub fn cache_size(&self, entries: usize, bytes: u64) {
        self.cache_entries.set(gauge_value(entries as u64));
        self.cache_bytes.set(gauge_value(bytes));
    }

    /// `files` file nodes hold `bytes` of metadata.
    pub fn open_files(&self, files: usize, bytes: u64) {
        self.open_files.set(gauge_value(files as u64));
        self.metadata_bytes.set(gauge_value(bytes));
    }
}

#[cfg(test)]
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
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
