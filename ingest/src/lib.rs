//! The HTTP edge: provider webhooks (declared adapters) and tenant API commands → Kafka. The pure part
//! (schemes, definitions, command decoding) lives in `riverbank-ingest-core`; this crate adds HTTP,
//! Postgres (deduplication, idempotency, API keys) and Kafka.
#![forbid(unsafe_code)]

pub mod commands;
pub mod keys;
pub mod openapi;
pub mod request;
pub mod sealing;
pub mod server;
pub mod store;
pub mod webhooks;

pub use riverbank_ingest_core as core;
pub use server::serve;
