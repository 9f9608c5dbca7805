//! PostgreSQL: operational truth. Rows and the sink's positions commit in one transaction.
use riverbank_runtime::sink::{Position, SinkStore, StoreError};
use riverbank_schemas::{Environment, Topics};
use sqlx::PgPool;
use std::collections::HashMap;

use crate::audit_row::{self, AuditRow};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub struct PostgresAuditSink {
    pool: PgPool,
}

impl PostgresAuditSink {
    pub fn new(pool: PgPool) -> Self {
        PostgresAuditSink { pool }
    }
}

pub const SINK_NAME: &str = "postgres";

impl SinkStore for PostgresAuditSink {
    type Row = AuditRow;

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
    ) -> Result<Vec<AuditRow>, String> {
        audit_row::decode(topic, partition, offset, payload)
    }

    async fn load_positions(&self, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let rows: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2")
                .bind(SINK_NAME)
                .bind(topic)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    async fn write(&self, rows: &[AuditRow], positions: &[Position]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if !rows.is_empty() {
            let mut cols = AuditColumns::with_capacity(rows.len());
            for r in rows {
                cols.push(r);
            }
            sqlx::query(
                "INSERT INTO audit_log (event_id, tenant_id, environment, actor, action, resource_type, resource_id,
                     source_event_id, occurred_at, recorded_at, trace_id, payload_bytes, source_topic,
                     source_partition, source_offset)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::uuid[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::int8[],
                     $13::text[], $14::int4[], $15::int8[])
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&cols.event_id)
            .bind(&cols.tenant_id)
            .bind(&cols.environment)
            .bind(&cols.actor)
            .bind(&cols.action)
            .bind(&cols.resource_type)
            .bind(&cols.resource_id)
            .bind(&cols.source_event_id)
            .bind(&cols.occurred_at)
            .bind(&cols.recorded_at)
            .bind(&cols.trace_id)
            .bind(&cols.payload_bytes)
            .bind(&cols.source_topic)
            .bind(&cols.source_partition)
            .bind(&cols.source_offset)
            .execute(&mut *tx)
            .await?;
        }
        store_positions(&mut tx, SINK_NAME, positions).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Upsert positions; a position only moves forward (a stale writer never moves it back).
pub async fn store_positions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sink: &str,
    positions: &[Position],
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = positions.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = positions.iter().map(|p| p.next_offset).collect();
    sqlx::query(
        "INSERT INTO sink_offsets (sink, topic, partition, next_offset)
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[])
         ON CONFLICT (sink, topic, partition) DO UPDATE
         SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind(sink)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Column arrays for one UNNEST insert.
struct AuditColumns {
    event_id: Vec<uuid::Uuid>,
    tenant_id: Vec<String>,
    environment: Vec<&'static str>,
    actor: Vec<String>,
    action: Vec<String>,
    resource_type: Vec<String>,
    resource_id: Vec<String>,
    source_event_id: Vec<uuid::Uuid>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    recorded_at: Vec<chrono::DateTime<chrono::Utc>>,
    trace_id: Vec<Option<String>>,
    payload_bytes: Vec<i64>,
    source_topic: Vec<String>,
    source_partition: Vec<i32>,
    source_offset: Vec<i64>,
}

impl AuditColumns {
    fn with_capacity(n: usize) -> Self {
        AuditColumns {
            event_id: Vec::with_capacity(n),
            tenant_id: Vec::with_capacity(n),
            environment: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            resource_type: Vec::with_capacity(n),
            resource_id: Vec::with_capacity(n),
            source_event_id: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
            trace_id: Vec::with_capacity(n),
            payload_bytes: Vec::with_capacity(n),
            source_topic: Vec::with_capacity(n),
            source_partition: Vec::with_capacity(n),
            source_offset: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: &AuditRow) {
        let a = &r.record;
        self.event_id.push(a.audit_id);
        self.tenant_id.push(a.tenant_id.clone());
        self.environment.push(a.environment.as_str());
        self.actor.push(a.actor.clone());
        self.action.push(a.action.clone());
        self.resource_type.push(a.resource_type.clone());
        self.resource_id.push(a.resource_id.clone());
        self.source_event_id.push(a.source_event_id);
        self.occurred_at.push(a.occurred_at);
        self.recorded_at.push(a.recorded_at);
        self.trace_id.push(a.trace_id.clone());
        // Checked in decode: fits in i64.
        self.payload_bytes.push(i64::try_from(a.payload_bytes).unwrap_or(i64::MAX));
        self.source_topic.push(r.source_topic.clone());
        self.source_partition.push(r.source_partition);
        self.source_offset.push(r.source_offset);
    }
}
