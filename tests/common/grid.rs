//! A real grid for tests: ten `segvault storage-server` processes on 127.0.0.1 and the
//! commands to put files on them and serve them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::http::{self, Server};
use super::process;
use segvault::core::cap::ReadCap;

pub const K: usize = 3;
pub const N: usize = 10;

/// One `segvault storage-server` process, killed on drop.
pub struct Node {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Node {
    pub fn start(dir: &Path, token_file: Option<&Path>) -> Node {
        Node::start_on(dir, token_file, false, "127.0.0.1:0")
    }

    /// A node listening on `listen`, over TLS if `tls` (its URL then pins its key).
    pub fn start_on(dir: &Path, token_file: Option<&Path>, tls: bool, listen: &str) -> Node {
        let mut command = process::segvault();
        if let Some(token) = token_file {
            command.arg("--token-file").arg(token);
        }
        if tls {
            command.arg("storage-server").arg("--tls");
        } else {
            command.arg("storage-server");
        }
        let mut child = command
            .arg("--dir")
            .arg(dir)
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start segvault storage-server");
        let url = process::first_line(&mut child);
        let expected = if tls {
            "https://127.0.0.1:"
        } else {
            "http://127.0.0.1:"
        };
        assert!(url.starts_with(expected), "printed {url:?}");
        if tls {
            assert!(url.contains("#spki-sha256="), "printed {url:?}");
        }
        Node {
            child,
            url,
            dir: dir.to_owned(),
        }
    }

    /// host:port, without the scheme or the key pin.
    pub fn addr(&self) -> &str {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .unwrap();
        rest.split('#').next().unwrap()
    }

    /// The key pin of a TLS node's URL (`spki-sha256=…`).
    pub fn pin(&self) -> &str {
        self.url.split_once('#').expect("a pinned URL").1
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        process::signal(self.child.id(), signal);
    }

    /// The share numbers this node holds of `cap`, from its listing endpoint.
    pub fn shares(&self, cap: &ReadCap) -> Vec<u8> {
        let path = format!("/v1/shares/{}", cap.storage_index());
        let response = http::get(self.addr(), &path, &[]);
        assert_eq!(response.status, 200, "{}", response.text());
        let list: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        list["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as u8)
            .collect()
    }

    /// Every share file under the node's directory.
    pub fn share_files(&self) -> Vec<PathBuf> {
        super::files_under(&self.dir.join("shares"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A stopped process must be continued before it can die cleanly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

/// Ten nodes and a scratch directory.
pub struct TestGrid {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub token_file: Option<PathBuf>,
}

impl TestGrid {
    pub fn new() -> TestGrid {
        TestGrid::build(None)
    }

    pub fn with_token(token: &str) -> TestGrid {
        TestGrid::build(Some(token))
    }

    /// Ten nodes speaking TLS, their URLs pinning their keys.
    pub fn tls(token: Option<&str>) -> TestGrid {
        TestGrid::build_with(token, true)
    }

    pub fn build(token: Option<&str>) -> TestGrid {
        TestGrid::build_with(token, false)
    }

    fn build_with(token: Option<&str>, tls: bool) -> TestGrid {
        let root = tempfile::tempdir().unwrap();
        let token_file = token.map(|token| {
            let path = root.path().join("token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            path
        });
        let nodes = (0..N)
            .map(|i| {
                let dir = root.path().join(format!("node{i}"));
                Node::start_on(&dir, token_file.as_deref(), tls, "127.0.0.1:0")
            })
            .collect();
        TestGrid {
            root,
            nodes,
            token_file,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("client")
    }

    pub fn server_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for node in &self.nodes {
            args.push("--server".to_owned());
            args.push(node.url.clone());
        }
        args
    }

    /// `segvault` with the grid's `--server`s (and token, if any).
    pub fn segvault(&self) -> Command {
        let mut command = process::segvault();
        command
            .arg("--data")
            .arg(self.data())
            .args(self.server_args());
        if let Some(token) = &self.token_file {
            command.arg("--token-file").arg(token);
        }
        command
    }

    pub fn put(&self, bytes: &[u8]) -> String {
        let input = self.root.path().join("input");
        std::fs::write(&input, bytes).unwrap();
        process::put(self.segvault().arg("put").arg(&input))
    }

    pub fn gateway(&self, extra: &[String]) -> Server {
        let mut args: Vec<String> = self.server_args();
        if let Some(token) = &self.token_file {
            args.push("--token-file".into());
            args.push(token.display().to_string());
        }
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&self.data(), &args)
    }

    /// Indexes of the nodes holding `shares` of `cap`.
    pub fn nodes_holding(&self, cap: &str, shares: &[u8]) -> Vec<usize> {
        let cap: ReadCap = cap.parse().unwrap();
        let held: Vec<Vec<u8>> = self.nodes.iter().map(|n| n.shares(&cap)).collect();
        (0..self.nodes.len())
            .filter(|&i| held[i].iter().any(|s| shares.contains(s)))
            .collect()
    }
}
