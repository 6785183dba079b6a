//! Uploads: `PUT /uri` with the file as the body, and `POST /uri` from an HTML form
//! (`multipart/form-data`, field `file`). The body streams into the encoder, which encrypts
//! it into a ciphertext spool as it arrives: memory holds a chunk or two, never the file.
//! An upload larger than the limit gets 413; one that stalls is abandoned.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use percent_encoding::utf8_percent_encode;
use tokio::time::{Sleep, sleep};
use tokio_util::io::StreamReader;
use tracing::warn;

use super::Gateway;
use super::body::{self, Body};
use super::response::text;
use crate::core::cap::ReadCap;
use crate::server::access::Access;
use crate::upload::{PutError, PutSource};

/// The upload exceeded the configured limit.
#[derive(Debug)]
struct TooLarge(u64);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the upload is larger than the limit of {} bytes", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// An upload's rate is checked over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Passes chunks through while counting them against a limit, and fails if none arrives
/// within the idle timeout or the upload runs slower than the minimum rate.
struct Guarded<S> {
    inner: S,
    remaining: u64,
    limit: u64,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    min_rate: u64,
    window_start: tokio::time::Instant,
    window_bytes: u64,
}

impl<S> Guarded<S> {
    fn new(inner: S, limit: u64, idle: Duration, min_rate: u64) -> Guarded<S> {
        // No bytes for a whole rate window is a rate of zero.
        let idle = if min_rate > 0 {
            idle.min(RATE_WINDOW)
        } else {
            idle
        };
        Guarded {
            inner,
            remaining: limit,
            limit,
            idle,
            timer: Box::pin(sleep(idle)),
            min_rate,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
        }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for Guarded<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let now = tokio::time::Instant::now();
                this.timer.as_mut().reset(now + this.idle);
                this.window_bytes += chunk.len() as u64;
                let window = now - this.window_start;
                if window >= RATE_WINDOW {
                    if this.window_bytes < this.min_rate.saturating_mul(window.as_secs()) {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the upload is too slow: {} bytes in {}s, under {} bytes/s",
                                this.window_bytes,
                                window.as_secs(),
                                this.min_rate
                            ),
                        ))));
                    }
                    (this.window_start, this.window_bytes) = (now, 0);
                }
                match this.remaining.checked_sub(chunk.len() as u64) {
                    Some(left) => {
                        this.remaining = left;
                        Poll::Ready(Some(Ok(chunk)))
                    }
                    None => Poll::Ready(Some(Err(io::Error::other(TooLarge(this.limit))))),
                }
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no upload data for {:?}", this.idle),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

use std::future::Future as _;

fn is_too_large(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<TooLarge>())
}

fn declared_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Encodes a stream of body bytes as a new file.
async fn store<S>(gateway: &Gateway, data: S) -> Result<ReadCap, Response<Body>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    let config = &gateway.inner.config;
    let guarded = Guarded::new(
        data,
        config.max_upload_bytes,
        config.upload_idle_timeout,
        config.min_upload_rate,
    );
    let source = PutSource::reader(StreamReader::new(guarded));
    match crate::upload::put(gateway.client().grid(), source, &config.put).await {
        Ok(cap) => Ok(cap),
        Err(PutError::Input(e)) if is_too_large(&e) => Err(too_large(config.max_upload_bytes)),
        Err(PutError::Input(e)) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("the upload did not arrive whole: {e}"),
        )),
        Err(e @ (PutError::NotHappy { .. } | PutError::NoServers)) => {
            warn!(error = %e, "upload could not be stored");
            Err(text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
        Err(e @ PutError::Spool { .. }) => {
            warn!(error = %e, "upload could not be spooled");
            Err(text(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))
        }
        Err(e) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn too_large(limit: u64) -> Response<Body> {
    let mut response = text(StatusCode::PAYLOAD_TOO_LARGE, TooLarge(limit).to_string());
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn location(cap: &ReadCap, name: Option<&str>) -> String {
    let cap = cap.to_secret_string();
    match name {
        Some(name) => format!(
            "/uri/{}/{}",
            cap.as_str(),
            utf8_percent_encode(name, super::ESCAPED)
        ),
        None => format!("/uri/{}", cap.as_str()),
    }
}

/// An upload slot, if one is free.
fn upload_slot(gateway: &Gateway) -> Option<tokio::sync::OwnedSemaphorePermit> {
    gateway.inner.uploads.clone().try_acquire_owned().ok()
}

/// The answer when every upload slot is taken.
fn busy(gateway: &Gateway) -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "too many uploads in progress ({}); try again shortly",
            gateway.inner.config.max_uploads
        ),
    );
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // The body is not read: the connection cannot be reused.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `PUT /uri`: the body is the file; the answer is 201 with the cap.
pub(super) async fn put(
    gateway: &Gateway,
    request: Request<Incoming>,
    access: &mut Access,
) -> Response<Body> {
    let Some(_slot) = upload_slot(gateway) else {
        return busy(gateway);
    };
    let limit = gateway.inner.config.max_upload_bytes;
    if declared_length(&request).is_some_and(|len| len > limit) {
        return too_large(limit);
    }
    let data = BodyStream::new(request.into_body())
        .map_err(io::Error::other)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    match store(gateway, Box::pin(data)).await {
        Ok(cap) => {
            access.storage_index = Some(cap.storage_index());
            created(&cap, None, Reply::Text)
        }
        Err(response) => response,
    }
}

/// How the client wants the cap back.
#[derive(Clone, Copy)]
enum Reply {
    Text,
    Json,
    Html,
}

fn reply_for(request: &Request<Incoming>) -> Reply {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") {
        Reply::Json
    } else if accept.contains("text/html") {
        Reply::Html
    } else {
        Reply::Text
    }
}

fn created(cap: &ReadCap, name: Option<&str>, reply: Reply) -> Response<Body> {
    let url = location(cap, name);
    let secret = cap.to_secret_string();
    let (content_type, payload) = match reply {
        Reply::Text => ("text/plain; charset=utf-8", format!("{}\n", secret.as_str())),
        Reply::Json => (
            "application/json",
            serde_json::json!({ "cap": secret.as_str(), "url": url, "size": cap.geometry().size() })
                .to_string(),
        ),
        Reply::Html => (
            "text/html; charset=utf-8",
            // The name comes from the uploader: every interpolated string is escaped.
            format!(
                "<!doctype html><meta charset=utf-8><title>Stored</title>\
                 <p>Stored. Keep this link: whoever has it can read the file.</p>\
                 <p><a href=\"{}\">{}</a></p><p><a href=\"/\">Back</a></p>\n",
                html_escape::encode_double_quoted_attribute(&url),
                html_escape::encode_text(name.unwrap_or("the file"))
            ),
        ),
    };
    let mut response = Response::new(body::full(payload));
    *response.status_mut() = StatusCode::CREATED;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&url) {
        headers.insert(header::LOCATION, value);
    }
    if matches!(reply, Reply::Html) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(super::PAGE_CSP),
        );
    }
    response
}

/// `POST /uri`: a `multipart/form-data` form whose `file` field is the file.
pub(super) async fn post_form(
    gateway: &Gateway,
    request: Request<Incoming>,
    access: &mut Access,
) -> Response<Body> {
    let Some(_slot) = upload_slot(gateway) else {
        return busy(gateway);
    };
    let limit = gateway.inner.config.max_upload_bytes;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /uri takes a multipart/form-data form with a `file` field; PUT /uri takes the file as the body",
        );
    };
    // The form's own framing adds a little to the file; the file itself is checked exactly.
    if declared_length(&request).is_some_and(|len| len > limit.saturating_add(64 * 1024)) {
        return too_large(limit);
    }
    let reply = reply_for(&request);
    let data = BodyStream::new(request.into_body())
        .map_err(io::Error::other)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    let mut form = multer::Multipart::new(data, boundary);
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return text(StatusCode::BAD_REQUEST, "the form has no `file` field"),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed form: {e}")),
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .map(str::to_owned)
            .filter(|n| !n.is_empty());
        // The field borrows the form, so its bytes go to the encoder through a small channel.
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
        let forward = async move {
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(io::Error::other);
                let failed = chunk.is_err();
                if sender.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        };
        let chunks = Box::pin(futures::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|c| (c, r))
        }));
        let (_, stored) = tokio::join!(forward, store(gateway, chunks));
        return match stored {
            Ok(cap) => {
                access.storage_index = Some(cap.storage_index());
                created(&cap, name.as_deref(), reply)
            }
            Err(response) => response,
        };
    }
}
