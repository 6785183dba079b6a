//! The HTTP client for plain-`http://` S3 endpoints (a Garage or MinIO on a private network):
//! hyper with every received segment acknowledged at once (`TCP_QUICKACK`).
//!
//! Why: S3 servers that do not set `TCP_NODELAY` (Garage and s3s-fs among them) write a
//! response's headers, then hold a body segment shorter than the MSS (Nagle) until the headers
//! are acknowledged, and Linux delays that ACK by 40 ms. On loopback (64 KiB MSS) every GET of
//! a block paid those 40 ms (44 ms per ranged GET, measured, against 1-4 ms once acknowledged
//! at once); on a 1500-byte network the last segment of a body pays it now and then (a p90 of
//! 49 ms). HTTPS endpoints keep `object_store`'s own client (reqwest with rustls).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};
use tokio::net::TcpStream;

/// Makes the client (see the module documentation).
#[derive(Debug)]
pub(super) struct QuickAckConnector {
    /// Time limit until a response's headers arrive.
    pub(super) timeout: Duration,
}

impl object_store::client::HttpConnector for QuickAckConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .build(Connect(connector));
        Ok(HttpClient::new(QuickAckService {
            client,
            timeout: self.timeout,
        }))
    }
}

#[derive(Debug)]
struct QuickAckService {
    client: Client<Connect, HttpRequestBody>,
    timeout: Duration,
}

impl HttpService for QuickAckService {
    fn call<'a, 'b>(
        &'a self,
        request: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let response = tokio::time::timeout(self.timeout, self.client.request(request))
                .await
                .map_err(|_| {
                    HttpError::new(
                        HttpErrorKind::Timeout,
                        io::Error::new(io::ErrorKind::TimedOut, "no answer in time"),
                    )
                })?
                .map_err(|e| {
                    let kind = if e.is_connect() {
                        HttpErrorKind::Connect
                    } else {
                        HttpErrorKind::Request
                    };
                    HttpError::new(kind, e)
                })?;
            let (parts, body) = response.into_parts();
            let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
            Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
        })
    }
}

/// hyper's connector, with each connection wrapped in [`QuickAck`].
#[derive(Clone, Debug)]
struct Connect(HttpConnector);

impl tower_service::Service<Uri> for Connect {
    type Response = QuickAck;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<QuickAck, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAck(connecting.await?)) })
    }
}

/// A connection that re-arms `TCP_QUICKACK` after every read (the kernel clears it as it
/// pleases).
struct QuickAck(TokioIo<TcpStream>);

impl hyper::rt::Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if read.is_ready() {
            // Best effort: without it, only the 40 ms stalls come back.
            let _ = rustix::net::sockopt::set_tcp_quickack(self.0.inner(), true);
        }
        read
    }
}

impl hyper::rt::Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
