//! Sinks: the only writers to PostgreSQL and ClickHouse. Each implements `runtime::sink::SinkStore`.
#![forbid(unsafe_code)]

pub mod clickhouse;
pub mod postgres;
pub mod rows;

pub use rows::Row;
