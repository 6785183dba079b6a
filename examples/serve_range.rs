//! Serve `Range` requests for a stored file from a hyper handler of your own: the handler
//! maps the header to a [`GetRange`] and streams the verified, decrypted bytes as they come
//! (memory stays at the read-ahead window however slow the client).
//!
//! `cargo run --example serve_range` starts the server on a free port, asks it for a range
//! as a client would, checks the bytes and exits. (`segvault serve` is the full gateway:
//! multiple ranges, conditional requests, HEAD, uploads.)

use std::convert::Infallible;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use segvault::{FileHandle, GetRange, Grid, ReadCap, Vault};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` (one range; anything else is the whole file).
fn requested(header: Option<&str>) -> Option<GetRange> {
    let spec = header?.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    match (start.parse::<u64>().ok(), end.parse::<u64>().ok()) {
        (Some(a), Some(b)) if a <= b => Some(GetRange::from(a..=b)),
        (Some(a), None) if end.is_empty() => Some(GetRange::Offset(a)),
        (None, Some(n)) if start.is_empty() => Some(GetRange::Suffix(n)),
        _ => None,
    }
}

async fn handle(
    file: FileHandle,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let header = request.headers().get(RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match requested(header) {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.resolve(file.len())),
        None => (StatusCode::OK, 0..file.len()),
    };
    let mut response = Response::builder()
        .header(ACCEPT_RANGES, "bytes")
        .header(CONTENT_LENGTH, range.end - range.start);
    if status == StatusCode::PARTIAL_CONTENT {
        if range.is_empty() {
            let refused = Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(CONTENT_RANGE, format!("bytes */{}", file.len()))
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync());
            return Ok(refused.expect("a valid response"));
        }
        let content_range = format!("bytes {}-{}/{}", range.start, range.end - 1, file.len());
        response = response.header(CONTENT_RANGE, content_range);
    }
    // A failure mid-stream ends the body with an error: hyper aborts the connection, so the
    // client sees a short body, never unverified bytes.
    let chunks = file
        .stream(range)
        .map_ok(Frame::data)
        .map_err(std::io::Error::from);
    let body = BodyExt::boxed_unsync(StreamBody::new(chunks));
    Ok(response
        .status(status)
        .body(body)
        .expect("a valid response"))
}

async fn serve(listener: tokio::net::TcpListener, vault: Vault, cap: ReadCap) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let (vault, cap) = (vault.clone(), cap.clone());
        tokio::spawn(async move {
            // Opening is cheap after the first time: the vault keeps the file's node.
            let Ok(file) = vault.open(&cap).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| handle(file.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let vault = Vault::new(Grid::embedded(root.path())?);
    let movie: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let cap = vault.put(movie.clone()).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(serve(listener, vault, cap));
    println!("serving on http://{address}/");

    // A client seeking near the end, as a video player does.
    let socket = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    let request = Request::get("/movie")
        .header(RANGE, "bytes=2999000-")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let range = response.headers()[CONTENT_RANGE].to_str()?.to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    assert_eq!(&body[..], &movie[2_999_000..]);
    println!("206 {range}: {} bytes, all as stored", body.len());
    Ok(())
}
