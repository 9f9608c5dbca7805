//! ClickHouse: analytics and audit search. No transactions here, so: rows first, then positions;
//! tables are `ReplacingMergeTree` keyed on the event id so a replayed row collapses onto the original,
//! and every query counts each key once (`FINAL`); months of `occurred_at` partition the data for time
//! pruning. Merges collapse copies only within a partition, so copies of one event id must share
//! `occurred_at`: events derived by processors copy their input's, and ingest pins it per event id (a
//! body event time, or the claim's first time; see ingest/src/store.rs). DDL and SQL run on ClickHouse
//! 18.16 and on current releases.
use std::collections::HashMap;
use std::time::Duration;

use clickhouse::{Client, Row};
use riverbank_runtime::config::ClickHouseConfig;
use riverbank_runtime::keystore::crypto::pseudonym::pseudonym;
use riverbank_runtime::sink::{Position, SinkStore, StoreError, Stored};
use riverbank_runtime::stores::{clickhouse_client, clickhouse_server_client};
use riverbank_schemas::Environment;
use serde::{Deserialize, Serialize};

use crate::rows::{self, Meta, Row as Decoded};
use riverbank_schemas::billing::{BillingInputRejected, FeeCharged, InvoiceRecorded};
use riverbank_schemas::commands::command_types;
use riverbank_schemas::fx::{ConversionAmounts, ConversionRecorded, FxInputRejected, QuoteRecorded};
use riverbank_schemas::kyc::{event_types as kyc_event_types, KycInputRejected, UserKycChanged};
use riverbank_schemas::ledger::BookingRecorded;
use riverbank_schemas::risk::{event_types as risk_types, DecisionRecorded, RiskInputRejected};
use riverbank_schemas::transfers::{InputRejected, LedgerPosting, PostingPhase, TransferStatusChanged};
use riverbank_schemas::{AuditCheckpoint, AuditRecord, Currency};

pub const SINK_NAME: &str = "clickhouse";

/// Statements creating every table, in order. Idempotent (`IF NOT EXISTS`).
pub fn ddl() -> Vec<&'static str> {
    vec![
        // The audit trail, every column as stated so `riverbank audit verify --clickhouse` can re-encode
        // each row. One row per log position: a replayed copy replaces itself (same bytes).
        "CREATE TABLE IF NOT EXISTS audit_trail (
            audit_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            seq UInt64,
            actor String,
            action String,
            resource_type String,
            resource_id String,
            before Nullable(String),
            after Nullable(String),
            ip Nullable(String),
            user_agent Nullable(String),
            request_id Nullable(String),
            trace_id Nullable(String),
            source_event_id UUID,
            source_event_type String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16,
            recorded_at DateTime('UTC'),
            recorded_ms UInt16,
            payload_bytes UInt64,
            prev_hash String,
            hash String,
            source_topic String,
            source_partition Int32,
            source_offset Int64
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, seq)",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (
            checkpoint_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            tree_size UInt64,
            root_hash String,
            last_hash String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16,
            key_id String,
            signature String
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, tree_size)",
        // Every event the sink reads (metadata only, never payloads): volumes per tenant, type, hour.
        "CREATE TABLE IF NOT EXISTS events (
            event_id UUID,
            event_type String,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            occurred_at DateTime('UTC'),
            occurred_ms UInt16,
            source_topic String
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // One row per status change, with amounts: volumes per tenant, currency, status, hour.
        "CREATE TABLE IF NOT EXISTS transfer_facts (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            transfer_id String,
            kind String,
            previous String,
            status String,
            version UInt32,
            amount_minor Int64,
            currency String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        "CREATE TABLE IF NOT EXISTS ledger_postings (
            event_id UUID,
            posting_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            transfer_id String,
            phase Enum8('hold' = 1, 'post' = 2, 'release' = 3),
            account String,
            amount_minor Int64,
            currency String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // Inputs the transfers processor refused, with the reason.
        "CREATE TABLE IF NOT EXISTS transfer_rejections (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            input_event_id UUID,
            input_event_type String,
            transfer_id String,
            reason String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // Risk decisions, live and shadow (`shadow` = 1: a candidate rule set's, never acted on). The
        // rules that fired as parallel arrays (ids, scores) for aggregation, and in full (features
        // included) as JSON text. `amount_report_minor` is NULL when no rate to the report currency
        // was seen; `reviewed_by` is empty unless an officer decided (the officer's reason, free text,
        // stays in Postgres: nothing typed by a person goes to the analytics store).
        "CREATE TABLE IF NOT EXISTS risk_decisions (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            transfer_id String,
            transfer_version UInt32,
            kind String,
            decision Enum8('approve' = 1, 'review' = 2, 'block' = 3),
            score UInt32,
            shadow UInt8,
            rule_set String,
            rule_set_version String,
            amount_minor Int64,
            currency String,
            amount_report_minor Nullable(Int64),
            report_currency String,
            ctr UInt8,
            user_id String,
            requested_by String,
            reviewed_by String,
            hit_rules Array(String),
            hit_scores Array(UInt32),
            hits_json String,
            lists_json String,
            rate_json String,
            screened_at DateTime('UTC'),
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // Inputs the risk processor refused, with the reason.
        "CREATE TABLE IF NOT EXISTS risk_rejections (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            input_event_id UUID,
            input_event_type String,
            transfer_id String,
            reason String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // One row per user.* event of the KYC processor. Ids, statuses, tiers and vendors' reason codes
        // only: an admin's reason text stays out (empty); `kyc_expires_at` is 0 (1970) when none.
        "CREATE TABLE IF NOT EXISTS kyc_facts (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            user_id String,
            event_type String,
            user_status String,
            kyc_status String,
            tier UInt8,
            version UInt64,
            kyc_expires_at DateTime('UTC'),
            case_id String,
            case_status String,
            provider String,
            reason String,
            actor String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // Inputs the KYC processor refused, with the reason.
        "CREATE TABLE IF NOT EXISTS kyc_rejections (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            input_event_id UUID,
            input_event_type String,
            user_id String,
            case_id String,
            reason String,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // One row per fx.quote_recorded and fx.conversion_recorded (`fact`), each version of each quote and
        // conversion: ids, statuses, the pair (`SELL/BUY`, empty while a conversion has no amounts),
        // amounts in minor units (sell in the sell currency; buy, fee and residue in the buy currency; 0
        // when not computed) and rates ×10^9. No actors, no reasons (an officer's reason is free text).
        // Read a quote's or conversion's state as its highest version.
        "CREATE TABLE IF NOT EXISTS fx_facts (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            fact Enum8('quote' = 1, 'conversion' = 2),
            id String,
            quote_id String,
            status String,
            version UInt32,
            pair String,
            sell_currency String,
            buy_currency String,
            sell_minor Int64,
            buy_minor Int64,
            fee_minor Int64,
            residue_minor Int64,
            mid_e9 Int64,
            rate_e9 Int64,
            otc UInt8,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // One row per billing.fee_charged: each version of each transfer's fee (the fee in `currency`,
        // minor units), its status, period and the transfer's completion time. Read a fee's state as
        // its highest version.
        "CREATE TABLE IF NOT EXISTS fee_facts (
            event_id UUID,
            tenant_id String,
            environment Enum8('live' = 1, 'sandbox' = 2),
            transfer_id String,
            kind String,
            currency String,
            fee_minor Int64,
            transfer_amount_minor Int64,
            status String,
            period String,
            adjustment UInt8,
            invoice_id String,
            completed_at DateTime('UTC'),
            completed_ms UInt16,
            version UInt32,
            occurred_at DateTime('UTC'),
            occurred_ms UInt16
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (tenant_id, environment, event_id)",
        // Positions of releases before log epochs (read once when `sink_positions` has none).
        "CREATE TABLE IF NOT EXISTS sink_offsets (
            sink String,
            topic String,
            partition Int32,
            next_offset Int64,
            landed_through_ms Int64
        ) ENGINE = ReplacingMergeTree(next_offset)
        ORDER BY (sink, topic, partition)",
        // Positions: `version` = log_epoch · 2^40 + next_offset, so within an epoch the furthest
        // position survives merges and a newer epoch (a recreated topic) replaces an older one; readers
        // take argMax(…, version) anyway.
        "CREATE TABLE IF NOT EXISTS sink_positions (
            sink String,
            topic String,
            partition Int32,
            log_epoch Int32,
            next_offset Int64,
            last_event_id UUID,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY (sink, topic, partition)",
        // Complete-through per partition: the greatest value survives merges (it only grows).
        "CREATE TABLE IF NOT EXISTS sink_watermarks (
            sink String,
            topic String,
            partition Int32,
            landed_through_ms Int64
        ) ENGINE = ReplacingMergeTree(landed_through_ms)
        ORDER BY (sink, topic, partition)",
    ]
}

/// Create the database and tables.
pub async fn create(cfg: &ClickHouseConfig) -> Result<(), clickhouse::error::Error> {
    clickhouse_server_client(cfg)
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))
        .execute()
        .await?;
    let c = clickhouse_client(cfg);
    for stmt in ddl() {
        c.query(stmt).execute().await?;
    }
    Ok(())
}

/// An `audit_trail` row: the record as stated, times split into seconds and milliseconds.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct AuditTrailRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub audit_id: uuid::Uuid,
    pub tenant_id: String,
    /// Enum8: 1 live, 2 sandbox.
    pub environment: i8,
    pub seq: u64,
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
    #[serde(with = "clickhouse::serde::uuid")]
    pub source_event_id: uuid::Uuid,
    pub source_event_type: String,
    /// Unix seconds (DateTime).
    pub occurred_at: u32,
    pub occurred_ms: u16,
    pub recorded_at: u32,
    pub recorded_ms: u16,
    pub payload_bytes: u64,
    pub prev_hash: String,
    pub hash: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// An `audit_checkpoints` row.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct AuditCheckpointRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub checkpoint_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub tree_size: u64,
    pub root_hash: String,
    pub last_hash: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
    pub key_id: String,
    pub signature: String,
}

fn enum8(env: Environment) -> i8 {
    match env {
        Environment::Live => 1,
        Environment::Sandbox => 2,
    }
}

fn unix_seconds(t: chrono::DateTime<chrono::Utc>) -> Result<u32, String> {
    u32::try_from(t.timestamp()).map_err(|_| format!("time {t} outside ClickHouse DateTime range"))
}

impl AuditTrailRow {
    pub fn from_audit(m: &Meta, a: &AuditRecord) -> Result<Self, String> {
        Ok(AuditTrailRow {
            audit_id: a.audit_id,
            tenant_id: a.tenant_id.clone(),
            environment: enum8(a.environment),
            seq: a.seq,
            actor: a.actor.clone(),
            action: a.action.clone(),
            resource_type: a.resource_type.clone(),
            resource_id: a.resource_id.clone(),
            before: a.before.clone(),
            after: a.after.clone(),
            ip: a.ip.clone(),
            user_agent: a.user_agent.clone(),
            request_id: a.request_id.clone(),
            trace_id: a.trace_id.clone(),
            source_event_id: a.source_event_id,
            source_event_type: a.source_event_type.clone(),
            occurred_at: unix_seconds(a.occurred_at)?,
            occurred_ms: millis(a.occurred_at),
            recorded_at: unix_seconds(a.recorded_at)?,
            recorded_ms: millis(a.recorded_at),
            payload_bytes: a.payload_bytes,
            prev_hash: a.prev_hash.clone(),
            hash: a.hash.clone(),
            source_topic: m.source_topic.clone(),
            source_partition: m.source_partition,
            source_offset: m.source_offset,
        })
    }

    /// The record as stated, read back (what `audit verify --clickhouse` re-encodes).
    pub fn to_record(&self) -> Result<AuditRecord, String> {
        let time = |s: u32, ms: u16| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(i64::from(s) * 1000 + i64::from(ms))
                .ok_or_else(|| format!("audit row {}: time out of range", self.audit_id))
        };
        Ok(AuditRecord {
            audit_id: self.audit_id,
            tenant_id: self.tenant_id.clone(),
            environment: env_of(self.environment)?,
            seq: self.seq,
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
            source_event_type: self.source_event_type.clone(),
            occurred_at: time(self.occurred_at, self.occurred_ms)?,
            recorded_at: time(self.recorded_at, self.recorded_ms)?,
            payload_bytes: self.payload_bytes,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

impl AuditCheckpointRow {
    pub fn from_checkpoint(c: &AuditCheckpoint) -> Result<Self, String> {
        Ok(AuditCheckpointRow {
            checkpoint_id: c.checkpoint_id,
            tenant_id: c.tenant_id.clone(),
            environment: enum8(c.environment),
            tree_size: c.tree_size,
            root_hash: c.root_hash.clone(),
            last_hash: c.last_hash.clone(),
            occurred_at: unix_seconds(c.occurred_at)?,
            occurred_ms: millis(c.occurred_at),
            key_id: c.key_id.clone(),
            signature: c.signature.clone(),
        })
    }

    pub fn to_checkpoint(&self) -> Result<AuditCheckpoint, String> {
        let ms = i64::from(self.occurred_at) * 1000 + i64::from(self.occurred_ms);
        Ok(AuditCheckpoint {
            checkpoint_id: self.checkpoint_id,
            tenant_id: self.tenant_id.clone(),
            environment: env_of(self.environment)?,
            tree_size: self.tree_size,
            root_hash: self.root_hash.clone(),
            last_hash: self.last_hash.clone(),
            occurred_at: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .ok_or("checkpoint time out of range")?,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        })
    }
}

fn env_of(v: i8) -> Result<Environment, String> {
    match v {
        1 => Ok(Environment::Live),
        2 => Ok(Environment::Sandbox),
        other => Err(format!("environment enum value {other} is neither live nor sandbox")),
    }
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct TransferFactRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub transfer_id: String,
    pub kind: String,
    pub previous: String,
    pub status: String,
    pub version: u32,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct PostingRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub posting_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub transfer_id: String,
    /// Enum8: 1 hold, 2 post, 3 release.
    pub phase: i8,
    pub account: String,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct RejectionRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    #[serde(with = "clickhouse::serde::uuid")]
    pub input_event_id: uuid::Uuid,
    pub input_event_type: String,
    /// Empty when the refused input named no transfer.
    pub transfer_id: String,
    pub reason: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn rejection(m: &Meta, r: &InputRejected) -> Result<RejectionRow, String> {
    Ok(RejectionRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        input_event_id: r.input_event_id,
        input_event_type: r.input_event_type.clone(),
        transfer_id: r.transfer_id.clone().unwrap_or_default(),
        reason: r.reason.clone(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

/// A `risk_decisions` row (live or shadow).
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct RiskDecisionRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub transfer_id: String,
    pub transfer_version: u32,
    pub kind: String,
    /// Enum8: 1 approve, 2 review, 3 block.
    pub decision: i8,
    pub score: u32,
    pub shadow: u8,
    pub rule_set: String,
    pub rule_set_version: String,
    pub amount_minor: i64,
    pub currency: String,
    pub amount_report_minor: Option<i64>,
    pub report_currency: String,
    pub ctr: u8,
    /// Empty when the transfer names no end user.
    pub user_id: String,
    pub requested_by: String,
    /// Empty unless a compliance officer decided.
    pub reviewed_by: String,
    pub hit_rules: Vec<String>,
    pub hit_scores: Vec<u32>,
    pub hits_json: String,
    pub lists_json: String,
    /// Empty when no rate was applied.
    pub rate_json: String,
    pub screened_at: u32,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn risk_decision(m: &Meta, d: &DecisionRecorded, key: &[u8; 32]) -> Result<RiskDecisionRow, String> {
    use riverbank_schemas::transfers::RiskOutcome;
    Ok(RiskDecisionRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        transfer_id: d.transfer_id.clone(),
        transfer_version: d.transfer_version,
        kind: d.kind.as_str().to_owned(),
        decision: match d.decision {
            RiskOutcome::Approve => 1,
            RiskOutcome::Review => 2,
            RiskOutcome::Block => 3,
        },
        score: d.score,
        shadow: u8::from(d.shadow),
        rule_set: d.rule_set.clone(),
        rule_set_version: d.rule_set_version.clone(),
        amount_minor: d.amount.amount_minor,
        currency: d.amount.currency.code().to_owned(),
        amount_report_minor: d.amount_report_minor,
        report_currency: d.report_currency.code().to_owned(),
        ctr: u8::from(d.ctr),
        user_id: user_pseudonym(key, &m.tenant_id, d.user_id.as_deref().unwrap_or_default()),
        requested_by: d.requested_by.clone(),
        reviewed_by: d.reviewed_by.clone().unwrap_or_default(),
        hit_rules: d.hits.iter().map(|h| h.rule.clone()).collect(),
        hit_scores: d.hits.iter().map(|h| h.score).collect(),
        hits_json: json_text(&d.hits),
        lists_json: json_text(&d.lists),
        rate_json: d.rate.as_ref().map(json_text).unwrap_or_default(),
        screened_at: unix_seconds(d.screened_at)?,
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

/// JSON text of a value the sinks serialize themselves (a plain data type: serializing cannot fail).
fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn risk_rejection(m: &Meta, r: &RiskInputRejected) -> Result<RejectionRow, String> {
    Ok(RejectionRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        input_event_id: r.input_event_id,
        input_event_type: r.input_event_type.clone(),
        transfer_id: r.transfer_id.clone().unwrap_or_default(),
        reason: r.reason.clone(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct KycFactRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub user_id: String,
    pub event_type: String,
    pub user_status: String,
    pub kyc_status: String,
    pub tier: u8,
    pub version: u64,
    /// Unix seconds; 0 when the KYC has no expiry (not approved).
    pub kyc_expires_at: u32,
    /// Empty when the event names none.
    pub case_id: String,
    pub case_status: String,
    pub provider: String,
    /// The vendor's or the processor's reason; empty for admin decisions (their text is no code).
    pub reason: String,
    pub actor: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn kyc_fact(m: &Meta, event_type: &str, u: &UserKycChanged, key: &[u8; 32]) -> Result<KycFactRow, String> {
    Ok(KycFactRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        user_id: user_pseudonym(key, &m.tenant_id, &u.user_id),
        event_type: event_type.to_owned(),
        user_status: u.user_status.as_str().to_owned(),
        kyc_status: u.kyc_status.as_str().to_owned(),
        tier: u.tier,
        version: u.version,
        kyc_expires_at: u.kyc_expires_at.map(unix_seconds).transpose()?.unwrap_or(0),
        case_id: u.case_id.clone().unwrap_or_default(),
        case_status: u.case_status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        provider: u.provider.clone().unwrap_or_default(),
        reason: if u.actor.is_none() { u.reason.clone().unwrap_or_default() } else { String::new() },
        actor: u.actor.clone().unwrap_or_default(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct KycRejectionRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    #[serde(with = "clickhouse::serde::uuid")]
    pub input_event_id: uuid::Uuid,
    pub input_event_type: String,
    /// Empty when the refused input named none.
    pub user_id: String,
    pub case_id: String,
    pub reason: String,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn kyc_rejection(m: &Meta, r: &KycInputRejected, key: &[u8; 32]) -> Result<KycRejectionRow, String> {
    Ok(KycRejectionRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        input_event_id: r.input_event_id,
        input_event_type: r.input_event_type.clone(),
        user_id: user_pseudonym(key, &m.tenant_id, r.user_id.as_deref().unwrap_or_default()),
        case_id: r.case_id.clone().unwrap_or_default(),
        reason: r.reason.clone(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

/// An `fx_facts` row: one version of a quote or a conversion.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct FxFactRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    /// Enum8: 1 quote, 2 conversion.
    pub fact: i8,
    pub id: String,
    /// The quote (itself, for a quote).
    pub quote_id: String,
    pub status: String,
    pub version: u32,
    /// `SELL/BUY`; empty while unknown (a conversion without amounts).
    pub pair: String,
    pub sell_currency: String,
    pub buy_currency: String,
    pub sell_minor: i64,
    pub buy_minor: i64,
    pub fee_minor: i64,
    pub residue_minor: i64,
    pub mid_e9: i64,
    pub rate_e9: i64,
    pub otc: u8,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn quote_fact(m: &Meta, q: &QuoteRecorded) -> Result<FxFactRow, String> {
    Ok(FxFactRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        fact: 1,
        id: q.quote_id.clone(),
        quote_id: q.quote_id.clone(),
        status: q.status.as_str().to_owned(),
        version: q.version,
        pair: format!("{}/{}", q.sell_currency, q.buy_currency),
        sell_currency: q.sell_currency.code().to_owned(),
        buy_currency: q.buy_currency.code().to_owned(),
        sell_minor: q.sell.map_or(0, |a| a.amount_minor),
        buy_minor: q.buy.map_or(0, |a| a.amount_minor),
        fee_minor: 0,
        residue_minor: 0,
        mid_e9: q.mid_e9.unwrap_or(0),
        rate_e9: q.rate_e9.unwrap_or(0),
        otc: 0,
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

fn conversion_fact(m: &Meta, c: &ConversionRecorded) -> Result<FxFactRow, String> {
    let a = c.amounts.as_ref();
    let code = |f: fn(&ConversionAmounts) -> Currency| a.map(|a| f(a).code().to_owned()).unwrap_or_default();
    let (sell_currency, buy_currency) = (code(|a| a.sell.currency), code(|a| a.buy.currency));
    Ok(FxFactRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        fact: 2,
        id: c.conversion_id.clone(),
        quote_id: c.quote_id.clone(),
        status: c.status.as_str().to_owned(),
        version: c.version,
        pair: if a.is_some() { format!("{sell_currency}/{buy_currency}") } else { String::new() },
        sell_currency,
        buy_currency,
        sell_minor: a.map_or(0, |a| a.sell.amount_minor),
        buy_minor: a.map_or(0, |a| a.buy.amount_minor),
        fee_minor: a.map_or(0, |a| a.fee.amount_minor),
        residue_minor: a.map_or(0, |a| a.residue.amount_minor),
        mid_e9: c.mid_e9.unwrap_or(0),
        rate_e9: c.rate_e9.unwrap_or(0),
        otc: u8::from(c.otc),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

/// A `fee_facts` row: one version of a transfer's fee.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct FeeFactRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub tenant_id: String,
    pub environment: i8,
    pub transfer_id: String,
    /// The transfer's kind.
    pub kind: String,
    pub currency: String,
    pub fee_minor: i64,
    pub transfer_amount_minor: i64,
    pub status: String,
    pub period: String,
    pub adjustment: u8,
    /// Empty until booked.
    pub invoice_id: String,
    pub completed_at: u32,
    pub completed_ms: u16,
    pub version: u32,
    pub occurred_at: u32,
    pub occurred_ms: u16,
}

fn fee_fact(m: &Meta, f: &FeeCharged) -> Result<FeeFactRow, String> {
    Ok(FeeFactRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        transfer_id: f.transfer_id.clone(),
        kind: f.transfer_kind.as_str().to_owned(),
        currency: f.fee.currency.code().to_owned(),
        fee_minor: f.fee.amount_minor,
        transfer_amount_minor: f.transfer_amount.amount_minor,
        status: f.status.as_str().to_owned(),
        period: f.period.clone(),
        adjustment: u8::from(f.adjustment),
        invoice_id: f.invoice_id.clone().unwrap_or_default(),
        completed_at: unix_seconds(f.completed_at)?,
        completed_ms: millis(f.completed_at),
        version: f.version,
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

fn millis(t: chrono::DateTime<chrono::Utc>) -> u16 {
    u16::try_from(t.timestamp_subsec_millis()).unwrap_or(999)
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub tenant_id: String,
    pub environment: i8,
    pub occurred_at: u32,
    pub occurred_ms: u16,
    pub source_topic: String,
}

impl EventRow {
    fn of(m: &Meta, event_type: &str) -> Result<Self, String> {
        Ok(EventRow {
            event_id: m.event_id,
            event_type: event_type.to_owned(),
            tenant_id: m.tenant_id.clone(),
            environment: enum8(m.environment),
            occurred_at: unix_seconds(m.occurred_at)?,
            occurred_ms: millis(m.occurred_at),
            source_topic: m.source_topic.clone(),
        })
    }
}

/// A decoded message as the ClickHouse rows it becomes (balances are Postgres-only beyond `events`).
#[derive(Debug, Clone)]
pub enum ChRow {
    Event(EventRow),
    Audit(AuditTrailRow),
    AuditCheckpoint(AuditCheckpointRow),
    Fact(TransferFactRow),
    Posting(PostingRow),
    Rejection(RejectionRow),
    KycFact(KycFactRow),
    KycRejection(KycRejectionRow),
    RiskDecision(RiskDecisionRow),
    /// A `risk_rejections` row (same shape as `transfer_rejections`).
    RiskRejection(RejectionRow),
    FxFact(FxFactRow),
    FeeFact(FeeFactRow),
}

/// The id ClickHouse holds for a user id of `tenant`: its keyed pseudonym
/// (`riverbank_crypto::pseudonym`, under `keys.pseudonym_key`), never the id itself. Analytics count
/// and join by it; a filter by a user id pseudonymizes the bound value the same way. An empty id (no
/// user named) stays empty.
pub fn user_pseudonym(key: &[u8; 32], tenant: &str, user_id: &str) -> String {
    if user_id.is_empty() {
        String::new()
    } else {
        pseudonym(key, tenant, user_id)
    }
}

impl ChRow {
    /// The `events` row and the typed row (if the type has a table) for one decoded message; user ids
    /// become pseudonyms under `pseudonym_key`. A sealed personal value (`personal_data`, Postgres
    /// only) becomes no row: ClickHouse never holds webhook bodies, and `events` counts what it did.
    pub fn from_row(r: &Decoded, pseudonym_key: &[u8; 32]) -> Result<Vec<ChRow>, String> {
        use riverbank_schemas::transfers::BalanceChanged;
        let key = pseudonym_key;
        let (event_type, typed) = match r {
            Decoded::PersonalData(..) => return Ok(Vec::new()),
            Decoded::Audit(m, a) => {
                (AuditRecord::EVENT_TYPE, Some(ChRow::Audit(AuditTrailRow::from_audit(m, a)?)))
            }
            Decoded::AuditCheckpoint(_, c) => (
                AuditCheckpoint::EVENT_TYPE,
                Some(ChRow::AuditCheckpoint(AuditCheckpointRow::from_checkpoint(c)?)),
            ),
            Decoded::Status(m, s) => (TransferStatusChanged::EVENT_TYPE, Some(ChRow::Fact(fact(m, s)?))),
            Decoded::Posting(m, p) => (LedgerPosting::EVENT_TYPE, Some(ChRow::Posting(posting(m, p)?))),
            Decoded::Balance(..) => (BalanceChanged::EVENT_TYPE, None),
            Decoded::Rejection(m, r) => (InputRejected::EVENT_TYPE, Some(ChRow::Rejection(rejection(m, r)?))),
            Decoded::User(m, t, u) => (*t, Some(ChRow::KycFact(kyc_fact(m, t, u, key)?))),
            Decoded::KycRejection(m, r) => {
                (kyc_event_types::KYC_INPUT_REJECTED, Some(ChRow::KycRejection(kyc_rejection(m, r, key)?)))
            }
            Decoded::RiskDecision(m, d) => {
                (risk_types::DECISION_RECORDED, Some(ChRow::RiskDecision(risk_decision(m, d, key)?)))
            }
            Decoded::RiskRejection(m, r) => {
                (risk_types::INPUT_REJECTED, Some(ChRow::RiskRejection(risk_rejection(m, r)?)))
            }
            Decoded::Quote(m, q) => (QuoteRecorded::EVENT_TYPE, Some(ChRow::FxFact(quote_fact(m, q)?))),
            Decoded::Conversion(m, c) => {
                (ConversionRecorded::EVENT_TYPE, Some(ChRow::FxFact(conversion_fact(m, c)?)))
            }
            Decoded::Fee(m, f) => (FeeCharged::EVENT_TYPE, Some(ChRow::FeeFact(fee_fact(m, f)?))),
            // Postgres alone keeps rates, rejections, bookings and invoices; `events` counts them here.
            Decoded::FxRates(..) => (command_types::FX_RATES_PUBLISHED, None),
            Decoded::FxRejection(..) => (FxInputRejected::EVENT_TYPE, None),
            Decoded::Booking(..) => (BookingRecorded::EVENT_TYPE, None),
            Decoded::Invoice(..) => (InvoiceRecorded::EVENT_TYPE, None),
            Decoded::BillingRejection(..) => (BillingInputRejected::EVENT_TYPE, None),
        };
        let mut out = vec![ChRow::Event(EventRow::of(r.meta(), event_type)?)];
        out.extend(typed);
        Ok(out)
    }
}

fn fact(m: &Meta, s: &TransferStatusChanged) -> Result<TransferFactRow, String> {
    Ok(TransferFactRow {
        event_id: m.event_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        transfer_id: s.transfer_id.clone(),
        kind: s.kind.as_str().to_owned(),
        previous: s.previous.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        status: s.status.as_str().to_owned(),
        version: s.version,
        amount_minor: s.amount.amount_minor,
        currency: s.amount.currency.code().to_owned(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

fn posting(m: &Meta, p: &LedgerPosting) -> Result<PostingRow, String> {
    Ok(PostingRow {
        event_id: m.event_id,
        posting_id: p.posting_id,
        tenant_id: m.tenant_id.clone(),
        environment: enum8(m.environment),
        transfer_id: p.transfer_id.clone(),
        phase: match p.phase {
            PostingPhase::Hold => 1,
            PostingPhase::Post => 2,
            PostingPhase::Release => 3,
        },
        account: p.account.clone(),
        amount_minor: p.amount_minor,
        currency: p.currency.code().to_owned(),
        occurred_at: unix_seconds(m.occurred_at)?,
        occurred_ms: millis(m.occurred_at),
    })
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct PositionRow {
    sink: String,
    topic: String,
    partition: i32,
    log_epoch: i32,
    next_offset: i64,
    /// Nil when unknown.
    #[serde(with = "clickhouse::serde::uuid")]
    last_event_id: uuid::Uuid,
    version: u64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct WatermarkRow {
    sink: String,
    topic: String,
    partition: i32,
    landed_through_ms: i64,
}

/// The replacing version of a position: epochs first, then offsets (offsets stay below 2^40).
fn position_version(log_epoch: i32, next_offset: i64) -> u64 {
    (u64::try_from(log_epoch).unwrap_or(0) << 40)
        | (u64::try_from(next_offset).unwrap_or(0) & ((1 << 40) - 1))
}

pub struct ClickHouseSink {
    client: Client,
    timeout: Duration,
    /// `keys.pseudonym_key`: user ids are written as their pseudonyms ([`user_pseudonym`]).
    pseudonym_key: [u8; 32],
}

impl ClickHouseSink {
    /// `pseudonym_key` is `keys.pseudonym_key` (`riverbank_runtime::keystore::pseudonym_key`).
    pub fn new(cfg: &ClickHouseConfig, pseudonym_key: [u8; 32]) -> Self {
        ClickHouseSink {
            client: clickhouse_client(cfg),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            pseudonym_key,
        }
    }
}

async fn insert<T: Row + Serialize + for<'a> Row<Value<'a> = T> + clickhouse::RowWrite>(
    client: &Client,
    table: &str,
    rows: &[&T],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert::<T>(table).await?;
    for row in rows {
        insert.write(*row).await?;
    }
    insert.end().await
}

/// One table's insert of a batch, run beside the other tables' (`insert_rows`).
type TableInsert<'f> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'f>>;

/// The insert of `rows` into `{table_prefix}{name}` within `timeout`, if there are any.
fn table_insert<'f, T>(
    client: &'f Client,
    table_prefix: &str,
    name: &'static str,
    rows: Vec<&'f T>,
    timeout: Duration,
) -> Option<TableInsert<'f>>
where
    T: Row + Serialize + for<'a> Row<Value<'a> = T> + clickhouse::RowWrite + Sync + 'static,
{
    if rows.is_empty() {
        return None;
    }
    let table = format!("{table_prefix}{name}");
    Some(Box::pin(async move {
        let what = format!("insert {table}");
        within(timeout, &what, insert(client, &table, &rows)).await
    }))
}

/// Insert decoded rows, one RowBinary insert per table (`{table_prefix}events`, …), the tables' inserts
/// at the same time (they are independent: each row is idempotent on its key), each within `timeout`.
pub async fn insert_rows(
    client: &Client,
    rows: &[ChRow],
    table_prefix: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    let (mut events, mut audit, mut facts, mut postings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut checkpoints = Vec::new();
    let mut rejections = Vec::new();
    let (mut kyc_facts, mut kyc_rejections) = (Vec::new(), Vec::new());
    let (mut risk_decisions, mut risk_rejections) = (Vec::new(), Vec::new());
    let (mut fx_facts, mut fee_facts) = (Vec::new(), Vec::new());
    for r in rows {
        match r {
            ChRow::Event(e) => events.push(e),
            ChRow::Audit(a) => audit.push(a),
            ChRow::AuditCheckpoint(c) => checkpoints.push(c),
            ChRow::Fact(f) => facts.push(f),
            ChRow::Posting(p) => postings.push(p),
            ChRow::Rejection(r) => rejections.push(r),
            ChRow::KycFact(f) => kyc_facts.push(f),
            ChRow::KycRejection(r) => kyc_rejections.push(r),
            ChRow::RiskDecision(d) => risk_decisions.push(d),
            ChRow::RiskRejection(r) => risk_rejections.push(r),
            ChRow::FxFact(f) => fx_facts.push(f),
            ChRow::FeeFact(f) => fee_facts.push(f),
        }
    }
    let (p, t) = (table_prefix, timeout);
    let inserts: Vec<TableInsert<'_>> = [
        table_insert(client, p, "events", events, t),
        table_insert(client, p, "audit_trail", audit, t),
        table_insert(client, p, "audit_checkpoints", checkpoints, t),
        table_insert(client, p, "transfer_facts", facts, t),
        table_insert(client, p, "ledger_postings", postings, t),
        table_insert(client, p, "transfer_rejections", rejections, t),
        table_insert(client, p, "kyc_facts", kyc_facts, t),
        table_insert(client, p, "kyc_rejections", kyc_rejections, t),
        table_insert(client, p, "risk_decisions", risk_decisions, t),
        table_insert(client, p, "risk_rejections", risk_rejections, t),
        table_insert(client, p, "fx_facts", fx_facts, t),
        table_insert(client, p, "fee_facts", fee_facts, t),
    ]
    .into_iter()
    .flatten()
    .collect();
    futures::future::try_join_all(inserts).await?;
    Ok(())
}

async fn within<T, E: Into<StoreError>>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("clickhouse {what} timed out after {} ms", timeout.as_millis()).into()),
    }
}

impl SinkStore for ClickHouseSink {
    type Row = ChRow;

    fn name(&self) -> &'static str {
        SINK_NAME
    }

    fn decode(
        &self,
        topic: &str,
        env: Environment,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(Vec<ChRow>, i64), String> {
        let (rows, ingested_ms) = rows::decode(topic, env, partition, offset, payload)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.extend(ChRow::from_row(r, &self.pseudonym_key)?);
        }
        Ok((out, ingested_ms))
    }

    async fn load_positions(&self, topic: &str) -> Result<HashMap<i32, Stored>, StoreError> {
        #[derive(Row, Deserialize)]
        struct P {
            partition: i32,
            log_epoch: i32,
            next_offset: i64,
            #[serde(with = "clickhouse::serde::uuid")]
            last_event_id: uuid::Uuid,
        }
        #[derive(Row, Deserialize)]
        struct W {
            partition: i32,
            landed_through_ms: i64,
        }
        #[derive(Row, Deserialize)]
        struct Old {
            partition: i32,
            next_offset: i64,
        }
        let q = self
            .client
            .query(
                "SELECT partition, argMax(log_epoch, version) AS log_epoch, argMax(next_offset, version) AS next_offset,
                        argMax(last_event_id, version) AS last_event_id
                 FROM sink_positions WHERE sink = ? AND topic = ? GROUP BY partition",
            )
            .bind(SINK_NAME)
            .bind(topic);
        let rows: Vec<P> = within(self.timeout, "load positions", q.fetch_all::<P>()).await?;
        let mut out: HashMap<i32, Stored> = rows
            .into_iter()
            .map(|p| {
                let id = (!p.last_event_id.is_nil()).then_some(p.last_event_id);
                let stored = Stored {
                    next_offset: p.next_offset,
                    last_event_id: id,
                    log_epoch: p.log_epoch,
                    landed_through_ms: None,
                };
                (p.partition, stored)
            })
            .collect();
        if out.is_empty() {
            // Written by a release before log epochs: epoch 0, no identity.
            let q = self
                .client
                .query("SELECT partition, max(next_offset) AS next_offset FROM sink_offsets WHERE sink = ? AND topic = ? GROUP BY partition")
                .bind(SINK_NAME)
                .bind(topic);
            let old: Vec<Old> = within(self.timeout, "load old positions", q.fetch_all::<Old>()).await?;
            out = old
                .into_iter()
                .map(|o| (o.partition, Stored { next_offset: o.next_offset, ..Stored::default() }))
                .collect();
        }
        let q = self
            .client
            .query(
                "SELECT partition, max(landed_through_ms) AS landed_through_ms FROM sink_watermarks
                 WHERE sink = ? AND topic = ? GROUP BY partition",
            )
            .bind(SINK_NAME)
            .bind(topic);
        let marks: Vec<W> = within(self.timeout, "load watermarks", q.fetch_all::<W>()).await?;
        for w in marks {
            if let Some(s) = out.get_mut(&w.partition) {
                s.landed_through_ms = Some(w.landed_through_ms);
            }
        }
        Ok(out)
    }

    async fn write(&self, rows: &[ChRow], positions: &[Position]) -> Result<(), StoreError> {
        // Rows first; a crash before the positions below re-inserts them, and the tables collapse
        // duplicates by event id.
        insert_rows(&self.client, rows, "", self.timeout).await?;
        let offsets: Vec<PositionRow> = positions
            .iter()
            .map(|p| PositionRow {
                sink: SINK_NAME.to_owned(),
                topic: p.topic.clone(),
                partition: p.partition,
                log_epoch: p.log_epoch,
                next_offset: p.next_offset,
                last_event_id: p.last_event_id.unwrap_or_else(uuid::Uuid::nil),
                version: position_version(p.log_epoch, p.next_offset),
            })
            .collect();
        let marks: Vec<WatermarkRow> = positions
            .iter()
            .filter_map(|p| {
                Some(WatermarkRow {
                    sink: SINK_NAME.to_owned(),
                    topic: p.topic.clone(),
                    partition: p.partition,
                    landed_through_ms: p.landed_through_ms?,
                })
            })
            .collect();
        // Positions and complete-through marks are independent of each other (both follow the rows).
        let (c, t) = (&self.client, self.timeout);
        let after: Vec<TableInsert<'_>> = [
            table_insert(c, "", "sink_positions", offsets.iter().collect(), t),
            table_insert(c, "", "sink_watermarks", marks.iter().collect(), t),
        ]
        .into_iter()
        .flatten()
        .collect();
        futures::future::try_join_all(after).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use riverbank_schemas::kyc::{KycStatus, UserStatus};
    use uuid::Uuid;

    use super::*;
    use crate::rows::PersonalValue;

    const KEY: [u8; 32] = [7; 32];

    fn meta(tenant: &str) -> Meta {
        Meta {
            event_id: Uuid::new_v4(),
            tenant_id: tenant.to_owned(),
            environment: Environment::Live,
            occurred_at: Utc::now(),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
        }
    }

    fn user(id: &str) -> UserKycChanged {
        UserKycChanged {
            user_id: id.into(),
            user_status: UserStatus::Active,
            kyc_status: KycStatus::Approved,
            tier: 1,
            kyc_expires_at: None,
            version: 1,
            case_id: None,
            case_status: None,
            provider: None,
            reason: None,
            actor: None,
            cause_event_id: Uuid::new_v4(),
        }
    }

    fn kyc_user_id(rows: &[ChRow]) -> String {
        rows.iter()
            .find_map(|r| match r {
                ChRow::KycFact(f) => Some(f.user_id.clone()),
                _ => None,
            })
            .expect("a kyc fact")
    }

    #[test]
    fn user_ids_are_written_as_keyed_pseudonyms() {
        let t = kyc_event_types::USER_VERIFIED;
        let a = ChRow::from_row(&Decoded::User(meta("tenant-a"), t, user("usr_1")), &KEY).expect("rows");
        let id = kyc_user_id(&a);
        assert_ne!(id, "usr_1");
        assert_eq!(id, pseudonym(&KEY, "tenant-a", "usr_1"));
        assert_eq!(id.len(), 64);
        // Stable per (tenant, user), so analytics count and join by it; unrelated across tenants and keys.
        let again = ChRow::from_row(&Decoded::User(meta("tenant-a"), t, user("usr_1")), &KEY).expect("rows");
        assert_eq!(kyc_user_id(&again), id);
        let other = ChRow::from_row(&Decoded::User(meta("tenant-b"), t, user("usr_1")), &KEY).expect("rows");
        assert_ne!(kyc_user_id(&other), id);
        let rekeyed =
            ChRow::from_row(&Decoded::User(meta("tenant-a"), t, user("usr_1")), &[8; 32]).expect("rows");
        assert_ne!(kyc_user_id(&rekeyed), id);
        // No user named stays empty (risk decisions and KYC rejections without a user).
        assert_eq!(user_pseudonym(&KEY, "tenant-a", ""), "");
        let rejected = KycInputRejected {
            input_event_id: Uuid::new_v4(),
            input_event_type: "webhook.received".into(),
            user_id: Some("usr_2".into()),
            case_id: None,
            reason: "r".into(),
            at: None,
        };
        let rows = ChRow::from_row(&Decoded::KycRejection(meta("tenant-a"), rejected), &KEY).expect("rows");
        let Some(ChRow::KycRejection(r)) = rows.get(1) else { panic!("a kyc rejection row") };
        assert_eq!(r.user_id, pseudonym(&KEY, "tenant-a", "usr_2"));
    }

    #[test]
    fn personal_data_becomes_no_clickhouse_row() {
        let v = PersonalValue {
            subject: "usr_1".into(),
            data_class: "pii.name",
            pointer: "/name".into(),
            record: Uuid::new_v4().to_string(),
            sealed: "rbf1.x.y.z".into(),
            provider: "kycflow".into(),
        };
        let rows =
            ChRow::from_row(&Decoded::PersonalData(meta("tenant-a"), Box::new(v)), &KEY).expect("rows");
        assert!(rows.is_empty(), "no events row either: {rows:?}");
    }
}
