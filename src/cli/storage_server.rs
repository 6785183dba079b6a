//! `segvault storage-server`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use segvault::node::{NodeConfig, StorageNode, check_listen_address};
use segvault::server::shutdown_signal;
use segvault::store::{DirectoryStore, Durability};
use segvault::tls::identity::{IDENTITY_FILE, NodeIdentity};

use super::Cli;

#[derive(Args, Debug)]
pub(crate) struct StorageServerArgs {
    /// Directory holding this node's shares (created if missing)
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Address to listen on; without --token-file only a loopback address is accepted
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Largest share accepted, e.g. 64GiB
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse, default_value = "1TiB")]
    max_share_size: u64,
    /// Connections served at once (idle ones give way to new clients)
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Uploads received at once; more are answered 503 with Retry-After
    #[arg(long, value_name = "N", default_value_t = NodeConfig::default().max_uploads)]
    max_uploads: usize,
    /// Serve TLS on a loopback address too (always on off loopback). The key and
    /// self-signed certificate live in DIR/tls-identity.pem; the URL printed pins the key
    #[arg(long)]
    tls: bool,
    /// Replace the node's TLS key with a new one, print the new URL pin, and exit (restart
    /// the node, then give clients the new URL)
    #[arg(long)]
    rotate_key: bool,
}

pub(crate) async fn run(cli: &Cli, args: &StorageServerArgs) -> anyhow::Result<ExitCode> {
    if args.rotate_key {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let identity = NodeIdentity::rotate(&args.dir)?;
        println!("{}", identity.pin);
        eprintln!(
            "segvault: new TLS key in {}; restart the node and give clients its new URL (ending #{})",
            args.dir.join(IDENTITY_FILE).display(),
            identity.pin
        );
        return Ok(ExitCode::SUCCESS);
    }
    let token = cli.token()?;
    check_listen_address(args.listen, token.as_ref())?;
    let tls = args.tls || !args.listen.ip().is_loopback();
    let store = DirectoryStore::open_with(&args.dir, Durability::Fsync)
        .with_context(|| format!("opening the share directory {}", args.dir.display()))?;
    let mut config = NodeConfig::default();
    config.connections.max_connections = args.max_connections;
    config.token = token;
    config.max_share_bytes = args.max_share_size;
    config.max_uploads = args.max_uploads;
    if tls {
        let (identity, made) = NodeIdentity::load_or_create(&args.dir)?;
        if made {
            eprintln!(
                "segvault: made a TLS key for this node in {}",
                args.dir.join(IDENTITY_FILE).display()
            );
        }
        config.identity = Some(identity);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // The URL on stdout is what `--server` takes (with --listen 127.0.0.1:0 it names the port).
    let url = match &config.identity {
        Some(identity) => format!("https://{address}#{}", identity.pin),
        None => format!("http://{address}"),
    };
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{url}")?;
    stdout.flush()?;
    eprintln!(
        "segvault: storage node {url} serving {}{}; Ctrl-C stops",
        args.dir.display(),
        if config.token.is_some() {
            " (token required)"
        } else {
            ""
        }
    );
    if address.ip().is_unspecified() {
        eprintln!(
            "segvault: listening on every address: clients use this machine's address in place of {} (the pin stays the same)",
            address.ip()
        );
    }
    StorageNode::new(store, config)
        .serve(listener, shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
