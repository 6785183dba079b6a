//! The fuzz targets' harness functions, run on random input and on the checked-in seed
//! corpus, so every target is exercised by `cargo test` on the stable toolchain.

use proptest::prelude::*;
use segvault::fuzzing;

type Harness = fn(&[u8]);

const HARNESSES: [(&str, Harness); 8] = [
    ("geometry_planner", fuzzing::geometry_and_planner),
    ("merkle", fuzzing::merkle),
    ("parse_ueb", fuzzing::parse_ueb),
    ("parse_share_header", fuzzing::parse_share_header),
    ("parse_cap", fuzzing::parse_cap),
    ("range_header", fuzzing::range_header),
    ("storage_request", fuzzing::storage_request),
    ("verifier", fuzzing::verifier),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn geometry_planner(data in proptest::collection::vec(any::<u8>(), 0..256)) { fuzzing::geometry_and_planner(&data) }
    #[test]
    fn merkle(data in proptest::collection::vec(any::<u8>(), 0..1024)) { fuzzing::merkle(&data) }
    #[test]
    fn parse_ueb(data in proptest::collection::vec(any::<u8>(), 0..200)) { fuzzing::parse_ueb(&data) }
    #[test]
    fn parse_share_header(data in proptest::collection::vec(any::<u8>(), 0..128)) { fuzzing::parse_share_header(&data) }
    #[test]
    fn storage_request(data in proptest::collection::vec(any::<u8>(), 0..200)) { fuzzing::storage_request(&data) }
    #[test]
    fn storage_request_texts(
        method in 0u8..5,
        path in "/v1/(status|shares(/[a-z2-7]{26}(/[0-9]{1,4}(/corrupt)?)?)?)/?",
        query in "(ranges=[0-9,-]{0,40})?(&x=1)?",
    ) {
        let mut data = vec![method];
        data.extend_from_slice(format!("{path}?{query}").as_bytes());
        fuzzing::storage_request(&data)
    }
    #[test]
    fn range_header(data in proptest::collection::vec(any::<u8>(), 0..512)) { fuzzing::range_header(&data) }
    #[test]
    fn range_header_texts(
        method in 0u8..3,
        len in 0u64..5000,
        range in "(bytes|items|BYTES)=[-0-9, ]{0,60}",
        tag in "(W/)?\"[a-z0-9-]{0,12}\"|\\*|\"sv1-fuzz\"",
        which in 0usize..3,
        gap in 0u16..2000,
        parts in any::<u8>(),
    ) {
        use hyper::header::{IF_MATCH, IF_NONE_MATCH, IF_RANGE, RANGE};
        let conditional = [IF_RANGE, IF_MATCH, IF_NONE_MATCH][which].clone();
        let headers = [(RANGE, Some(range.as_bytes())), (conditional, Some(tag.as_bytes()))];
        fuzzing::range_decision(method, len, &headers, gap, parts)
    }
    #[test]
    fn verifier(data in proptest::collection::vec(any::<u8>(), 0..256)) { fuzzing::verifier(&data) }
    #[test]
    fn parse_cap(text in "(sv1-(read|verify):)?[a-z2-7:0-9]{0,160}") { fuzzing::parse_cap(text.as_bytes()) }
}

/// Every input in `fuzz/corpus/<target>/` (seeds and anything the fuzzer found worth keeping).
#[test]
fn corpus_inputs_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut ran = 0;
    for (name, harness) in HARNESSES {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            harness(&data);
            ran += 1;
        }
    }
    assert!(ran > 0, "no corpus inputs found under {}", root.display());
}
