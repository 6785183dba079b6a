//! Uploads: a share received into a spool at a minimum rate, checked against its header
//! and stored create-only; refused uploads drained so the client sees the answer; an
//! abandoned upload taking back what it wrote.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tracing::info;

use super::{StorageNode, error, store_error};
use crate::core::cap::StorageIndex;
use crate::core::codec::Codec as _;
use crate::core::geometry::ShareNum;
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::share_header::ShareHeader;
use crate::server::access::Access;
use crate::server::{Body, empty};
use crate::store::http::protocol;
use crate::store::{ShareStore, SpooledShare, StoreError, UploadOwner};

/// Bytes an upload buffers on their way to its spool.
pub(super) const UPLOAD_BUFFER_BYTES: usize = 128 << 10;

/// An upload's rate is checked over windows of this length.
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(10);

/// After refusing an upload, its body is read (and dropped) for at most this long…
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(10);

/// …and at most this many bytes, so the client sees the answer rather than a reset…
pub(super) const MAX_DRAIN_BYTES: u64 = 1 << 30;

/// …and at most this many at once.
pub(super) const MAX_DRAINS: usize = 8;

impl StorageNode {
    pub(super) async fn write(
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
        access.received = length;
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
    pub(super) fn refuse_upload(
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
    pub(super) async fn receive(
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
    pub(super) async fn abandon(
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
}

/// The uploader's secret, if it sent a well-formed one.
pub(super) fn upload_secret<T>(request: &Request<T>) -> Option<[u8; 32]> {
    let value = request.headers().get(protocol::UPLOAD_SECRET_HEADER)?;
    crate::core::cap::base32_decode::<32>(value.as_bytes())
}

/// Who an upload is from: the owner its secret proves, or (without one) an owner nobody can
/// claim, so its shares can never be taken back.
pub(super) fn upload_owner<T>(request: &Request<T>) -> UploadOwner {
    upload_secret(request).map_or_else(UploadOwner::random, |s| UploadOwner::from_secret(&s))
}

/// Refuses an upload up front that cannot fit: a clear 507 instead of a disk that fills
/// while the share streams in.
pub(super) fn check_free_space(dir: &std::path::Path, length: u64) -> Result<(), StoreError> {
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
