//! A data directory and the `segvault` binary run against it as a process, with the
//! embedded grid (ten share directories in the data directory) unless told otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::files_under;
use super::process::{self, last_line};

/// A data directory and the binary.
pub struct Segvault {
    pub root: tempfile::TempDir,
}

impl Segvault {
    pub fn new() -> Segvault {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        Segvault { root }
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn command(&self) -> Command {
        let mut command = process::segvault();
        command
            .arg("--data")
            .arg(self.data())
            // Anything the program writes to a temp dir lands where the scan can see it.
            .env("TMPDIR", self.root.path().join("tmp"));
        command
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn segvault");
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let bytes = bytes.to_vec();
            std::thread::spawn(move || pipe.write_all(&bytes));
        }
        let output = child.wait_with_output().expect("wait for segvault");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "segvault panicked: {stderr}");
        output
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let output = self.run(args, stdin);
        assert!(
            output.status.success(),
            "segvault {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    pub fn put_file(&self, path: &Path, extra: &[&str]) -> String {
        let mut args = vec!["put"];
        args.extend_from_slice(extra);
        let path = path.to_str().unwrap();
        args.push(path);
        last_line(&self.ok(&args, None))
    }

    pub fn put_bytes(&self, bytes: &[u8], extra: &[&str]) -> String {
        let path = self.root.path().join("input");
        std::fs::write(&path, bytes).unwrap();
        let cap = self.put_file(&path, extra);
        std::fs::remove_file(path).unwrap();
        cap
    }

    pub fn get(&self, cap: &str, range: Option<&str>) -> Output {
        match range {
            Some(range) => self.run(&["get", cap, "--range", range], None),
            None => self.run(&["get", cap], None),
        }
    }

    /// The share files of `cap`'s file.
    pub fn share_files(&self, cap: &str) -> Vec<PathBuf> {
        let info = String::from_utf8(self.ok(&["info", cap], None)).unwrap();
        let si = info
            .lines()
            .find_map(|l| l.strip_prefix("storage index:"))
            .unwrap()
            .trim()
            .to_owned();
        self.dirs_holding(cap)
            .iter()
            .flat_map(|d| files_under(&d.join("shares").join(&si[..2]).join(&si)))
            .collect()
    }

    /// Server directories holding shares of `cap`'s file.
    pub fn dirs_holding(&self, cap: &str) -> Vec<PathBuf> {
        let info = String::from_utf8(self.ok(&["info", cap], None)).unwrap();
        let mut dirs: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| {
                l.strip_prefix("  share ")
                    .and_then(|l| l.split_once(": "))
                    .map(|(_, d)| PathBuf::from(d))
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}
