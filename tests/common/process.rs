//! Running the `segvault` binary as a process: a command with a clean environment, running it
//! to success, the cap `put` prints, the URL a server prints, and polling for a condition.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The variables through which the caller's shell could change what `segvault` does.
const INHERITED: [&str; 6] = [
    "SEGVAULT_DATA",
    "SEGVAULT_TOKEN_FILE",
    "SEGVAULT_GRID",
    "SEGVAULT_CACHE_DIR",
    "SEGVAULT_ALLOW_CORE_DUMPS",
    "RUST_LOG",
];

/// `segvault`, without any of the caller's `SEGVAULT_*`, `AWS_*` or `RUST_LOG` variables (a
/// test sets what it means to; these machines export `AWS_CA_BUNDLE`).
pub fn segvault() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_segvault"));
    for name in INHERITED {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command` with stdin closed and its output captured; it must not have panicked.
pub fn run(command: &mut Command) -> Output {
    let output = command.stdin(Stdio::null()).output().expect("run segvault");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "segvault panicked: {stderr}");
    output
}

/// Runs `command`, which must succeed; its stdout.
pub fn ok(command: &mut Command) -> Vec<u8> {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The last line of `stdout`: where `segvault put` prints the cap.
pub fn last_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .expect("a line on stdout")
        .to_owned()
}

/// Runs a `segvault … put …` command, which must succeed; the cap it printed.
pub fn put(command: &mut Command) -> String {
    last_line(&ok(command))
}

/// The first line `child` printed on stdout, trimmed: a server's URL. Takes its stdout.
pub fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the first line");
    line.trim().to_owned()
}

/// Polls `done` every 20 ms until it holds; fails naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends signal `name` (`TERM`, `STOP`, …) to process `pid`, which must exist.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}
