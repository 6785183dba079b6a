//! `segvault verify` and `segvault info`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::size;
use segvault::ReaderConfig;
use segvault::core::cap::Cap;
use segvault::core::layout::ShareLayout;
use segvault::engine::audit;

use anyhow::Context as _;
use futures::StreamExt as _;
use segvault::core::cap_list::{CapListEntry, parse_cap_list};
use segvault::engine::audit::VerifyReport;

use super::{CapArgs, Cli, read_cap_argument};

/// `segvault verify`: one cap, or a list of them.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// A read cap or a verify cap (`-` reads it from stdin).
    #[arg(required_unless_present = "caps", conflicts_with = "caps")]
    cap: Option<String>,
    /// Check every file in this list instead: one cap per line, or `NAME CAP` (the name
    /// labels the file in the report; caps are never printed); `#` comments; `-` is stdin.
    #[arg(long, value_name = "FILE")]
    caps: Option<PathBuf>,
    /// Files checked at once with --caps.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
}

pub(crate) async fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(list) = &args.caps {
        return verify_list(cli, list, usize::from(args.jobs)).await;
    }
    let cap = read_cap_argument(args.cap.as_deref().unwrap_or("-"))?.verify_cap();
    let grid = cli.grid()?;
    let report = audit::verify(&grid, &cap, &ReaderConfig::default(), None).await;
    if report.altered_cap {
        // The same words as `get`: the shares are not at fault.
        return Err(segvault::ReadError::AlteredCap {
            storage_index: report.storage_index,
        }
        .into());
    }
    println!("{report}");
    Ok(if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) async fn info(cli: &Cli, args: &CapArgs) -> anyhow::Result<ExitCode> {
    let cap = read_cap_argument(&args.cap)?;
    let verify_cap = cap.verify_cap();
    let g = *verify_cap.geometry();
    let grid = cli.grid()?;
    let si = verify_cap.storage_index();
    let timeout = ReaderConfig::default().request_timeout;
    let lists = futures::future::join_all(grid.servers().iter().map(|s| async move {
        match tokio::time::timeout(timeout, s.store().list(si)).await {
            Ok(listing) => listing.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }))
    .await;

    println!("storage index: {si}");
    println!("verify cap:    {verify_cap}");
    println!(
        "kind:          {}",
        if matches!(cap, Cap::Read(_)) {
            "read cap"
        } else {
            "verify cap"
        }
    );
    println!(
        "size:          {} bytes ({})",
        g.size(),
        size::format(g.size())
    );
    println!("k:             {}", g.k());
    println!("n:             {}", g.n());
    println!(
        "segment size:  {} bytes ({}), {} segments",
        g.segment_size(),
        size::format(g.segment_size()),
        g.num_segments()
    );
    println!("share size:    {} bytes", ShareLayout::new(&g).share_len());
    let mut found = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    for (server, listing) in grid.servers().iter().zip(lists) {
        match listing {
            Ok(shares) => {
                for share in shares {
                    if u16::from(share.0) < g.n() {
                        found.insert(share);
                        lines.push(format!("  share {share}: {}", server.name()));
                    } else {
                        lines.push(format!(
                            "  ignored: {} holds a share numbered {share}, beyond n",
                            server.name()
                        ));
                    }
                }
            }
            Err(e) => lines.push(format!("  {}: {e}", server.name())),
        }
    }
    println!("shares found:  {} of {}", found.len(), g.n());
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How one file of a list fared.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Verdict {
    Healthy,
    /// Readable, with shares missing or bad: repair would help.
    Unhealthy,
    /// Some segment has fewer than k good shares.
    Unrecoverable,
    /// The cap does not match the file its storage index names.
    AlteredCap,
}

fn verdict(report: &VerifyReport) -> Verdict {
    if report.altered_cap {
        Verdict::AlteredCap
    } else if !report.unrecoverable.is_empty() {
        Verdict::Unrecoverable
    } else if report.is_healthy() {
        Verdict::Healthy
    } else {
        Verdict::Unhealthy
    }
}

/// Which file of a list: `NAME (line L, SI)`, or `SI (line L)` when it has no name.
fn where_in_list(entry: &CapListEntry, report: &VerifyReport) -> String {
    match &entry.name {
        Some(name) => format!("{name} (line {}, {})", entry.line, report.storage_index),
        None => format!("{} (line {})", report.storage_index, entry.line),
    }
}

/// One line on a file of a list: its name and storage index, never its cap.
fn summary_line(entry: &CapListEntry, report: &VerifyReport, n: u16) -> String {
    let good = report.shares.iter().filter(|c| c.is_good()).count();
    let bad: Vec<String> = report
        .shares
        .iter()
        .filter(|c| !c.is_good())
        .map(|c| format!("{} on {}", c.share, c.server))
        .collect();
    let missing: Vec<String> = report.missing.iter().map(ToString::to_string).collect();
    let mut details = vec![format!("{good} of {n} shares good")];
    if !missing.is_empty() {
        details.push(format!("missing {}", missing.join(", ")));
    }
    if !bad.is_empty() {
        details.push(format!("bad {}", bad.join(", ")));
    }
    for (server, error) in &report.server_errors {
        details.push(format!("{server}: {error}"));
    }
    if !report.unrecoverable.is_empty() {
        details.push(format!(
            "{} segments below k (first: {})",
            report.unrecoverable.len(),
            report.unrecoverable[0]
        ));
    }
    let word = match verdict(report) {
        Verdict::Healthy => "healthy",
        Verdict::Unhealthy => "UNHEALTHY",
        Verdict::Unrecoverable => "UNRECOVERABLE",
        Verdict::AlteredCap => {
            // The report's own words, which are `get`'s.
            return format!("ALTERED CAP    {}: {report}", where_in_list(entry, report));
        }
    };
    format!(
        "{word:<14} {}: {}",
        where_in_list(entry, report),
        details.join("; ")
    )
}

/// `verify --caps`: every cap is read and checked first (a bad line stops it before any
/// file is looked at), then `jobs` files at a time, a line each as they finish, and a summary.
async fn verify_list(cli: &Cli, list: &std::path::Path, jobs: usize) -> anyhow::Result<ExitCode> {
    let entries = load_cap_list(list)?;
    let grid = cli.grid()?;
    let config = ReaderConfig::default();
    let total = entries.len();
    let mut counts = std::collections::BTreeMap::<Verdict, usize>::new();
    let mut checked = futures::stream::iter(entries.iter().map(|entry| {
        let grid = &grid;
        let config = &config;
        async move {
            let cap = entry.cap.verify_cap();
            let report = audit::verify(grid, &cap, config, None).await;
            (entry, report, cap.geometry().n())
        }
    }))
    .buffer_unordered(jobs);
    let mut done = 0;
    while let Some((entry, report, n)) = checked.next().await {
        done += 1;
        *counts.entry(verdict(&report)).or_default() += 1;
        println!("{}", summary_line(entry, &report, n));
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r{done}/{total} files checked");
        }
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) && total > 0 {
        eprintln!();
    }
    let count = |v| counts.get(&v).copied().unwrap_or(0);
    println!(
        "{total} files: {} healthy, {} unhealthy (repairable), {} unrecoverable, {} with an altered cap",
        count(Verdict::Healthy),
        count(Verdict::Unhealthy),
        count(Verdict::Unrecoverable),
        count(Verdict::AlteredCap),
    );
    Ok(if count(Verdict::Healthy) == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads and parses a cap list (`-`: stdin); every line is checked before any is used.
pub(crate) fn load_cap_list(list: &std::path::Path) -> anyhow::Result<Vec<CapListEntry>> {
    let text = if list.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the cap list from stdin")?
    } else {
        std::fs::read_to_string(list)
            .with_context(|| format!("reading the cap list {}", list.display()))?
    };
    // The list is all caps: its text is wiped once parsed.
    let text = zeroize::Zeroizing::new(text);
    parse_cap_list(&text).with_context(|| format!("in the cap list {}", list.display()))
}
