//! The audit trail's contract (DOMAIN.md, "Audit"; ARCHITECTURE.md, "The audit trail").
//!
//! - [`AuditRecord`] (v2): one append-only record per significant action. Each (tenant, environment) log
//!   is numbered from 1 (`seq`, no gaps) and hash-chained: `hash` = SHA-256 of the record's
//!   [canonical encoding](AuditRecord::canonical_bytes), which includes `prev_hash` (the previous
//!   record's `hash`, [`GENESIS_HASH`] for the first). The Merkle leaf of a record is RFC 6962's
//!   SHA-256(0x00 ‖ canonical bytes).
//! - [`AuditCheckpoint`]: at least every N records or T of event time, the audit processor signs (Ed25519,
//!   under a key id) the log's size, its Merkle tree head over records 1..size, and the chain head.
//! - [`AuditAction`]: an action that happens outside the processors (an API key created or revoked, a
//!   dead letter redriven, decrypted personal data read, an export, an erasure, a key rewrap, a consent
//!   change) written to `{env}.audit.actions` by the component that performed it; the audit processor
//!   chains it like every other record.
//! - [`ExportRow`]: what an export holds (JSON lines or CSV, the same rows) and `riverbank audit verify`
//!   checks.
//!
//! Records hold no personal data in clear: ids (pseudonymous), actions, statuses and sizes.
//! Times are kept to the millisecond (both stores hold exactly that), so a record read back from any
//! store re-encodes to the same bytes.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Environment;

/// `prev_hash` of a log's first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation of the canonical encodings (a record can never be read as a checkpoint).
const RECORD_DOMAIN: &[u8] = b"riverbank.audit.record.v2\n";
const CHECKPOINT_DOMAIN: &str = "riverbank.audit.checkpoint.v1";

/// An append-only, hash-chained audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub audit_id: Uuid,
    pub tenant_id: String,
    pub environment: Environment,
    /// Position in the (tenant, environment) log, from 1, without gaps.
    pub seq: u64,
    /// Who acted: `provider:<name>`, `user:<pseudonymous id>`, `system:<component>`, `operator:<name>`.
    pub actor: String,
    /// What happened, dotted: `webhook.received`, `transfer.status_changed`, `api_key.created`, …
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The resource's state before, redacted to codes (a status, a tier), when the action changed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The resource's state after, redacted the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The client's network, truncated (IPv4 /24, IPv6 /48), when the action came over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The request that caused it (an idempotency key or request id), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The event this record was derived from, and its type.
    pub source_event_id: Uuid,
    pub source_event_type: String,
    /// When it happened (event time, to the millisecond).
    pub occurred_at: DateTime<Utc>,
    /// When the source event was accepted by riverbank (taken from it, so replays are identical).
    pub recorded_at: DateTime<Utc>,
    /// Size in bytes of the payload the action concerned (0 when none).
    pub payload_bytes: u64,
    /// The previous record's `hash` in this log ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// SHA-256 (hex) of [`Self::canonical_bytes`].
    pub hash: String,
}

impl AuditRecord {
    pub const EVENT_TYPE: &'static str = "audit.recorded";
    pub const SCHEMA_VERSION: u16 = 2;

    /// The canonical encoding the chain and the Merkle tree are computed over: a domain tag, then every
    /// field but `hash` in declaration order, each as a presence byte (0 absent, 1 present), a 4-byte
    /// big-endian length and the UTF-8 bytes. Numbers are decimal text, times are milliseconds since the
    /// epoch (decimal), ids are lowercase hyphenated UUIDs. Independent of JSON, so any language can
    /// recompute it.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(RECORD_DOMAIN);
        let mut put = |v: Option<&str>| match v {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&s.as_bytes()[..len as usize]);
            }
        };
        put(Some(&self.audit_id.to_string()));
        put(Some(&self.tenant_id));
        put(Some(self.environment.as_str()));
        put(Some(&self.seq.to_string()));
        put(Some(&self.actor));
        put(Some(&self.action));
        put(Some(&self.resource_type));
        put(Some(&self.resource_id));
        put(self.before.as_deref());
        put(self.after.as_deref());
        put(self.ip.as_deref());
        put(self.user_agent.as_deref());
        put(self.request_id.as_deref());
        put(self.trace_id.as_deref());
        put(Some(&self.source_event_id.to_string()));
        put(Some(&self.source_event_type));
        put(Some(&self.occurred_at.timestamp_millis().to_string()));
        put(Some(&self.recorded_at.timestamp_millis().to_string()));
        put(Some(&self.payload_bytes.to_string()));
        put(Some(&self.prev_hash));
        out
    }

    /// SHA-256 (hex) of the canonical encoding: what `hash` must hold.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }
}

/// `audit.checkpoint_signed`: a signed statement of a log's size, Merkle tree head and chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    pub checkpoint_id: Uuid,
    pub tenant_id: String,
    pub environment: Environment,
    /// Records 1..=tree_size are covered.
    pub tree_size: u64,
    /// RFC 6962 Merkle tree head (hex) over the leaves of records 1..=tree_size.
    pub root_hash: String,
    /// `hash` of record `tree_size` (the chain head).
    pub last_hash: String,
    /// Event time of the checkpoint (the last record's, or the tick's that closed the interval), ms.
    pub occurred_at: DateTime<Utc>,
    /// `ed25519:<16 hex of SHA-256 of the public key>`.
    pub key_id: String,
    /// Ed25519 signature (base64) of [`Self::signed_message`].
    pub signature: String,
}

impl AuditCheckpoint {
    pub const EVENT_TYPE: &'static str = "audit.checkpoint_signed";
    pub const SCHEMA_VERSION: u16 = 1;

    /// The bytes signed: a text note, one field per line, so a client can rebuild it from the JSON
    /// fields and check the signature with the public key alone:
    /// `riverbank.audit.checkpoint.v1\n{tenant}\n{environment}\n{tree_size}\n{root_hash}\n{last_hash}\n{occurred_at ms}\n`.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(
            &self.tenant_id,
            self.environment,
            self.tree_size,
            &self.root_hash,
            &self.last_hash,
            self.occurred_at.timestamp_millis(),
        )
    }
}

/// [`AuditCheckpoint::signed_message`] from its parts (the signer builds it before the checkpoint).
pub fn signed_message(
    tenant: &str,
    environment: Environment,
    tree_size: u64,
    root_hash: &str,
    last_hash: &str,
    occurred_ms: i64,
) -> Vec<u8> {
    // Tenant ids are slugs (no line breaks), so one field per line is unambiguous.
    format!(
        "{CHECKPOINT_DOMAIN}\n{tenant}\n{}\n{tree_size}\n{root_hash}\n{last_hash}\n{occurred_ms}\n",
        environment.as_str()
    )
    .into_bytes()
}

/// `audit.action_taken` on `{env}.audit.actions`: an action performed outside the processors, stated by
/// the component that performed it. Tenant, environment, time and trace come from the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditAction {
    /// Who: `user:<id>` (an API caller), `operator:<name>` (the CLI), `system:<component>`.
    pub actor: String,
    /// One of [`actions`].
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Truncated by the producer (see [`truncate_ip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AuditAction {
    pub const EVENT_TYPE: &'static str = "audit.action_taken";
    pub const SCHEMA_VERSION: u16 = 1;
    /// Longest user agent kept (bytes); longer ones are cut at a character boundary.
    pub const USER_AGENT_BYTES_MAX: usize = 256;
}

/// The actions components state on `{env}.audit.actions`.
pub mod actions {
    pub const API_KEY_CREATED: &str = "api_key.created";
    pub const API_KEY_REVOKED: &str = "api_key.revoked";
    pub const DEAD_LETTER_REDRIVEN: &str = "dead_letter.redriven";
    pub const PERSONAL_DATA_READ: &str = "personal_data.read";
    pub const AUDIT_EXPORTED: &str = "audit.exported";
    pub const SUBJECT_ERASED: &str = "subject.erased";
    pub const KEYS_REWRAPPED: &str = "keys.rewrapped";
    pub const CONSENT_GRANTED: &str = "consent.granted";
    pub const CONSENT_REVOKED: &str = "consent.revoked";
    pub const ALL: [&str; 9] = [
        API_KEY_CREATED,
        API_KEY_REVOKED,
        DEAD_LETTER_REDRIVEN,
        PERSONAL_DATA_READ,
        AUDIT_EXPORTED,
        SUBJECT_ERASED,
        KEYS_REWRAPPED,
        CONSENT_GRANTED,
        CONSENT_REVOKED,
    ];
}

/// An IP address cut to its network (IPv4 /24, IPv6 /48): enough to investigate, not a person's address.
/// Anything that does not parse is dropped. Idempotent: a network it gave is given back unchanged.
pub fn truncate_ip(ip: &str) -> Option<String> {
    let ip = ip.trim();
    let ip = ip.strip_suffix("/24").or_else(|| ip.strip_suffix("/48")).unwrap_or(ip);
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

/// A user agent cut to [`AuditAction::USER_AGENT_BYTES_MAX`] at a character boundary.
pub fn cut_user_agent(ua: &str) -> String {
    let mut end = ua.len().min(AuditAction::USER_AGENT_BYTES_MAX);
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    ua[..end].to_owned()
}

/// A time cut to the millisecond (what the stores keep).
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// One row of an export, and of what `riverbank audit verify` reads: JSON lines hold
/// `{"record": {…}}` or `{"checkpoint": {…}}`; CSV holds the same rows under [`CSV_COLUMNS`].
// Rows are streamed and checked one at a time; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportRow {
    Record(AuditRecord),
    Checkpoint(AuditCheckpoint),
}

/// The CSV header of an export. A record leaves the checkpoint columns empty and the reverse; `kind` says
/// which. An absent optional value is an empty unquoted field, an empty string is `""`.
pub const CSV_COLUMNS: [&str; 28] = [
    "kind",
    "audit_id",
    "tenant_id",
    "environment",
    "seq",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "before",
    "after",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "source_event_id",
    "source_event_type",
    "occurred_at_ms",
    "recorded_at_ms",
    "payload_bytes",
    "prev_hash",
    "hash",
    "checkpoint_id",
    "tree_size",
    "root_hash",
    "last_hash",
    "key_id",
    "signature",
];

impl ExportRow {
    pub fn tenant_id(&self) -> &str {
        match self {
            ExportRow::Record(r) => &r.tenant_id,
            ExportRow::Checkpoint(c) => &c.tenant_id,
        }
    }

    /// One CSV line (with its `\r\n`), fields in [`CSV_COLUMNS`] order.
    pub fn to_csv_line(&self) -> String {
        let mut f: Vec<Option<String>> = vec![None; CSV_COLUMNS.len()];
        let mut set = |col: &str, v: Option<String>| {
            if let Some(i) = CSV_COLUMNS.iter().position(|c| *c == col) {
                f[i] = v;
            }
        };
        match self {
            ExportRow::Record(r) => {
                set("kind", Some("record".into()));
                set("audit_id", Some(r.audit_id.to_string()));
                set("tenant_id", Some(r.tenant_id.clone()));
                set("environment", Some(r.environment.as_str().into()));
                set("seq", Some(r.seq.to_string()));
                set("actor", Some(r.actor.clone()));
                set("action", Some(r.action.clone()));
                set("resource_type", Some(r.resource_type.clone()));
                set("resource_id", Some(r.resource_id.clone()));
                set("before", r.before.clone());
                set("after", r.after.clone());
                set("ip", r.ip.clone());
                set("user_agent", r.user_agent.clone());
                set("request_id", r.request_id.clone());
                set("trace_id", r.trace_id.clone());
                set("source_event_id", Some(r.source_event_id.to_string()));
                set("source_event_type", Some(r.source_event_type.clone()));
                set("occurred_at_ms", Some(r.occurred_at.timestamp_millis().to_string()));
                set("recorded_at_ms", Some(r.recorded_at.timestamp_millis().to_string()));
                set("payload_bytes", Some(r.payload_bytes.to_string()));
                set("prev_hash", Some(r.prev_hash.clone()));
                set("hash", Some(r.hash.clone()));
            }
            ExportRow::Checkpoint(c) => {
                set("kind", Some("checkpoint".into()));
                set("tenant_id", Some(c.tenant_id.clone()));
                set("environment", Some(c.environment.as_str().into()));
                set("occurred_at_ms", Some(c.occurred_at.timestamp_millis().to_string()));
                set("checkpoint_id", Some(c.checkpoint_id.to_string()));
                set("tree_size", Some(c.tree_size.to_string()));
                set("root_hash", Some(c.root_hash.clone()));
                set("last_hash", Some(c.last_hash.clone()));
                set("key_id", Some(c.key_id.clone()));
                set("signature", Some(c.signature.clone()));
            }
        }
        let mut line = f.iter().map(|v| csv_field(v.as_deref())).collect::<Vec<_>>().join(",");
        line.push_str("\r\n");
        line
    }

    /// The header line of a CSV export.
    pub fn csv_header() -> String {
        let mut h = CSV_COLUMNS.join(",");
        h.push_str("\r\n");
        h
    }

    /// Rows of a CSV export (header first), or the first line that does not read, with why.
    pub fn parse_csv(text: &str) -> Result<Vec<ExportRow>, String> {
        let records = parse_csv_records(text)?;
        let mut it = records.into_iter();
        let header = it.next().ok_or("the CSV is empty")?;
        let names: Vec<&str> = header.iter().map(|h| h.as_deref().unwrap_or("")).collect();
        if names != CSV_COLUMNS {
            return Err(format!("the CSV header is not {}", CSV_COLUMNS.join(",")));
        }
        it.enumerate()
            .map(|(i, fields)| row_from_csv(&fields).map_err(|e| format!("CSV row {}: {e}", i + 1)))
            .collect()
    }
}

fn csv_field(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some(s) => format!("\"{}\"", s.replace('"', "\"\"")),
    }
}

/// RFC 4180 records; a field is `None` when empty and unquoted.
fn parse_csv_records(text: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut rows = Vec::new();
    let mut row: Vec<Option<String>> = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    loop {
        // One field.
        let field = if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        s.push('"');
                    }
                    Some('"') => break,
                    Some(c) => {
                        if c == '\n' {
                            line += 1;
                        }
                        s.push(c)
                    }
                    None => return Err(format!("line {line}: a quoted field is not closed")),
                }
            }
            Some(s)
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '\r' || c == '\n' {
                    break;
                }
                if c == '"' {
                    return Err(format!("line {line}: a quote inside an unquoted field"));
                }
                s.push(c);
                chars.next();
            }
            (!s.is_empty()).then_some(s)
        };
        row.push(field);
        match chars.next() {
            Some(',') => continue,
            Some('\r') => {
                if chars.next() != Some('\n') {
                    return Err(format!("line {line}: a bare carriage return"));
                }
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            Some('\n') => {
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            None => {
                if !(row.len() == 1 && row[0].is_none()) {
                    rows.push(row);
                }
                return Ok(rows);
            }
            Some(c) => return Err(format!("line {line}: unexpected {c:?} after a field")),
        }
        if chars.peek().is_none() {
            return Ok(rows);
        }
    }
}

fn row_from_csv(fields: &[Option<String>]) -> Result<ExportRow, String> {
    if fields.len() != CSV_COLUMNS.len() {
        return Err(format!("{} fields, expected {}", fields.len(), CSV_COLUMNS.len()));
    }
    let get = |col: &str| -> Option<String> {
        CSV_COLUMNS.iter().position(|c| *c == col).and_then(|i| fields[i].clone())
    };
    let need = |col: &str| get(col).ok_or_else(|| format!("{col} is missing"));
    let num =
        |col: &str| -> Result<u64, String> { need(col)?.parse::<u64>().map_err(|e| format!("{col}: {e}")) };
    let time = |col: &str| -> Result<DateTime<Utc>, String> {
        let ms = need(col)?.parse::<i64>().map_err(|e| format!("{col}: {e}"))?;
        DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| format!("{col}: out of range"))
    };
    let uuid =
        |col: &str| -> Result<Uuid, String> { need(col)?.parse::<Uuid>().map_err(|e| format!("{col}: {e}")) };
    let env = |col: &str| -> Result<Environment, String> {
        need(col)?.parse::<Environment>().map_err(|e| format!("{col}: {e}"))
    };
    match need("kind")?.as_str() {
        "record" => Ok(ExportRow::Record(AuditRecord {
            audit_id: uuid("audit_id")?,
            tenant_id: need("tenant_id")?,
            environment: env("environment")?,
            seq: num("seq")?,
            actor: need("actor")?,
            action: need("action")?,
            resource_type: need("resource_type")?,
            resource_id: need("resource_id")?,
            before: get("before"),
            after: get("after"),
            ip: get("ip"),
            user_agent: get("user_agent"),
            request_id: get("request_id"),
            trace_id: get("trace_id"),
            source_event_id: uuid("source_event_id")?,
            source_event_type: need("source_event_type")?,
            occurred_at: time("occurred_at_ms")?,
            recorded_at: time("recorded_at_ms")?,
            payload_bytes: num("payload_bytes")?,
            prev_hash: need("prev_hash")?,
            hash: need("hash")?,
        })),
        "checkpoint" => Ok(ExportRow::Checkpoint(AuditCheckpoint {
            checkpoint_id: uuid("checkpoint_id")?,
            tenant_id: need("tenant_id")?,
            environment: env("environment")?,
            tree_size: num("tree_size")?,
            root_hash: need("root_hash")?,
            last_hash: need("last_hash")?,
            occurred_at: time("occurred_at_ms")?,
            key_id: need("key_id")?,
            signature: need("signature")?,
        })),
        other => Err(format!("kind {other:?} is neither record nor checkpoint")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(seq: u64, before: Option<&str>) -> AuditRecord {
        let t = DateTime::<Utc>::from_timestamp_millis(1_790_000_000_123).expect("time");
        let mut r = AuditRecord {
            audit_id: crate::derived_id(&["a", &seq.to_string()]),
            tenant_id: "tenant-a".into(),
            environment: Environment::Live,
            seq,
            actor: "provider:acmepay".into(),
            action: "transfer.status_changed".into(),
            resource_type: "transfer".into(),
            resource_id: "tr_1".into(),
            before: before.map(str::to_owned),
            after: Some("completed".into()),
            ip: None,
            user_agent: Some("curl/8, \"quoted\"\nnext line".into()),
            request_id: None,
            trace_id: Some("trace-1".into()),
            source_event_id: crate::derived_id(&["src", &seq.to_string()]),
            source_event_type: "transfer.status_changed".into(),
            occurred_at: t,
            recorded_at: t,
            payload_bytes: 12,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    #[test]
    fn every_field_changes_the_hash_and_absent_differs_from_empty() {
        let a = record(1, None);
        let b = record(1, Some(""));
        assert_ne!(a.compute_hash(), b.compute_hash(), "absent and empty must differ");
        let mut c = a.clone();
        c.payload_bytes = 13;
        assert_ne!(a.compute_hash(), c.compute_hash());
        let mut d = a.clone();
        d.prev_hash = "1".repeat(64);
        assert_ne!(a.compute_hash(), d.compute_hash());
        // `hash` itself is not part of the encoding.
        let mut e = a.clone();
        e.hash = "x".into();
        assert_eq!(a.compute_hash(), e.compute_hash());
    }

    #[test]
    fn csv_and_json_rows_round_trip_identically() {
        let cp = AuditCheckpoint {
            checkpoint_id: crate::derived_id(&["cp"]),
            tenant_id: "tenant-a".into(),
            environment: Environment::Live,
            tree_size: 2,
            root_hash: "ab".repeat(32),
            last_hash: "cd".repeat(32),
            occurred_at: DateTime::<Utc>::from_timestamp_millis(1_790_000_000_999).expect("time"),
            key_id: "ed25519:0011223344556677".into(),
            signature: "c2ln".into(),
        };
        let rows = vec![
            ExportRow::Record(record(1, None)),
            ExportRow::Record(record(2, Some(""))),
            ExportRow::Checkpoint(cp),
        ];
        let mut csv = ExportRow::csv_header();
        for r in &rows {
            csv.push_str(&r.to_csv_line());
        }
        assert_eq!(ExportRow::parse_csv(&csv).expect("parses"), rows);
        for r in &rows {
            let line = serde_json::to_string(r).expect("json");
            assert_eq!(&serde_json::from_str::<ExportRow>(&line).expect("reads"), r);
        }
        let broken = csv.replacen("\"tenant-a\"", "\"tenant-a", 1);
        assert!(ExportRow::parse_csv(&broken).is_err());
    }

    #[test]
    fn checkpoint_message_is_the_documented_note() {
        let m = signed_message("t", Environment::Sandbox, 3, "aa", "bb", 42);
        assert_eq!(m, b"riverbank.audit.checkpoint.v1\nt\nsandbox\n3\naa\nbb\n42\n");
    }

    #[test]
    fn ips_are_cut_to_networks() {
        assert_eq!(truncate_ip("203.0.113.77").as_deref(), Some("203.0.113.0/24"));
        assert_eq!(truncate_ip("2001:db8:85a3::8a2e:370:7334").as_deref(), Some("2001:db8:85a3::/48"));
        assert_eq!(truncate_ip("not an ip"), None);
        for ip in ["203.0.113.77", "2001:db8:85a3::8a2e:370:7334"] {
            let once = truncate_ip(ip);
            assert_eq!(once.as_deref().and_then(truncate_ip), once, "idempotent");
        }
        assert_eq!(cut_user_agent(&"é".repeat(200)).len(), 256);
    }

    proptest! {
        #[test]
        fn csv_survives_any_text(s in ".{0,40}", t in "[a-z0-9-]{1,12}") {
            let mut r = record(1, Some(&s));
            r.actor = s.clone();
            r.tenant_id = t;
            r.hash = r.compute_hash();
            let csv = format!("{}{}", ExportRow::csv_header(), ExportRow::Record(r.clone()).to_csv_line());
            prop_assert_eq!(ExportRow::parse_csv(&csv).expect("parses"), vec![ExportRow::Record(r)]);
        }
    }
}
