//! `segvault storage-server`: a storage node that keeps shares in a directory store and
//! serves them over HTTP (protocol in `docs/storage-protocol.md`, paths in
//! [`crate::store::http::protocol`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use segvault::node::{NodeConfig, StorageNode};
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

mod read;
mod upload;

use read::READ_PIECE_BYTES;
use upload::MAX_DRAINS;

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::warn;

use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::core::text;
use crate::server::access::{Access, Started};
use crate::server::budget::ResponseBudget;
use crate::server::{self, Body, ConnectionLimits, empty, full};
use crate::store::http::protocol::{
    self, CorruptionReport, ErrorBody, RequestError, Route, ShareList, Status,
};
use crate::store::http::token::Token;
use crate::store::{DirectoryStore, MAX_READ_BYTES, ShareStore, StoreError};

/// The corruption-report file stops growing at this size.
const MAX_REPORTS_FILE: u64 = 16 << 20;

/// How a storage node behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// The node's TLS key and certificate: with one, every connection is TLS (required off
    /// loopback; see [`NodeIdentity`](crate::tls::identity::NodeIdentity)).
    pub identity: Option<crate::tls::identity::NodeIdentity>,
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
            identity: None,
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
        let tls = self.inner.config.identity.as_ref().map(|identity| {
            crate::tls::server::server_config(
                Arc::new(crate::tls::server::ServerCertificate::fixed(
                    identity.certified.clone(),
                )),
                crate::tls::server::ServerProfile::Node,
            )
        });
        if tls.is_none() && !listener.local_addr()?.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a storage node listening off loopback serves TLS: give it an identity",
            ));
        }
        let node = self.clone();
        server::serve(
            listener,
            &self.inner.config.connections,
            &server::Transport::new(tls, false),
            shutdown,
            move |request, peer| {
                let node = node.clone();
                async move { node.handle(request, peer).await }
            },
        )
        .await
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Started::new(peer, &request);
        let mut access = Access::default();
        let response = self.route(request, peer, &mut access).await;
        started.log(access, response, None)
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        access: &mut Access,
    ) -> Response<Body> {
        if let Some(refused) = server::refuse_bad_host(&request) {
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

pub(super) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
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
