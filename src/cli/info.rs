//! `segvault verify` and `segvault info`.

use std::process::ExitCode;

use crate::cli::size;
use segvault::ReaderConfig;
use segvault::core::cap::Cap;
use segvault::core::layout::ShareLayout;
use segvault::engine::audit;

use super::{CapArgs, Cli, read_cap_argument};

pub(crate) async fn verify(cli: &Cli, args: &CapArgs) -> anyhow::Result<ExitCode> {
    let cap = read_cap_argument(&args.cap)?.verify_cap();
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
