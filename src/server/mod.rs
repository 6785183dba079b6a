//! The connection loop shared by the gateway and the storage server: connection slots that
//! idle sockets cannot hold against real requests, timeouts against slow-loris clients and
//! stuck readers, a header size limit, keep-alive, `Host` validation, and graceful shutdown.
//!
//! Slots: at most `max_connections` connections are served at once. A connection is
//! *idle* while it has no request in flight: before its first request's headers are in,
//! and between keep-alive requests. When every slot is taken and another client connects,
//! the idle connection that has waited longest gives way to it (one that never completed a
//! request first, then the longest-idle keep-alive one), so sockets that never send a byte
//! cannot lock out requests. Only when every slot is busy with a request do new clients wait
//! in the listen backlog. A new connection must complete its first request's headers within
//! [`ConnectionLimits::first_request_timeout`].

// Used by the gateway and the node; `server` alone builds the loop without either.
#[cfg_attr(not(any(feature = "gateway", feature = "node")), allow(dead_code))]
pub(crate) mod access;
pub mod budget;
mod slots;

pub use slots::ConnectionCloser;
use slots::{RequestInFlight, SlotGuard, Slots, Tracked};

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

pub use crate::body::{Body, empty, full};

/// Limits on connections, the same for every server in the crate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Connections served at once. When all are taken, an idle one (waiting for request
    /// headers) is closed to make room; only busy ones make new clients wait.
    pub max_connections: usize,
    /// A new connection must send its first request's headers within this.
    pub first_request_timeout: Duration,
    /// A later request's headers must arrive within this; also how long an idle keep-alive
    /// connection is kept.
    pub header_read_timeout: Duration,
    /// A connection whose client takes no bytes for this long is closed.
    pub write_timeout: Duration,
    /// Largest request head (request line and headers); more gets 431.
    pub max_header_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// HTTP/2: requests at once on one connection.
    pub max_streams_per_connection: u32,
    /// HTTP/2: bytes a client may send on one stream before the server reads them (its
    /// receive window); the connection's window is four times this.
    pub stream_receive_window: u32,
    /// HTTP/2: response bytes buffered per stream beyond the piece being sent, so that a
    /// slow h2 stream holds no more than an HTTP/1.1 connection does.
    pub stream_send_buffer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 1024,
            first_request_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
            max_streams_per_connection: 32,
            stream_receive_window: 256 << 10,
            stream_send_buffer: 64 << 10,
        }
    }
}

/// Checks a request's `Host` header as RFC 9112 §3.2 requires: an HTTP/1.1 request has
/// exactly one, and any `Host` present is a valid `host[:port]`. Returns the 400 to send
/// when it does not.
///
/// ```
/// use hyper::Request;
/// let ok = Request::get("/").header("host", "127.0.0.1:3456").body(()).unwrap();
/// assert!(segvault::server::refuse_bad_host(&ok).is_none());
/// let missing = Request::get("/").body(()).unwrap();
/// assert_eq!(segvault::server::refuse_bad_host(&missing).unwrap().status(), 400);
/// ```
pub fn refuse_bad_host<T>(request: &Request<T>) -> Option<Response<Body>> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let problem = match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => {
            "an HTTP/1.1 request needs a Host header"
        }
        (None, _) => return None,
        (Some(_), Some(_)) => "a request may carry only one Host header",
        (Some(host), None) if valid_host(host) => return None,
        (Some(_), None) => "the Host header is not a valid host[:port]",
    };
    let mut response = Response::new(full(format!("bad request: {problem}\n")));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

fn valid_host(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    // An authority without user information: `host`, `host:port`, `[v6]:port`.
    !text.is_empty()
        && !text.contains('@')
        && text
            .parse::<hyper::http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == text && !a.host().is_empty())
        && {
            // The parser above takes any text after the last colon as a port.
            let after_host = match text.strip_prefix('[') {
                Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
                None => text.rsplit_once(':').map_or("", |(_, port)| port),
            };
            let port = after_host.strip_prefix(':').unwrap_or(after_host);
            port.bytes().all(|b| b.is_ascii_digit())
        }
}

fn out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): the process or the system is out of file descriptors.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// How a server's connections speak: TLS or not, HTTP/2 besides HTTP/1.1 or not.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Transport {
    /// Every connection starts with a TLS handshake (within the first-request timeout). A
    /// client speaking plain HTTP to it gets a plain 400 saying to use `https://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/2 too: negotiated by ALPN under TLS, and by the prior-knowledge preface
    /// without (`curl --http2-prior-knowledge`).
    pub http2: bool,
}

impl Transport {
    /// Plain HTTP/1.1.
    pub fn plain() -> Transport {
        Transport::default()
    }

    /// `tls` if given, with or without HTTP/2.
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>, http2: bool) -> Transport {
        Transport { tls, http2 }
    }
}

/// A connection's byte stream: TLS over TCP, or TCP alone.
trait Io: AsyncRead + AsyncWrite + Send {}

impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// On a TLS port: whether the client starts a TLS handshake. One that starts with an HTTP
/// method instead gets a plain-text 400 naming the problem (as nginx does), then the
/// connection closes.
async fn starts_tls(stream: &mut TcpStream) -> bool {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => true,
        Ok(1) if first[0].is_ascii_uppercase() => {
            let text = "this server speaks TLS: use its https:// URL\n";
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            false
        }
        _ => false,
    }
}

/// Serves connections from `listener` with `handler` until `shutdown` completes, then stops
/// accepting and waits (up to the grace period) for requests in flight.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: &ConnectionLimits,
    transport: &Transport,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> io::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Slots::new(limits.max_connections));
    let mut last_descriptor_warning: Option<Instant> = None;
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .initial_stream_window_size(limits.stream_receive_window)
        .initial_connection_window_size(limits.stream_receive_window.saturating_mul(4))
        .max_send_buf_size(limits.stream_send_buffer)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let http = if transport.http2 {
        http
    } else {
        http.http1_only()
    };
    let http = Arc::new(http);
    let acceptor = transport.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if out_of_descriptors(&e) => {
                    // Make room by closing an idle connection; if none is idle, wait a bit.
                    let quiet = last_descriptor_warning.is_some_and(|at| at.elapsed() < Duration::from_secs(10));
                    if !slots.evict_one() && !quiet {
                        warn!(error = %e, "accept failed and no connection is idle");
                        last_descriptor_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = match slots.admit() {
            Some(connection) => connection,
            None => tokio::select! {
                connection = slots.admit_when_possible() => connection,
                () = &mut shutdown => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let (handler, slots, connection) = (handler.clone(), slots.clone(), connection.clone());
            service_fn(move |mut request: Request<Incoming>| {
                let in_flight = RequestInFlight::begin(&slots, &connection);
                request.extensions_mut().insert(ConnectionCloser {
                    slots: slots.clone(),
                    connection: connection.clone(),
                });
                let response = handler(request, peer);
                async move {
                    let response = response.await;
                    Ok::<_, Infallible>(response.map(|inner| Tracked {
                        inner,
                        request: in_flight,
                    }))
                }
            })
        };
        let watcher = graceful.watcher();
        let first_request_timeout = limits.first_request_timeout;
        let write_timeout = limits.write_timeout;
        let (slots, http, acceptor) = (slots.clone(), http.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = SlotGuard {
                slots,
                connection: connection.clone(),
            };
            // The handshake counts against the first request's time: a client that opens
            // a connection and never finishes it holds an idle slot, like a silent one.
            let served = async {
                let mut stream = stream;
                let io: std::pin::Pin<Box<dyn Io>> = match &acceptor {
                    Some(acceptor) => {
                        if !starts_tls(&mut stream).await {
                            debug!(%peer, "not a TLS client");
                            return Ok(());
                        }
                        let mut io = TimeoutStream::new(stream);
                        io.set_write_timeout(Some(write_timeout));
                        match acceptor.accept(Box::pin(io)).await {
                            Ok(tls) => Box::pin(tls),
                            Err(e) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        }
                    }
                    None => {
                        let mut io = TimeoutStream::new(stream);
                        io.set_write_timeout(Some(write_timeout));
                        Box::pin(io)
                    }
                };
                watcher
                    .watch(http.serve_connection(TokioIo::new(io), service))
                    .await
            };
            let first_request = async {
                tokio::time::sleep(first_request_timeout).await;
                if connection.requests.load(Ordering::Relaxed) > 0 {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                outcome = served => if let Err(e) = outcome {
                    if timed_out(&*e) {
                        info!(%peer, "connection closed: the client took no response bytes for {write_timeout:?}");
                    } else {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                },
                () = connection.evicted() => debug!(%peer, "idle connection closed to make room"),
                () = first_request => debug!(%peer, "no request within {first_request_timeout:?}"),
            }
        });
    }
    drop(listener);
    info!(connections = graceful.count(), "shutting down");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => warn!("requests still running at the end of the grace period"),
    }
    Ok(())
}

/// Whether a connection ended because a write waited longer than the send timeout.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::slots::{GRACE_MS, SERVED_GRACE_MS};
    use super::*;

    fn request(version: Version, hosts: &[&[u8]]) -> Request<()> {
        let mut request = Request::get("/").version(version).body(()).unwrap();
        for host in hosts {
            request
                .headers_mut()
                .append(header::HOST, HeaderValue::from_bytes(host).unwrap());
        }
        request
    }

    #[test]
    fn host_headers_follow_rfc_9112() {
        for good in [
            &b"example.com"[..],
            b"127.0.0.1:3456",
            b"[::1]:7000",
            b"node",
        ] {
            assert!(refuse_bad_host(&request(Version::HTTP_11, &[good])).is_none());
        }
        assert!(refuse_bad_host(&request(Version::HTTP_10, &[])).is_none());
        for bad in [
            &[][..],
            &[&b"a"[..], b"a"],
            &[b""],
            &[b"a b"],
            &[b"user@host"],
            &[b"host:port"],
            &[b"host/path"],
            &[b"\xff"],
        ] {
            let refused = refuse_bad_host(&request(Version::HTTP_11, bad))
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(refuse_bad_host(&request(Version::HTTP_10, &[b"a", b"b"])).is_some());
    }

    #[test]
    fn the_longest_idle_connection_gives_way_and_busy_ones_never_do() {
        let slots = Arc::new(Slots::new(3));
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        let c = slots.admit().unwrap();
        // a served a request and is now idle between requests; b is busy; c never sent one.
        drop(RequestInFlight::begin(&slots, &a));
        let busy = RequestInFlight::begin(&slots, &b);
        assert!(
            slots.admit().is_none(),
            "every idle one is within its grace"
        );
        let passed = || std::thread::sleep(Duration::from_millis(GRACE_MS + 20));
        passed();
        let d = slots.admit().unwrap();
        assert!(c.evicted.load(Ordering::Acquire), "never-served goes first");
        assert!(!a.evicted.load(Ordering::Acquire));
        let _busy_d = RequestInFlight::begin(&slots, &d);
        std::thread::sleep(Duration::from_millis(SERVED_GRACE_MS));
        let e = slots.admit().unwrap();
        assert!(
            a.evicted.load(Ordering::Acquire),
            "then the idle keep-alive one"
        );
        let _busy_e = RequestInFlight::begin(&slots, &e);
        assert!(slots.admit().is_none(), "every slot busy: wait");
        drop(busy);
        passed();
        assert!(
            slots.admit().is_none(),
            "a response just ended: its connection is spared"
        );
        std::thread::sleep(Duration::from_millis(SERVED_GRACE_MS));
        assert!(slots.admit().is_some());
        assert!(b.evicted.load(Ordering::Acquire));
    }
}
