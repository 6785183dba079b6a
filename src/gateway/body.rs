//! Response bodies streamed from a file's [`ByteStream`]: one
//! range, or `multipart/byteranges`. Hyper polls a body only when the socket can take more,
//! so a slow client makes the engine wait (memory stays at the read-ahead window), and a
//! client that goes away drops the body, which cancels the fetches. An error after the
//! headers went out ends the body with an error: hyper then aborts the connection, so the
//! client sees a short body, never bytes that were not verified or text appended to it.

use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use futures::Stream;

use crate::engine::{ByteStream, FileHandle, ReadError};

pub use crate::server::{Body, empty, full};

/// Bytes `range` of `file`, verified and decrypted as they are sent. The first chunk is
/// fetched before this returns, so a file that cannot be read at all is an error the caller
/// can still answer with a status code; a failure later aborts the connection.
pub async fn range(file: &FileHandle, range: Range<u64>) -> Result<Body, ReadError> {
    let chunks = primed(file.stream(range)).await?;
    Ok(BodyExt::boxed_unsync(StreamBody::new(
        chunks.map_ok(Frame::data),
    )))
}

/// The stream with its first chunk already fetched (and checked).
async fn primed(
    mut stream: ByteStream,
) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static, ReadError> {
    let first = stream.next().await.transpose()?;
    Ok(stream::iter(first.map(Ok)).chain(stream.map_err(io::Error::from)))
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

    /// The payload, streamed part by part (the first part's first chunk fetched up front,
    /// as for [`range`]).
    pub async fn body(self, file: &FileHandle) -> Result<Body, ReadError> {
        let mut parts = self.parts.into_iter();
        let Some((first_header, first_range)) = parts.next() else {
            return Ok(full(self.trailer));
        };
        let first = primed(file.stream(first_range)).await?;
        let file = file.clone();
        let rest = stream::iter(parts).flat_map(move |(header, range)| {
            let data = file.stream(range).map_err(io::Error::from);
            stream::once(async move { Ok(Bytes::from(header)) }).chain(data)
        });
        let payload = stream::once(async move { Ok(Bytes::from(first_header)) })
            .chain(first)
            .chain(rest)
            .chain(stream::once(async move { Ok(Bytes::from(self.trailer)) }));
        Ok(BodyExt::boxed_unsync(StreamBody::new(
            payload.map_ok(Frame::data),
        )))
    }
}
