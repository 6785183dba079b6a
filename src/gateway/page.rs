//! The small web page at `/`: upload a file, paste a cap, open or play it. Static assets,
//! compiled in; the script is a separate file so a strict Content-Security-Policy applies.

use hyper::header::{self, HeaderValue};
use hyper::{Method, Response};

use super::body::{self, Body};
use super::response::method_not_allowed;

/// The page's files.
#[derive(Clone, Copy, Debug)]
pub(super) enum Asset {
    Index,
    Script,
    Style,
}

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

pub(super) fn serve(method: &Method, asset: Asset) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let (content, content_type) = match asset {
        Asset::Index => (INDEX, "text/html; charset=utf-8"),
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
    };
    let mut response = Response::new(if method == Method::HEAD {
        body::empty()
    } else {
        body::full(content)
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content.len()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::PAGE_CSP),
    );
    response
}
