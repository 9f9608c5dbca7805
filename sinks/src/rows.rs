//! What the sinks write: one small mapping per event type. Adding a processor's output to the stores
//! means a variant here, a table in each store and a statement in each sink, not a new sink.
use chrono::{DateTime, Utc};
use riverbank_schemas::transfers::{BalanceChanged, LedgerPosting, TransferStatusChanged};
use riverbank_schemas::{AuditRecord, Environment, RawEnvelope, Topics};
use uuid::Uuid;

/// Envelope facts every row keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub environment: Environment,
    pub occurred_at: DateTime<Utc>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Audit(Meta, AuditRecord),
    Status(Meta, TransferStatusChanged),
    Posting(Meta, LedgerPosting),
    Balance(Meta, BalanceChanged),
}

impl Row {
    pub fn meta(&self) -> &Meta {
        match self {
            Row::Audit(m, _) | Row::Status(m, _) | Row::Posting(m, _) | Row::Balance(m, _) => m,
        }
    }
}

/// The topics the sinks read in one environment.
pub fn inputs(topics: &Topics, env: Environment) -> Vec<String> {
    vec![
        topics.audit_events(env),
        topics.transfer_status(env),
        topics.ledger_postings(env),
        topics.balances(env),
    ]
}

fn typed<P: serde::de::DeserializeOwned>(e: &RawEnvelope) -> Result<P, String> {
    serde_json::from_value(e.payload.clone())
        .map_err(|err| format!("payload of {} does not match its schema: {err}", e.event_type))
}

/// Decode one message into its row and the time it was ingested (ms), which drives the
/// complete-through watermark. The error is the dead-letter reason.
pub fn decode(topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Result<(Vec<Row>, i64), String> {
    let e: RawEnvelope = serde_json::from_slice(payload).map_err(|err| format!("not an envelope: {err}"))?;
    if e.schema_version != 1 {
        return Err(format!("{} v{} is not understood by the sinks", e.event_type, e.schema_version));
    }
    let meta = Meta {
        event_id: e.event_id,
        tenant_id: e.tenant_id.clone(),
        environment: e.environment,
        occurred_at: e.occurred_at,
        source_topic: topic.to_owned(),
        source_partition: partition,
        source_offset: offset,
    };
    let ingested_ms = e.ingested_at.timestamp_millis();
    let row = match e.event_type.as_str() {
        AuditRecord::EVENT_TYPE => {
            let a: AuditRecord = typed(&e)?;
            if a.audit_id != e.event_id || a.tenant_id != e.tenant_id {
                return Err("envelope and audit record disagree on id or tenant".to_owned());
            }
            if i64::try_from(a.payload_bytes).is_err() {
                return Err("payload_bytes out of range".to_owned());
            }
            Row::Audit(meta, a)
        }
        TransferStatusChanged::EVENT_TYPE => {
            let s: TransferStatusChanged = typed(&e)?;
            if s.amount.amount_minor <= 0 || s.version == 0 {
                return Err("status event with a non-positive amount or version 0".to_owned());
            }
            Row::Status(meta, s)
        }
        LedgerPosting::EVENT_TYPE => {
            let p: LedgerPosting = typed(&e)?;
            if p.amount_minor == 0 {
                return Err("posting leg of zero".to_owned());
            }
            Row::Posting(meta, p)
        }
        BalanceChanged::EVENT_TYPE => Row::Balance(meta, typed(&e)?),
        other => return Err(format!("the sinks have no mapping for {other}")),
    };
    Ok((vec![row], ingested_ms))
}
