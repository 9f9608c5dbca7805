//! ClickHouse: analytics and audit search. No transactions here, so: rows first, then positions;
//! tables are `ReplacingMergeTree` keyed on the event id (never on a time that a redelivery may
//! change) so a replayed row collapses onto the original, and every query counts each key once
//! (`FINAL`); months partition the data for time pruning. DDL and SQL run on ClickHouse 18.16 and on current releases.
use std::collections::HashMap;
use std::time::Duration;

use clickhouse::{Client, Row};
use riverbank_runtime::config::ClickHouseConfig;
use riverbank_runtime::sink::{Position, SinkStore, StoreError};
use riverbank_runtime::stores::{clickhouse_client, clickhouse_server_client};
use riverbank_schemas::{Environment, Topics};
use serde::{Deserialize, Serialize};

use crate::audit_row::{self, AuditRow};

pub const SINK_NAME: &str = "clickhouse";

/// Statements creating every table, in order. Idempotent (`IF NOT EXISTS`).
pub fn ddl() -> Vec<&'static str> {
    vec![
        "CREATE TABLE IF NOT EXISTS audit_events (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            actor String,
            action String,
            resource_type String,
            resource_id String,
            source_event_id UUID,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16,
            recorded_at DateTime('UTC'),
            payload_bytes UInt64,
            source_topic String,
            source_partition Int32,
            source_offset Int64,
            first_seen_rank UInt64
        ) ENGINE = ReplacingMergeTree(first_seen_rank)
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // The highest next_offset per key survives merges; readers take max() anyway.
        "CREATE TABLE IF NOT EXISTS sink_offsets (
            sink String,
            topic String,
            partition Int32,
            next_offset Int64
        ) ENGINE = ReplacingMergeTree(next_offset)
        ORDER BY (sink, topic, partition)",
    ]
}

/// Create the database and tables.
pub async fn create(cfg: &ClickHouseConfig) -> Result<(), clickhouse::error::Error> {
    clickhouse_server_client(cfg)
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))
        .execute()
        .await?;
    let c = clickhouse_client(cfg);
    for stmt in ddl() {
        c.query(stmt).execute().await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct AuditEventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    /// Enum8: 1 live, 2 sandbox.
    pub environment: i8,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub source_event_id: uuid::Uuid,
    /// Unix seconds (DateTime).
    pub occurred_at: u32,
    pub occurred_ms: u16,
    pub recorded_at: u32,
    pub payload_bytes: u64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Replacing version: highest for the earliest recorded copy, so when a provider redelivers an
    /// event (same id, later attempt time) the first copy survives, as it does in Postgres.
    pub first_seen_rank: u64,
}

fn enum8(env: Environment) -> i8 {
    match env {
        Environment::Live => 1,
        Environment::Sandbox => 2,
    }
}

fn unix_seconds(t: chrono::DateTime<chrono::Utc>) -> Result<u32, String> {
    u32::try_from(t.timestamp()).map_err(|_| format!("time {t} outside ClickHouse DateTime range"))
}

impl AuditEventRow {
    pub fn from_audit(r: &AuditRow) -> Result<Self, String> {
        let a = &r.record;
        Ok(AuditEventRow {
            event_id: a.audit_id,
            tenant_id: a.tenant_id.clone(),
            environment: enum8(a.environment),
            actor: a.actor.clone(),
            action: a.action.clone(),
            resource_type: a.resource_type.clone(),
            resource_id: a.resource_id.clone(),
            source_event_id: a.source_event_id,
            occurred_at: unix_seconds(a.occurred_at)?,
            occurred_ms: u16::try_from(a.occurred_at.timestamp_subsec_millis()).unwrap_or(999),
            recorded_at: unix_seconds(a.recorded_at)?,
            payload_bytes: a.payload_bytes,
            source_topic: r.source_topic.clone(),
            source_partition: r.source_partition,
            source_offset: r.source_offset,
            first_seen_rank: u64::MAX - u64::try_from(a.recorded_at.timestamp_millis()).unwrap_or(0),
        })
    }
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct OffsetRow {
    sink: String,
    topic: String,
    partition: i32,
    next_offset: i64,
}

pub struct ClickHouseAuditSink {
    client: Client,
    timeout: Duration,
}

impl ClickHouseAuditSink {
    pub fn new(cfg: &ClickHouseConfig) -> Self {
        ClickHouseAuditSink {
            client: clickhouse_client(cfg),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
        }
    }

    async fn insert<T: Row + Serialize + for<'a> Row<Value<'a> = T> + clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

async fn within<T, E: Into<StoreError>>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("clickhouse {what} timed out after {} ms", timeout.as_millis()).into()),
    }
}

impl SinkStore for ClickHouseAuditSink {
    type Row = AuditEventRow;

    fn name(&self) -> &'static str {
        SINK_NAME
    }

    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String> {
        vec![topics.audit_events(env)]
    }

    fn decode(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<Vec<AuditEventRow>, String> {
        audit_row::decode(topic, partition, offset, payload)?.iter().map(AuditEventRow::from_audit).collect()
    }

    async fn load_positions(&self, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        #[derive(Row, Deserialize)]
        struct P {
            partition: i32,
            next_offset: i64,
        }
        let q = self
            .client
            .query("SELECT partition, max(next_offset) AS next_offset FROM sink_offsets WHERE sink = ? AND topic = ? GROUP BY partition")
            .bind(SINK_NAME)
            .bind(topic);
        let rows: Vec<P> = within(self.timeout, "load positions", q.fetch_all::<P>()).await?;
        Ok(rows.into_iter().map(|p| (p.partition, p.next_offset)).collect())
    }

    async fn write(&self, rows: &[AuditEventRow], positions: &[Position]) -> Result<(), StoreError> {
        if !rows.is_empty() {
            within(self.timeout, "insert audit_events", self.insert("audit_events", rows)).await?;
        }
        let offsets: Vec<OffsetRow> = positions
            .iter()
            .map(|p| OffsetRow {
                sink: SINK_NAME.to_owned(),
                topic: p.topic.clone(),
                partition: p.partition,
                next_offset: p.next_offset,
            })
            .collect();
        if !offsets.is_empty() {
            within(self.timeout, "insert sink_offsets", self.insert("sink_offsets", &offsets)).await?;
        }
        Ok(())
    }
}
