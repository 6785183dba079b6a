//! A raw HTTP/1.1 client over a real socket, so tests see exactly what the gateway sends:
//! truncated bodies, stalls, headers byte for byte. And a `segvault serve` process to talk to.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How the body ended early over HTTP/2 (a stream reset, with its reason); `None` over
    /// HTTP/1.1, where a cut-short body is one shorter than its Content-Length.
    pub reset: Option<String>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// Whether the body is as long as Content-Length promised and was not reset.
    pub fn complete(&self) -> bool {
        self.reset.is_none() && self.content_length() == Some(self.body.len() as u64)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a raw response into head and body.
pub fn parse(raw: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw).expect("a well-formed response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!(
            "incomplete response head: {:?}",
            String::from_utf8_lossy(raw)
        ),
    };
    Response {
        status: response.code.unwrap_or(0),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: raw[head_len..].to_vec(),
        reset: None,
    }
}

/// Writes a request with `Connection: close` and returns the stream.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
}

/// Reads one response: the head, then as many body bytes as Content-Length says, or until
/// the server closes (a reset counts as a close: an aborted transfer).
pub fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let bodiless = head.starts_with("http/1.1 304") || head.starts_with("http/1.1 204");
            if let Some(length) = length.filter(|_| !bodiless)
                && raw.len() >= head_end + length
            {
                return raw;
            }
            if bodiless {
                return raw;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = send(addr, method, path, headers, body);
    parse(&read_all(&mut stream))
}

pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers, b"")
}

/// Something that sends one request and reads the whole response: the raw HTTP/1.1 client
/// above, or HTTP/2 ([`super::http2::H2Client`]), so one test body checks every transport.
pub trait Client {
    /// What the transport is, for assertion messages.
    fn name(&self) -> &str;

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response;

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
    }
}

/// The raw HTTP/1.1 client, one connection per request.
pub struct Http1(pub String);

impl Client for Http1 {
    fn name(&self) -> &str {
        "HTTP/1.1"
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(&self.0, method, path, headers, body)
    }
}

/// Parts of a `multipart/byteranges` body: (Content-Range value, bytes).
pub fn multipart_parts(response: &Response) -> Vec<(String, Vec<u8>)> {
    let content_type = response.header("content-type").expect("content-type");
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    let body = &response.body;
    let mut parts = Vec::new();
    let mut at = find(body, delimiter.as_bytes(), 0).expect("first boundary");
    loop {
        let after = at + delimiter.len();
        if body[after..].starts_with(b"--") {
            assert_eq!(
                &body[after + 2..],
                b"\r\n",
                "nothing after the closing boundary"
            );
            return parts;
        }
        let head_end = find(body, b"\r\n\r\n", after).expect("part head") + 4;
        let head = String::from_utf8_lossy(&body[after..head_end]).into_owned();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("a Content-Range per part")
            .to_owned();
        assert!(
            head.contains("Content-Type: "),
            "a Content-Type per part: {head}"
        );
        let next = find(body, delimiter.as_bytes(), head_end).expect("next boundary");
        parts.push((range, body[head_end..next].to_vec()));
        at = next;
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// A running `segvault serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_logging(data, extra, None)
    }

    /// Like [`start`](Self::start), with the gateway's log (stderr) written to `log`.
    pub fn start_logging(data: &Path, extra: &[&str], log: Option<&Path>) -> Server {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let mut child = process::segvault()
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start segvault serve");
        let line = process::first_line(&mut child);
        let addr = line
            .strip_prefix("http://")
            .or_else(|| line.strip_prefix("https://"))
            .and_then(|s| s.strip_suffix('/'))
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .to_owned();
        Server { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
