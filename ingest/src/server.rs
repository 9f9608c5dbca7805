//! The HTTP edge for provider webhooks: verify, wrap in an envelope, produce, then answer.
//! 202 is sent only after the broker acknowledged the event (acks=all, idempotent producer).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use riverbank_runtime::config::{Config, WebhookScheme};
use riverbank_runtime::http::{within, HttpError, InFlight};
use riverbank_runtime::process::{produce_all, Emit};
use riverbank_runtime::{kafka, CancellationToken};
use riverbank_schemas::{derived_id, DeadLetter, Envelope, Environment, Topics, WebhookReceived};

use crate::standard_webhooks::{self as sw, Key};

#[derive(Debug, thiserror::Error)]
pub enum IngestSetupError {
    #[error("ingest.webhooks[{index}]: {source}")]
    Secret { index: usize, source: sw::BadSecret },
    #[error("ingest.webhooks[{index}]: environment {env} is not in kafka.environments")]
    Environment { index: usize, env: Environment },
}

type SenderKey = (String, String, Environment);

pub struct Ingest {
    producer: FutureProducer,
    topics: Topics,
    environments: Vec<Environment>,
    keys: HashMap<SenderKey, Vec<Key>>,
    body_bytes_max: usize,
    headers_count_max: usize,
    request_timeout: Duration,
    produce_timeout: Duration,
    retry_after_s: u64,
    tolerance_s: i64,
    in_flight: InFlight,
    kafka: riverbank_runtime::config::KafkaConfig,
}

impl Ingest {
    pub fn new(cfg: &Config, producer: FutureProducer) -> Result<Ingest, IngestSetupError> {
        let mut keys = HashMap::new();
        for (index, w) in cfg.ingest.webhooks.iter().enumerate() {
            if !cfg.kafka.environments.contains(&w.environment) {
                return Err(IngestSetupError::Environment { index, env: w.environment });
            }
            let parsed = match w.scheme {
                WebhookScheme::StandardWebhooks => w
                    .secrets
                    .iter()
                    .map(|s| Key::from_secret(s.expose()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| IngestSetupError::Secret { index, source })?,
            };
            keys.insert((w.provider.clone(), w.tenant_id.clone(), w.environment), parsed);
        }
        let i = &cfg.ingest;
        Ok(Ingest {
            producer,
            topics: kafka::topics(&cfg.kafka),
            environments: cfg.kafka.environments.clone(),
            keys,
            body_bytes_max: i.body_bytes_max,
            headers_count_max: i.headers_count_max,
            request_timeout: Duration::from_millis(i.request_timeout_ms),
            produce_timeout: Duration::from_millis(i.produce_timeout_ms),
            retry_after_s: i.retry_after_s,
            tolerance_s: i.timestamp_tolerance_s,
            in_flight: InFlight::new(i.in_flight_requests_max, i.retry_after_s),
            kafka: cfg.kafka.clone(),
        })
    }
}

pub fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/webhooks/{provider}", post(webhook))
        .route("/v1/webhooks/{provider}/{tenant_id}", post(webhook_for_tenant))
        .route("/health", get(health))
        .with_state(state)
}

/// Serve until `shutdown`; in-flight requests finish first.
pub async fn serve(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    kafka::ensure_topics(&cfg.kafka, &kafka::all_topics(&cfg.kafka)).await?;
    let state = Arc::new(Ingest::new(cfg, kafka::producer(&cfg.kafka)?)?);
    let listener = tokio::net::TcpListener::bind(cfg.ingest.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

async fn health(State(s): State<Arc<Ingest>>) -> Response {
    match kafka::ping(&s.kafka).await {
        Ok(brokers) => Json(serde_json::json!({"status": "ok", "broker": {"status": "ok", "brokers": brokers}}))
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "broker": {"status": "down", "error": e.to_string()}})),
        )
            .into_response(),
    }
}

async fn webhook(
    State(s): State<Arc<Ingest>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = header(&headers, "x-tenant-id").map(str::to_owned);
    handle(s, provider, tenant, headers, body).await
}

async fn webhook_for_tenant(
    State(s): State<Arc<Ingest>>,
    Path((provider, tenant)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, provider, Some(tenant), headers, body).await
}

async fn handle(
    s: Arc<Ingest>,
    provider: String,
    tenant: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let timeout = s.request_timeout;
    let result = within(timeout, accept(&s, provider, tenant, &headers, body)).await;
    drop(permit);
    match result {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn read_body(s: &Ingest, headers: &HeaderMap, body: Body) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds {} bytes", s.body_bytes_max),
        )
    };
    let declared = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.body_bytes_max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, s.body_bytes_max).await.map_err(|e| {
        if std::error::Error::source(&e)
            .is_some_and(|src| src.is::<http_body_util_limited::LengthLimitError>())
        {
            too_large()
        } else {
            HttpError::bad_request("body_unreadable", "request body could not be read")
        }
    })
}

mod http_body_util_limited {
    pub use http_body_util::LengthLimitError;
}

async fn accept(
    s: &Ingest,
    provider: String,
    tenant: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    if headers.len() > s.headers_count_max {
        return Err(HttpError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!("at most {} headers allowed", s.headers_count_max),
        ));
    }
    let tenant = tenant.ok_or_else(|| {
        HttpError::bad_request(
            "missing_tenant",
            "name the tenant in the path (/v1/webhooks/{provider}/{tenant_id}) or x-tenant-id",
        )
    })?;
    if !riverbank_runtime::config::is_tenant_id(&tenant) {
        return Err(HttpError::bad_request(
            "invalid_tenant",
            "tenant id must be 1-64 of ASCII letters, digits, '-', '_'",
        ));
    }
    let env = match header(headers, "x-environment") {
        None => Environment::Live,
        Some(v) => v.parse::<Environment>().map_err(|m| HttpError::bad_request("invalid_environment", m))?,
    };
    if !s.environments.contains(&env) {
        return Err(HttpError::bad_request(
            "invalid_environment",
            format!("environment {env} is not served here"),
        ));
    }
    let body = read_body(s, headers, body).await?;
    // The tenant is trusted only because one of *its* secrets verifies the signature.
    let keys = s.keys.get(&(provider.clone(), tenant.clone(), env)).map(Vec::as_slice).unwrap_or(&[]);
    let delivery = sw::Delivery {
        id: header(headers, sw::HEADER_ID),
        timestamp: header(headers, sw::HEADER_TIMESTAMP),
        signature: header(headers, sw::HEADER_SIGNATURE),
        body: &body,
    };
    let now = chrono::Utc::now();
    let verified = sw::verify(keys, &delivery, now.timestamp(), s.tolerance_s).map_err(|e| {
        let (status, code) = match e {
            sw::VerifyError::MissingHeader(_) | sw::VerifyError::BadId(_) | sw::VerifyError::BadTimestamp => {
                (StatusCode::BAD_REQUEST, "invalid_webhook_headers")
            }
            sw::VerifyError::OutsideTolerance(..) => (StatusCode::UNAUTHORIZED, "timestamp_out_of_tolerance"),
            sw::VerifyError::NoMatch => (StatusCode::UNAUTHORIZED, "invalid_signature"),
        };
        HttpError::new(status, code, e.to_string())
    })?;
    let event_id = derived_id(&["webhook", env.as_str(), &tenant, &provider, &verified.id]);
    let body_len = body.len() as u64;
    let emit = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) => {
            let occurred_at = chrono::DateTime::from_timestamp(verified.timestamp, 0).unwrap_or(now);
            let envelope = Envelope {
                event_id,
                event_type: WebhookReceived::EVENT_TYPE.to_owned(),
                schema_version: WebhookReceived::SCHEMA_VERSION,
                tenant_id: tenant.clone(),
                environment: env,
                occurred_at,
                ingested_at: now,
                idempotency_key: None,
                source: provider.clone(),
                user_id: None,
                customer_id: None,
                session_id: None,
                trace_id: header(headers, "x-trace-id").filter(|t| t.len() <= 128).map(str::to_owned),
                payload: WebhookReceived {
                    provider: provider.clone(),
                    provider_event_id: verified.id.clone(),
                    provider_event_type: json.get("type").and_then(|t| t.as_str()).map(str::to_owned),
                    body_bytes: body_len,
                    body: json,
                },
            };
            let payload = serde_json::to_vec(&envelope).map_err(|e| HttpError::internal(&e))?;
            Emit { topic: s.topics.ingest_webhooks(env), key: tenant.clone(), event_id, payload }
        }
        Err(e) => {
            // Authentic but unusable: park it raw with the reason so the provider stops retrying
            // and an operator can redrive it after a fix.
            use base64::Engine as _;
            let letter = DeadLetter {
                dead_letter_id: event_id,
                rejected_by: "ingest".to_owned(),
                reason: format!("body is not JSON: {e}"),
                source_topic: None,
                source_partition: None,
                source_offset: None,
                tenant_id: Some(tenant.clone()),
                raw_base64: base64::engine::general_purpose::STANDARD.encode(&body),
            };
            let payload = serde_json::to_vec(&letter).map_err(|e| HttpError::internal(&e))?;
            Emit { topic: s.topics.dead_letters(env), key: tenant.clone(), event_id, payload }
        }
    };
    let dead_lettered = emit.topic == s.topics.dead_letters(env);
    produce_all(&s.producer, std::slice::from_ref(&emit), s.produce_timeout).await.map_err(|e| {
        tracing::warn!(tenant_id = %tenant, provider = %provider, error = %e, "broker did not acknowledge");
        HttpError::unavailable("broker_unavailable", "event not accepted; retry later", s.retry_after_s)
    })?;
    tracing::debug!(tenant_id = %tenant, provider = %provider, %event_id, dead_lettered, "webhook accepted");
    let status = if dead_lettered { "dead_lettered" } else { "accepted" };
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"event_id": event_id, "status": status})))
        .into_response())
}
