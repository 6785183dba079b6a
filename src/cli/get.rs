//! `segvault get`.

use std::io::{self, IsTerminal, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use http_range_header::{RangeUnsatisfiableError, parse_range_header};
use segvault::ReaderConfig;
use segvault::core::cap::Cap;

use super::{Cli, progress_bar, read_cap_argument};

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The file's read cap (`-` reads it from stdin)
    cap: String,
    /// Bytes to get, inclusive like HTTP: START-END, START- (to the end) or -SUFFIX (the last bytes)
    #[arg(long, value_name = "START-END", allow_hyphen_values = true)]
    range: Option<String>,
    /// Write to this file instead of stdout (a regular file is replaced only once every byte is verified; a device, FIFO or socket is written to as the bytes come; `-` is stdout)
    #[arg(short = 'o', long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    cache: super::CacheArgs,
}

/// Parses `--range` with the same RFC 9110 parser the gateway uses.
fn parse_range(text: &str, len: u64) -> anyhow::Result<Range<u64>> {
    let usage = "use START-END (inclusive), START- or -SUFFIX";
    let parsed = parse_range_header(&format!("bytes={text}"))
        .map_err(|e| anyhow!("invalid --range {text:?}: {e}; {usage}"))?;
    if parsed.len() != 1 {
        return Err(anyhow!("--range takes one range; {usage}"));
    }
    match parsed.validate(len) {
        Ok(ranges) => Ok(ranges.first().map_or(0..0, |r| *r.start()..*r.end() + 1)),
        Err(RangeUnsatisfiableError::Unsatisfiable) => {
            Err(anyhow!("--range {text} is outside the file ({len} bytes)"))
        }
        Err(e) => Err(anyhow!("invalid --range {text:?}: {e}; {usage}")),
    }
}

/// Where the bytes go: stdout; a file that appears at the target only once complete; or,
/// for what is not a regular file (a device, a FIFO, a socket, an open descriptor such as
/// `/dev/stdout`), straight into it.
enum Sink {
    Stdout,
    /// Written where it stands: there is nothing to replace.
    Direct(Box<dyn Write + Send>),
    /// An unnamed file in the target's directory (`O_TMPFILE`): if the read fails or the
    /// process is killed, no partial plaintext is left behind under any name.
    #[cfg(target_os = "linux")]
    Unnamed {
        file: std::fs::File,
        dir: PathBuf,
        target: PathBuf,
    },
    /// Where unnamed files are not supported: a hidden temporary file, removed on failure.
    Named {
        temp: tempfile::NamedTempFile,
        target: PathBuf,
    },
}

/// An open descriptor named by path: our own stdout or stderr as they are (reopening one
/// that is a socket fails), any other by its path.
fn descriptor(path: PathBuf) -> Destination {
    let own = path
        .parent()
        .and_then(|dir| std::fs::canonicalize(dir).ok())
        == std::fs::canonicalize("/proc/self/fd").ok();
    match path.file_name().and_then(|n| n.to_str()) {
        Some("1") if own => Destination::Stdout,
        Some("2") if own => Destination::Stderr,
        _ => Destination::Direct {
            path,
            socket: false,
        },
    }
}

/// What `-o PATH` names, once symbolic links are followed.
enum Destination {
    /// This process's stdout (`-`, `/dev/stdout`).
    Stdout,
    /// This process's stderr (`/dev/stderr`).
    Stderr,
    /// A regular file, or nothing yet: replaced by rename once complete.
    File {
        path: PathBuf,
        existing: Option<std::fs::Metadata>,
    },
    /// Anything else that takes bytes: written to directly.
    Direct { path: PathBuf, socket: bool },
}

/// Symbolic links followed before giving up (as the kernel does).
const MAX_LINKS: usize = 40;

/// Whether `path` is an entry of a process's descriptor table (`/proc/self/fd/1`, which
/// `/dev/stdout` and `/dev/fd/1` lead to): a link to something already open, which may have
/// no path at all (`pipe:[…]`).
fn is_descriptor_link(path: &Path) -> bool {
    path.parent()
        .and_then(|dir| std::fs::canonicalize(dir).ok())
        .is_some_and(|dir| dir.starts_with("/proc") && dir.file_name().is_some_and(|n| n == "fd"))
}

/// Refuses what the kernel's `protected_symlinks`, `protected_fifos` and
/// `protected_regular` refuse, whatever those settings are: in a shared directory (sticky and
/// world-writable, like `/tmp`), an entry that belongs neither to us nor to the directory's
/// owner was put there by someone else, and following it or writing into it would hand the
/// plaintext to them (a link to a file of ours, a FIFO they read, a file they can read).
fn check_not_planted(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    }) else {
        return Ok(());
    };
    let Ok(dir_meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let shared = dir_meta.mode() & 0o1002 == 0o1002;
    #[cfg(target_os = "linux")]
    let me = rustix::process::geteuid().as_raw();
    #[cfg(not(target_os = "linux"))]
    let me = meta.uid();
    if shared && meta.uid() != me && meta.uid() != dir_meta.uid() {
        return Err(anyhow!(
            "{} belongs to another user in a shared directory ({}); refusing to follow or \
             write into it: choose another path",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// [`check_not_planted`] for every directory on the way to `path` that is a symbolic link:
/// a link planted in a shared directory must not lead the output elsewhere either.
fn check_directories_on_the_way(path: &Path) -> anyhow::Result<()> {
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            break;
        }
        if let Ok(meta) = std::fs::symlink_metadata(dir)
            && meta.file_type().is_symlink()
        {
            check_not_planted(dir, &meta)?;
        }
    }
    Ok(())
}

fn resolve(target: &Path) -> anyhow::Result<Destination> {
    let mut path = target.to_path_buf();
    for _ in 0..MAX_LINKS {
        check_directories_on_the_way(&path)?;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Destination::File {
                    path,
                    existing: None,
                });
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot write {}", path.display()))),
        };
        check_not_planted(&path, &meta)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            if is_descriptor_link(&path) {
                return Ok(descriptor(path));
            }
            let link = std::fs::read_link(&path)
                .with_context(|| format!("cannot follow the link {}", path.display()))?;
            path = match path.parent() {
                Some(dir) if link.is_relative() => dir.join(link),
                _ => link,
            };
            continue;
        }
        if kind.is_file() {
            return Ok(Destination::File {
                path,
                existing: Some(meta),
            });
        }
        if kind.is_dir() {
            return Err(anyhow!(
                "{} is a directory; -o takes a file name",
                target.display()
            ));
        }
        use std::os::unix::fs::FileTypeExt;
        return Ok(Destination::Direct {
            socket: kind.is_socket(),
            path,
        });
    }
    Err(anyhow!(
        "{}: too many levels of symbolic links",
        target.display()
    ))
}

impl Sink {
    fn create(output: Option<&Path>) -> anyhow::Result<Sink> {
        let target = match output {
            None => return Ok(Sink::Stdout),
            Some(path) if path.as_os_str() == "-" => return Ok(Sink::Stdout),
            Some(path) => path,
        };
        let (target, existing) = match resolve(target)? {
            Destination::Stdout => return Ok(Sink::Stdout),
            Destination::Stderr => return Ok(Sink::Direct(Box::new(io::stderr()))),
            Destination::Direct { path, socket: true } => {
                let stream = std::os::unix::net::UnixStream::connect(&path)
                    .with_context(|| format!("cannot write to the socket {}", path.display()))?;
                return Ok(Sink::Direct(Box::new(stream)));
            }
            Destination::Direct { path, .. } => {
                // Appending writes where a shell's `>` or `>>` left the descriptor.
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot write to {}", path.display()))?;
                return Ok(Sink::Direct(Box::new(file)));
            }
            Destination::File { path, existing } => (path, existing),
        };
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        // A new file gets 0666 less the umask, as with any tool; a replaced one keeps its
        // permissions and (where allowed) its owner.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let keep = |file: &std::fs::File| {
            if let Some(meta) = &existing {
                let _ = std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()));
                let _ = file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777));
            }
        };
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
            if let Ok(fd) = rustix::fs::open(&dir, flags, Mode::from_raw_mode(0o666)) {
                let file = std::fs::File::from(fd);
                keep(&file);
                return Ok(Sink::Unnamed { file, dir, target });
            }
        }
        let temp = tempfile::Builder::new()
            .prefix(".segvault-partial-")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|e| {
                anyhow!(
                    "cannot create a temporary file beside {}: {e}; write to a regular file in a \
                     directory you can write to, or use stdout (-o -)",
                    target.display()
                )
            })?;
        keep(temp.as_file());
        Ok(Sink::Named { temp, target })
    }

    fn writer(&mut self) -> anyhow::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::Direct(writer) => std::mem::replace(writer, Box::new(io::sink())),
            #[cfg(target_os = "linux")]
            Sink::Unnamed { file, .. } => Box::new(file.try_clone()?),
            Sink::Named { temp, .. } => Box::new(temp.reopen()?),
        })
    }

    /// Gives the complete file its name (replacing the regular file that had it).
    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout | Sink::Direct(_) => Ok(()),
            #[cfg(target_os = "linux")]
            Sink::Unnamed { file, dir, target } => {
                use std::os::fd::AsRawFd;
                file.sync_all()?;
                // Link the finished file under a fresh hidden name, then rename it over the target.
                let nonce: String = (0..8).map(|_| format!("{:02x}", rand_byte())).collect();
                let staged = dir.join(format!(".segvault-complete-{nonce}"));
                let source = format!("/proc/self/fd/{}", file.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    &source,
                    rustix::fs::CWD,
                    &staged,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .with_context(|| format!("cannot create {}", target.display()))?;
                std::fs::rename(&staged, &target)
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&staged);
                    })
                    .with_context(|| format!("cannot replace {}", target.display()))
            }
            Sink::Named { temp, target } => {
                temp.as_file().sync_all()?;
                temp.persist(&target)
                    .with_context(|| format!("cannot replace {}", target.display()))?;
                Ok(())
            }
        }
    }
}

fn rand_byte() -> u8 {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    byte[0]
}

/// Whether bytes would garble a terminal, as curl judges it: a NUL, or text that is not
/// UTF-8 (a character cut at the end of the chunk is fine).
fn looks_binary(chunk: &[u8]) -> bool {
    if chunk.contains(&0) {
        return true;
    }
    match std::str::from_utf8(chunk) {
        Ok(_) => false,
        Err(e) => e.error_len().is_some(),
    }
}

pub(crate) async fn run(cli: &Cli, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let cap = match read_cap_argument(&args.cap)? {
        Cap::Read(cap) => cap,
        Cap::Verify(_) => return Err(anyhow!(segvault::core::cap::CapError::NotReadCap)),
    };
    let len = cap.geometry().size();
    let range = match &args.range {
        Some(text) => parse_range(text, len)?,
        None => 0..len,
    };
    // A bare `get` writes to stdout: to a terminal only text, unless asked with `-o -`.
    let to_terminal = args.output.is_none() && io::stdout().is_terminal();
    // Where the bytes go is settled before they are fetched (opening a FIFO waits for its
    // reader).
    let mut sink = tokio::task::block_in_place(|| Sink::create(args.output.as_deref()))?;
    let mut writer = sink.writer()?;
    let client = args.cache.client(cli.grid()?, ReaderConfig::default())?;
    let file = client.open(&cap).await?;

    // Writing happens on its own thread so a slow disk or pipe never stalls the fetches in
    // flight; the channel is small, so memory stays at the read-ahead window.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let writer_thread = std::thread::spawn(move || -> io::Result<()> {
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk)?;
        }
        writer.flush()
    });
    // On a terminal the bar would land in the middle of the output.
    let bar = progress_bar(Some(range.end - range.start), "get").filter(|_| !to_terminal);
    let mut stream = file.stream(range);
    let mut failure = None;
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if std::mem::take(&mut first) && to_terminal && looks_binary(&chunk) {
                    failure = Some(anyhow!(
                        "binary output can mess up your terminal; use -o FILE, or -o - to write it here anyway"
                    ));
                    break;
                }
                if let Some(bar) = &bar {
                    bar.inc(chunk.len() as u64);
                }
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        }
    }
    drop(tx);
    drop(stream);
    if let Some(cache) = client.cache() {
        cache.flush().await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let written = writer_thread
        .join()
        .map_err(|_| anyhow!("the output thread panicked"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    match written {
        Ok(()) => {}
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(anyhow!(e).context("writing the output")),
    }
    sink.finish()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_http() {
        assert_eq!(parse_range("0-9", 100).unwrap(), 0..10);
        assert_eq!(parse_range("90-", 100).unwrap(), 90..100);
        assert_eq!(parse_range("-5", 100).unwrap(), 95..100);
        assert_eq!(parse_range("50-1000", 100).unwrap(), 50..100);
        assert_eq!(parse_range("-5", 0).unwrap(), 0..0);
        assert!(parse_range("100-", 100).is_err());
        assert!(parse_range("5-2", 100).is_err());
        assert!(parse_range("0-1,5-6", 100).is_err());
        assert!(parse_range("x", 100).is_err());
    }
}
