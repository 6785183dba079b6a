//! `segvault get`.

use std::io::{self, Write};
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
    /// Write to this file instead of stdout (replaced only once every byte is verified)
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

/// Where the bytes go: stdout, or a file that appears at the target only once complete.
enum Sink {
    Stdout,
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

impl Sink {
    fn create(output: Option<&Path>) -> anyhow::Result<Sink> {
        let Some(target) = output else {
            return Ok(Sink::Stdout);
        };
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
            if let Ok(fd) = rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
                return Ok(Sink::Unnamed {
                    file: std::fs::File::from(fd),
                    dir: dir.to_owned(),
                    target: target.to_owned(),
                });
            }
        }
        let temp = tempfile::Builder::new()
            .prefix(".segvault-partial-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        Ok(Sink::Named {
            temp,
            target: target.to_owned(),
        })
    }

    fn writer(&self) -> anyhow::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(io::stdout()),
            #[cfg(target_os = "linux")]
            Sink::Unnamed { file, .. } => Box::new(file.try_clone()?),
            Sink::Named { temp, .. } => Box::new(temp.reopen()?),
        })
    }

    /// Gives the complete file its name (replacing whatever had it).
    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout => Ok(()),
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
    let client = args.cache.client(cli.grid()?, ReaderConfig::default())?;
    let file = client.open(&cap).await?;
    let sink = Sink::create(args.output.as_deref())?;
    let mut writer = sink.writer()?;

    // Writing happens on its own thread so a slow disk or pipe never stalls the fetches in
    // flight; the channel is small, so memory stays at the read-ahead window.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let writer_thread = std::thread::spawn(move || -> io::Result<()> {
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk)?;
        }
        writer.flush()
    });
    let bar = progress_bar(Some(range.end - range.start), "get");
    let mut stream = file.stream(range);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if let Some(bar) = &bar {
                    bar.inc(chunk.len() as u64);
                }
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
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
        return Err(e.into());
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
