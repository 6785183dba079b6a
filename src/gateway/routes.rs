//! Routing and the file handler.

use std::net::SocketAddr;

use headers::{ETag, HeaderMapExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode};
use serde::Serialize;

use super::body::{self, Body, Multipart};
use super::ranges::{self, Decision};
use super::response::{method_not_allowed, read_error, text};
use super::{Gateway, page, upload};
use crate::core::cap::{Cap, VerifyCap};
use crate::core::text;
use crate::engine::GetRange;
use crate::server::access::{Access, OnEnd, Started};

/// The file's strong ETag: its public identity (storage index and UEB hash), never the cap.
fn etag_for(cap: &VerifyCap) -> ETag {
    let ueb = crate::core::cap::base32_encode(&cap.ueb_hash().0);
    format!("\"sv1-{}-{}\"", cap.storage_index(), &ueb[..16])
        .parse()
        .unwrap_or_else(|_| unreachable!("base32 and digits make a valid entity tag"))
}

#[derive(Default)]
struct Query {
    t: Option<String>,
    save: bool,
}

fn parse_query(query: Option<&str>) -> Query {
    let mut parsed = Query::default();
    for (key, value) in form_urlencoded(query.unwrap_or("")) {
        match key.as_str() {
            "t" => parsed.t = Some(value),
            "save" => parsed.save = matches!(value.as_str(), "true" | "1" | "yes"),
            _ => {}
        }
    }
    parsed
}

fn form_urlencoded(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(key), decode(value))
    })
}

impl Gateway {
    pub(super) async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let started = Started::new(peer, &request);
        let mut access = Access::default();
        let mut response = self.route(request, &mut access).await;
        let headers = response.headers_mut();
        // Whatever a response is, a browser never sniffs it into something runnable, and
        // anything not one of the gateway's pages runs sandboxed, loading nothing.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if access.route == "file" || !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(super::FILE_CSP),
            );
        }
        let metrics = self.client().metrics().clone();
        let on_end: OnEnd = Box::new(move |status, sent| metrics.http_response(status, sent));
        started.log(access, response, Some(on_end))
    }

    async fn route(&self, request: Request<Incoming>, access: &mut Access) -> Response<Body> {
        if let Some(refused) = crate::server::refuse_bad_host(&request) {
            access.route = "invalid";
            return refused;
        }
        let path = request.uri().path().to_owned();
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["", ""] | ["", "index.html"] => {
                access.route = "page";
                page::serve(request.method(), page::Asset::Index)
            }
            ["", "app.js"] => {
                access.route = "page";
                page::serve(request.method(), page::Asset::Script)
            }
            ["", "app.css"] => {
                access.route = "page";
                page::serve(request.method(), page::Asset::Style)
            }
            ["", "metrics"] => {
                access.route = "metrics";
                match *request.method() {
                    Method::GET | Method::HEAD => {
                        let mut response = text(StatusCode::OK, self.client().render_metrics());
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                        );
                        if *request.method() == Method::HEAD {
                            *response.body_mut() = body::full(String::new());
                        }
                        response
                    }
                    _ => method_not_allowed("GET, HEAD"),
                }
            }
            ["", "uri"] | ["", "uri", ""] => {
                access.route = "upload";
                match *request.method() {
                    Method::PUT => upload::put(self, request, access).await,
                    Method::POST => upload::post_form(self, request, access).await,
                    _ => method_not_allowed("PUT, POST"),
                }
            }
            ["", "uri", cap] => self.file(request, cap, None, access).await,
            ["", "uri", cap, name] if !name.is_empty() => {
                self.file(request, cap, Some(name), access).await
            }
            _ => {
                access.route = "none";
                text(
                    StatusCode::NOT_FOUND,
                    "not found: files are at /uri/<cap> or /uri/<cap>/<filename>",
                )
            }
        }
    }

    async fn file(
        &self,
        request: Request<Incoming>,
        cap_text: &str,
        name: Option<&str>,
        access: &mut Access,
    ) -> Response<Body> {
        access.route = "file";
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        // A stored file is data: never code or style for a page, ours or another site's,
        // even if an injection ever slipped past the page's policy (`script-src 'self'`
        // would otherwise admit an uploaded `.js`).
        if let Some(destination) = request.headers().get("sec-fetch-dest")
            && matches!(
                destination.as_bytes(),
                b"script"
                    | b"style"
                    | b"worker"
                    | b"sharedworker"
                    | b"serviceworker"
                    | b"audioworklet"
                    | b"paintworklet"
                    | b"xslt"
            )
        {
            return text(
                StatusCode::FORBIDDEN,
                "stored files are not served as scripts, styles or workers",
            );
        }
        let query = parse_query(request.uri().query());
        let Ok(cap_text) = percent_decode_str(cap_text).decode_utf8() else {
            return text(StatusCode::BAD_REQUEST, "invalid cap: not UTF-8");
        };
        let cap: Cap = match cap_text.parse() {
            Ok(cap) => cap,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid cap: {e}")),
        };
        let name = match name.map(text::parse_name).transpose() {
            Ok(name) => name,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid file name: {e}")),
        };
        access.storage_index = Some(cap.verify_cap().storage_index());
        match query.t.as_deref() {
            None => {}
            Some("json") => return self.metadata(&cap, name.as_deref()).await,
            Some(other) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown t={other:?}; the only one is t=json"),
                );
            }
        }
        let Cap::Read(cap) = cap else {
            return text(
                StatusCode::BAD_REQUEST,
                "a verify cap can check a file (?t=json) but not read it",
            );
        };
        let file = match self.client().open(&cap).await {
            Ok(file) => file,
            Err(e) => return read_error(&e),
        };
        let len = file.len();
        let etag = etag_for(&cap.verify_cap());
        let content_type = name
            .as_deref()
            .map(|n| {
                mime_guess::from_path(n)
                    .first_or_octet_stream()
                    .essence_str()
                    .to_owned()
            })
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let decision = ranges::decide(
            method,
            request.headers(),
            len,
            &etag,
            &self.inner.config.ranges,
        );
        let head = method == Method::HEAD;

        let mut response = Response::new(body::empty());
        let headers = response.headers_mut();
        headers.typed_insert(etag);
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // The URL holds a secret: no shared cache may keep the plaintext; the browser may,
        // forever, because the content behind a cap never changes.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=31536000, immutable"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if query.save {
            headers.insert(header::CONTENT_DISPOSITION, attachment(name.as_deref()));
        }
        // A body's first chunk is fetched before the status line (for HEAD too, which must
        // answer as GET would): a file that cannot be read at all gets a 404 or 503, and only a
        // failure later in the transfer aborts the connection.
        let body_for = |range: std::ops::Range<u64>| {
            let file = file.clone();
            async move {
                if head {
                    file.read(GetRange::at(range.start, 1)).await.map(|_| None)
                } else {
                    body::range(&file, range).await.map(Some)
                }
            }
        };
        let (status, length, body) = match decision {
            Decision::NotModified => (StatusCode::NOT_MODIFIED, None, None),
            Decision::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, Some(0), None),
            Decision::Unsatisfiable => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{len}")),
                );
                (StatusCode::RANGE_NOT_SATISFIABLE, Some(0), None)
            }
            Decision::Full => {
                headers.insert(header::CONTENT_TYPE, header_value(&content_type));
                match body_for(0..len).await {
                    Ok(body) => (StatusCode::OK, Some(len), body),
                    Err(e) => return read_error(&e),
                }
            }
            Decision::Partial(range) => {
                headers.insert(header::CONTENT_TYPE, header_value(&content_type));
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes {}-{}/{len}", range.start, range.end - 1)),
                );
                let length = range.end - range.start;
                match body_for(range).await {
                    Ok(body) => (StatusCode::PARTIAL_CONTENT, Some(length), body),
                    Err(e) => return read_error(&e),
                }
            }
            Decision::Multipart(ranges) => {
                let multipart = Multipart::new(&ranges, len, &content_type);
                headers.insert(
                    header::CONTENT_TYPE,
                    header_value(&multipart.content_type()),
                );
                let length = multipart.len();
                let body = if head {
                    file.read(GetRange::at(ranges[0].start, 1))
                        .await
                        .map(|_| None)
                } else {
                    multipart.body(&file).await.map(Some)
                };
                match body {
                    Ok(body) => (StatusCode::PARTIAL_CONTENT, Some(length), body),
                    Err(e) => return read_error(&e),
                }
            }
        };
        *response.status_mut() = status;
        if let Some(length) = length {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        if let Some(body) = body {
            *response.body_mut() = body;
        }
        response
    }

    async fn metadata(&self, cap: &Cap, name: Option<&str>) -> Response<Body> {
        #[derive(Serialize)]
        struct Metadata {
            storage_index: String,
            verify_cap: String,
            size: u64,
            k: u16,
            n: u16,
            segment_size: u64,
            segments: u64,
            shares_found: usize,
            shares: Vec<u8>,
            #[serde(skip_serializing_if = "Option::is_none")]
            content_type: Option<String>,
        }
        let verify_cap = cap.verify_cap();
        // Nothing the cap claims is echoed before the file's UEB has confirmed it.
        if let Err(e) = self.client().open_node(&verify_cap).await {
            return read_error(&e);
        }
        let g = verify_cap.geometry();
        let timeout = self.inner.config.reader.request_timeout;
        let listing = crate::engine::list_shares(self.client().grid(), &verify_cap, timeout).await;
        let metadata = Metadata {
            storage_index: verify_cap.storage_index().to_string(),
            verify_cap: verify_cap.to_string(),
            size: g.size(),
            k: g.k(),
            n: g.n(),
            segment_size: g.segment_size(),
            segments: g.num_segments(),
            shares_found: listing.len(),
            shares: listing.iter().map(|s| s.0).collect(),
            content_type: name.map(|n| {
                mime_guess::from_path(n)
                    .first_or_octet_stream()
                    .essence_str()
                    .to_owned()
            }),
        };
        let status = if listing.is_empty() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        let json = serde_json::to_vec_pretty(&metadata).unwrap_or_default();
        let mut response = Response::new(body::full(json));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// `attachment`, with a safe base name of the file both as plain ASCII and as RFC 8187 UTF-8.
fn attachment(name: Option<&str>) -> HeaderValue {
    let Some(name) = name else {
        return HeaderValue::from_static("attachment");
    };
    let name = text::download_name(name);
    let name = name.as_str();
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, super::ESCAPED);
    header_value(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
}
