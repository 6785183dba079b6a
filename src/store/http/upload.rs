//! Uploads to a storage node: each share sent on a connection of its own (a slow node holds
//! only its own), at most a few per node, retried while the node says it is busy; a share of
//! an abandoned upload taken back with the upload's secret.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use tokio_util::io::ReaderStream;

use super::{HttpStore, protocol, status_error, with_causes};
use crate::body::{Body, empty};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::store::{SpooledShare, StoreError};

impl HttpStore {
    pub(super) async fn upload(
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
        let stream = LenientWrites::new(stream);
        let stream: Box<dyn NodeStream> = match &self.inner.upload_tls {
            Some((connector, name)) => Box::new(
                tokio::time::timeout(timeout, connector.connect(name.clone(), stream))
                    .await
                    .map_err(|_| connect_error(format!("no TLS handshake within {timeout:?}")))?
                    .map_err(|e| {
                        connect_error(
                            crate::tls::describe_failure(&e).unwrap_or_else(|| e.to_string()),
                        )
                    })?,
            ),
            None => Box::new(stream),
        };
        let io = hyper_util::rt::TokioIo::new(stream);
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
    pub(super) fn secret_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&self.inner.upload_secret).ok()?;
        value.set_sensitive(true);
        (!value.is_empty()).then_some(value)
    }

    pub(super) async fn take_back(
        &self,
        si: StorageIndex,
        share: ShareNum,
    ) -> Result<(), StoreError> {
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

/// Uploads one client sends a node at once (a node takes 16 by default from everyone).
pub(super) const UPLOADS_PER_NODE: usize = 4;
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

/// An upload connection: TLS over TCP, or TCP alone to a loopback node.
trait NodeStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> NodeStream for T {}

/// An upload's failure, with its cause; a node that closed without answering says so.
fn describe_upload_error(e: &hyper::Error) -> String {
    let mut text = with_causes(e);
    if e.is_incomplete_message() || e.is_canceled() {
        text.push_str(" (the node closed the connection without answering the upload)");
    }
    text
}
