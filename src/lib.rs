//! Pieces of the `riverbank` binary that tests and benchmarks reuse.
#![forbid(unsafe_code)]

pub mod audit_verify;
pub mod bench;
pub mod bench_billing;
pub mod bench_fx;
pub mod bench_live;
pub mod bench_peer;
pub mod bench_pipeline;
pub mod bench_risk;
pub mod bench_state;
pub mod demo;
pub mod dlq;
pub mod loadgen;
pub mod money_loop;
pub mod reconcile;
pub mod registry;
pub mod risk;
pub mod workload;
