//! The set of storage servers a client talks to, and where an upload puts each share.
//!
//! The embedded grid is a set of directory stores inside the data directory
//! (`<data>/grid/server-00`, `server-01`, …), ten by default, more when a file asks for more
//! shares than there are servers.

mod builder;
#[cfg(feature = "grid-file")]
mod file;
pub mod health;

pub use builder::GridBuilder;
#[cfg(feature = "grid-file")]
pub use file::{GridFile, ServerEntry};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::cap::StorageIndex;
use crate::core::hash;
use crate::grid::health::ServerHealth;
use crate::store::{DirectoryStore, Durability, ShareStore, UrlError};

/// Servers in a new embedded grid.
pub const EMBEDDED_SERVERS: usize = 10;

/// A storage server as the client sees it.
#[derive(Clone)]
pub struct Server {
    name: String,
    store: Arc<dyn ShareStore>,
    health: Arc<ServerHealth>,
}

impl Server {
    /// Wraps a store.
    pub fn new(store: Arc<dyn ShareStore>) -> Server {
        Server {
            name: store.name().to_owned(),
            store,
            health: Arc::default(),
        }
    }

    /// Name for messages (path or URL).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ShareStore> {
        &self.store
    }

    /// What readers have learned about this server (latency, failures); shared by every
    /// clone of the grid.
    pub fn health(&self) -> &ServerHealth {
        &self.health
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a grid could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GridError {
    /// A server URL that cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// An `s3://` server that cannot be used.
    #[cfg(feature = "s3")]
    #[error(transparent)]
    S3(#[from] crate::store::S3UrlError),
    /// A grid file that does not parse.
    #[error("grid file {0}")]
    GridFile(String),
    /// The same server given twice (it would hold two "independent" shares).
    #[error("server {0} is given more than once")]
    Duplicate(String),
    /// A directory could not be prepared.
    #[error("storage directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// An ordered set of servers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Grid {
    servers: Arc<[Server]>,
}

impl Grid {
    /// A grid of the given stores.
    pub fn new(stores: Vec<Arc<dyn ShareStore>>) -> Grid {
        Grid {
            servers: stores.into_iter().map(Server::new).collect(),
        }
    }

    /// Builds a grid server by server ([`GridBuilder`]).
    pub fn builder() -> GridBuilder {
        GridBuilder::default()
    }

    /// A grid of directory stores, created as needed; writes are durable.
    ///
    /// ```
    /// # fn main() -> Result<(), segvault::grid::GridError> {
    /// let root = tempfile::tempdir().unwrap();
    /// let grid = segvault::Grid::directories((0..4).map(|i| root.path().join(format!("disk{i}"))))?;
    /// assert_eq!(grid.len(), 4);
    /// # Ok(()) }
    /// ```
    pub fn directories<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Grid, GridError> {
        paths
            .into_iter()
            .fold(Grid::builder(), |grid, path| grid.directory(path))
            .build()
    }

    /// A grid of storage nodes (`http://host:port`), reached with default [`HttpOptions`](crate::store::HttpOptions).
    ///
    /// ```
    /// let grid = segvault::Grid::from_urls(["http://127.0.0.1:7001", "http://127.0.0.1:7002"]).unwrap();
    /// assert!(grid.is_remote());
    /// assert!(segvault::Grid::from_urls(["ftp://x"]).is_err());
    /// ```
    pub fn from_urls<U: AsRef<str>>(urls: impl IntoIterator<Item = U>) -> Result<Grid, GridError> {
        urls.into_iter()
            .fold(Grid::builder(), |grid, url| grid.url(url))
            .build()
    }

    /// The embedded grid in `data_dir`: the directories `grid/server-NN` there, at least
    /// [`EMBEDDED_SERVERS`] of them (created as needed). Writes are durable.
    pub fn embedded(data_dir: impl AsRef<Path>) -> Result<Grid, GridError> {
        Grid::embedded_with(data_dir.as_ref(), EMBEDDED_SERVERS, Durability::Fsync)
    }

    /// [`embedded`](Self::embedded) with at least `min_servers` directories (pass 0 to only
    /// attach what exists) and a choice of durability.
    pub fn embedded_with(
        data_dir: &Path,
        min_servers: usize,
        durability: Durability,
    ) -> Result<Grid, GridError> {
        let grid_dir = data_dir.join("grid");
        let mut numbers: Vec<usize> = match std::fs::read_dir(&grid_dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("server-")?
                        .parse()
                        .ok()
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(GridError::Directory {
                    path: grid_dir,
                    source,
                });
            }
        };
        numbers.extend(0..min_servers);
        numbers.sort_unstable();
        numbers.dedup();
        let mut stores: Vec<Arc<dyn ShareStore>> = Vec::with_capacity(numbers.len());
        for i in numbers {
            let path = grid_dir.join(format!("server-{i:02}"));
            let store = DirectoryStore::open_with(&path, durability)
                .map_err(|source| GridError::Directory { path, source })?;
            stores.push(Arc::new(store));
        }
        Ok(Grid::new(stores))
    }

    /// The servers, in order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Whether any server is across a network.
    pub fn is_remote(&self) -> bool {
        self.servers.iter().any(|s| s.store.is_remote())
    }

    /// The `k`-th smallest smoothed latency measured among the servers (the largest there
    /// is, if fewer are measured): what reading from the k fastest costs per round trip.
    /// `None` before any server was measured.
    pub fn kth_latency(&self, k: usize) -> Option<std::time::Duration> {
        let mut measured: Vec<std::time::Duration> = self
            .servers
            .iter()
            .filter_map(|s| s.health.latency().smoothed)
            .collect();
        measured.sort_unstable();
        measured.get(k.max(1) - 1).or(measured.last()).copied()
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the grid has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The server (index) for each of `n` shares of a file: servers are ranked by a hash of
    /// the storage index and their name, and share `i` goes to the server ranked `i mod S`.
    /// With `n <= S` every share lands on a different server; beyond that, servers take
    /// shares in turn.
    pub fn placement(&self, storage_index: &StorageIndex, n: u16) -> Vec<usize> {
        let all: Vec<usize> = (0..self.servers.len()).collect();
        self.placement_among(storage_index, n, &all)
    }

    /// [`placement`](Self::placement) over the servers `among` (indexes) only.
    pub fn placement_among(
        &self,
        storage_index: &StorageIndex,
        n: u16,
        among: &[usize],
    ) -> Vec<usize> {
        let mut ranked: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| i < self.servers.len())
            .collect();
        ranked
            .sort_by_cached_key(|&i| hash::placement_rank(&storage_index.0, &self.servers[i].name));
        if ranked.is_empty() {
            return Vec::new();
        }
        (0..usize::from(n))
            .map(|i| ranked[i % ranked.len()])
            .collect()
    }
}
