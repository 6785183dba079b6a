//! Building a grid server by server: directories, storage-node URLs, stores of your own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Grid, GridError};
use crate::store::{DirectoryStore, Durability, HttpOptions, HttpStore, ShareStore};

/// Builds a [`Grid`]: servers in the order added (the order decides nothing but names; where
/// a file's shares go comes from its storage index).
///
/// ```
/// # fn main() -> Result<(), segvault::grid::GridError> {
/// use segvault::store::Durability;
/// let root = tempfile::tempdir().unwrap();
/// let grid = segvault::Grid::builder()
///     .directory(root.path().join("a"))
///     .directory(root.path().join("b"))
///     .url("http://127.0.0.1:7001")
///     .durability(Durability::Rename)
///     .build()?;
/// assert_eq!(grid.len(), 3);
/// # Ok(()) }
/// ```
#[derive(Default, Clone)]
pub struct GridBuilder {
    servers: Vec<Spec>,
    durability: Durability,
    http: HttpOptions,
    attach_only: bool,
}

#[derive(Clone)]
enum Spec {
    Directory(PathBuf),
    Url(String),
    #[cfg(feature = "s3")]
    S3(String, crate::store::S3Options),
    Store(Arc<dyn ShareStore>),
}

impl fmt::Debug for GridBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GridBuilder")
            .field("servers", &self.servers.len())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl GridBuilder {
    /// A directory store (created when the grid is built, unless
    /// [`attach_only`](Self::attach_only)).
    pub fn directory(mut self, path: impl AsRef<Path>) -> GridBuilder {
        self.servers
            .push(Spec::Directory(path.as_ref().to_path_buf()));
        self
    }

    /// A storage node, `http://host:port`.
    pub fn url(mut self, url: impl AsRef<str>) -> GridBuilder {
        self.servers.push(Spec::Url(url.as_ref().to_owned()));
        self
    }

    /// A bucket, `s3://BUCKET[/PREFIX]`, reached as `options` and the AWS environment say
    /// ([`S3Store`](crate::store::S3Store)).
    #[cfg(feature = "s3")]
    pub fn s3(mut self, url: impl AsRef<str>, options: crate::store::S3Options) -> GridBuilder {
        self.servers
            .push(Spec::S3(url.as_ref().to_owned(), options));
        self
    }

    /// A server as the command line's `--server` takes it: `s3://` a bucket (with the
    /// `s3` feature), another URL a storage node, anything else a directory.
    pub fn spec(self, spec: impl AsRef<str>) -> GridBuilder {
        let spec = spec.as_ref();
        #[cfg(feature = "s3")]
        if spec.starts_with("s3://") {
            return self.s3(spec, crate::store::S3Options::default());
        }
        if spec.contains("://") {
            self.url(spec)
        } else {
            self.directory(spec)
        }
    }

    /// A store of your own (any [`ShareStore`]).
    pub fn store(mut self, store: Arc<dyn ShareStore>) -> GridBuilder {
        self.servers.push(Spec::Store(store));
        self
    }

    /// Whether directory stores fsync what they write (default: they do).
    pub fn durability(mut self, durability: Durability) -> GridBuilder {
        self.durability = durability;
        self
    }

    /// How storage nodes are reached (token, spool directory, time limits).
    pub fn http_options(mut self, options: HttpOptions) -> GridBuilder {
        self.http = options;
        self
    }

    /// Directories that do not exist are not created: they read as empty servers and refuse
    /// writes (what a reader wants from a mistyped path).
    pub fn attach_only(mut self, attach_only: bool) -> GridBuilder {
        self.attach_only = attach_only;
        self
    }

    /// The grid. Fails on a URL it cannot use, a directory it cannot prepare, or the same
    /// server given twice (it would hold two "independent" shares).
    pub fn build(self) -> Result<Grid, GridError> {
        let mut stores: Vec<Arc<dyn ShareStore>> = Vec::with_capacity(self.servers.len());
        for spec in self.servers {
            let store: Arc<dyn ShareStore> = match spec {
                Spec::Url(url) => Arc::new(HttpStore::new(&url, self.http.clone())?),
                #[cfg(feature = "s3")]
                Spec::S3(url, options) => Arc::new(crate::store::S3Store::new(&url, &options)?),
                Spec::Directory(path) if self.attach_only && !path.is_dir() => {
                    Arc::new(DirectoryStore::detached(path))
                }
                Spec::Directory(path) => Arc::new(
                    DirectoryStore::open_with(&path, self.durability)
                        .map_err(|source| GridError::Directory { path, source })?,
                ),
                Spec::Store(store) => store,
            };
            stores.push(store);
        }
        let mut names: Vec<&str> = stores.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(GridError::Duplicate(pair[0].to_owned()));
        }
        Ok(Grid::new(stores))
    }
}
