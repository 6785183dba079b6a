//! A real browser against a real gateway: headless Chromium opens the page at `/` for a stored
//! MP4, seeks the `<video>` to 5 s, and must see it play from there. Driven through
//! chromedriver's WebDriver HTTP API.
//!
//! Needs `chromium`, `chromium-driver` and `ffmpeg` (Debian packages; `.ci/run` installs
//! them and sets `SEGVAULT_BROWSER_TESTS=1`, which turns a missing tool into a failure).
//! Without them and without that variable the test says so and passes vacuously.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{self, Server};
use common::process;
use common::tls::TestCertificates;
use serde_json::{Value, json};

fn have(tool: &str) -> bool {
    let flag = if tool == "ffmpeg" {
        "-version"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Driver {
    /// Starts chromedriver and a headless Chromium with `extra` command-line arguments.
    fn start(extra: &[String]) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        process::wait_for("chromedriver to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let profile = tempfile::tempdir().unwrap().keep();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend_from_slice(extra);
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
            }
        }}});
        let reply = post(&addr, "/session", &capabilities);
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_owned();
        let mut driver = Driver {
            child,
            addr,
            session,
        };
        driver.command("timeouts", &json!({ "script": 40_000, "pageLoad": 30_000 }));
        driver
    }

    fn command(&mut self, what: &str, body: &Value) -> Value {
        post(
            &self.addr,
            &format!("/session/{}/{what}", self.session),
            body,
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http::request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            b"",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(addr: &str, path: &str, body: &Value) -> Value {
    let response = http::request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    serde_json::from_slice(&response.body).unwrap_or_else(|_| panic!("{path}: {}", response.text()))
}

/// Waits for the page to create the player, seeks to 5 s, plays, and reports where it got.
const SEEK_AND_PLAY: &str = r#"
const done = arguments[arguments.length - 1];
const deadline = Date.now() + 30000;
const report = (extra) => {
  const v = document.getElementById('media');
  done(Object.assign({
    status: document.getElementById('open-status').textContent,
    readyState: v ? v.readyState : -1,
    currentTime: v ? v.currentTime : -1,
    error: v && v.error ? v.error.code : null,
  }, extra));
};
const start = () => {
  const v = document.getElementById('media');
  if (!v || v.readyState < 1) {
    return Date.now() > deadline ? report({ stage: 'metadata' }) : setTimeout(start, 100);
  }
  v.muted = true;
  v.addEventListener('seeked', () => v.play().catch((e) => report({ stage: 'play', message: String(e) })), { once: true });
  v.currentTime = 5;
  const check = () => {
    if (v.currentTime > 5.5 && !v.paused) return report({ stage: 'playing', duration: v.duration });
    return Date.now() > deadline ? report({ stage: 'stuck' }) : setTimeout(check, 100);
  };
  check();
};
start();
"#;

/// In Chromium's media document (a video opened directly): once metadata is in, seeks to
/// 5 s and plays (the first time `arguments[0]` is true); reports where it is.
const MEDIA_DOCUMENT_STATE: &str = r#"
const v = document.querySelector('video');
if (!v) return { readyState: -1, html: document.documentElement.outerHTML.slice(0, 200) };
if (arguments[0] && !v.dataset.started) {
  v.dataset.started = '1';
  v.muted = true;
  v.currentTime = 5;
  v.play();
}
return { readyState: v.readyState, currentTime: v.currentTime, paused: v.paused, error: v.error ? v.error.code : null };
"#;

/// Whether the browser tools are here; a missing one fails the test when
/// `SEGVAULT_BROWSER_TESTS=1`, and otherwise skips it.
fn browser_tools_present() -> bool {
    let required = std::env::var_os("SEGVAULT_BROWSER_TESTS").is_some_and(|v| v == "1");
    let tools = ["chromium", "chromedriver", "ffmpeg"];
    if let Some(missing) = tools.iter().find(|t| !have(t)) {
        assert!(
            !required,
            "{missing} is not installed but SEGVAULT_BROWSER_TESTS=1"
        );
        eprintln!(
            "skipped: {missing} is not installed (set SEGVAULT_BROWSER_TESTS=1 to require it)"
        );
        return false;
    }
    true
}

/// A 20 s MP4 in `dir`: noisy frames keep the bitrate (and the number of segments) up; no
/// faststart, so the index is at the end and the browser must ask for ranges before it can
/// play.
fn make_video(dir: &Path) -> PathBuf {
    let video = dir.join("clip.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=duration=20:size=640x360:rate=30,noise=alls=30:allf=t")
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
        ])
        .arg(&video)
        .status()
        .unwrap();
    assert!(made.success(), "ffmpeg failed");
    video
}

/// Opens the gateway's page at `origin` for `cap`, seeks the player to 5 s and asserts it
/// plays from there.
fn page_seeks_and_plays(driver: &mut Driver, origin: &str, cap: &str) {
    let url = format!("{origin}/#cap={cap}&name=clip.mp4");
    driver.command("url", &json!({ "url": url }));
    let outcome = driver.command(
        "execute/async",
        &json!({ "script": SEEK_AND_PLAY, "args": [] }),
    );
    let value = &outcome["value"];
    assert_eq!(
        value["stage"], "playing",
        "the video did not play from 5 s at {origin}: {outcome}"
    );
    assert!(value["currentTime"].as_f64().unwrap() >= 5.5, "{outcome}");
    assert!(
        (value["duration"].as_f64().unwrap() - 20.0).abs() < 0.5,
        "{outcome}"
    );
}

#[test]
fn chromium_seeks_a_stored_mp4_and_plays_from_there() {
    if !browser_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path());
    let size = std::fs::metadata(&video).unwrap().len();
    let data = dir.path().join("data");
    let cap = put(&data, &video);

    let log = dir.path().join("gateway.log");
    let server = Server::start_logging(&data, &[], Some(&log));
    let mut driver = Driver::start(&[]);
    page_seeks_and_plays(&mut driver, &format!("http://{}", server.addr), &cap);

    // Opened directly, a stored file is a sandboxed document under the `/uri` policy
    // (`sandbox; default-src 'none'` with `media-src 'self'`): Chromium's own player still
    // loads and plays the video from 5 s...
    let direct = format!("http://{}/uri/{cap}/clip.mp4", server.addr);
    driver.command("url", &json!({ "url": direct }));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut state = Value::Null;
    let mut started = false;
    while Instant::now() < deadline {
        state = driver.command(
            "execute/sync",
            &json!({ "script": MEDIA_DOCUMENT_STATE, "args": [started] }),
        )["value"]
            .clone();
        started |= state["readyState"].as_u64().unwrap_or(0) >= 1;
        if state["currentTime"].as_f64().unwrap_or(0.0) > 5.5 && state["paused"] == false {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        state["currentTime"].as_f64().unwrap_or(0.0) > 5.5,
        "the media document did not play under the sandbox policy: {state}"
    );
    // ...and a stored page runs no script of its own.
    let page = b"<!doctype html><title>stored page</title><script>document.title='ran'</script>";
    let stored = http::request(&server.addr, "PUT", "/uri", &[], page);
    assert_eq!(stored.status, 201);
    let page_cap = stored.text().trim().to_owned();
    let url = format!("http://{}/uri/{page_cap}/page.html", server.addr);
    driver.command("url", &json!({ "url": url }));
    let seen = driver.command(
        "execute/sync",
        &json!({ "script": "return [document.title, window.origin]", "args": [] }),
    );
    assert_eq!(seen["value"][0], "stored page", "{seen}");
    // The sandbox, not only the missing script source, is what isolates it: its origin is
    // opaque, so it could not reach the gateway's pages or storage even with script.
    assert_eq!(seen["value"][1], "null", "{seen}");

    // Closing the browser ends its open-ended media requests; stopping the gateway gracefully
    // lets every request's access line be written.
    drop(driver);
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    server.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    let partial = logged.lines().filter(|l| l.contains("status=206")).count();
    assert!(
        partial >= 2,
        "the browser seeked with range requests ({partial} 206s for a {size}-byte file):\n{logged}"
    );
}

fn put(data: &Path, file: &Path) -> String {
    process::put(
        process::segvault()
            .arg("--data")
            .arg(data)
            .args(["put", "--segment-size", "64KiB"])
            .arg(file),
    )
}

/// The same page over HTTPS: Chromium negotiates HTTP/2 by ALPN with the gateway's
/// certificate (trusted by its key pin, as a user would trust their own certificate), seeks
/// with range requests over h2 streams and plays.
#[test]
fn chromium_plays_a_stored_mp4_over_https_with_http2() {
    if !browser_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path());
    let data = dir.path().join("data");
    let cap = put(&data, &video);
    let certificates = TestCertificates::new(dir.path(), "gateway");
    let args = certificates.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.path().join("gateway.log");
    let server = Server::start_logging(&data, &args, Some(&log));

    let mut driver = Driver::start(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        certificates.spki_sha256_base64
    )]);
    page_seeks_and_plays(
        &mut driver,
        &format!("https://localhost:{}", port_of(&server.addr)),
        &cap,
    );
    let protocol = driver.command(
        "execute/sync",
        &json!({
            "script": "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            "args": []
        }),
    );
    assert_eq!(protocol["value"], "h2", "{protocol}");

    drop(driver);
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    server.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    let h2_partial = logged
        .lines()
        .filter(|l| l.contains("status=206") && l.contains("version=HTTP/2.0"))
        .count();
    assert!(
        h2_partial >= 2,
        "the browser seeked with range requests over HTTP/2 ({h2_partial} h2 206s):\n{logged}"
    );
    assert!(
        !logged.contains("version=HTTP/1.1"),
        "a request fell back to HTTP/1.1:\n{logged}"
    );
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}
