//! A share store on a storage node, over HTTP (protocol in `docs/storage-protocol.md`).
//! Connections are kept alive and reused; every request has a time limit; a server that
//! answers with the wrong number of bytes or garbage gets a [`StoreError::Protocol`], never
//! a short or long buffer.

pub mod protocol;
pub mod token;
mod upload;

use upload::UPLOADS_PER_NODE;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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
    /// A scheme other than `https` or `http`.
    #[error(
        "{0:?}: a storage node is https://host:port#spki-sha256=… (as storage-server prints it), or http://127.0.0.1:port on this machine"
    )]
    Scheme(String),
    /// Credentials, a query or a fragment other than a key pin in the URL (not repeated: it
    /// may hold a secret).
    #[error(
        "a storage-node URL is https://host:port[/prefix]#spki-sha256=…, without credentials or query (pass tokens with --token-file)"
    )]
    Extra,
    /// `https://` without the node's key pin.
    #[error(
        "{0}: an https:// storage node needs its key pin, #spki-sha256=… at the end of the URL as storage-server prints it (nodes have self-signed keys; there is no certificate authority to fall back on)"
    )]
    NoPin(String),
    /// The pin is not well formed.
    #[error("{0}: {1}")]
    BadPin(String, crate::tls::PinError),
    /// `http://` to a host that is not this machine's loopback.
    #[error("{}", plain_http_refusal(.url, *.with_token))]
    PlainHttpOffLoopback {
        /// The URL (without anything that may be credentials).
        url: String,
        /// Whether a token would have been sent.
        with_token: bool,
    },
}

fn plain_http_refusal(url: &str, with_token: bool) -> String {
    let why = if with_token {
        "refusing to send the access token in cleartext"
    } else {
        "plain HTTP would let anyone on the path read and change share traffic"
    };
    format!(
        "{url}: {why}; http:// is only for nodes on this machine's loopback address. Start the node with TLS (it is on whenever it listens off loopback) and use the https://…#spki-sha256=… URL it prints"
    )
}

/// A storage-node URL, checked: where it is, and the key it must present if it is TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    /// `https://host:port/prefix` or `http://host:port/prefix` (no pin, no trailing slash).
    pub base: String,
    /// `host:port`.
    pub authority: String,
    /// The path prefix (empty, or `/segvault`).
    pub prefix: String,
    /// The pinned key of an `https://` node; `None` for a loopback `http://` one.
    pub pin: Option<crate::tls::SpkiPin>,
}

impl NodeUrl {
    /// Checks `url` by the transport policy: `https://` with a key pin anywhere, `http://`
    /// only to a loopback address (`127.0.0.0/8`, `::1`, `localhost`), and then
    /// `with_token` changes only the words of the refusal.
    ///
    /// ```
    /// use segvault::store::http::NodeUrl;
    /// let pin = "spki-sha256=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    /// assert!(NodeUrl::parse(&format!("https://10.0.0.5:7000#{pin}"), true).unwrap().pin.is_some());
    /// assert!(NodeUrl::parse("http://127.0.0.1:7000", true).is_ok());
    /// assert!(NodeUrl::parse("http://10.0.0.5:7000", true).is_err());
    /// assert!(NodeUrl::parse("https://10.0.0.5:7000", false).is_err());
    /// ```
    pub fn parse(url: &str, with_token: bool) -> Result<NodeUrl, UrlError> {
        let (address, fragment) = match url.split_once('#') {
            Some((address, fragment)) => (address, Some(fragment)),
            None => (url, None),
        };
        let uri: Uri = address.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            UrlError::Malformed(without_credentials(url), e.to_string())
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(UrlError::Scheme(without_credentials(address))),
            None => {
                return Err(UrlError::Malformed(
                    without_credentials(address),
                    "it needs https:// (or http:// on this machine)".into(),
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(UrlError::Malformed(
                without_credentials(address),
                "no host".into(),
            ));
        };
        if authority.as_str().contains('@') || uri.query().is_some() {
            return Err(UrlError::Extra);
        }
        let prefix = uri.path().trim_end_matches('/');
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{authority}{prefix}");
        let pin = match (tls, fragment) {
            (true, Some(fragment)) => Some(
                fragment
                    .parse()
                    .map_err(|e| UrlError::BadPin(base.clone(), e))?,
            ),
            (true, None) => return Err(UrlError::NoPin(base)),
            (false, Some(_)) => return Err(UrlError::Extra),
            (false, None) => {
                if !is_loopback_host(authority.host()) {
                    return Err(UrlError::PlainHttpOffLoopback {
                        url: base,
                        with_token,
                    });
                }
                None
            }
        };
        Ok(NodeUrl {
            base,
            authority: authority.as_str().to_owned(),
            prefix: prefix.to_owned(),
            pin,
        })
    }
}

/// A host that names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    /// For uploads' own connections to a TLS node: the pooled client's configuration
    /// (pin and session cache) and the name to present.
    upload_tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
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
    /// A store for the node at `url`: `https://host:port#spki-sha256=…` (TLS, accepting
    /// only the pinned key), or `http://` on a loopback address; optionally with a path
    /// prefix. See [`NodeUrl::parse`] for the policy.
    ///
    /// ```
    /// # use segvault::store::{HttpStore, HttpOptions};
    /// let store = HttpStore::new("http://127.0.0.1:7001", HttpOptions::default()).unwrap();
    /// assert!(HttpStore::new("https://node", HttpOptions::default()).is_err());
    /// assert!(HttpStore::new("http://node:7001", HttpOptions::default()).is_err());
    /// ```
    pub fn new(url: &str, options: HttpOptions) -> Result<HttpStore, UrlError> {
        let url = NodeUrl::parse(url, options.token.is_some())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        // One configuration per node: its pin, and one session cache that every connection
        // to the node (pooled or an upload's) resumes from.
        let tls_config = Arc::new(crate::tls::node_client_config(url.pin));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config({
                // hyper-rustls sets ALPN itself from the protocols enabled below.
                let mut config = (*tls_config).clone();
                config.alpn_protocols.clear();
                config
            })
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            // Shorter than the node's keep-alive idle time (30 s), so the client drops a
            // connection before the node does and never sends on one being closed.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(64)
            .build(connector);
        let upload_tls = url.pin.map(|_| {
            let host = url
                .authority
                .rsplit_once(':')
                .map_or(url.authority.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name =
                rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
                    rustls::pki_types::ServerName::try_from("segvault-node")
                        .unwrap_or_else(|e| unreachable!("a valid DNS name: {e}"))
                });
            (tokio_rustls::TlsConnector::from(tls_config), name)
        });
        let NodeUrl {
            base,
            authority,
            prefix,
            ..
        } = url;
        // Without randomness the secret would be guessable: then send none (the node then
        // never lets anyone take the uploads back).
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        let random = getrandom::fill(&mut *secret).is_ok();
        Ok(HttpStore {
            inner: Arc::new(Inner {
                name: base.clone(),
                base,
                authority,
                prefix,
                client,
                upload_tls,
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
        self.inner.client.request(request).await.map_err(|e| {
            let message = match crate::tls::describe_failure(&e) {
                Some(tls) => {
                    // A wrong key or a node that dropped TLS is worth an operator's look
                    // even when the read routes around it.
                    tracing::warn!(node = %self.inner.name, problem = %tls, "TLS refused");
                    tls
                }
                None => with_causes(&e),
            };
            StoreError::Io {
                context: "request",
                message,
            }
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
    // A node answers errors in JSON; whatever else answered (a proxy, or a TLS port told
    // of plain HTTP) may have said why in a line of text.
    let text = std::str::from_utf8(body)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 200 && !t.chars().any(char::is_control));
    let message = match (&parsed, text) {
        (Some(parsed), _) => parsed.error.chars().take(200).collect::<String>(),
        (None, Some(text)) => text.to_owned(),
        (None, None) => status.canonical_reason().unwrap_or("").to_owned(),
    };
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

/// An error's message followed by each of its causes' (hyper's own message is only
/// "client error (Connect)").
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
mod tests;
