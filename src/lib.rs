//! Pieces of the `riverbank` binary that tests and benchmarks reuse.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_state;
pub mod demo;
pub mod dlq;
pub mod reconcile;
pub mod money_loop;
pub mod registry;
pub mod workload;
pub mod risk;
