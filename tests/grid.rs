//! A real grid: ten `segvault storage-server` processes on 127.0.0.1, files stored with
//! `segvault put --server URL…`, read back through `segvault serve` and `segvault get` while
//! servers die, stall (SIGSTOP), rot (flipped bytes), lie (garbage and wrong lengths), or
//! refuse requests without the token. Every read is compared with the plaintext.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use common::grid::{K, N, Node, TestGrid};
use common::http::{self};
use common::process;
use common::random_bytes;

fn body_of(response: &http::Response, expected: &[u8]) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.body.len() == expected.len() && response.body == expected,
        "body differs"
    );
}

#[test]
fn a_full_get_survives_n_minus_k_servers_dying_midway() {
    let mut grid = TestGrid::new();
    let plaintext = random_bytes(24 << 20, 41);
    let cap = grid.put(&plaintext);
    let gateway = grid.gateway(&[]);

    let mut stream = http::send(&gateway.addr, "GET", &format!("/uri/{cap}"), &[], b"");
    let mut raw = vec![0u8; 2 << 20];
    stream.read_exact(&mut raw).unwrap();
    // Seven of ten servers die while the body is in flight, primaries among them.
    let mut doomed = grid.nodes_holding(&cap, &[0, 1, 2]);
    for i in 0..N {
        if doomed.len() < N - K && !doomed.contains(&i) {
            doomed.push(i);
        }
    }
    for &i in &doomed {
        grid.nodes[i].kill();
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    raw.extend_from_slice(&rest);
    let response = http::parse(&raw);
    assert!(response.complete(), "the transfer was cut short");
    body_of(&response, &plaintext);

    // The command line reads it too, from the three survivors.
    let out = grid.root.path().join("out");
    let output = grid
        .segvault()
        .args(["get", &cap, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == plaintext);
}

#[test]
fn a_range_arrives_while_the_primary_servers_are_stopped() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(8 << 20, 42);
    let cap = grid.put(&plaintext);
    let gateway = grid.gateway(&[]);
    let range = |offset: usize| {
        let header = format!("bytes={}-{}", offset, offset + (1 << 20) - 1);
        let started = Instant::now();
        let response = http::get(&gateway.addr, &format!("/uri/{cap}"), &[("Range", &header)]);
        let elapsed = started.elapsed();
        assert_eq!(response.status, 206, "{}", response.text());
        assert!(
            response.body == plaintext[offset..offset + (1 << 20)],
            "range differs"
        );
        elapsed
    };
    // The gateway learns the grid on a healthy read first.
    let healthy = range(1 << 20);

    let primaries = grid.nodes_holding(&cap, &[0, 1, 2]);
    assert_eq!(primaries.len(), K);
    for &i in &primaries {
        grid.nodes[i].signal("STOP");
    }
    let stalled = range(5 << 20);
    let again = range(3 << 20);
    // A gateway started now never hears from the stopped servers at all.
    let fresh_gateway = grid.gateway(&[]);
    let started = Instant::now();
    let response = http::get(
        &fresh_gateway.addr,
        &format!("/uri/{cap}"),
        &[("Range", "bytes=2097152-3145727")],
    );
    let fresh = started.elapsed();
    assert_eq!(response.status, 206, "{}", response.text());
    assert!(response.body == plaintext[2 << 20..3 << 20]);
    for &i in &primaries {
        grid.nodes[i].signal("CONT");
    }
    // Reported, not asserted: timings on a shared machine are noise.
    eprintln!(
        "1 MiB range: healthy {healthy:?}; primaries stopped: first {stalled:?}, next {again:?}, fresh gateway {fresh:?}"
    );
}

#[test]
fn flipped_bytes_and_lying_servers_never_reach_the_reader() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(3 << 20, 43);
    let cap = grid.put(&plaintext);
    // Rot on four servers: random bytes flipped all over their share files.
    let mut seed = 7u64;
    for node in &grid.nodes[..4] {
        for file in node.share_files() {
            let mut bytes = std::fs::read(&file).unwrap();
            for _ in 0..64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 17) as usize % bytes.len();
                bytes[at] ^= 1 << (seed % 8);
            }
            std::fs::write(&file, bytes).unwrap();
        }
    }
    // Two liars that claim every share: one answers garbage, one wrong lengths.
    let liars = [Liar::start(false), Liar::start(true)];
    let mut extra = Vec::new();
    for liar in &liars {
        extra.push("--server".to_owned());
        extra.push(liar.url.clone());
    }
    let gateway = grid.gateway(&extra);
    body_of(
        &http::get(&gateway.addr, &format!("/uri/{cap}"), &[]),
        &plaintext,
    );
    for (offset, len) in [
        (0usize, 1usize),
        (131_071, 2),
        (1 << 20, 300_000),
        (plaintext.len() - 1, 1),
    ] {
        let header = format!("bytes={}-{}", offset, offset + len - 1);
        let response = http::get(&gateway.addr, &format!("/uri/{cap}"), &[("Range", &header)]);
        assert_eq!(response.status, 206);
        assert!(
            response.body == plaintext[offset..offset + len],
            "range at {offset}"
        );
    }
    let out = grid.root.path().join("out");
    let output = grid
        .segvault()
        .args(&extra)
        .args(["get", &cap, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == plaintext);
    assert!(
        liars.iter().all(|l| l.requests() > 0),
        "the liars were asked (and ignored)"
    );
}

#[test]
fn too_many_dead_servers_give_503_and_a_failing_get_naming_them() {
    let mut grid = TestGrid::new();
    let plaintext = random_bytes(500_000, 44);
    let cap = grid.put(&plaintext);
    for node in &mut grid.nodes[..N - K + 1] {
        node.kill();
    }
    let gateway = grid.gateway(&[]);
    let response = http::get(&gateway.addr, &format!("/uri/{cap}"), &[]);
    assert_eq!(response.status, 503, "{}", response.text());
    let text = response.text();
    for node in &grid.nodes[..N - K + 1] {
        assert!(text.contains(&node.url), "names {}: {text}", node.url);
    }
    assert!(text.contains("refused"), "says why: {text}");

    let output = grid
        .segvault()
        .args(["get", &cap, "-o"])
        .arg(grid.root.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for node in &grid.nodes[..N - K + 1] {
        assert!(stderr.contains(&node.url), "names {}: {stderr}", node.url);
    }
    assert!(!grid.root.path().join("out").exists(), "no partial output");
}

#[test]
fn nodes_with_a_token_refuse_requests_without_it_and_store_nothing() {
    let grid = TestGrid::with_token("correct-horse-battery-staple-0123456789");
    let plaintext = random_bytes(200_000, 45);

    // Without the token: refused before anything is written.
    let input = grid.root.path().join("input");
    std::fs::write(&input, &plaintext).unwrap();
    let mut without = process::segvault();
    without
        .arg("--data")
        .arg(grid.data())
        .args(grid.server_args())
        .arg("put")
        .arg(&input);
    let output = without.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("token"),
        "says the token is the problem: {stderr}"
    );
    assert!(grid.nodes.iter().all(|n| n.share_files().is_empty()));

    // A wrong token, and raw requests without one, fare no better.
    let wrong = grid.root.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token-but-long-enough-000000\n").unwrap();
    let output = process::segvault()
        .arg("--data")
        .arg(grid.data())
        .args(grid.server_args())
        .arg("--token-file")
        .arg(&wrong)
        .arg("put")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let node = &grid.nodes[0];
    let si = "a".repeat(26);
    for (method, path) in [
        ("GET", "/v1/status".to_owned()),
        ("GET", format!("/v1/shares/{si}")),
        ("PUT", format!("/v1/shares/{si}/0")),
    ] {
        let response = http::request(node.addr(), method, &path, &[], b"share bytes");
        assert_eq!(response.status, 401, "{method} {path}");
    }
    assert!(grid.nodes.iter().all(|n| n.share_files().is_empty()));

    // With it, everything works.
    let cap = grid.put(&plaintext);
    let gateway = grid.gateway(&[]);
    body_of(
        &http::get(&gateway.addr, &format!("/uri/{cap}"), &[]),
        &plaintext,
    );
}

#[test]
fn a_node_without_a_token_listens_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let output = process::segvault()
        .arg("storage-server")
        .arg("--dir")
        .arg(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("--token-file"),
        "{stderr}"
    );
}

/// A fake storage node that claims every share and then lies: random bytes of the right
/// length, or a body whose length differs from what was asked.
struct Liar {
    url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Liar {
    fn start(wrong_lengths: bool) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for (seed, stream) in (99u64..).zip(listener.incoming().flatten()) {
                let counter = counter.clone();
                std::thread::spawn(move || Liar::serve(stream, wrong_lengths, seed, &counter));
            }
        });
        Liar { url, requests }
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn serve(
        stream: std::net::TcpStream,
        wrong_lengths: bool,
        seed: u64,
        counter: &std::sync::atomic::AtomicU64,
    ) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut discard = vec![0u8; content_length];
            let _ = reader.read_exact(&mut discard);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let target = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            let body: Vec<u8> = if target.starts_with("/v1/status") {
                br#"{"protocol":1}"#.to_vec()
            } else if let Some(ranges) = target.split("ranges=").nth(1) {
                let asked: usize = ranges
                    .split(',')
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-')?;
                        Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()?)
                    })
                    .sum();
                let len = if wrong_lengths { asked / 2 + 1 } else { asked };
                random_bytes(len, seed ^ asked as u64)
            } else {
                let all: Vec<String> = (0..N).map(|s| s.to_string()).collect();
                format!(r#"{{"shares":[{}]}}"#, all.join(",")).into_bytes()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
                return;
            }
        }
    }
}

#[test]
fn a_grid_file_names_the_servers_and_the_token() {
    let grid = TestGrid::with_token("a-grid-file-token-abcdefghijklmnop");
    let urls: Vec<String> = grid.nodes.iter().map(|n| format!("{:?}", n.url)).collect();
    let config = grid.root.path().join("grid.toml");
    // The token file is named relative to the grid file.
    std::fs::write(
        &config,
        format!("servers = [{}]\ntoken_file = \"token\"\n", urls.join(", ")),
    )
    .unwrap();
    let plaintext = random_bytes(300_000, 46);
    let input = grid.root.path().join("input");
    std::fs::write(&input, &plaintext).unwrap();
    let segvault = || {
        let mut command = process::segvault();
        command
            .arg("--data")
            .arg(grid.data())
            .arg("--grid")
            .arg(&config);
        command
    };
    let cap = process::put(segvault().arg("put").arg(&input));
    assert_eq!(
        grid.nodes
            .iter()
            .filter(|n| n.share_files().len() == 1)
            .count(),
        N
    );
    let output = segvault().args(["get", &cap]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == plaintext);

    std::fs::write(&config, "servers = \"not a list\"\n").unwrap();
    let output = segvault().args(["get", &cap]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grid.toml"), "names the file: {stderr}");
}

#[test]
fn a_node_answers_bad_requests_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("node"), None);
    let si = "a".repeat(26);
    let cases = [
        (
            "PATCH",
            format!("/v1/shares/{si}/0"),
            405,
            Some("GET, HEAD, PUT, DELETE"),
        ),
        // Only an upload's own secret takes its share back.
        ("DELETE", format!("/v1/shares/{si}/0"), 400, None),
        ("POST", "/v1/status".to_owned(), 405, Some("GET, HEAD")),
        (
            "GET",
            format!("/v1/shares/{si}/0/corrupt"),
            405,
            Some("POST"),
        ),
        ("GET", "/v1/shares/NOT-AN-INDEX".to_owned(), 400, None),
        ("GET", format!("/v1/shares/{si}/007?ranges=0-1"), 400, None),
        ("GET", format!("/v1/shares/{si}/0?ranges=5-1"), 400, None),
        ("GET", format!("/v1/shares/{si}/0?ranges=0-1"), 404, None),
        ("GET", format!("/v1/shares/{si}"), 200, None),
        ("GET", "/nowhere".to_owned(), 404, None),
    ];
    for (method, path, status, allow) in cases {
        let response = http::request(node.addr(), method, &path, &[], b"");
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        assert_eq!(response.header("allow"), allow, "{method} {path}");
    }
}

/// The storage node writes the access log the gateway writes: a line per request when its
/// body ends, with the route, storage index, share, status, bytes sent or received and the
/// outcome, and never the cap.
#[test]
fn a_storage_node_logs_each_request_when_its_body_ends_and_never_the_cap() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("node.log");
    let mut child = process::segvault()
        .args(["storage-server", "--listen", "127.0.0.1:0", "--dir"])
        .arg(root.path().join("node"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start segvault storage-server");
    let url = process::first_line(&mut child);
    let input = root.path().join("input");
    let bytes = random_bytes(300_000, 5);
    std::fs::write(&input, &bytes).unwrap();
    let data = root.path().join("data");
    let server = ["--server", url.as_str()];
    let cap = process::put(
        process::segvault()
            .arg("--data")
            .arg(&data)
            .args(server)
            .args(["put", "-k", "1", "-n", "1"])
            .arg(&input),
    );
    let out = process::ok(
        process::segvault()
            .arg("--data")
            .arg(&data)
            .args(server)
            .args(["get", &cap, "-o", "-"]),
    );
    assert!(out == bytes);
    let si = cap
        .parse::<segvault::ReadCap>()
        .unwrap()
        .storage_index()
        .to_string();
    let lines = || std::fs::read_to_string(&log).unwrap();
    process::wait_for(
        "the read's access line",
        std::time::Duration::from_secs(10),
        || {
            lines()
                .lines()
                .any(|l| l.contains("read") && l.contains("outcome"))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = lines();
    let line_of = |route: &str| {
        text.lines()
            .find(|l| l.contains("segvault::access") && l.contains(&format!("route=\"{route}\"")))
            .unwrap_or_else(|| panic!("no {route} line in the node's log:\n{text}"))
            .to_owned()
    };
    let write = line_of("write");
    assert!(
        write.contains(&si) && write.contains("share=0") && write.contains("status=201"),
        "{write}"
    );
    assert!(
        !write.contains("received=0 "),
        "the upload's size is logged: {write}"
    );
    let read = line_of("read");
    assert!(read.contains(&si) && read.contains("status=200"), "{read}");
    assert!(read.contains("outcome=\"complete\""), "{read}");
    assert!(
        !read.contains("bytes=0 "),
        "the bytes sent are logged: {read}"
    );
    assert!(
        !text.contains("sv1-read") && !text.contains(cap.split(':').nth(1).unwrap()),
        "a cap in the log:\n{text}"
    );
}
