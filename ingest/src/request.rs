//! What every request of the edge shares: the state ([`Ingest`]), the guards (in-flight limit,
//! header count, request timeout, body size, served environment), and the one claim → produce →
//! answer step both webhooks and commands use. 2xx is sent only after the broker acknowledged the
//! event (acks=all, idempotent producer).
//!
//! What an answer means, for webhooks and commands alike: 2xx = accepted (or the replay of the
//! accepted answer); 5xx (with `Retry-After`) = the outcome is unknown or the edge could not take the
//! request now: retry the same request; 4xx = this request will never succeed as sent (a 422 for an
//! unusable event time is also recorded and replayed). A request whose outcome is unknown never gets a
//! 4xx, so a provider that treats 4xx as final never drops a delivery that might still be accepted.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use riverbank_ingest_core::provider::ProviderDef;
use riverbank_runtime::config::Config;
use riverbank_runtime::http::{within, HttpError, InFlight};
use riverbank_runtime::kafka;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_schemas::{Environment, Topics};
use sqlx::PgPool;

use crate::keys::{webhook_keys, IngestSetupError, KeySet};
use crate::store::{self, Claim, OwnedKey, RequestKey};

tokio::task_local! {
    /// Set once the request body has been read in full: a request timing out after that is waiting on
    /// the edge (Postgres, the broker), not on its client.
    static BODY_READ: Arc<AtomicBool>;
}

/// What an owned request produces and answers, built for the event id it is produced under.
pub(crate) struct Outcome {
    pub emit: Emit,
    pub status: StatusCode,
    pub response: serde_json::Value,
}

/// An owned claim whose outcome is not settled yet. Dropped while armed (the request timed out or its
/// client went away mid-produce), it ends its lease in the background, so a retry takes the key over
/// at once instead of waiting for the lease.
struct Held {
    claims: store::Claims,
    key: OwnedKey,
    owner: uuid::Uuid,
    armed: bool,
}

impl Held {
    fn complete(mut self, status: StatusCode, response: serde_json::Value) {
        self.armed = false;
        // The event is accepted; if recording the answer fails, the lease expires and a retry
        // re-produces the same event id, which consumers deduplicate.
        self.claims.complete(&self.key.borrow(), self.owner, status.as_u16(), response);
    }

    async fn abandon(mut self) {
        self.armed = false;
        match self.claims.abandon(&self.key.borrow(), self.owner).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                tenant_id = %self.key.tenant_id,
                scope = %self.key.scope,
                "claim taken over before it was abandoned; left to its new owner"
            ),
            // The lease expires by itself; a retry then takes the key over.
            Err(e) => tracing::warn!(error = %e, "could not end the claim's lease"),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (claims, key, owner) = (self.claims.clone(), self.key.clone(), self.owner);
            rt.spawn(async move {
                if let Err(e) = claims.abandon(&key.borrow(), owner).await {
                    tracing::warn!(error = %e, "could not end the claim's lease");
                }
            });
        }
    }
}

/// The JSON body of `e`, as its response carries it (for answers recorded in a claim).
pub(crate) fn error_body(e: &HttpError) -> serde_json::Value {
    let mut error = serde_json::json!({ "code": e.code, "message": e.message });
    if let Some((field, rule)) = &e.field {
        error["field"] = serde_json::json!(field);
        error["rule"] = serde_json::json!(rule);
    }
    serde_json::json!({ "error": error })
}

/// The edge's state, shared by every request: clients, provider definitions and keys, limits, the
/// claim batcher and the API key cache.
pub struct Ingest {
    pub(crate) producer: FutureProducer,
    pub(crate) pool: PgPool,
    pub(crate) topics: Topics,
    pub(crate) environments: Vec<Environment>,
    pub(crate) providers: BTreeMap<String, ProviderDef>,
    /// (provider, environment) → every tenant's keys, in config order.
    pub(crate) keys: HashMap<(String, Environment), KeySet>,
    pub(crate) body_bytes_max: usize,
    headers_count_max: usize,
    request_timeout: Duration,
    produce_timeout: Duration,
    pub(crate) retry_after_s: u64,
    pub(crate) claims: store::Claims,
    in_flight: InFlight,
    pub(crate) kafka: riverbank_runtime::config::KafkaConfig,
    pub(crate) api_keys: riverbank_runtime::apikeys::KeyCache,
    /// Key of counterparty name digests (`risk.name_key`).
    pub(crate) name_key: Vec<u8>,
    /// Data keys of the personal data the edge seals (`crate::sealing`).
    pub(crate) keystore: riverbank_runtime::keystore::KeyStore,
}

impl Ingest {
    pub fn new(
        cfg: &Config,
        producer: FutureProducer,
        pool: PgPool,
        keystore: riverbank_runtime::keystore::KeyStore,
    ) -> Result<Ingest, IngestSetupError> {
        let (providers, keys) = webhook_keys(cfg)?;
        let i = &cfg.ingest;
        Ok(Ingest {
            producer,
            pool: pool.clone(),
            topics: kafka::topics(&cfg.kafka),
            environments: cfg.kafka.environments.clone(),
            providers,
            keys,
            body_bytes_max: i.body_bytes_max,
            headers_count_max: i.headers_count_max,
            request_timeout: Duration::from_millis(i.request_timeout_ms),
            produce_timeout: Duration::from_millis(i.produce_timeout_ms),
            retry_after_s: i.retry_after_s,
            claims: store::Claims::start(
                pool.clone(),
                Duration::from_millis(i.idempotency_lease_ms),
                Duration::from_millis(i.idempotency_wait_ms),
                i.claim_batch_rows_max,
                i.claim_queue_requests_max,
                i.claim_batches_in_flight_max,
            ),
            in_flight: InFlight::new(i.in_flight_requests_max, i.retry_after_s),
            kafka: cfg.kafka.clone(),
            api_keys: riverbank_runtime::apikeys::KeyCache::new(
                Duration::from_millis(i.api_key_cache_ttl_ms),
                i.api_key_cache_entries_max,
                i.retry_after_s,
            ),
            name_key: cfg.risk.name_key.expose().as_bytes().to_vec(),
            keystore,
        })
    }

    /// Run `work` under the in-flight limit, the header-count limit and the request timeout: 408 while
    /// the client has not sent its whole body, 503 + `Retry-After` once it has (the edge was too slow:
    /// the outcome is unknown, and a retry of the same request is safe).
    pub(crate) async fn guarded<F>(&self, headers: &HeaderMap, work: F) -> Response
    where
        F: std::future::Future<Output = Result<Response, HttpError>>,
    {
        let _permit = match self.in_flight.enter() {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if headers.len() > self.headers_count_max {
            return HttpError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!("at most {} headers allowed", self.headers_count_max),
            )
            .into_response();
        }
        let body_read = Arc::new(AtomicBool::new(false));
        match within(self.request_timeout, BODY_READ.scope(body_read.clone(), work)).await {
            Ok(r) => r,
            Err(e) if e.status == StatusCode::REQUEST_TIMEOUT && body_read.load(Ordering::Acquire) => {
                HttpError::unavailable(
                    "processing_timeout",
                    format!(
                        "request not completed within {} ms; its outcome is unknown: retry the same request",
                        self.request_timeout.as_millis()
                    ),
                    self.retry_after_s,
                )
                .into_response()
            }
            Err(e) => e.into_response(),
        }
    }

    /// A server-side failure (500, logged with a trace id); nothing was produced, so it says when to
    /// retry like every other 5xx of the edge.
    pub(crate) fn internal(&self, detail: &dyn std::fmt::Display) -> HttpError {
        HttpError { retry_after_s: Some(self.retry_after_s), ..HttpError::internal(detail) }
    }

    /// The environment a request names in `x-environment` (default live), if this deployment serves it.
    pub(crate) fn environment(&self, headers: &HeaderMap) -> Result<Environment, HttpError> {
        let env = match header(headers, "x-environment") {
            None => Environment::Live,
            Some(v) => {
                v.parse::<Environment>().map_err(|m| HttpError::bad_request("invalid_environment", m))?
            }
        };
        if !self.environments.contains(&env) {
            return Err(HttpError::bad_request(
                "invalid_environment",
                format!("environment {env} is not served here"),
            ));
        }
        Ok(env)
    }

    /// Read the body up to `body_bytes_max` (413 past it; a declared length past it is refused unread).
    pub(crate) async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, HttpError> {
        let too_large = || {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("body exceeds {} bytes", self.body_bytes_max),
            )
        };
        let declared = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_bytes_max as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, self.body_bytes_max).await.map_err(|e| {
            if std::error::Error::source(&e).is_some_and(|src| src.is::<http_body_util::LengthLimitError>()) {
                too_large()
            } else {
                HttpError::bad_request("body_unreadable", "request body could not be read")
            }
        })?;
        let _ = BODY_READ.try_with(|read| read.store(true, Ordering::Release));
        Ok(body)
    }

    /// Claim `key` (when given), produce what `build` makes for the event id and the pinned time,
    /// record and return the answer. `event_id` is the request's own; a claim taken over from an
    /// earlier claimant produces under the id stored in the claim instead, so both attempts are one
    /// event downstream. The pinned time is the claim's `first_claimed_at` (the same for the first
    /// claimant and every takeover, so every copy of the event id carries one event time), or
    /// `received_at` (this request's own receive time) without a key. A request whose key was answered
    /// before gets that answer again (with `idempotent-replayed: true`) and produces nothing.
    pub(crate) async fn claim_produce_answer<B>(
        &self,
        key: Option<(RequestKey<'_>, &[u8], bool)>,
        event_id: uuid::Uuid,
        received_at: DateTime<Utc>,
        build: B,
    ) -> Result<Response, HttpError>
    where
        B: FnOnce(uuid::Uuid, DateTime<Utc>) -> Result<Outcome, HttpError>,
    {
        let (held, event_id, pinned_at) = match self.claim(key.as_ref(), event_id, received_at).await? {
            Claimed::Produce { held, event_id, pinned_at } => (held, event_id, pinned_at),
            Claimed::Replay(answer) => return Ok(answer),
        };
        let Outcome { emit, status, response } = match build(event_id, pinned_at) {
            Ok(o) => o,
            Err(e) => {
                if let Some(h) = held {
                    h.abandon().await;
                }
                return Err(e);
            }
        };
        debug_assert_eq!(emit.event_id, event_id, "an outcome is produced under the claimed event id");
        if let Err(e) = self.produce(&emit).await {
            // The event may still land (a message in flight when the producer gave up): the claim
            // keeps its hash and event id and only its lease ends, so a retry of the same request
            // takes over at once and produces the same event id.
            if let Some(h) = held {
                h.abandon().await;
            }
            return Err(e);
        }
        if let Some(h) = held {
            h.complete(status, response.clone());
        }
        Ok((status, Json(response)).into_response())
    }

    /// The claim step of [`Ingest::claim_produce_answer`]: without a key, produce under `event_id` at
    /// `received_at`; with one, produce as its owner (under the claim's event id and first-claim time),
    /// replay its recorded answer, or refuse (a different request under the key: 409; another
    /// claimant still holds it: 503).
    async fn claim(
        &self,
        key: Option<&(RequestKey<'_>, &[u8], bool)>,
        event_id: uuid::Uuid,
        received_at: DateTime<Utc>,
    ) -> Result<Claimed, HttpError> {
        let Some((k, hash, check_hash)) = key else {
            return Ok(Claimed::Produce { held: None, event_id, pinned_at: received_at });
        };
        let db_down = |e: sqlx::Error| {
            tracing::warn!(error = %e, "idempotency store unavailable");
            metrics::counter!("riverbank_ingest_store_errors_total").increment(1);
            HttpError::unavailable(
                "store_unavailable",
                "request not accepted; retry later",
                self.retry_after_s,
            )
        };
        match self.claims.claim(k, hash, event_id, *check_hash).await.map_err(db_down)? {
            Claim::Owned { event_id: claimed, owner, first_claimed_at } => Ok(Claimed::Produce {
                held: Some(Held { claims: self.claims.clone(), key: OwnedKey::of(k), owner, armed: true }),
                event_id: claimed,
                pinned_at: first_claimed_at,
            }),
            Claim::Done { status, response, .. } => {
                metrics::counter!("riverbank_ingest_duplicates_total", "scope" => scope_label(k.scope))
                    .increment(1);
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut resp = (status, Json(response)).into_response();
                resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                Ok(Claimed::Replay(resp))
            }
            Claim::Mismatch => Err(HttpError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request (method, path or body); \
                 use a new key for a new request",
            )),
            Claim::InFlight { lease_left } => {
                // Not a 4xx: the other claimant may still fail (or be dead), and then this request
                // is the one to produce. Retry when its lease ends at the latest.
                let retry_after_s = lease_left.as_millis().div_ceil(1000).max(1);
                Err(HttpError::unavailable(
                    "request_in_progress",
                    "a request with this key is still being processed; its outcome is unknown: \
                     retry the same request",
                    u64::try_from(retry_after_s).unwrap_or(self.retry_after_s),
                ))
            }
        }
    }

    /// Produce `emit` and wait for the broker's acknowledgement, at most `produce_timeout` (503 +
    /// `Retry-After` without one: the outcome is unknown).
    async fn produce(&self, emit: &Emit) -> Result<(), HttpError> {
        let produced = tokio::time::timeout(
            self.produce_timeout,
            produce_all(&self.producer, std::slice::from_ref(emit), self.produce_timeout),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!("no acknowledgement within {} ms", self.produce_timeout.as_millis()))
        });
        if let Err(e) = produced {
            tracing::warn!(topic = %emit.topic, error = %e, "broker did not acknowledge");
            metrics::counter!("riverbank_ingest_broker_unavailable_total").increment(1);
            return Err(HttpError::unavailable(
                "broker_unavailable",
                "outcome unknown: the broker did not acknowledge in time; retry the same request",
                self.retry_after_s,
            ));
        }
        Ok(())
    }
}

/// What claiming a request's key settled.
enum Claimed {
    /// Produce under `event_id` at `pinned_at`; `held` is the owned claim (none without a key).
    Produce { held: Option<Held>, event_id: uuid::Uuid, pinned_at: DateTime<Utc> },
    /// The key was answered before: this is that answer again.
    Replay(Response),
}

fn scope_label(scope: &str) -> &'static str {
    if scope == "api" {
        "api"
    } else {
        "webhook"
    }
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `x-trace-id` when it is sane (at most 128 printable ASCII bytes).
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    header(headers, "x-trace-id")
        .filter(|t| !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_error_answer_is_the_body_the_live_answer_carries() {
        // A refused delivery's answer is recorded as JSON and replayed: the replay must equal the first.
        for e in [
            HttpError::invalid_field("/observed_at", "range", "occurred_at is outside the range"),
            HttpError::new(StatusCode::CONFLICT, "idempotency_key_reused", "use a new key"),
        ] {
            let recorded = error_body(&e);
            let live = axum::body::to_bytes(e.into_response().into_body(), 1 << 16).await.expect("body");
            let live: serde_json::Value = serde_json::from_slice(&live).expect("JSON");
            assert_eq!(recorded, live);
        }
    }
}
