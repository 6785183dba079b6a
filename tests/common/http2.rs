//! An HTTP/2 client for tests: one connection (over TLS with ALPN `h2`, or cleartext with
//! prior knowledge) carrying every request, so tests see streams multiplexed as a browser
//! would send them, and stream resets as they arrive.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::Runtime;

use super::http::{Client, Response};
use super::tls::TestCertificates;

/// A response whose body has not been read: the stream stays open, its flow-control window
/// filling, until it is dropped.
pub struct Stalled {
    pub status: u16,
    pub body: hyper::body::Incoming,
}

/// One HTTP/2 connection and the runtime that drives it.
pub struct H2Client {
    runtime: Runtime,
    sender: http2::SendRequest<Full<Bytes>>,
    authority: String,
    scheme: &'static str,
    name: String,
}

impl H2Client {
    /// HTTP/2 over TLS to `addr`, trusting `certificates`' authority.
    pub fn tls(addr: &str, certificates: &TestCertificates) -> H2Client {
        H2Client::tls_with_window(addr, certificates, None)
    }

    /// Like [`tls`](Self::tls), with the client's receive window per stream set to `window`
    /// bytes (what a slow reader advertises).
    pub fn tls_with_window(
        addr: &str,
        certificates: &TestCertificates,
        window: Option<u32>,
    ) -> H2Client {
        let config = Arc::new(certificates.client_config(&[b"h2"]));
        let runtime = runtime();
        let addr_owned = addr.to_owned();
        let sender = runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&addr_owned).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the gateway");
            assert_eq!(
                tls.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "the gateway chose h2 by ALPN"
            );
            handshake(TokioIo::new(tls), window).await
        });
        H2Client {
            runtime,
            sender,
            authority: format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            scheme: "https",
            name: "HTTP/2 over TLS".into(),
        }
    }

    /// Cleartext HTTP/2 with prior knowledge (what `curl --http2-prior-knowledge` sends).
    pub fn prior_knowledge(addr: &str) -> H2Client {
        let runtime = runtime();
        let addr_owned = addr.to_owned();
        let sender = runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&addr_owned).await.unwrap();
            handshake(TokioIo::new(tcp), None).await
        });
        H2Client {
            runtime,
            sender,
            authority: addr.to_owned(),
            scheme: "http",
            name: "HTTP/2 with prior knowledge".into(),
        }
    }

    fn build(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> hyper::Request<Full<Bytes>> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}://{}{path}", self.scheme, self.authority));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap()
    }

    /// Sends a GET and returns once the response head arrived, leaving the body unread.
    pub fn stall(&self, path: &str, headers: &[(&str, &str)]) -> Stalled {
        let request = self.build("GET", path, headers, b"");
        let mut sender = self.sender.clone();
        self.runtime.block_on(async move {
            sender.ready().await.expect("the connection is open");
            let response = sender.send_request(request).await.expect("a response head");
            Stalled {
                status: response.status().as_u16(),
                body: response.into_body(),
            }
        })
    }

    /// Reads the rest of a stalled body (the runtime must be this client's).
    pub fn finish(&self, stalled: Stalled) -> Result<Vec<u8>, String> {
        self.runtime.block_on(read_body(stalled.body))
    }
}

impl Client for H2Client {
    fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let request = self.build(method, path, headers, body);
        let mut sender = self.sender.clone();
        self.runtime.block_on(async move {
            sender.ready().await.expect("the connection is open");
            let response = sender.send_request(request).await.expect("a response head");
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            let mut incoming = response.into_body();
            let mut reset = None;
            while let Some(frame) = incoming.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            body.extend_from_slice(data);
                        }
                    }
                    Err(error) => {
                        reset = Some(describe_reset(&error));
                        break;
                    }
                }
            }
            Response {
                status,
                headers,
                body,
                reset,
            }
        })
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn handshake<T>(io: TokioIo<T>, window: Option<u32>) -> http2::SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    if let Some(window) = window {
        builder
            .initial_stream_window_size(window)
            .initial_connection_window_size(window.saturating_mul(32))
            .adaptive_window(false);
    }
    let (sender, connection) = builder.handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

async fn read_body(mut incoming: hyper::body::Incoming) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| describe_reset(&e))?;
        if let Some(data) = frame.data_ref() {
            body.extend_from_slice(data);
        }
    }
    Ok(body)
}

/// `RST_STREAM(<reason>)` when the error is a stream reset from the peer, else its text.
pub fn describe_reset(error: &hyper::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<::h2::Error>()
            && let Some(reason) = h2.reason()
            && h2.is_reset()
        {
            return format!("RST_STREAM({reason:?})");
        }
        source = current.source();
    }
    error.to_string()
}
