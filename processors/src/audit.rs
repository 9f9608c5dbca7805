//! Audit: every accepted input that concerns money or identity yields one append-only audit record.
//! Records carry ids, actions and sizes only, never payload contents (which may hold PII).
use riverbank_schemas::processor::{Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::{
    derived_id, AuditRecord, Envelope, Environment, RawEnvelope, Topics, WebhookReceived,
};

#[derive(Debug, Clone)]
pub struct AuditProcessor {
    topics: Topics,
}

impl AuditProcessor {
    pub fn new(topics: Topics) -> Self {
        AuditProcessor { topics }
    }

    /// The audit record for a verified webhook. Deterministic: the same input gives the same record.
    pub fn record_for_webhook(input: &Envelope<WebhookReceived>) -> Envelope<AuditRecord> {
        let audit_id = derived_id(&["audit", &input.event_id.to_string()]);
        let record = AuditRecord {
            audit_id,
            tenant_id: input.tenant_id.clone(),
            environment: input.environment,
            actor: format!("provider:{}", input.payload.provider),
            // The mapped riverbank type (`kyc.case_approved`, …) when the provider definition gave one.
            action: input
                .payload
                .event_type
                .clone()
                .unwrap_or_else(|| WebhookReceived::EVENT_TYPE.to_owned()),
            resource_type: "webhook".to_owned(),
            resource_id: input.payload.provider_event_id.clone(),
            source_event_id: input.event_id,
            occurred_at: input.occurred_at,
            recorded_at: input.ingested_at,
            trace_id: input.trace_id.clone(),
            payload_bytes: input.payload.body_bytes,
        };
        Envelope::derived(
            input,
            audit_id,
            AuditRecord::EVENT_TYPE,
            AuditRecord::SCHEMA_VERSION,
            &input.source,
            record,
        )
    }
}

impl Processor for AuditProcessor {
    type State = ();

    fn name(&self) -> &'static str {
        "audit"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            outputs: vec![Output::new(topics.audit_events(env), &[AuditRecord::EVENT_TYPE])],
            stateful: false,
            ..Spec::reading(topics.ingest_webhooks(env))
        }
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        let webhook = |id: &str, payload: serde_json::Value| Envelope {
            event_id: derived_id(&["audit-example", id]),
            event_type: WebhookReceived::EVENT_TYPE.to_owned(),
            schema_version: WebhookReceived::SCHEMA_VERSION,
            tenant_id: "tenant-a".to_owned(),
            environment: env,
            occurred_at: t,
            ingested_at: t,
            idempotency_key: None,
            source: "acmepay".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: Some(format!("trace-{id}")),
            payload,
        };
        vec![
            webhook(
                "a",
                serde_json::json!({"provider": "acmepay", "provider_event_id": "evt_1", "body_bytes": 120, "body": {"x": 1}, "event_type": "payment.completed"}),
            ),
            webhook(
                "b",
                serde_json::json!({"provider": "idcheck", "provider_event_id": "evt_2", "body_bytes": 80, "body": {}}),
            ),
            webhook("c", serde_json::json!({"provider": 5})),
        ]
    }

    fn apply(&self, _state: &mut (), at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        match (input.event_type.as_str(), input.schema_version) {
            (WebhookReceived::EVENT_TYPE, WebhookReceived::SCHEMA_VERSION) => {
                let typed = match input.decode_payload::<WebhookReceived>() {
                    Ok(t) => t,
                    Err(reason) => return Verdict::Poison(reason),
                };
                let out = Self::record_for_webhook(&typed);
                match serde_json::to_vec(&out) {
                    Ok(payload) => Verdict::Emit(vec![Emit {
                        topic: self.topics.audit_events(at.environment),
                        key: out.tenant_id.clone(),
                        event_id: out.event_id,
                        payload,
                    }]),
                    Err(e) => Verdict::Poison(format!("audit record does not serialize: {e}")),
                }
            }
            (event_type, version) => {
                Verdict::Poison(format!("audit has no rule for {event_type} v{version}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn webhook(provider_event_id: &str, body_bytes: u64) -> RawEnvelope {
        let t = chrono::Utc.timestamp_opt(1_790_000_000, 0).single().expect("valid time");
        Envelope {
            event_id: derived_id(&["webhook", provider_event_id]),
            event_type: WebhookReceived::EVENT_TYPE.into(),
            schema_version: 1,
            tenant_id: "tenant-a".into(),
            environment: Environment::Sandbox,
            occurred_at: t,
            ingested_at: t + chrono::Duration::milliseconds(1500),
            idempotency_key: None,
            source: "acmepay".into(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: Some("trace-1".into()),
            payload: serde_json::json!({
                "provider": "acmepay",
                "provider_event_id": provider_event_id,
                "body_bytes": body_bytes,
                "body": {"name": "Jane Doe", "pan": "ABCDE1234F"}
            }),
        }
    }

    fn at() -> InputRef<'static> {
        InputRef::log("p.sandbox.ingest.webhooks", 0, 7, Environment::Sandbox)
    }

    #[test]
    fn a_webhook_yields_one_record_on_the_same_environment_and_no_payload() {
        let p = AuditProcessor::new(Topics::new("p."));
        let Verdict::Emit(out) = p.apply(&mut (), &at(), webhook("wh_1", 321)) else {
            panic!("expected emit")
        };
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "p.sandbox.audit.events.log");
        assert_eq!(out[0].key, "tenant-a");
        let text = String::from_utf8(out[0].payload.clone()).expect("utf8");
        assert!(!text.contains("Jane") && !text.contains("ABCDE1234F"), "PII leaked: {text}");
        let rec: Envelope<AuditRecord> = serde_json::from_slice(&out[0].payload).expect("decodes");
        assert_eq!(rec.payload.payload_bytes, 321);
        assert_eq!(rec.payload.resource_id, "wh_1");
        assert_eq!(rec.payload.actor, "provider:acmepay");
        assert_eq!(rec.event_id, out[0].event_id);
        assert_eq!(rec.payload.recorded_at, rec.ingested_at);
    }

    #[test]
    fn unknown_or_malformed_inputs_are_poison() {
        let p = AuditProcessor::new(Topics::new(""));
        let mut other = webhook("x", 1);
        other.event_type = "transfer.requested".into();
        assert!(
            matches!(p.apply(&mut (), &at(), other), Verdict::Poison(r) if r.contains("transfer.requested"))
        );
        let mut newer = webhook("x", 1);
        newer.schema_version = 9;
        assert!(matches!(p.apply(&mut (), &at(), newer), Verdict::Poison(_)));
        let mut broken = webhook("x", 1);
        broken.payload = serde_json::json!({"provider": 5});
        assert!(matches!(p.apply(&mut (), &at(), broken), Verdict::Poison(r) if r.contains("schema")));
    }

    proptest! {
        #[test]
        fn applying_twice_gives_identical_outputs(id in "[a-zA-Z0-9_]{1,40}", size in 0u64..1_000_000) {
            let p = AuditProcessor::new(Topics::new("q."));
            let a = p.apply(&mut (), &at(), webhook(&id, size));
            let b = p.apply(&mut (), &at(), webhook(&id, size));
            prop_assert_eq!(a, b);
        }
    }
}
