//! The audit trail's shared plumbing: stating an action on `{env}.audit.actions` (the CLI and the API
//! do, for API keys, redrives, decrypted reads, exports, erasures and rewraps), and reading the trail
//! back from Postgres exactly as it was stated (the API's search, export and proofs, and
//! `riverbank audit verify --postgres`).
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use riverbank_schemas::audit::{AuditAction, AuditCheckpoint, AuditRecord};
use riverbank_schemas::processor::Emit;
use riverbank_schemas::{Envelope, Environment, Topics};
use uuid::Uuid;

/// The envelope of one stated action: its own id (an action happens once), the tenant and environment
/// it concerns, now as its time.
pub fn action_emit(
    topics: &Topics,
    tenant: &str,
    env: Environment,
    source: &str,
    action: AuditAction,
    trace_id: Option<String>,
) -> Result<Emit, String> {
    let id = Uuid::new_v4();
    let mut e = Envelope::new(id, AuditAction::EVENT_TYPE, tenant, env, Utc::now(), source, action);
    e.schema_version = AuditAction::SCHEMA_VERSION;
    e.trace_id = trace_id;
    let payload =
        serde_json::to_vec(&e).map_err(|err| format!("an audit action does not serialize: {err}"))?;
    Ok(Emit { topic: topics.audit_actions(env), key: tenant.to_owned(), event_id: id, payload })
}

/// State an action and wait until the broker has it: callers do the action only after (an export is
/// never streamed, a key never used, unless its audit record is on its way).
pub async fn state_action(producer: &FutureProducer, emit: &Emit, timeout: Duration) -> Result<Uuid, String> {
    crate::produce::produce_all(producer, std::slice::from_ref(emit), timeout).await?;
    Ok(emit.event_id)
}

/// The log of actions that concern no one tenant (a key rewrap, a redrive of a letter without tenant).
pub const PLATFORM_TENANT: &str = "platform";

/// What an operator did from the CLI (`riverbank keys …`, `dlq redrive`, `gdpr erase`, `keys rewrap`).
/// The actor is `operator:{$USER}` (`operator:unknown` without one).
#[derive(Debug, Clone)]
pub struct OperatorAction<'a> {
    pub tenant: &'a str,
    pub env: Environment,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// State an operator's action and wait for the broker: the CLI's actions are audited like the API's.
pub async fn state_operator_action(cfg: &crate::Config, a: OperatorAction<'_>) -> Result<Uuid, String> {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty() && u.len() <= 64);
    let action = AuditAction {
        actor: format!("operator:{}", user.as_deref().unwrap_or("unknown")),
        action: a.action.to_owned(),
        resource_type: a.resource_type.to_owned(),
        resource_id: a.resource_id.to_owned(),
        before: a.before,
        after: a.after,
        ip: None,
        user_agent: Some(format!("riverbank-cli/{}", env!("CARGO_PKG_VERSION"))),
        request_id: None,
    };
    let topics = crate::kafka::topics(&cfg.kafka);
    let emit = action_emit(&topics, a.tenant, a.env, "riverbank.cli", action, None)?;
    let producer = crate::kafka::producer(&cfg.kafka).map_err(|e| e.to_string())?;
    state_action(&producer, &emit, Duration::from_millis(cfg.kafka.message_timeout_ms)).await
}

/// The `audit_log` columns of a record, in [`AuditRow`]'s order.
pub const AUDIT_COLUMNS: &str =
    "event_id, tenant_id, environment, seq, actor, action, resource_type, resource_id, \
     before, after, ip, user_agent, request_id, trace_id, source_event_id, source_event_type, occurred_at, \
     recorded_at, payload_bytes, prev_hash, hash";

/// An `audit_log` row as stored (a row written before the chain existed has no seq or hashes).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub environment: String,
    pub seq: Option<i64>,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub source_event_id: Uuid,
    pub source_event_type: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub payload_bytes: i64,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

impl AuditRow {
    /// The record as stated, or why this row cannot be one (a pre-chain row, a value out of range).
    pub fn to_record(&self) -> Result<AuditRecord, String> {
        let missing =
            |what: &str| format!("audit row {} has no {what} (written before the chain)", self.event_id);
        Ok(AuditRecord {
            audit_id: self.event_id,
            tenant_id: self.tenant_id.clone(),
            environment: self.environment.parse()?,
            seq: u64::try_from(self.seq.ok_or_else(|| missing("seq"))?).map_err(|e| e.to_string())?,
            actor: self.actor.clone(),
            action: self.action.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            before: self.before.clone(),
            after: self.after.clone(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            trace_id: self.trace_id.clone(),
            source_event_id: self.source_event_id,
            source_event_type: self.source_event_type.clone().ok_or_else(|| missing("source_event_type"))?,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            payload_bytes: u64::try_from(self.payload_bytes).map_err(|e| e.to_string())?,
            prev_hash: self.prev_hash.clone().ok_or_else(|| missing("prev_hash"))?,
            hash: self.hash.clone().ok_or_else(|| missing("hash"))?,
        })
    }
}

/// The `audit_checkpoints` columns, in [`CheckpointRow`]'s order.
pub const CHECKPOINT_COLUMNS: &str =
    "checkpoint_id, tenant_id, environment, tree_size, root_hash, last_hash, occurred_at, key_id, signature";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointRow {
    pub checkpoint_id: Uuid,
    pub tenant_id: String,
    pub environment: String,
    pub tree_size: i64,
    pub root_hash: String,
    pub last_hash: String,
    pub occurred_at: DateTime<Utc>,
    pub key_id: String,
    pub signature: String,
}

impl CheckpointRow {
    pub fn to_checkpoint(&self) -> Result<AuditCheckpoint, String> {
        Ok(AuditCheckpoint {
            checkpoint_id: self.checkpoint_id,
            tenant_id: self.tenant_id.clone(),
            environment: self.environment.parse()?,
            tree_size: u64::try_from(self.tree_size).map_err(|e| e.to_string())?,
            root_hash: self.root_hash.clone(),
            last_hash: self.last_hash.clone(),
            occurred_at: self.occurred_at,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_is_an_enveloped_event_on_the_actions_topic() {
        let topics = Topics::new("t.");
        let action = AuditAction {
            actor: "operator:ops".into(),
            action: riverbank_schemas::audit::actions::API_KEY_CREATED.into(),
            resource_type: "api_key".into(),
            resource_id: "rk_1".into(),
            before: None,
            after: Some("role=viewer".into()),
            ip: None,
            user_agent: None,
            request_id: None,
        };
        let e = action_emit(&topics, "tenant-a", Environment::Sandbox, "riverbank.cli", action.clone(), None)
            .expect("an emit");
        assert_eq!(e.topic, "t.sandbox.audit.actions");
        assert_eq!(e.key, "tenant-a");
        let back: Envelope<AuditAction> = serde_json::from_slice(&e.payload).expect("decodes");
        assert_eq!(back.payload, action);
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.event_type, AuditAction::EVENT_TYPE);
    }
}
