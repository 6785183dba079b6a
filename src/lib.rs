//! segvault stores immutable files encrypted (AES-256-CTR) and erasure-coded (k of n
//! Reed–Solomon) across storage servers, and reads any byte range back by fetching,
//! verifying, decoding and decrypting only the segments the range touches.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use segvault::{Client, Grid, PutOptions, PutSource};
//!
//! let grid = Grid::embedded("/tmp/segvault-demo".as_ref(), 10)?;
//! let cap = segvault::put(&grid, PutSource::Bytes(b"hello, segments".to_vec()), &PutOptions::default()).await?;
//! let client = Client::new(grid, Default::default());
//! let file = client.open(&cap).await?;
//! assert_eq!(&file.read(7, 8).await?[..], b"segments");
//! # Ok(()) }
//! ```
//!
//! Layers, from the bottom: [`core`] (pure: geometry, planner, hash trees, codec, cipher,
//! formats), [`store`] (share stores), [`engine`] (per-file nodes, verified segment fetching,
//! reads and streams), [`upload`] (the encoder), and the `segvault` binary on top.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

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
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod upload;

pub use crate::core::cap::{Cap, ReadCap, StorageIndex, VerifyCap};
pub use engine::{Client, FileHandle, ReadError, ReaderConfig};
pub use grid::Grid;
pub use upload::{PutError, PutOptions, PutSource, put};
