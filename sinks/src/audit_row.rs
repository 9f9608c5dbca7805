//! One decoded audit record plus where it came from: the row both stores write.
use riverbank_schemas::{AuditRecord, Envelope};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub record: AuditRecord,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// Decode an audit-topic message; the error is the dead-letter reason.
pub fn decode(topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Result<Vec<AuditRow>, String> {
    let envelope: Envelope<AuditRecord> =
        serde_json::from_slice(payload).map_err(|e| format!("not an audit record envelope: {e}"))?;
    if envelope.event_type != AuditRecord::EVENT_TYPE
        || envelope.schema_version != AuditRecord::SCHEMA_VERSION
    {
        return Err(format!(
            "unexpected {} v{} on the audit topic",
            envelope.event_type, envelope.schema_version
        ));
    }
    if envelope.event_id != envelope.payload.audit_id || envelope.tenant_id != envelope.payload.tenant_id {
        return Err("envelope and audit record disagree on id or tenant".to_owned());
    }
    if i64::try_from(envelope.payload.payload_bytes).is_err() {
        return Err("payload_bytes out of range".to_owned());
    }
    Ok(vec![AuditRow {
        record: envelope.payload,
        source_topic: topic.to_owned(),
        source_partition: partition,
        source_offset: offset,
    }])
}
