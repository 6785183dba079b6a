//! `segvault repair`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use futures::StreamExt as _;
use segvault::Cap;
use segvault::core::cap_list::CapListEntry;
use segvault::repair::{Outcome, RepairOptions, RepairReport, repair};
use segvault::store::Durability;

use super::info::load_cap_list;
use super::put::interrupted;
use super::{Cli, read_cap_argument};

/// `segvault repair`: one cap, or a list of them.
#[derive(clap::Args, Debug)]
pub(crate) struct RepairArgs {
    /// A read cap or a verify cap (`-` reads it from stdin); a verify cap is enough.
    #[arg(required_unless_present = "caps", conflicts_with = "caps")]
    cap: Option<String>,
    /// Repair every file in this list instead: one cap per line, or `NAME CAP` (the name
    /// labels the file in the report; caps are never printed); `#` comments; `-` is stdin.
    #[arg(long, value_name = "FILE")]
    caps: Option<PathBuf>,
    /// Files repaired at once with --caps.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Check and say what would be rebuilt and where; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per file on stdout (the totals go to stderr).
    #[arg(long)]
    json: bool,
    /// When the grid has fewer servers than a file has shares: distinct servers holding good
    /// shares that make it count as repaired (default: as put, the smaller of n and the number of servers)
    #[arg(long, value_name = "H", value_parser = clap::value_parser!(u16).range(1..=255))]
    happy: Option<u16>,
}

pub(crate) async fn run(cli: &Cli, args: &RepairArgs) -> anyhow::Result<ExitCode> {
    // Every cap is read and checked before any file is looked at.
    let entries = match (&args.caps, &args.cap) {
        (Some(list), _) => load_cap_list(list)?,
        (None, cap) => vec![CapListEntry {
            line: 1,
            name: None,
            cap: read_cap_argument(cap.as_deref().unwrap_or("-"))?,
        }],
    };
    let specs = cli.server_specs()?;
    if let Some(happy) = args.happy
        && !specs.is_empty()
        && usize::from(happy) > specs.len()
    {
        anyhow::bail!(
            "--happy {happy} asks for more servers than the grid has ({})",
            specs.len()
        );
    }
    let single = args.caps.is_none();
    // The servers there are: a cap (perhaps a forged one) never makes directories appear.
    let grid = cli.grid_with(0, !args.dry_run, Durability::Fsync)?;
    let mut options = RepairOptions::new().dry_run(args.dry_run);
    options.happy = args.happy;
    let total = entries.len();
    let mut counts = BTreeMap::<Outcome, usize>::new();
    let (mut read, mut written) = (0u64, 0u64);
    let work = async {
        let mut repaired = futures::stream::iter(entries.iter().map(|entry| {
            let (grid, options) = (&grid, &options);
            async move {
                let cap = entry.cap.verify_cap();
                let options = options
                    .clone()
                    .holding_read_cap(matches!(entry.cap, Cap::Read(_)));
                (entry, repair(grid, &cap, &options).await)
            }
        }))
        .buffer_unordered(usize::from(args.jobs));
        let on_terminal = !single && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut done = 0;
        while let Some((entry, report)) = repaired.next().await {
            done += 1;
            if on_terminal {
                eprint!("\r\x1b[K");
            }
            *counts.entry(report.outcome).or_default() += 1;
            read += report.bytes_read;
            written += report.bytes_written;
            if args.json {
                println!("{}", json_line(entry, &report, single));
            } else if single {
                println!("{}", report.summary());
            } else {
                println!("{}", report.summary_as(&label(entry, &report)));
            }
            if on_terminal {
                eprint!("{done}/{total} files repaired");
            }
        }
        if on_terminal && total > 0 {
            eprintln!();
        }
    };
    tokio::select! {
        () = work => {}
        signal = interrupted() => {
            // Dropping the repairs removes their spools; shares already stored are whole
            // and verified, and stay.
            eprintln!("segvault: {signal}: repair stopped");
            return Ok(ExitCode::from(128 + signal.number()));
        }
    }
    let count = |o| counts.get(&o).copied().unwrap_or(0);
    let successes: usize = counts
        .iter()
        .filter(|(o, _)| o.is_success())
        .map(|(_, c)| c)
        .sum();
    let totals = format!(
        "{total} files: {} healthy, {} repaired, {} happy, {} unhealthy, {} unrecoverable, {} with an altered cap; read {}, wrote {}{}",
        count(Outcome::Healthy),
        count(Outcome::Repaired),
        count(Outcome::HappinessMet),
        count(Outcome::Unhealthy),
        count(Outcome::Unrecoverable),
        count(Outcome::AlteredCap),
        super::size::format(read),
        super::size::format(written),
        if args.dry_run { " (dry run)" } else { "" },
    );
    if args.json {
        eprintln!("{totals}");
    } else if !single {
        println!("{totals}");
    }
    Ok(if successes == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Which file of a list: `NAME (line L, SI)`, or `SI (line L)` when it has no name.
fn label(entry: &CapListEntry, report: &RepairReport) -> String {
    match &entry.name {
        Some(name) => format!("{name} (line {}, {})", entry.line, report.storage_index),
        None => format!("{} (line {})", report.storage_index, entry.line),
    }
}

/// The report as one line of JSON, with the list's name and line for a file of a list.
fn json_line(entry: &CapListEntry, report: &RepairReport, single: bool) -> String {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let (false, Some(object)) = (single, value.as_object_mut()) {
        object.insert("line".into(), entry.line.into());
        if let Some(name) = &entry.name {
            object.insert("name".into(), name.clone().into());
        }
    }
    value.to_string()
}
