//! segvault stores immutable files encrypted (AES-256-CTR) and erasure-coded (k of n
//! Reed–Solomon) across storage servers, and reads any byte range back by fetching,
//! verifying, decoding and decrypting only the segments the range touches. Any k of the n
//! servers suffice; every byte handed out was first verified against the file's cap.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use segvault::{GetRange, Grid, Vault};
//!
//! let dir = tempfile::tempdir()?;
//! let vault = Vault::new(Grid::embedded(dir.path())?); // ten directories; or Grid::from_urls
//! let cap = vault.put(b"hello, segments".to_vec()).await?;
//! let file = vault.open(&cap).await?;
//! assert_eq!(&file.read(7..15).await?[..], b"segments");
//! assert_eq!(&file.read(GetRange::Suffix(4)).await?[..], b"ents");
//! # Ok(()) }
//! ```
//!
//! # Runtime
//! The API is async and runs on a [tokio](https://tokio.rs) runtime (`#[tokio::main]`, or
//! `tokio::runtime::Runtime::new()`). A multi-threaded one is what it is built for: a read's
//! segments are fetched, verified and decoded as tasks spread over the cores; on a
//! current-thread runtime they take turns on one. Uploads encode on a thread of their own.
//!
//! # Layers
//! From the bottom: [`core`] (pure: geometry, planner, hash trees, the verifier, codec,
//! cipher, formats; no I/O), [`store`] (where shares live: directories, storage nodes, your
//! own [`ShareStore`](store::ShareStore)), [`grid`] (the servers a client uses and their
//! health), [`engine`] (per-file nodes, verified segment fetching, reads and streams),
//! [`upload`] (the encoder), [`cache`] (verified ciphertext on local disk), and [`Vault`] over
//! them. With features: `server` (the HTTP loop), `gateway`, `node`, and the
//! `segvault` binary. `docs/architecture.md` draws the layers.
//!
//! # Features
//! - `cli`, `gateway`, `node` (default): the `segvault` binary, the HTTP gateway and the
//!   storage node. With `default-features = false` the crate is a library that writes and
//!   reads files on directories and storage nodes (an HTTP client, no server).
//! - `metrics`: OpenMetrics export of the counters (on with `gateway`).
//! - `grid-file`: the TOML grid file (on with `cli`).
//! - `testing`: test doubles, a fault-injecting store and the `ShareStore` conformance suite.
//! - `fuzzing`: the fuzz harnesses.
//!
//! # Platforms
//! Unix only (Linux is what is tested): shares are written with positioned I/O and atomic
//! renames, caches and spools rely on `flock` and Unix permissions.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

#[cfg(not(unix))]
compile_error!("segvault runs on Unix (Linux, macOS, the BSDs)");

pub mod body;
pub mod cache;
pub mod core;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod grid;
pub mod metrics;
#[cfg(feature = "node")]
pub mod node;
pub mod repair;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod tls;
pub mod upload;
mod vault;

pub use crate::core::cap::{Cap, ReadCap, StorageIndex, VerifyCap};
pub use crate::core::range::GetRange;
pub use engine::{ByteStream, Client, FileHandle, FileReader, ReadError, ReaderConfig};
pub use grid::Grid;
pub use upload::{PutError, PutOptions, PutSource};
pub use vault::Vault;
