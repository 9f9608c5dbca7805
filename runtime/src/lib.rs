//! Shared plumbing: config, Kafka clients, the processor and sink loops, telemetry, shutdown, HTTP errors.
#![forbid(unsafe_code)]

pub mod apikeys;
pub mod audit;
pub mod backoff;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod dead_letter;
pub mod engine;
pub mod http;
pub mod kafka;
pub mod keystore;
pub mod process;
pub mod produce;
pub mod registry;
pub mod router;
pub mod shutdown;
pub mod sink;
pub mod stores;
pub mod telemetry;
pub mod watermark;

pub use config::{Config, Secret};
pub use tokio_util::sync::CancellationToken;
