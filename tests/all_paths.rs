//! One (file, offset, len) through every read path, compared with the plaintext each time:
//! primary vs parity decoding × `read` vs stream vs slow-start stream vs `AsyncRead` × cold vs
//! warm node. In the style of ripgrep's `SearcherTester`.

mod common;

use std::fmt;
use std::io::SeekFrom;

use common::Fixture;
use futures::StreamExt;
use segvault::GetRange;
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

struct Case<'a> {
    fixture: &'a Fixture,
    label: String,
}

impl fmt::Display for Case<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Every path for every range, primary and parity, cold and warm.
async fn check_all_paths(fixture: &Fixture, ranges: &[(u64, u64)]) {
    let case = Case {
        fixture,
        label: format!(
            "size {} {:?}",
            fixture.plaintext.len(),
            fixture.cap.geometry()
        ),
    };
    for parity in [false, true] {
        if parity && case.fixture.force_parity().is_none() {
            continue;
        }
        if !parity {
            case.fixture.set_faults(&Faults::default());
        }
        let warm_client = Client::new(case.fixture.grid.clone(), ReaderConfig::default());
        let warm = warm_client
            .open(&case.fixture.cap)
            .await
            .expect("open warm");
        for &(offset, len) in ranges {
            let expected = case.fixture.expected(offset, len);
            for path in PATHS {
                let cold = Client::new(case.fixture.grid.clone(), ReaderConfig::default())
                    .open(&case.fixture.cap)
                    .await
                    .expect("open cold");
                for (warmth, file) in [("cold", &cold), ("warm", &warm)] {
                    let got = read_via(path, file, offset, len).await;
                    assert!(
                        got == expected,
                        "{case}: {path:?} {warmth} parity={parity} offset={offset} len={len}: got {} bytes, expected {}{}",
                        got.len(),
                        expected.len(),
                        first_difference(&got, expected)
                    );
                }
            }
        }
    }
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
    for (k, n) in [(1, 1), (3, 10), (5, 7), (2, 2), (1, 3)] {
        for size in [0, 1, segment - 1, segment, segment + 1, 5 * segment + 17] {
            let fixture = Fixture::new(size as usize, segment, k, n).await;
            check_all_paths(&fixture, &interesting_ranges(size, segment)).await;
        }
    }
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
