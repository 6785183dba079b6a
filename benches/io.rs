//! End to end through the library on an embedded grid in a temporary directory: put
//! throughput, sequential read throughput, and random 64 KiB read latency on a warm node.
//! (Page-cache speeds: the shares of a freshly written file are in memory.)

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use segvault::GetRange;
use segvault::{Client, Grid, PutOptions, PutSource, ReaderConfig};

const FILE: usize = 64 << 20;

fn plaintext() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..FILE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn io(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::embedded(dir.path()).unwrap();
    let data = plaintext();
    let input = dir.path().join("input");
    std::fs::write(&input, &data).unwrap();

    let mut group = c.benchmark_group("io");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(FILE as u64));
    let options = PutOptions::default();
    group.bench_function("put 64 MiB file", |b| {
        b.to_async(&runtime)
            .iter(|| segvault::upload::put(&grid, PutSource::Path(input.clone()), &options))
    });

    let cap = runtime
        .block_on(segvault::upload::put(
            &grid,
            PutSource::Path(input.clone()),
            &PutOptions::default(),
        ))
        .unwrap();
    let client = Client::new(grid.clone(), ReaderConfig::default());
    let file = runtime.block_on(client.open(&cap)).unwrap();
    group.bench_function("sequential read 64 MiB", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut stream = file.stream(0..FILE as u64);
            let mut total = 0;
            while let Some(chunk) = stream.next().await {
                total += chunk.unwrap().len();
            }
            assert_eq!(total, FILE);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("latency");
    group.throughput(Throughput::Bytes(65_536));
    let mut state = 1u64;
    group.bench_function("random 64 KiB read, warm node", |b| {
        b.to_async(&runtime).iter(|| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let offset = (state >> 20) % (FILE as u64 - 65_536);
            let file = file.clone();
            async move { file.read(GetRange::at(offset, 65_536)).await.unwrap() }
        })
    });
    group.finish();

    // The median alone, the way the closing note quotes it.
    let mut samples: Vec<Duration> = (0..2000u64)
        .map(|i| {
            let offset = (i.wrapping_mul(2_654_435_761) << 7) % (FILE as u64 - 65_536);
            let started = Instant::now();
            runtime
                .block_on(file.read(GetRange::at(offset, 65_536)))
                .unwrap();
            started.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "random 64 KiB reads, warm node: p50 {:?}, p99 {:?} (2000 reads)",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}

criterion_group!(benches, io);
criterion_main!(benches);
