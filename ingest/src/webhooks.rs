//! Provider webhooks: find the provider's definition, verify with the tenants' keys (the key that
//! verifies decides the tenant), map, deduplicate on the provider's event id (or the body hash), produce.
//! An authentic delivery that cannot be mapped is parked raw on the dead-letter topic and answered 202,
//! so the provider stops retrying; `riverbank dlq redrive` maps it again after a fix. One whose event
//! time is not a time or is outside 1970–2100 is parked the same way but answered 422 naming the field
//! (the provider must fix it; an operator can redrive it after a definition fix).
//!
//! **Personal data.** Every value a definition declares `[sensitive]` is sealed before anything is
//! produced, in the event's body and in a dead letter's stored form ([`crate::sealing`]); the
//! deduplication key and the claim's hash are still computed on the raw body.
//!
//! **Event time.** `occurred_at` is the body's event time when the definition declares one (the same
//! in every delivery of the event), else the time the delivery's key was first claimed (pinned in the
//! claim row, so a takeover or a retry produces the same `occurred_at`), never the per-attempt signed
//! timestamp or this attempt's receive time: every copy of one event id carries one event time, so
//! stores that deduplicate within a month partition keep one. `ingested_at` is this copy's receive
//! time. A provider redelivery is answered from the claim, producing nothing, for
//! `ingest.webhook_dedupe_retention_h` (168 h), longer than providers retry (a few days); a copy
//! produced after the sweep deleted the claim is a new claim with a new time (not covered).
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use riverbank_ingest_core::provider::{Mapping, ProviderDef, Unmappable};
use riverbank_ingest_core::schemes::VerifyError;
use riverbank_ingest_core::sensitive::Pass;
use riverbank_ingest_core::Headers;
use riverbank_runtime::config::is_tenant_id;
use riverbank_runtime::http::HttpError;
use riverbank_runtime::produce::Emit;
use riverbank_schemas::{derived_id, DeadLetter, Envelope, Environment, Topics, WebhookReceived};
use sha2::{Digest as _, Sha256};

use crate::keys::KeySet;
use crate::request::{error_body, header, trace_id, Ingest, Outcome};
use crate::sealing::{self, Sealer};
use crate::store::RequestKey;

/// Axum's header map, read through the core's [`Headers`].
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        header(self.0, name)
    }
}

pub async fn webhook(
    State(s): State<Arc<Ingest>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Without a tenant in the path, `x-tenant-id` narrows the search, but only a verifying key decides.
    let tenant = header(&headers, "x-tenant-id").map(str::to_owned);
    s.clone().guarded(&headers, accept(&s, provider, tenant, &headers, body)).await
}

pub async fn webhook_for_tenant(
    State(s): State<Arc<Ingest>>,
    Path((provider, tenant)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    s.clone().guarded(&headers, accept(&s, provider, Some(tenant), &headers, body)).await
}

/// The event id of a delivery: the same delivery (by deduplication key) always gets the same id.
pub fn event_id(env: Environment, tenant: &str, provider: &str, dedupe_key: &str) -> uuid::Uuid {
    derived_id(&["webhook", env.as_str(), tenant, provider, dedupe_key])
}

/// What a dead letter of the edge becomes when redriven: the event the server would have produced,
/// under the letter's id (the event id of the delivery it kept, which its sealed values are bound to:
/// the stored form of a delivery without a provider event id no longer hashes to it), at the letter's `received_at`, which the server set to the pinned first-claim time: the event's
/// `ingested_at`, and its `occurred_at` when the body has none. `mapping` and `body` are the letter's
/// stored form mapped again and sealed (`Sealer` with [`Pass::Stored`]).
#[allow(clippy::too_many_arguments)]
pub fn emit_redriven(
    event_id: uuid::Uuid,
    topics: &Topics,
    def: &ProviderDef,
    tenant: &str,
    env: Environment,
    mapping: &Mapping,
    signed_headers: std::collections::BTreeMap<String, String>,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<(Emit, bool), serde_json::Error> {
    emit_with_id(
        event_id,
        topics,
        def,
        tenant,
        env,
        mapping,
        signed_headers,
        body,
        received_at,
        received_at,
        None,
    )
}

/// What an authentic delivery becomes: the mapped event on the webhooks topic, or a dead letter, under
/// a given event id (a claim taken over keeps the id stored in it). `received_at`
/// is this copy's receive time (`ingested_at`); `pinned_at` is the time the key was first claimed,
/// the same for every copy of the event id: the event time when the body has none, and a dead
/// letter's `received_at` (so a redrive of any copy stamps the same times).
#[allow(clippy::too_many_arguments)]
fn emit_with_id(
    event_id: uuid::Uuid,
    topics: &Topics,
    def: &ProviderDef,
    tenant: &str,
    env: Environment,
    mapping: &Mapping,
    signed_headers: std::collections::BTreeMap<String, String>,
    body: &[u8],
    received_at: DateTime<Utc>,
    pinned_at: DateTime<Utc>,
    trace_id: Option<String>,
) -> Result<(Emit, bool), serde_json::Error> {
    match &mapping.result {
        Ok(m) => {
            // The body's time (deterministic per event, range-checked by the mapping), else the pinned
            // first-claim time: never a per-attempt value.
            let occurred_at = m.occurred_at.unwrap_or(pinned_at);
            let envelope = Envelope {
                event_id,
                event_type: WebhookReceived::EVENT_TYPE.to_owned(),
                schema_version: WebhookReceived::SCHEMA_VERSION,
                tenant_id: tenant.to_owned(),
                environment: env,
                occurred_at,
                ingested_at: received_at,
                idempotency_key: None,
                source: def.name.clone(),
                user_id: None,
                customer_id: None,
                session_id: None,
                trace_id,
                payload: WebhookReceived {
                    provider: def.name.clone(),
                    provider_event_id: mapping
                        .provider_event_id
                        .clone()
                        .unwrap_or_else(|| mapping.dedupe_key.clone()),
                    provider_event_type: Some(m.provider_event_type.clone()),
                    event_type: Some(m.event_type.clone()),
                    entity_key: m.entity_key.clone(),
                    provider_schema_version: m.schema_version.clone(),
                    body_bytes: body.len() as u64,
                    fields: m.fields.clone(),
                    transfer_callback: m.transfer_callback.clone().map(Box::new),
                    body: m.body.clone(),
                },
            };
            // Per-entity order: one entity's events share a partition; a tenant's entities spread.
            let key = match &m.entity_key {
                Some(e) => format!("{tenant}/{e}"),
                None => tenant.to_owned(),
            };
            let payload = serde_json::to_vec(&envelope)?;
            Ok((Emit { topic: topics.ingest_webhooks(env), key, event_id, payload }, false))
        }
        Err(why) => {
            use base64::Engine as _;
            let letter = DeadLetter {
                dead_letter_id: event_id,
                rejected_by: "ingest".to_owned(),
                reason: why.to_string(),
                source_topic: None,
                source_partition: None,
                source_offset: None,
                tenant_id: Some(tenant.to_owned()),
                source: Some(def.name.clone()),
                environment: Some(env),
                received_at: Some(pinned_at),
                headers: signed_headers,
                raw_base64: base64::engine::general_purpose::STANDARD.encode(body),
            };
            let payload = serde_json::to_vec(&letter)?;
            Ok((Emit { topic: topics.dead_letters(env), key: tenant.to_owned(), event_id, payload }, true))
        }
    }
}

async fn accept(
    s: &Ingest,
    provider: String,
    tenant: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let def = s.providers.get(&provider).ok_or_else(|| {
        HttpError::new(StatusCode::NOT_FOUND, "unknown_provider", format!("no provider named '{provider}'"))
    })?;
    check_tenant(tenant.as_deref())?;
    let env = s.environment(headers)?;
    let body = s.read_body(headers, body).await?;
    let empty = KeySet::default();
    let set = s.keys.get(&(provider.clone(), env)).unwrap_or(&empty);
    let (keys, owner) = set.candidates(tenant.as_deref());
    let now = Utc::now();
    let view = HeaderView(headers);
    let accepted = def.accept(keys, &view, &body, now.timestamp()).map_err(|e| refused(&provider, e))?;
    // The tenant is the one whose key verified the signature, never a field the sender controls alone.
    let tenant = owner
        .of(accepted.key_index)
        .map(str::to_owned)
        .ok_or_else(|| s.internal(&"verifying key index out of range"))?;
    let event_id = event_id(env, &tenant, &def.name, &accepted.mapping.dedupe_key);
    // An unusable event time is the provider's to fix: refused (422 naming where it was read), and
    // the raw delivery is kept on the dead-letter topic, so nothing authentic is dropped.
    let refused_time = match &accepted.mapping.result {
        Err(Unmappable::EventTime { field, rule, why }) => Some((field.clone(), *rule, why.clone())),
        _ => None,
    };
    let label = match (&refused_time, &accepted.mapping.result) {
        (Some(_), _) => "invalid_event_time",
        (None, Err(_)) => "dead_lettered",
        (None, Ok(_)) => "accepted",
    };
    // The data keys of the personal data it holds, before the claim (the values are sealed under the
    // event id the claim settles). Nothing is produced without them.
    let plan = sealing::plan(def, &accepted.mapping, &body, Pass::Edge);
    let sealer = Sealer::prepare(&s.keystore, &tenant, env, plan).await.map_err(|e| {
        tracing::warn!(error = %e, "key store unavailable");
        metrics::counter!("riverbank_ingest_key_store_errors_total").increment(1);
        HttpError::unavailable("key_store_unavailable", "request not accepted; retry later", s.retry_after_s)
    })?;
    let delivery = Authentic {
        def,
        sealer: &sealer,
        tenant: &tenant,
        env,
        mapping: &accepted.mapping,
        signed_headers: def.signed_header_values(&view),
        body: &body,
        received_at: now,
        trace_id: trace_id(headers),
        refused_time,
    };
    let build = |event_id: uuid::Uuid, pinned_at: DateTime<Utc>| delivery.outcome(s, event_id, pinned_at);
    let scope = format!("webhook:{provider}");
    let claim =
        RequestKey { tenant_id: &tenant, environment: env, scope: &scope, key: &accepted.mapping.dedupe_key };
    let hash = Sha256::digest(&body);
    let resp = s.claim_produce_answer(Some((claim, hash.as_slice(), false)), event_id, now, build).await?;
    metrics::counter!("riverbank_ingest_webhooks_total", "provider" => provider, "status" => label)
        .increment(1);
    tracing::debug!(tenant_id = %tenant, status = label, "webhook answered");
    Ok(resp)
}

/// A tenant named in the path: 400 unless it is a well-formed tenant id.
fn check_tenant(tenant: Option<&str>) -> Result<(), HttpError> {
    match tenant {
        Some(t) if !is_tenant_id(t) => Err(HttpError::bad_request(
            "invalid_tenant",
            "tenant id must be 1-64 of ASCII letters, digits, '-', '_'",
        )),
        _ => Ok(()),
    }
}

/// A delivery that did not verify: 400 when malformed, 401 when unauthentic or outside tolerance.
fn refused(provider: &str, e: VerifyError) -> HttpError {
    metrics::counter!("riverbank_ingest_webhooks_refused_total", "provider" => provider.to_owned())
        .increment(1);
    let (status, code) = match &e {
        e if e.is_malformed() => (StatusCode::BAD_REQUEST, "invalid_webhook_headers"),
        VerifyError::OutsideTolerance(..) => (StatusCode::UNAUTHORIZED, "timestamp_out_of_tolerance"),
        _ => (StatusCode::UNAUTHORIZED, "invalid_signature"),
    };
    HttpError::new(status, code, e.to_string())
}

/// A verified delivery: everything its event needs but the event id and time, which the claim decides.
struct Authentic<'a> {
    def: &'a ProviderDef,
    /// Seals its personal data (in the event's body, or in the dead letter's stored form).
    sealer: &'a Sealer,
    tenant: &'a str,
    env: Environment,
    mapping: &'a Mapping,
    signed_headers: std::collections::BTreeMap<String, String>,
    body: &'a [u8],
    received_at: DateTime<Utc>,
    trace_id: Option<String>,
    /// The event time could not be used: (field, rule, why), answered 422.
    refused_time: Option<(String, &'static str, String)>,
}

impl Authentic<'_> {
    /// The event (or dead letter) under `event_id` at `pinned_at`, and its answer.
    fn outcome(
        self,
        s: &Ingest,
        event_id: uuid::Uuid,
        pinned_at: DateTime<Utc>,
    ) -> Result<Outcome, HttpError> {
        let (mapping, stored) = self
            .sealer
            .seal(self.tenant, self.env, event_id, self.mapping, self.body)
            .map_err(|e| s.internal(&e))?;
        let (emit, dead_lettered) = emit_with_id(
            event_id,
            &s.topics,
            self.def,
            self.tenant,
            self.env,
            &mapping,
            self.signed_headers,
            &stored,
            self.received_at,
            pinned_at,
            self.trace_id,
        )
        .map_err(|e| s.internal(&e))?;
        let (status, response) = match self.refused_time {
            Some((field, rule, why)) => {
                let e = HttpError::invalid_field(
                    field,
                    rule,
                    format!("occurred_at {why}; the delivery is kept on the dead-letter topic as {event_id}"),
                );
                (e.status, error_body(&e))
            }
            None => {
                let status = if dead_lettered { "dead_lettered" } else { "accepted" };
                (StatusCode::ACCEPTED, serde_json::json!({"event_id": event_id, "status": status}))
            }
        };
        Ok(Outcome { emit, status, response })
    }
}
