//! Real S3 servers for tests, on loopback: `s3s-fs` (one small process over a directory) and
//! a three-node Garage cluster. `.ci/run` installs both (`cargo install`) and sets
//! `SEGVAULT_S3_TESTS=1`, which turns a missing server into a failure; without it, a test
//! whose server is missing says which and how to install it, and passes vacuously.
//!
//! Clients get every setting from a grid file or explicit [`S3Options`], never from the
//! caller's `AWS_*` variables ([`super::process::segvault`] clears them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use segvault::store::S3Options;

use super::process;

/// The access key every test server accepts (Garage's format: `GK` + 24 hex digits).
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
/// Its secret (64 hex digits); tests check it never shows in output.
pub const SECRET_KEY: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7a1b2";

/// The server binary, or `None` (said on stderr) when it is missing and not required.
fn require(binary: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .chain(std::env::home_dir().map(|h| h.join(".cargo/bin")))
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    });
    let required = std::env::var_os("SEGVAULT_S3_TESTS").is_some_and(|v| v == "1");
    match found {
        Some(path) => Some(path),
        None if required => panic!("{binary} is not installed but SEGVAULT_S3_TESTS=1: {install}"),
        None => {
            eprintln!("skipped: {binary} is not installed ({install}; .ci/run does this)");
            None
        }
    }
}

/// A free port below the ephemeral range (32768+), where an outgoing connection cannot
/// take it between our check and the server's bind; never the same one twice in a test
/// process (tests start servers in parallel, and two given one port would meet each other).
pub fn low_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let mut seed = [0u8; 2];
        getrandom::fill(&mut seed).unwrap();
        let port = 20_000 + u16::from_le_bytes(seed) % 12_000;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    process::wait_for(what, Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Writes an AWS credentials file for the test key.
fn credentials_file(dir: &Path) -> PathBuf {
    let path = dir.join("aws-credentials");
    std::fs::write(
        &path,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    path
}

/// One S3 endpoint and the buckets on it.
pub trait Endpoint {
    fn endpoint(&self) -> String;
    fn region(&self) -> &str;
    fn credentials(&self) -> &Path;

    /// Options reaching this endpoint without any environment.
    fn options(&self) -> S3Options {
        let mut options = S3Options::default();
        options.endpoint = Some(self.endpoint());
        options.region = Some(self.region().into());
        options.credentials_file = Some(self.credentials().to_owned());
        options.path_style = Some(true);
        options.allow_http = Some(true);
        options
    }

    /// A grid-file line for bucket `url` on this endpoint.
    fn grid_entry(&self, url: &str) -> String {
        grid_entry(url, &self.endpoint(), self.region(), self.credentials())
    }

    /// The standard AWS variables for this endpoint (for commands given `--server s3://…`).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", self.region().into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

/// A grid-file server table for bucket `url` at `endpoint`.
pub fn grid_entry(url: &str, endpoint: &str, region: &str, credentials: &Path) -> String {
    format!(
        "{{ url = {url:?}, endpoint = {endpoint:?}, region = {region:?}, credentials_file = {credentials:?}, path_style = true, allow_http = true }}"
    )
}

/// `s3s-fs` serving a directory; killed on drop.
pub struct S3sFs {
    pub child: Child,
    pub port: u16,
    pub root: PathBuf,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3sFs {
    /// `None` when s3s-fs is not installed (and not required).
    pub fn start(buckets: &[&str]) -> Option<S3sFs> {
        let binary = require(
            "s3s-fs",
            "cargo install s3s-fs --version 0.14.1 --features binary --locked",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for bucket in buckets {
            std::fs::create_dir_all(root.join(bucket)).unwrap();
        }
        let port = low_port();
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        wait_listening(port, &mut child, "s3s-fs");
        Some(S3sFs {
            child,
            port,
            root,
            credentials: credentials_file(dir.path()),
            _dir: dir,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Multipart uploads begun and neither completed nor aborted (s3s-fs keeps one
    /// `.upload-<id>.json` per upload at its root, and its parts beside it).
    pub fn pending_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }
}

impl Endpoint for S3sFs {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn region(&self) -> &str {
        "us-east-1"
    }
    fn credentials(&self) -> &Path {
        &self.credentials
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One Garage node.
pub struct GarageNode {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub api_port: u16,
}

/// A three-node Garage cluster on loopback, replication factor 3 (every object on every
/// node: one node down, reads and writes go on; two down, Garage loses its quorum). Killed
/// on drop.
pub struct Garage {
    pub nodes: Vec<GarageNode>,
    binary: PathBuf,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// `None` when Garage is not installed (and not required).
    pub fn start(buckets: &[&str]) -> Option<Garage> {
        let binary = require("garage", "cargo install garage --version 2.5.0 --locked")?;
        let dir = tempfile::tempdir().unwrap();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let secret_file = dir.path().join("rpc_secret");
        std::fs::write(&secret_file, &secret).unwrap();
        std::fs::set_permissions(
            &secret_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (rpc, api) = (low_port(), low_port());
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let config = node_dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret_file = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{api}"
root_domain = ".s3.garage.localhost"
"#,
                    dir = node_dir.display(),
                    secret = secret_file.display(),
                ),
            )
            .unwrap();
            nodes.push(GarageNode {
                child: None,
                config,
                api_port: api,
            });
        }
        let mut garage = Garage {
            nodes,
            binary,
            credentials: credentials_file(dir.path()),
            _dir: dir,
        };
        for i in 0..3 {
            garage.start_node(i);
        }
        let ids: Vec<String> = (0..3)
            .map(|i| garage.cli_on(i, &["node", "id", "-q"]).trim().to_owned())
            .collect();
        for id in &ids[1..] {
            garage.cli(&["node", "connect", id]);
        }
        for id in &ids {
            let short = &id[..16];
            garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "segvault-test",
            ACCESS_KEY,
            SECRET_KEY,
        ]);
        for bucket in buckets {
            garage.cli(&["bucket", "create", bucket]);
            garage.cli(&[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                bucket,
                "--key",
                "segvault-test",
            ]);
        }
        Some(garage)
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start garage");
        wait_listening(node.api_port, &mut child, "garage");
        node.child = Some(child);
    }

    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn run_cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage")
    }

    /// Runs `garage` against node `i`, retrying while the cluster settles; its stdout.
    pub fn cli_on(&self, i: usize, args: &[&str]) -> String {
        let mut last = None;
        for _ in 0..50 {
            let output = self.run_cli(i, args);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            last = Some(output);
            std::thread::sleep(Duration::from_millis(200));
        }
        let output = last.unwrap();
        panic!(
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_on(0, args)
    }
}

impl Garage {
    /// A grid-file entry for `bucket`, reached through node `i`'s S3 API.
    pub fn grid_entry_via(&self, i: usize, url: &str) -> String {
        grid_entry(
            url,
            &format!("http://127.0.0.1:{}", self.nodes[i].api_port),
            "garage",
            &self.credentials,
        )
    }
}

impl Endpoint for Garage {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].api_port)
    }
    fn region(&self) -> &str {
        "garage"
    }
    fn credentials(&self) -> &Path {
        &self.credentials
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}
