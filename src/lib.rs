//! temp
pub mod core;
pub mod fuzzing;
pub mod grid;
pub mod size;
pub mod store;
