//! The storage-node HTTP protocol, version 1 (specified in `docs/storage-protocol.md`):
//! the request paths, the `ranges` query of a read, and the JSON bodies, shared by the
//! server (`segvault::node`) and the client ([`crate::store::HttpStore`]). Pure: no
//! I/O, so the parsers are fuzzed and property-tested.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// The protocol version in every path (`/v1/...`).
pub const VERSION: u32 = 1;
/// Most ranges one read request may carry.
pub const MAX_RANGES: usize = 256;
/// Largest JSON body a client accepts from a server, and a server from a client.
pub const MAX_JSON_BYTES: usize = 64 << 10;
/// Longest corruption reason a server records.
pub const MAX_REASON_BYTES: usize = 1024;
/// Scheme of the `Authorization` header.
pub const AUTH_SCHEME: &str = "Bearer";
/// Header of a share upload (and of taking it back): a secret of the uploader's, base32,
/// so that only the upload that wrote a share can remove it if abandoned.
pub const UPLOAD_SECRET_HEADER: &str = "segvault-upload-secret";
/// A read's ranges may add up to at most this many times the share's length (overlaps
/// counted each time): more only amplifies a small request into a large answer.
pub const MAX_READ_AMPLIFICATION: u64 = 2;

/// What a request asks for, decoded from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/shares/<si>`: the share numbers held.
    List(StorageIndex),
    /// `GET /v1/shares/<si>/<share>?ranges=...`: byte ranges of a share.
    Read(StorageIndex, ShareNum),
    /// `PUT /v1/shares/<si>/<share>`: store a share.
    Write(StorageIndex, ShareNum),
    /// `DELETE /v1/shares/<si>/<share>`: an abandoned upload takes back a share it wrote.
    Abandon(StorageIndex, ShareNum),
    /// `POST /v1/shares/<si>/<share>/corrupt`: a reader found the share corrupt.
    ReportCorrupt(StorageIndex, ShareNum),
}

/// Why a request's path or query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such resource.
    #[error("no such resource")]
    NotFound,
    /// The resource exists but not with this method; it allows these (an `Allow` value).
    #[error("method not allowed here (allowed: {0})")]
    MethodNotAllowed(&'static str),
    /// A storage index that is not 26 lowercase base32 characters.
    #[error("bad storage index {0:?}")]
    BadStorageIndex(String),
    /// A share number that is not a canonical decimal from 0 to 255.
    #[error("bad share number {0:?}")]
    BadShare(String),
    /// The `ranges` query is missing or malformed.
    #[error("bad ranges: {0}")]
    BadRanges(String),
}

/// Decodes a request's method and path (without the query).
pub fn route(method: &hyper::Method, path: &str) -> Result<Route, RequestError> {
    let parts: Vec<&str> = path.split('/').collect();
    let get = method == hyper::Method::GET || method == hyper::Method::HEAD;
    let only = |ok: bool, allowed: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(RequestError::MethodNotAllowed(allowed))
        }
    };
    // The method is checked before the names, so a wrong method gets 405 whatever the path.
    match parts.as_slice() {
        ["", "v1", "status"] => {
            only(get, "GET, HEAD")?;
            Ok(Route::Status)
        }
        ["", "v1", "shares", si] => {
            only(get, "GET, HEAD")?;
            Ok(Route::List(storage_index(si)?))
        }
        ["", "v1", "shares", si, share] => {
            let write = method == hyper::Method::PUT;
            let abandon = method == hyper::Method::DELETE;
            only(get || write || abandon, "GET, HEAD, PUT, DELETE")?;
            let (si, share) = (storage_index(si)?, share_number(share)?);
            Ok(if write {
                Route::Write(si, share)
            } else if abandon {
                Route::Abandon(si, share)
            } else {
                Route::Read(si, share)
            })
        }
        ["", "v1", "shares", si, share, "corrupt"] => {
            only(method == hyper::Method::POST, "POST")?;
            Ok(Route::ReportCorrupt(
                storage_index(si)?,
                share_number(share)?,
            ))
        }
        _ => Err(RequestError::NotFound),
    }
}

fn storage_index(text: &str) -> Result<StorageIndex, RequestError> {
    StorageIndex::from_base32(text).ok_or_else(|| RequestError::BadStorageIndex(clip(text)))
}

fn share_number(text: &str) -> Result<ShareNum, RequestError> {
    let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
    match text.parse::<u8>() {
        Ok(n) if canonical && text.bytes().all(|b| b.is_ascii_digit()) => Ok(ShareNum(n)),
        _ => Err(RequestError::BadShare(clip(text))),
    }
}

/// At most 40 characters of untrusted text, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The path listing the shares of `si`.
pub fn list_path(si: &StorageIndex) -> String {
    format!("/v1/shares/{si}")
}

/// The path of one share.
pub fn share_path(si: &StorageIndex, share: ShareNum) -> String {
    format!("/v1/shares/{si}/{}", share.0)
}

/// The path and query reading `ranges` of one share.
pub fn read_path(si: &StorageIndex, share: ShareNum, ranges: &[Range<u64>]) -> String {
    format!("{}?ranges={}", share_path(si, share), format_ranges(ranges))
}

/// The path for reporting a corrupt share.
pub fn corrupt_path(si: &StorageIndex, share: ShareNum) -> String {
    format!("{}/corrupt", share_path(si, share))
}

/// Ranges as the `ranges` query value: `start-end` pairs, end exclusive, comma-separated
/// (`0-154,4096-47104`). An empty list is the empty string.
pub fn format_ranges(ranges: &[Range<u64>]) -> String {
    let mut out = String::with_capacity(ranges.len() * 16);
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}-{}", r.start, r.end));
    }
    out
}

/// Parses a request's query for its `ranges` value (see [`format_ranges`]). Every range
/// must have `start <= end`; at most [`MAX_RANGES`] of them. Unknown query keys are ignored.
pub fn parse_ranges_query(query: Option<&str>) -> Result<Vec<Range<u64>>, RequestError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ranges="))
        .ok_or_else(|| RequestError::BadRanges("a read needs ?ranges=START-END,...".into()))?;
    let mut ranges = Vec::new();
    for item in value.split(',') {
        if ranges.len() == MAX_RANGES {
            return Err(RequestError::BadRanges(format!(
                "more than {MAX_RANGES} ranges"
            )));
        }
        let parsed = item
            .split_once('-')
            .and_then(|(start, end)| Some(decimal(start)?..decimal(end)?));
        match parsed {
            Some(r) if r.start <= r.end => ranges.push(r),
            Some(_) => {
                return Err(RequestError::BadRanges(format!(
                    "range {:?} ends before it starts",
                    clip(item)
                )));
            }
            None => {
                return Err(RequestError::BadRanges(format!(
                    "{:?} is not START-END",
                    clip(item)
                )));
            }
        }
    }
    Ok(ranges)
}

/// A plain decimal `u64` (digits only: no sign, no spaces).
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Protocol version.
    pub protocol: u32,
    /// Software and version (`segvault 0.1.0`).
    pub server: String,
    /// Largest read one request may ask for, in bytes.
    pub max_read_bytes: u64,
    /// Largest share the server accepts, in bytes.
    pub max_share_bytes: u64,
}

/// `GET /v1/shares/<si>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareList {
    /// Share numbers held, ascending.
    pub shares: Vec<u8>,
}

/// `POST /v1/shares/<si>/<share>/corrupt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptionReport {
    /// What the reader found (free text, at most [`MAX_REASON_BYTES`] are kept).
    pub reason: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// With 416: the share's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_length: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    const SI: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn routes_follow_the_spec() {
        let si = StorageIndex::from_base32(SI).unwrap();
        let path = |p: &str| format!("/v1/shares/{SI}{p}");
        assert_eq!(route(&Method::GET, "/v1/status"), Ok(Route::Status));
        assert_eq!(route(&Method::GET, &path("")), Ok(Route::List(si)));
        assert_eq!(
            route(&Method::GET, &path("/7")),
            Ok(Route::Read(si, ShareNum(7)))
        );
        assert_eq!(
            route(&Method::HEAD, &path("/7")),
            Ok(Route::Read(si, ShareNum(7)))
        );
        assert_eq!(
            route(&Method::PUT, &path("/255")),
            Ok(Route::Write(si, ShareNum(255)))
        );
        assert_eq!(
            route(&Method::POST, &path("/0/corrupt")),
            Ok(Route::ReportCorrupt(si, ShareNum(0)))
        );
        assert_eq!(
            route(&Method::DELETE, &path("/0")),
            Ok(Route::Abandon(si, ShareNum(0)))
        );
        assert_eq!(
            route(&Method::POST, &path("/0")),
            Err(RequestError::MethodNotAllowed("GET, HEAD, PUT, DELETE"))
        );
        assert_eq!(
            route(&Method::PUT, &path("")),
            Err(RequestError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(route(&Method::GET, "/"), Err(RequestError::NotFound));
        assert_eq!(
            route(&Method::GET, "/v1/shares/../etc"),
            Err(RequestError::BadStorageIndex("..".into()))
        );
        for bad in ["256", "07", "-1", "", "1a", "+1", " 1"] {
            assert!(
                matches!(
                    route(&Method::GET, &path(&format!("/{bad}"))),
                    Err(RequestError::BadShare(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            route(&Method::GET, &format!("/v1/shares/{}", SI.to_uppercase())),
            Err(RequestError::BadStorageIndex(_))
        ));
        assert_eq!(share_path(&si, ShareNum(9)), path("/9"));
        assert_eq!(list_path(&si), path(""));
        assert_eq!(corrupt_path(&si, ShareNum(2)), path("/2/corrupt"));
    }

    #[test]
    fn ranges_round_trip_and_bad_ones_are_refused() {
        let ranges = vec![0..154, 4096..47_104, 5..5, 0..u64::MAX];
        let text = format_ranges(&ranges);
        assert_eq!(text, format!("0-154,4096-47104,5-5,0-{}", u64::MAX));
        assert_eq!(
            parse_ranges_query(Some(&format!("x=1&ranges={text}"))),
            Ok(ranges)
        );
        for bad in [
            None,
            Some(""),
            Some("ranges="),
            Some("ranges=5-4"),
            Some("ranges=1-2,"),
            Some("ranges=-2"),
            Some("ranges=1-"),
            Some("ranges=+1-2"),
            Some("ranges=1-2-3"),
            Some("ranges=1 -2"),
            Some("ranges=18446744073709551616-18446744073709551617"),
        ] {
            assert!(parse_ranges_query(bad).is_err(), "{bad:?}");
        }
        let many = vec!["1-2"; MAX_RANGES + 1].join(",");
        assert!(parse_ranges_query(Some(&format!("ranges={many}"))).is_err());
        let most = vec!["1-2"; MAX_RANGES].join(",");
        assert_eq!(
            parse_ranges_query(Some(&format!("ranges={most}")))
                .unwrap()
                .len(),
            MAX_RANGES
        );
    }
}
