//! The pure core: segment geometry, planning, hash trees, erasure code, cipher and wire
//! formats, all on byte slices. Nothing here does I/O or knows about tokio; the fuzz targets
//! and property tests drive it directly.

pub mod cache_entry;
pub mod cap;
pub mod cap_list;
pub mod choice;
pub mod cipher;
pub mod codec;
pub mod erasure;
pub mod geometry;
pub mod hash;
pub mod layout;
pub mod planner;
pub mod range;
pub mod share_header;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod synthetic;
pub mod text;
pub mod tree;
pub mod ueb;
pub mod verifier;
