use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use clickhouse::Row;
use riverbank_runtime::apikeys::KeyCache;
use riverbank_runtime::config::{is_tenant_id, Config, KafkaConfig};
use riverbank_runtime::http::{within, HttpError, InFlight};
use riverbank_runtime::stores::{clickhouse_client, postgres_pool};
use riverbank_runtime::{kafka, CancellationToken};
use riverbank_schemas::roles::Role;
use riverbank_schemas::Environment;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The query string as `T`; a string that does not read (a missing, unknown or repeated parameter, a
/// bad value) is a 400 `invalid_query` in the one error shape, never axum's plain-text rejection.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, HttpError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| HttpError::bad_request("invalid_query", e.body_text()))
    }
}

pub mod analytics;
mod audit;
mod fx_billing;
pub mod openapi;
mod personal;
mod risk;

pub struct Api {
    pg: PgPool,
    ch: clickhouse::Client,
    kafka: KafkaConfig,
    page_rows_max: u32,
    request_timeout: Duration,
    in_flight: InFlight,
    keys: KeyCache,
    require_api_key: bool,
    audit: audit::AuditReads,
    personal: personal::PersonalReads,
    /// The live component; `None` with `[live] enabled = false`.
    live: Option<Arc<crate::live::Live>>,
}

impl Api {
    /// Connects lazily: the API starts (and reports unhealthy) while a database is still down.
    pub async fn new(cfg: &Config) -> anyhow::Result<Api> {
        let pg = postgres_pool(&cfg.postgres, true).await?;
        Ok(Api {
            personal: personal::PersonalReads::new(cfg, pg.clone())?,
            pg,
            ch: clickhouse_client(&cfg.clickhouse),
            kafka: cfg.kafka.clone(),
            page_rows_max: cfg.api.page_rows_max,
            request_timeout: Duration::from_millis(cfg.api.request_timeout_ms),
            in_flight: InFlight::new(cfg.api.in_flight_requests_max, 1),
            keys: KeyCache::new(
                Duration::from_millis(cfg.api.api_key_cache_ttl_ms),
                cfg.api.api_key_cache_entries_max,
                1,
            ),
            require_api_key: cfg.api.require_api_key,
            audit: audit::AuditReads::new(cfg)?,
            live: None,
        })
    }

    /// A read of `tenant_id`'s data in `env`. With a key, it must be that tenant's key for that
    /// environment, of a role that reads (not a rates feed); without one, only where
    /// `api.require_api_key` is off (a trusted network).
    async fn authorize(
        &self,
        headers: &HeaderMap,
        tenant_id: &str,
        env: Environment,
    ) -> Result<(), HttpError> {
        self.authorize_key(headers, tenant_id, env).await.map(|_| ())
    }

    /// [`Self::authorize`], answering the key presented (none on a trusted network without keys).
    async fn authorize_key(
        &self,
        headers: &HeaderMap,
        tenant_id: &str,
        env: Environment,
    ) -> Result<Option<riverbank_runtime::apikeys::ApiKey>, HttpError> {
        self.authorize_for(headers, tenant_id, env, Readers::Tenant).await
    }

    /// [`Self::authorize_key`] for a read that `readers` may make.
    async fn authorize_for(
        &self,
        headers: &HeaderMap,
        tenant_id: &str,
        env: Environment,
        readers: Readers,
    ) -> Result<Option<riverbank_runtime::apikeys::ApiKey>, HttpError> {
        check_tenant(tenant_id)?;
        if !KeyCache::presented(headers) {
            if self.require_api_key {
                return Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "send Authorization: Bearer <api key>",
                ));
            }
            return Ok(None);
        }
        let key = self.keys.authenticate(&self.pg, headers).await?;
        let platform = readers == Readers::TenantOrPlatform && key.tenant_id == PLATFORM_TENANT;
        if key.tenant_id != tenant_id && !platform {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "wrong_tenant",
                "this key reads only its own tenant's data",
            ));
        }
        if key.environment != env {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "wrong_environment",
                format!("this key is for {}; it can never read {env}", key.environment),
            ));
        }
        if key.role == Role::RatesPublisher {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden_role",
                "a rates feed reads no tenant data",
            ));
        }
        Ok(Some(key))
    }
}

pub fn router(state: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/audit", get(audit::search))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/audit/keys", get(audit::keys))
        .route("/v1/audit/{audit_id}/proof", get(audit::proof))
        .route("/v1/users/{user_id}/consents", get(audit::consents))
        .route("/v1/analytics/audit-volume", get(audit_volume))
        .route("/v1/analytics/transfer-volume", get(transfer_volume))
        .route("/v1/transfers/{transfer_id}", get(transfer))
        .route("/v1/balances", get(balances))
        .route("/v1/risk/reviews", get(risk::reviews))
        .route("/v1/risk/decisions", get(risk::decisions))
        .route("/v1/risk/shadow/diff", get(risk::shadow_diff))
        .route("/v1/users/{user_id}/kyc", get(user_kyc))
        .route("/v1/users/{user_id}/personal-data", get(personal::read))
        .route("/v1/fx/quotes/{quote_id}", get(fx_billing::quote))
        .route("/v1/fx/conversions/{conversion_id}", get(fx_billing::conversion))
        .route("/v1/fx/rates", get(fx_billing::rates))
        .route("/v1/invoices", get(fx_billing::invoices))
        .route("/v1/invoices/{invoice_id}", get(fx_billing::invoice))
        .route("/v1/fees", get(fx_billing::fees))
        .route("/v1/analytics/fee-revenue", get(fx_billing::fee_revenue))
        .route("/v1/analytics/fx-volume", get(fx_billing::fx_volume))
        .route("/v1/analytics/transfers", get(analytics::transfers))
        .route("/v1/analytics/risk-outcomes", get(analytics::risk_outcomes))
        .route("/v1/analytics/kyc-funnel", get(analytics::kyc_funnel))
        .route("/v1/analytics/transfer-latency", get(analytics::transfer_latency))
        .route("/v1/analytics/rejections", get(analytics::rejections))
        .route("/v1/live", get(live_stream))
        .route("/", get(crate::live::page::root))
        .route("/dashboard", get(crate::live::page::page))
        .route("/dashboard/{file}", get(crate::live::page::asset))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::serve))
        .fallback(riverbank_runtime::http::not_found)
        .method_not_allowed_fallback(riverbank_runtime::http::method_not_allowed)
        .with_state(state)
}

pub async fn serve(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut api = Api::new(cfg).await?;
    api.live = crate::live::Live::start(cfg, api.pg.clone(), api.ch.clone(), shutdown.clone());
    let state = Arc::new(api);
    let listener = tokio::net::TcpListener::bind(cfg.api.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    riverbank_runtime::http::serve(listener, router(state), cfg.api.server_limits(), shutdown).await?;
    Ok(())
}

/// The tenant whose keys operate the platform (`riverbank keys create --tenant platform`): its keys
/// may read any tenant's analytics and the platform view of `GET /v1/live`, and nothing else of a
/// tenant's (operational reads, personal data and the audit trail stay the tenant's own).
pub const PLATFORM_TENANT: &str = riverbank_runtime::audit::PLATFORM_TENANT;

/// Whose keys may make a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readers {
    /// The tenant's own keys only.
    Tenant,
    /// The tenant's own, and the platform's (analytics).
    TenantOrPlatform,
}

/// Run a read under the in-flight and time limits.
/// Every tenant read goes through here, so none can skip the key check: the in-flight limit, then
/// within the time limit the authorization of (tenant, environment), then `work`.
async fn guarded<T: Serialize>(
    s: &Api,
    headers: &HeaderMap,
    scope: (&str, Environment),
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Response {
    guarded_for(s, headers, scope, Readers::Tenant, work).await
}

/// [`guarded`] for a read `readers` may make.
async fn guarded_for<T: Serialize>(
    s: &Api,
    headers: &HeaderMap,
    (tenant_id, env): (&str, Environment),
    readers: Readers,
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Response {
    let _permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let authorized = async {
        s.authorize_for(headers, tenant_id, env, readers).await?;
        work.await
    };
    match within(s.request_timeout, authorized).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// A tenant's view, or `platform` (a key of the platform tenant) for every tenant's.
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

/// `GET /v1/live`: the live stream (Server-Sent Events) of a tenant's view, or of the platform's.
async fn live_stream(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<LiveQuery>,
) -> Response {
    let Some(live) = &s.live else {
        return HttpError::unavailable("live_off", "the live component is off ([live] enabled = false)", 60)
            .into_response();
    };
    if let Err(e) = within(s.request_timeout, s.authorize(&headers, &q.tenant_id, q.environment)).await {
        return e.into_response();
    }
    let platform = q.tenant_id == PLATFORM_TENANT;
    let view =
        crate::live::hub::View { tenant: (!platform).then(|| q.tenant_id.clone()), env: q.environment };
    match live.stream(view, crate::live::last_event_id(&headers)) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
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

fn database_error(store: &'static str, e: &dyn std::fmt::Display) -> HttpError {
    let trace_id = uuid::Uuid::new_v4();
    tracing::warn!(%trace_id, store, error = %e, "read failed");
    HttpError::unavailable("store_unavailable", format!("{store} is unavailable; trace id {trace_id}"), 1)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct HourVolume {
    hour: DateTime<Utc>,
    events: u64,
    payload_bytes: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Volume {
    tenant_id: String,
    environment: Environment,
    /// Every event ingested before this instant has landed in ClickHouse: hours ending before it are
    /// complete; later ones may still grow. Absent until the sink has landed something.
    complete_through: Option<DateTime<Utc>>,
    hours: Vec<HourVolume>,
}

/// The ClickHouse sink's complete-through watermark for `topics`: the least, over every partition of
/// each topic, of the instant through which that partition has landed everything ingested before it
/// (runtime/src/watermark.rs derives it from log positions, upstream processors included). `None` while
/// any partition has no value yet: a partition is never left out.
/// How many partitions of a topic the ClickHouse sink has a watermark for, and the least of them.
/// Placeholder: the topic.
const COMPLETE_THROUGH_SQL: &str = "SELECT toUInt64(count()) AS partitions, toInt64(min(l)) AS least FROM (
    SELECT partition, max(landed_through_ms) AS l FROM sink_watermarks
    WHERE sink = 'clickhouse' AND topic = ? GROUP BY partition)";

/// One row of a tenant's environment by its id, or none: `sql`'s placeholders are the tenant ($1), the
/// environment ($2) and the id ($3).
async fn scoped_row<R>(
    pg: &PgPool,
    sql: &str,
    (tenant_id, env): (&str, Environment),
    id: &str,
) -> Result<Option<R>, HttpError>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(tenant_id)
        .bind(env.as_str())
        .bind(id)
        .fetch_optional(pg)
        .await
        .map_err(|e| database_error("postgres", &e))
}

/// A keyset page's `next_cursor`: the last row's key when the page is full (more may follow), else none.
fn next_cursor<R>(rows: &[R], limit: u32, key: impl FnOnce(&R) -> String) -> Option<String> {
    (rows.len() == limit as usize).then(|| rows.last().map(key)).flatten()
}

/// A `<unix micros>_<id>` keyset cursor (micros hold no `_`): the time and the id, the id checked by
/// `id_ok`; `bad_cursor()` for anything else.
fn micros_cursor(
    text: &str,
    id_ok: impl FnOnce(&str) -> bool,
    bad_cursor: fn() -> HttpError,
) -> Result<(DateTime<Utc>, String), HttpError> {
    let (micros, id) = text.split_once('_').ok_or_else(bad_cursor)?;
    let at = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad_cursor)?;
    if !id_ok(id) {
        return Err(bad_cursor());
    }
    Ok((at, id.to_owned()))
}

async fn complete_through(
    ch: &clickhouse::Client,
    topics: &[String],
    partitions: i32,
) -> Result<Option<DateTime<Utc>>, HttpError> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Least {
        partitions: u64,
        least: i64,
    }
    let mut least: Option<i64> = None;
    for topic in topics {
        let r: Least = ch
            .query(COMPLETE_THROUGH_SQL)
            .bind(topic)
            .fetch_one()
            .await
            .map_err(|e| database_error("clickhouse", &e))?;
        if r.partitions < u64::try_from(partitions).unwrap_or(u64::MAX) {
            return Ok(None);
        }
        least = Some(least.map_or(r.least, |l: i64| l.min(r.least)));
    }
    Ok(least.and_then(DateTime::from_timestamp_millis))
}

/// Audit events per hour. Placeholders: tenant, environment.
const AUDIT_VOLUME_SQL: &str =
    "SELECT toUInt32(toStartOfHour(occurred_at)) AS hour, toUInt64(count()) AS events,
       toUInt64(sum(payload_bytes)) AS payload_bytes
FROM audit_trail FINAL
WHERE tenant_id = ? AND environment = ?
GROUP BY hour ORDER BY hour";

async fn audit_volume(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<VolumeQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded_for(&s, &headers, (&scope.0, scope.1), Readers::TenantOrPlatform, async move {
        // FINAL collapses rows a replay wrote twice, so each audit event counts once.
        let rows: Vec<HourRow> = s2
            .ch
            .query(AUDIT_VOLUME_SQL)
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
        let topics = kafka::topics(&s2.kafka);
        let complete_through =
            complete_through(&s2.ch, &[topics.audit_events(q.environment)], s2.kafka.topic_partitions)
                .await?;
        Ok(Volume { tenant_id: q.tenant_id, environment: q.environment, complete_through, hours })
    })
    .await
}

#[derive(Debug, Row, Deserialize)]
struct TransferHourRow {
    hour: u32,
    currency: String,
    status: String,
    transfers: u64,
    amount_minor: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransferHour {
    hour: DateTime<Utc>,
    currency: String,
    status: String,
    transfers: u64,
    /// Integer minor units of `currency`.
    amount_minor: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransferVolume {
    tenant_id: String,
    environment: Environment,
    complete_through: Option<DateTime<Utc>>,
    hours: Vec<TransferHour>,
}

/// Status changes per hour, currency and status. Placeholders: tenant, environment.
const TRANSFER_VOLUME_SQL: &str = "SELECT toUInt32(toStartOfHour(occurred_at)) AS hour, currency, status,
       toUInt64(count()) AS transfers, toInt64(sum(amount_minor)) AS amount_minor
FROM transfer_facts FINAL
WHERE tenant_id = ? AND environment = ?
GROUP BY hour, currency, status ORDER BY hour, currency, status";

/// Transfers reaching each status per hour and currency, with amounts (each status change counted once).
/// `/v1/analytics/transfers` adds the kind, day buckets, a time range and pages.
async fn transfer_volume(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<VolumeQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded_for(&s, &headers, (&scope.0, scope.1), Readers::TenantOrPlatform, async move {
        let rows: Vec<TransferHourRow> = s2
            .ch
            .query(TRANSFER_VOLUME_SQL)
            .bind(&q.tenant_id)
            .bind(q.environment.as_str())
            .fetch_all()
            .await
            .map_err(|e| database_error("clickhouse", &e))?;
        let topics = kafka::topics(&s2.kafka);
        let complete_through =
            complete_through(&s2.ch, &[topics.transfer_status(q.environment)], s2.kafka.topic_partitions)
                .await?;
        let hours = rows
            .into_iter()
            .map(|r| TransferHour {
                hour: DateTime::from_timestamp(i64::from(r.hour), 0).unwrap_or_default(),
                currency: r.currency,
                status: r.status,
                transfers: r.transfers,
                amount_minor: r.amount_minor,
            })
            .collect();
        Ok(TransferVolume { tenant_id: q.tenant_id, environment: q.environment, complete_through, hours })
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct TransferView {
    transfer_id: String,
    kind: String,
    amount_minor: i64,
    currency: String,
    status: String,
    version: i32,
    reason: Option<String>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct StatusChange {
    previous: Option<String>,
    status: String,
    version: i32,
    reason: Option<String>,
    occurred_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransferWithHistory {
    #[serde(flatten)]
    transfer: TransferView,
    history: Vec<StatusChange>,
}

/// One transfer's current status (Postgres projection) and its status history.
async fn transfer(
    State(s): State<Arc<Api>>,
    axum::extract::Path(transfer_id): axum::extract::Path<String>,
    headers: HeaderMap,
    Params(q): Params<ScopeQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let current: Option<TransferView> = scoped_row(
            &s2.pg,
            "SELECT transfer_id, kind, amount_minor, currency, status, version, reason, updated_at
             FROM transfers WHERE tenant_id = $1 AND environment = $2 AND transfer_id = $3",
            (&q.tenant_id, q.environment),
            &transfer_id,
        )
        .await?;
        let Some(transfer) = current else {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such transfer for this tenant",
            ));
        };
        let history: Vec<StatusChange> = sqlx::query_as(
            "SELECT previous, status, version, reason, occurred_at FROM transfer_status_history
             WHERE tenant_id = $1 AND environment = $2 AND transfer_id = $3 ORDER BY version",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&transfer_id)
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        Ok(TransferWithHistory { transfer, history })
    })
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct UserKycView {
    user_id: String,
    user_status: String,
    kyc_status: String,
    tier: i16,
    kyc_expires_at: Option<DateTime<Utc>>,
    version: i64,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct KycCaseView {
    case_id: String,
    provider: Option<String>,
    case_status: String,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct KycChange {
    version: i64,
    event_type: String,
    user_status: String,
    kyc_status: String,
    tier: i16,
    kyc_expires_at: Option<DateTime<Utc>>,
    case_id: Option<String>,
    case_status: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
    actor: Option<String>,
    occurred_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct UserKyc {
    #[serde(flatten)]
    user: UserKycView,
    /// The tier the user may act with: `tier` while the KYC is approved, else 0.
    usable_tier: i16,
    /// The user's vendor cases (at most `page_rows_max`, most recently changed last).
    cases: Vec<KycCaseView>,
    /// The latest changes (at most `page_rows_max`), oldest first.
    history: Vec<KycChange>,
    /// Whether older changes exist beyond `history`.
    history_truncated: bool,
}

/// One user's KYC state (Postgres projection of the KYC processor's events), cases and history.
async fn user_kyc(
    State(s): State<Arc<Api>>,
    axum::extract::Path(user_id): axum::extract::Path<String>,
    headers: HeaderMap,
    Params(q): Params<ScopeQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let (tenant, env) = (q.tenant_id.as_str(), q.environment.as_str());
        let current: Option<UserKycView> = scoped_row(
            &s2.pg,
            "SELECT user_id, user_status, kyc_status, tier, kyc_expires_at, version, updated_at
             FROM users WHERE tenant_id = $1 AND environment = $2 AND user_id = $3",
            (tenant, q.environment),
            &user_id,
        )
        .await?;
        let Some(user) = current else {
            return Err(HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such user for this tenant"));
        };
        let limit = i64::from(s2.page_rows_max);
        let cases: Vec<KycCaseView> = sqlx::query_as(
            "SELECT case_id, provider, case_status, updated_at FROM kyc_cases
             WHERE tenant_id = $1 AND environment = $2 AND user_id = $3 ORDER BY version LIMIT $4",
        )
        .bind(tenant)
        .bind(env)
        .bind(&user_id)
        .bind(limit)
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let mut history: Vec<KycChange> = sqlx::query_as(
            "SELECT version, event_type, user_status, kyc_status, tier, kyc_expires_at, case_id, case_status,
                    provider, reason, actor, occurred_at
             FROM kyc_history WHERE tenant_id = $1 AND environment = $2 AND user_id = $3
             ORDER BY version DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(env)
        .bind(&user_id)
        .bind(limit)
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        history.reverse();
        let history_truncated = history.first().is_some_and(|c| c.version > 1);
        let usable_tier = if user.kyc_status == "approved" { user.tier } else { 0 };
        Ok(UserKyc { user, usable_tier, cases, history, history_truncated })
    })
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct BalanceView {
    account: String,
    currency: String,
    posted_minor: i64,
    pending_debit_minor: i64,
    pending_credit_minor: i64,
    available_minor: i64,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BalancesQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// Keyset cursor from a previous page's `next_cursor`: `{account}/{currency}`.
    after: Option<String>,
}

/// A tenant's account balances, a page (at most `page_rows_max`) at a time in (account, currency)
/// order; `next_cursor` is present while more may follow, so a client that sums balances never sums a
/// silently truncated list.
async fn balances(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<BalancesQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let (after_account, after_currency) = match &q.after {
            Some(c) => match c.rsplit_once('/') {
                Some((a, cur)) if !a.is_empty() && cur.len() == 3 => (a.to_owned(), cur.to_owned()),
                _ => {
                    return Err(HttpError::bad_request(
                        "invalid_cursor",
                        "after must be a next_cursor from a previous page",
                    ))
                }
            },
            None => (String::new(), String::new()),
        };
        let limit = s2.page_rows_max;
        let rows: Vec<BalanceView> = sqlx::query_as(
            "SELECT account, currency, posted_minor, pending_debit_minor, pending_credit_minor, available_minor,
                    updated_at
             FROM account_balances WHERE tenant_id = $1 AND environment = $2 AND (account, currency) > ($3, $4)
             ORDER BY account, currency LIMIT $5",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&after_account)
        .bind(&after_currency)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let next_cursor = next_cursor(&rows, limit, |r| format!("{}/{}", r.account, r.currency));
        Ok(serde_json::json!({
            "tenant_id": q.tenant_id, "environment": q.environment, "balances": rows, "next_cursor": next_cursor
        }))
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
