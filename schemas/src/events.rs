//! Event payloads. Each payload type names its `EVENT_TYPE` and `SCHEMA_VERSION`.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Environment;

/// A provider webhook that passed signature verification at the edge.
/// `body` holds the provider's JSON as sent; it may contain PII and never leaves the ingest topic
/// (audit records and analytics carry ids and sizes only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceived {
    pub provider: String,
    /// The deduplication key: the provider's event id, or `sha256:<hex>` of the raw body when the
    /// provider gives none.
    pub provider_event_id: String,
    /// The provider's own event type, when its payload names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_event_type: Option<String>,
    /// The riverbank event type it maps to (the provider definition's `event.types`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The entity whose events stay in order (also the Kafka key, after the tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_key: Option<String>,
    /// The provider's schema version, when its definition declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_schema_version: Option<String>,
    /// Size of the raw body as received, in bytes.
    pub body_bytes: u64,
    /// Named values the provider definition's `[fields]` extracts from the body at the edge (a user id,
    /// a case id, a tier, a transfer reference, an amount), as strings. Never personal data: the
    /// definitions name pseudonymous ids and codes only. Processors read these, never `body`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// What the delivery means for a transfer, when its definition declares its type a transfer status
    /// callback (`[transfers]`), resolved at the edge; the transfers processor applies or rejects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_callback: Option<Box<crate::transfers::TransferCallback>>,
    /// The provider's JSON as sent. Routers copying a webhook into a processor's log drop it (null).
    pub body: serde_json::Value,
}

impl WebhookReceived {
    pub const EVENT_TYPE: &'static str = "webhook.received";
    pub const SCHEMA_VERSION: u16 = 1;
}

/// Input that could not be processed, parked with the reason so it can be inspected and redriven.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Deterministic: derived from where the input came from and who rejected it.
    pub dead_letter_id: Uuid,
    /// The component that rejected the input (`ingest`, `processor:audit`, `sink:postgres`, …).
    pub rejected_by: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Who sent the input: a provider name, or `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// The signed headers of a webhook, which its mapping may read (never secrets): what a redrive needs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The input as received, base64 (standard alphabet).
    pub raw_base64: String,
}
