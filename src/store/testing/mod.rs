//! Test doubles for share stores: a store that injects faults, and the conformance suite
//! every backend passes. Built with the `testing` feature (and in the crate's own tests).

pub mod conformance;
pub mod fault;
