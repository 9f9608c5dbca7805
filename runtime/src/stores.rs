//! Database clients built from config, shared by the sinks (writers) and the API (reader).
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::{ClickHouseConfig, PostgresConfig};

/// A Postgres pool bounded by config, with a statement timeout on every connection.
/// `lazy`: connect on first use, so a component starts (and reports unhealthy) while Postgres is down.
pub async fn postgres_pool(cfg: &PostgresConfig, lazy: bool) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = cfg.url.expose().parse()?;
    let options = options.options([("statement_timeout", cfg.statement_timeout_ms.to_string())]);
    let pool = PgPoolOptions::new()
        .max_connections(cfg.pool_connections_max)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms));
    if lazy {
        Ok(pool.connect_lazy_with(options))
    } else {
        pool.connect_with(options).await
    }
}

/// A ClickHouse client for the configured database. Validation (RowBinaryWithNamesAndTypes) is a
/// config switch: on for modern servers, off for 18.x which lacks that format.
pub fn clickhouse_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse_server_client(cfg).with_database(&cfg.database)
}

/// The same client without a database (to create it).
pub fn clickhouse_server_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
        .with_validation(cfg.validation)
}
