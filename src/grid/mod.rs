//! The set of storage servers a client talks to, and where an upload puts each share.
//!
//! The embedded grid is a set of directory stores inside the data directory
//! (`<data>/grid/server-00`, `server-01`, …), ten by default, more when a file asks for more
//! shares than there are servers.

pub mod health;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::cap::StorageIndex;
use crate::core::hash;
use crate::grid::health::ServerHealth;
use crate::store::{DirectoryStore, Durability, HttpOptions, HttpStore, ShareStore, UrlError};

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
pub enum GridError {
    /// A server URL that cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
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

/// A grid file (`--grid FILE`): the servers to use, and optionally the token file for them.
///
/// ```
/// # use std::path::Path;
/// # use segvault::grid::GridFile;
/// let text = r#"
/// ## Storage servers, in order: storage-node URLs or directories (relative to this file).
/// servers = ["http://10.0.0.5:7000", "http://10.0.0.6:7000", "disks/local"]
/// ## The nodes' access token, in a file of its own (relative to this file).
/// token_file = "token"
/// "#;
/// let grid = GridFile::parse(text, Path::new("/etc/segvault")).unwrap();
/// assert_eq!(grid.servers[2], "/etc/segvault/disks/local");
/// assert_eq!(grid.token_file.unwrap(), Path::new("/etc/segvault/token"));
/// assert!(GridFile::parse("servers = 3", Path::new("/")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridFile {
    /// Server specs, as `--server` takes them.
    pub servers: Vec<String>,
    /// File holding the storage nodes' token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl GridFile {
    /// Parses a grid file's text; relative paths are taken from `base` (the file's directory).
    pub fn parse(text: &str, base: &Path) -> Result<GridFile, GridError> {
        let mut file: GridFile =
            toml::from_str(text).map_err(|e| GridError::GridFile(e.message().to_owned()))?;
        for spec in &mut file.servers {
            if !spec.contains("://") && Path::new(spec.as_str()).is_relative() {
                *spec = base.join(&*spec).to_string_lossy().into_owned();
            }
        }
        if let Some(token) = &mut file.token_file
            && token.is_relative()
        {
            *token = base.join(&*token);
        }
        Ok(file)
    }

    /// Reads and parses a grid file.
    pub fn load(path: &Path) -> Result<GridFile, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Directory {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        GridFile::parse(&text, base).map_err(|e| match e {
            GridError::GridFile(why) => GridError::GridFile(format!("{}: {why}", path.display())),
            other => other,
        })
    }
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

    /// The embedded grid in `data_dir`, with at least `min_servers` directories (created as
    /// needed; pass 0 to only attach what exists). Writes are durable.
    pub fn embedded(data_dir: &Path, min_servers: usize) -> Result<Grid, GridError> {
        Grid::embedded_with(data_dir, min_servers, Durability::Fsync)
    }

    /// [`embedded`](Self::embedded) with a choice of durability.
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

    /// A grid from `--server` arguments: each a directory path (created for uploads when
    /// `create`) or a storage node's `http://host:port` URL (reached with `http`).
    ///
    /// ```
    /// # use segvault::grid::Grid;
    /// # use segvault::store::{Durability, HttpOptions};
    /// let specs = ["http://127.0.0.1:7001".to_string(), "http://127.0.0.1:7002".to_string()];
    /// let grid = Grid::from_specs(&specs, false, Durability::Fsync, &HttpOptions::default()).unwrap();
    /// assert_eq!(grid.len(), 2);
    /// assert!(Grid::from_specs(&["ftp://x".into()], false, Durability::Fsync, &HttpOptions::default()).is_err());
    /// ```
    pub fn from_specs(
        specs: &[String],
        create: bool,
        durability: Durability,
        http: &HttpOptions,
    ) -> Result<Grid, GridError> {
        let mut stores: Vec<Arc<dyn ShareStore>> = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.contains("://") {
                stores.push(Arc::new(HttpStore::new(spec, http.clone())?));
                continue;
            }
            let path = PathBuf::from(spec);
            let store = if create || path.is_dir() {
                DirectoryStore::open_with(&path, durability)
                    .map_err(|source| GridError::Directory { path, source })?
            } else {
                DirectoryStore::detached(path)
            };
            stores.push(Arc::new(store));
        }
        let mut names: Vec<&str> = stores.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(GridError::Duplicate(pair[0].to_owned()));
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
