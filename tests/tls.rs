//! Storage nodes over TLS, as processes on loopback: ten `storage-server --tls` nodes store
//! and serve exactly; a node whose key changed, or anything else answering in its place, is
//! refused by name and read around; a proxy on the path sees neither the token nor a byte
//! of a share; plain HTTP and TLS never fall back to each other silently.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::grid::{K, N, Node, TestGrid};
use common::http::{self, Server};
use common::process;
use common::random_bytes;

const TOKEN: &str = "a-token-nobody-on-the-path-may-read";

fn get_exact(grid: &TestGrid, cap: &str, plain: &[u8]) {
    let output = grid.root.path().join("output");
    process::ok(grid.segvault().arg("get").arg(cap).arg("-o").arg(&output));
    assert!(std::fs::read(&output).unwrap() == plain, "get differs");
}

/// `segvault get CAP` with only `servers`: its output, failed or not.
fn get_with(grid: &TestGrid, servers: &[String], cap: &str) -> std::process::Output {
    let mut command = process::segvault();
    command
        .arg("--data")
        .arg(grid.data())
        .arg("--token-file")
        .arg(grid.token_file.as_ref().unwrap());
    for server in servers {
        command.arg("--server").arg(server);
    }
    process::run(command.arg("get").arg(cap).arg("-o").arg("-"))
}

#[test]
fn ten_tls_nodes_store_and_serve_exactly_and_a_replaced_key_is_refused_by_name() {
    let mut grid = TestGrid::tls(Some(TOKEN));
    let segment = 128 * 1024;
    let plain = random_bytes(5 * segment + 777, 1);
    let cap = grid.put(&plain);
    get_exact(&grid, &cap, &plain);
    for (first, last) in [
        (0, 0),
        (segment - 1, segment),
        (3 * segment - 5, 4 * segment + 5),
        (plain.len() - 1, plain.len() - 1),
    ] {
        let out = process::ok(
            grid.segvault()
                .arg("get")
                .arg(&cap)
                .arg("--range")
                .arg(format!("{first}-{last}"))
                .args(["-o", "-"]),
        );
        assert!(out == plain[first..=last], "range {first}-{last}");
    }
    // The gateway over the TLS grid answers ranges byte for byte.
    let gateway: Server = grid.gateway(&[]);
    let response = http::get(
        &gateway.addr,
        &format!("/uri/{cap}"),
        &[("Range", "bytes=131071-393216")],
    );
    assert_eq!(response.status, 206);
    assert!(response.body == plain[131_071..=393_216]);
    drop(gateway);

    // Node 0 gets a new key and comes back on a new port; a client still pinning its old
    // key must refuse it.
    let holders: Vec<usize> = (0..N)
        .filter(|&i| !grid.nodes[i].share_files().is_empty())
        .collect();
    let victim = holders[0];
    let old_pin = grid.nodes[victim].pin().to_owned();
    grid.nodes[victim].kill();
    let dir = grid.nodes[victim].dir.clone();
    let rotated = process::ok(
        process::segvault()
            .arg("storage-server")
            .arg("--dir")
            .arg(&dir)
            .arg("--rotate-key"),
    );
    let rotated = String::from_utf8(rotated).unwrap();
    let new_pin = rotated
        .split_whitespace()
        .find(|w| w.starts_with("spki-sha256="))
        .unwrap_or_else(|| panic!("--rotate-key printed {rotated:?}"))
        .to_owned();
    assert_ne!(new_pin, old_pin);
    grid.nodes[victim] = Node::start_on(&dir, grid.token_file.as_deref(), true, "127.0.0.1:0");
    assert!(grid.nodes[victim].url.ends_with(&new_pin));
    let stale_url = format!("https://{}#{old_pin}", grid.nodes[victim].addr());

    // Ten servers, one of them stale: the read routes around it, and says so.
    let mut servers: Vec<String> = grid.nodes.iter().map(|n| n.url.clone()).collect();
    servers[victim] = stale_url.clone();
    let output = get_with(&grid, &servers, &cap);
    assert!(output.status.success());
    assert!(output.stdout == plain, "read around the stale node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TLS refused") && stderr.contains(&old_pin),
        "the operator is told: {stderr}"
    );

    // With too few others, the error names the node and both keys.
    let others: Vec<String> = holders[1..K]
        .iter()
        .map(|&i| grid.nodes[i].url.clone())
        .collect();
    let mut too_few = vec![stale_url];
    too_few.extend(others.iter().take(K - 1).cloned());
    let output = get_with(&grid, &too_few, &cap);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let node = format!("https://{}", grid.nodes[victim].addr());
    assert!(stderr.contains(&node), "names the node: {stderr}");
    assert!(
        stderr.contains(&old_pin) && stderr.contains(&new_pin),
        "names the pinned and the presented key: {stderr}"
    );
    assert!(
        stderr.contains("--rotate-key"),
        "says what may have happened: {stderr}"
    );
    assert!(!stderr.contains(TOKEN), "never prints the token: {stderr}");

    // With the new URL the same node serves again.
    let mut fresh = vec![grid.nodes[victim].url.clone()];
    fresh.extend(others.iter().take(K - 1).cloned());
    let output = get_with(&grid, &fresh, &cap);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == plain);
}

#[test]
fn plain_http_and_tls_never_fall_back_to_each_other() {
    let grid = TestGrid::tls(Some(TOKEN));
    let plain = random_bytes(300_000, 2);
    let cap = grid.put(&plain);
    let plain_node = Node::start(
        &grid.root.path().join("plain-node"),
        grid.token_file.as_deref(),
    );
    let holder = (0..N)
        .find(|&i| !grid.nodes[i].share_files().is_empty())
        .unwrap();

    // A plain-HTTP node behind an https:// URL.
    let pretending = format!("https://{}#{}", plain_node.addr(), grid.nodes[holder].pin());
    let output = get_with(&grid, &[pretending], &cap);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("https://{}", plain_node.addr()))
            && stderr.contains("does not speak TLS"),
        "{stderr}"
    );

    // A TLS node behind an http:// URL: it answers 400 and the client says why.
    let downgraded = format!("http://{}", grid.nodes[holder].addr());
    let output = get_with(&grid, std::slice::from_ref(&downgraded), &cap);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&downgraded) && stderr.contains("https://"),
        "{stderr}"
    );
    // And a raw plain request to the TLS port gets the same advice.
    let response = http::get(grid.nodes[holder].addr(), "/v1/version", &[]);
    assert_eq!(response.status, 400);
    assert!(response.text().contains("https://"), "{}", response.text());

    // An https:// URL without a pin is refused before any connection.
    let output = get_with(
        &grid,
        &[format!("https://{}", grid.nodes[holder].addr())],
        &cap,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("spki-sha256="),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP proxy that forwards to `target` and records every byte both ways, and what the
/// client sent on each connection (its TLS ClientHello and records).
struct RecordingProxy {
    addr: String,
    capture: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<Vec<ProxiedConnection>>>,
}

struct ProxiedConnection {
    client: TcpStream,
    hello: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(target: String) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let capture = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (recorded, accepted) = (capture.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let hello = Arc::new(Mutex::new(Vec::new()));
                accepted.lock().unwrap().push(ProxiedConnection {
                    client: client.try_clone().unwrap(),
                    hello: hello.clone(),
                });
                for (from, to, first) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Some(hello),
                    ),
                    (server, client, None),
                ] {
                    let recorded = recorded.clone();
                    std::thread::spawn(move || forward(from, to, &recorded, first.as_deref()));
                }
            }
        });
        RecordingProxy {
            addr,
            capture,
            connections,
        }
    }

    fn captured(&self) -> Vec<u8> {
        self.capture.lock().unwrap().clone()
    }

    /// What the client sent on each connection so far (up to 1 MiB each), oldest first.
    fn client_streams(&self) -> Vec<Vec<u8>> {
        let connections = self.connections.lock().unwrap();
        connections
            .iter()
            .map(|c| c.hello.lock().unwrap().clone())
            .collect()
    }

    /// Closes every connection so far, as a network dropping them would.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().iter() {
            let _ = connection.client.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to`, recording everything in `recorded` and the first MiB in `first`.
fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    recorded: &Mutex<Vec<u8>>,
    first: Option<&Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                if let Some(first) = first {
                    let mut first = first.lock().unwrap();
                    let room = (1usize << 20).saturating_sub(first.len());
                    first.extend_from_slice(&buf[..n.min(room)]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// How many encrypted records (TLS 1.3 application data) a client sent on a connection:
/// its Finished and then one per request.
fn encrypted_records(stream: &[u8]) -> usize {
    let mut at = 0;
    let mut count = 0;
    while at + 5 <= stream.len() {
        count += usize::from(stream[at] == 23);
        at += 5 + usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]]));
    }
    count
}

/// Whether `bytes` start with a TLS ClientHello offering to resume a session (a
/// `pre_shared_key` extension, RFC 8446 §4.2.11); `None` if they are not a whole
/// ClientHello.
fn offers_resumption(bytes: &[u8]) -> Option<bool> {
    const PRE_SHARED_KEY: u16 = 41;
    let u16_at = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *bytes.get(at)?,
            *bytes.get(at + 1)?,
        ])))
    };
    // Record header (type 22 = handshake), then handshake header (type 1 = ClientHello).
    if bytes.first() != Some(&22) || bytes.get(5) != Some(&1) {
        return None;
    }
    let end = 5 + u16_at(3)?;
    if bytes.len() < end {
        return None;
    }
    // Version (2) and random (32), then session id, cipher suites and compression methods.
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + usize::from(*bytes.get(at)?);
    at += 2 + u16_at(at)?;
    at += 1 + usize::from(*bytes.get(at)?);
    let extensions_end = at + 2 + u16_at(at)?;
    at += 2;
    while at + 4 <= extensions_end.min(end) {
        if u16_at(at)? == usize::from(PRE_SHARED_KEY) {
            return Some(true);
        }
        at += 4 + u16_at(at + 2)?;
    }
    Some(false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Stores and reads a file through a recording proxy in front of every node; what the
/// proxies saw, the share files' bytes, and the plaintext.
fn through_proxies(tls: bool) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let grid = if tls {
        TestGrid::tls(Some(TOKEN))
    } else {
        TestGrid::with_token(TOKEN)
    };
    let proxies: Vec<RecordingProxy> = grid
        .nodes
        .iter()
        .map(|n| RecordingProxy::start(n.addr().to_owned()))
        .collect();
    let servers: Vec<String> = grid
        .nodes
        .iter()
        .zip(&proxies)
        .map(|(node, proxy)| match node.url.split_once('#') {
            Some((_, pin)) => format!("https://{}#{pin}", proxy.addr),
            None => format!("http://{}", proxy.addr),
        })
        .collect();
    let plain = random_bytes(400_000, 3);
    let input = grid.root.path().join("input");
    std::fs::write(&input, &plain).unwrap();
    let mut put = process::segvault();
    put.arg("--data")
        .arg(grid.data())
        .arg("--token-file")
        .arg(grid.token_file.as_ref().unwrap());
    for server in &servers {
        put.arg("--server").arg(server);
    }
    let cap = process::put(put.arg("put").arg(&input));
    let output = get_with(&grid, &servers, &cap);
    assert!(output.status.success());
    assert!(output.stdout == plain);

    let captured: Vec<u8> = proxies.iter().flat_map(|p| p.captured()).collect();
    let shares = grid
        .nodes
        .iter()
        .flat_map(|n| n.share_files())
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    (captured, shares, plain)
}

/// Whether any of 64-byte samples from the middle of each share appears in `captured`.
fn share_bytes_seen(captured: &[u8], shares: &[Vec<u8>]) -> bool {
    shares.iter().any(|share| {
        let middle = share.len() / 2;
        [middle, middle + 4096, share.len() - 200]
            .iter()
            .any(|&at| contains(captured, &share[at..at + 64]))
    })
}

#[test]
fn a_proxy_on_the_path_sees_no_token_and_no_share_bytes() {
    let (captured, shares, plain) = through_proxies(true);
    assert!(
        captured.len() > plain.len() * N / K,
        "every share went through the proxies ({} bytes)",
        captured.len()
    );
    assert!(
        !contains(&captured, TOKEN.as_bytes()),
        "the token is on the wire"
    );
    assert!(
        !share_bytes_seen(&captured, &shares),
        "share bytes on the wire"
    );
    assert!(!contains(&captured, b"/v1/"), "request paths on the wire");

    // The same check sees everything when the nodes speak plain HTTP (on loopback only).
    let (captured, shares, _) = through_proxies(false);
    assert!(contains(&captured, TOKEN.as_bytes()));
    assert!(share_bytes_seen(&captured, &shares));
}

/// A gateway over TLS nodes keeps its connections across requests, and when the network
/// drops them, its new connections resume their TLS sessions (no full handshake).
#[test]
fn a_gateway_keeps_its_node_connections_and_resumes_tls_sessions() {
    let grid = TestGrid::tls(Some(TOKEN));
    let plain = random_bytes(3_000_000, 11);
    let cap = grid.put(&plain);
    let proxies: Vec<RecordingProxy> = grid
        .nodes
        .iter()
        .map(|n| RecordingProxy::start(n.addr().to_owned()))
        .collect();
    let mut args = vec![
        "--token-file".to_owned(),
        grid.token_file.as_ref().unwrap().display().to_string(),
    ];
    for (node, proxy) in grid.nodes.iter().zip(&proxies) {
        args.push("--server".into());
        args.push(format!("https://{}#{}", proxy.addr, node.pin()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&grid.data(), &args);
    let read_ranges = |count: usize, seed: usize| {
        for i in 0..count {
            let start = (seed + i * 104_729) % (plain.len() - 65_536);
            let range = format!("bytes={start}-{}", start + 65_535);
            let response = http::get(&server.addr, &format!("/uri/{cap}"), &[("Range", &range)]);
            assert_eq!(response.status, 206, "{}", response.text());
            assert!(
                response.body == plain[start..start + 65_536],
                "range {range} differs"
            );
        }
    };
    read_ranges(40, 0);
    // Without reuse every request would have a connection of its own (one encrypted record
    // for the client's Finished, one for the request). Hedged requests cancelled mid-response
    // close theirs, so some connections carry one request: 27-50 connections carried 120+
    // requests in a debug build.
    let streams: Vec<Vec<u8>> = proxies.iter().flat_map(|p| p.client_streams()).collect();
    let requests: usize = streams
        .iter()
        .map(|s| encrypted_records(s).saturating_sub(1))
        .sum();
    assert!(
        requests >= 40 * K && requests * 2 >= streams.len() * 3,
        "{} TLS connections carried {requests} requests for 40 ranges",
        streams.len()
    );

    let before: Vec<usize> = proxies.iter().map(|p| p.client_streams().len()).collect();
    for proxy in &proxies {
        proxy.cut();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    read_ranges(10, 7);
    let mut resumed = 0;
    for (proxy, &before) in proxies.iter().zip(&before) {
        for hello in &proxy.client_streams()[before..] {
            let offered = offers_resumption(hello);
            assert!(offered.is_some(), "not a whole ClientHello: {hello:?}");
            // A node first reached after the cut has no session to resume.
            if before > 0 {
                assert_eq!(
                    offered,
                    Some(true),
                    "a new connection to {} did not resume its TLS session",
                    proxy.addr
                );
                resumed += 1;
            }
        }
    }
    assert!(
        resumed >= K,
        "only {resumed} connections were made again after the cut"
    );
}
