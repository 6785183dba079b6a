//! `segvault storage-server`: a storage node that keeps shares in a directory store and
//! serves them over HTTP (protocol in `docs/storage-protocol.md`, paths in
//! [`crate::protocol`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use segvault::storage_node::{NodeConfig, StorageNode};
//! let store = segvault::store::DirectoryStore::open("/srv/segvault")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7001").await?;
//! StorageNode::new(store, NodeConfig::default()).serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! The node never sees plaintext or keys, only shares. It checks what it can without a cap:
//! paths are typed (no request can name a file outside the store), an uploaded share's header
//! must name the storage index and share number it is stored under and its length must be
//! the one its parameters give, and a share once written never changes.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::budget::ResponseBudget;
use crate::core::cap::StorageIndex;
use crate::core::codec::Codec as _;
use crate::core::geometry::ShareNum;
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::share_header::ShareHeader;
use crate::core::text;
use crate::protocol::{self, CorruptionReport, ErrorBody, RequestError, Route, ShareList, Status};
use crate::serving::{self, Body, ConnectionCloser, ConnectionLimits, empty, full};
use crate::store::{
    DirectoryStore, MAX_READ_BYTES, ShareStore, SpooledShare, StoreError, UploadOwner,
    validate_ranges,
};
use crate::token::Token;

/// The corruption-report file stops growing at this size.
const MAX_REPORTS_FILE: u64 = 16 << 20;
/// A read response is read from disk in pieces of about this many bytes.
const READ_PIECE_BYTES: u64 = 256 << 10;
/// Bytes an upload buffers on their way to its spool.
const UPLOAD_BUFFER_BYTES: usize = 128 << 10;
/// An upload's rate is checked over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// After refusing an upload, its body is read (and dropped) for at most this long…
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// …and at most this many bytes, so the client sees the answer rather than a reset…
const MAX_DRAIN_BYTES: u64 = 1 << 30;
/// …and at most this many at once.
const MAX_DRAINS: usize = 8;

/// How a storage node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Connection limits and timeouts.
    pub connections: ConnectionLimits,
    /// When set, every request must carry it.
    pub token: Option<Token>,
    /// Largest share accepted; larger uploads get 413 before any byte is read.
    pub max_share_bytes: u64,
    /// An upload that sends no bytes for this long is abandoned.
    pub upload_idle_timeout: Duration,
    /// Bytes of read responses the node holds in memory for all clients together (read
    /// from disk, not yet taken by the socket); more waits until clients take some.
    pub max_response_bytes: u64,
    /// Uploads received at once; more are answered 503 (each holds a buffer and a spool).
    pub max_uploads: usize,
    /// An upload slower than this (bytes per second, over any 10 s) is abandoned: a client
    /// that trickles bytes must not hold an upload slot for long.
    pub min_upload_rate: u64,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            connections: ConnectionLimits::default(),
            token: None,
            max_share_bytes: 1 << 40,
            upload_idle_timeout: Duration::from_secs(60),
            max_response_bytes: 16 << 20,
            max_uploads: 16,
            min_upload_rate: 16 << 10,
        }
    }
}

/// A storage node over a directory store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StorageNode {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: DirectoryStore,
    config: NodeConfig,
    reports: PathBuf,
    response_budget: Arc<ResponseBudget>,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Refused uploads whose bodies are being read and dropped.
    drains: Arc<tokio::sync::Semaphore>,
}

/// Why a node may not listen where it was asked to.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is not a loopback address: a storage node without --token-file only listens on 127.0.0.1 or ::1"
)]
pub struct NotLoopback(pub SocketAddr);

/// Refuses a non-loopback address unless a token protects the node.
pub fn check_listen_address(address: SocketAddr, token: Option<&Token>) -> Result<(), NotLoopback> {
    if token.is_none() && !address.ip().is_loopback() {
        return Err(NotLoopback(address));
    }
    Ok(())
}

/// What the access log says about a request (never a token).
#[derive(Default)]
struct Access {
    route: &'static str,
    storage_index: Option<StorageIndex>,
    share: Option<ShareNum>,
    bytes: u64,
}

impl StorageNode {
    /// A node serving `store`.
    pub fn new(store: DirectoryStore, config: NodeConfig) -> StorageNode {
        let reports = store.root().join("corruption-reports.jsonl");
        // Whatever the budget, one whole piece must fit, or a read could wait forever.
        let budget = config.max_response_bytes.max(READ_PIECE_BYTES);
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_uploads.max(1)));
        StorageNode {
            inner: Arc::new(Inner {
                store,
                config,
                reports,
                response_budget: ResponseBudget::new(budget),
                uploads,
                drains: Arc::new(tokio::sync::Semaphore::new(MAX_DRAINS)),
            }),
        }
    }

    /// Serves `listener` until `shutdown` completes (then waits for requests in flight).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        let node = self.clone();
        serving::serve(
            listener,
            &self.inner.config.connections,
            shutdown,
            move |request, peer| {
                let node = node.clone();
                async move { node.handle(request, peer).await }
            },
        )
        .await
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let mut access = Access::default();
        let response = self.route(request, peer, &mut access).await;
        info!(
            target: "segvault::access",
            %peer,
            %method,
            route = access.route,
            si = access.storage_index.map(|si| si.to_string()).unwrap_or_default(),
            share = access.share.map(|s| i32::from(s.0)).unwrap_or(-1),
            status = response.status().as_u16(),
            bytes = access.bytes,
            ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            "storage request"
        );
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        access: &mut Access,
    ) -> Response<Body> {
        if let Some(refused) = serving::refuse_bad_host(&request) {
            access.route = "invalid";
            return refused;
        }
        if let Some(token) = &self.inner.config.token {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            if !token.admits(presented) {
                access.route = "refused";
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "this storage node needs its token (Authorization: Bearer ...)",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"segvault\""),
                );
                // The body is never read: a refused upload stores nothing.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
        }
        let route = match protocol::route(request.method(), request.uri().path()) {
            Ok(route) => route,
            Err(e) => {
                access.route = "invalid";
                let status = match e {
                    RequestError::NotFound => StatusCode::NOT_FOUND,
                    RequestError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut response = error(status, &e.to_string());
                if let RequestError::MethodNotAllowed(allowed) = e {
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(allowed));
                }
                return response;
            }
        };
        match route {
            Route::Status => {
                access.route = "status";
                json(
                    StatusCode::OK,
                    &Status {
                        protocol: protocol::VERSION,
                        server: format!("segvault {}", env!("CARGO_PKG_VERSION")),
                        max_read_bytes: MAX_READ_BYTES,
                        max_share_bytes: self.inner.config.max_share_bytes,
                    },
                )
            }
            Route::List(si) => {
                access.route = "list";
                access.storage_index = Some(si);
                match self.inner.store.list(si).await {
                    Ok(shares) => json(
                        StatusCode::OK,
                        &ShareList {
                            shares: shares.into_iter().map(|s| s.0).collect(),
                        },
                    ),
                    Err(e) => store_error(e),
                }
            }
            Route::Read(si, share) => {
                access.route = "read";
                access.storage_index = Some(si);
                access.share = Some(share);
                self.read(request, si, share, access).await
            }
            Route::Write(si, share) => {
                access.route = "write";
                access.storage_index = Some(si);
                access.share = Some(share);
                self.write(request, si, share, access).await
            }
            Route::Abandon(si, share) => {
                access.route = "abandon";
                access.storage_index = Some(si);
                access.share = Some(share);
                self.abandon(request, si, share).await
            }
            Route::ReportCorrupt(si, share) => {
                access.route = "corrupt";
                access.storage_index = Some(si);
                access.share = Some(share);
                self.report(request, si, share, peer).await
            }
        }
    }

    async fn read(
        &self,
        request: Request<Incoming>,
        si: StorageIndex,
        share: ShareNum,
        access: &mut Access,
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
        access.bytes = total;
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
    /// (see [`crate::budget`]: a client that stops reading gives way to others).
    fn stream_ranges(
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

    async fn write(
        &self,
        request: Request<Incoming>,
        si: StorageIndex,
        share: ShareNum,
        access: &mut Access,
    ) -> Response<Body> {
        let config = &self.inner.config;
        let Some(length) = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        else {
            return error(
                StatusCode::LENGTH_REQUIRED,
                "a share upload needs a Content-Length",
            );
        };
        if length > config.max_share_bytes {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the share is {length} bytes; this node accepts at most {}",
                    config.max_share_bytes
                ),
            );
        }
        if length < HEADER_LEN {
            return error(StatusCode::BAD_REQUEST, "too short to be a share");
        }
        let Ok(_upload_slot) = self.inner.uploads.clone().try_acquire_owned() else {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "too many uploads in progress ({}); try again shortly",
                    config.max_uploads
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return self.refuse_upload(request.into_body(), length, response);
        };
        // From here on the uploader can take the share back, even while it is written.
        let ticket = self
            .inner
            .store
            .begin_write(si, share, upload_owner(&request));
        let mut body = request.into_body();
        let spool_dir = self
            .inner
            .store
            .spool_dir()
            .unwrap_or_else(std::env::temp_dir);
        let spool = tokio::task::spawn_blocking(move || {
            check_free_space(&spool_dir, length)?;
            SpooledShare::create(&spool_dir, length)
                .map_err(|e| StoreError::io("creating spool", e))
        })
        .await;
        let spool = match spool {
            Ok(Ok(spool)) => spool,
            Ok(Err(e)) => return self.refuse_upload(body, length, store_error(e)),
            Err(e) => {
                let response = error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
                return self.refuse_upload(body, length, response);
            }
        };
        let header = match self.receive(&mut body, &spool, length).await {
            Ok(header) => header,
            Err((response, received)) => {
                return self.refuse_upload(body, length.saturating_sub(received), response);
            }
        };
        access.bytes = length;
        let header = match ShareHeader::from_bytes(&header) {
            Ok(header) => header,
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("not a share: {e}"),
                );
            }
        };
        if header.storage_index != si || header.share != share {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "the share's header names share {} of {}, not share {share} of {si}",
                    header.share, header.storage_index
                ),
            );
        }
        let expected = ShareLayout::new(&header.geometry).share_len();
        if expected != length {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("the share's parameters give {expected} bytes, not {length}"),
            );
        }
        match self.inner.store.write_with(spool, ticket).await {
            Ok(()) => {
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::CREATED;
                response
            }
            Err(e) => store_error(e),
        }
    }

    /// Answers an upload refused before its body was read whole, and reads (and drops) the
    /// rest of the body in the background for a while: a server that closes on unread bytes
    /// makes the client's kernel reset the connection, and the client would see "broken
    /// pipe" instead of this answer.
    fn refuse_upload(
        &self,
        mut body: Incoming,
        remaining: u64,
        mut response: Response<Body>,
    ) -> Response<Body> {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        // Each drain holds a connection's read buffer: only a few at once (beyond them the
        // answer still goes out, and usually arrives before the reset).
        let Ok(draining) = self.inner.drains.clone().try_acquire_owned() else {
            return response;
        };
        let idle = self.inner.config.upload_idle_timeout.min(DRAIN_TIME);
        tokio::spawn(async move {
            let _draining = draining;
            let drain = async {
                let mut left = remaining.min(MAX_DRAIN_BYTES);
                while left > 0 {
                    match tokio::time::timeout(idle, body.frame()).await {
                        Ok(Some(Ok(frame))) => {
                            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                            left = left.saturating_sub(n);
                        }
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
        response
    }

    /// Streams an upload body into `spool`; returns the share's header bytes. On failure,
    /// the answer and how many bytes were read.
    async fn receive(
        &self,
        body: &mut Incoming,
        spool: &SpooledShare,
        length: u64,
    ) -> Result<Vec<u8>, (Response<Body>, u64)> {
        // No bytes for a whole rate window is a rate of zero.
        let idle = match self.inner.config.min_upload_rate {
            0 => self.inner.config.upload_idle_timeout,
            _ => self.inner.config.upload_idle_timeout.min(RATE_WINDOW),
        };
        let file = spool
            .file()
            .try_clone()
            .map_err(|e| (store_error(StoreError::io("opening spool", e)), 0))?;
        // The file buffers what it writes in the background: 128 KiB, not tokio's 2 MiB,
        // so that every upload slot together holds little (16 × 128 KiB, plus each connection's
        // read buffer).
        let mut writer = tokio::fs::File::from_std(file);
        writer.set_max_buf_size(UPLOAD_BUFFER_BYTES);
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        let mut received = 0u64;
        let min_rate = self.inner.config.min_upload_rate;
        let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => {
                    let message = format!("no upload bytes for {idle:?}");
                    return Err((error(StatusCode::REQUEST_TIMEOUT, &message), received));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let message = format!("the upload broke off: {e}");
                    return Err((error(StatusCode::BAD_REQUEST, &message), received));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            if received > length {
                let message = "the body is longer than its Content-Length";
                return Err((error(StatusCode::BAD_REQUEST, message), received));
            }
            window_bytes += data.len() as u64;
            let window = window_start.elapsed();
            if window >= RATE_WINDOW {
                if window_bytes < min_rate.saturating_mul(window.as_secs()) {
                    let message = format!(
                        "the upload is too slow: {window_bytes} bytes in {}s, under {min_rate} bytes/s",
                        window.as_secs()
                    );
                    return Err((error(StatusCode::REQUEST_TIMEOUT, &message), received));
                }
                (window_start, window_bytes) = (Instant::now(), 0);
            }
            let wanted = (HEADER_LEN as usize)
                .saturating_sub(header.len())
                .min(data.len());
            header.extend_from_slice(&data[..wanted]);
            if let Err(e) = writer.write_all(&data).await {
                return Err((store_error(StoreError::io("writing spool", e)), received));
            }
        }
        if received != length {
            let message = format!("the body ended after {received} of {length} bytes");
            return Err((error(StatusCode::BAD_REQUEST, &message), received));
        }
        writer
            .flush()
            .await
            .map_err(|e| (store_error(StoreError::io("writing spool", e)), received))?;
        Ok(header)
    }

    /// `DELETE`: an upload that was abandoned takes back a share it wrote itself.
    async fn abandon(
        &self,
        request: Request<Incoming>,
        si: StorageIndex,
        share: ShareNum,
    ) -> Response<Body> {
        let Some(secret) = upload_secret(&request) else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "only the upload that wrote a share can remove it: send its {} header",
                    protocol::UPLOAD_SECRET_HEADER
                ),
            );
        };
        let owner = UploadOwner::from_secret(&secret);
        match self.inner.store.abandon_as(si, share, owner).await {
            Ok(()) => {
                info!(%si, %share, "an abandoned upload took back its share");
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Err(e) => store_error(e),
        }
    }

    async fn report(
        &self,
        request: Request<Incoming>,
        si: StorageIndex,
        share: ShareNum,
        peer: SocketAddr,
    ) -> Response<Body> {
        let body = http_body_util::Limited::new(request.into_body(), protocol::MAX_JSON_BYTES);
        let report: CorruptionReport = match body.collect().await {
            Ok(collected) => match serde_json::from_slice(&collected.to_bytes()) {
                Ok(report) => report,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad report: {e}")),
            },
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad report: {e}")),
        };
        let reason = text::for_log(&report.reason, protocol::MAX_REASON_BYTES);
        warn!(%si, %share, %peer, %reason, "a reader reports this share corrupt");
        let line = serde_json::json!({
            "time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "storage_index": si.to_string(),
            "share": share.0,
            "peer": peer.to_string(),
            "reason": reason,
        });
        let path = self.inner.reports.clone();
        let appended = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            if file.metadata()?.len() < MAX_REPORTS_FILE {
                // One write per line: concurrent reports never interleave inside a line.
                file.write_all(format!("{line}\n").as_bytes())?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = appended.map_err(io::Error::other) {
            warn!(error = %e, "cannot record the corruption report");
        }
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    }
}

/// `ranges` cut into pieces of about `piece_bytes` (one store read each): long ranges are
/// split, short neighbours share a piece. Empty ranges are dropped (they send nothing).
fn read_pieces(ranges: &[Range<u64>], piece_bytes: u64) -> Vec<Vec<Range<u64>>> {
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

/// The uploader's secret, if it sent a well-formed one.
fn upload_secret<T>(request: &Request<T>) -> Option<[u8; 32]> {
    let value = request.headers().get(protocol::UPLOAD_SECRET_HEADER)?;
    crate::core::cap::base32_decode::<32>(value.as_bytes())
}

/// Who an upload is from: the owner its secret proves, or (without one) an owner nobody can
/// claim, so its shares can never be taken back.
fn upload_owner<T>(request: &Request<T>) -> UploadOwner {
    upload_secret(request).map_or_else(UploadOwner::random, |s| UploadOwner::from_secret(&s))
}

/// Refuses an upload up front that cannot fit: a clear 507 instead of a disk that fills
/// while the share streams in.
fn check_free_space(dir: &std::path::Path, length: u64) -> Result<(), StoreError> {
    let _ = std::fs::create_dir_all(dir);
    #[cfg(target_os = "linux")]
    if let Ok(stats) = rustix::fs::statvfs(dir) {
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        if free < length {
            return Err(StoreError::NoSpace {
                free,
                needed: length,
            });
        }
    }
    Ok(())
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: message.to_owned(),
            share_length: None,
        },
    )
}

fn store_error(e: StoreError) -> Response<Body> {
    match e {
        StoreError::NotFound => error(StatusCode::NOT_FOUND, "no such share"),
        StoreError::OutOfBounds { len, .. } => json(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &ErrorBody {
                error: e.to_string(),
                share_length: Some(len),
            },
        ),
        StoreError::InvalidRequest(_) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        StoreError::Conflict { .. } => error(StatusCode::CONFLICT, &e.to_string()),
        StoreError::Forbidden(_) => error(StatusCode::FORBIDDEN, &e.to_string()),
        StoreError::NoSpace { .. } => error(StatusCode::INSUFFICIENT_STORAGE, &e.to_string()),
        StoreError::Timeout(_) | StoreError::Protocol(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        StoreError::Io { .. } => {
            warn!(error = %e, "storage failure");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}
