//! The HTTP edge: provider webhooks (and, later, tenant API commands) → Kafka.
#![forbid(unsafe_code)]

pub mod server;
pub mod standard_webhooks;

pub use server::serve;
