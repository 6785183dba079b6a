//! How the engine fetches: request counts, shared fetches, cancellation, bounded read-ahead,
//! and routing around missing, corrupt, slow, lying and inconsistent shares.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, small_segments};
use futures::StreamExt;
use segvault::GetRange;
use segvault::core::geometry::{SegmentIndex, ShareNum};
use segvault::core::layout::ShareLayout;
use segvault::engine::audit;
use segvault::store::ShareStore;
use segvault::store::testing::fault::Faults;
use segvault::{Client, PutOptions, ReadError, ReaderConfig};

fn client(fixture: &Fixture) -> Client {
    Client::new(fixture.grid.clone(), ReaderConfig::default())
}

/// A configuration under which no request counts as late and primaries always win: for
/// tests that count requests, whatever latencies the machine shows.
fn fixed_choice() -> ReaderConfig {
    let mut config = ReaderConfig::default();
    config.share_choice.hedge_floor = Duration::from_secs(3600);
    config.share_choice.parity_cost = Duration::from_secs(3600);
    config.share_choice.local_parity_cost = Duration::from_secs(3600);
    config.primary_grace = Duration::from_secs(3600);
    config
}

fn fixed_client(fixture: &Fixture) -> Client {
    Client::new(fixture.grid.clone(), fixed_choice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_segment_costs_one_request_per_share_and_a_warm_one_no_hash_bytes() {
    let fixture = Fixture::new(20_000, 1000, 3, 10).await;
    let file = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    let layout = ShareLayout::new(fixture.cap.geometry());
    for store in &fixture.stores {
        store.start_log();
    }
    assert_eq!(
        &file.read(7_500..7_510).await.unwrap()[..],
        fixture.expected(7_500, 10)
    );
    let cold: Vec<_> = fixture.stores.iter().flat_map(|s| s.take_log()).collect();
    assert_eq!(cold.len(), 3, "one request per share for a cold segment");
    for (_, ranges) in cold {
        assert_eq!(
            ranges,
            vec![layout.record_range(SegmentIndex(7))],
            "a cold request is one contiguous range: the block and its path to the UEB"
        );
    }

    for store in &fixture.stores {
        store.start_log();
    }
    assert_eq!(
        &file.read(7_000..8_000).await.unwrap()[..],
        fixture.expected(7_000, 1000)
    );
    let requests: Vec<_> = fixture.stores.iter().flat_map(|s| s.take_log()).collect();
    assert_eq!(requests.len(), 3);
    for (_, ranges) in requests {
        assert_eq!(
            ranges,
            vec![layout.block_range(SegmentIndex(7))],
            "a warm read asks for the block alone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_fetch_about_one_new_hash_level_per_segment() {
    let fixture = Fixture::new(64_000, 1000, 3, 10).await;
    let file = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    let layout = ShareLayout::new(fixture.cap.geometry());
    for store in &fixture.stores {
        store.start_log();
    }
    file.read(0..64_000).await.unwrap();
    let hash_bytes: u64 = fixture
        .stores
        .iter()
        .flat_map(|s| s.take_log())
        .flat_map(|(_, ranges)| ranges)
        .filter(|r| r.start >= layout.header_region().end)
        .map(|r| r.end - r.start)
        .sum::<u64>()
        - 3 * 64_000 / 3;
    // 64 segments, depth 6: a cold chain is 6 levels; sequentially each segment needs ~1-2.
    let levels_per_block = hash_bytes as f64 / 64.0 / (64.0 * 3.0);
    assert!(
        levels_per_block < 2.5,
        "{levels_per_block} chain levels per block"
    );
}

#[tokio::test]
async fn concurrent_readers_of_a_segment_share_one_fetch() {
    let fixture = Fixture::new(10_000, 1000, 3, 10).await;
    // Paused time: the injected latency passes only once every reader waits on it.
    tokio::time::pause();
    let file = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    fixture.set_faults(&Faults {
        latency: Some(Duration::from_millis(100)),
        ..Faults::default()
    });
    let before = fixture.reads();
    let reads = (0..8).map(|i| file.read(GetRange::at(4_000 + i * 100, 100)));
    for (i, result) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            &result.unwrap()[..],
            fixture.expected(4_000 + i as u64 * 100, 100)
        );
    }
    assert_eq!(fixture.reads() - before, 3, "eight readers, one fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_read_cancels_its_fetches() {
    let fixture = Fixture::new(100_000, 1000, 3, 10).await;
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    let idle = Arc::strong_count(file.node());
    fixture.set_faults(&Faults {
        stall: true,
        ..Faults::default()
    });
    let read = tokio::time::timeout(Duration::from_millis(100), file.read(0..100_000)).await;
    assert!(read.is_err(), "a stalled grid cannot finish the read");
    // Aborted tasks end on their workers' next turn; one that outlived the read would hold
    // the node for good (its store never answers).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(file.node()) != idle && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        Arc::strong_count(file.node()),
        idle,
        "no segment task outlives the dropped read"
    );
}

#[tokio::test]
async fn a_stream_never_fetches_more_than_its_window_ahead() {
    let fixture = Fixture::new(200_000, 1000, 3, 10).await;
    // Paused time: the clock moves only when every task (file reads included) is idle, so the
    // stalled consumer's sleep below lets whatever was in flight finish, however busy the
    // machine.
    tokio::time::pause();
    let file = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    let window = file.read_ahead() as u64;
    let mut stream = file.stream(0..200_000);
    let before = fixture.reads();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], fixture.expected(0, 1000));
    // The consumer stalls: whatever is in flight completes, and nothing more starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fixture.reads() - before <= 3 * window,
        "{} requests for a window of {window}",
        fixture.reads() - before
    );
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, fixture.expected(1000, 199_000));
}

/// A reader that stops taking bytes (a stalled client) holds no read-ahead once the release
/// delay has passed; when it resumes, the let-go segments are fetched again and every byte
/// is exact.
#[tokio::test]
async fn a_stalled_reader_lets_its_read_ahead_go_and_resumes_exactly() {
    let fixture = Fixture::new(200_000, 1000, 3, 10).await;
    tokio::time::pause();
    let mut config = fixed_choice();
    config.read_ahead_release = Duration::from_millis(500);
    let client = Client::new(fixture.grid.clone(), config);
    let metrics = client.metrics().clone();
    let file = client.open(&fixture.cap).await.unwrap();
    let mut stream = file.stream(0..200_000);
    let mut got = Vec::new();
    // Reading fast first, so the window grows past one segment.
    for _ in 0..20 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // Stalled, but not for long yet: what was fetched ahead waits for the reader.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = metrics.read_ahead_bytes();
    assert!(
        held >= 1000,
        "{held} bytes held ahead of a reader that paused briefly"
    );
    // Stalled past the release delay: nothing is held for it any more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metrics.read_ahead_bytes(), 0);
    let requests_before_resuming = fixture.reads();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, fixture.expected(0, 200_000));
    assert!(
        fixture.reads() > requests_before_resuming,
        "the let-go segments were fetched again"
    );
    assert_eq!(metrics.read_ahead_bytes(), 0, "nothing held after the end");
}

/// Readers together hold no more read-ahead than the client's read-ahead memory, and none
/// of them waits on it: past it, each fetches its next segment itself.
#[tokio::test]
async fn readers_share_a_bounded_read_ahead_memory_and_all_finish_exactly() {
    let fixture = Fixture::new(200_000, 1000, 3, 10).await;
    tokio::time::pause();
    let mut config = fixed_choice();
    config.read_ahead_memory = 3 * 1024; // three 1000-byte segments, whoever reads
    let client = Client::new(fixture.grid.clone(), config);
    let metrics = client.metrics().clone();
    let file = client.open(&fixture.cap).await.unwrap();
    let mut streams: Vec<_> = (0..5u64)
        .map(|i| (i * 30_000, file.stream(i * 30_000..200_000)))
        .collect();
    let mut got = vec![Vec::new(); streams.len()];
    let mut peak = 0;
    for _ in 0..40 {
        for (i, (_, stream)) in streams.iter_mut().enumerate() {
            got[i].extend_from_slice(&stream.next().await.unwrap().unwrap());
        }
        // The readers pause; what was started finishes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(metrics.read_ahead_bytes());
    }
    assert!(peak > 0, "some read-ahead was allowed");
    assert!(peak <= 3000, "{peak} bytes held ahead with room for 3000");
    for (i, (start, stream)) in streams.iter_mut().enumerate() {
        while let Some(chunk) = stream.next().await {
            got[i].extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            got[i],
            fixture.expected(*start, 200_000 - *start),
            "reader {i}"
        );
    }
}

/// A stalled reader's chunks still waiting for read-ahead room leave the queue after the
/// release delay: they do not take the room one after another only to be let go.
#[tokio::test]
async fn a_stalled_readers_queued_chunks_leave_the_read_ahead_memory_alone() {
    let fixture = Fixture::new(200_000, 1000, 3, 10).await;
    tokio::time::pause();
    let mut config = fixed_choice();
    config.read_ahead_memory = 1024; // room for one 1000-byte segment
    let client = Client::new(fixture.grid.clone(), config);
    let metrics = client.metrics().clone();
    let file = client.open(&fixture.cap).await.unwrap();
    let mut stream = file.stream(0..200_000);
    let mut got = Vec::new();
    // Read until the window has grown and chunks wait behind the room.
    while got.len() < 100_000 && stream.in_flight() < 2 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert!(stream.in_flight() >= 2, "chunks are queued behind the room");
    // Well past one release delay (2 s), short of the several it takes queued chunks to
    // go through the room one at a time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(metrics.read_ahead_bytes(), 0);
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, fixture.expected(0, 200_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_lying_shares_are_routed_around() {
    let fixture = Fixture::new(50_000, 1000, 3, 10).await;
    // Shares 0 and 1 flip bits; share 2 returns short reads; share 3 errors.
    for (i, faults) in [
        Faults {
            flip_seed: Some(1),
            ..Faults::default()
        },
        Faults {
            flip_seed: Some(2),
            ..Faults::default()
        },
        Faults {
            short_reads: true,
            ..Faults::default()
        },
        Faults {
            error: Some("disk on fire".into()),
            ..Faults::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        fixture
            .store_holding(ShareNum(i as u8))
            .await
            .set_faults(faults);
    }
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(0..50_000).await.unwrap()[..],
        &fixture.plaintext[..]
    );
    let report = file.node().report().to_string();
    assert!(report.contains("corrupt"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_servers_are_hedged_long_before_the_request_timeout() {
    let fixture = Fixture::new(20_000, 1000, 2, 4).await;
    let mut config = ReaderConfig::default();
    config.request_timeout = Duration::from_secs(600);
    let client = Client::new(fixture.grid.clone(), config);
    let file = client.open(&fixture.cap).await.unwrap();
    // The primaries' servers stop answering, as if SIGSTOPped, after the file was opened.
    // (Both found before either stalls: finding one lists every store.)
    let primaries = [
        fixture.store_holding(ShareNum(0)).await,
        fixture.store_holding(ShareNum(1)).await,
    ];
    for store in primaries {
        store.set_faults(Faults {
            stall: true,
            ..Faults::default()
        });
    }
    // Without hedging this waits for the ten-minute request timeout.
    let read = tokio::time::timeout(Duration::from_secs(60), file.read(0..20_000)).await;
    assert_eq!(&read.expect("hedged").unwrap()[..], &fixture.plaintext[..]);
    let hedged: u64 = client
        .grid()
        .servers()
        .iter()
        .map(|s| s.health().snapshot().hedges)
        .sum();
    assert!(hedged >= 2, "{hedged} late requests");
    assert!(
        client
            .grid()
            .servers()
            .iter()
            .filter(|s| s.health().snapshot().slow)
            .count()
            == 2,
        "the stalled servers are marked slow, so later segments go elsewhere first"
    );

    // A fresh client never learns of the stalled servers' shares: discovery opens the file
    // with the answers it has.
    let fresh = Client::new(fixture.grid.clone(), ReaderConfig::default());
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        fresh.open(&fixture.cap).await?.read(0..20_000).await
    })
    .await;
    assert_eq!(
        &read.expect("opened without the stalled servers").unwrap()[..],
        &fixture.plaintext[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_spreads_over_more_than_k_servers_when_they_are_slow() {
    let fixture = Fixture::new(60_000, 1000, 3, 10).await;
    let mut no_hedging = ReaderConfig::default();
    no_hedging.share_choice.hedge_floor = Duration::from_secs(3600);
    no_hedging.primary_grace = Duration::from_secs(3600);
    let file = Client::new(fixture.grid.clone(), no_hedging)
        .open(&fixture.cap)
        .await
        .unwrap();
    // Servers across a network: each has capacity of its own, so load spreads.
    fixture.set_faults(&Faults {
        latency: Some(Duration::from_millis(20)),
        remote: true,
        ..Faults::default()
    });
    for store in &fixture.stores {
        store.start_log();
    }
    let mut stream = file.stream(0..60_000);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, fixture.plaintext);
    let per_server: Vec<usize> = fixture.stores.iter().map(|s| s.take_log().len()).collect();
    let total: usize = per_server.iter().sum();
    let busiest = per_server.iter().copied().max().unwrap_or(0);
    assert!(
        per_server.iter().filter(|&&n| n > 0).count() > 3 && busiest * 4 < total,
        "segments in flight together spread over more than k servers: {per_server:?}"
    );
}

/// On paused time: the marks last a minute of the engine's clock, whatever the machine's
/// speed, and expire when the test moves the clock past them.
#[tokio::test]
async fn failure_marks_expire() {
    let fixture = Fixture::new(3_000, 1000, 2, 2).await;
    tokio::time::pause();
    let mut config = ReaderConfig::default();
    config.failure_ttl = Duration::from_secs(60);
    let file = Client::new(fixture.grid.clone(), config)
        .open(&fixture.cap)
        .await
        .unwrap();
    assert_eq!(file.node().healthy_shares(), 2);
    fixture.set_faults(&Faults {
        error: Some("network down".into()),
        ..Faults::default()
    });
    let err = file.read(0..10).await.unwrap_err();
    assert!(matches!(err, ReadError::NotEnoughShares { .. }), "{err}");
    assert!(
        err.to_string().contains("network down"),
        "the error says why: {err}"
    );
    assert_eq!(file.node().healthy_shares(), 0, "both shares are marked");
    fixture.set_faults(&Faults::default());
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        file.node().healthy_shares(),
        0,
        "the marks hold for their time"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(file.node().healthy_shares(), 2, "the marks expired");
    assert_eq!(
        &file.read(0..3_000).await.unwrap()[..],
        &fixture.plaintext[..],
        "the same node reads again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_and_too_few_shares_are_explained() {
    let fixture = Fixture::new(3_000, 1000, 3, 5).await;
    fixture.set_faults(&Faults {
        hidden: (0..5).map(ShareNum).collect(),
        ..Faults::default()
    });
    let err = client(&fixture).open(&fixture.cap).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    fixture.set_faults(&Faults {
        hidden: (0..3).map(ShareNum).collect(),
        ..Faults::default()
    });
    let err = client(&fixture).open(&fixture.cap).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ReadError::NotEnoughShares {
                needed: 3,
                usable: 2,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("share 3 on") && text.contains("share 4 on"),
        "names what was found: {text}"
    );
    assert!(
        text.contains("holds no shares"),
        "names the servers without shares: {text}"
    );
}

fn tamper_parity(parity_share: u8, segment: u64) -> PutOptions {
    let mut options = small_segments(3, 6, 1000);
    options.tamper = Some(Arc::new(move |share, s, block| {
        if share.0 == parity_share && s.0 == segment {
            block[0] ^= 0x55;
        }
    }));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_that_fails_the_ciphertext_check_is_retried_with_other_shares() {
    // Share 3 (parity) was made wrong for segment 2, yet its hashes are all valid.
    let fixture = Fixture::with_options(5_000, tamper_parity(3, 2)).await;
    fixture.set_faults(&Faults {
        hidden: [ShareNum(0)].into(),
        ..Faults::default()
    });
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(0..5_000).await.unwrap()[..],
        &fixture.plaintext[..]
    );

    // Verify, too, must find the consistent shares (with share 0 still missing) and blame
    // only the inconsistent one.
    let report = audit::verify(
        &fixture.grid,
        &fixture.cap.verify_cap(),
        &ReaderConfig::default(),
        None,
    )
    .await;
    assert!(!report.is_healthy(), "{report}");
    assert!(report.unrecoverable.is_empty(), "{report}");
    assert_eq!(report.missing, vec![ShareNum(0)], "{report}");
    let bad: Vec<_> = report.shares.iter().filter(|s| !s.is_good()).collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0].share, ShareNum(3));
    assert!(bad[0].problems[0].contains("segment 2"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_that_never_agree_fail_with_an_explanation_not_wrong_bytes() {
    let mut options = small_segments(2, 4, 1000);
    options.tamper = Some(Arc::new(|share, _, block| {
        if share.0 >= 2 {
            block[0] ^= 1;
        }
    }));
    let fixture = Fixture::with_options(3_000, options).await;
    fixture.set_faults(&Faults {
        hidden: [ShareNum(0)].into(),
        ..Faults::default()
    });
    let err = client(&fixture)
        .open(&fixture.cap)
        .await
        .unwrap()
        .read(0..10)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Inconsistent { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_keeps_tree_memory_proportional_to_what_was_read() {
    let fixture = Fixture::new(1_000_000, 100, 3, 10).await;
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    file.read(500_000..500_100).await.unwrap();
    let (nodes, _) = file.node().tree_memory();
    // 10,000 segments (depth 14): one read learns a few chains, not whole trees.
    assert!(nodes < 200, "{nodes} nodes after one read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_file_metadata_is_bounded_by_bytes_and_evicted_least_recent_first() {
    let fixture = Fixture::new(50_000, 100, 3, 10).await;
    let options = small_segments(3, 10, 100);
    let mut caps = vec![fixture.cap.clone()];
    for seed in 1..6 {
        let bytes = common::random_bytes(50_000, seed);
        let source = segvault::PutSource::Bytes(bytes);
        caps.push(
            segvault::upload::put(&fixture.grid, source, &options)
                .await
                .unwrap(),
        );
    }
    // What one fully read file holds.
    let probe = client(&fixture).open(&caps[0]).await.unwrap();
    probe.read(0..50_000).await.unwrap();
    let one = probe.node().memory_bytes();
    drop(probe);

    let budget = one * 5 / 2;
    let client = Client::new(fixture.grid.clone(), {
        let mut config = ReaderConfig::default();
        config.metadata_bytes = budget;
        config
    });
    for cap in &caps {
        let file = client.open(cap).await.unwrap();
        let (_, bytes) = client.metadata();
        // Trimmed when opening; the file just opened is read after.
        assert!(bytes <= budget, "{bytes} bytes held, budget {budget}");
        assert_eq!(file.read(0..50_000).await.unwrap().len(), 50_000);
    }
    let (nodes, bytes) = client.metadata();
    assert!(nodes < caps.len(), "{nodes} nodes kept");
    assert!(bytes <= budget + one, "{bytes} bytes held, budget {budget}");

    // The most recent file is still open (no listing); the first was evicted (listed again).
    let lists = || -> u64 {
        fixture
            .stores
            .iter()
            .map(|s| {
                s.counters()
                    .lists
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    let before = lists();
    client.open(&caps[5]).await.unwrap();
    assert_eq!(lists(), before, "the most recent node was kept");
    client.open(&caps[0]).await.unwrap();
    assert!(lists() > before, "the least recent node was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_missing_and_corrupt_shares() {
    let fixture = Fixture::new(10_000, 1000, 3, 10).await;
    let report = audit::verify(
        &fixture.grid,
        &fixture.cap.verify_cap(),
        &ReaderConfig::default(),
        None,
    )
    .await;
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.shares.len(), 10);

    fixture.stores[0].set_faults(Faults {
        flip_seed: Some(9),
        ..Faults::default()
    });
    fixture.stores[1].set_faults(Faults {
        hidden: (0..10).map(ShareNum).collect(),
        ..Faults::default()
    });
    let report = audit::verify(
        &fixture.grid,
        &fixture.cap.verify_cap(),
        &ReaderConfig::default(),
        None,
    )
    .await;
    assert!(!report.is_healthy());
    assert_eq!(report.missing.len(), 1, "{report}");
    assert_eq!(
        report.shares.iter().filter(|s| !s.is_good()).count(),
        1,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_numbers_beyond_n_are_ignored_not_fatal() {
    let fixture = Fixture::new(4_000, 1000, 2, 4).await;
    let si = fixture.cap.storage_index().to_string();
    // A stray file that looks like share 9 of a 4-share file, in every server's directory.
    for i in 0..4 {
        let dir = fixture
            .dir
            .path()
            .join(format!("server-{i:02}/shares/{}/{si}", &si[..2]));
        std::fs::write(dir.join("9"), b"not a share").unwrap();
    }
    // Force the reader past its first choices.
    fixture.store_holding(ShareNum(0)).await.set_faults(Faults {
        error: Some("down".into()),
        ..Faults::default()
    });
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(0..4_000).await.unwrap()[..],
        &fixture.plaintext[..]
    );
    let report = audit::verify(
        &fixture.grid,
        &fixture.cap.verify_cap(),
        &ReaderConfig::default(),
        None,
    )
    .await;
    assert!(report.shares.iter().all(|s| s.share.0 < 4), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_share_among_many_is_found_within_the_retry_budget() {
    // k = 16 and primary share 0 disagrees with the rest. Every set of 16 that keeps it
    // fails; a reader that tries sets in plain lexicographic order needs 17 decodes.
    let mut options = small_segments(16, 20, 16 * 64);
    options.tamper = Some(Arc::new(|share, s, block| {
        if share.0 == 0 && s.0 == 0 {
            block[0] ^= 0x80;
        }
    }));
    let fixture = Fixture::with_options(3_000, options).await;
    let file = client(&fixture).open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(0..3_000).await.unwrap()[..],
        &fixture.plaintext[..]
    );
    let report = audit::verify(
        &fixture.grid,
        &fixture.cap.verify_cap(),
        &ReaderConfig::default(),
        None,
    )
    .await;
    let bad: Vec<_> = report
        .shares
        .iter()
        .filter(|s| !s.is_good())
        .map(|s| s.share)
        .collect();
    assert_eq!(bad, vec![ShareNum(0)], "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_listed_after_opening_rescues_a_stalled_fetch() {
    let fixture = Fixture::new(4_000, 1000, 2, 4).await;
    let [a, b, c, d] = [0u8, 1, 2, 3].map(ShareNum);
    let (a, _b) = (
        fixture.store_holding(a).await,
        fixture.store_holding(b).await,
    );
    let slow = [
        fixture.store_holding(c).await,
        fixture.store_holding(d).await,
    ];
    // The parity servers answer everything, their listings included, after 1.5 s: the file
    // opens from the primaries before they are heard of.
    for store in slow {
        store.set_faults(Faults {
            latency: Some(Duration::from_millis(1500)),
            ..Faults::default()
        });
    }
    let mut config = ReaderConfig::default();
    config.request_timeout = Duration::from_secs(600);
    let client = Client::new(fixture.grid.clone(), config);
    let file = client.open(&fixture.cap).await.unwrap();
    a.set_faults(Faults {
        stall: true,
        ..Faults::default()
    });
    // Share 0 stalls and its hedge finds no other share until the parity listings arrive;
    // then the fetch must move on, not wait out the ten-minute request timeout.
    let read = tokio::time::timeout(Duration::from_secs(60), file.read(0..4_000)).await;
    assert_eq!(
        &read.expect("rescued by the late listing").unwrap()[..],
        &fixture.plaintext[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_network_sequential_reads_fetch_segments_in_batches() {
    let fixture = Fixture::new(64_000, 1000, 3, 10).await;
    fixture.set_faults(&Faults {
        remote: true,
        ..Faults::default()
    });
    let file = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    for store in &fixture.stores {
        store.start_log();
    }
    assert_eq!(
        &file.read(0..64_000).await.unwrap()[..],
        &fixture.plaintext[..]
    );
    let requests: Vec<_> = fixture.stores.iter().flat_map(|s| s.take_log()).collect();
    let ranges: usize = requests.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(ranges, 64 * 3, "one record per segment per share");
    assert!(
        requests.len() * 2 <= 64 * 3,
        "{} requests for 64 segments of 3 blocks",
        requests.len()
    );

    // A share that lies within a batch: the batch falls back to single-segment fetches.
    fixture.store_holding(ShareNum(1)).await.set_faults(Faults {
        remote: true,
        flip_seed: Some(9),
        ..Faults::default()
    });
    let fresh = fixed_client(&fixture).open(&fixture.cap).await.unwrap();
    let mut stream = fresh.stream(0..64_000);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, fixture.plaintext);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_read_that_stalls_is_hedged_and_its_server_marked_slow() {
    let fixture = Fixture::new(4_000, 1000, 2, 4).await;
    let stalled = fixture.store_holding(ShareNum(0)).await;
    stalled.set_faults(Faults {
        stall_reads: true,
        ..Faults::default()
    });
    let mut config = ReaderConfig::default();
    config.request_timeout = Duration::from_secs(600);
    let client = Client::new(fixture.grid.clone(), config);
    let file = tokio::time::timeout(Duration::from_secs(60), client.open(&fixture.cap))
        .await
        .expect("the header read was hedged")
        .unwrap();
    // Its header read runs late (250 ms for a server never heard from) and marks it slow.
    let slow = || -> Vec<String> {
        client
            .grid()
            .servers()
            .iter()
            .filter(|s| s.health().snapshot().slow)
            .map(|s| s.name().to_owned())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !slow().iter().any(|name| name == stalled.name())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slow = slow();
    assert_eq!(
        slow,
        vec![stalled.name().to_owned()],
        "its late header read marked the stalled server slow, and only it"
    );
    // So the first segment goes elsewhere at once.
    let read = tokio::time::timeout(Duration::from_millis(200), file.read(0..4_000)).await;
    assert_eq!(
        &read.expect("no wait for the slow server").unwrap()[..],
        &fixture.plaintext[..]
    );
}

/// A file opened from the disk cache starts reading before any server has answered its
/// listing. A segment the cache lacks then waits for the listing: one server answering at
/// once and the others late must not end the read with the one share that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_opened_from_the_cache_waits_for_late_listings_before_giving_up() {
    use segvault::cache::{CacheConfig, DiskCache};
    use segvault::metrics::Metrics;

    let fixture = Fixture::new(8_000, 1000, 3, 5).await;
    let cache_dir = fixture.dir.path().join("cache");
    let open_cache = || {
        DiskCache::open(
            CacheConfig::new(&cache_dir, 1 << 20),
            Arc::new(Metrics::default()),
        )
        .expect("cache")
    };
    let cache = open_cache();
    let warm = Client::with_cache(fixture.grid.clone(), ReaderConfig::default(), cache.clone());
    let file = warm.open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(0..1000).await.unwrap()[..],
        &fixture.plaintext[..1000]
    );
    cache.flush().await;
    drop((file, warm, cache));

    // Every server but one answers (listings too) only after 300 ms.
    let late = Faults {
        latency: Some(Duration::from_millis(300)),
        ..Faults::default()
    };
    for store in &fixture.stores[1..] {
        store.set_faults(late.clone());
    }
    let cold = Client::with_cache(fixture.grid.clone(), ReaderConfig::default(), open_cache());
    let file = cold.open(&fixture.cap).await.unwrap();
    assert_eq!(
        &file.read(5_000..6_000).await.unwrap()[..],
        &fixture.plaintext[5_000..6_000],
        "a segment the cache lacks, read while the listing is still coming in"
    );
}

/// Across a network the read-ahead window holds the servers' measured latency times the
/// target rate: a grid 30 ms away reads further ahead than the same grid on loopback, within
/// the memory bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_ahead_window_follows_the_servers_latency() {
    let fixture = Fixture::new(4 << 20, 64 << 10, 3, 10).await;
    let near = Faults {
        remote: true,
        ..Faults::default()
    };
    fixture.set_faults(&near);
    let client = Client::new(fixture.grid.clone(), ReaderConfig::default());
    let file = client.open(&fixture.cap).await.unwrap();
    file.read(0..1000).await.unwrap();
    let loopback_window = file.read_ahead();
    assert_eq!(
        loopback_window,
        ReaderConfig::default().remote_read_ahead_segments
    );

    fixture.set_faults(&Faults {
        latency: Some(Duration::from_millis(30)),
        ..near
    });
    for offset in 1..20u64 {
        let at = offset * (64 << 10);
        let got = file.read(at..at + 10).await.unwrap();
        assert_eq!(&got[..], fixture.expected(at, 10));
    }
    let far_window = file.read_ahead();
    let ceiling = (ReaderConfig::default().remote_read_ahead_bytes / (64 << 10)) as usize;
    assert!(
        far_window > loopback_window && far_window <= ceiling,
        "window {far_window} for 30 ms servers (loopback {loopback_window}, ceiling {ceiling})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_return_to_primary_shares_once_a_loaded_grid_is_quiet() {
    let fixture = Fixture::new(1_000_000, 4096, 3, 10).await;
    let mut config = ReaderConfig::default();
    // Marks from the loaded spell expire quickly, so the test is short; the estimates'
    // fading is the policy's own.
    config.slow_ttl = Duration::from_millis(300);
    let client = Client::new(fixture.grid.clone(), config);
    let file = client.open(&fixture.cap).await.unwrap();
    let segments = fixture.plaintext.len() as u64 / 4096;
    let mut next = 0u64;
    let mut read_one = || {
        let at = (next % segments) * 4096;
        next += 1;
        let file = file.clone();
        async move { file.read(at..at + 4096).await.unwrap() }
    };
    let mix = || client.metrics().share_mix();

    // A spell of load: the servers holding the primaries answer 30 ms late.
    let slow = Faults {
        latency: Some(Duration::from_millis(30)),
        ..Faults::default()
    };
    for share in 0..3 {
        fixture
            .store_holding(ShareNum(share))
            .await
            .set_faults(slow.clone());
    }
    let before = mix();
    for _ in 0..40 {
        read_one().await;
    }
    let during = mix();
    assert!(
        during.1 - before.1 > 0,
        "under load the readers hedge onto parity: {before:?} → {during:?}"
    );

    // Quiet again: within a couple of seconds the readers are back on primaries.
    fixture.set_faults(&Faults::default());
    let quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        read_one().await;
    }
    let settled = mix();
    for _ in 0..200 {
        read_one().await;
    }
    let after = mix();
    let (primary, parity) = (after.0 - settled.0, after.1 - settled.1);
    assert!(
        parity * 20 <= primary + parity,
        "a quiet grid is read from primaries: {primary} primary and {parity} parity blocks"
    );
}
