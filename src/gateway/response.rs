//! Response builders every gateway route shares: plain-text answers, 405, and how a read
//! error reads to an HTTP client.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::{self, Body};
use crate::engine::ReadError;

/// A plain-text response (errors and short answers).
pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let mut response = Response::new(body::full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 405 with the `Allow` header.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// How a read error reads to an HTTP client.
pub(crate) fn read_error(error: &ReadError) -> Response<Body> {
    match error {
        ReadError::NoShares { .. } => text(
            StatusCode::NOT_FOUND,
            "file not found: no storage server holds any of its shares",
        ),
        ReadError::NotEnoughShares { .. } | ReadError::Inconsistent { .. } => {
            text(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        ReadError::AlteredCap { .. } => {
            text(StatusCode::BAD_REQUEST, format!("invalid cap: {error}"))
        }
        ReadError::TooLarge { .. } | ReadError::Internal(_) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
    }
}
