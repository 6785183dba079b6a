//! Argument parsing, logging, and the grid every command runs against.

mod get;
mod info;
mod put;
mod repair;
#[cfg(feature = "gateway")]
mod serve;
mod size;
#[cfg(feature = "node")]
mod storage_server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use segvault::core::cap::Cap;
use segvault::grid::{Grid, GridFile, ServerEntry};
use segvault::store::http::token::Token;
use segvault::store::{Durability, HttpOptions};

/// Store files encrypted and erasure-coded across storage servers; read any byte range back.
#[derive(Parser, Debug)]
#[command(name = "segvault", version, propagate_version = true)]
struct Cli {
    /// Data directory holding the embedded grid [default: $SEGVAULT_DATA, else the platform data directory]
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Storage server: a storage node's URL as `storage-server` prints it (https://host:port#spki-sha256=…, or http://127.0.0.1:port on loopback), an s3://bucket/prefix, or a directory path. Repeat for several. Without it, the embedded grid in the data directory is used.
    #[arg(long = "server", global = true, value_name = "URL|DIR")]
    servers: Vec<String>,

    /// Grid file (TOML: `servers = ["https://…#spki-sha256=…", "s3://…", "/dir", …]`, optional `token_file = "…"`); its servers come before any --server
    #[arg(long, global = true, value_name = "FILE", env = "SEGVAULT_GRID")]
    grid: Option<PathBuf>,

    /// File whose first line is the storage nodes' access token (storage-server: the token it requires)
    #[arg(long, global = true, value_name = "FILE", env = "SEGVAULT_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// More logging on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload a file (or `-` for stdin); prints its read cap as the last line of stdout.
    Put(put::PutArgs),
    /// Download a file or a byte range of it.
    Get(get::GetArgs),
    /// Check every share of a file (or of every file in a list); exits non-zero if any is bad or missing.
    Verify(info::VerifyArgs),
    /// Show a file's parameters and where its shares are.
    Info(CapArgs),
    /// Rebuild a file's missing and corrupt shares from any k good ones (or every file in a list); exits non-zero unless all end healthy.
    Repair(repair::RepairArgs),
    /// Serve files over HTTP, with Range requests, uploads and a small page at `/`.
    #[cfg(feature = "gateway")]
    Serve(serve::ServeArgs),
    /// Run a storage node: keep shares in a directory and serve them to clients over HTTP.
    #[cfg(feature = "node")]
    StorageServer(storage_server::StorageServerArgs),
}

/// The disk cache, for commands that read.
#[derive(Args, Debug)]
pub(crate) struct CacheArgs {
    /// Keep verified ciphertext blocks (never plaintext) in this directory, so repeated and seeking reads skip the network; one process per directory
    #[arg(long, value_name = "DIR", env = "SEGVAULT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Most bytes the cache directory holds; the least recently used blocks go first
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::size::parse, default_value = "1GiB", requires = "cache_dir")]
    cache_size: u64,
    /// Remove cached blocks unused this long, e.g. 90s, 30m, 1h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h", requires = "cache_dir")]
    cache_ttl: std::time::Duration,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (use e.g. 90s, 30m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    // Far beyond any useful time to live, and safe to add to any clock reading.
    Ok(duration.min(std::time::Duration::from_secs(10 * 365 * 24 * 3600)))
}

impl CacheArgs {
    /// A client for `grid`, with the disk cache when `--cache-dir` was given.
    pub(crate) fn client(
        &self,
        grid: Grid,
        config: segvault::ReaderConfig,
    ) -> anyhow::Result<segvault::Client> {
        let Some(dir) = &self.cache_dir else {
            return Ok(segvault::Client::new(grid, config));
        };
        let mut cache_config = segvault::cache::CacheConfig::new(dir, self.cache_size);
        cache_config.ttl = self.cache_ttl;
        let metrics = std::sync::Arc::new(segvault::metrics::Metrics::default());
        // Opening scans the directory: off the async workers.
        let cache = tokio::task::block_in_place(|| {
            segvault::cache::DiskCache::open(cache_config, metrics)
        })?;
        Ok(segvault::Client::with_cache(grid, config, cache))
    }
}

#[derive(Args, Debug)]
struct CapArgs {
    /// A read cap or a verify cap (`-` reads it from stdin).
    cap: String,
}

impl Cli {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("SEGVAULT_DATA").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        dirs::data_dir()
            .map(|d| d.join("segvault"))
            .ok_or_else(|| anyhow!("no data directory: pass --data DIR or set SEGVAULT_DATA"))
    }

    /// The token from `--token-file`, if given.
    fn token(&self) -> anyhow::Result<Option<Token>> {
        let from_grid = match &self.grid {
            Some(path) => GridFile::load(path)?.token_file,
            None => None,
        };
        self.token_file
            .as_deref()
            .or(from_grid.as_deref())
            .map(|path| {
                Token::from_file(path)
                    .with_context(|| format!("reading the token file {}", path.display()))
            })
            .transpose()
    }

    /// The grid for reading: `--server`s, else the embedded grid.
    fn grid(&self) -> anyhow::Result<Grid> {
        self.grid_with(0, false, Durability::Fsync)
    }

    /// The grid: `--server`s, else the embedded grid with at least `min_servers` directories.
    /// The servers named by `--grid` and `--server`, in that order (empty: the embedded grid).
    fn server_specs(&self) -> anyhow::Result<Vec<ServerEntry>> {
        let mut specs = match &self.grid {
            Some(path) => GridFile::load(path)?.servers,
            None => Vec::new(),
        };
        specs.extend(self.servers.iter().cloned().map(ServerEntry::Spec));
        Ok(specs)
    }

    fn grid_with(
        &self,
        min_servers: usize,
        for_upload: bool,
        durability: Durability,
    ) -> anyhow::Result<Grid> {
        let specs = self.server_specs()?;
        if !specs.is_empty() {
            if !for_upload {
                check_directories(&specs)?;
            }
            // Shares for storage nodes are built here (ciphertext only) before sending; an
            // upload killed before it finished left its spools behind.
            let spool_dir = self.data_dir().ok().map(|d| d.join("spool"));
            if let Some(dir) = &spool_dir {
                segvault::store::sweep_spools(dir);
            }
            let mut http = HttpOptions::default();
            http.token = self.token()?;
            http.spool_dir = spool_dir;
            return Ok(specs
                .iter()
                .fold(Grid::builder(), |grid, spec| spec.add_to(grid))
                .attach_only(!for_upload)
                .durability(durability)
                .http_options(http)
                .build()?);
        }
        let dir = self.data_dir()?;
        let grid = Grid::embedded_with(&dir, min_servers, durability)
            .with_context(|| format!("opening the embedded grid in {}", dir.display()))?;
        if grid.is_empty() {
            return Err(anyhow!(
                "the embedded grid in {} has no storage directories yet: upload a file first, or pass --server",
                dir.display()
            ));
        }
        Ok(grid)
    }
}

/// For reading: a `--server` directory that does not exist is said first (a mistyped path
/// looks like a server that is down); when none of the servers exists, nothing can be read.
fn check_directories(specs: &[ServerEntry]) -> anyhow::Result<()> {
    let missing: Vec<&String> = specs
        .iter()
        .filter_map(|spec| match spec {
            ServerEntry::Spec(spec) => Some(spec),
            _ => None,
        })
        .filter(|spec| !spec.contains("://") && !std::path::Path::new(spec.as_str()).exists())
        .collect();
    if missing.len() == specs.len() {
        let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Err(match list.as_slice() {
            [one] => anyhow!("storage directory {one} does not exist"),
            many => anyhow!("storage directories {} do not exist", many.join(", ")),
        });
    }
    for spec in missing {
        eprintln!("segvault: warning: storage directory {spec} does not exist; reading without it");
    }
    Ok(())
}

/// Reads a cap argument; `-` means the first line of stdin. Surrounding whitespace is ignored.
fn read_cap_argument(text: &str) -> anyhow::Result<Cap> {
    let owned;
    let text = if text == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the cap from stdin")?;
        owned = line;
        owned.as_str()
    } else {
        text
    };
    Ok(text.trim().parse::<Cap>()?)
}

/// A progress bar on stderr, only when stderr is a terminal and the job is long.
fn progress_bar(total: Option<u64>, message: &'static str) -> Option<ProgressBar> {
    const WORTH_SHOWING: u64 = 16 << 20;
    if !std::io::stderr().is_terminal() || total.is_some_and(|t| t < WORTH_SHOWING) {
        return None;
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg:>8} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg:>8} {spinner} {binary_bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(message);
    Some(bar)
}

/// Threads for blocking file I/O (page-cache misses, fsyncs). Reads in flight are bounded by
/// the read-ahead window (8 segments × k shares), so a small pool loses nothing.
const BLOCKING_THREADS: usize = 16;

fn init_logging(verbose: u8, serving: bool) {
    let default = match verbose {
        // A server reports each request (by storage index, never by cap).
        0 if serving => "warn,segvault::access=info,segvault::gateway=info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Keeps secrets out of crash dumps and makes room for connections, before anything else.
/// A core dump of a process holding a key, a cap or plaintext would put them on disk, so
/// core dumps are off (RLIMIT_CORE 0) and the process is not dumpable (which also keeps
/// other processes of the same user from reading its memory), unless
/// `SEGVAULT_ALLOW_CORE_DUMPS=1` asks for dumps to debug a crash.
fn protect_process() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{DumpableBehavior, Resource, Rlimit, getrlimit, setrlimit};
        if std::env::var_os("SEGVAULT_ALLOW_CORE_DUMPS").is_none_or(|v| v != "1") {
            let none = Rlimit {
                current: Some(0),
                maximum: Some(0),
            };
            if let Err(e) = setrlimit(Resource::Core, none) {
                eprintln!("segvault: warning: cannot turn off core dumps: {e}");
            }
            if let Err(e) = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
                eprintln!("segvault: warning: cannot make the process non-dumpable: {e}");
            }
        }
        // Servers hold a descriptor per connection: allow as many as the hard limit does.
        let files = getrlimit(Resource::Nofile);
        if files.current < files.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: files.maximum,
                    maximum: files.maximum,
                },
            );
        }
    }
}

/// An error and its causes on one line, each cause only once (many errors already quote
/// their cause in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

impl Command {
    /// Whether the command runs a server (which logs more by default).
    fn is_server(&self) -> bool {
        match self {
            #[cfg(feature = "gateway")]
            Command::Serve(_) => true,
            #[cfg(feature = "node")]
            Command::StorageServer(_) => true,
            _ => false,
        }
    }
}

/// Runs the command line; the exit status says whether it worked.
pub(crate) fn main() -> ExitCode {
    protect_process();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.command.is_server());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("segvault: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Put(args) => put::run(&cli, args).await,
            Command::Get(args) => get::run(&cli, args).await,
            Command::Verify(args) => info::verify(&cli, args).await,
            Command::Info(args) => info::info(&cli, args).await,
            Command::Repair(args) => repair::run(&cli, args).await,
            #[cfg(feature = "gateway")]
            Command::Serve(args) => serve::run(&cli, args).await,
            #[cfg(feature = "node")]
            Command::StorageServer(args) => storage_server::run(&cli, args).await,
        }
    });
    // Blocking work still running now is abandoned rather than waited for (a store read or
    // write a cancelled command no longer needs); everything a command must finish, it
    // awaits before returning.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("segvault: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
