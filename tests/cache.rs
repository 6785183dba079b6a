//! The disk cache through the real binary: ten `segvault storage-server` processes, a
//! `segvault serve --cache-dir` over them, storage requests counted through `GET /metrics`.
//! Every read is compared with the plaintext.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::grid::TestGrid;
use common::http::{self, Server};
use common::process;
use common::random_bytes;
use segvault::core::cap::ReadCap;

const SEGMENT: usize = 128 << 10;

/// The sum of every sample of metric `name` (any labels).
fn metric(gateway: &Server, name: &str) -> f64 {
    let response = http::get(&gateway.addr, "/metrics", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric_name = series.split('{').next()?;
            (metric_name == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn storage_requests(gateway: &Server) -> f64 {
    metric(gateway, "segvault_share_request_seconds_count")
}

/// Waits until the cache's background writes have settled (its insertions stop changing).
fn settle(gateway: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = -1.0;
    while Instant::now() < deadline {
        let now = metric(gateway, "segvault_cache_insertions_total");
        if now == last {
            return;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("cache writes never settled");
}

fn range(gateway: &Server, cap: &str, start: usize, end_inclusive: usize) -> Vec<u8> {
    let value = format!("bytes={start}-{end_inclusive}");
    let response = http::get(&gateway.addr, &format!("/uri/{cap}"), &[("Range", &value)]);
    assert_eq!(response.status, 206, "{}", response.text());
    assert!(response.complete(), "cut short");
    response.body
}

fn full(gateway: &Server, cap: &str) -> Vec<u8> {
    let response = http::get(&gateway.addr, &format!("/uri/{cap}"), &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.complete(), "cut short");
    response.body
}

/// Ranges at segment edges, inside a segment, across several, the tail and the last byte.
fn probes(len: usize) -> Vec<(usize, usize)> {
    vec![
        (0, 0),
        (SEGMENT - 1, SEGMENT),
        (SEGMENT + 10, SEGMENT + 65_545),
        (3 * SEGMENT - 5, 5 * SEGMENT + 4),
        (len - 70_000, len - 1),
        (len - 1, len - 1),
    ]
}

fn check_probes(gateway: &Server, cap: &str, plaintext: &[u8]) {
    for (start, end) in probes(plaintext.len()) {
        let body = range(gateway, cap, start, end);
        assert!(
            body == plaintext[start..=end],
            "range {start}-{end} differs"
        );
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    common::files_under(&dir.join("v1"))
}

fn cache_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--cache-dir".to_owned(), dir.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_range_read_twice_asks_no_storage_server_the_second_time_even_with_all_stopped_or_after_a_restart()
 {
    let mut grid = TestGrid::new();
    let plaintext = random_bytes(3 * (1 << 20) + 12_345, 51);
    let cap = grid.put(&plaintext);
    let small = random_bytes(5_000, 52);
    let small_cap = grid.put(&small);
    let cache = grid.root.path().join("cache");
    let gateway = grid.gateway(&cache_args(&cache, &[]));

    check_probes(&gateway, &cap, &plaintext);
    assert!(full(&gateway, &small_cap) == small);
    settle(&gateway);
    let cold = storage_requests(&gateway);
    assert!(cold > 0.0);
    let hits_before = metric(&gateway, "segvault_cache_hits_total");

    check_probes(&gateway, &cap, &plaintext);
    assert!(full(&gateway, &small_cap) == small);
    assert_eq!(
        storage_requests(&gateway),
        cold,
        "the second reads asked storage servers"
    );
    assert!(metric(&gateway, "segvault_cache_hits_total") > hits_before);
    // Metrics name servers and reasons, never a file.
    let text = http::get(&gateway.addr, "/metrics", &[]).text();
    let si = cap.parse::<ReadCap>().unwrap().storage_index().to_string();
    for secret in [&cap, &small_cap, &si] {
        assert!(
            !text.contains(secret.as_str()),
            "a file is named in /metrics"
        );
    }
    let post = http::request(&gateway.addr, "POST", "/metrics", &[], b"");
    assert_eq!(post.status, 405);

    // Every storage server gone: the cache alone answers, still verified.
    for node in &mut grid.nodes {
        node.kill();
    }
    check_probes(&gateway, &cap, &plaintext);
    assert!(full(&gateway, &small_cap) == small);
    assert_eq!(storage_requests(&gateway), cold);
    // A range never read is not in the cache, and the grid is gone.
    let response = http::get(
        &gateway.addr,
        &format!("/uri/{cap}"),
        &[("Range", "bytes=1500000-1500001")],
    );
    assert_eq!(response.status, 503, "{}", response.text());

    // A gateway restarted on the cache, with no server to ask: the files open from the UEB
    // their entries carry and the cached ranges are served, verified.
    drop(gateway);
    let gateway = grid.gateway(&cache_args(&cache, &[]));
    check_probes(&gateway, &cap, &plaintext);
    assert!(full(&gateway, &small_cap) == small);
    let response = http::get(
        &gateway.addr,
        &format!("/uri/{cap}"),
        &[("Range", "bytes=1500000-1500001")],
    );
    assert_eq!(response.status, 503, "{}", response.text());
}

#[test]
fn a_file_larger_than_the_cache_keeps_it_within_bounds_and_evicts_least_recently_used() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(4 << 20, 53);
    let cap = grid.put(&plaintext);
    let cache = grid.root.path().join("cache");

    // Measure one entry (all full segments' entries have one size), then restart with room
    // for exactly four segments' blocks.
    let gateway = grid.gateway(&cache_args(&cache, &[]));
    range(&gateway, &cap, 0, 10);
    settle(&gateway);
    let files = cache_files(&cache);
    assert_eq!(files.len(), 3, "k blocks cached: {files:?}");
    let entry = std::fs::metadata(&files[0]).unwrap().len();
    drop(gateway);
    std::fs::remove_dir_all(&cache).unwrap();
    let bound = 12 * entry;
    let gateway = grid.gateway(&cache_args(&cache, &["--cache-size", &bound.to_string()]));

    let segments_cached = || -> HashSet<u64> {
        cache_files(&cache)
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.split_once('-').unwrap().1.parse().unwrap()
            })
            .collect()
    };
    for s in [0usize, 1, 2, 3] {
        range(&gateway, &cap, s * SEGMENT + 7, s * SEGMENT + 70_000);
        settle(&gateway);
    }
    assert_eq!(segments_cached(), HashSet::from([0, 1, 2, 3]));
    // Segment 0 used again, so segment 1 is now the least recently used.
    range(&gateway, &cap, 100, 200);
    range(&gateway, &cap, 5 * SEGMENT, 5 * SEGMENT + 99);
    settle(&gateway);
    assert_eq!(segments_cached(), HashSet::from([0, 2, 3, 5]));

    // A whole file through a cache of a tenth of it: the bound holds at every look.
    let body = full(&gateway, &cap);
    assert!(body == plaintext);
    settle(&gateway);
    let held: u64 = cache_files(&cache)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(held <= bound, "{held} bytes cached, bound {bound}");
    assert!(metric(&gateway, "segvault_cache_evictions_total") >= 20.0);
    assert_eq!(metric(&gateway, "segvault_cache_bytes"), held as f64);
}

#[test]
fn entries_unused_for_the_ttl_expire() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(1 << 20, 54);
    let cap = grid.put(&plaintext);
    let cache = grid.root.path().join("cache");
    let gateway = grid.gateway(&cache_args(&cache, &["--cache-ttl", "2s"]));
    assert!(full(&gateway, &cap) == plaintext);
    settle(&gateway);
    assert!(!cache_files(&cache).is_empty());
    process::wait_for(
        "the entries to expire (they outlived their TTL)",
        Duration::from_secs(15),
        || cache_files(&cache).is_empty(),
    );
    assert!(metric(&gateway, "segvault_cache_evictions_total") >= 8.0 * 3.0);
    assert_eq!(metric(&gateway, "segvault_cache_entries"), 0.0);
}

/// Every 16-byte chunk of `plaintext` at a multiple of 16: any 32-byte window of the plaintext
/// contains one of them whole.
fn aligned_chunks(plaintext: &[u8]) -> HashSet<[u8; 16]> {
    plaintext
        .chunks_exact(16)
        .map(|c| c.try_into().unwrap())
        .collect()
}

#[test]
fn the_cache_directory_holds_no_plaintext_and_no_key() {
    let grid = TestGrid::new();
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes((1 << 20) + 1000 * i, 60 + i as u64))
        .collect();
    let caps: Vec<String> = files.iter().map(|f| grid.put(f)).collect();
    let cache = grid.root.path().join("cache");
    let gateway = grid.gateway(&cache_args(&cache, &[]));
    for (cap, plaintext) in caps.iter().zip(&files) {
        assert!(full(&gateway, cap) == *plaintext);
        check_probes(&gateway, cap, plaintext);
    }
    settle(&gateway);

    let mut chunks = HashSet::new();
    for plaintext in &files {
        chunks.extend(aligned_chunks(plaintext));
    }
    let secrets: Vec<Vec<u8>> = caps
        .iter()
        .flat_map(|cap| {
            let read: ReadCap = cap.parse().unwrap();
            [read.key().as_bytes().to_vec(), cap.as_bytes().to_vec()]
        })
        .collect();
    let mut everything = cache_files(&cache);
    everything.push(cache.join("lock"));
    assert!(everything.len() >= 3 * 8 * 3, "{} files", everything.len());
    for path in &everything {
        let bytes = std::fs::read(path).unwrap();
        for window in bytes.windows(16) {
            let window: [u8; 16] = window.try_into().unwrap();
            assert!(
                !chunks.contains(&window),
                "{} holds plaintext",
                path.display()
            );
        }
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == &secret[..]),
                "{} holds a key or cap",
                path.display()
            );
        }
    }
}

#[test]
fn flipped_cache_bytes_and_a_kill_mid_read_never_serve_wrong_bytes() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(3 << 20, 70);
    let cap = grid.put(&plaintext);
    let other = random_bytes(6 << 20, 71);
    let other_cap = grid.put(&other);
    let cache = grid.root.path().join("cache");

    let gateway = grid.gateway(&cache_args(&cache, &[]));
    assert!(full(&gateway, &cap) == plaintext);
    settle(&gateway);
    // Rot: a flipped block byte, a flipped hash byte, a truncated entry, a wrong header, an
    // entry swapped for another's — each a different way an entry can lie.
    let files = cache_files(&cache);
    assert_eq!(files.len(), 3 * 24, "{files:?}");
    for (i, path) in files.iter().enumerate() {
        let mut bytes = std::fs::read(path).unwrap();
        match i % 5 {
            0 => bytes[100] ^= 0x01,
            1 => {
                let at = bytes.len() - 40;
                bytes[at] ^= 0x80;
            }
            2 => bytes.truncate(bytes.len() / 2),
            3 => bytes[9] ^= 0xff,
            _ => bytes = std::fs::read(&files[(i + 1) % files.len()]).unwrap(),
        }
        std::fs::write(path, bytes).unwrap();
    }
    // Killed (-9) in the middle of another file's full read, with writes in flight.
    let mut stream = http::send(&gateway.addr, "GET", &format!("/uri/{other_cap}"), &[], b"");
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    let mut gateway = gateway;
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    drop(stream);

    let gateway = grid.gateway(&cache_args(&cache, &[]));
    assert!(
        std::fs::read_dir(cache.join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    check_probes(&gateway, &cap, &plaintext);
    assert!(full(&gateway, &cap) == plaintext);
    check_probes(&gateway, &other_cap, &other);
    assert!(full(&gateway, &other_cap) == other);
    assert!(metric(&gateway, "segvault_shares_rejected_total") > 0.0);
    // Whatever was dropped was fetched again and written back: passes soon need no storage
    // request at all. (A loaded machine may skip an insertion while the pending-write bound
    // is full, so one more pass may still fetch a block or two.)
    let mut requests = Vec::new();
    for _ in 0..5 {
        settle(&gateway);
        let before = storage_requests(&gateway);
        assert!(full(&gateway, &cap) == plaintext);
        requests.push(storage_requests(&gateway) - before);
        if requests.last() == Some(&0.0) {
            break;
        }
    }
    assert_eq!(
        requests.last(),
        Some(&0.0),
        "storage requests per pass: {requests:?}"
    );
    // Every dropped entry was written back: with every storage node stopped, the file
    // still reads whole from the cache.
    for node in &grid.nodes {
        node.signal("STOP");
    }
    assert!(full(&gateway, &cap) == plaintext);
}

#[test]
fn a_second_gateway_on_the_same_cache_directory_is_refused() {
    let grid = TestGrid::new();
    let cache = grid.root.path().join("cache");
    let _gateway = grid.gateway(&cache_args(&cache, &[]));
    let output = grid
        .segvault()
        .args(["serve", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another segvault process"),
        "{stderr}"
    );
}

#[test]
fn get_with_a_cache_reads_a_range_again_without_the_grid_blocks() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(2 << 20, 72);
    let cap = grid.put(&plaintext);
    let cache = grid.root.path().join("cache");
    let get = |range: &str| {
        process::ok(
            grid.segvault()
                .args(["get", &cap, "--range", range, "--cache-dir"])
                .arg(&cache),
        )
    };
    assert!(get("200000-700000") == plaintext[200_000..=700_000]);
    let cached = cache_files(&cache).len();
    assert_eq!(cached, 3 * 5, "the blocks of the five segments touched");
    // Another process finds them and adds only the new ones.
    assert!(get("300000-900000") == plaintext[300_000..=900_000]);
    assert_eq!(cache_files(&cache).len(), 3 * 6);
    let bad = grid
        .segvault()
        .args(["get", &cap, "--cache-ttl", "1h"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "--cache-ttl without --cache-dir");
}
