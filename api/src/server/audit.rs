//! The audit trail's reads (Postgres): search, export, inclusion proofs and the public keys.
//!
//! - `GET /v1/audit`: one (tenant, environment) log, filtered by actor, action, resource and time,
//!   in log order; the cursor is the last `seq` of a page.
//! - `GET /v1/audit/export?format=json|csv`: the log (or a `from_seq`..`to_seq` slice) with the
//!   checkpoints that cover it, streamed in batches; JSON lines and CSV hold the same rows
//!   (`riverbank_schemas::audit::ExportRow`). The export is audited first (`audit.exported` on
//!   `{env}.audit.actions`): if that cannot be stated, nothing is exported.
//! - `GET /v1/audit/{audit_id}/proof`: the record, its RFC 6962 inclusion proof against the latest
//!   signed checkpoint covering it, and that checkpoint, so a client checks it with the public key alone.
//! - `GET /v1/audit/keys`: the public keys checkpoints are signed with (no tenant data).
//!
//! Every value is bound, never spliced into SQL; searches and exports need a key of the tenant read
//! (exports and proofs: an admin, auditor or compliance officer key).
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use riverbank_crypto::merkle;
use riverbank_crypto::sign::{CheckpointSigner, VerifyingKeys};
use riverbank_runtime::audit::{
    action_emit, state_action, AuditRow, CheckpointRow, AUDIT_COLUMNS, CHECKPOINT_COLUMNS,
};
use riverbank_runtime::config::Config;
use riverbank_runtime::http::{within, HttpError};
use riverbank_runtime::kafka;
use riverbank_schemas::audit::{actions, AuditAction, AuditCheckpoint, AuditRecord, ExportRow};
use riverbank_schemas::roles::Role;
use riverbank_schemas::{Environment, Topics};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{database_error, guarded, live, Api, Params};

/// Rows per search page when the caller names no `limit` (at most `api.page_rows_max`).
pub const AUDIT_PAGE_ROWS_DEFAULT: u32 = 100;
/// Longest filter value accepted (bytes): actors, actions and resource ids are short codes.
const FILTER_BYTES_MAX: usize = 256;

/// What the audit reads need beyond the other reads.
pub struct AuditReads {
    producer: FutureProducer,
    topics: Topics,
    produce_timeout: Duration,
    /// The signing key's public half and earlier keys still accepted.
    keys: VerifyingKeys,
    public_keys: Vec<PublicKey>,
    proof_records_max: u64,
    export_rows_max: u64,
    export_batch_rows: u32,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PublicKey {
    key_id: String,
    /// Ed25519 public key, hex.
    public_key: String,
    /// Whether checkpoints are signed with it now (else: an earlier key, still verifying old ones).
    current: bool,
}

impl AuditReads {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let a = &cfg.audit;
        let signer = CheckpointSigner::from_seed_hex(a.signing_key.expose())
            .map_err(|e| anyhow::anyhow!("audit.signing_key: {e}"))?;
        let mut public_keys = vec![PublicKey {
            key_id: signer.key_id().to_owned(),
            public_key: signer.public_key_hex(),
            current: true,
        }];
        let mut keys = signer.verifying_keys();
        for k in &a.verify_keys {
            let key_id = keys.add(k).map_err(|e| anyhow::anyhow!("audit.verify_keys: {e}"))?;
            public_keys.push(PublicKey { key_id, public_key: k.clone(), current: false });
        }
        Ok(AuditReads {
            producer: kafka::producer(&cfg.kafka)?,
            topics: kafka::topics(&cfg.kafka),
            produce_timeout: Duration::from_millis(cfg.ingest.produce_timeout_ms),
            keys,
            public_keys,
            proof_records_max: a.proof_records_max,
            export_rows_max: a.export_rows_max,
            export_batch_rows: a.export_batch_rows,
        })
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    actor: Option<String>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    /// RFC 3339; records at or after.
    from: Option<DateTime<Utc>>,
    /// RFC 3339; records before.
    to: Option<DateTime<Utc>>,
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    after: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SearchPage {
    tenant_id: String,
    environment: Environment,
    records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

fn check_filter(name: &str, v: &Option<String>) -> Result<(), HttpError> {
    match v {
        Some(v) if v.is_empty() || v.len() > FILTER_BYTES_MAX || v.contains('\0') => {
            Err(HttpError::bad_request(
                "invalid_filter",
                format!("{name} must be 1..={FILTER_BYTES_MAX} bytes without NUL"),
            ))
        }
        _ => Ok(()),
    }
}

fn seq_cursor(after: &Option<String>) -> Result<i64, HttpError> {
    match after {
        None => Ok(0),
        Some(c) => c.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
            HttpError::bad_request("invalid_cursor", "after must be a next_cursor from a previous page")
        }),
    }
}

fn record_of(row: &AuditRow) -> Result<AuditRecord, HttpError> {
    row.to_record().map_err(|e| database_error("postgres", &e))
}

pub async fn search(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<SearchQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let limit = q.limit.unwrap_or(AUDIT_PAGE_ROWS_DEFAULT.min(s2.page_rows_max));
        if limit == 0 || limit > s2.page_rows_max {
            return Err(HttpError::bad_request(
                "invalid_limit",
                format!("limit must be 1..={}", s2.page_rows_max),
            ));
        }
        for (name, v) in [
            ("actor", &q.actor),
            ("action", &q.action),
            ("resource_type", &q.resource_type),
            ("resource_id", &q.resource_id),
        ] {
            check_filter(name, v)?;
        }
        if let (Some(from), Some(to)) = (q.from, q.to) {
            if from >= to {
                return Err(HttpError::bad_request("invalid_range", "from must be before to"));
            }
        }
        let after = seq_cursor(&q.after)?;
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE tenant_id = $1 AND environment = $2 AND seq > $3
               AND ($4::text IS NULL OR actor = $4) AND ($5::text IS NULL OR action = $5)
               AND ($6::text IS NULL OR resource_type = $6) AND ($7::text IS NULL OR resource_id = $7)
               AND ($8::timestamptz IS NULL OR occurred_at >= $8)
               AND ($9::timestamptz IS NULL OR occurred_at < $9)
             ORDER BY seq LIMIT $10"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(after)
        .bind(&q.actor)
        .bind(&q.action)
        .bind(&q.resource_type)
        .bind(&q.resource_id)
        .bind(q.from)
        .bind(q.to)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let records = rows.iter().map(record_of).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = super::next_cursor(&records, limit, |r: &AuditRecord| r.seq.to_string());
        Ok(SearchPage { tenant_id: q.tenant_id, environment: q.environment, records, next_cursor })
    })
    .await
}

/// Roles that may export the trail and ask for proofs (when a key is presented).
const TRAIL_ROLES: [Role; 3] = [Role::Admin, Role::Auditor, Role::ComplianceOfficer];

/// The key (if any) of a trail read, checked for tenant, environment and role; its actor name.
async fn trail_reader(
    s: &Api,
    headers: &HeaderMap,
    tenant: &str,
    env: Environment,
) -> Result<String, HttpError> {
    match s.authorize_key(headers, tenant, env).await? {
        Some(key) if !TRAIL_ROLES.contains(&key.role) => Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            "exports and proofs of the audit trail need an admin, auditor or compliance_officer key",
        )),
        Some(key) => Ok(format!("key:{}", key.key_id)),
        None => Ok("system:trusted-network".to_owned()),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    format: ExportFormat,
    /// First seq exported (default 1); records before it are not, so verify a slice against its
    /// checkpoints only from seq 1.
    from_seq: Option<u64>,
    /// Last seq exported (default: the end of the log, at most `audit.export_rows_max` rows).
    to_seq: Option<u64>,
}

pub async fn export(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<ExportQuery>,
) -> Response {
    let _permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let started = async {
        let actor = trail_reader(&s, &headers, &q.tenant_id, q.environment).await?;
        let from = q.from_seq.unwrap_or(1).max(1);
        let max_to = from.saturating_add(s.audit.export_rows_max - 1);
        let to = q.to_seq.unwrap_or(max_to);
        if to < from || to - from >= s.audit.export_rows_max {
            return Err(HttpError::bad_request(
                "invalid_range",
                format!("from_seq..to_seq must be ascending and at most {} rows", s.audit.export_rows_max),
            ));
        }
        let to = to.min(i64::MAX as u64);
        // Stated before anything is read: an export nobody can see in the trail never happens.
        let format = if q.format == ExportFormat::Csv { "csv" } else { "json" };
        let action = request_action(
            &headers,
            actor,
            actions::AUDIT_EXPORTED,
            "audit_log",
            format!("{}/{}", q.tenant_id, q.environment),
            Some(format!("format={format} seq={from}..{to}")),
        );
        state_request_action(&s, &q.tenant_id, q.environment, action).await?;
        Ok((from, to))
    };
    let (from, to) = match within(s.request_timeout, started).await {
        Ok(range) => range,
        Err(e) => return e.into_response(),
    };
    let content_type = match q.format {
        ExportFormat::Json => "application/x-ndjson",
        ExportFormat::Csv => "text/csv; charset=utf-8",
    };
    let stream = export_stream(
        s.pg.clone(),
        q.tenant_id,
        q.environment,
        q.format,
        from,
        to,
        s.audit.export_batch_rows,
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// The client's address as a trusted proxy states it (`x-forwarded-for`, first hop); the audit
/// processor keeps only its network.
fn client_ip(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// An action an API request performs on `resource_type`/`resource_id`, with the request's client
/// (network, user agent) and request id.
pub(super) fn request_action(
    headers: &HeaderMap,
    actor: String,
    action: &str,
    resource_type: &str,
    resource_id: String,
    after: Option<String>,
) -> AuditAction {
    AuditAction {
        actor,
        action: action.to_owned(),
        resource_type: resource_type.to_owned(),
        resource_id,
        before: None,
        after,
        ip: client_ip(headers),
        user_agent: header_text(headers, header::USER_AGENT.as_str()),
        request_id: header_text(headers, "x-request-id"),
    }
}

/// State `action` of a request and wait until the broker has it, at most `ingest.produce_timeout_ms`
/// (the producer alone would wait up to `kafka.message_timeout_ms`, past the request's time limit):
/// else 503 and the caller serves nothing. A record still in flight when this gives up may land later:
/// an action audited but refused, never one served unaudited.
pub(super) async fn state_request_action(
    s: &Api,
    tenant: &str,
    env: Environment,
    action: AuditAction,
) -> Result<(), HttpError> {
    let a = &s.audit;
    let what = action.action.clone();
    let emit = action_emit(&a.topics, tenant, env, "riverbank.api", action, None)
        .map_err(|e| database_error("kafka", &e))?;
    let stated = tokio::time::timeout(a.produce_timeout, state_action(&a.producer, &emit, a.produce_timeout))
        .await
        .unwrap_or_else(|_| Err(format!("not acknowledged within {:?}", a.produce_timeout)));
    stated.map(|_| ()).map_err(|e| {
        tracing::warn!(error = %e, action = %what, "audit action not stated; request refused");
        HttpError::unavailable("audit_unavailable", "the request could not be audited; retry", 1)
    })
}

struct ExportCursor {
    pg: PgPool,
    tenant: String,
    env: Environment,
    format: ExportFormat,
    /// Next seq to read; `to` is the last.
    next: u64,
    to: u64,
    batch: u32,
    header_sent: bool,
    done: bool,
}

/// Batches of export text: records `next..` in seq order, each checkpoint right after the record it
/// ends at. A store error ends the stream with an error (the client sees a cut body, never a silent gap).
fn export_stream(
    pg: PgPool,
    tenant: String,
    env: Environment,
    format: ExportFormat,
    from: u64,
    to: u64,
    batch: u32,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let cursor =
        ExportCursor { pg, tenant, env, format, next: from, to, batch, header_sent: false, done: false };
    futures::stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        let mut out = String::new();
        if !c.header_sent {
            c.header_sent = true;
            if c.format == ExportFormat::Csv {
                out.push_str(&ExportRow::csv_header());
            }
        }
        match export_batch(&c).await {
            Ok((rows, last)) => {
                for r in &rows {
                    match c.format {
                        ExportFormat::Csv => out.push_str(&r.to_csv_line()),
                        ExportFormat::Json => {
                            out.push_str(&serde_json::to_string(r).unwrap_or_default());
                            out.push('\n');
                        }
                    }
                }
                match last {
                    Some(last) if last < c.to => c.next = last + 1,
                    _ => c.done = true,
                }
                Some((Ok(out), c))
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit export cut short");
                c.done = true;
                Some((Err(std::io::Error::other("the store failed during the export")), c))
            }
        }
    })
}

/// One batch: up to `batch` records from `next` (keyset on seq, so a gap in the store is exported as
/// the gap it is, for `audit verify` to name) and the checkpoints ending within it, in order; the last
/// seq read, or `None` when the log (or the range) ends.
async fn export_batch(c: &ExportCursor) -> Result<(Vec<ExportRow>, Option<u64>), String> {
    let (lo, hi) = (c.next as i64, c.to as i64);
    let records: Vec<AuditRow> = sqlx::query_as(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log
         WHERE tenant_id = $1 AND environment = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq LIMIT $5"
    ))
    .bind(&c.tenant)
    .bind(c.env.as_str())
    .bind(lo)
    .bind(hi)
    .bind(i64::from(c.batch))
    .fetch_all(&c.pg)
    .await
    .map_err(|e| e.to_string())?;
    let ended = records.len() < c.batch as usize;
    let last = records.last().and_then(|r| r.seq).unwrap_or(lo - 1);
    // The checkpoints of this stretch; the last batch also takes those past its last record (a
    // checkpoint covering records the store no longer holds is exported for verify to name).
    let cp_hi = if ended { hi } else { last };
    let checkpoints: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
         WHERE tenant_id = $1 AND environment = $2 AND tree_size BETWEEN $3 AND $4 ORDER BY tree_size"
    ))
    .bind(&c.tenant)
    .bind(c.env.as_str())
    .bind(lo)
    .bind(cp_hi)
    .fetch_all(&c.pg)
    .await
    .map_err(|e| e.to_string())?;
    let mut cps = checkpoints
        .iter()
        .map(CheckpointRow::to_checkpoint)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .peekable();
    let mut out = Vec::with_capacity(records.len() + 1);
    for r in &records {
        let rec = r.to_record()?;
        let seq = rec.seq;
        out.push(ExportRow::Record(rec));
        while let Some(cp) = cps.next_if(|cp| cp.tree_size <= seq) {
            out.push(ExportRow::Checkpoint(cp));
        }
    }
    out.extend(cps.map(ExportRow::Checkpoint));
    if ended || last >= hi {
        return Ok((out, None));
    }
    Ok((out, u64::try_from(last).ok()))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Proof {
    record: AuditRecord,
    /// RFC 6962 leaf hash (hex): SHA-256(0x00 ‖ record's canonical bytes).
    leaf_hash: String,
    /// Zero-based: `seq − 1`.
    leaf_index: u64,
    /// The latest signed checkpoint covering the record.
    checkpoint: AuditCheckpoint,
    /// Audit path (hex), leaf to root (RFC 9162 §2.1.3).
    inclusion_proof: Vec<String>,
    /// How to check it with the public key alone.
    verification: &'static str,
}

const HOW_TO_VERIFY: &str =
    "leaf = SHA-256(0x00 || canonical_bytes(record)); fold inclusion_proof per RFC 9162 \
     2.1.3.2 with leaf_index and checkpoint.tree_size to checkpoint.root_hash; verify checkpoint.signature \
     (Ed25519, base64) over 'riverbank.audit.checkpoint.v1\\n{tenant_id}\\n{environment}\\n{tree_size}\\n\
     {root_hash}\\n{last_hash}\\n{occurred_at ms}\\n' with the key GET /v1/audit/keys lists under key_id";

pub async fn proof(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Path(audit_id): Path<String>,
    Params(q): Params<ProofQuery>,
) -> Response {
    let _permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let work = async {
        trail_reader(&s, &headers, &q.tenant_id, q.environment).await?;
        let id: uuid::Uuid = audit_id
            .parse()
            .map_err(|_| HttpError::bad_request("invalid_audit_id", "audit_id must be a UUID"))?;
        let row: Option<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1 AND environment = $2 AND event_id = $3"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(id)
        .fetch_optional(&s.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let record =
            record_of(&row.ok_or_else(|| {
                HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such audit record")
            })?)?;
        let cp: Option<CheckpointRow> = sqlx::query_as(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
             WHERE tenant_id = $1 AND environment = $2 AND tree_size >= $3 ORDER BY tree_size DESC LIMIT 1"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(record.seq as i64)
        .fetch_optional(&s.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let checkpoint = cp
            .ok_or_else(|| {
                HttpError::new(
                    StatusCode::CONFLICT,
                    "not_yet_checkpointed",
                    "no signed checkpoint covers this record yet; retry after audit.checkpoint_every_ms",
                )
            })?
            .to_checkpoint()
            .map_err(|e| database_error("postgres", &e))?;
        if checkpoint.tree_size > s.audit.proof_records_max {
            return Err(HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "log_too_large",
                format!(
                    "proofs are computed over at most audit.proof_records_max ({}) records",
                    s.audit.proof_records_max
                ),
            ));
        }
        let leaves = leaves(&s.pg, &q.tenant_id, q.environment, checkpoint.tree_size).await?;
        let root = merkle::root(&leaves);
        // Served only when it holds: the stored leaves give the signed head, under a key we know.
        let signed =
            s.audit.keys.verify(&checkpoint.key_id, &checkpoint.signed_message(), &checkpoint.signature);
        if hex::encode(root) != checkpoint.root_hash || signed.is_err() {
            tracing::error!(tenant_id = %q.tenant_id, tree_size = checkpoint.tree_size, "audit store does not match its signed checkpoint");
            return Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_mismatch",
                "the stored log does not match its signed checkpoint; run riverbank audit verify",
            ));
        }
        let index = record.seq - 1;
        let path = merkle::inclusion_proof(&leaves, index).map_err(|e| database_error("postgres", &e))?;
        Ok(Proof {
            leaf_hash: hex::encode(merkle::leaf_hash(&record.canonical_bytes())),
            leaf_index: index,
            record,
            checkpoint,
            inclusion_proof: path.iter().map(hex::encode).collect(),
            verification: HOW_TO_VERIFY,
        })
    };
    match within(s.request_timeout, work).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Leaf hashes of records 1..=size of a log, read in seq order; a gap is a store error.
async fn leaves(
    pg: &PgPool,
    tenant: &str,
    env: Environment,
    size: u64,
) -> Result<Vec<merkle::Hash>, HttpError> {
    let rows: Vec<AuditRow> = sqlx::query_as(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1 AND environment = $2 AND seq BETWEEN 1 AND $3
         ORDER BY seq"
    ))
    .bind(tenant)
    .bind(env.as_str())
    .bind(size as i64)
    .fetch_all(pg)
    .await
    .map_err(|e| database_error("postgres", &e))?;
    if rows.len() as u64 != size {
        return Err(database_error("postgres", &format!("log holds {} of {size} records", rows.len())));
    }
    rows.iter().map(|r| Ok(merkle::leaf_hash(&record_of(r)?.canonical_bytes()))).collect()
}

pub async fn keys(State(s): State<Arc<Api>>) -> Response {
    Json(serde_json::json!({ "keys": s.audit.public_keys })).into_response()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

/// A user's consents: every grant and revocation in the order the trail holds them, and the state per
/// purpose now. Consents are audit actions (`POST /v1/users/{id}/consents` at ingest), so this reads
/// the trail itself.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Consents {
    user_id: String,
    /// Purpose → granted now.
    current: std::collections::BTreeMap<String, bool>,
    history: Vec<ConsentEntry>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ConsentEntry {
    purpose: String,
    granted: bool,
    at: DateTime<Utc>,
    ip: Option<String>,
    user_agent: Option<String>,
    audit_id: uuid::Uuid,
    seq: u64,
}

/// Consent changes read per request at most (a user's consents are few; more is refused, not cut).
const CONSENT_ROWS_MAX: i64 = 10_000;

pub async fn consents(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    Params(q): Params<ConsentQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        check_filter("user_id", &Some(user_id.clone()))?;
        if user_id.contains('/') {
            return Err(HttpError::bad_request("invalid_user_id", "user_id holds no '/'"));
        }
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE tenant_id = $1 AND environment = $2 AND resource_type = 'consent'
               AND action IN ('consent.granted', 'consent.revoked')
               AND starts_with(resource_id, $3)
             ORDER BY seq LIMIT $4"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(format!("{user_id}/"))
        .bind(CONSENT_ROWS_MAX + 1)
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        if rows.len() as i64 > CONSENT_ROWS_MAX {
            return Err(HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_consents",
                format!("more than {CONSENT_ROWS_MAX} consent changes; search /v1/audit instead"),
            ));
        }
        let mut current = std::collections::BTreeMap::new();
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = record_of(row)?;
            let purpose = r.resource_id.split_once('/').map(|(_, p)| p.to_owned()).unwrap_or_default();
            let granted = r.action == actions::CONSENT_GRANTED;
            current.insert(purpose.clone(), granted);
            history.push(ConsentEntry {
                purpose,
                granted,
                at: r.occurred_at,
                ip: r.ip,
                user_agent: r.user_agent,
                audit_id: r.audit_id,
                seq: r.seq,
            });
        }
        Ok(Consents { user_id, current, history })
    })
    .await
}
