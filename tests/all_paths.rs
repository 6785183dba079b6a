//! One (file, offset, len) through every read path, compared with the plaintext each time:
//! primary vs parity decoding × local vs remote stores (remote streams fetch in batches) ×
//! `read` vs stream vs slow-start stream vs `AsyncRead` × cold node vs warm node vs cold disk
//! cache vs warm disk cache (with every store failing). In the style of ripgrep's
//! `SearcherTester`.

mod common;

use std::fmt;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use common::Fixture;
use futures::StreamExt;
use segvault::GetRange;
use segvault::cache::{CacheConfig, DiskCache};
use segvault::metrics::Metrics;
use segvault::store::testing::fault::Faults;
use segvault::{Client, FileHandle, ReaderConfig};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Debug, Clone, Copy)]
enum Path {
    Read,
    Stream,
    SlowStartStream,
    AsyncRead,
}

const PATHS: [Path; 4] = [
    Path::Read,
    Path::Stream,
    Path::SlowStartStream,
    Path::AsyncRead,
];

async fn read_via(path: Path, file: &FileHandle, offset: u64, len: u64) -> Vec<u8> {
    let end = offset.saturating_add(len);
    match path {
        Path::Read => file
            .read(GetRange::at(offset, len))
            .await
            .expect("read")
            .to_vec(),
        Path::Stream | Path::SlowStartStream => {
            let mut stream = match path {
                Path::Stream => file.stream(offset..end),
                _ => file.stream_slow_start(offset..end),
            };
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.expect("stream chunk"));
            }
            out
        }
        Path::AsyncRead => {
            let mut reader = file.reader();
            reader.seek(SeekFrom::Start(offset)).await.expect("seek");
            let available = file.len().saturating_sub(offset).min(len);
            let mut out = vec![0u8; available as usize];
            reader.read_exact(&mut out).await.expect("read_exact");
            // Nothing more past the end.
            if offset + available == file.len() {
                let mut extra = [0u8; 1];
                assert_eq!(reader.read(&mut extra).await.expect("read at EOF"), 0);
            }
            out
        }
    }
}

/// Where a read's blocks come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The grid, through a node opened for this read alone.
    ColdNode,
    /// The grid, through one node kept open across reads (its hash trees already learned).
    WarmNode,
    /// The grid, through a client whose disk cache starts empty: every block is a miss, and
    /// every block fetched is inserted.
    ColdCache,
    /// A disk cache filled by an earlier read, with every store failing: every block a hit.
    WarmCache,
}

/// The stores' behaviour for a pass of the matrix.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Primaries hidden: every segment decodes from parity.
    parity: bool,
    /// The stores claim to be across a network, and answer after a millisecond: a stream's
    /// consumer then waits, its window grows, and it fetches segments in batches.
    remote: bool,
}

impl Mode {
    /// The faults for this mode, plus `error` on every call; `None` when the fixture cannot
    /// force parity (n = k).
    fn faults(self, fixture: &Fixture, error: Option<&str>) -> Option<Faults> {
        let mut faults = if self.parity {
            fixture.parity_faults()?
        } else {
            Faults::default()
        };
        if self.remote {
            faults.remote = true;
            faults.latency = Some(Duration::from_millis(1));
        }
        faults.error = error.map(str::to_owned);
        Some(faults)
    }
}

struct Case<'a> {
    fixture: &'a Fixture,
    mode: Mode,
}

impl Case<'_> {
    /// Reads `offset, len` through `path` and compares with the plaintext.
    async fn check(&self, source: Source, path: Path, file: &FileHandle, offset: u64, len: u64) {
        let got = read_via(path, file, offset, len).await;
        let expected = self.fixture.expected(offset, len);
        assert!(
            got == expected,
            "{self}: {path:?} from {source:?} offset={offset} len={len}: got {} bytes, expected {}{}",
            got.len(),
            expected.len(),
            first_difference(&got, expected)
        );
    }

    /// Blocks a read of `offset, len` needs: k per segment it touches.
    fn blocks(&self, offset: u64, len: u64) -> u64 {
        let g = self.fixture.cap.geometry();
        let segments = g.segments_overlapping(offset..offset.saturating_add(len));
        (segments.end - segments.start) * u64::from(g.k())
    }
}

impl fmt::Display for Case<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size {} {:?} {:?}",
            self.fixture.plaintext.len(),
            self.fixture.cap.geometry(),
            self.mode
        )
    }
}

/// A client with an empty disk cache of its own in `dir`. No request of it ever counts as
/// late, whatever latencies the machine shows: a late share would send a segment of a batch
/// through the single-segment path, which looks the cache up again and upsets the counts.
fn cached_client(fixture: &Fixture, dir: &std::path::Path) -> (Client, Arc<DiskCache>) {
    let cache = DiskCache::open(CacheConfig::new(dir, 1 << 30), Arc::new(Metrics::default()))
        .expect("open the cache");
    let mut config = ReaderConfig::default();
    config.share_choice.hedge_floor = Duration::from_secs(3600);
    let client = Client::with_cache(fixture.grid.clone(), config, cache.clone());
    (client, cache)
}

/// Waits until no task holds `file`'s node but the `idle` holders (its client and handles).
async fn settle(file: &FileHandle, idle: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(file.node()) > idle {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks of an earlier read never ended"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every path for every range, from every source, with primaries and with parity, with the
/// stores local and remote.
async fn check_all_paths(fixture: &Fixture, ranges: &[(u64, u64)]) {
    for remote in [false, true] {
        for parity in [false, true] {
            let case = Case {
                fixture,
                mode: Mode { parity, remote },
            };
            let Some(faults) = case.mode.faults(fixture, None) else {
                continue;
            };
            fixture.set_faults(&faults);
            check_batched(&case).await;
            check_grid_and_cold_cache(&case, ranges).await;
            check_warm_cache(&case, ranges).await;
        }
    }
    fixture.set_faults(&Faults::default());
}

/// With remote stores, a stream over four segments or more takes the batched path: some store
/// is asked for several segments' records in one request. (So the matrix reaches that path.
/// A stream's first two segments go one by one, and its window grows only once the consumer
/// has waited.)
async fn check_batched(case: &Case<'_>) {
    let fixture = case.fixture;
    if !case.mode.remote || fixture.cap.geometry().num_segments() < 4 {
        return;
    }
    for store in &fixture.stores {
        store.start_log();
    }
    let file = Client::new(fixture.grid.clone(), ReaderConfig::default())
        .open(&fixture.cap)
        .await
        .expect("open");
    let size = fixture.plaintext.len() as u64;
    case.check(Source::ColdNode, Path::Stream, &file, 0, size)
        .await;
    let batches = fixture
        .stores
        .iter()
        .flat_map(|s| s.take_log())
        .filter(|(_, ranges)| ranges.len() >= 2)
        .count();
    assert!(batches > 0, "{case}: no batched request");
}

/// Reads from the grid through cold and warm nodes, and through a cold cache.
async fn check_grid_and_cold_cache(case: &Case<'_>, ranges: &[(u64, u64)]) {
    let fixture = case.fixture;
    let warm = Client::new(fixture.grid.clone(), ReaderConfig::default())
        .open(&fixture.cap)
        .await
        .expect("open warm");
    assert_eq!(warm.node().is_remote(), case.mode.remote, "{case}");
    for &(offset, len) in ranges {
        for path in PATHS {
            let cold = Client::new(fixture.grid.clone(), ReaderConfig::default())
                .open(&fixture.cap)
                .await
                .expect("open cold");
            case.check(Source::ColdNode, path, &cold, offset, len).await;
            case.check(Source::WarmNode, path, &warm, offset, len).await;

            let dir = tempfile::tempdir().expect("tempdir");
            let (client, cache) = cached_client(fixture, dir.path());
            let file = client.open(&fixture.cap).await.expect("open cached");
            case.check(Source::ColdCache, path, &file, offset, len)
                .await;
            cache.flush().await;
            let (hits, misses) = client.metrics().cache_hits_and_misses();
            let (entries, _) = cache.usage();
            let blocks = case.blocks(offset, len);
            let what = format!("{case}: {path:?} from a cold cache offset={offset} len={len}");
            assert_eq!(hits, 0, "{what}: an empty cache has no hits");
            if matches!(path, Path::AsyncRead) {
                // A reader streams on to the end of the file: it may fetch more than it returns.
                assert!(
                    misses >= blocks,
                    "{what}: {misses} misses, {blocks} blocks read"
                );
                assert!(
                    entries as u64 >= blocks,
                    "{what}: {entries} entries inserted"
                );
            } else {
                assert_eq!(misses, blocks, "{what}: every block read is a miss");
                assert_eq!(
                    entries as u64, blocks,
                    "{what}: every block read is inserted"
                );
            }
        }
    }
}

/// Fills a cache with the whole file, makes every store fail, and reads every range through
/// every path from the cache alone.
async fn check_warm_cache(case: &Case<'_>, ranges: &[(u64, u64)]) {
    let fixture = case.fixture;
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, cache) = cached_client(fixture, dir.path());
    let file = client.open(&fixture.cap).await.expect("open cached");
    let size = fixture.plaintext.len() as u64;
    case.check(Source::ColdCache, Path::Read, &file, 0, size)
        .await;
    cache.flush().await;
    assert_eq!(
        cache.usage().0 as u64,
        case.blocks(0, size),
        "{case}: a whole read fills the cache"
    );

    let failing = case
        .mode
        .faults(fixture, Some("every server is down"))
        .expect("the mode's faults");
    fixture.set_faults(&failing);
    let idle = Arc::strong_count(file.node());
    for &(offset, len) in ranges {
        for path in PATHS {
            // A reader dropped early leaves aborted fetches behind for a moment; they must not
            // count towards the next read.
            settle(&file, idle).await;
            let (hits, misses) = client.metrics().cache_hits_and_misses();
            case.check(Source::WarmCache, path, &file, offset, len)
                .await;
            let (hits, misses) = {
                let (h, m) = client.metrics().cache_hits_and_misses();
                (h - hits, m - misses)
            };
            let blocks = case.blocks(offset, len);
            let what = format!("{case}: {path:?} from a warm cache offset={offset} len={len}");
            assert_eq!(misses, 0, "{what}: a filled cache has no misses");
            if matches!(path, Path::AsyncRead) {
                assert!(hits >= blocks, "{what}: {hits} hits, {blocks} blocks read");
            } else {
                assert_eq!(hits, blocks, "{what}: every block read is a hit");
            }
        }
    }
    let ok = case.mode.faults(fixture, None).expect("the mode's faults");
    fixture.set_faults(&ok);
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(", first difference at byte {i}"),
        None => String::new(),
    }
}

/// Segment edges (±1), the tail, the last byte, empty ranges, past the end, the whole file.
fn interesting_ranges(size: u64, segment: u64) -> Vec<(u64, u64)> {
    let mut ranges = vec![
        (0, 0),
        (0, 1),
        (0, size),
        (0, size + 100),
        (size, 0),
        (size, 10),
        (size + 5, 5),
        (u64::MAX - 1, 10),
    ];
    if size > 0 {
        ranges.extend([
            (size - 1, 1),
            (size - 1, 100),
            (size / 2, size),
            (size.saturating_sub(segment / 2 + 3), segment),
        ]);
    }
    let mut edge = segment;
    while edge < size {
        for start in [edge - 1, edge, edge + 1] {
            for len in [1, 2, segment, segment + 2, 3 * segment] {
                ranges.push((start, len));
            }
        }
        ranges.push((edge - 1, 0));
        edge += segment;
    }
    ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_returns_the_plaintext() {
    let segment = 1000;
    // The geometries side by side: most of the time goes to waiting on files and stores.
    let geometries = [(1, 1), (3, 10), (5, 7), (2, 2), (1, 3)].map(|(k, n)| async move {
        for size in [0, 1, segment - 1, segment, segment + 1, 5 * segment + 17] {
            let fixture = Fixture::new(size as usize, segment, k, n).await;
            check_all_paths(&fixture, &interesting_ranges(size, segment)).await;
        }
    });
    futures::future::join_all(geometries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_segments_with_an_odd_size_across_paths() {
    let segment = 128 * 1024;
    let size = 3 * segment + 12_345;
    let fixture = Fixture::new(size as usize, segment, 3, 10).await;
    let ranges = [
        (0, size),
        (segment - 1, 2),
        (2 * segment, segment),
        (size - 1, 1),
        (size - 65_536, 65_536),
    ];
    check_all_paths(&fixture, &ranges).await;
}
