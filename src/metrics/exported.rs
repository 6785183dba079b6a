//! The OpenMetrics families behind [`Metrics`](super::Metrics), and their text rendering.

use std::fmt;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Eviction, Rejection};

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
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
struct BlockLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    event: &'static str,
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

/// The exported families, registered under the `segvault_` prefix.
pub(super) struct Exported {
    registry: Registry,
    http_requests: Family<StatusLabels, Counter>,
    http_bytes: Counter,
    share_requests: LatencyFamily,
    pub(super) hedges: Counter,
    shares_rejected: Family<ReasonLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    pub(super) cache_insertions: Counter,
    cache_evictions: Family<EvictionLabels, Counter>,
    cache_bytes: Gauge<i64, AtomicI64>,
    cache_entries: Gauge<i64, AtomicI64>,
    open_files: Gauge<i64, AtomicI64>,
    metadata_bytes: Gauge<i64, AtomicI64>,
    background_repairs: Family<RepairLabels, Counter>,
    blocks_used: Family<BlockLabels, Counter>,
    pub(super) read_ahead_bytes: Gauge<i64, AtomicI64>,
    pub(super) read_ahead_released: Counter,
}

impl Default for Exported {
    fn default() -> Exported {
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
        let background_repairs = Family::<RepairLabels, Counter>::default();
        registry.register(
            "background_repairs",
            "Repairs queued by reads that found damaged shares (serve --repair-on-read), by event: queued, skipped (queued, running or repaired lately), dropped (queue full), and each finished repair's outcome",
            background_repairs.clone(),
        );
        let blocks_used = Family::<BlockLabels, Counter>::default();
        registry.register(
            "blocks_used",
            "Blocks segments were decoded from, by kind: primary (used as is) or parity (decoded); parity on a healthy grid means readers left primaries they should be back on",
            blocks_used.clone(),
        );
        let read_ahead_bytes = Gauge::default();
        registry.register(
            "read_ahead_bytes",
            "Plaintext fetched ahead of its readers and waiting for them",
            read_ahead_bytes.clone(),
        );
        let read_ahead_released = Counter::default();
        registry.register(
            "read_ahead_released",
            "Segments fetched ahead and let go because their reader stopped taking bytes (fetched again if it resumes)",
            read_ahead_released.clone(),
        );
        Exported {
            registry,
            read_ahead_bytes,
            read_ahead_released,
            background_repairs,
            blocks_used,
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

impl Exported {
    /// The OpenMetrics text of every counter ([`CONTENT_TYPE`]).
    pub(super) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A gateway response with `status` and `body_bytes` of body.
    pub(super) fn http_response(&self, status: u16, body_bytes: u64) {
        self.http_requests
            .get_or_create(&StatusLabels { status })
            .inc();
        self.http_bytes.inc_by(body_bytes);
    }

    /// A share read on `server` answered (with data or an error) after `elapsed`.
    pub(super) fn share_request(&self, server: &str, elapsed: Duration) {
        self.share_requests
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Share bytes were not used.
    pub(super) fn share_rejected(&self, reason: Rejection) {
        self.shares_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Blocks served from the cache and blocks it lacked.
    pub(super) fn cache_lookups(&self, hits: u64, misses: u64) {
        self.cache_hits.inc_by(hits);
        self.cache_misses.inc_by(misses);
    }

    /// Entries left the cache.
    pub(super) fn cache_evicted(&self, reason: Eviction, entries: u64) {
        self.cache_evictions
            .get_or_create(&EvictionLabels { reason })
            .inc_by(entries);
    }

    /// The cache now holds `entries` entries of `bytes` bytes in all.
    pub(super) fn cache_size(&self, entries: usize, bytes: u64) {
        self.cache_entries.set(gauge_value(entries as u64));
        self.cache_bytes.set(gauge_value(bytes));
    }

    /// `files` file nodes hold `bytes` of metadata.
    pub(super) fn blocks_used(&self, primary: u64, parity: u64) {
        for (kind, count) in [("primary", primary), ("parity", parity)] {
            if count > 0 {
                self.blocks_used
                    .get_or_create(&BlockLabels { kind })
                    .inc_by(count);
            }
        }
    }

    pub(super) fn background_repair(&self, event: &'static str) {
        self.background_repairs
            .get_or_create(&RepairLabels { event })
            .inc();
    }

    pub(super) fn open_files(&self, files: usize, bytes: u64) {
        self.open_files.set(gauge_value(files as u64));
        self.metadata_bytes.set(gauge_value(bytes));
    }
}
