//! Pieces of the `riverbank` binary that tests and benchmarks reuse.
#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
pub mod dlq;
pub mod reconcile;
pub mod workload;
