//! The envelope every event carries (DOMAIN.md, "Events and context").
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `live` and `sandbox` never share a topic, a consumer group position or a row without saying which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Sandbox,
}

impl Environment {
    pub const ALL: [Environment; 2] = [Environment::Live, Environment::Sandbox];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Sandbox => "sandbox",
        }
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Environment::Live),
            "sandbox" => Ok(Environment::Sandbox),
            other => Err(format!("environment must be 'live' or 'sandbox', got '{other}'")),
        }
    }
}

/// Every event on every riverbank topic is an `Envelope` around a typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope<P> {
    /// Globally unique; deterministic where the event is derived from another (see `derived_id`).
    pub event_id: Uuid,
    /// Dotted name, e.g. `transfer.requested`, `webhook.received`.
    pub event_type: String,
    pub schema_version: u16,
    pub tenant_id: String,
    pub environment: Environment,
    /// Event time (UTC), as the source stated it.
    pub occurred_at: DateTime<Utc>,
    /// When riverbank's edge accepted it.
    pub ingested_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Provider name, or `api`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub payload: P,
}

/// An envelope whose payload is not decoded yet: what a runtime reads before routing.
pub type RawEnvelope = Envelope<serde_json::Value>;

impl<P> Envelope<P> {
    /// The same envelope around another payload (used when decoding in two steps).
    pub fn with_payload<Q>(self, payload: Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            tenant_id: self.tenant_id,
            environment: self.environment,
            occurred_at: self.occurred_at,
            ingested_at: self.ingested_at,
            idempotency_key: self.idempotency_key,
            source: self.source,
            user_id: self.user_id,
            customer_id: self.customer_id,
            session_id: self.session_id,
            trace_id: self.trace_id,
            payload,
        }
    }
}

impl<P> Envelope<P> {
    /// An event as an edge (or a test, or an example) first states it: one time for both `occurred_at`
    /// and `ingested_at`, no optional context.
    pub fn new(
        event_id: Uuid,
        event_type: &str,
        tenant_id: &str,
        environment: Environment,
        at: DateTime<Utc>,
        source: &str,
        payload: P,
    ) -> Envelope<P> {
        Envelope {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant_id: tenant_id.to_owned(),
            environment,
            occurred_at: at,
            ingested_at: at,
            idempotency_key: None,
            source: source.to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload,
        }
    }

    /// An event derived from `cause`: same tenant, environment, event time, ingest time and trace; the
    /// given id (derived from the cause, never random), type, version, source and payload.
    pub fn derived<Q>(
        cause: &Envelope<Q>,
        event_id: Uuid,
        event_type: &str,
        schema_version: u16,
        source: &str,
        payload: P,
    ) -> Envelope<P> {
        Envelope {
            event_id,
            event_type: event_type.to_owned(),
            schema_version,
            tenant_id: cause.tenant_id.clone(),
            environment: cause.environment,
            occurred_at: cause.occurred_at,
            ingested_at: cause.ingested_at,
            idempotency_key: None,
            source: source.to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: cause.trace_id.clone(),
            payload,
        }
    }
}

impl RawEnvelope {
    /// Decode the payload into its typed form; the error names the event type that failed.
    pub fn decode_payload<P: serde::de::DeserializeOwned>(self) -> Result<Envelope<P>, String> {
        let value = self.payload.clone();
        match serde_json::from_value::<P>(value) {
            Ok(p) => Ok(self.with_payload(p)),
            Err(e) => Err(format!(
                "payload of {} v{} does not match its schema: {e}",
                self.event_type, self.schema_version
            )),
        }
    }
}
