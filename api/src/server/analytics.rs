//! Analytics over ClickHouse, per time bucket: transfer volume and counts (currency × kind × status),
//! risk outcomes and review rates, the KYC funnel, accept → final latency, and inputs refused by reason.
//! Tenant-scoped by key like every read, and readable by the platform's keys too (`guarded_for` with
//! `Readers::TenantOrPlatform`): an operator of the platform names any tenant. Every answer states
//! `complete_through` (the ClickHouse sink's watermark over the topics it reads) and marks each bucket
//! ending after it `provisional: true`.
//! Parameters are checked (a 400 naming the field) and bound, never spliced into SQL; money is integer
//! minor units beside its currency, sums taken in two parts and joined with checked arithmetic.
//!
//! [`clickhouse_queries`] lists every ClickHouse query the API runs (these, and those of `server.rs`,
//! `risk.rs`, `fx_billing.rs` and the live gauges), with the SQL text the handlers execute and sample
//! bound values, so a test can run each on another ClickHouse version.
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use riverbank_runtime::http::HttpError;
use riverbank_runtime::kafka;
use riverbank_schemas::{Environment, Topics};
use serde::{Deserialize, Serialize};

use super::fx_billing::{bad, joined, page_limit, params, time_range};
use super::{complete_through, database_error, guarded_for, live, Api, Readers};

/// Longest `from`..`to` span with hourly buckets: 31 days (744 buckets).
pub const HOUR_RANGE_S_MAX: i64 = 31 * 86_400;
/// Longest `from`..`to` span with daily buckets: 366 days.
pub const DAY_RANGE_S_MAX: i64 = 366 * 86_400;
/// Longest `after` cursor accepted, in bytes (hex of the last row's key).
const CURSOR_BYTES_MAX: usize = 1_024;
/// One hour, in seconds.
const HOUR_S: i64 = 3_600;
/// One day, in seconds.
const DAY_S: i64 = 86_400;

/// A value bound to a `?` placeholder: the handlers bind it, the catalog prints it as a SQL literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

impl Bind {
    /// As a ClickHouse SQL literal (strings quoted, `\` and `'` escaped, as the client binds them).
    pub fn literal(&self) -> String {
        match self {
            Bind::Int(i) => i.to_string(),
            Bind::Text(t) => format!("'{}'", t.replace('\\', "\\\\").replace('\'', "\\'")),
        }
    }
}

pub(super) fn apply(mut q: clickhouse::query::Query, binds: &[Bind]) -> clickhouse::query::Query {
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

/// One ClickHouse query as the API executes it.
#[derive(Debug, Clone)]
pub struct CatalogQuery {
    /// Which read runs it, e.g. `analytics.transfers`.
    pub name: &'static str,
    /// The SQL text exactly as sent, with `?` placeholders.
    pub sql: String,
    /// (placeholder position, 0-based among the `?` in `sql`, sample value as a SQL literal).
    pub binds: Vec<(usize, String)>,
}

impl CatalogQuery {
    fn new(name: &'static str, sql: impl Into<String>, binds: &[Bind]) -> CatalogQuery {
        CatalogQuery {
            name,
            sql: sql.into(),
            binds: binds.iter().enumerate().map(|(i, b)| (i, b.literal())).collect(),
        }
    }

    /// `sql` with each placeholder replaced by its sample value (no `?` appears elsewhere in the SQL).
    pub fn substituted(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 16 * self.binds.len());
        let mut values = self.binds.iter();
        for c in self.sql.chars() {
            match (c, c == '?') {
                (_, true) => out.push_str(values.next().map_or("?", |(_, v)| v.as_str())),
                (c, false) => out.push(c),
            }
        }
        out
    }
}

/// Every ClickHouse query of the API, with sample binds (tenant `acme`, live, 2025-12-01 for a day).
pub fn clickhouse_queries() -> Vec<CatalogQuery> {
    let c = Checked::sample();
    let (tenant, env) = (Bind::Text(c.tenant_id.clone()), Bind::Text("live".into()));
    let fx_billing_binds = super::fx_billing::range_binds(&c.tenant_id, c.environment, (c.from, c.to), 101);
    let shadow = super::risk::shadow_binds(&c.tenant_id, c.environment, (c.from, c.to), None);
    let shadow_rows = super::risk::shadow_binds(&c.tenant_id, c.environment, (c.from, c.to), Some(101));
    let mut paged = c.clone();
    paged.after = Some(vec!["1764550800".into(), "USD".into(), "deposit".into(), "COMPLETED".into()]);
    let mut paged_rejections = c.clone();
    paged_rejections.after = Some(vec!["1764550800".into(), "risk".into(), "no_such_transfer".into()]);
    let mut paged_bucket = c.clone();
    paged_bucket.after = Some(vec!["1764550800".into()]);
    let mut paged_latency = c.clone();
    paged_latency.after = Some(vec!["1764550800".into(), "deposit".into(), "COMPLETED".into()]);
    vec![
        CatalogQuery::new(
            "complete_through",
            super::COMPLETE_THROUGH_SQL,
            &[Bind::Text(Topics::new("riverbank").transfer_status(Environment::Live))],
        ),
        CatalogQuery::new(
            "live.landed",
            crate::live::gauges::CH_LANDED_SQL,
            &[Bind::Text(format!("{}live.", Topics::new("riverbank.").prefix()))],
        ),
        CatalogQuery::new("analytics.audit_volume", super::AUDIT_VOLUME_SQL, &[tenant.clone(), env.clone()]),
        CatalogQuery::new("analytics.transfer_volume", super::TRANSFER_VOLUME_SQL, &[tenant, env]),
        CatalogQuery::new("analytics.fee_revenue", super::fx_billing::fee_revenue_sql(), &fx_billing_binds),
        CatalogQuery::new("analytics.fx_volume", super::fx_billing::fx_volume_sql(), &fx_billing_binds),
        CatalogQuery::new("risk.shadow_outcomes", super::risk::shadow_outcomes_sql(), &shadow),
        CatalogQuery::new("risk.shadow_differences", super::risk::shadow_differences_sql(), &shadow_rows),
        CatalogQuery::new("analytics.transfers", TRANSFERS_SQL, &scoped_binds(&c, "isss", 101)),
        CatalogQuery::new(
            "analytics.transfers (next page)",
            TRANSFERS_SQL,
            &scoped_binds(&paged, "isss", 101),
        ),
        CatalogQuery::new(
            "analytics.risk_outcomes",
            RISK_OUTCOMES_SQL,
            &scoped_binds(&paged_bucket, "i", 101),
        ),
        CatalogQuery::new("analytics.kyc_funnel", KYC_FUNNEL_SQL, &first_time_binds(&paged_bucket, "i", 101)),
        CatalogQuery::new(
            "analytics.transfer_latency",
            LATENCY_SQL,
            &first_time_binds(&paged_latency, "iss", 101),
        ),
        CatalogQuery::new("analytics.rejections", REJECTIONS_SQL, &rejections_binds(&paged_rejections, 101)),
    ]
}

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    fn seconds(self) -> i64 {
        match self {
            Bucket::Hour => HOUR_S,
            Bucket::Day => DAY_S,
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// At or after (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    from: Option<String>,
    /// Before (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    to: Option<String>,
    /// `hour` (the default) or `day`.
    #[schemars(with = "Option<Bucket>")]
    bucket: Option<String>,
    /// Rows per page (default [`super::fx_billing::FX_BILLING_PAGE_ROWS_DEFAULT`], at most
    /// `api.page_rows_max`).
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// A previous page's `next_cursor`.
    after: Option<String>,
}

/// The parameters, checked.
#[derive(Debug, Clone)]
struct Checked {
    tenant_id: String,
    environment: Environment,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
    limit: u32,
    /// The cursor's key parts.
    after: Option<Vec<String>>,
}

impl Checked {
    fn sample() -> Checked {
        Checked {
            tenant_id: "acme".into(),
            environment: Environment::Live,
            from: DateTime::from_timestamp(1_764_547_200, 0).unwrap_or_default(),
            to: DateTime::from_timestamp(1_764_633_600, 0).unwrap_or_default(),
            bucket: Bucket::Hour,
            limit: 100,
            after: None,
        }
    }

    /// bucket s ×2, tenant, environment, from s, to s, from ms, to ms: the binds of [`scoped`].
    fn scope(&self) -> Vec<Bind> {
        vec![
            Bind::Int(self.bucket.seconds()),
            Bind::Int(self.bucket.seconds()),
            Bind::Text(self.tenant_id.clone()),
            Bind::Text(self.environment.as_str().to_owned()),
            Bind::Int(self.from.timestamp()),
            Bind::Int(self.to.timestamp()),
            Bind::Int(self.from.timestamp_millis()),
            Bind::Int(self.to.timestamp_millis()),
        ]
    }

    /// Whether a cursor was given (1/0), then its parts as `types` say (`i` integer, `s` text).
    fn cursor(&self, types: &str) -> Vec<Bind> {
        let mut out = vec![Bind::Int(i64::from(self.after.is_some()))];
        for (i, t) in types.chars().enumerate() {
            let part = self.after.as_ref().and_then(|a| a.get(i)).cloned().unwrap_or_default();
            out.push(match t {
                'i' => Bind::Int(part.parse().unwrap_or(0)),
                _ => Bind::Text(part),
            });
        }
        out
    }
}

/// The parameters checked: the range (by bucket width: [`HOUR_RANGE_S_MAX`], [`DAY_RANGE_S_MAX`]), the
/// bucket, the limit and the cursor (its parts as `types`: `i` an integer, `s` text).
fn check(q: AnalyticsQuery, page_rows_max: u32, types: &str) -> Result<Checked, HttpError> {
    let bucket = match q.bucket.as_deref() {
        None | Some("hour") => Bucket::Hour,
        Some("day") => Bucket::Day,
        Some(_) => return Err(bad("bucket", "invalid_bucket", "one_of", "must be hour or day")),
    };
    let span = if bucket == Bucket::Hour { HOUR_RANGE_S_MAX } else { DAY_RANGE_S_MAX };
    let (from, to) = time_range(q.from.as_deref(), q.to.as_deref(), span)?;
    let limit = page_limit(q.limit, page_rows_max)?;
    let after = q.after.as_deref().map(|c| decode_cursor(c, types)).transpose()?;
    Ok(Checked { tenant_id: q.tenant_id, environment: q.environment, from, to, bucket, limit, after })
}

/// A cursor: the hex of the last row's key parts joined by `\n`.
fn encode_cursor(parts: &[String]) -> String {
    parts.join("\n").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(text: &str, types: &str) -> Result<Vec<String>, HttpError> {
    let bad_cursor =
        || bad("after", "invalid_cursor", "cursor", "must be a next_cursor from a previous page");
    if !text.len().is_multiple_of(2) || text.len() > CURSOR_BYTES_MAX {
        return Err(bad_cursor());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad_cursor)?;
    let joined = String::from_utf8(bytes).map_err(|_| bad_cursor())?;
    let parts: Vec<String> = joined.split('\n').map(str::to_owned).collect();
    let ok = parts.len() == types.len()
        && parts.iter().zip(types.chars()).all(|(p, t)| t != 'i' || p.parse::<u32>().is_ok());
    if ok {
        Ok(parts)
    } else {
        Err(bad_cursor())
    }
}

/// Whether a bucket starting at `start_s` ends after `complete_through` (or nothing is complete yet).
fn provisional(start_s: u32, bucket: Bucket, complete_through: Option<DateTime<Utc>>) -> bool {
    let end_ms = (i64::from(start_s) + bucket.seconds()) * 1_000;
    complete_through.is_none_or(|c| end_ms > c.timestamp_millis())
}

fn bucket_start(start_s: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(start_s), 0).unwrap_or_default()
}

/// What every answer states beside its rows.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Frame {
    tenant_id: String,
    environment: Environment,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
    /// Every event landed before this instant is counted; buckets ending after it are `provisional`.
    complete_through: Option<DateTime<Utc>>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Runs one analytics read: parameters (a 400 before anything else), then the key, then `work` with the
/// checked parameters.
async fn run<T, F, Fut>(
    s: Arc<Api>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
    types: &'static str,
    work: F,
) -> Response
where
    T: Serialize,
    F: FnOnce(Arc<Api>, Checked) -> Fut,
    Fut: std::future::Future<Output = Result<T, HttpError>>,
{
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let scope = (q.tenant_id.clone(), q.environment);
    let s2 = s.clone();
    guarded_for(&s, &headers, (&scope.0, scope.1), Readers::TenantOrPlatform, async move {
        let c = check(q, s2.page_rows_max, types)?;
        work(s2, c).await
    })
    .await
}

/// Rows of `sql` with `binds`, at most `limit + 1` (the last bind), and whether there were more.
pub(super) async fn fetch<R>(
    s: &Api,
    sql: &str,
    binds: &[Bind],
    limit: u32,
) -> Result<(Vec<R>, bool), HttpError>
where
    R: clickhouse::RowOwned + clickhouse::RowRead,
{
    let mut rows: Vec<R> =
        apply(s.ch.query(sql), binds).fetch_all().await.map_err(|e| database_error("clickhouse", &e))?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// One page of buckets: `limit + 1` rows of `sql` with `binds` (rows the last), the first `limit` kept,
/// the next cursor made by `key` of the last row kept when more follow; then the frame, with
/// `complete_through` over `topics`.
async fn page<R>(
    s: &Api,
    c: &Checked,
    sql: &str,
    binds: &[Bind],
    key: fn(&R) -> Vec<String>,
    topics: &[String],
) -> Result<(Vec<R>, Frame), HttpError>
where
    R: clickhouse::RowOwned + clickhouse::RowRead,
{
    let (rows, more) = fetch::<R>(s, sql, binds, c.limit).await?;
    let next = more.then(|| rows.last()).flatten().map(key);
    let frame = frame(s, c, topics, next).await?;
    Ok((rows, frame))
}

async fn frame(
    s: &Api,
    c: &Checked,
    topics: &[String],
    next: Option<Vec<String>>,
) -> Result<Frame, HttpError> {
    let complete_through = complete_through(&s.ch, topics, s.kafka.topic_partitions).await?;
    Ok(Frame {
        tenant_id: c.tenant_id.clone(),
        environment: c.environment,
        from: c.from,
        to: c.to,
        bucket: c.bucket,
        complete_through,
        next_cursor: next.map(|p| encode_cursor(&p)),
    })
}

/// The bucket of `occurred_at`, bound width (placeholders 1-2), and the scope and range predicate on
/// `occurred_at` (placeholders 3-8: tenant, environment, from s, to s, from ms, to ms).
macro_rules! bucketed {
    ($select:literal, $table:literal, $where:literal) => {
        concat!(
            "SELECT toUInt32(intDiv(toUInt32(occurred_at), ?) * ?) AS bucket, ",
            $select,
            " FROM ",
            $table,
            " FINAL WHERE tenant_id = ? AND environment = ?",
            $where,
            " AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?)
              AND toUInt64(occurred_at) * 1000 + occurred_ms >= ? AND toUInt64(occurred_at) * 1000 + occurred_ms < ?"
        )
    };
}

// ---- transfers ----

/// Status changes per bucket × currency × kind × status with amounts, in two parts (10^9). Placeholders:
/// [`Checked::scope`], then the cursor (given?, bucket, currency, kind, status), then rows.
const TRANSFERS_SQL: &str = concat!(
    "SELECT bucket, currency, kind, status, toUInt64(count()) AS transfers,
            toInt64(sum(intDiv(amount_minor, 1000000000))) AS amount_hi,
            toInt64(sum(amount_minor % 1000000000)) AS amount_lo
     FROM (",
    bucketed!("currency, kind, status, amount_minor", "transfer_facts", ""),
    ")
     GROUP BY bucket, currency, kind, status
     HAVING ? = 0 OR (bucket, currency, kind, status) > (?, ?, ?, ?)
     ORDER BY bucket, currency, kind, status LIMIT ?"
);

/// [`Checked::scope`], the cursor (its parts as `types`), rows: the binds of [`TRANSFERS_SQL`] and
/// [`RISK_OUTCOMES_SQL`].
fn scoped_binds(c: &Checked, types: &str, rows: u64) -> Vec<Bind> {
    let mut b = c.scope();
    b.extend(c.cursor(types));
    b.push(Bind::Int(i64::try_from(rows).unwrap_or(i64::MAX)));
    b
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct TransfersRow {
    bucket: u32,
    currency: String,
    kind: String,
    status: String,
    transfers: u64,
    amount_hi: i64,
    amount_lo: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransfersBucket {
    bucket_start: DateTime<Utc>,
    provisional: bool,
    currency: String,
    kind: String,
    /// The status reached.
    status: String,
    /// Status changes to `status` in the bucket (each transfer once per status).
    transfers: u64,
    /// Their amounts, integer minor units of `currency`.
    amount_minor: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Transfers {
    #[serde(flatten)]
    frame: Frame,
    buckets: Vec<TransfersBucket>,
}

/// `GET /v1/analytics/transfers?from=&to=[&bucket=hour|day][&limit=][&after=]`: transfers reaching each
/// status per bucket × currency × kind, with counts and amounts (each status change counted once).
pub(super) async fn transfers(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Response {
    run(s, headers, q, "isss", |s, c| async move {
        let binds = scoped_binds(&c, "isss", u64::from(c.limit) + 1);
        let key = |r: &TransfersRow| {
            vec![r.bucket.to_string(), r.currency.clone(), r.kind.clone(), r.status.clone()]
        };
        let topics = [kafka::topics(&s.kafka).transfer_status(c.environment)];
        let (rows, frame) = page(&s, &c, TRANSFERS_SQL, &binds, key, &topics).await?;
        let buckets = rows
            .into_iter()
            .map(|r| {
                Ok(TransfersBucket {
                    bucket_start: bucket_start(r.bucket),
                    provisional: provisional(r.bucket, c.bucket, frame.complete_through),
                    amount_minor: joined("transfer_facts.amount_minor", r.amount_hi, r.amount_lo)?,
                    currency: r.currency,
                    kind: r.kind,
                    status: r.status,
                    transfers: r.transfers,
                })
            })
            .collect::<Result<Vec<_>, HttpError>>()?;
        Ok(Transfers { frame, buckets })
    })
    .await
}

// ---- risk outcomes ----

/// Live decisions (shadow ones left out) per bucket: the rules' outcomes (`reviewed_by` empty) and the
/// officers' decisions. Placeholders: [`Checked::scope`], the cursor (given?, bucket), rows.
const RISK_OUTCOMES_SQL: &str = concat!(
    "SELECT bucket, toUInt64(countIf(officer = 0)) AS screened,
            toUInt64(countIf(officer = 0 AND d = 'approve')) AS approved,
            toUInt64(countIf(officer = 0 AND d = 'review')) AS reviewed,
            toUInt64(countIf(officer = 0 AND d = 'block')) AS blocked,
            toUInt64(countIf(officer = 1 AND d = 'approve')) AS officer_approved,
            toUInt64(countIf(officer = 1 AND d = 'block')) AS officer_blocked
     FROM (",
    bucketed!(
        "toString(decision) AS d, toUInt8(reviewed_by != '') AS officer",
        "risk_decisions",
        " AND shadow = 0"
    ),
    ")
     GROUP BY bucket HAVING ? = 0 OR bucket > ?
     ORDER BY bucket LIMIT ?"
);

#[derive(Debug, clickhouse::Row, Deserialize)]
struct RiskRow {
    bucket: u32,
    screened: u64,
    approved: u64,
    reviewed: u64,
    blocked: u64,
    officer_approved: u64,
    officer_blocked: u64,
}

/// An exact ratio.
#[derive(Debug, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Fraction {
    numerator: u64,
    denominator: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RiskBucket {
    bucket_start: DateTime<Utc>,
    provisional: bool,
    /// Screening decisions of the live rule set.
    screened: u64,
    approved: u64,
    review: u64,
    blocked: u64,
    /// review / screened.
    review_rate: Fraction,
    /// Officers' decisions on held transfers, decided in the bucket.
    officer_approved: u64,
    officer_blocked: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RiskOutcomes {
    #[serde(flatten)]
    frame: Frame,
    buckets: Vec<RiskBucket>,
}

/// `GET /v1/analytics/risk-outcomes?from=&to=[&bucket=][&limit=][&after=]`: live screening outcomes per
/// bucket, the review rate as an exact fraction, and officers' decisions.
pub(super) async fn risk_outcomes(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Response {
    run(s, headers, q, "i", |s, c| async move {
        let binds = scoped_binds(&c, "i", u64::from(c.limit) + 1);
        let key = |r: &RiskRow| vec![r.bucket.to_string()];
        let topics = [kafka::topics(&s.kafka).risk_decisions(c.environment)];
        let (rows, frame) = page(&s, &c, RISK_OUTCOMES_SQL, &binds, key, &topics).await?;
        let buckets = rows
            .into_iter()
            .map(|r| RiskBucket {
                bucket_start: bucket_start(r.bucket),
                provisional: provisional(r.bucket, c.bucket, frame.complete_through),
                screened: r.screened,
                approved: r.approved,
                review: r.reviewed,
                blocked: r.blocked,
                review_rate: Fraction { numerator: r.reviewed, denominator: r.screened },
                officer_approved: r.officer_approved,
                officer_blocked: r.officer_blocked,
            })
            .collect();
        Ok(RiskOutcomes { frame, buckets })
    })
    .await
}

// ---- KYC funnel ----

/// Users by the bucket of their KYC start (their first event with a status other than `not_started`),
/// their status now (highest version), and the time from start to their first approval or rejection:
/// `quantilesExactIf` (exact, over integer milliseconds). Placeholders: bucket s ×2, tenant,
/// environment, to s, from ms, to ms, the cursor (given?, bucket), rows.
const KYC_FUNNEL_SQL: &str = "
    SELECT toUInt32(intDiv(intDiv(started_ms, 1000), ?) * ?) AS bucket,
           toUInt64(count()) AS started,
           toUInt64(countIf(st = 'approved')) AS approved,
           toUInt64(countIf(st = 'rejected')) AS rejected,
           toUInt64(countIf(st = 'in_review')) AS in_review,
           toUInt64(countIf(st = 'pending')) AS pending,
           toUInt64(countIf(decided_ms > 0)) AS decided,
           quantilesExactIf(0.5, 0.9, 0.99)(toUInt64(decided_ms - started_ms), decided_ms > 0) AS decision_ms
    FROM (
        SELECT user_id, argMax(kyc_status, version) AS st,
               minIf(toUInt64(occurred_at) * 1000 + occurred_ms, kyc_status != 'not_started') AS started_ms,
               minIf(toUInt64(occurred_at) * 1000 + occurred_ms, kyc_status IN ('approved', 'rejected'))
                   AS decided_ms,
               countIf(kyc_status != 'not_started') AS steps
        FROM kyc_facts FINAL
        WHERE tenant_id = ? AND environment = ? AND occurred_at <= toDateTime(?)
        GROUP BY user_id
        HAVING steps > 0 AND started_ms >= ? AND started_ms < ?)
    GROUP BY bucket HAVING ? = 0 OR bucket > ?
    ORDER BY bucket LIMIT ?";

/// Bucket s ×2, tenant, environment, to s, from ms, to ms, the cursor (its parts as `types`), rows: the
/// binds of [`KYC_FUNNEL_SQL`] and [`LATENCY_SQL`], which bucket each row by its own first time.
fn first_time_binds(c: &Checked, types: &str, rows: u64) -> Vec<Bind> {
    let mut b = vec![
        Bind::Int(c.bucket.seconds()),
        Bind::Int(c.bucket.seconds()),
        Bind::Text(c.tenant_id.clone()),
        Bind::Text(c.environment.as_str().to_owned()),
        Bind::Int(c.to.timestamp()),
        Bind::Int(c.from.timestamp_millis()),
        Bind::Int(c.to.timestamp_millis()),
    ];
    b.extend(c.cursor(types));
    b.push(Bind::Int(i64::try_from(rows).unwrap_or(i64::MAX)));
    b
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct KycRow {
    bucket: u32,
    started: u64,
    approved: u64,
    rejected: u64,
    in_review: u64,
    pending: u64,
    decided: u64,
    decision_ms: Vec<u64>,
}

/// Quantiles of a duration in milliseconds.
#[derive(Debug, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Quantiles {
    p50: u64,
    p90: u64,
    p99: u64,
}

impl Quantiles {
    fn of(count: u64, values: &[u64]) -> Option<Quantiles> {
        match values {
            [p50, p90, p99] if count > 0 => Some(Quantiles { p50: *p50, p90: *p90, p99: *p99 }),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KycBucket {
    bucket_start: DateTime<Utc>,
    provisional: bool,
    /// Users whose KYC started in the bucket.
    started: u64,
    /// Of them, by their KYC status now (others: expired, or back to not started).
    approved: u64,
    rejected: u64,
    in_review: u64,
    pending: u64,
    /// Of them, those approved or rejected at least once.
    decided: u64,
    /// From the start to the first approval or rejection (exact quantiles); absent when none decided.
    time_to_decision_ms: Option<Quantiles>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KycFunnel {
    #[serde(flatten)]
    frame: Frame,
    buckets: Vec<KycBucket>,
}

/// `GET /v1/analytics/kyc-funnel?from=&to=[&bucket=][&limit=][&after=]`: users who started KYC in each
/// bucket, where they are now, and how long their first decision took. Statuses are as of the answer:
/// a complete bucket's users can still be decided later.
pub(super) async fn kyc_funnel(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Response {
    run(s, headers, q, "i", |s, c| async move {
        let binds = first_time_binds(&c, "i", u64::from(c.limit) + 1);
        let key = |r: &KycRow| vec![r.bucket.to_string()];
        let topics = [kafka::topics(&s.kafka).kyc_events(c.environment)];
        let (rows, frame) = page(&s, &c, KYC_FUNNEL_SQL, &binds, key, &topics).await?;
        let buckets = rows
            .into_iter()
            .map(|r| KycBucket {
                bucket_start: bucket_start(r.bucket),
                provisional: provisional(r.bucket, c.bucket, frame.complete_through),
                time_to_decision_ms: Quantiles::of(r.decided, &r.decision_ms),
                started: r.started,
                approved: r.approved,
                rejected: r.rejected,
                in_review: r.in_review,
                pending: r.pending,
                decided: r.decided,
            })
            .collect();
        Ok(KycFunnel { frame, buckets })
    })
    .await
}

// ---- accept → final latency ----

/// Transfers by the bucket of their final status (COMPLETED or CANCELLED) × kind × final status, with
/// exact quantiles (`quantilesExact`, integer ms) of the time from their first status change (INITIATED,
/// stamped when the transfers processor accepted the request; `transfer_facts` keeps no ingest time) to
/// the final one. Placeholders: bucket s ×2, tenant, environment, to s, from ms, to ms, the cursor
/// (given?, bucket, kind, final status), rows.
const LATENCY_SQL: &str = "
    SELECT toUInt32(intDiv(intDiv(final_ms, 1000), ?) * ?) AS bucket, kind, final_status,
           toUInt64(count()) AS transfers,
           quantilesExact(0.5, 0.9, 0.99)(toUInt64(final_ms - first_ms)) AS latency_ms
    FROM (
        SELECT transfer_id, any(kind) AS kind,
               min(toUInt64(occurred_at) * 1000 + occurred_ms) AS first_ms,
               minIf(toUInt64(occurred_at) * 1000 + occurred_ms, status IN ('COMPLETED', 'CANCELLED')) AS final_ms,
               anyIf(status, status IN ('COMPLETED', 'CANCELLED')) AS final_status,
               countIf(status IN ('COMPLETED', 'CANCELLED')) AS finals
        FROM transfer_facts FINAL
        WHERE tenant_id = ? AND environment = ? AND occurred_at <= toDateTime(?)
        GROUP BY transfer_id
        HAVING finals > 0 AND final_ms >= ? AND final_ms < ?)
    GROUP BY bucket, kind, final_status
    HAVING ? = 0 OR (bucket, kind, final_status) > (?, ?, ?)
    ORDER BY bucket, kind, final_status LIMIT ?";

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LatencyRow {
    bucket: u32,
    kind: String,
    final_status: String,
    transfers: u64,
    latency_ms: Vec<u64>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LatencyBucket {
    bucket_start: DateTime<Utc>,
    provisional: bool,
    kind: String,
    /// COMPLETED or CANCELLED.
    final_status: String,
    transfers: u64,
    /// From the first status change to the final one (exact quantiles).
    latency_ms: Option<Quantiles>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransferLatency {
    #[serde(flatten)]
    frame: Frame,
    buckets: Vec<LatencyBucket>,
}

/// `GET /v1/analytics/transfer-latency?from=&to=[&bucket=][&limit=][&after=]`: accept → final latency
/// percentiles of transfers that reached a final status in each bucket, per kind and final status.
pub(super) async fn transfer_latency(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Response {
    run(s, headers, q, "iss", |s, c| async move {
        let binds = first_time_binds(&c, "iss", u64::from(c.limit) + 1);
        let key = |r: &LatencyRow| vec![r.bucket.to_string(), r.kind.clone(), r.final_status.clone()];
        let topics = [kafka::topics(&s.kafka).transfer_status(c.environment)];
        let (rows, frame) = page(&s, &c, LATENCY_SQL, &binds, key, &topics).await?;
        let buckets = rows
            .into_iter()
            .map(|r| LatencyBucket {
                bucket_start: bucket_start(r.bucket),
                provisional: provisional(r.bucket, c.bucket, frame.complete_through),
                latency_ms: Quantiles::of(r.transfers, &r.latency_ms),
                kind: r.kind,
                final_status: r.final_status,
                transfers: r.transfers,
            })
            .collect();
        Ok(TransferLatency { frame, buckets })
    })
    .await
}

// ---- rejections ----

/// Inputs refused by the transfers, risk and KYC processors, per bucket × source × reason. Dead letters
/// (what ingest and the sinks could not take) are not in ClickHouse. Placeholders: [`Checked::scope`]
/// three times (one per table), the cursor (given?, bucket, source, reason), rows.
const REJECTIONS_SQL: &str = concat!(
    "SELECT bucket, source, reason, toUInt64(count()) AS rejections FROM (",
    bucketed!("'transfers' AS source, reason", "transfer_rejections", ""),
    " UNION ALL ",
    bucketed!("'risk' AS source, reason", "risk_rejections", ""),
    " UNION ALL ",
    bucketed!("'kyc' AS source, reason", "kyc_rejections", ""),
    ")
     GROUP BY bucket, source, reason
     HAVING ? = 0 OR (bucket, source, reason) > (?, ?, ?)
     ORDER BY bucket, source, reason LIMIT ?"
);

fn rejections_binds(c: &Checked, rows: u64) -> Vec<Bind> {
    let mut b = c.scope();
    b.extend(c.scope());
    b.extend(c.scope());
    b.extend(c.cursor("iss"));
    b.push(Bind::Int(i64::try_from(rows).unwrap_or(i64::MAX)));
    b
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct RejectionRow {
    bucket: u32,
    source: String,
    reason: String,
    rejections: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RejectionBucket {
    bucket_start: DateTime<Utc>,
    provisional: bool,
    /// `transfers`, `risk` or `kyc`: the processor that refused the input.
    source: String,
    reason: String,
    rejections: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Rejections {
    #[serde(flatten)]
    frame: Frame,
    buckets: Vec<RejectionBucket>,
}

/// `GET /v1/analytics/rejections?from=&to=[&bucket=][&limit=][&after=]`: refused inputs by reason.
pub(super) async fn rejections(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Response {
    run(s, headers, q, "iss", |s, c| async move {
        let binds = rejections_binds(&c, u64::from(c.limit) + 1);
        let key = |r: &RejectionRow| vec![r.bucket.to_string(), r.source.clone(), r.reason.clone()];
        let topics = kafka::topics(&s.kafka);
        let env = c.environment;
        let watched = [topics.transfer_rejections(env), topics.risk_decisions(env), topics.kyc_events(env)];
        let (rows, frame) = page(&s, &c, REJECTIONS_SQL, &binds, key, &watched).await?;
        let buckets = rows
            .into_iter()
            .map(|r| RejectionBucket {
                bucket_start: bucket_start(r.bucket),
                provisional: provisional(r.bucket, c.bucket, frame.complete_through),
                source: r.source,
                reason: r.reason,
                rejections: r.rejections,
            })
            .collect();
        Ok(Rejections { frame, buckets })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::fx_billing::SUM_SPLIT;
    use super::*;

    fn q(from: &str, to: &str, bucket: Option<&str>) -> AnalyticsQuery {
        AnalyticsQuery {
            tenant_id: "acme".into(),
            environment: Environment::Live,
            from: Some(from.into()),
            to: Some(to.into()),
            bucket: bucket.map(str::to_owned),
            limit: None,
            after: None,
        }
    }

    #[test]
    fn every_catalog_query_has_one_sample_per_placeholder() {
        let all = clickhouse_queries();
        assert_eq!(all.len(), 14);
        for c in &all {
            let placeholders = c.sql.matches('?').count();
            assert_eq!(placeholders, c.binds.len(), "{}", c.name);
            assert!(!c.substituted().contains('?'), "{}", c.name);
            assert!(c.binds.iter().enumerate().all(|(i, (p, _))| i == *p), "{}", c.name);
        }
        // The sums' split is the one fx_billing joins.
        assert!(TRANSFERS_SQL.contains(&format!("intDiv(amount_minor, {SUM_SPLIT})")));
        let t = all.iter().find(|c| c.name == "analytics.transfers (next page)").expect("listed");
        assert!(t
            .substituted()
            .contains("HAVING 1 = 0 OR (bucket, currency, kind, status) > (1764550800, 'USD'"));
        assert_eq!(Bind::Text("it's \\".into()).literal(), "'it\\'s \\\\'");
    }

    #[test]
    fn parameters_are_checked_naming_the_field() {
        let c = check(q("2026-12-01T00:00:00Z", "2026-12-31T00:00:00Z", None), 500, "i").expect("hourly");
        assert_eq!((c.bucket, c.limit), (Bucket::Hour, 100));
        assert!(check(q("2026-01-01T00:00:00Z", "2026-12-31T00:00:00Z", Some("day")), 500, "i").is_ok());
        for (from, to, bucket, field) in [
            ("2026-12-01T00:00:00Z", "2026-12-03T00:00:00Z", Some("week"), "bucket"),
            ("2026-11-01T00:00:00Z", "2026-12-03T00:00:00Z", Some("hour"), "to"),
            ("2025-11-01T00:00:00Z", "2026-12-03T00:00:00Z", Some("day"), "to"),
            ("today", "2026-12-03T00:00:00Z", None, "from"),
        ] {
            let e = check(q(from, to, bucket), 500, "i").unwrap_err();
            assert_eq!(e.field.map(|f| f.0), Some(field.to_owned()), "{from} {to} {bucket:?}");
        }
        let mut limited = q("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", None);
        limited.limit = Some(501);
        assert_eq!(check(limited, 500, "i").unwrap_err().field.map(|f| f.0), Some("limit".to_owned()));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let parts = vec!["1764550800".to_owned(), "risk".to_owned(), "bad input: x/y".to_owned()];
        assert_eq!(decode_cursor(&encode_cursor(&parts), "iss").expect("round trip"), parts);
        for bad in [
            "",
            "zz",
            "abc",
            &encode_cursor(&parts[..2]),
            &encode_cursor(&["x".into(), "a".into(), "b".into()]),
        ] {
            let e = decode_cursor(bad, "iss").unwrap_err();
            assert_eq!(e.field.map(|f| f.0), Some("after".to_owned()), "{bad}");
        }
    }

    #[test]
    fn buckets_ending_after_complete_through_are_provisional() {
        let at = |s: i64| DateTime::from_timestamp(s, 0);
        assert!(provisional(3_600, Bucket::Hour, None));
        assert!(!provisional(3_600, Bucket::Hour, at(7_200)));
        assert!(provisional(3_600, Bucket::Hour, at(7_199)));
        assert!(provisional(0, Bucket::Day, at(7_200)));
        assert!(!provisional(0, Bucket::Day, at(86_400)));
        assert_eq!(Quantiles::of(0, &[0, 0, 0]), None);
        assert_eq!(Quantiles::of(2, &[5, 9, 9]), Some(Quantiles { p50: 5, p90: 9, p99: 9 }));
    }
}
