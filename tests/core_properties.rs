//! Properties of the pure core. Each property is written once as `<name>_impl`, run on random
//! input by `<name>_proptest` and on fixed edge cases by `<name>_cases`.

use proptest::prelude::*;
use segvault::core::cap::{Cap, ReadCap, StorageIndex, VerifyCap};
use segvault::core::cipher::{FileKey, Keystream};
use segvault::core::codec::Codec as _;
use segvault::core::erasure::Codec;
use segvault::core::geometry::{Geometry, SegmentIndex, ShareNum};
use segvault::core::hash::{self, Hash};
use segvault::core::layout::ShareLayout;
use segvault::core::planner::{Record, RecordRequest, plan_range};
use segvault::core::share_header::ShareHeader;
use segvault::core::tree::{self, PartialTree, TreeShape};
use segvault::core::ueb::Ueb;

// ---------------------------------------------------------------- geometry and planning

fn geometry_tiles_the_file_impl(size: u64, segment_size: u64, k: u16, n: u16) {
    let Ok(g) = Geometry::new(size, segment_size, k, n) else {
        return;
    };
    let layout = ShareLayout::new(&g);
    let mut next = 0;
    for s in 0..g.num_segments().min(2000) {
        let seg = SegmentIndex(s);
        let range = g.segment_range(seg);
        assert_eq!(range.start, next, "segments are contiguous");
        assert!(range.end > range.start, "no empty segment");
        assert!(g.block_size(seg) * u64::from(k) >= g.segment_len(seg));
        assert!(
            g.block_size(seg) * u64::from(k) < g.segment_len(seg) + u64::from(k),
            "padding is under k bytes"
        );
        assert_eq!(g.segment_of(range.start), seg);
        assert_eq!(g.segment_of(range.end - 1), seg);
        // Primary spans tile the segment.
        let mut covered = 0;
        for m in 0..k {
            let span = g.primary_span(seg, m);
            assert_eq!(span.start, covered.min(g.segment_len(seg)));
            covered = span.end;
        }
        assert_eq!(covered, g.segment_len(seg));
        assert!(layout.chain_range(seg).end <= layout.block_tree_range().start);
        next = range.end;
    }
    if g.num_segments() <= 2000 {
        assert_eq!(next, size, "segments end at the end of the file");
    }
}

proptest! {
    #[test]
    fn geometry_tiles_the_file_proptest(size in 0u64..1_000_000, segment_size in 1u64..70_000, k in 1u16..12, extra in 0u16..6) {
        geometry_tiles_the_file_impl(size, segment_size, k, k + extra);
    }
}

#[test]
fn geometry_tiles_the_file_cases() {
    let seg = 128 * 1024;
    for size in [0, 1, seg - 1, seg, seg + 1, 7 * seg + 3] {
        for (k, n) in [(1, 1), (3, 10), (5, 7), (256, 256), (1, 256)] {
            geometry_tiles_the_file_impl(size, seg, k, n);
        }
    }
    assert!(
        Geometry::new(u64::MAX, 1, 1, 1).is_err(),
        "too many segments"
    );
    geometry_tiles_the_file_impl(1 << 30, 1, 1, 1);
    geometry_tiles_the_file_impl(1 << 52, 16 << 20, 3, 10);
}

fn plan_covers_range_impl(size: u64, segment_size: u64, offset: u64, len: u64) {
    let Ok(g) = Geometry::new(size, segment_size, 1, 1) else {
        return;
    };
    let start = offset.min(size);
    let end = offset.saturating_add(len).min(size).max(start);
    let mut expected = start;
    for slice in plan_range(&g, offset..offset.saturating_add(len)) {
        let seg_start = g.segment_start(slice.segment);
        assert_eq!(seg_start + slice.within.start, expected);
        assert_eq!(slice.output_offset, expected - start);
        assert!(slice.within.end <= g.segment_len(slice.segment));
        expected = seg_start + slice.within.end;
    }
    assert_eq!(expected, end);
}

proptest! {
    #[test]
    fn plan_covers_range_proptest(size in 0u64..100_000, segment_size in 1u64..5000, offset in 0u64..110_000, len in 0u64..40_000) {
        plan_covers_range_impl(size, segment_size, offset, len);
    }
}

#[test]
fn plan_covers_range_cases() {
    let seg = 1000;
    for (offset, len) in [
        (0, 0),
        (0, 1),
        (999, 1),
        (999, 2),
        (1000, 1),
        (4999, 1),
        (4999, 10),
        (5000, 1),
        (u64::MAX, u64::MAX),
        (0, u64::MAX),
    ] {
        plan_covers_range_impl(5000, seg, offset, len);
    }
}

// ---------------------------------------------------------------- hash trees

fn leaves(n: u64, salt: u8) -> Vec<Hash> {
    (0..n)
        .map(|i| hash::block_leaf(&[&i.to_le_bytes()[..], &[salt]].concat()))
        .collect()
}

fn verify_every_leaf_in_order_impl(count: u64, order: &[u64]) {
    let l = leaves(count, 1);
    let nodes = tree::build(&l);
    let shape = TreeShape::new(count);
    let mut partial = PartialTree::new(shape, nodes[0]);
    for &j in order {
        let j = j % count.max(1);
        if count == 0 {
            break;
        }
        let chain = tree::chain_of(&nodes, &shape, j);
        let needed = partial.levels_needed(j) as usize;
        // The planner's promise: the first `needed` levels suffice.
        partial
            .verify_leaf(j, l[j as usize], &chain[..needed])
            .unwrap();
        assert_eq!(partial.levels_needed(j), 0);
        assert_eq!(
            tree::root_from_chain(&shape, j, l[j as usize], &chain).unwrap(),
            nodes[0]
        );
        // A wrong leaf is refused however warm the tree is.
        assert!(
            partial
                .verify_leaf(j, l[j as usize].map_wrong(), &chain)
                .is_err()
        );
    }
}

trait MapWrong {
    fn map_wrong(self) -> Hash;
}
impl MapWrong for Hash {
    fn map_wrong(self) -> Hash {
        let mut bytes = self.0;
        bytes[0] ^= 1;
        Hash(bytes)
    }
}

proptest! {
    #[test]
    fn verify_every_leaf_in_order_proptest(count in 0u64..300, order in proptest::collection::vec(any::<u64>(), 0..40)) {
        verify_every_leaf_in_order_impl(count, &order);
    }
}

#[test]
fn verify_every_leaf_in_order_cases() {
    for count in [0, 1, 2, 3, 4, 5, 127, 128, 129] {
        verify_every_leaf_in_order_impl(count, &(0..count).collect::<Vec<_>>());
        verify_every_leaf_in_order_impl(count, &(0..count).rev().collect::<Vec<_>>());
    }
}

// ---------------------------------------------------------------- cipher and erasure code

proptest! {
    #[test]
    fn decrypting_any_slice_alone_matches_proptest(key in any::<[u8; 32]>(), data in proptest::collection::vec(any::<u8>(), 0..2000), a in 0usize..2000, b in 0usize..2000) {
        let ks = Keystream::new(&FileKey::from_bytes(key));
        let mut whole = data.clone();
        ks.apply(0, &mut whole);
        let (start, end) = (a.min(b).min(data.len()), a.max(b).min(data.len()));
        let mut piece = vec![0; end - start];
        ks.apply_into(start as u64, &whole[start..end], &mut piece);
        prop_assert_eq!(&piece[..], &data[start..end]);
    }

    #[test]
    fn any_k_blocks_rebuild_the_segment_proptest(k in 1u16..8, extra in 0u16..6, len in 1usize..300, seed in any::<u64>(), pick in any::<u64>()) {
        let n = k + extra;
        let codec = Codec::new(k, n).unwrap();
        let data: Vec<Vec<u8>> = (0..k).map(|i| (0..len).map(|j| (seed >> (j % 56)) as u8 ^ (i as u8).wrapping_mul(29) ^ j as u8).collect()).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parity = vec![vec![0u8; len]; usize::from(extra)];
        let mut prefs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        codec.encode(&refs, &mut prefs).unwrap();
        let all: Vec<&[u8]> = refs.iter().copied().chain(parity.iter().map(Vec::as_slice)).collect();
        // A pseudo-random choice of k distinct shares.
        let mut shares: Vec<usize> = (0..usize::from(n)).collect();
        let mut state = pick;
        for i in (1..shares.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shares.swap(i, (state >> 33) as usize % (i + 1));
        }
        let chosen: Vec<(usize, &[u8])> = shares[..usize::from(k)].iter().map(|&s| (s, all[s])).collect();
        prop_assert_eq!(codec.decode(&chosen).unwrap(), data);
    }
}

// ---------------------------------------------------------------- wire formats

fn arbitrary_geometry() -> impl Strategy<Value = Geometry> {
    (0u64..1 << 40, 1u64..=16 << 20, 1u16..=256, 0u16..=255)
        .prop_filter_map("valid", |(size, seg, k, extra)| {
            Geometry::new(size, seg, k, k.saturating_add(extra).min(256)).ok()
        })
}

fn codecs_round_trip_impl(g: Geometry, a: [u8; 32], b: [u8; 32], si: [u8; 16], share: u8) {
    let ueb = Ueb {
        geometry: g,
        share_root: Hash(a),
        ciphertext_root: Hash(b),
    };
    let bytes = ueb.to_bytes();
    assert_eq!(Ueb::from_bytes(&bytes).unwrap(), ueb);
    segvault::fuzzing::parse_ueb(&bytes);

    let header = ShareHeader {
        share: ShareNum((u16::from(share) % g.n()) as u8),
        geometry: g,
        storage_index: StorageIndex(si),
    };
    let bytes = header.to_bytes();
    assert_eq!(ShareHeader::from_bytes(&bytes).unwrap(), header);
    segvault::fuzzing::parse_share_header(&bytes);

    let read = ReadCap::new(FileKey::from_bytes(a), Hash(b), g);
    let text = read.to_secret_string();
    assert_eq!(text.parse::<ReadCap>().unwrap(), read);
    segvault::fuzzing::parse_cap(text.as_bytes());
    let verify = VerifyCap::new(StorageIndex(si), Hash(b), g);
    assert_eq!(
        verify.to_string().parse::<Cap>().unwrap(),
        Cap::Verify(verify)
    );
}

proptest! {
    #[test]
    fn codecs_round_trip_proptest(g in arbitrary_geometry(), a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), si in any::<[u8; 16]>(), share in any::<u8>()) {
        codecs_round_trip_impl(g, a, b, si, share);
    }

    /// Any single-byte change to a valid encoding is refused or decodes to a different value.
    #[test]
    fn mutated_encodings_never_alias_proptest(g in arbitrary_geometry(), at in any::<usize>(), xor in 1u8..=255) {
        let ueb = Ueb { geometry: g, share_root: Hash([1; 32]), ciphertext_root: Hash([2; 32]) };
        let mut bytes = ueb.to_bytes();
        let i = at % bytes.len();
        bytes[i] ^= xor;
        if let Ok(other) = Ueb::from_bytes(&bytes) { prop_assert_ne!(other, ueb); }
        segvault::fuzzing::parse_ueb(&bytes);
        let text = ReadCap::new(FileKey::from_bytes([3; 32]), Hash([4; 32]), g).to_secret_string();
        let mut text = text.as_bytes().to_vec();
        let i = at % text.len();
        text[i] ^= xor;
        segvault::fuzzing::parse_cap(&text);
    }
}

#[test]
fn codecs_round_trip_cases() {
    for (size, seg, k, n) in [
        (0, 1, 1, 1),
        (1, 1, 1, 1),
        (u64::from(u32::MAX), 16 << 20, 256, 256),
        (1 << 52, 16 << 20, 3, 10),
    ] {
        let g = Geometry::new(size, seg, k, n).unwrap();
        codecs_round_trip_impl(g, [0; 32], [0xff; 32], [0x80; 16], 255);
    }
}

// ---------------------------------------------------------------- share requests

fn requests_stay_inside_the_share_impl(
    size: u64,
    segment_size: u64,
    k: u16,
    n: u16,
    s: u64,
    levels: u32,
    header: bool,
) {
    let Ok(g) = Geometry::new(size, segment_size, k, n) else {
        return;
    };
    if g.num_segments() == 0 {
        return;
    }
    let layout = ShareLayout::new(&g);
    let segment = SegmentIndex(s % g.num_segments());
    let request = RecordRequest {
        segment,
        levels,
        share_chain: header,
    };
    let range = request.range(&layout);
    let record = layout.record_range(segment);
    assert!(
        range.start == record.start && range.end <= record.end && record.end <= layout.share_len()
    );
    let bytes = vec![0; (range.end - range.start) as usize];
    let parsed = Record::parse(&layout, segment, &bytes).expect("parse what was planned");
    assert_eq!(parsed.block.len() as u64, g.block_size(segment));
    if header {
        assert_eq!(
            parsed.share_chain.map(|c| c.len() as u32),
            Some(layout.share_chain_levels())
        );
    }
}

proptest! {
    #[test]
    fn requests_stay_inside_the_share_proptest(size in 1u64..10_000_000, seg in 1u64..200_000, k in 1u16..10, extra in 0u16..10, s in any::<u64>(), levels in 0u32..40, header in any::<bool>()) {
        requests_stay_inside_the_share_impl(size, seg, k, k + extra, s, levels, header);
    }
}

#[test]
fn requests_stay_inside_the_share_cases() {
    requests_stay_inside_the_share_impl(1, 1, 1, 1, 0, 0, true);
    requests_stay_inside_the_share_impl(1, 1, 1, 1, 0, 99, false);
    requests_stay_inside_the_share_impl(1 << 30, 128 << 10, 3, 10, 8191, 13, true);
}
