//! Each pipeline stage alone, on one 128 KiB segment (k=3, n=10): hashing, Reed–Solomon
//! encode and decode, AES-256-CTR, Merkle chain verification, and the whole
//! verify + decode + decrypt step.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segvault::core::cipher::{FileKey, Keystream};
use segvault::core::erasure::Codec;
use segvault::core::geometry::{Geometry, SegmentIndex};
use segvault::core::hash::{self, Hash};
use segvault::core::planner::plan_range;
use segvault::core::tree::{self, PartialTree, TreeShape};

const SEGMENT: usize = 128 * 1024;
const K: usize = 3;
const N: usize = 10;

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect()
}

fn blocks() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let block = SEGMENT.div_ceil(K);
    let mut padded = data(SEGMENT);
    padded.resize(block * K, 0);
    let data: Vec<Vec<u8>> = padded.chunks(block).map(<[u8]>::to_vec).collect();
    let mut parity = vec![vec![0u8; block]; N - K];
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut prefs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
    Codec::new(K as u16, N as u16)
        .unwrap()
        .encode(&refs, &mut prefs)
        .unwrap();
    (data, parity)
}

fn stages(c: &mut Criterion) {
    let (data_blocks, parity) = blocks();
    let codec = Codec::new(K as u16, N as u16).unwrap();
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(SEGMENT as u64));

    group.bench_function("hash k blocks (BLAKE3)", |b| {
        b.iter(|| {
            data_blocks
                .iter()
                .map(|d| hash::block_leaf(black_box(d)))
                .collect::<Vec<Hash>>()
        })
    });
    group.bench_function("hash n blocks (upload)", |b| {
        b.iter(|| {
            data_blocks
                .iter()
                .chain(&parity)
                .map(|d| hash::block_leaf(black_box(d)))
                .collect::<Vec<Hash>>()
        })
    });
    group.bench_function("rs encode 3+7", |b| {
        let refs: Vec<&[u8]> = data_blocks.iter().map(Vec::as_slice).collect();
        let mut out = parity.clone();
        b.iter(|| {
            let mut prefs: Vec<&mut [u8]> = out.iter_mut().map(Vec::as_mut_slice).collect();
            codec.encode(black_box(&refs), &mut prefs).unwrap()
        })
    });
    for missing in [1usize, 3] {
        group.bench_with_input(
            BenchmarkId::new("rs decode, data blocks missing", missing),
            &missing,
            |b, &missing| {
                let mut inputs: Vec<(usize, &[u8])> = (missing..K)
                    .map(|i| (i, data_blocks[i].as_slice()))
                    .collect();
                inputs.extend((0..missing).map(|i| (K + i, parity[i].as_slice())));
                b.iter(|| codec.decode(black_box(&inputs)).unwrap())
            },
        );
    }
    let keystream = Keystream::new(&FileKey::from_bytes([7; 32]));
    let plain = data(SEGMENT);
    group.bench_function("aes-256-ctr decrypt", |b| {
        let mut out = vec![0u8; SEGMENT];
        b.iter(|| keystream.apply_into(black_box(1 << 30), &plain, &mut out))
    });
    group.finish();

    // A 1 GiB file in 128 KiB segments: 8192 leaves, depth 13.
    let leaves: Vec<Hash> = (0..8192u64)
        .map(|i| hash::block_leaf(&i.to_le_bytes()))
        .collect();
    let nodes = tree::build(&leaves);
    let shape = TreeShape::new(8192);
    let chain = tree::chain_of(&nodes, &shape, 4321);
    c.bench_function("merkle: verify a cold 13-level chain", |b| {
        b.iter(|| {
            let mut t = PartialTree::new(shape, nodes[0]);
            t.verify_leaf(4321, leaves[4321], black_box(&chain))
                .unwrap()
        })
    });
    c.bench_function("merkle: verify a warm leaf (sibling known)", |b| {
        let mut t = PartialTree::new(shape, nodes[0]);
        t.verify_leaf(4320, leaves[4320], &tree::chain_of(&nodes, &shape, 4320))
            .unwrap();
        b.iter(|| t.verify_leaf(4321, leaves[4321], black_box(&[])).unwrap())
    });
    let g = Geometry::new(1 << 30, SEGMENT as u64, 3, 10).unwrap();
    c.bench_function("plan a 64 KiB range", |b| {
        b.iter(|| plan_range(&g, black_box(123_456_789..123_456_789 + 65_536)).count())
    });

    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Bytes(SEGMENT as u64));
    group.bench_function("verify + decode + decrypt, primaries", |b| {
        let mut out = vec![0u8; SEGMENT];
        b.iter(|| {
            let leaves: Vec<Hash> = data_blocks.iter().map(|d| hash::block_leaf(d)).collect();
            black_box(hash::ciphertext_leaf(&leaves));
            let mut at = 0;
            for block in &data_blocks {
                let n = block.len().min(SEGMENT - at);
                keystream.apply_into(at as u64, &block[..n], &mut out[at..at + n]);
                at += n;
            }
        })
    });
    group.bench_function("verify + decode + decrypt, 3 parity", |b| {
        let inputs: Vec<(usize, &[u8])> = (0..K).map(|i| (K + i, parity[i].as_slice())).collect();
        let mut out = vec![0u8; SEGMENT];
        b.iter(|| {
            let mut leaves: Vec<Hash> = inputs.iter().map(|(_, d)| hash::block_leaf(d)).collect();
            let rebuilt = codec.decode(&inputs).unwrap();
            leaves.clear();
            leaves.extend(rebuilt.iter().map(|d| hash::block_leaf(d)));
            black_box(hash::ciphertext_leaf(&leaves));
            let mut at = 0;
            for block in &rebuilt {
                let n = block.len().min(SEGMENT - at);
                keystream.apply_into(at as u64, &block[..n], &mut out[at..at + n]);
                at += n;
            }
        })
    });
    group.finish();
    let _ = SegmentIndex(0);
}

criterion_group!(benches, stages);
criterion_main!(benches);
