//! [`Vault`]: the one handle a program needs to store files on a grid and read them back.

use std::sync::Arc;

use bytes::Bytes;

use crate::cache::DiskCache;
use crate::core::cap::{ReadCap, VerifyCap};
use crate::core::range::GetRange;
use crate::engine::{Client, FileHandle, ReadError, ReaderConfig};
use crate::grid::Grid;
use crate::upload::{PutError, PutOptions, PutSource, put};

/// Writes files to a grid and reads them back. Cheap to clone: clones share their open files
/// (each file's verified metadata is fetched once, whoever reads it).
///
/// Every method is `async` and runs on a [tokio](https://tokio.rs) runtime, best a
/// multi-threaded one (a read's segments are fetched and decoded as tasks over the cores; an
/// upload encodes on a thread of its own).
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use segvault::{GetRange, Grid, Vault};
/// let dir = tempfile::tempdir()?;
/// let vault = Vault::new(Grid::embedded(dir.path())?);
/// let cap = vault.put(b"hello, segments".to_vec()).await?;
/// let file = vault.open(&cap).await?;
/// assert_eq!(&file.read(7..15).await?[..], b"segments");
/// assert_eq!(&file.read(GetRange::Suffix(4)).await?[..], b"ents");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Vault {
    client: Client,
    put_options: Arc<PutOptions>,
}

impl Vault {
    /// A vault over `grid` with default settings: files stored 3-of-10
    /// ([`PutOptions::default`]), read with [`ReaderConfig::default`].
    pub fn new(grid: Grid) -> Vault {
        Vault::with_client(Client::new(grid, ReaderConfig::default()))
    }

    /// A vault over `grid` that reads with `config`.
    pub fn with_config(grid: Grid, config: ReaderConfig) -> Vault {
        Vault::with_client(Client::new(grid, config))
    }

    /// A vault that reads through `cache` (verified ciphertext blocks on local disk).
    pub fn with_cache(grid: Grid, config: ReaderConfig, cache: Arc<DiskCache>) -> Vault {
        Vault::with_client(Client::with_cache(grid, config, cache))
    }

    /// A vault reading through an existing client (sharing its open files).
    pub fn with_client(client: Client) -> Vault {
        Vault {
            client,
            put_options: Arc::new(PutOptions::default()),
        }
    }

    /// The same vault, storing files with `options` ([`put`](Self::put)).
    pub fn put_options(mut self, options: PutOptions) -> Vault {
        self.put_options = Arc::new(options);
        self
    }

    /// Stores a file: encrypts it under a fresh key, erasure-codes it and places the shares
    /// on the grid. The returned cap is the only way to read it back, and a secret.
    ///
    /// `source` is bytes (`Vec<u8>`, `&[u8]`, [`Bytes`]), a path (`&Path`, `PathBuf`), or a
    /// stream ([`PutSource::reader`] for any `AsyncRead`).
    pub async fn put(&self, source: impl Into<PutSource>) -> Result<ReadCap, PutError> {
        self.put_with(source, &self.put_options).await
    }

    /// [`put`](Self::put) with options for this file alone.
    pub async fn put_with(
        &self,
        source: impl Into<PutSource>,
        options: &PutOptions,
    ) -> Result<ReadCap, PutError> {
        put(self.client.grid(), source.into(), options).await
    }

    /// Opens a file: finds its shares and verifies its metadata (once while it stays open).
    pub async fn open(&self, cap: &ReadCap) -> Result<FileHandle, ReadError> {
        self.client.open(cap).await
    }

    /// Reads `range` of a file in one buffer (see [`FileHandle::read`]).
    pub async fn read(
        &self,
        cap: &ReadCap,
        range: impl Into<GetRange>,
    ) -> Result<Bytes, ReadError> {
        self.open(cap).await?.read(range).await
    }

    /// Checks every share of a file against its verify cap, without decrypting
    /// (what `segvault verify` prints).
    pub async fn verify(&self, cap: &VerifyCap) -> crate::engine::audit::VerifyReport {
        crate::engine::audit::verify(self.client.grid(), cap, self.client.config(), None).await
    }

    /// The grid.
    pub fn grid(&self) -> &Grid {
        self.client.grid()
    }

    /// The reading client (its metrics, cache, and ciphertext-level access).
    pub fn client(&self) -> &Client {
        &self.client
    }
}
