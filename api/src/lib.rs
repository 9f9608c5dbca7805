//! The read side: operational reads from PostgreSQL, analytics from ClickHouse, health.
//! Reads only: the API never writes to a database (sinks do).
#![forbid(unsafe_code)]

pub mod live;
pub mod server;

pub use server::serve;
