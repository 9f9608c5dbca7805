//! Sinks: the only writers to PostgreSQL and ClickHouse. Each implements `runtime::sink::SinkStore`.
#![forbid(unsafe_code)]

pub mod audit_row;
pub mod clickhouse;
pub mod postgres;

pub use audit_row::AuditRow;
