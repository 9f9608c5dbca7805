//! Tenant API commands. A request is authenticated by a tenant API key (`Authorization: Bearer rbk_…`);
//! the tenant comes from the key, never from the request; `x-environment` must be the key's environment
//! (a sandbox key can never write to live); the key's role must allow the endpoint. The body is decoded
//! and validated by `riverbank_ingest_core::commands`, wrapped in an envelope and produced; with an
//! `Idempotency-Key`, the same request gets the same answer and produces one event, on any instance.
//!
//! A command's `occurred_at` is the time its key was first claimed (pinned in the claim row), so a
//! retry that takes the claim over produces the same event id with the same `occurred_at`; without a
//! key, the request's receive time. `ingested_at` is when this copy was accepted.
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use riverbank_ingest_core::commands::{self as core, check_id, Endpoint, KycUserAction, Stream};
use riverbank_runtime::apikeys::ApiKey;
use riverbank_runtime::http::HttpError;
use riverbank_runtime::produce::Emit;
use riverbank_schemas::{derived_id, Envelope, Environment};
use sha2::{Digest as _, Sha256};

use crate::request::{header, trace_id, Ingest, Outcome};
use crate::store::RequestKey;

/// Longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// What an `Idempotency-Key` is bound to: SHA-256 over method, path and body.
pub fn request_sha256(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().into()
}

/// The event id of a command sent under `idempotency_key`: it names the key *and* the request, so a
/// retry of the same request keeps its id, and a different request under a key reused after its claim
/// was swept gets a new one (its outputs never collide with the first request's).
pub fn event_id(
    env: Environment,
    tenant: &str,
    idempotency_key: &str,
    request_sha256: &[u8; 32],
) -> uuid::Uuid {
    derived_id(&["api", env.as_str(), tenant, idempotency_key, &hex::encode(request_sha256)])
}

fn stream_topic(s: &Ingest, stream: Stream, env: Environment) -> String {
    match stream {
        Stream::Transfers => s.topics.transfer_inputs(env),
        Stream::Fx => s.topics.fx_commands(env),
        Stream::FxRates => s.topics.fx_rates(env),
        Stream::Billing => s.topics.billing_commands(env),
        Stream::Kyc => s.topics.kyc_commands(env),
        Stream::Risk => s.topics.risk_commands(env),
        Stream::Audit => s.topics.audit_actions(env),
    }
}

struct Request {
    endpoint: Endpoint,
    path_id: Option<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
}

async fn command(s: Arc<Ingest>, r: Request) -> Response {
    let headers = r.headers.clone();
    s.clone().guarded(&headers, handle(s, r)).await
}

/// Authenticate, check environment and role, decode, then claim → produce → answer.
async fn handle(s: Arc<Ingest>, r: Request) -> Result<Response, HttpError> {
    let (key, env) = authorize(&s, &r.headers, r.endpoint).await?;
    let user_id = user_id(&r.headers)?;
    let idempotency_key = idempotency_key(&r.headers)?;
    let body = s.read_body(&r.headers, r.body).await?;
    // Maker–checker needs a person: `x-user-id` when the tenant's backend names one, else the key.
    let actor = match &user_id {
        Some(u) => format!("user:{u}"),
        None => format!("key:{}", key.key_id),
    };
    let cmd =
        core::decode(r.endpoint, r.path_id.as_deref(), &body, &actor, &s.name_key).map_err(field_error)?;
    let hash = request_sha256(r.method.as_str(), r.uri.path(), &body);
    let event_id = match &idempotency_key {
        Some(k) => event_id(env, &key.tenant_id, k, &hash),
        None => uuid::Uuid::new_v4(),
    };
    let accepted = Accepted {
        topic: stream_topic(&s, cmd.stream, env),
        cmd,
        tenant_id: key.tenant_id.clone(),
        env,
        idempotency_key: idempotency_key.clone(),
        user_id,
        trace_id: trace_id(&r.headers),
    };
    let build = |event_id: uuid::Uuid, pinned_at: DateTime<Utc>| accepted.outcome(&s, event_id, pinned_at);
    let claim = idempotency_key.as_deref().map(|k| {
        (
            RequestKey { tenant_id: &key.tenant_id, environment: env, scope: "api", key: k },
            hash.as_slice(),
            true,
        )
    });
    let resp = s.claim_produce_answer(claim, event_id, Utc::now(), build).await?;
    metrics::counter!("riverbank_ingest_commands_total", "endpoint" => r.endpoint.name()).increment(1);
    tracing::debug!(tenant_id = %key.tenant_id, endpoint = r.endpoint.name(), "command answered");
    Ok(resp)
}

/// The request's API key, and the environment it names, which must be the key's; the key's role
/// must allow `endpoint`.
async fn authorize(
    s: &Ingest,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(ApiKey, Environment), HttpError> {
    let key = s.api_keys.authenticate(&s.pool, headers).await?;
    let env = s.environment(headers)?;
    if env != key.environment {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "wrong_environment",
            format!("this key is for {}; it can never act on {env}", key.environment),
        ));
    }
    if !endpoint.roles().contains(&key.role) {
        let allowed: Vec<&str> = endpoint.roles().iter().map(|r| r.as_str()).collect();
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!(
                "role {} may not {}; allowed: {}",
                key.role.as_str(),
                endpoint.name(),
                allowed.join(", ")
            ),
        ));
    }
    Ok((key, env))
}

fn field_error(e: core::FieldError) -> HttpError {
    HttpError::invalid_field(e.field, e.rule, e.message)
}

/// `x-user-id`, when sent, checked like any id.
fn user_id(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    match header(headers, "x-user-id") {
        Some(u) => {
            check_id("x-user-id", u).map_err(field_error)?;
            Ok(Some(u.to_owned()))
        }
        None => Ok(None),
    }
}

/// `Idempotency-Key` (or `x-idempotency-key`), when sent: 1–255 printable ASCII characters. Read as
/// bytes: a key with other bytes is refused, never taken as no key (the command would then be accepted
/// without the protection its sender asked for).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let sent = headers.get("idempotency-key").or_else(|| headers.get("x-idempotency-key"));
    match sent.map(|v| v.as_bytes()) {
        Some(k)
            if k.is_empty()
                || k.len() > IDEMPOTENCY_KEY_BYTES_MAX
                || !k.iter().all(|b| (0x20..0x7f).contains(b)) =>
        {
            Err(HttpError::invalid_field(
                "Idempotency-Key",
                "format",
                "must be 1-255 printable ASCII characters",
            ))
        }
        k => Ok(k.map(|k| String::from_utf8_lossy(k).into_owned())),
    }
}

/// An authorized, decoded command: everything its event needs but the event id and time, which the
/// claim decides.
struct Accepted {
    cmd: core::Command,
    topic: String,
    tenant_id: String,
    env: Environment,
    idempotency_key: Option<String>,
    user_id: Option<String>,
    trace_id: Option<String>,
}

impl Accepted {
    /// The event under `event_id` at `pinned_at`, and the 202 that answers it.
    fn outcome(
        self,
        s: &Ingest,
        event_id: uuid::Uuid,
        pinned_at: DateTime<Utc>,
    ) -> Result<Outcome, HttpError> {
        let Accepted { cmd, topic, tenant_id, env, idempotency_key, user_id, trace_id } = self;
        let envelope = Envelope {
            event_id,
            event_type: cmd.event_type.to_owned(),
            schema_version: 1,
            tenant_id: tenant_id.clone(),
            environment: env,
            // Every copy of this event id (a takeover's too) carries the first claim's time.
            occurred_at: pinned_at,
            ingested_at: Utc::now(),
            idempotency_key,
            source: "api".to_owned(),
            user_id,
            customer_id: None,
            session_id: None,
            trace_id,
            payload: cmd.payload,
        };
        let payload = serde_json::to_vec(&envelope).map_err(|e| s.internal(&e))?;
        // Keyed by tenant: the transfers processor needs one tenant's inputs in one total order.
        let emit = Emit { topic, key: tenant_id, event_id, payload };
        let response = serde_json::json!({
            "event_id": event_id,
            "event_type": cmd.event_type,
            "entity_id": cmd.entity_key,
            "status": "accepted",
        });
        Ok(Outcome { emit, status: StatusCode::ACCEPTED, response })
    }
}

macro_rules! endpoint {
    ($name:ident, $endpoint:expr) => {
        pub async fn $name(
            State(s): State<Arc<Ingest>>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            command(s, Request { endpoint: $endpoint, path_id: None, method, uri, headers, body }).await
        }
    };
    ($name:ident, $endpoint:expr, path) => {
        pub async fn $name(
            State(s): State<Arc<Ingest>>,
            Path(id): Path<String>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            command(s, Request { endpoint: $endpoint, path_id: Some(id), method, uri, headers, body }).await
        }
    };
}

endpoint!(create_transfer, Endpoint::CreateTransfer);
endpoint!(approve_transfer, Endpoint::ApproveTransfer, path);
endpoint!(reject_transfer, Endpoint::RejectTransfer, path);
endpoint!(cancel_transfer, Endpoint::CancelTransfer, path);
endpoint!(fx_quote, Endpoint::FxQuote);
endpoint!(fx_conversion, Endpoint::FxConversion);
endpoint!(fx_rates, Endpoint::FxRates);
endpoint!(fee_config, Endpoint::FeeConfig, path);
endpoint!(kyc_freeze, Endpoint::KycUser(KycUserAction::Freeze), path);
endpoint!(kyc_unfreeze, Endpoint::KycUser(KycUserAction::Unfreeze), path);
endpoint!(kyc_close, Endpoint::KycUser(KycUserAction::Close), path);
endpoint!(kyc_review, Endpoint::KycReviewDecision, path);
endpoint!(risk_review, Endpoint::RiskReviewDecision, path);
endpoint!(fx_conversion_decision, Endpoint::FxConversionDecision, path);
endpoint!(billing_plan, Endpoint::BillingPlan);
endpoint!(consent, Endpoint::Consent, path);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_key(value: HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", value);
        h
    }

    #[test]
    fn an_idempotency_key_outside_printable_ascii_is_refused_not_ignored() {
        let bytes = HeaderValue::from_bytes(b"retry-\xe9t\xe9").unwrap_or_else(|e| panic!("{e}"));
        let e = idempotency_key(&with_key(bytes)).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field, Some(("Idempotency-Key".to_owned(), "format")));
        let ok = idempotency_key(&with_key(HeaderValue::from_static("order-42 retry")));
        assert_eq!(ok.ok().flatten().as_deref(), Some("order-42 retry"));
        assert_eq!(idempotency_key(&HeaderMap::new()).ok(), Some(None));
    }
}
