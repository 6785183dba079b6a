//! The shape of a response, decided from the request's headers alone: conditional requests
//! (RFC 9110 §13) and range requests (§14). Pure: headers, the entity's length and its ETag
//! in; a [`Decision`] out. Parsing is done by `http-range-header` (strict, fuzzed) and the
//! `headers` crate; this module resolves ranges against the length, coalesces them, and
//! applies the precedence rules.

use std::ops::Range;

use headers::{ETag, HeaderMapExt, IfMatch, IfNoneMatch, IfRange};
use http_range_header::{SyntacticallyCorrectRange, parse_range_header_with_max_ranges};
use hyper::Method;
use hyper::header::{self, HeaderMap};

/// Limits on what a range request may ask for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RangeLimits {
    /// Range specs parsed before the Range header is ignored (served whole).
    pub max_specs: usize,
    /// Parts a multipart response may have after coalescing; more and the whole file is sent.
    pub max_parts: usize,
    /// Ranges closer than this are merged into one part (a part header costs ~100 bytes, and
    /// each part may cost a segment fetch).
    pub coalesce_gap: u64,
}

impl Default for RangeLimits {
    fn default() -> RangeLimits {
        RangeLimits {
            max_specs: 100,
            max_parts: 32,
            coalesce_gap: 1024,
        }
    }
}

/// Bytes a multipart part costs beyond its data (boundary line, two headers), roughly.
const PART_OVERHEAD: u64 = 160;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 304: the client's copy is current (If-None-Match matched).
    NotModified,
    /// 412: If-Match (or If-None-Match on a non-GET) failed.
    PreconditionFailed,
    /// 200 with the whole representation.
    Full,
    /// 206 with one range.
    Partial(Range<u64>),
    /// 206 `multipart/byteranges`, parts in this order (the order requested, after coalescing).
    Multipart(Vec<Range<u64>>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides the response to `method` with `headers` for an entity of `len` bytes tagged `etag`.
///
/// ```
/// use headers::ETag;
/// use hyper::{HeaderMap, Method};
/// use segvault::gateway::ranges::{Decision, RangeLimits, decide};
/// let etag: ETag = "\"abc\"".parse().unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("range", "bytes=-5".parse().unwrap());
/// assert_eq!(decide(&Method::GET, &headers, 100, &etag, &RangeLimits::default()), Decision::Partial(95..100));
/// ```
pub fn decide(
    method: &Method,
    headers: &HeaderMap,
    len: u64,
    etag: &ETag,
    limits: &RangeLimits,
) -> Decision {
    // §13.2.2: If-Match first; If-Unmodified-Since and If-Modified-Since need a Last-Modified,
    // which immutable content addressed by hash does not have, so they are not evaluated.
    if headers.contains_key(header::IF_MATCH) {
        match checked::<IfMatch>(headers, &header::IF_MATCH) {
            Some(condition) if condition.precondition_passes(etag) => {}
            _ => return Decision::PreconditionFailed,
        }
    }
    let safe = method == Method::GET || method == Method::HEAD;
    if let Some(condition) = checked::<IfNoneMatch>(headers, &header::IF_NONE_MATCH)
        && !condition.precondition_passes(etag)
    {
        return if safe {
            Decision::NotModified
        } else {
            Decision::PreconditionFailed
        };
    }
    // Ranges apply to GET; HEAD answers exactly what GET would, without the body.
    if !safe {
        return Decision::Full;
    }
    let Some(value) = headers.get(header::RANGE) else {
        return Decision::Full;
    };
    // §13.1.5: with If-Range, the range is served only if the validator is our strong ETag.
    // A date never matches (there is no Last-Modified), nor does anything unparseable.
    if headers.contains_key(header::IF_RANGE) {
        match checked::<IfRange>(headers, &header::IF_RANGE) {
            Some(condition) if !condition.is_modified(Some(etag), None) => {}
            _ => return Decision::Full,
        }
    }
    let Ok(text) = value.to_str() else {
        return Decision::Full;
    };
    let max = std::num::NonZeroUsize::new(limits.max_specs).unwrap_or(std::num::NonZeroUsize::MIN);
    match parse_range_header_with_max_ranges(text, max) {
        // §14.2: a Range header that is malformed, of an unknown unit, or too large is ignored.
        Err(_) => Decision::Full,
        Ok(parsed) => resolve(&parsed.into_ranges(), len, limits),
    }
}

/// A conditional header, typed, or `None` when absent or malformed. Entity tags are screened
/// first: the `headers` crate asserts (panicking in debug builds) on a tag with a space or a
/// tab inside its quotes, which no valid tag has.
fn checked<H: headers::Header>(headers: &HeaderMap, name: &header::HeaderName) -> Option<H> {
    let well_formed = headers.get_all(name).iter().all(|value| {
        let mut quoted = false;
        value.as_bytes().iter().all(|&b| {
            if b == b'"' {
                quoted = !quoted;
                true
            } else {
                !quoted || (0x21..=0x7e).contains(&b) || b >= 0x80
            }
        })
    });
    if well_formed {
        headers.typed_get::<H>()
    } else {
        None
    }
}

/// Resolves parsed range specs against `len` and shapes the response.
pub fn resolve(specs: &[SyntacticallyCorrectRange], len: u64, limits: &RangeLimits) -> Decision {
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(specs.len());
    let mut empty_suffix = false;
    for spec in specs {
        match *spec {
            SyntacticallyCorrectRange::FromStart(first) if first < len => ranges.push(first..len),
            SyntacticallyCorrectRange::Indexed(first, last) if first < len => {
                ranges.push(first..last.min(len - 1) + 1);
            }
            // A suffix longer than the representation selects all of it (§14.1.2).
            SyntacticallyCorrectRange::FromLast(suffix) if suffix > 0 && len > 0 => {
                ranges.push(len.saturating_sub(suffix)..len);
            }
            SyntacticallyCorrectRange::FromLast(suffix) if suffix > 0 => empty_suffix = true,
            _ => {}
        }
    }
    if ranges.is_empty() {
        // §14.1.2: for an empty representation a non-zero suffix is the only satisfiable
        // range; no Content-Range can describe zero bytes, so the answer is the (empty) 200.
        return if empty_suffix {
            Decision::Full
        } else {
            Decision::Unsatisfiable
        };
    }
    coalesce(&mut ranges, limits.coalesce_gap);
    if ranges.len() == 1 {
        return Decision::Partial(ranges.remove(0));
    }
    let payload: u64 = ranges.iter().map(|r| r.end - r.start + PART_OVERHEAD).sum();
    if ranges.len() > limits.max_parts || payload >= len {
        // §14.2 lets a server ignore Range; sending the whole file is cheaper here.
        return Decision::Full;
    }
    Decision::Multipart(ranges)
}

/// Merges ranges that overlap or lie within `gap` bytes of each other. A merged range takes
/// the place of the first of its members in the request's order (§14.6).
fn coalesce(ranges: &mut Vec<Range<u64>>, gap: u64) {
    let close = |a: &Range<u64>, b: &Range<u64>| {
        a.start <= b.end.saturating_add(gap) && b.start <= a.end.saturating_add(gap)
    };
    let mut i = 0;
    while i < ranges.len() {
        let mut merged = false;
        let mut j = i + 1;
        while j < ranges.len() {
            if close(&ranges[i], &ranges[j]) {
                let other = ranges.remove(j);
                ranges[i] = ranges[i].start.min(other.start)..ranges[i].end.max(other.end);
                merged = true;
            } else {
                j += 1;
            }
        }
        // A grown range may now reach ones before it; look again from the start.
        if merged {
            i = 0;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag() -> ETag {
        "\"sv1-test\"".parse().unwrap()
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn get(pairs: &[(&str, &str)], len: u64) -> Decision {
        decide(
            &Method::GET,
            &with(pairs),
            len,
            &etag(),
            &RangeLimits::default(),
        )
    }

    #[test]
    fn single_ranges_follow_rfc_9110() {
        assert_eq!(get(&[], 19), Decision::Full);
        assert_eq!(
            get(&[("range", "bytes=1-10")], 19),
            Decision::Partial(1..11)
        );
        assert_eq!(get(&[("range", "bytes=5-")], 19), Decision::Partial(5..19));
        assert_eq!(get(&[("range", "bytes=-5")], 19), Decision::Partial(14..19));
        assert_eq!(
            get(&[("range", "bytes=-500")], 19),
            Decision::Partial(0..19)
        );
        assert_eq!(
            get(&[("range", "bytes=5-1000")], 19),
            Decision::Partial(5..19)
        );
        assert_eq!(
            get(&[("range", "bytes=18-18")], 19),
            Decision::Partial(18..19)
        );
        // Empty list elements are allowed (RFC 9110 §5.6.1).
        assert_eq!(
            get(&[("range", "bytes=1-2,,")], 19),
            Decision::Partial(1..3)
        );
        assert_eq!(get(&[("range", "bytes=19-")], 19), Decision::Unsatisfiable);
        assert_eq!(
            get(&[("range", "bytes=100-200")], 19),
            Decision::Unsatisfiable
        );
        assert_eq!(get(&[("range", "bytes=-0")], 19), Decision::Unsatisfiable);
    }

    #[test]
    fn bad_range_headers_are_ignored() {
        for bad in [
            "BOGUS=fizbop-quarnak",
            "items=1-2",
            "bytes=5-2",
            "bytes=x",
            "bytes=",
            "bytes=1-2,x",
        ] {
            assert_eq!(get(&[("range", bad)], 19), Decision::Full, "{bad}");
        }
        let many = format!(
            "bytes={}",
            (0..101)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            get(&[("range", &many)], 1000),
            Decision::Full,
            "too many specs"
        );
    }

    #[test]
    fn empty_files_have_no_satisfiable_range_but_a_suffix() {
        assert_eq!(get(&[("range", "bytes=0-0")], 0), Decision::Unsatisfiable);
        assert_eq!(get(&[("range", "bytes=0-")], 0), Decision::Unsatisfiable);
        assert_eq!(get(&[("range", "bytes=-5")], 0), Decision::Full);
        assert_eq!(get(&[("range", "bytes=-0")], 0), Decision::Unsatisfiable);
    }

    #[test]
    fn multiple_ranges_keep_request_order_and_coalesce() {
        let len = 1_000_000;
        assert_eq!(
            get(&[("range", "bytes=500000-500099,0-99")], len),
            Decision::Multipart(vec![500_000..500_100, 0..100])
        );
        // Overlapping and nearly adjacent ranges merge into the first one's place.
        assert_eq!(
            get(&[("range", "bytes=900000-900010,0-99,50-199,300-399")], len),
            Decision::Multipart(vec![900_000..900_011, 0..400])
        );
        assert_eq!(
            get(&[("range", "bytes=0-99,100-199")], len),
            Decision::Partial(0..200)
        );
        // Parts that cost more than the file: the whole file instead.
        let no_gap = RangeLimits {
            coalesce_gap: 0,
            ..RangeLimits::default()
        };
        let headers = with(&[("range", "bytes=0-0,10-10")]);
        assert_eq!(
            decide(&Method::GET, &headers, 100, &etag(), &no_gap),
            Decision::Full
        );
        assert_eq!(
            decide(&Method::GET, &headers, 1_000_000, &etag(), &no_gap),
            Decision::Multipart(vec![0..1, 10..11])
        );
        let many = format!(
            "bytes={}",
            (0..40)
                .map(|i| format!("{}-{}", i * 10_000, i * 10_000))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            get(&[("range", &many)], len),
            Decision::Full,
            "more parts than allowed"
        );
    }

    #[test]
    fn conditionals_take_precedence_in_rfc_order() {
        let tag = "\"sv1-test\"";
        assert_eq!(get(&[("if-none-match", tag)], 19), Decision::NotModified);
        assert_eq!(
            get(&[("if-none-match", "W/\"sv1-test\"")], 19),
            Decision::NotModified,
            "weak comparison"
        );
        assert_eq!(
            get(
                &[("if-none-match", "\"other\""), ("range", "bytes=0-1")],
                19
            ),
            Decision::Partial(0..2)
        );
        assert_eq!(get(&[("if-none-match", "*")], 19), Decision::NotModified);
        assert_eq!(
            get(&[("if-match", "\"other\"")], 19),
            Decision::PreconditionFailed
        );
        assert_eq!(
            get(&[("if-match", "W/\"sv1-test\"")], 19),
            Decision::PreconditionFailed,
            "strong comparison"
        );
        assert_eq!(
            get(&[("if-match", tag), ("range", "bytes=0-1")], 19),
            Decision::Partial(0..2)
        );
        assert_eq!(get(&[("if-match", "*")], 19), Decision::Full);
        assert_eq!(
            get(&[("if-match", "\"other\""), ("if-none-match", tag)], 19),
            Decision::PreconditionFailed
        );
        assert_eq!(
            decide(
                &Method::PUT,
                &with(&[("if-none-match", tag)]),
                19,
                &etag(),
                &RangeLimits::default()
            ),
            Decision::PreconditionFailed
        );
    }

    #[test]
    fn if_range_serves_the_range_only_for_our_strong_etag() {
        let range = ("range", "bytes=0-1");
        assert_eq!(
            get(&[range, ("if-range", "\"sv1-test\"")], 19),
            Decision::Partial(0..2)
        );
        assert_eq!(get(&[range, ("if-range", "\"other\"")], 19), Decision::Full);
        assert_eq!(
            get(&[range, ("if-range", "W/\"sv1-test\"")], 19),
            Decision::Full
        );
        assert_eq!(
            get(&[range, ("if-range", "Wed, 21 Oct 2015 07:28:00 GMT")], 19),
            Decision::Full
        );
        assert_eq!(get(&[range, ("if-range", "garbage")], 19), Decision::Full);
        assert_eq!(get(&[("if-range", "\"other\"")], 19), Decision::Full);
    }

    #[test]
    fn malformed_entity_tags_are_ignored_not_fatal() {
        // Found by fuzzing: whitespace inside the quotes of a tag.
        assert_eq!(
            get(&[("if-none-match", "\"sv1 test\"")], 19),
            Decision::Full
        );
        assert_eq!(get(&[("if-none-match", "\"a\tb\"")], 19), Decision::Full);
        assert_eq!(
            get(&[("if-match", "\"sv1 test\"")], 19),
            Decision::PreconditionFailed
        );
        assert_eq!(
            get(&[("range", "bytes=0-1"), ("if-range", "\"x y\"")], 19),
            Decision::Full
        );
    }

    #[test]
    fn head_answers_like_get() {
        let headers = with(&[("range", "bytes=2-3")]);
        assert_eq!(
            decide(
                &Method::HEAD,
                &headers,
                19,
                &etag(),
                &RangeLimits::default()
            ),
            Decision::Partial(2..4)
        );
        assert_eq!(
            decide(
                &Method::POST,
                &headers,
                19,
                &etag(),
                &RangeLimits::default()
            ),
            Decision::Full
        );
    }
}
