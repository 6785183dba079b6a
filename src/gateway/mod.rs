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
mod routes;
mod upload;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

use crate::engine::{Client, ReaderConfig};
use crate::grid::Grid;
use crate::upload::PutOptions;
pub use ranges::RangeLimits;

/// Characters escaped in a URL path segment or an RFC 8187 header value: all but RFC 3986
/// unreserved ones.
pub(crate) const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How the gateway behaves. Built once, passed down.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this (against slow-loris); also how long an
    /// idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// A connection whose client takes no bytes for this long is closed.
    pub write_timeout: Duration,
    /// An upload that sends no bytes for this long is abandoned.
    pub upload_idle_timeout: Duration,
    /// Largest request head (request line and headers); more gets 431.
    pub max_header_bytes: usize,
    /// Largest upload; more gets 413.
    pub max_upload_bytes: u64,
    /// Limits on range requests.
    pub ranges: RangeLimits,
    /// How uploads are encoded.
    pub put: PutOptions,
    /// How files are read.
    pub reader: ReaderConfig,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
            upload_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_upload_bytes: 64 << 30,
            ranges: RangeLimits::default(),
            put: PutOptions::default(),
            reader: ReaderConfig::default(),
            shutdown_grace: Duration::from_secs(10),
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
}

impl Gateway {
    /// A gateway reading and writing `grid`.
    pub fn new(grid: Grid, config: GatewayConfig) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                client: Client::new(grid, config.reader.clone()),
                config,
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
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut shutdown = pin!(shutdown);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes)
            .keep_alive(true);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.map_err(io::Error::other)?,
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let mut io = TimeoutStream::new(stream);
            io.set_write_timeout(Some(config.write_timeout));
            let gateway = self.clone();
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, peer).await) }
            });
            let connection =
                graceful.watch(http.serve_connection(TokioIo::new(Box::pin(io)), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        info!(connections = graceful.count(), "shutting down");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(config.shutdown_grace) => warn!("requests still running at the end of the grace period"),
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The address a gateway is reachable at, for messages (`http://127.0.0.1:3456/`).
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
