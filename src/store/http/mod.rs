//! A share store on a storage node, over HTTP (protocol in `docs/storage-protocol.md`).
//! Connections are kept alive and reused; every request has a time limit; a server that
//! answers with the wrong number of bytes or garbage gets a [`StoreError::Protocol`], never
//! a short or long buffer.

pub mod protocol;
pub mod token;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::io::ReaderStream;

use super::{ShareStore, SpooledShare, StoreError, validate_ranges};
use crate::body::{Body, empty};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use protocol::{CorruptionReport, ErrorBody, ShareList, Status};
use token::Token;

/// How an [`HttpStore`] talks to its node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Sent with every request when set.
    pub token: Option<Token>,
    /// Where uploads build shares before sending them (ciphertext only). `None`: the
    /// system's temporary directory.
    pub spool_dir: Option<PathBuf>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Limit on any request but an upload (callers usually set a shorter one).
    pub request_timeout: Duration,
    /// An upload that makes no progress for this long is abandoned.
    pub upload_idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            token: None,
            spool_dir: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            upload_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a storage-node URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL.
    #[error("{0:?} is not a URL: {1}")]
    Malformed(String, String),
    /// A scheme other than `http`.
    #[error(
        "{0:?}: only http:// storage nodes are supported (for TLS, put the nodes behind a tunnel or a private network)"
    )]
    Scheme(String),
    /// Credentials, a query or a fragment in the URL (not repeated: it may hold a secret).
    #[error(
        "a storage-node URL is http://host:port[/prefix], without credentials, query or fragment (pass tokens with --token-file)"
    )]
    Extra,
}

/// `url` for an error message, with anything that may be credentials (before an `@`) cut.
fn without_credentials(url: &str) -> String {
    match url.rfind('@') {
        Some(at) => {
            let start = url.find("://").map_or(0, |i| i + 3);
            format!("{}…{}", &url[..start.min(at)], &url[at..])
        }
        None => url.to_owned(),
    }
}

/// A storage node, reached over HTTP. Cloning shares its connections.
#[derive(Clone)]
pub struct HttpStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    base: String,
    /// `host:port` (for uploads, which open their own connection).
    authority: String,
    /// The URL's path prefix (empty, or `/segvault`).
    prefix: String,
    client: Client<HttpConnector, Body>,
    options: HttpOptions,
    /// Sent with every upload, so that this store (and only it) can take back a share it
    /// wrote if the upload is abandoned (in memory only; never logged).
    upload_secret: zeroize::Zeroizing<String>,
    /// Uploads to this node at once.
    uploads: tokio::sync::Semaphore,
}

impl fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStore")
            .field("url", &self.inner.name)
            .finish()
    }
}

impl HttpStore {
    /// A store for the node at `url` (`http://host:port`, optionally with a path prefix).
    ///
    /// ```
    /// # use segvault::store::{HttpStore, HttpOptions};
    /// let store = HttpStore::new("http://127.0.0.1:7001", HttpOptions::default()).unwrap();
    /// assert!(HttpStore::new("https://node", HttpOptions::default()).is_err());
    /// ```
    pub fn new(url: &str, options: HttpOptions) -> Result<HttpStore, UrlError> {
        let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            UrlError::Malformed(without_credentials(url), e.to_string())
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(UrlError::Scheme(without_credentials(url))),
            None => {
                return Err(UrlError::Malformed(
                    without_credentials(url),
                    "it needs http://".into(),
                ));
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(UrlError::Malformed(
                without_credentials(url),
                "no host".into(),
            ));
        };
        if authority.as_str().contains('@') || uri.query().is_some() || url.contains('#') {
            return Err(UrlError::Extra);
        }
        let prefix = uri.path().trim_end_matches('/');
        let base = format!("http://{authority}{prefix}");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            // Shorter than the node's keep-alive idle time (30 s), so the client drops a
            // connection before the node does and never sends on one being closed.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(64)
            .build(connector);
        // Without randomness the secret would be guessable: then send none (the node then
        // never lets anyone take the uploads back).
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        let random = getrandom::fill(&mut *secret).is_ok();
        Ok(HttpStore {
            inner: Arc::new(Inner {
                name: base.clone(),
                base,
                authority: authority.as_str().to_owned(),
                prefix: prefix.to_owned(),
                client,
                options,
                uploads: tokio::sync::Semaphore::new(UPLOADS_PER_NODE),
                upload_secret: zeroize::Zeroizing::new(if random {
                    crate::core::cap::base32_encode(&*secret)
                } else {
                    String::new()
                }),
            }),
        })
    }

    /// A request for the pooled client (absolute URL), with the token.
    fn request(&self, method: Method, path: &str, body: Body) -> Result<Request<Body>, StoreError> {
        self.build(method, format!("{}{path}", self.inner.base), None, body)
    }

    /// A request on a connection of its own (origin-form target and `Host`), with the token.
    fn direct_request(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Request<Body>, StoreError> {
        let target = format!("{}{path}", self.inner.prefix);
        self.build(method, target, Some(&self.inner.authority), body)
    }

    fn build(
        &self,
        method: Method,
        target: String,
        host: Option<&str>,
        body: Body,
    ) -> Result<Request<Body>, StoreError> {
        let mut builder = Request::builder().method(method).uri(target);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        let mut request = builder.body(body).map_err(|e| StoreError::Io {
            context: "building request",
            message: e.to_string(),
        })?;
        if let Some(token) = &self.inner.options.token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, token.header_value());
        }
        Ok(request)
    }

    async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, StoreError> {
        self.inner
            .client
            .request(request)
            .await
            .map_err(|e| StoreError::Io {
                context: "request",
                message: describe_client_error(&e),
            })
    }

    /// `send`, then the whole body if it is at most `limit` bytes, within the request timeout.
    async fn exchange(
        &self,
        request: Request<Body>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), StoreError> {
        let timeout = self.inner.options.request_timeout;
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| StoreError::Protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    async fn read_ranges(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> Result<Vec<Bytes>, StoreError> {
        validate_ranges(&ranges)?;
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        if ranges.len() > protocol::MAX_RANGES {
            return Err(StoreError::InvalidRequest(format!(
                "{} ranges in one request; the protocol allows {}",
                ranges.len(),
                protocol::MAX_RANGES
            )));
        }
        // Overlapping and touching ranges (a batch of records repeats some hash nodes) are
        // asked for once, and each range is cut from the answer.
        let merged = coalesce(&ranges);
        let total: u64 = merged.iter().map(|r| r.end - r.start).sum();
        let path = protocol::read_path(&si, share, &merged);
        let request = self.request(Method::GET, &path, empty())?;
        let response = self.send(request).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = http_body_util::Limited::new(response.into_body(), protocol::MAX_JSON_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &body, &ranges));
        }
        if let Some(length) = response.headers().get(header::CONTENT_LENGTH)
            && length.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(total)
        {
            return Err(wrong_length(total, length.to_str().unwrap_or("?")));
        }
        let body = receive_exactly(response.into_body(), total).await?;
        // Where each merged range starts in the body.
        let mut offsets = Vec::with_capacity(merged.len());
        let mut at = 0u64;
        for m in &merged {
            offsets.push(at);
            at += m.end - m.start;
        }
        let parts = ranges
            .iter()
            .map(|r| {
                // Merged ranges are disjoint and apart: the first that reaches r holds it.
                let i = merged.partition_point(|m| m.end < r.start);
                let start = offsets[i] + (r.start - merged[i].start);
                body.slice(start as usize..(start + r.end - r.start) as usize)
            })
            .collect();
        Ok(parts)
    }

    async fn upload(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> Result<(), StoreError> {
        // A node takes a limited number of uploads at once: this client sends it a few at
        // a time (an upload of more shares than nodes queues here, not in 503s), and waits
        // as told when the node is busy with others' uploads.
        let _slot = self
            .inner
            .uploads
            .acquire()
            .await
            .map_err(|e| StoreError::Io {
                context: "upload",
                message: e.to_string(),
            })?;
        let mut waited = Duration::ZERO;
        let (status, body) = loop {
            let (status, body, retry_after) = self.upload_once(si, share, &spool).await?;
            match retry_after {
                Some(delay)
                    if status == StatusCode::SERVICE_UNAVAILABLE && waited < BUSY_PATIENCE =>
                {
                    let delay = delay.clamp(Duration::from_millis(100), Duration::from_secs(5));
                    tokio::time::sleep(delay).await;
                    waited += delay;
                }
                _ => break (status, body),
            }
        };
        drop(spool);
        match status {
            StatusCode::CREATED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            StatusCode::CONFLICT => Err(StoreError::Conflict {
                storage_index: si,
                share,
            }),
            _ => Err(status_error(status, &body, &[])),
        }
    }

    /// One attempt at an upload: the node's status, its answer's body, and how long it
    /// asked us to wait before trying again (`Retry-After`, in seconds), if it did.
    async fn upload_once(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: &SpooledShare,
    ) -> Result<(StatusCode, Bytes, Option<Duration>), StoreError> {
        // A fresh open file for each attempt: a clone would share its offset with a read
        // an earlier, abandoned attempt may still have in flight.
        let file =
            std::fs::File::open(spool.path()).map_err(|e| StoreError::io("opening spool", e))?;
        let length = spool.len();
        // Progress is when hyper takes another chunk of the body; a node that stops taking
        // them (stalled, SIGSTOPped) is given up on after the idle timeout.
        let epoch = Instant::now();
        let last_progress = Arc::new(AtomicU64::new(0));
        let sent_all = Arc::new(AtomicBool::new(false));
        let chunks = {
            let last_progress = last_progress.clone();
            let sent_all = sent_all.clone();
            let mut sent = 0u64;
            ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10).map_ok(
                move |chunk| {
                    sent += chunk.len() as u64;
                    if sent >= length {
                        sent_all.store(true, Ordering::Relaxed);
                    }
                    last_progress.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    Frame::data(chunk)
                },
            )
        };
        let body = BodyExt::boxed_unsync(StreamBody::new(chunks));
        let mut request =
            self.direct_request(Method::PUT, &protocol::share_path(&si, share), body)?;
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(secret) = self.secret_header() {
            request
                .headers_mut()
                .insert(protocol::UPLOAD_SECRET_HEADER, secret);
        }
        let idle = self.inner.options.upload_idle_timeout;
        // After the last byte the node fsyncs a whole share: allow it longer.
        let commit = idle.max(Duration::from_secs(120));
        let (mut sender, _connection) = self.upload_connection().await?;
        let mut exchange = pin!(async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| StoreError::Io {
                    context: "upload",
                    message: describe_upload_error(&e),
                })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = http_body_util::Limited::new(response.into_body(), protocol::MAX_JSON_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, StoreError>((status, body, retry_after))
        });
        loop {
            tokio::select! {
                outcome = &mut exchange => return outcome,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last_progress.load(Ordering::Relaxed)));
                    let limit = if sent_all.load(Ordering::Relaxed) { commit } else { idle };
                    if quiet > limit {
                        return Err(StoreError::Timeout(limit));
                    }
                }
            }
        }
    }

    /// A connection of its own for one upload (uploads are long; pooling gains nothing).
    /// Its writes go through [`LenientWrites`], so a node that answers and closes before it
    /// took the whole body is heard: its answer is read instead of a broken pipe. Dropping
    /// the returned guard closes the connection.
    async fn upload_connection(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<Body>, AbortOnDrop), StoreError> {
        let timeout = self.inner.options.connect_timeout;
        let authority = self.inner.authority.as_str();
        let address = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let connect_error = |message: String| StoreError::Io {
            context: "connecting",
            message,
        };
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
            .await
            .map_err(|_| connect_error(format!("no connection within {timeout:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(LenientWrites::new(stream));
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upload connection ended");
            }
        });
        Ok((sender, AbortOnDrop(driver)))
    }

    /// The upload secret as a header value (marked sensitive), if there is one.
    fn secret_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&self.inner.upload_secret).ok()?;
        value.set_sensitive(true);
        (!value.is_empty()).then_some(value)
    }

    async fn take_back(&self, si: StorageIndex, share: ShareNum) -> Result<(), StoreError> {
        let mut request =
            self.request(Method::DELETE, &protocol::share_path(&si, share), empty())?;
        if let Some(secret) = self.secret_header() {
            request
                .headers_mut()
                .insert(protocol::UPLOAD_SECRET_HEADER, secret);
        }
        let (status, body) = self.exchange(request, protocol::MAX_JSON_BYTES).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(status_error(status, &body, &[])),
        }
    }
}

/// `ranges` sorted, with overlapping and touching ones merged: disjoint ranges with gaps
/// between them, and every range of `ranges` inside one of them.
fn coalesce(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.to_vec();
    sorted.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The body of a read, which must be exactly `total` bytes: more or fewer is a broken server.
async fn receive_exactly(mut body: Incoming, total: u64) -> Result<Bytes, StoreError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| StoreError::Io {
            context: "reading share bytes",
            message: e.to_string(),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > total {
            return Err(wrong_length(total, &format!("more than {total}")));
        }
        // One frame is the common case for a block: keep it without copying.
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut buffer = BytesMut::with_capacity(total as usize);
                buffer.extend_from_slice(head);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
                first = None;
            }
            (_, Some(buffer)) => buffer.extend_from_slice(&data),
        }
    }
    if received != total {
        return Err(wrong_length(total, &received.to_string()));
    }
    Ok(match (first, joined) {
        (_, Some(buffer)) => buffer.freeze(),
        (Some(data), None) => data,
        (None, None) => Bytes::new(),
    })
}

fn wrong_length(expected: u64, got: &str) -> StoreError {
    StoreError::Protocol(format!(
        "the node sent {got} bytes for {expected} requested"
    ))
}

/// An error for a non-success status, with the node's own message when it sent one.
fn status_error(status: StatusCode, body: &[u8], ranges: &[Range<u64>]) -> StoreError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .map(|b| b.error.chars().take(200).collect::<String>())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    match status {
        StatusCode::NOT_FOUND => StoreError::NotFound,
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let len = parsed.and_then(|b| b.share_length).unwrap_or(0);
            let beyond = ranges.iter().find(|r| r.end > len).cloned().unwrap_or(0..0);
            StoreError::OutOfBounds {
                start: beyond.start,
                end: beyond.end,
                len,
            }
        }
        StatusCode::UNAUTHORIZED => StoreError::Io {
            context: "authorization",
            message: format!("{} ({message}): check --token-file", status.as_u16()),
        },
        // A node refuses with 403 only what no token allows (another upload's share).
        StatusCode::FORBIDDEN => StoreError::Forbidden(
            message
                .strip_prefix("refused: ")
                .unwrap_or(&message)
                .to_owned(),
        ),
        _ => StoreError::Io {
            context: "storage node",
            message: format!("{}: {message}", status.as_u16()),
        },
    }
}

/// Uploads one client sends a node at once (a node takes 16 by default from everyone).
const UPLOADS_PER_NODE: usize = 4;
/// How long an upload waits, in all, for a node that answers 503 with `Retry-After`.
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream whose writes succeed (and are dropped) once the peer has closed: a server may
/// answer an upload early (a refusal, a full disk) and close without reading the rest, and
/// its answer, already received, must not be lost to a broken pipe. Reads are untouched,
/// so a peer that closed without answering is still an error.
struct LenientWrites<T> {
    inner: T,
    peer_closed: bool,
}

impl<T> LenientWrites<T> {
    fn new(inner: T) -> LenientWrites<T> {
        LenientWrites {
            inner,
            peer_closed: false,
        }
    }
}

impl<T> LenientWrites<T> {
    /// `polled`, except that the peer having gone counts as `done` from now on.
    fn lenient<R>(
        &mut self,
        polled: std::task::Poll<std::io::Result<R>>,
        done: R,
    ) -> std::task::Poll<std::io::Result<R>> {
        match polled {
            std::task::Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.peer_closed = true;
                std::task::Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

fn peer_gone(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LenientWrites<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LenientWrites<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.peer_closed {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.lenient(polled, buf.len())
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.peer_closed {
            return std::task::Poll::Ready(Ok(()));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.lenient(polled, ())
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.peer_closed {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An upload's failure, with its cause; a node that closed without answering says so.
fn describe_upload_error(e: &hyper::Error) -> String {
    let mut text = with_causes(e);
    if e.is_incomplete_message() || e.is_canceled() {
        text.push_str(" (the node closed the connection without answering the upload)");
    }
    text
}

/// A client error with its cause (hyper's own message is only "client error (Connect)").
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    with_causes(e)
}

/// An error's message followed by each of its causes'.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl ShareStore for HttpStore {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn list(&self, si: StorageIndex) -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>> {
        Box::pin(async move {
            let request = self.request(Method::GET, &protocol::list_path(&si), empty())?;
            let (status, body) = self.exchange(request, protocol::MAX_JSON_BYTES).await?;
            if status != StatusCode::OK {
                return Err(status_error(status, &body, &[]));
            }
            let list: ShareList = serde_json::from_slice(&body)
                .map_err(|e| StoreError::Protocol(format!("bad share list: {e}")))?;
            let mut shares: Vec<ShareNum> = list.shares.into_iter().map(ShareNum).collect();
            shares.sort_unstable();
            shares.dedup();
            Ok(shares)
        })
    }

    fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>> {
        Box::pin(async move {
            let timeout = self.inner.options.request_timeout;
            tokio::time::timeout(timeout, self.read_ranges(si, share, ranges))
                .await
                .map_err(|_| StoreError::Timeout(timeout))?
        })
    }

    fn write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.upload(si, share, spool))
    }

    fn abandon(&self, si: StorageIndex, share: ShareNum) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.take_back(si, share))
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        self.inner.options.spool_dir.clone()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let request = self.request(Method::GET, "/v1/status", empty())?;
            let (status, body) = self.exchange(request, protocol::MAX_JSON_BYTES).await?;
            if status != StatusCode::OK {
                return Err(status_error(status, &body, &[]));
            }
            let status: Status = serde_json::from_slice(&body).map_err(|_| {
                StoreError::Protocol("not a segvault storage node (bad /v1/status)".into())
            })?;
            if status.protocol != protocol::VERSION {
                return Err(StoreError::Protocol(format!(
                    "the node speaks protocol {}, this build {}",
                    status.protocol,
                    protocol::VERSION
                )));
            }
            Ok(())
        })
    }

    fn report_corrupt(
        &self,
        si: StorageIndex,
        share: ShareNum,
        reason: String,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let report = serde_json::to_vec(&CorruptionReport { reason }).unwrap_or_default();
            let body = Full::new(Bytes::from(report))
                .map_err(|never| match never {})
                .boxed_unsync();
            let Ok(mut request) =
                self.request(Method::POST, &protocol::corrupt_path(&si, share), body)
            else {
                return;
            };
            request.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            match self.exchange(request, protocol::MAX_JSON_BYTES).await {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, _)) => {
                    tracing::warn!(node = %self.inner.name, %status, "corruption report refused");
                }
                Err(e) => {
                    tracing::debug!(node = %self.inner.name, error = %e, "corruption report not delivered");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeConfig, StorageNode};
    use crate::store::DirectoryStore;

    async fn node(config: NodeConfig) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::open(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let node = StorageNode::new(store, config);
        tokio::spawn(async move { node.serve(listener, std::future::pending()).await });
        (url, dir)
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let (url, _dir) = node(NodeConfig::default()).await;
        let store = HttpStore::new(&url, HttpOptions::default()).unwrap();
        store.check().await.unwrap();
        crate::store::testing::conformance::run(&store).await;
        // With a path prefix ending in a slash, and the same node.
        let store = HttpStore::new(&format!("{url}/"), HttpOptions::default()).unwrap();
        assert_eq!(store.name(), url);
    }

    #[test]
    fn overlapping_ranges_are_asked_for_once() {
        assert_eq!(
            coalesce(&[10..20, 0..5, 15..30, 5..6, 40..40, 50..60]),
            vec![0..6, 10..30, 40..40, 50..60]
        );
        assert_eq!(coalesce(&[3..3]), vec![3..3]);
        assert!(coalesce(&[]).is_empty());
    }

    #[tokio::test]
    async fn batched_reads_with_repeated_hash_nodes_get_each_range() {
        let (url, _dir) = node(NodeConfig::default()).await;
        let store = HttpStore::new(&url, HttpOptions::default()).unwrap();
        let plaintext: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let grid = crate::Grid::new(vec![Arc::new(store.clone()) as Arc<dyn ShareStore>]);
        let options = crate::PutOptions {
            k: 1,
            n: 1,
            ..crate::PutOptions::default()
        };
        let cap = crate::upload::put(&grid, crate::PutSource::Bytes(plaintext), &options)
            .await
            .unwrap();
        let si = cap.storage_index();
        let len = crate::core::layout::ShareLayout::new(cap.geometry()).share_len();
        // Each range many times over: more than the node serves in one request, unless
        // asked for once.
        let ranges: Vec<Range<u64>> = (0..200).map(|i| (i * 7) % 100..len - (i % 3)).collect();
        let direct = crate::store::DirectoryStore::open(_dir.path()).unwrap();
        let expected = direct.read(si, ShareNum(0), ranges.clone()).await.unwrap();
        let parts = store.read(si, ShareNum(0), ranges).await.unwrap();
        assert_eq!(parts, expected);
    }

    #[test]
    fn urls_are_checked() {
        let options = HttpOptions::default;
        for bad in [
            "127.0.0.1:7001",
            "https://node:7001",
            "ftp://node",
            "http://user:secret@node:7001",
            "http://user:secret@node:bad-port",
            "https://user:secret@node",
            "user:secret@node",
            "http://node:7001/?x=1",
            "http://node:7001/#x",
            "http://",
            "not a url",
        ] {
            let error = HttpStore::new(bad, options()).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
        let store = HttpStore::new("http://node:7001/segvault/", options()).unwrap();
        assert_eq!(store.name(), "http://node:7001/segvault");
    }

    #[tokio::test]
    async fn a_refused_token_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "abcdefghijklmnopqrstuvwxyz234567").unwrap();
        let token = Token::from_file(&token_file).unwrap();
        let (url, _node_dir) = node(NodeConfig {
            token: Some(token.clone()),
            ..NodeConfig::default()
        })
        .await;
        let without = HttpStore::new(&url, HttpOptions::default()).unwrap();
        let error = without.check().await.unwrap_err().to_string();
        assert!(
            error.contains("401") && error.contains("--token-file"),
            "{error}"
        );
        let with = HttpStore::new(
            &url,
            HttpOptions {
                token: Some(token),
                ..HttpOptions::default()
            },
        )
        .unwrap();
        with.check().await.unwrap();
        crate::store::testing::conformance::run(&with).await;
    }
}
