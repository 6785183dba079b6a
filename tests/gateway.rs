//! `segvault serve` as a process, over real sockets: RFC 9110 ranges and conditionals, HEAD,
//! multipart bodies parsed byte for byte, uploads, errors, slow and vanishing clients, and a
//! transfer that must abort when a late segment cannot be verified.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{self, Client, Http1, Server, get, multipart_parts, request};
use common::http2::H2Client;
use common::process;
use common::random_bytes;
use common::tls::{self, TestCertificates};
use segvault::core::cap::ReadCap;
use segvault::core::geometry::SegmentIndex;
use segvault::core::layout::ShareLayout;

const SEGMENT: u64 = 128 * 1024;

/// A data directory with files stored through the CLI.
struct Site {
    root: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn put(&self, bytes: &[u8], args: &[&str]) -> String {
        let input = self.root.path().join("input");
        std::fs::write(&input, bytes).unwrap();
        process::put(
            process::segvault()
                .arg("--data")
                .arg(self.data())
                .arg("put")
                .args(args)
                .arg(&input),
        )
    }

    fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.data(), extra)
    }

    /// The gateway over every transport a client can pick: plain HTTP/1.1, cleartext HTTP/2
    /// with prior knowledge, and HTTPS with HTTP/2 chosen by ALPN.
    fn every_transport(&self) -> Transports {
        let certificates = TestCertificates::new(self.root.path(), "gateway");
        let plain = self.serve(&[]);
        let tls_args = certificates.serve_args();
        let tls = self.serve(&tls_args.iter().map(String::as_str).collect::<Vec<_>>());
        let clients: Vec<Box<dyn Client>> = vec![
            Box::new(Http1(plain.addr.clone())),
            Box::new(H2Client::prior_knowledge(&plain.addr)),
            Box::new(H2Client::tls(&tls.addr, &certificates)),
        ];
        Transports {
            clients,
            _servers: [plain, tls],
        }
    }

    /// Share files of a file, by scanning the embedded grid.
    fn share_files(&self, cap: &str) -> Vec<PathBuf> {
        let si = cap.parse::<ReadCap>().unwrap().storage_index().to_string();
        let mut files = Vec::new();
        for server in std::fs::read_dir(self.data().join("grid"))
            .unwrap()
            .flatten()
        {
            let dir = server.path().join("shares").join(&si[..2]).join(&si);
            if let Ok(entries) = std::fs::read_dir(dir) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
        files.sort();
        files
    }
}

/// Clients over each transport, and the gateways they talk to (stopped on drop).
struct Transports {
    clients: Vec<Box<dyn Client>>,
    _servers: [Server; 2],
}

fn uri(cap: &str) -> String {
    format!("/uri/{cap}")
}

fn expect_range(response: &http::Response, plain: &[u8], first: u64, last: u64, what: &str) {
    let len = plain.len();
    assert_eq!(response.status, 206, "{what}: {}", response.text());
    assert_eq!(
        response.header("content-range"),
        Some(format!("bytes {first}-{last}/{len}").as_str()),
        "{what}"
    );
    assert_eq!(response.content_length(), Some(last - first + 1), "{what}");
    assert!(
        response.body == plain[first as usize..=last as usize],
        "{what}: body differs"
    );
}

#[test]
fn single_ranges_and_heads_follow_rfc_9110() {
    let site = Site::new();
    let plain = random_bytes(3 * SEGMENT as usize + 12_345, 1);
    let cap = site.put(&plain, &[]);
    let empty = site.put(b"", &[]);
    let transports = site.every_transport();
    for client in &transports.clients {
        eprintln!("over {}", client.name());
        single_ranges_and_heads(client.as_ref(), &plain, &cap, &empty);
    }
}

fn single_ranges_and_heads(client: &dyn Client, plain: &[u8], cap: &str, empty: &str) {
    let (path, len) = (uri(cap), plain.len() as u64);

    let mut cases: Vec<(String, u64, u64)> = vec![
        ("bytes=1-10".into(), 1, 10),
        ("bytes=5-".into(), 5, len - 1),
        ("bytes=-5".into(), len - 5, len - 1),
        (format!("bytes=-{}", 2 * len), 0, len - 1),
        (format!("bytes=5-{}", 2 * len), 5, len - 1),
        (format!("bytes={}-{}", len - 1, len - 1), len - 1, len - 1),
        ("bytes=0-0".into(), 0, 0),
    ];
    for edge in [SEGMENT, 2 * SEGMENT, 3 * SEGMENT] {
        cases.push((format!("bytes={}-{edge}", edge - 1), edge - 1, edge));
        cases.push((format!("bytes={edge}-{edge}"), edge, edge));
        cases.push((
            format!("bytes={}-{}", edge - 3, edge + 3),
            edge - 3,
            edge + 3,
        ));
    }
    for (range, first, last) in &cases {
        let response = client.get(&path, &[("Range", range)]);
        expect_range(&response, plain, *first, *last, range);
        assert_eq!(response.header("accept-ranges"), Some("bytes"));
        let head = client.request("HEAD", &path, &[("Range", range)], b"");
        assert_eq!(head.status, 206, "HEAD {range}");
        assert_eq!(
            head.header("content-range"),
            response.header("content-range"),
            "HEAD {range}"
        );
        assert_eq!(
            head.content_length(),
            response.content_length(),
            "HEAD {range}"
        );
        assert!(head.body.is_empty(), "HEAD has no body");
    }

    for ignored in ["BOGUS=fizbop-quarnak", "items=0-5", "bytes=5-2", "bytes=x-"] {
        let response = client.get(&path, &[("Range", ignored)]);
        assert_eq!(response.status, 200, "{ignored} is ignored");
        assert!(response.header("content-range").is_none());
        assert!(response.body == plain, "{ignored}: whole file");
    }
    let whole = client.get(&path, &[]);
    assert_eq!((whole.status, whole.content_length()), (200, Some(len)));
    assert!(whole.body == plain);
    let head = client.request("HEAD", &path, &[], b"");
    assert_eq!(
        (head.status, head.content_length(), head.body.len()),
        (200, Some(len), 0)
    );

    for unsatisfiable in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 10, len + 20),
        "bytes=-0".into(),
    ] {
        for method in ["GET", "HEAD"] {
            let response = client.request(method, &path, &[("Range", &unsatisfiable)], b"");
            assert_eq!(response.status, 416, "{method} {unsatisfiable}");
            assert_eq!(
                response.header("content-range"),
                Some(format!("bytes */{len}").as_str())
            );
        }
    }

    let response = client.get(&uri(empty), &[]);
    assert_eq!(
        (
            response.status,
            response.content_length(),
            response.body.len()
        ),
        (200, Some(0), 0)
    );
    let response = client.get(&uri(empty), &[("Range", "bytes=0-0")]);
    assert_eq!(response.status, 416);
    assert_eq!(response.header("content-range"), Some("bytes */0"));
    assert_eq!(
        client.get(&uri(empty), &[("Range", "bytes=-5")]).status,
        200,
        "a suffix of nothing is the empty body"
    );
}

#[test]
fn multiple_ranges_come_back_as_multipart_in_request_order() {
    let site = Site::new();
    let plain = random_bytes(1_000_000, 2);
    let cap = site.put(&plain, &[]);
    let transports = site.every_transport();
    for client in &transports.clients {
        eprintln!("over {}", client.name());
        multipart_ranges(client.as_ref(), &plain, &cap);
    }
}

fn multipart_ranges(client: &dyn Client, plain: &[u8], cap: &str) {
    let (path, len) = (format!("{}/clip.mp4", uri(cap)), plain.len());

    let response = client.get(&path, &[("Range", "bytes=500000-500099,0-99,999990-")]);
    assert_eq!(response.status, 206);
    assert_eq!(
        response.content_length(),
        Some(response.body.len() as u64),
        "exact length"
    );
    let parts = multipart_parts(&response);
    let expected = [(500_000, 500_099), (0, 99), (999_990, 999_999)];
    assert_eq!(parts.len(), 3);
    for ((range, bytes), (first, last)) in parts.iter().zip(expected) {
        assert_eq!(range, &format!("bytes {first}-{last}/{len}"));
        assert!(bytes == &plain[first..=last]);
    }
    assert!(
        response
            .body
            .windows(b"video/mp4".len())
            .any(|w| w == b"video/mp4"),
        "each part has the type"
    );

    // Overlapping and nearly adjacent ranges are coalesced where the first of them was.
    let parts = multipart_parts(&client.get(
        &path,
        &[("Range", "bytes=900000-900009,0-99,50-199,300-399")],
    ));
    let ranges: Vec<&str> = parts.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        ranges,
        vec![
            format!("bytes 900000-900009/{len}"),
            format!("bytes 0-399/{len}")
        ]
    );
    assert!(parts[1].1 == plain[..400]);

    // Too many parts: the whole file, which the RFC allows.
    let many = (0..40)
        .map(|i| format!("{}-{}", i * 20_000, i * 20_000))
        .collect::<Vec<_>>()
        .join(",");
    let response = client.get(&path, &[("Range", &format!("bytes={many}"))]);
    assert_eq!(response.status, 200);
    assert!(response.body == plain);

    let head = client.request("HEAD", &path, &[("Range", "bytes=0-0,500000-500000")], b"");
    assert_eq!(head.status, 206);
    assert!(
        head.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges; boundary=")
    );
    assert!(head.body.is_empty() && head.content_length().unwrap() > 2);
}

#[test]
fn conditional_requests_use_a_strong_etag_from_the_public_identity() {
    let site = Site::new();
    let plain = random_bytes(300_000, 3);
    let cap = site.put(&plain, &[]);
    let transports = site.every_transport();
    for client in &transports.clients {
        eprintln!("over {}", client.name());
        conditional_requests(client.as_ref(), &plain, &cap);
    }
}

fn conditional_requests(client: &dyn Client, plain: &[u8], cap: &str) {
    let path = uri(cap);
    let first = client.get(&path, &[]);
    let etag = first.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with("\"sv1-") && etag.ends_with('"'),
        "strong and quoted: {etag}"
    );
    assert!(!etag.contains(&cap[9..61]), "the ETag never holds the key");
    let cache = first.header("cache-control").unwrap();
    assert!(
        cache.contains("private") && cache.contains("immutable"),
        "{cache}"
    );

    let not_modified = client.get(&path, &[("If-None-Match", &etag)]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(
        client.get(&path, &[("If-None-Match", "\"other\"")]).status,
        200
    );
    assert_eq!(client.get(&path, &[("If-Match", "\"other\"")]).status, 412);
    expect_range(
        &client.get(&path, &[("If-Match", &etag), ("Range", "bytes=10-19")]),
        plain,
        10,
        19,
        "If-Match",
    );
    expect_range(
        &client.get(&path, &[("If-Range", &etag), ("Range", "bytes=10-19")]),
        plain,
        10,
        19,
        "If-Range",
    );
    for stale in ["\"other\"", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let response = client.get(&path, &[("If-Range", stale), ("Range", "bytes=10-19")]);
        assert_eq!(response.status, 200, "If-Range {stale}");
        assert!(response.body == plain);
    }
}

#[test]
fn names_types_metadata_and_client_errors() {
    let site = Site::new();
    let plain = random_bytes(70_000, 4);
    let cap = site.put(&plain, &["-k", "3", "-n", "10"]);
    let log = site.root.path().join("gateway.log");
    let server = Server::start_logging(&site.data(), &[], Some(&log));
    let addr = server.addr.as_str();
    let check = |path: &str, status: u16, needle: &str| {
        let response = get(addr, path, &[]);
        assert_eq!(response.status, status, "{path}: {}", response.text());
        let text = response.text();
        assert!(
            needle.is_empty()
                || text.contains(needle)
                || response.headers.iter().any(|(_, v)| v.contains(needle)),
            "{path}: {needle:?} not in {text}"
        );
        response
    };
    check(&format!("/uri/{cap}/movie.mp4"), 200, "video/mp4");
    check(&format!("/uri/{cap}/My%20Film.webm"), 200, "video/webm");
    check(&format!("/uri/{cap}"), 200, "application/octet-stream");
    let saved = check(&format!("/uri/{cap}/notes.txt?save=true"), 200, "");
    let disposition = saved.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("notes.txt"),
        "{disposition}"
    );

    let json = check(&format!("/uri/{cap}?t=json"), 200, "\"size\": 70000");
    assert!(
        json.text().contains("\"shares_found\": 10"),
        "{}",
        json.text()
    );
    let verify_cap = json
        .text()
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"verify_cap\": \""))
        .unwrap()
        .trim_end_matches("\",")
        .to_owned();
    check(&format!("/uri/{verify_cap}?t=json"), 200, "\"k\": 3");
    check(&format!("/uri/{verify_cap}"), 400, "verify cap");
    check(&format!("/uri/{cap}?t=bogus"), 400, "t=json");
    check("/uri/not-a-cap", 400, "invalid cap");
    check(&format!("/uri/{}", &cap[..40]), 400, "invalid cap");
    // A cap whose size was edited still names the file, but wrongly: the client's mistake.
    check(
        &format!("/uri/{}", &cap[..cap.len() - 2]),
        400,
        "altered or mistyped",
    );
    check("/elsewhere", 404, "");
    let missing = cap.replacen(&cap[9..20], "aaaaaaaaaaa", 1);
    check(&format!("/uri/{missing}"), 404, "not found");
    let post = request(addr, "POST", &format!("/uri/{cap}"), &[], b"x");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let huge = "x".repeat(32 * 1024);
    assert_eq!(
        get(addr, &format!("/uri/{cap}"), &[("X-Padding", &huge)]).status,
        431
    );

    // n-k+1 servers gone: 503 with the reason.
    let share_files = site.share_files(&cap);
    for file in &share_files[..8] {
        std::fs::remove_file(file).unwrap();
    }
    // Open shares are rechecked for deletion at most once a second: the gateway notices soon.
    let path = format!("/uri/{cap}/other-name");
    process::wait_for(
        "the gateway to notice the deleted shares",
        Duration::from_secs(30),
        || request(addr, "HEAD", &path, &[], b"").status == 503,
    );
    let unavailable = check(&path, 503, "not enough shares");
    assert!(
        !unavailable.text().contains(&cap[9..61]),
        "errors never quote the key"
    );
    let head = request(addr, "HEAD", &format!("/uri/{cap}"), &[], b"");
    assert_eq!(head.status, 503, "HEAD answers as GET would");

    // The log names files by storage index and never holds a cap or key.
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    let si = cap.parse::<ReadCap>().unwrap().storage_index().to_string();
    assert!(logged.contains(&si), "requests are logged by storage index");
    assert!(logged.lines().count() > 10, "{logged}");
    assert!(!logged.contains(&cap[9..61]), "a key reached the log");
    assert!(!logged.contains("sv1-read:"), "a cap reached the log");
}

#[test]
fn sixty_four_concurrent_random_ranges_are_exact() {
    let site = Site::new();
    let plain = std::sync::Arc::new(random_bytes(4_000_000, 5));
    let cap = site.put(&plain, &[]);
    let server = site.serve(&[]);
    let threads: Vec<_> = (0..64u64)
        .map(|i| {
            let (addr, path, plain) = (server.addr.clone(), uri(&cap), plain.clone());
            std::thread::spawn(move || {
                let first = (i * 2_654_435_761) % (plain.len() as u64 - 70_000);
                let last = first + (i * 7919) % 65_536;
                let response = get(&addr, &path, &[("Range", &format!("bytes={first}-{last}"))]);
                expect_range(&response, &plain, first, last, &format!("request {i}"));
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn a_client_that_stops_reading_holds_bounded_memory_and_can_resume() {
    let site = Site::new();
    let plain = random_bytes(64 << 20, 6);
    let cap = site.put(&plain, &[]);
    let server = site.serve(&[]);
    // Warm the process up with one full read, then measure.
    assert!(get(&server.addr, &uri(&cap), &[("Range", "bytes=0-999999")]).complete());
    let baseline = server.rss_kib();

    let mut stalled = http::send(&server.addr, "GET", &uri(&cap), &[], b"");
    let mut head = vec![0u8; 256 * 1024];
    stalled.read_exact(&mut head).unwrap();
    let mut peak = 0;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(server.rss_kib());
    }
    // A 64 MiB file, a stalled client: memory must stay near the read-ahead window
    // (kernel socket buffers are not in RSS).
    assert!(
        peak < baseline + 24 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB with a stalled client"
    );

    let mut rest = head;
    stalled.read_to_end(&mut rest).unwrap();
    let response = http::parse(&rest);
    assert!(
        response.complete(),
        "the stalled transfer resumes and completes"
    );
    assert!(response.body == plain);
}

/// The value of an unlabelled metric in the gateway's `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    get(&server.addr, "/metrics", &[])
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Many viewers that stop reading (a paused player, a vanished phone): each soon holds no
/// read-ahead, others are served meanwhile, and each connection is closed after the stated
/// send timeout.
#[test]
fn stalled_clients_let_their_read_ahead_go_and_are_closed_after_the_send_timeout() {
    let site = Site::new();
    // Each body far larger than what socket buffers absorb, so every client stalls the gateway.
    let plain = random_bytes(64 << 20, 16);
    let cap = site.put(&plain, &[]);
    let log = site.root.path().join("gateway.log");
    let server = Server::start_logging(&site.data(), &["--send-timeout", "8", "-v"], Some(&log));
    let mut stalled = Vec::new();
    for i in 0..40u64 {
        let first = i * 400_000;
        let mut stream = http::send(
            &server.addr,
            "GET",
            &uri(&cap),
            &[("Range", &format!("bytes={first}-"))],
            b"",
        );
        let mut head = [0u8; 4096];
        stream.read_exact(&mut head).unwrap();
        stalled.push(stream);
    }
    process::wait_for(
        "stalled clients' read-ahead to be let go",
        Duration::from_secs(60),
        || {
            metric(&server, "segvault_read_ahead_released_total") > 0.0
                && metric(&server, "segvault_read_ahead_bytes") == 0.0
        },
    );
    let response = get(
        &server.addr,
        &uri(&cap),
        &[("Range", "bytes=20000000-24999999")],
    );
    expect_range(
        &response,
        &plain,
        20_000_000,
        24_999_999,
        "beside 40 stalled",
    );
    process::wait_for(
        "every stalled connection to be closed",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("the client took no response bytes for 8s")
                .count()
                >= stalled.len()
        },
    );
    for (i, mut stream) in stalled.into_iter().enumerate() {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let expected = plain.len() - i * 400_000;
        assert!(
            rest.len() < expected,
            "client {i} got its whole body after the send timeout"
        );
    }
}

#[test]
fn a_client_that_disconnects_mid_body_leaves_the_gateway_working() {
    let site = Site::new();
    let plain = random_bytes(16 << 20, 7);
    let cap = site.put(&plain, &[]);
    let server = site.serve(&[]);
    for round in 0..5 {
        let mut stream = http::send(&server.addr, "GET", &uri(&cap), &[], b"");
        let mut some = vec![0u8; 1 << 20];
        stream.read_exact(&mut some).unwrap();
        drop(stream);
        let response = get(
            &server.addr,
            &uri(&cap),
            &[("Range", "bytes=5000000-5099999")],
        );
        expect_range(
            &response,
            &plain,
            5_000_000,
            5_099_999,
            &format!("after disconnect {round}"),
        );
    }
}

#[test]
fn a_late_segment_that_cannot_be_verified_aborts_the_transfer() {
    let site = Site::new();
    let plain = random_bytes(3 << 20, 8);
    let cap = site.put(&plain, &["-k", "3", "-n", "5"]);
    let read_cap: ReadCap = cap.parse().unwrap();
    let layout = ShareLayout::new(read_cap.geometry());
    let bad = SegmentIndex(20);
    // Damage segment 20 in three of five shares: only two good blocks remain.
    for share in &site.share_files(&cap)[..3] {
        let mut bytes = std::fs::read(share).unwrap();
        bytes[layout.block_range(bad).start as usize + 100] ^= 0xff;
        std::fs::write(share, bytes).unwrap();
    }
    let server = site.serve(&[]);
    let response = get(&server.addr, &uri(&cap), &[]);
    assert_eq!(
        response.status, 200,
        "the headers went out before the damage was reached"
    );
    assert_eq!(response.content_length(), Some(plain.len() as u64));
    assert!(
        !response.complete(),
        "the transfer is cut short, never completed with missing bytes"
    );
    assert!(
        response.body.len() as u64 <= bad.0 * SEGMENT,
        "nothing of the bad segment or after it"
    );
    assert!(
        response.body == plain[..response.body.len()],
        "every byte sent is right"
    );
    let text = "problem during download";
    assert!(
        !response
            .body
            .windows(text.len())
            .any(|w| w == text.as_bytes()),
        "no error text in the body"
    );

    // curl sees a failed transfer too.
    let curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://{}{}", server.addr, uri(&cap)),
        ])
        .status()
        .unwrap();
    assert_eq!(curl.code(), Some(18), "curl: partial file");
    // Ranges before the damage still work.
    expect_range(
        &get(&server.addr, &uri(&cap), &[("Range", "bytes=0-99")]),
        &plain,
        0,
        99,
        "before the damage",
    );

    // Over HTTP/2 the failure resets the stream (never a clean end), and the connection
    // carries on with other streams.
    let certificates = TestCertificates::new(site.root.path(), "abort");
    let tls_args = certificates.serve_args();
    let tls = site.serve(&tls_args.iter().map(String::as_str).collect::<Vec<_>>());
    for client in [
        H2Client::prior_knowledge(&server.addr),
        H2Client::tls(&tls.addr, &certificates),
    ] {
        let response = client.get(&uri(&cap), &[]);
        assert_eq!(response.status, 200, "{}", client.name());
        assert!(
            response
                .reset
                .as_deref()
                .is_some_and(|r| r.starts_with("RST_STREAM(")),
            "{}: the stream ends with a reset, not {:?}",
            client.name(),
            response.reset
        );
        assert!(response.body.len() as u64 <= bad.0 * SEGMENT);
        assert!(response.body == plain[..response.body.len()]);
        expect_range(
            &client.get(&uri(&cap), &[("Range", "bytes=0-99")]),
            &plain,
            0,
            99,
            "the same connection after the reset",
        );
    }
    let curl = Command::new("curl")
        .args(["-s", "--http2", "--cacert"])
        .arg(&certificates.ca_file)
        .args(["-o", "/dev/null"])
        .arg(format!("https://{}{}", tls.addr, uri(&cap)))
        .status()
        .unwrap();
    assert_eq!(
        curl.code(),
        Some(92),
        "curl: HTTP/2 stream not closed cleanly"
    );
}

fn form(name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----segvaulttestboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn uploads_by_put_and_by_form_stream_into_new_files() {
    let site = Site::new();
    let server = site.serve(&["--max-upload", "300KiB"]);
    let addr = server.addr.as_str();
    for size in [0usize, 1, 200_000] {
        let plain = random_bytes(size, 9 + size as u64);
        let created = request(addr, "PUT", "/uri", &[], &plain);
        assert_eq!(created.status, 201, "{}", created.text());
        let cap = created.text().trim().to_owned();
        assert_eq!(created.header("location"), Some(uri(&cap).as_str()));
        let back = get(addr, &uri(&cap), &[]);
        assert!(
            back.status == 200 && back.body == plain,
            "PUT of {size} bytes reads back"
        );
    }

    let plain = random_bytes(150_000, 10);
    let (content_type, body) = form("clip.mp4", &plain);
    let created = request(
        addr,
        "POST",
        "/uri",
        &[
            ("Content-Type", &content_type),
            ("Accept", "application/json"),
        ],
        &body,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let reply: serde_json::Value = serde_json::from_slice(&created.body).unwrap();
    let url = reply["url"].as_str().unwrap();
    assert!(url.ends_with("/clip.mp4"));
    let back = get(addr, url, &[]);
    assert_eq!(back.header("content-type"), Some("video/mp4"));
    assert!(back.body == plain);
    let created = request(
        addr,
        "POST",
        "/uri",
        &[("Content-Type", &content_type)],
        &body,
    );
    assert!(
        created.text().starts_with("sv1-read:"),
        "plain text without Accept"
    );

    // Over the limit: refused up front when declared, and after 300 KiB when chunked.
    let big = random_bytes(400_000, 11);
    assert_eq!(request(addr, "PUT", "/uri", &[], &big).status, 413);
    let mut stream = http::send(
        addr,
        "PUT",
        "/uri",
        &[("Transfer-Encoding", "chunked")],
        b"",
    );
    for chunk in big.chunks(50_000) {
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
        {
            break;
        }
        let _ = stream.write_all(chunk);
        let _ = stream.write_all(b"\r\n");
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let response = http::parse(&http::read_all(&mut stream));
    assert_eq!(response.status, 413, "{}", response.text());
    let (content_type, body) = form("big.bin", &big);
    assert_eq!(
        request(
            addr,
            "POST",
            "/uri",
            &[("Content-Type", &content_type)],
            &body
        )
        .status,
        413
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/uri",
            &[("Content-Type", "text/plain")],
            b"x"
        )
        .status,
        415
    );
    assert_eq!(request(addr, "DELETE", "/uri", &[], b"").status, 405);
}

#[test]
fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let site = Site::new();
    let server = site.serve(&[]);
    let page = get(&server.addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("<form id=\"upload\""));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    let script = get(&server.addr, "/app.js", &[]);
    assert!(script.status == 200 && script.text().contains("createElement(kind)"));
    assert_eq!(get(&server.addr, "/app.css", &[]).status, 200);
    let head = request(&server.addr, "HEAD", "/", &[], b"");
    assert!(head.status == 200 && head.body.is_empty());
}

#[test]
fn slow_loris_connections_are_closed_and_shutdown_is_graceful() {
    let site = Site::new();
    let mut server = site.serve(&["--header-timeout", "1"]);
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(_) => continue,
        }
    };
    assert!(
        closed < Duration::from_secs(5),
        "a client that never finishes its headers is dropped ({closed:?})"
    );
    assert_eq!(
        get(&server.addr, "/", &[]).status,
        200,
        "others are served meanwhile"
    );
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the gateway cleanly: {status:?}"
    );
}

#[test]
fn sixteen_slow_http2_streams_hold_no_more_than_sixteen_slow_connections() {
    let site = Site::new();
    let plain = random_bytes(64 << 20, 13);
    let cap = site.put(&plain, &[]);
    let certificates = TestCertificates::new(site.root.path(), "slow");
    let tls_args = certificates.serve_args();

    // Sixteen HTTP/1.1 clients that read 256 KiB and stop.
    let plain_server = site.serve(&[]);
    assert!(
        get(
            &plain_server.addr,
            &uri(&cap),
            &[("Range", "bytes=0-999999")]
        )
        .complete()
    );
    let baseline = plain_server.rss_kib();
    let mut connections = Vec::new();
    for _ in 0..16 {
        let mut stalled = http::send(&plain_server.addr, "GET", &uri(&cap), &[], b"");
        let mut head = vec![0u8; 256 * 1024];
        stalled.read_exact(&mut head).unwrap();
        connections.push(stalled);
    }
    let http1_growth = peak_rss_kib(&plain_server, 15) - baseline;
    drop(connections);

    // Sixteen streams on one HTTP/2 connection over TLS, each advertising a 64 KiB window
    // and reading nothing.
    let tls = site.serve(&tls_args.iter().map(String::as_str).collect::<Vec<_>>());
    let client = H2Client::tls_with_window(&tls.addr, &certificates, Some(64 * 1024));
    assert!(
        client
            .get(&uri(&cap), &[("Range", "bytes=0-999999")])
            .complete()
    );
    let baseline = tls.rss_kib();
    let streams: Vec<_> = (0..16).map(|_| client.stall(&uri(&cap), &[])).collect();
    assert!(streams.iter().all(|s| s.status == 200));
    let http2_growth = peak_rss_kib(&tls, 15) - baseline;
    eprintln!(
        "RSS growth: 16 slow HTTP/1.1 connections {http1_growth} KiB, 16 slow h2 streams {http2_growth} KiB"
    );
    assert!(
        http2_growth < 32 * 1024,
        "16 stalled h2 streams grew the gateway by {http2_growth} KiB"
    );
    assert!(
        http2_growth <= http1_growth + http1_growth / 2 + 4 * 1024,
        "16 stalled h2 streams grew the gateway by {http2_growth} KiB, \
         16 stalled HTTP/1.1 connections by {http1_growth} KiB"
    );

    // The streams resume and complete, byte for byte.
    for stream in streams.into_iter().take(2) {
        assert!(client.finish(stream).unwrap() == plain);
    }
}

/// The largest resident size of `server` over `samples` samples 100 ms apart.
fn peak_rss_kib(server: &Server, samples: usize) -> u64 {
    let mut peak = 0;
    for _ in 0..samples {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(server.rss_kib());
    }
    peak
}

#[test]
fn a_certificate_reloaded_on_sighup_serves_new_connections_and_spares_open_ones() {
    let site = Site::new();
    let plain = random_bytes(16 << 20, 14);
    let cap = site.put(&plain, &[]);
    let first = TestCertificates::new(site.root.path(), "first");
    let tls_args = first.serve_args();
    let server = site.serve(&tls_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        tls::presented_certificate(&server.addr, &first).unwrap(),
        first.cert_der
    );

    // A transfer in flight, stalled by its reader, across the reload.
    let client = H2Client::tls_with_window(&server.addr, &first, Some(64 * 1024));
    let in_flight = client.stall(&uri(&cap), &[]);

    let second = TestCertificates::new(site.root.path(), "second");
    std::fs::copy(&second.cert_file, &first.cert_file).unwrap();
    std::fs::copy(&second.key_file, &first.key_file).unwrap();
    process::signal(server.pid(), "HUP");
    process::wait_for(
        "the new certificate to be presented",
        Duration::from_secs(10),
        || tls::presented_certificate(&server.addr, &second).ok() == Some(second.cert_der.clone()),
    );
    assert!(
        tls::presented_certificate(&server.addr, &first).is_err(),
        "the old certificate is gone for new connections"
    );

    // A broken file on the next reload keeps the current certificate.
    std::fs::write(&first.key_file, "not a key").unwrap();
    process::signal(server.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tls::presented_certificate(&server.addr, &second).unwrap(),
        second.cert_der
    );

    assert!(
        client.finish(in_flight).unwrap() == plain,
        "the transfer begun before the reload completes"
    );
    expect_range(
        &client.get(&uri(&cap), &[("Range", "bytes=10-19")]),
        &plain,
        10,
        19,
        "the old connection after the reload",
    );
}

#[test]
fn curl_speaks_http2_over_tls_and_in_cleartext() {
    let site = Site::new();
    let plain = random_bytes(500_000, 15);
    let cap = site.put(&plain, &[]);
    let certificates = TestCertificates::new(site.root.path(), "curl");
    let tls_args = certificates.serve_args();
    let server = site.serve(&tls_args.iter().map(String::as_str).collect::<Vec<_>>());
    let plain_server = site.serve(&[]);
    let https = format!("https://{}{}", server.addr, uri(&cap));
    let h2c = format!("http://{}{}", plain_server.addr, uri(&cap));
    let cacert = certificates.ca_file.display().to_string();
    for (flags, url) in [
        (vec!["--http2", "--cacert", cacert.as_str()], &https),
        (vec!["--http1.1", "--cacert", cacert.as_str()], &https),
        (vec!["--http2-prior-knowledge"], &h2c),
    ] {
        let output = Command::new("curl")
            .args([
                "-s",
                "--fail",
                "-r",
                "131000-131199",
                "-w",
                "%{stderr}%{http_version}",
            ])
            .args(&flags)
            .arg(url)
            .output()
            .unwrap();
        assert!(output.status.success(), "curl {flags:?}");
        assert!(output.stdout == plain[131_000..131_200], "curl {flags:?}");
        let expected = if flags.contains(&"--http1.1") {
            "1.1"
        } else {
            "2"
        };
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            expected,
            "curl {flags:?}"
        );
    }
    // A plain-HTTP client on the HTTPS port is told what to use.
    let response = get(&server.addr, &uri(&cap), &[]);
    assert_eq!(response.status, 400);
    assert!(response.text().contains("https://"), "{}", response.text());
}

#[test]
fn curl_reads_ranges_like_any_client() {
    let site = Site::new();
    let plain = random_bytes(500_000, 12);
    let cap = site.put(&plain, &[]);
    let server = site.serve(&[]);
    let url = format!("http://{}{}", server.addr, uri(&cap));
    let output = Command::new("curl")
        .args(["-s", "--fail", "-r", "131000-131199", &url])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(output.stdout == plain[131_000..131_200]);
    let bad = Command::new("curl")
        .args(["-s", "--fail", &format!("http://{}/uri/nope", server.addr)])
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(22), "curl --fail sees the 400");
}
