//! Audit: every significant action becomes one append-only record in its (tenant, environment) log,
//! numbered and hash-chained, with signed Merkle checkpoints (ARCHITECTURE.md, "The audit trail").
//!
//! The router copies every topic that carries significant actions into the audit log, keyed by tenant,
//! so a tenant's records are chained in one partition's order: the same inputs in the same order give
//! the same chain, byte for byte, on every replay. What is audited, from which event, is the table in
//! [`record_parts`]; anything else on those topics (quotes, shadow decisions, reminders, drafts) is
//! read and passed over.
//!
//! - A source event is audited once: its id is remembered (the last `audit.inputs_remembered_max`), so
//!   an upstream replay that writes an event twice never puts it in the chain twice.
//! - Records carry ids, actions, codes and sizes; never payload contents (the router drops webhook
//!   bodies before they reach this log).
//! - Checkpoints: after `checkpoint_every_records` records of a log, or `checkpoint_every_ms` of the
//!   partition's event clock after the first record not yet covered (a timer), the log's size, Merkle
//!   tree head and chain head are signed with the configured Ed25519 key.
use std::sync::Arc;

use riverbank_crypto::merkle::{leaf_hash, CompactRange};
use riverbank_crypto::sign::CheckpointSigner;
use riverbank_schemas::audit::{self, AuditAction, AuditCheckpoint, AuditRecord, GENESIS_HASH};
use riverbank_schemas::processor::{Emit, InputRef, Output, Processor, Spec, Timer, Verdict};
use riverbank_schemas::state::{remember_bounded, Cell, Table, Timers};
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics, WebhookReceived};
use serde::{Deserialize, Serialize};

/// The audit processor's settings (`[audit]`).
#[derive(Clone)]
pub struct AuditSettings {
    /// Signs checkpoints. Without one, records are chained but no checkpoint is written.
    pub signer: Option<Arc<CheckpointSigner>>,
    pub checkpoint_every_records: u64,
    pub checkpoint_every_ms: i64,
    /// Source event ids remembered per partition (duplicates within them are not audited twice).
    pub inputs_remembered_max: usize,
    /// Logs (tenants) per partition; a record of one more is dead-lettered with the reason.
    pub logs_per_partition_max: usize,
}

impl std::fmt::Debug for AuditSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSettings")
            .field("signer", &self.signer.as_ref().map(|s| s.key_id()))
            .field("checkpoint_every_records", &self.checkpoint_every_records)
            .field("checkpoint_every_ms", &self.checkpoint_every_ms)
            .field("inputs_remembered_max", &self.inputs_remembered_max)
            .field("logs_per_partition_max", &self.logs_per_partition_max)
            .finish()
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            signer: None,
            checkpoint_every_records: 1_000,
            checkpoint_every_ms: 60_000,
            inputs_remembered_max: 200_000,
            logs_per_partition_max: 100_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditProcessor {
    topics: Topics,
    settings: AuditSettings,
}

/// One (tenant, environment) log's head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Records so far (the last record's seq).
    pub seq: u64,
    /// The last record's hash ([`GENESIS_HASH`] before the first).
    pub hash: String,
    /// The Merkle tree of records 1..=seq, as its compact range.
    pub tree: CompactRange,
    /// The tree size of the last checkpoint.
    pub checkpointed: u64,
}

/// Per-partition state. Keys: `h/{tenant}` (chain heads), `s/{source event id}` and `o/{n:020}`
/// (remembered inputs), `seq`, timers `tm/{tenant}` (the checkpoint interval of a log).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditState {
    pub heads: Table<ChainHead>,
    pub seen: Table<u64>,
    pub seen_order: Table<String>,
    pub seen_seq: Cell<u64>,
    pub timers: Timers,
}

impl AuditState {
    pub fn new() -> Self {
        AuditState {
            heads: Table::new("h"),
            seen: Table::new("s"),
            seen_order: Table::new("o"),
            seen_seq: Cell::new("seq"),
            timers: Timers::new("tm"),
        }
    }
}

impl Default for AuditState {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(AuditState { heads, seen, seen_order, seen_seq }, timers = timers);

/// What a record says before it is numbered and chained: the action (who did what to which resource,
/// redacted before/after, client) and the size of the payload it concerned.
pub type RecordParts = (AuditAction, u64);

/// An action without a client (it did not come over HTTP to riverbank directly).
fn action(actor: String, what: &str, resource_type: &str, resource_id: String) -> AuditAction {
    AuditAction {
        actor,
        action: what.to_owned(),
        resource_type: resource_type.to_owned(),
        resource_id,
        before: None,
        after: None,
        ip: None,
        user_agent: None,
        request_id: None,
    }
}

/// Longest `before`/`after` kept (bytes): they are codes and short reasons, never documents.
const STATE_TEXT_BYTES_MAX: usize = 200;

fn text(v: &serde_json::Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn cut(s: String) -> String {
    if s.len() <= STATE_TEXT_BYTES_MAX {
        return s;
    }
    let mut end = STATE_TEXT_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `user:{id}` for a named person, else `system:{component}`.
fn actor_or(v: &serde_json::Value, pointer: &str, component: &str) -> String {
    match text(v, pointer) {
        Some(a) if a.contains(':') => a,
        Some(a) => format!("user:{a}"),
        None => format!("system:{component}"),
    }
}

/// What the input means for the audit trail: `Ok(None)` when it is not a significant action (it is
/// read and passed over), `Err` when it cannot be read.
pub fn record_parts(input: &RawEnvelope) -> Result<Option<RecordParts>, String> {
    let p = &input.payload;
    let rejected = |component: &str, resource: &str, id_pointer: &str| {
        let id = text(p, id_pointer).or_else(|| text(p, "/input_event_id")).unwrap_or_default();
        let mut a = action(format!("system:{component}"), &input.event_type, resource, id);
        a.after = text(p, "/reason").map(|r| cut(format!("rejected: {r}")));
        (a, 0)
    };
    let simple =
        |actor: String, resource: &str, id: Option<String>, before: Option<String>, after: Option<String>| {
            let mut a = action(actor, &input.event_type, resource, id.unwrap_or_default());
            a.before = before.map(cut);
            a.after = after.map(cut);
            a.request_id = input.idempotency_key.clone();
            (a, 0)
        };
    let parts = match input.event_type.as_str() {
        WebhookReceived::EVENT_TYPE => {
            let w: WebhookReceived = decode(input)?;
            // The mapped riverbank type (`kyc.case_approved`, …) when the definition gave one.
            let what = w.event_type.as_deref().unwrap_or(WebhookReceived::EVENT_TYPE);
            (action(format!("provider:{}", w.provider), what, "webhook", w.provider_event_id), w.body_bytes)
        }
        "transfer.status_changed" => simple(
            "system:transfers".into(),
            "transfer",
            text(p, "/transfer_id"),
            text(p, "/previous"),
            text(p, "/status"),
        ),
        "transfer.input_rejected" => rejected("transfers", "transfer", "/transfer_id"),
        "risk.decision_recorded" => {
            if p.get("shadow").and_then(|s| s.as_bool()).unwrap_or(false) {
                return Ok(None);
            }
            let reviewed = text(p, "/reviewed_by").is_some();
            let mut r = simple(
                actor_or(p, "/reviewed_by", "risk"),
                "transfer",
                text(p, "/transfer_id"),
                None,
                Some(format!(
                    "{} score={}",
                    text(p, "/decision").unwrap_or_default(),
                    text(p, "/score").unwrap_or_default()
                )),
            );
            if reviewed {
                r.0.action = "risk.review_decided".to_owned();
            }
            r
        }
        "risk.input_rejected" => rejected("risk", "transfer", "/transfer_id"),
        "user.kyc.updated" | "user.verified" | "user.frozen" | "user.unfrozen" | "user.closed" => {
            let actor = match (text(p, "/actor"), text(p, "/provider")) {
                (Some(_), _) => actor_or(p, "/actor", "kyc"),
                (None, Some(provider)) => format!("provider:{provider}"),
                (None, None) => "system:kyc".to_owned(),
            };
            let after = format!(
                "user={} kyc={} tier={}",
                text(p, "/user_status").unwrap_or_default(),
                text(p, "/kyc_status").unwrap_or_default(),
                text(p, "/tier").unwrap_or_default()
            );
            let mut r = simple(actor, "user", text(p, "/user_id"), None, Some(after));
            r.0.before = text(p, "/case_id").map(|c| cut(format!("case={c}")));
            r
        }
        "kyc.input_rejected" => rejected("kyc", "user", "/user_id"),
        "fx.conversion_recorded" => {
            let actor = match text(p, "/decided_by") {
                Some(_) => actor_or(p, "/decided_by", "fx"),
                None => actor_or(p, "/requested_by", "fx"),
            };
            simple(actor, "fx_conversion", text(p, "/conversion_id"), None, text(p, "/status"))
        }
        "fx.input_rejected" => rejected("fx", "fx_conversion", "/conversion_id"),
        "billing.fee_charged" => {
            simple("system:billing".into(), "fee", text(p, "/transfer_id"), None, text(p, "/status"))
        }
        "billing.invoice_recorded" => {
            if text(p, "/status").as_deref() != Some("finalized") {
                return Ok(None);
            }
            simple("system:billing".into(), "invoice", text(p, "/invoice_id"), None, text(p, "/status"))
        }
        "billing.plan_set" => simple(
            actor_or(p, "/changed_by", "billing"),
            "billing_plan",
            Some(input.tenant_id.clone()),
            None,
            text(p, "/plan"),
        ),
        "billing.input_rejected" => rejected("billing", "billing", "/invoice_id"),
        AuditAction::EVENT_TYPE => {
            let a: AuditAction = decode(input)?;
            if !audit::actions::ALL.contains(&a.action.as_str()) {
                return Err(format!("audit action {:?} is not one of {:?}", a.action, audit::actions::ALL));
            }
            let a = AuditAction {
                before: a.before.map(cut),
                after: a.after.map(cut),
                ip: a.ip.as_deref().and_then(audit::truncate_ip),
                user_agent: a.user_agent.as_deref().map(audit::cut_user_agent),
                ..a
            };
            (a, 0)
        }
        _ => return Ok(None),
    };
    Ok(Some(parts))
}

fn decode<P: serde::de::DeserializeOwned>(input: &RawEnvelope) -> Result<P, String> {
    serde_json::from_value(input.payload.clone())
        .map_err(|e| format!("payload of {} does not match its schema: {e}", input.event_type))
}

impl AuditProcessor {
    pub fn new(topics: Topics, settings: AuditSettings) -> Self {
        AuditProcessor { topics, settings }
    }

    fn head_key(tenant: &str) -> String {
        tenant.to_owned()
    }

    /// Number, chain and emit one record (and a checkpoint when one is due by count).
    fn append(
        &self,
        state: &mut AuditState,
        at: &InputRef<'_>,
        input: &RawEnvelope,
        (what, payload_bytes): RecordParts,
    ) -> Result<Vec<Emit>, String> {
        let key = Self::head_key(&input.tenant_id);
        if !state.heads.contains_key(&key) && state.heads.len() >= self.settings.logs_per_partition_max {
            return Err(format!(
                "audit.logs_per_partition_max ({}) reached: tenant {} has no log in this partition",
                self.settings.logs_per_partition_max, input.tenant_id
            ));
        }
        let head = state
            .heads
            .get(&key)
            .cloned()
            .unwrap_or_else(|| ChainHead { hash: GENESIS_HASH.to_owned(), ..ChainHead::default() });
        let seq = head.seq.checked_add(1).ok_or("the audit log is full (2^64 records)")?;
        let mut record = AuditRecord {
            audit_id: derived_id(&["audit", &input.event_id.to_string()]),
            tenant_id: input.tenant_id.clone(),
            environment: input.environment,
            seq,
            actor: what.actor,
            action: what.action,
            resource_type: what.resource_type,
            resource_id: what.resource_id,
            before: what.before,
            after: what.after,
            ip: what.ip,
            user_agent: what.user_agent,
            request_id: what.request_id,
            trace_id: input.trace_id.clone(),
            source_event_id: input.event_id,
            source_event_type: input.event_type.clone(),
            occurred_at: audit::to_millis(input.occurred_at),
            recorded_at: audit::to_millis(input.ingested_at),
            payload_bytes,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        let bytes = record.canonical_bytes();
        record.hash = record.compute_hash();
        let mut tree = head.tree;
        tree.push(leaf_hash(&bytes));
        debug_assert_eq!(tree.size(), seq, "the tree holds every record of the log");
        let mut next = ChainHead { seq, hash: record.hash.clone(), tree, checkpointed: head.checkpointed };
        let mut out = vec![self.emit(
            &self.topics.audit_events(at.environment),
            input,
            record.audit_id,
            AuditRecord::EVENT_TYPE,
            AuditRecord::SCHEMA_VERSION,
            record.clone(),
        )?];
        if self.settings.signer.is_some() {
            let timer = input.tenant_id.clone();
            if next.seq - next.checkpointed >= self.settings.checkpoint_every_records.max(1) {
                out.push(self.checkpoint(
                    &input.tenant_id,
                    at.environment,
                    &mut next,
                    record.recorded_at,
                    input,
                )?);
                state.timers.cancel(&timer);
            } else if state.timers.get(&timer).is_none() {
                state.timers.schedule(
                    &timer,
                    at.now_ms.saturating_add(self.settings.checkpoint_every_ms),
                    "",
                );
            }
        }
        state.heads.insert(key, next);
        Ok(out)
    }

    fn checkpoint(
        &self,
        tenant: &str,
        environment: Environment,
        head: &mut ChainHead,
        occurred_at: chrono::DateTime<chrono::Utc>,
        cause: &RawEnvelope,
    ) -> Result<Emit, String> {
        let signer = self.settings.signer.as_ref().ok_or("no audit signing key")?;
        let root_hash = hex_of(&head.tree.root());
        let occurred_at = audit::to_millis(occurred_at);
        let message = audit::signed_message(
            tenant,
            environment,
            head.seq,
            &root_hash,
            &head.hash,
            occurred_at.timestamp_millis(),
        );
        let checkpoint = AuditCheckpoint {
            checkpoint_id: derived_id(&[
                "audit-checkpoint",
                tenant,
                environment.as_str(),
                &head.seq.to_string(),
            ]),
            tenant_id: tenant.to_owned(),
            environment,
            tree_size: head.seq,
            root_hash,
            last_hash: head.hash.clone(),
            occurred_at,
            key_id: signer.key_id().to_owned(),
            signature: signer.sign(&message),
        };
        head.checkpointed = head.seq;
        let mut cause = cause.clone();
        cause.tenant_id = tenant.to_owned();
        cause.environment = environment;
        cause.occurred_at = occurred_at;
        self.emit(
            &self.topics.audit_events(environment),
            &cause,
            checkpoint.checkpoint_id,
            AuditCheckpoint::EVENT_TYPE,
            AuditCheckpoint::SCHEMA_VERSION,
            checkpoint,
        )
    }

    fn emit<P: Serialize>(
        &self,
        topic: &str,
        cause: &RawEnvelope,
        event_id: uuid::Uuid,
        event_type: &str,
        version: u16,
        payload: P,
    ) -> Result<Emit, String> {
        let out = Envelope::derived(cause, event_id, event_type, version, "riverbank.audit", payload);
        let payload =
            serde_json::to_vec(&out).map_err(|e| format!("{event_type} does not serialize: {e}"))?;
        Ok(Emit { topic: topic.to_owned(), key: out.tenant_id.clone(), event_id, payload })
    }
}

fn hex_of(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl Processor for AuditProcessor {
    type State = AuditState;

    fn name(&self) -> &'static str {
        "audit"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            routed: topics.router_sources(env, "audit"),
            ticks: true,
            outputs: vec![Output::new(
                topics.audit_events(env),
                &[AuditRecord::EVENT_TYPE, AuditCheckpoint::EVENT_TYPE],
            )],
            ..Spec::reading(topics.log(env, "audit"))
        }
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        let event = |id: &str, event_type: &str, tenant: &str, payload: serde_json::Value| Envelope {
            event_id: derived_id(&["audit-example", id]),
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant_id: tenant.to_owned(),
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
            event(
                "a",
                WebhookReceived::EVENT_TYPE,
                "tenant-a",
                serde_json::json!({"provider": "acmepay", "provider_event_id": "evt_1", "body_bytes": 120, "body": null, "event_type": "payment.completed"}),
            ),
            event(
                "b",
                "transfer.status_changed",
                "tenant-a",
                serde_json::json!({"transfer_id": "tr_1", "previous": "PENDING", "status": "COMPLETED"}),
            ),
            event(
                "c",
                AuditAction::EVENT_TYPE,
                "tenant-b",
                serde_json::json!({"actor": "operator:ops", "action": "api_key.created", "resource_type": "api_key", "resource_id": "key_1", "ip": "203.0.113.9"}),
            ),
            event("d", "fx.quote_recorded", "tenant-a", serde_json::json!({"quote_id": "q_1"})),
            event("e", WebhookReceived::EVENT_TYPE, "tenant-a", serde_json::json!({"provider": 5})),
            event(
                "f",
                AuditAction::EVENT_TYPE,
                "tenant-b",
                serde_json::json!({"actor": "x", "action": "made.up", "resource_type": "r", "resource_id": "1"}),
            ),
        ]
    }

    fn apply(&self, state: &mut AuditState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let parts = match record_parts(&input) {
            Ok(Some(p)) => p,
            Ok(None) => return Verdict::Emit(Vec::new()),
            Err(reason) => return Verdict::Poison(reason),
        };
        let source = input.event_id.to_string();
        if state.seen.contains_key(&source) {
            // The same source event again (an upstream replay): it is in the chain already.
            return Verdict::Emit(Vec::new());
        }
        match self.append(state, at, &input, parts) {
            Ok(out) => {
                let max = self.settings.inputs_remembered_max;
                remember_bounded(&mut state.seen, &mut state.seen_order, &mut state.seen_seq, source, max);
                Verdict::Emit(out)
            }
            Err(reason) => Verdict::Poison(reason),
        }
    }

    fn on_timer(&self, state: &mut AuditState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        let tenant = timer.key;
        let Some(mut head) = state.heads.get(&Self::head_key(&tenant)).cloned() else {
            return Verdict::Emit(Vec::new());
        };
        if head.seq == head.checkpointed || self.settings.signer.is_none() {
            return Verdict::Emit(Vec::new());
        }
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at.now_ms).unwrap_or_default();
        // The checkpoint's envelope is derived from a synthetic cause: the tick (deterministic).
        let cause = Envelope {
            event_id: derived_id(&["audit-tick", &tenant, &head.seq.to_string()]),
            event_type: "tick".to_owned(),
            schema_version: 1,
            tenant_id: tenant.clone(),
            environment: at.environment,
            occurred_at: now,
            ingested_at: now,
            idempotency_key: None,
            source: "riverbank.audit".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload: serde_json::Value::Null,
        };
        match self.checkpoint(&tenant, at.environment, &mut head, now, &cause) {
            Ok(emit) => {
                state.heads.insert(Self::head_key(&tenant), head);
                Verdict::Emit(vec![emit])
            }
            Err(reason) => Verdict::Poison(reason),
        }
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
