//! Reads: a share's ranges streamed in pieces under the node's response budget.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{StorageNode, error, store_error};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::server::access::Access;
use crate::server::{Body, ConnectionCloser, empty};
use crate::store::http::protocol;
use crate::store::{ShareStore, StoreError, validate_ranges};

/// A read response is read from disk in pieces of about this many bytes.
pub(super) const READ_PIECE_BYTES: u64 = 256 << 10;

impl StorageNode {
    pub(super) async fn read(
        &self,
        request: Request<Incoming>,
        si: StorageIndex,
        share: ShareNum,
        _access: &mut Access,
    ) -> Response<Body> {
        let ranges = match protocol::parse_ranges_query(request.uri().query()) {
            Ok(ranges) => ranges,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if let Err(e) = validate_ranges(&ranges) {
            return store_error(e);
        }
        let len = match self.inner.store.share_len(si, share).await {
            Ok(len) => len,
            Err(e) => return store_error(e),
        };
        if let Some(beyond) = ranges.iter().find(|r| r.end > len) {
            return store_error(StoreError::OutOfBounds {
                start: beyond.start,
                end: beyond.end,
                len,
            });
        }
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if total > len.saturating_mul(protocol::MAX_READ_AMPLIFICATION) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the ranges add up to {total} bytes, more than {}x the {len}-byte share: \
                     ask for overlapping ranges once",
                    protocol::MAX_READ_AMPLIFICATION
                ),
            );
        }
        let body = if request.method() == Method::HEAD {
            empty()
        } else {
            let closer = request.extensions().get::<ConnectionCloser>().cloned();
            self.stream_ranges(si, share, ranges, closer)
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        response
    }

    /// The bytes of `ranges`, read a piece at a time as the client takes them: a response
    /// holds at most one piece plus what hyper queues for the socket, and every piece
    /// counts against the node's budget for all responses until the socket has taken it
    /// (see [`crate::server::budget`]: a client that stops reading gives way to others).
    pub(super) fn stream_ranges(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
        closer: Option<ConnectionCloser>,
    ) -> Body {
        let store = self.inner.store.clone();
        let lease = Arc::new(self.inner.response_budget.lease(closer));
        let pieces = stream::iter(read_pieces(&ranges, READ_PIECE_BYTES));
        let frames = pieces
            .then(move |piece| {
                let (store, lease) = (store.clone(), lease.clone());
                async move {
                    let bytes: u64 = piece.iter().map(|r| r.end - r.start).sum();
                    let room = lease.take(bytes).await?;
                    let parts = store
                        .read(si, share, piece)
                        .await
                        .map_err(io::Error::other)?;
                    let frames: Vec<io::Result<Frame<Bytes>>> = parts
                        .into_iter()
                        .map(|part| Ok(Frame::data(room.wrap(part))))
                        .collect();
                    Ok::<_, io::Error>(stream::iter(frames))
                }
            })
            .try_flatten();
        BodyExt::boxed_unsync(StreamBody::new(frames))
    }
}

/// `ranges` cut into pieces of about `piece_bytes` (one store read each): long ranges are
/// split, short neighbours share a piece. Empty ranges are dropped (they send nothing).
pub(super) fn read_pieces(ranges: &[Range<u64>], piece_bytes: u64) -> Vec<Vec<Range<u64>>> {
    let mut pieces = Vec::new();
    let mut current: Vec<Range<u64>> = Vec::new();
    let mut current_bytes = 0;
    for range in ranges {
        let mut start = range.start;
        while start < range.end {
            let end = range.end.min(start + (piece_bytes - current_bytes));
            current.push(start..end);
            current_bytes += end - start;
            start = end;
            if current_bytes == piece_bytes {
                pieces.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}
