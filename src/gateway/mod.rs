//! The HTTP gateway: `GET`/`HEAD /uri/<cap>[/<filename>]` with RFC 9110 ranges and
//! conditionals, uploads with `PUT /uri` and `POST /uri` (a form), file metadata with
//! `?t=json`, and a small page at `/` to upload, open and play files.
//!
//! ```no_run
//! # async fn demo(grid: segvault::Grid) -> std::io::Result<()> {
//! use segvault::gateway::{Gateway, GatewayConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3456").await?;
//! let gateway = Gateway::new(grid, GatewayConfig::default());
//! gateway.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! Bodies are pulled from the engine as the socket drains (see [`body`]); caps never appear in
//! logs (requests are logged by storage index).

pub mod body;
mod page;
pub mod ranges;
mod response;
mod routes;
mod upload;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::engine::{Client, ReaderConfig};
use crate::grid::Grid;
use crate::server;
pub use crate::server::{ConnectionLimits, shutdown_signal};
use crate::upload::PutOptions;
pub use ranges::RangeLimits;

/// Characters escaped in a URL path segment or an RFC 8187 header value: all but RFC 3986
/// unreserved ones.
pub(crate) const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The policy of the gateway's own pages (`/` and the reply to a form upload): scripts and
/// styles only from the gateway's own files, nothing embedded from elsewhere, never framed.
pub(crate) const PAGE_CSP: &str = "default-src 'self'; media-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The policy of every `/uri` response (stored files, their metadata and errors): a stored
/// file is never a page of the gateway's origin. `sandbox` gives a document opened from it
/// an opaque origin with no scripts, forms or plugins; `default-src 'none'` stops it loading
/// anything, except that a browser's own viewer for an image or a video opened directly
/// (a media document) may show the file itself and style its frame.
pub(crate) const FILE_CSP: &str = "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'";

/// How the gateway behaves. Built once, passed down.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Connection limits and timeouts.
    pub connections: ConnectionLimits,
    /// An upload that sends no bytes for this long is abandoned.
    pub upload_idle_timeout: Duration,
    /// Uploads received at once; more are answered 503 (each runs an encoder).
    pub max_uploads: usize,
    /// An upload slower than this (bytes per second, over any 10 s) is abandoned, so a
    /// client that trickles bytes cannot hold an upload slot for long.
    pub min_upload_rate: u64,
    /// Largest upload; more gets 413.
    pub max_upload_bytes: u64,
    /// Limits on range requests.
    pub ranges: RangeLimits,
    /// How uploads are encoded.
    pub put: PutOptions,
    /// How files are read.
    pub reader: ReaderConfig,
    /// HTTPS: the certificate presented (replaceable while serving); `None` serves plain
    /// HTTP.
    pub tls: Option<Arc<crate::tls::server::ServerCertificate>>,
    /// HTTP/2 besides HTTP/1.1: by ALPN over HTTPS, by prior knowledge over plain HTTP.
    pub http2: bool,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            connections: ConnectionLimits::default(),
            upload_idle_timeout: Duration::from_secs(60),
            max_uploads: 16,
            min_upload_rate: 16 << 10,
            max_upload_bytes: 64 << 30,
            ranges: RangeLimits::default(),
            put: PutOptions::default(),
            reader: ReaderConfig::default(),
            tls: None,
            http2: true,
        }
    }
}

/// A gateway over one grid. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    config: GatewayConfig,
    uploads: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    /// A gateway reading and writing `grid`.
    pub fn new(grid: Grid, config: GatewayConfig) -> Gateway {
        Gateway::with_client(Client::new(grid, config.reader.clone()), config)
    }

    /// A gateway reading through `client` (its grid, disk cache and metrics; `config.reader`
    /// is not used) and writing to the client's grid.
    pub fn with_client(client: Client, config: GatewayConfig) -> Gateway {
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_uploads.max(1)));
        Gateway {
            inner: Arc::new(Inner {
                client,
                config,
                uploads,
            }),
        }
    }

    /// The client the gateway reads with (its open files are shared by all requests).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting
    /// and waits (up to the grace period) for requests in flight.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let config = &self.inner.config;
        let tls = config.tls.as_ref().map(|certificate| {
            crate::tls::server::server_config(
                certificate.clone(),
                crate::tls::server::ServerProfile::Gateway,
            )
        });
        let gateway = self.clone();
        server::serve(
            listener,
            &config.connections,
            &server::Transport::new(tls, config.http2),
            shutdown,
            move |request, peer| {
                let gateway = gateway.clone();
                async move { gateway.handle(request, peer).await }
            },
        )
        .await
    }
}

/// The address a gateway is reachable at, for messages (`http://127.0.0.1:3456/`, or
/// `https://…` when it serves TLS).
pub fn url_for(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}/")
}
