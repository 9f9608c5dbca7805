use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use clickhouse::Row;
use riverbank_runtime::config::{is_tenant_id, Config, KafkaConfig};
use riverbank_runtime::http::{within, HttpError, InFlight};
use riverbank_runtime::stores::{clickhouse_client, postgres_pool};
use riverbank_runtime::{kafka, CancellationToken};
use riverbank_schemas::Environment;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub struct Api {
    pg: PgPool,
    ch: clickhouse::Client,
    kafka: KafkaConfig,
    page_rows_max: u32,
    request_timeout: Duration,
    in_flight: InFlight,
}

impl Api {
    /// Connects lazily: the API starts (and reports unhealthy) while a database is still down.
    pub async fn new(cfg: &Config) -> anyhow::Result<Api> {
        Ok(Api {
            pg: postgres_pool(&cfg.postgres, true).await?,
            ch: clickhouse_client(&cfg.clickhouse),
            kafka: cfg.kafka.clone(),
            page_rows_max: cfg.api.page_rows_max,
            request_timeout: Duration::from_millis(cfg.api.request_timeout_ms),
            in_flight: InFlight::new(cfg.api.in_flight_requests_max, 1),
        })
    }
}

pub fn router(state: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/audit", get(audit))
        .route("/v1/analytics/audit-volume", get(audit_volume))
        .route("/health", get(health))
        .with_state(state)
}

pub async fn serve(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = Arc::new(Api::new(cfg).await?);
    let listener = tokio::net::TcpListener::bind(cfg.api.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

/// Run a read under the in-flight and time limits.
async fn guarded<T: Serialize>(
    s: &Api,
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Response {
    let _permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match within(s.request_timeout, work).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

fn live() -> Environment {
    Environment::Live
}

fn check_tenant(tenant_id: &str) -> Result<(), HttpError> {
    if is_tenant_id(tenant_id) {
        Ok(())
    } else {
        Err(HttpError::bad_request(
            "invalid_tenant",
            "tenant_id must be 1-64 of ASCII letters, digits, '-', '_'",
        ))
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    event_id: uuid::Uuid,
    actor: String,
    action: String,
    resource_type: String,
    resource_id: String,
    source_event_id: uuid::Uuid,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    trace_id: Option<String>,
    payload_bytes: i64,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    tenant_id: String,
    environment: Environment,
    records: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Cursor text: `<occurred_at unix micros>_<event_id>`.
fn parse_cursor(text: &str) -> Result<(DateTime<Utc>, uuid::Uuid), HttpError> {
    let bad = || HttpError::bad_request("invalid_cursor", "after must be a next_cursor from a previous page");
    let (micros, id) = text.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

async fn audit(State(s): State<Arc<Api>>, Query(q): Query<TenantQuery>) -> Response {
    let s2 = s.clone();
    guarded(&s, async move {
        check_tenant(&q.tenant_id)?;
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > s2.page_rows_max {
            return Err(HttpError::bad_request("invalid_limit", format!("limit must be 1..={}", s2.page_rows_max)));
        }
        let (after_at, after_id) = match &q.after {
            Some(c) => {
                let (at, id) = parse_cursor(c)?;
                (Some(at), Some(id))
            }
            None => (None, None),
        };
        let records: Vec<AuditEntry> = sqlx::query_as(
            "SELECT event_id, actor, action, resource_type, resource_id, source_event_id, occurred_at, recorded_at,
                    trace_id, payload_bytes
             FROM audit_log
             WHERE tenant_id = $1 AND environment = $2
               AND ($3::timestamptz IS NULL OR (occurred_at, event_id) > ($3, $4::uuid))
             ORDER BY occurred_at, event_id
             LIMIT $5",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let next_cursor = (records.len() == limit as usize)
            .then(|| records.last().map(|r| format!("{}_{}", r.occurred_at.timestamp_micros(), r.event_id)))
            .flatten();
        Ok(AuditPage { tenant_id: q.tenant_id, environment: q.environment, records, next_cursor })
    })
    .await
}

fn database_error(store: &'static str, e: &dyn std::fmt::Display) -> HttpError {
    let trace_id = uuid::Uuid::new_v4();
    tracing::warn!(%trace_id, store, error = %e, "read failed");
    HttpError::unavailable("store_unavailable", format!("{store} is unavailable; trace id {trace_id}"), 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

#[derive(Debug, Row, Deserialize)]
struct HourRow {
    hour: u32,
    events: u64,
    payload_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct HourVolume {
    hour: DateTime<Utc>,
    events: u64,
    payload_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Volume {
    tenant_id: String,
    environment: Environment,
    hours: Vec<HourVolume>,
}

async fn audit_volume(State(s): State<Arc<Api>>, Query(q): Query<VolumeQuery>) -> Response {
    let s2 = s.clone();
    guarded(&s, async move {
        check_tenant(&q.tenant_id)?;
        // FINAL collapses rows a replay wrote twice, so each audit event counts once.
        let rows: Vec<HourRow> = s2
            .ch
            .query(
                "SELECT toUInt32(toStartOfHour(occurred_at)) AS hour, toUInt64(count()) AS events,
                        toUInt64(sum(payload_bytes)) AS payload_bytes
                 FROM audit_events FINAL
                 WHERE tenant_id = ? AND environment = ?
                 GROUP BY hour ORDER BY hour",
            )
            .bind(&q.tenant_id)
            .bind(q.environment.as_str())
            .fetch_all()
            .await
            .map_err(|e| database_error("clickhouse", &e))?;
        let hours = rows
            .into_iter()
            .map(|r| HourVolume {
                hour: DateTime::from_timestamp(i64::from(r.hour), 0).unwrap_or_default(),
                events: r.events,
                payload_bytes: r.payload_bytes,
            })
            .collect();
        Ok(Volume { tenant_id: q.tenant_id, environment: q.environment, hours })
    })
    .await
}

async fn health(State(s): State<Arc<Api>>) -> Response {
    let (broker, pg, ch) = tokio::join!(
        kafka::ping(&s.kafka),
        tokio::time::timeout(s.request_timeout, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&s.pg)),
        tokio::time::timeout(s.request_timeout, s.ch.query("SELECT 1").execute()),
    );
    let status = |ok: bool, err: Option<String>| match err {
        None if ok => serde_json::json!({"status": "ok"}),
        e => serde_json::json!({"status": "down", "error": e.unwrap_or_else(|| "timed out".into())}),
    };
    let broker = match broker {
        Ok(_) => status(true, None),
        Err(e) => status(false, Some(e.to_string())),
    };
    let pg = match pg {
        Ok(Ok(_)) => status(true, None),
        Ok(Err(e)) => status(false, Some(e.to_string())),
        Err(_) => status(false, None),
    };
    let ch = match ch {
        Ok(Ok(())) => status(true, None),
        Ok(Err(e)) => status(false, Some(e.to_string())),
        Err(_) => status(false, None),
    };
    let all_ok = [&broker, &pg, &ch].iter().all(|d| d["status"] == "ok");
    let body = serde_json::json!({
        "status": if all_ok { "ok" } else { "degraded" },
        "dependencies": { "broker": broker, "postgres": pg, "clickhouse": ch },
    });
    let code = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}
