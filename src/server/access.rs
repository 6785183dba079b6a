//! One access log for every server in the crate: a line per request, written when its
//! response body ends, with what went out and whether the transfer completed, was aborted
//! (an error after the headers) or was cut short by the client. Never the path or a header
//! value: a path may hold a cap, a header a token.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{Method, Response, Version};

use super::Body;
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// What a handler learned about a request, for the access log.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// A fixed name of the route taken (`file`, `read`, `upload`, `invalid`, …).
    pub(crate) route: &'static str,
    /// The file the request was about, if any (public, unlike the cap it came from).
    pub(crate) storage_index: Option<StorageIndex>,
    /// The share the request was about, if any.
    pub(crate) share: Option<ShareNum>,
    /// Request body bytes taken in (uploads).
    pub(crate) received: u64,
}

/// Called once with the status and the bytes sent when a response ends (metrics).
pub(crate) type OnEnd = Box<dyn FnOnce(u16, u64) + Send>;

/// The request's side of the log line, taken before the handler runs.
#[derive(Debug)]
pub(crate) struct Started {
    at: Instant,
    peer: SocketAddr,
    method: Method,
    version: Version,
}

impl Started {
    pub(crate) fn new<B>(peer: SocketAddr, request: &hyper::Request<B>) -> Started {
        Started {
            at: Instant::now(),
            peer,
            method: request.method().clone(),
            version: request.version(),
        }
    }

    /// `response` with a body that writes the log line when it ends.
    pub(crate) fn log(
        self,
        access: Access,
        response: Response<Body>,
        on_end: Option<OnEnd>,
    ) -> Response<Body> {
        let status = response.status().as_u16();
        // Hyper stops polling a body once its `Content-Length` bytes are out: that is a
        // complete response too, even if the body never said it ended.
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        response.map(|inner| {
            Logged {
                inner,
                sent: 0,
                declared,
                line: Some(Line {
                    started: self,
                    access,
                    status,
                    on_end,
                }),
            }
            .boxed_unsync()
        })
    }
}

struct Line {
    started: Started,
    access: Access,
    status: u16,
    on_end: Option<OnEnd>,
}

impl Line {
    fn write(self, sent: u64, outcome: &str) {
        let Line {
            started,
            access,
            status,
            on_end,
        } = self;
        if let Some(on_end) = on_end {
            on_end(status, sent);
        }
        tracing::info!(
            target: "segvault::access",
            peer = %started.peer,
            method = %started.method,
            version = ?started.version,
            route = access.route,
            si = access.storage_index.map(|si| si.to_string()).unwrap_or_default(),
            share = access.share.map_or(-1, |s| i32::from(s.0)),
            status,
            bytes = sent,
            received = access.received,
            micros = started.at.elapsed().as_micros() as u64,
            outcome,
        );
    }
}

/// A body that counts what it sends and writes the access log line when it ends.
struct Logged {
    inner: Body,
    sent: u64,
    /// The response's `Content-Length`, if it has one.
    declared: Option<u64>,
    line: Option<Line>,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(line) = this.line.take() {
                    line.write(this.sent, &format!("aborted: {e}"));
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = this.line.take() {
                    line.write(this.sent, "complete");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            // Bodyless responses (HEAD, 304) and bodies whose declared length went out whole
            // end without being polled to the end.
            let outcome = if self.inner.is_end_stream() || self.declared == Some(self.sent) {
                "complete"
            } else {
                "client went away"
            };
            line.write(self.sent, outcome);
        }
    }
}
