//! `segvault serve`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use segvault::PutOptions;
use segvault::gateway::{Gateway, GatewayConfig, shutdown_signal, url_for};
use segvault::grid::EMBEDDED_SERVERS;
use segvault::store::Durability;
use segvault::tls::server::ServerCertificate;
use std::sync::Arc;

use segvault::repair::RepairOptions;
use segvault::repair::queue::{QueueLimits, RepairQueue};

use super::Cli;

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3456")]
    listen: SocketAddr,
    /// Shares needed to read files uploaded through the gateway
    #[arg(short = 'k', default_value_t = 3)]
    k: u16,
    /// Shares written for files uploaded through the gateway
    #[arg(short = 'n', default_value_t = 10)]
    n: u16,
    /// Largest upload accepted, e.g. 4GiB
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse, default_value = "64GiB")]
    max_upload: u64,
    /// Connections served at once (idle ones give way to new clients)
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Uploads received at once; more are answered 503
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_uploads: usize,
    /// Memory for per-file metadata kept between requests (verified hash-tree nodes, share maps); the least recently opened files are dropped beyond it
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse, default_value = "64MiB")]
    metadata_size: u64,
    /// Seconds a client has to send a request's headers (also the keep-alive idle time)
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    header_timeout: u64,
    /// Memory all responses together may hold fetched ahead of their clients, e.g. 256MiB (beyond it each response fetches one segment at a time)
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse, default_value = "64MiB")]
    read_ahead_memory: u64,
    /// Seconds a client may take no response bytes before its connection is closed (a stalled viewer holds a connection slot and a segment until then)
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    send_timeout: u64,
    /// Serve HTTPS with this certificate chain (PEM; reloaded with the key on SIGHUP)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve HTTP/1.1 only (by default HTTP/2 is offered too: by ALPN over HTTPS, by prior knowledge over plain HTTP)
    #[arg(long)]
    no_http2: bool,
    /// Rebuild a file's missing or corrupt shares in the background when a read finds them (one repair at a time; each file at most every 10 minutes; counted in /metrics)
    #[arg(long)]
    repair_on_read: bool,
    #[command(flatten)]
    cache: super::CacheArgs,
}

pub(crate) async fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let put = PutOptions::new(args.k, args.n);
    put.validate()?;
    let grid = cli.grid_with(
        EMBEDDED_SERVERS.max(usize::from(args.n)),
        true,
        Durability::Fsync,
    )?;
    let mut config = GatewayConfig::default();
    config.connections.max_connections = args.max_connections;
    config.connections.header_read_timeout =
        std::time::Duration::from_secs(args.header_timeout.max(1));
    config.connections.write_timeout = std::time::Duration::from_secs(args.send_timeout.max(1));
    config.max_upload_bytes = args.max_upload;
    config.max_uploads = args.max_uploads;
    config.reader.metadata_bytes = args.metadata_size;
    config.reader.read_ahead_memory = args.read_ahead_memory;
    config.put = put;
    config.http2 = !args.no_http2;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let certificate = Arc::new(ServerCertificate::from_pem_files(cert, key)?);
        reload_on_hangup(certificate.clone())?;
        config.tls = Some(certificate);
    }
    let tls = config.tls.is_some();
    // The cache (and its lock) before the port: a second gateway on the same cache directory
    // fails before it takes an address.
    let servers = grid.len();
    // The queue counts into the client's metrics, so it starts once the client exists.
    let repairs = Arc::new(std::sync::OnceLock::new());
    let repair_grid = args.repair_on_read.then(|| grid.clone());
    if args.repair_on_read {
        config.reader.on_damage = Some(RepairQueue::hook_for(repairs.clone()));
    }
    let client = args.cache.client(grid, config.reader.clone())?;
    if let Some(grid) = repair_grid {
        let queue = RepairQueue::start(
            grid,
            // Only the gateway's reads feed the queue, and it reads with read caps.
            RepairOptions::new().holding_read_cap(true),
            QueueLimits::default(),
            client.metrics().clone(),
        );
        let _ = repairs.set(queue);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // The URL on stdout is the contract scripts rely on (with --listen 127.0.0.1:0 it names the port).
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", url_for(address, tls))?;
    stdout.flush()?;
    eprintln!(
        "segvault: serving {} from {} storage servers; Ctrl-C stops",
        url_for(address, tls),
        servers
    );
    Gateway::with_client(client, config)
        .serve(listener, shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the certificate files again on each SIGHUP; new connections get the new
/// certificate, open ones keep theirs. A bad file is reported and the old one stays.
fn reload_on_hangup(certificate: Arc<ServerCertificate>) -> anyhow::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match certificate.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays")
                }
            }
        }
    });
    Ok(())
}
