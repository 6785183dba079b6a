//! `segvault put`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Args;
use segvault::grid::EMBEDDED_SERVERS;
use segvault::store::Durability;
use segvault::{PutOptions, PutSource};
use tokio_util::sync::CancellationToken;

use super::{Cli, progress_bar};

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// Shares needed to read the file (1..=n)
    #[arg(short = 'k', default_value_t = 3)]
    k: u16,
    /// Shares written, one per server while there are enough servers (1..=256)
    #[arg(short = 'n', default_value_t = 10)]
    n: u16,
    /// Segment size, e.g. 128KiB or 1MiB [default: 128KiB, larger for files over 8 GiB]
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse)]
    segment_size: Option<u64>,
    /// Servers that must take their shares for the upload to succeed [default: min(n, servers)]; servers that do not answer get none
    #[arg(long, value_name = "H")]
    happy: Option<u16>,
    /// Count a directory share as stored once renamed into place, without waiting for the
    /// disk (fsync). Much faster on one disk; a power failure may then lose the upload
    /// (never corrupt a read: every byte is verified).
    #[arg(long)]
    no_fsync: bool,
    /// File to upload, or `-` for stdin
    #[arg(value_name = "PATH|-")]
    path: PathBuf,
}

pub(crate) async fn run(cli: &Cli, args: &PutArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be checked is, before a file is read or a directory made.
    let cancel = CancellationToken::new();
    let mut options = PutOptions::new(args.k, args.n).with_cancel(cancel.clone());
    options.segment_size = args.segment_size;
    options.happy = args.happy;
    options.validate()?;
    let specs = cli.server_specs()?;
    if let Some(happy) = args.happy
        && !specs.is_empty()
        && usize::from(happy) > specs.len()
    {
        return Err(segvault::PutError::HappyServers {
            happy,
            servers: specs.len(),
        }
        .into());
    }
    let (source, total) = if args.path.as_os_str() == "-" {
        (PutSource::Reader(Box::new(std::io::stdin())), None)
    } else {
        let meta = std::fs::metadata(&args.path)
            .with_context(|| format!("cannot read {}", args.path.display()))?;
        if meta.is_dir() {
            return Err(anyhow!(
                "{} is a directory; segvault stores files",
                args.path.display()
            ));
        }
        if meta.is_file() {
            (PutSource::Path(args.path.clone()), Some(meta.len()))
        } else {
            // A pipe or device (`<(command)`, /dev/stdin): its length is unknown, like stdin's.
            let file = std::fs::File::open(&args.path)
                .with_context(|| format!("cannot read {}", args.path.display()))?;
            (PutSource::Reader(Box::new(file)), None)
        }
    };
    let durability = if args.no_fsync {
        Durability::Rename
    } else {
        Durability::Fsync
    };
    let grid = cli.grid_with(EMBEDDED_SERVERS.max(usize::from(args.n)), true, durability)?;
    let bar = progress_bar(total, "put");
    options.progress = bar
        .clone()
        .map(|bar| Arc::new(move |done: u64| bar.set_position(done)) as _);
    let put = segvault::upload::put(&grid, source, &options);
    let mut put = std::pin::pin!(put);
    let outcome = tokio::select! {
        outcome = &mut put => outcome,
        signal = interrupted() => {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            eprintln!("segvault: {signal}: removing what the upload had written…");
            cancel.cancel();
            // A second signal does not wait for the clean-up.
            let finished = tokio::select! {
                finished = tokio::time::timeout(CLEAN_UP_TIME, &mut put) => finished.ok(),
                _ = interrupted() => None,
            };
            match finished {
                // It had finished before the cancellation reached it: the file is stored,
                // so its cap must not be lost.
                Some(Ok(cap)) => {
                    eprintln!("segvault: the upload had already finished");
                    println!("{}", cap.to_secret_string().as_str());
                    return Ok(ExitCode::SUCCESS);
                }
                Some(Err(e @ segvault::PutError::Cancelled { .. })) => {
                    eprintln!("segvault: {e}");
                }
                Some(Err(e)) => eprintln!("segvault: error: {e}"),
                None => eprintln!("segvault: stopped before the clean-up finished"),
            }
            return Ok(ExitCode::from(128 + signal.number()));
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("{}", outcome?.to_secret_string().as_str());
    Ok(ExitCode::SUCCESS)
}

/// How long an interrupted upload may take to remove its spools and stored shares.
const CLEAN_UP_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The signal that stopped a command.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Interrupt {
    Interrupt,
    Terminate,
}

impl Interrupt {
    pub(crate) fn number(self) -> u8 {
        match self {
            Interrupt::Interrupt => 2,
            Interrupt::Terminate => 15,
        }
    }
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupt::Interrupt => "interrupted",
            Interrupt::Terminate => "terminated",
        })
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, saying which.
pub(crate) async fn interrupted() -> Interrupt {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return Interrupt::Interrupt;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Interrupt::Interrupt,
        _ = terminate.recv() => Interrupt::Terminate,
    }
}
