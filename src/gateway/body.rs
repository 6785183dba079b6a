//! Response bodies streamed from a file's [`ByteStream`](crate::engine::ByteStream): one
//! range, or `multipart/byteranges`. Hyper polls a body only when the socket can take more,
//! so a slow client makes the engine wait (memory stays at the read-ahead window), and a
//! client that goes away drops the body, which cancels the fetches. An error after the
//! headers went out ends the body with an error: hyper then aborts the connection, so the
//! client sees a short body, never bytes that were not verified or text appended to it.

use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use crate::engine::FileHandle;

/// The body type of every response.
pub type Body = BoxBody<Bytes, io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Bytes `range` of `file`, verified and decrypted as they are sent.
pub fn range(file: &FileHandle, range: Range<u64>) -> Body {
    let chunks = file
        .stream(range)
        .map_ok(Frame::data)
        .map_err(io::Error::from);
    BodyExt::boxed(StreamBody::new(chunks))
}

/// A `multipart/byteranges` payload (RFC 9110 §14.6) with its exact length known up front.
#[derive(Debug, Clone)]
pub struct Multipart {
    boundary: String,
    parts: Vec<(String, Range<u64>)>,
    trailer: String,
}

impl Multipart {
    /// Parts for `ranges` of a `len`-byte representation of type `content_type`.
    pub fn new(ranges: &[Range<u64>], len: u64, content_type: &str) -> Multipart {
        let mut nonce = [0u8; 12];
        // The boundary only has to be absent from the body; a random one is, in practice.
        let _ = getrandom::fill(&mut nonce);
        let boundary: String = std::iter::once("segvault-".to_owned())
            .chain(nonce.iter().map(|b| format!("{b:02x}")))
            .collect();
        let parts = ranges
            .iter()
            .map(|r| {
                let header = format!(
                    "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
                    r.start,
                    r.end - 1
                );
                (header, r.clone())
            })
            .collect();
        let trailer = format!("\r\n--{boundary}--\r\n");
        Multipart {
            boundary,
            parts,
            trailer,
        }
    }

    /// The `Content-Type` of the whole response.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// The exact length of the payload.
    pub fn len(&self) -> u64 {
        self.parts
            .iter()
            .map(|(header, r)| header.len() as u64 + (r.end - r.start))
            .sum::<u64>()
            + self.trailer.len() as u64
    }

    /// Whether there are no parts (never, for a real response).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The payload, streamed part by part.
    pub fn body(self, file: &FileHandle) -> Body {
        let file = file.clone();
        let parts = stream::iter(self.parts).flat_map(move |(header, range)| {
            let data = file.stream(range).map_err(io::Error::from);
            stream::once(async move { Ok(Bytes::from(header)) }).chain(data)
        });
        let payload = parts.chain(stream::once(async move { Ok(Bytes::from(self.trailer)) }));
        BodyExt::boxed(StreamBody::new(payload.map_ok(Frame::data)))
    }
}
