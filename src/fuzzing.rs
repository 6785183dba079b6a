//! Fuzz harnesses. Each `fuzz/fuzz_targets/*.rs` is one line calling a function here, and the
//! property tests call the same functions with random input, so every target also runs under
//! `cargo test` on the stable toolchain.
//!
//! Each harness asserts the properties the format promises; a panic is a bug.

use arbitrary::{Arbitrary, Unstructured};

use crate::core::cap::Cap;
use crate::core::codec::Codec;
use crate::core::geometry::{Geometry, SegmentIndex};
use crate::core::hash::{self, Hash};
use crate::core::layout::ShareLayout;
use crate::core::planner::{Record, RecordRequest, plan_range};
use crate::core::share_header::ShareHeader;
use crate::core::synthetic::SyntheticFile;
use crate::core::tree::{self, NodeIndex, PartialTree, TreeShape};
use crate::core::ueb::Ueb;
use crate::core::verifier::{self, FileTrees, VerifyError};

#[derive(Debug, Arbitrary)]
struct GeometryInput {
    size: u64,
    segment_size: u32,
    k: u16,
    n: u16,
    offset: u64,
    len: u64,
    levels: u32,
    segment: u64,
    header: bool,
    small: bool,
}

/// Segment math and the planner: any parameters either fail validation or give a plan that
/// covers the clamped range exactly, with every share range inside the share.
pub fn geometry_and_planner(data: &[u8]) {
    let Ok(input) = GeometryInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let size = if input.small {
        input.size % 100_000
    } else {
        input.size
    };
    let segment_size = if input.small {
        u64::from(input.segment_size % 5000)
    } else {
        u64::from(input.segment_size)
    };
    let Ok(g) = Geometry::new(size, segment_size, input.k, input.n) else {
        return;
    };
    let layout = ShareLayout::new(&g);

    // The plan tiles the clamped range with in-segment slices, in order.
    let start = input.offset % (g.size() + 2);
    let range = start..start.saturating_add(input.len % (4 * g.segment_size() + 2));
    let clamped = crate::core::planner::clamp(&g, range.start, range.end - range.start);
    let mut covered = clamped.start;
    for slice in plan_range(&g, range).take(64) {
        let seg = g.segment_range(slice.segment);
        assert!(slice.within.start < slice.within.end, "empty slice");
        assert!(
            slice.within.end <= seg.end - seg.start,
            "slice past its segment"
        );
        assert_eq!(seg.start + slice.within.start, covered, "gap or overlap");
        assert_eq!(slice.output_offset, covered - clamped.start);
        covered = seg.start + slice.within.end;
    }
    if g.segments_overlapping(clamped.clone()).count() <= 64 {
        assert_eq!(covered, clamped.end, "plan does not reach the end");
    }

    // Blocks and records stay inside the share and never overlap their neighbours.
    if g.num_segments() > 0 {
        let s = SegmentIndex(input.segment % g.num_segments());
        let block = layout.block_range(s);
        assert_eq!(block.end - block.start, g.block_size(s));
        assert!(g.block_size(s) * u64::from(g.k()) >= g.segment_len(s));
        assert!(g.block_size(s) >= 1);
        assert!(layout.record_range(s).end <= layout.block_tree_range().start);
        if s.0 + 1 < g.num_segments() {
            assert_eq!(
                layout.record_range(s).end,
                layout.record_offset(SegmentIndex(s.0 + 1))
            );
        }
        let request = RecordRequest {
            segment: s,
            levels: input.levels,
            share_chain: input.header,
        };
        let range = request.range(&layout);
        assert!(range.start < range.end && range.end <= layout.share_len());
        assert!(
            range.end <= layout.record_range(s).end,
            "a request stays inside its record"
        );
        if g.block_size(s) <= 1 << 16 {
            let bytes = vec![0u8; (range.end - range.start) as usize];
            let parsed = Record::parse(&layout, s, &bytes).expect("planned record parses");
            assert_eq!(parsed.block.len() as u64, g.block_size(s));
            let levels = if input.header {
                layout.depth()
            } else {
                input.levels.min(layout.depth())
            };
            assert_eq!(parsed.block_chain.len() as u32, levels);
            let whole =
                input.header || (layout.share_chain_levels() == 0 && levels == layout.depth());
            assert_eq!(parsed.share_chain.is_some(), whole);
        }
    }
    assert_eq!(layout.ciphertext_tree_range().end, layout.share_len());
}

#[derive(Debug, Arbitrary)]
enum TreeOp {
    Insert(Vec<(u16, Option<[u8; 4]>)>),
    VerifyLeaf {
        leaf: u16,
        corrupt_level: Option<u8>,
        truncate: Option<u8>,
        corrupt_leaf: bool,
    },
}

/// The incomplete tree with hostile nodes: whatever is offered, every node it accepts equals
/// the real tree's node, a true chain is always accepted, and a refused batch changes nothing.
pub fn merkle(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(leaf_count) = u.int_in_range(0u64..=70) else {
        return;
    };
    let leaves: Vec<Hash> = (0..leaf_count)
        .map(|i| hash::block_leaf(&i.to_le_bytes()))
        .collect();
    let truth = tree::build(&leaves);
    let shape = TreeShape::new(leaf_count);
    let mut partial = PartialTree::new(shape, truth[0]);
    let garbage = |seed: [u8; 4]| hash::block_leaf(&seed);
    let Ok(ops) = Vec::<TreeOp>::arbitrary(&mut u) else {
        return;
    };
    for op in ops.into_iter().take(32) {
        let before = partial.known();
        let result = match op {
            TreeOp::Insert(nodes) => {
                let batch: Vec<(NodeIndex, Hash)> = nodes
                    .into_iter()
                    .take(64)
                    .map(|(i, bad)| {
                        let node = NodeIndex(u64::from(i));
                        let value = match bad {
                            Some(seed) => garbage(seed),
                            None => truth.get(node.0 as usize).copied().unwrap_or_default(),
                        };
                        (node, value)
                    })
                    .collect();
                partial.insert(&batch).map(|_| ())
            }
            TreeOp::VerifyLeaf {
                leaf,
                corrupt_level,
                truncate,
                corrupt_leaf,
            } => {
                let j = u64::from(leaf) % shape.width();
                let mut chain = tree::chain_of(&truth, &shape, j);
                let mut honest = true;
                if let Some(level) = corrupt_level
                    && let Some(h) = chain.get_mut(usize::from(level))
                {
                    *h = garbage([level, 1, 2, 3]);
                    honest = false;
                }
                if let Some(t) = truncate {
                    chain.truncate(usize::from(t));
                    honest = false;
                }
                let leaf_hash = if corrupt_leaf {
                    garbage([9, 9, 9, 9])
                } else {
                    truth[shape.leaf_node(j).0 as usize]
                };
                let result = partial.verify_leaf(j, leaf_hash, &chain);
                if honest && !corrupt_leaf {
                    assert!(result.is_ok(), "a true chain was refused: {result:?}");
                }
                if corrupt_leaf {
                    assert!(result.is_err(), "a wrong leaf was accepted");
                }
                result
            }
        };
        if result.is_err() {
            assert_eq!(partial.known(), before, "a refused batch changed the tree");
        }
        for i in 0..shape.node_count() {
            if let Some(known) = partial.get(NodeIndex(i)) {
                assert_eq!(known, truth[i as usize], "accepted a wrong node {i}");
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct VerifierInput {
    size: u16,
    segment_size: u16,
    k: u8,
    n: u8,
    share: u8,
    segment: u8,
    seed: u8,
    /// Blocks of the same share verified first (so that its trees are warm).
    warm: Vec<u8>,
    /// One bit to flip in the record: (byte, bit).
    flip: Option<(u16, u8)>,
    /// Bytes offered as the record instead of the real one.
    forged: Option<Vec<u8>>,
}

/// The verifier against a small, self-consistent file: a true record verifies, cold or warm
/// and by the whole walk; a record with one bit flipped anywhere but its ciphertext chain is
/// refused by the whole walk with an error naming its share and segment; whatever bytes are
/// offered, nothing panics and no block other than the true one is ever accepted.
pub fn verifier(data: &[u8]) {
    let Ok(input) = VerifierInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let k = u16::from(input.k % 4) + 1;
    let n = k + u16::from(input.n % 4);
    let segment_size = u64::from(input.segment_size % 600).max(40);
    let Ok(g) = Geometry::new(u64::from(input.size % 3000), segment_size, k, n) else {
        return;
    };
    let layout = ShareLayout::new(&g);
    let file = SyntheticFile::new(&g, input.seed);
    let mut trees = FileTrees::new(&file.ueb);
    let share = crate::core::geometry::ShareNum(input.share % (n as u8 + 1));
    let segment = SegmentIndex(u64::from(input.segment) % (g.num_segments() + 1));
    let true_record = file.record(share, segment);

    for w in input.warm.iter().take(4) {
        let other = SegmentIndex(u64::from(*w) % g.num_segments().max(1));
        if let Some(record) = file.record(share, other) {
            let parsed = verifier::parse_record(&layout, share, other, &record).unwrap();
            let leaf = hash::block_leaf(parsed.block);
            trees
                .verify_record(share, other, leaf, &parsed)
                .expect("a true record is accepted");
        }
    }

    let Some(truth) = true_record else {
        // Outside the file: whatever is offered is refused.
        let bytes = input.forged.unwrap_or_default();
        let refused = verifier::parse_record(&layout, share, segment, &bytes).is_err();
        assert!(refused, "a record outside the file was parsed");
        return;
    };
    let block_len = g.block_size(segment) as usize;
    let mut bytes = input.forged.clone().unwrap_or_else(|| truth.clone());
    let mut flipped = None;
    if input.forged.is_none()
        && let Some((at, bit)) = input.flip
    {
        let at = usize::from(at) % bytes.len();
        bytes[at] ^= 1 << (bit % 8);
        flipped = Some(at);
    }
    let Ok(record) = verifier::parse_record(&layout, share, segment, &bytes) else {
        return;
    };
    let leaf = hash::block_leaf(record.block);
    let whole = verifier::verify_whole_proof(&file.ueb, share, segment, leaf, &record);
    let before = trees.trees().map(PartialTree::known).sum::<usize>();
    let checked = trees.verify_record(share, segment, leaf, &record);
    match &checked {
        Ok(()) => assert_eq!(record.block, &truth[..block_len], "accepted a wrong block"),
        Err(e) => {
            assert_eq!((e.share(), e.segment()), (Some(share), segment), "{e}");
            let after = trees.trees().map(PartialTree::known).sum::<usize>();
            assert_eq!(before, after, "a refused record changed the trees");
        }
    }
    if whole.is_ok() {
        assert_eq!(
            record.block,
            &truth[..block_len],
            "the whole walk accepted a wrong block"
        );
    }
    let chains_end = block_len + layout.depth() as usize * 64;
    match flipped {
        None if input.forged.is_none() => {
            assert!(
                checked.is_ok() && whole.is_ok(),
                "a true record was refused"
            );
        }
        Some(at) if at >= block_len && at < chains_end && (at - block_len) % 64 >= 32 => {
            // A ciphertext-chain level: checked once the segment is decoded.
            assert!(whole.is_ok());
            let leaf = file.segment_leaves[segment.0 as usize];
            let refused = trees.verify_segment(segment, leaf, &[&record.ciphertext_chain]);
            assert!(
                matches!(refused, Err(VerifyError::CiphertextMismatch { segment: s, .. }) if s == segment),
                "a wrong ciphertext chain was accepted"
            );
        }
        Some(_) => assert!(
            matches!(whole, Err(VerifyError::ProofMismatch { .. })),
            "a flipped record passed the whole walk: {whole:?}"
        ),
        None => {}
    }
}

fn canonical<T: Codec + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = T::from_bytes(data) {
        assert_eq!(value.to_bytes(), data, "accepted a non-canonical encoding");
        assert_eq!(T::from_bytes(&value.to_bytes()).as_ref(), Ok(&value));
    }
}

/// UEB parsing: never panics; whatever it accepts re-encodes to the same bytes.
pub fn parse_ueb(data: &[u8]) {
    canonical::<Ueb>(data);
}

/// Share header parsing: never panics; whatever it accepts re-encodes to the same bytes.
pub fn parse_share_header(data: &[u8]) {
    canonical::<ShareHeader>(data);
}

/// Disk-cache entries: parsing never panics; whatever parses re-encodes to the same bytes.
pub fn cache_entry(data: &[u8]) {
    use crate::core::cache_entry::{encode_header, parse};
    if let Ok((key, record)) = parse(data) {
        let mut again = encode_header(&key, record.len() as u32).to_vec();
        again.extend_from_slice(record);
        assert_eq!(again, data, "an entry that does not re-encode to itself");
    }
}

/// Cache file names: never panics; one key has exactly one name.
pub fn cache_file_name(data: &[u8]) {
    use crate::core::cache_entry::{file_name, parse_file_name};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((share, segment)) = parse_file_name(text) {
        assert_eq!(
            file_name(share, segment),
            text,
            "a non-canonical name was accepted"
        );
    }
}

/// Cap parsing: never panics; whatever it accepts prints back as the same text.
pub fn parse_cap(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Cap>() {
        Ok(Cap::Read(cap)) => assert_eq!(*cap.to_secret_string(), text),
        Ok(Cap::Verify(cap)) => assert_eq!(cap.to_string(), text),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[derive(Debug, Arbitrary)]
struct RangeInput {
    method: u8,
    len: u64,
    small: bool,
    range: Option<Vec<u8>>,
    if_range: Option<Vec<u8>>,
    if_match: Option<Vec<u8>>,
    if_none_match: Option<Vec<u8>>,
    gap: u16,
    parts: u8,
}

/// Range and conditional headers: whatever the client sends, the decision is well-formed
/// (see [`range_decision`]).
pub fn range_header(data: &[u8]) {
    let Ok(input) = RangeInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let len = if input.small {
        input.len % 2000
    } else {
        input.len
    };
    let headers = [
        (hyper::header::RANGE, input.range.as_deref()),
        (hyper::header::IF_RANGE, input.if_range.as_deref()),
        (hyper::header::IF_MATCH, input.if_match.as_deref()),
        (hyper::header::IF_NONE_MATCH, input.if_none_match.as_deref()),
    ];
    range_decision(input.method, len, &headers, input.gap, input.parts);
}

/// Decides a response for `headers` (raw values; invalid ones are left out) and checks it:
/// ranges non-empty and inside the file, multipart parts disjoint and farther apart than
/// the coalescing gap, and every status justified by a header that asked for it.
pub fn range_decision(
    method: u8,
    len: u64,
    headers: &[(hyper::header::HeaderName, Option<&[u8]>)],
    gap: u16,
    parts: u8,
) {
    use crate::gateway::ranges::{Decision, RangeLimits, decide};
    use hyper::header::{HeaderMap, HeaderValue};
    let method = match method % 3 {
        0 => hyper::Method::GET,
        1 => hyper::Method::HEAD,
        _ => hyper::Method::PUT,
    };
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            map.insert(name.clone(), value);
        }
    }
    let limits = RangeLimits {
        max_specs: 100,
        max_parts: usize::from(parts % 40) + 2,
        coalesce_gap: u64::from(gap),
    };
    let Ok(etag) = "\"sv1-fuzz\"".parse::<headers::ETag>() else {
        return;
    };
    let safe = method == hyper::Method::GET || method == hyper::Method::HEAD;
    let has = |name: hyper::header::HeaderName| map.contains_key(name);
    match decide(&method, &map, len, &etag, &limits) {
        Decision::Partial(r) => {
            assert!(safe && has(hyper::header::RANGE));
            assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
        }
        Decision::Multipart(parts) => {
            assert!(safe && parts.len() >= 2 && parts.len() <= limits.max_parts);
            for (i, a) in parts.iter().enumerate() {
                assert!(a.start < a.end && a.end <= len, "{a:?} of {len}");
                for b in &parts[i + 1..] {
                    let apart = a.end.saturating_add(limits.coalesce_gap) < b.start
                        || b.end.saturating_add(limits.coalesce_gap) < a.start;
                    assert!(apart, "parts {a:?} and {b:?} should have been coalesced");
                }
            }
            let payload: u64 = parts.iter().map(|p| p.end - p.start).sum();
            assert!(payload < len, "multipart bigger than the file");
        }
        Decision::Unsatisfiable => assert!(safe && has(hyper::header::RANGE)),
        Decision::NotModified => assert!(safe && has(hyper::header::IF_NONE_MATCH)),
        Decision::PreconditionFailed => {
            assert!(has(hyper::header::IF_MATCH) || has(hyper::header::IF_NONE_MATCH));
        }
        Decision::Full => {}
    }
}

/// A storage-node request line (method, path, query): routing and the range list never
/// panic; a parsed range list is within the protocol's limits and formats back to a query
/// that parses to the same ranges; a routed share path names a share below 256 and a storage
/// index that prints back into the path.
pub fn storage_request(data: &[u8]) {
    use crate::store::http::protocol::{self, Route};
    let text = String::from_utf8_lossy(data);
    let (method_byte, rest) = match text.char_indices().nth(1) {
        Some((i, _)) => (data.first().copied().unwrap_or(0), &text[i..]),
        None => return,
    };
    let method = match method_byte % 5 {
        0 => hyper::Method::GET,
        1 => hyper::Method::HEAD,
        2 => hyper::Method::PUT,
        3 => hyper::Method::POST,
        _ => hyper::Method::DELETE,
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if let Ok(route) = protocol::route(&method, path) {
        match route {
            Route::List(si) => assert!(path.contains(&si.to_string())),
            Route::Read(si, _)
            | Route::Write(si, _)
            | Route::Abandon(si, _)
            | Route::ReportCorrupt(si, _) => {
                assert!(path.contains(&si.to_string()))
            }
            _ => {}
        }
    }
    if let Ok(ranges) = protocol::parse_ranges_query(query) {
        assert!(ranges.len() <= protocol::MAX_RANGES);
        assert!(ranges.iter().all(|r| r.start <= r.end));
        let again = protocol::format_ranges(&ranges);
        assert_eq!(
            protocol::parse_ranges_query(Some(&format!("ranges={again}"))).ok(),
            Some(ranges)
        );
    }
}
