//! Risk reads: the manual review queue and a transfer's explained decisions (Postgres, live decisions
//! only), and where a shadow rule set disagrees with the live one (ClickHouse, which alone keeps shadow
//! decisions). Tenant-scoped like every read (`guarded`); every value is bound, never spliced into SQL.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use riverbank_runtime::http::HttpError;
use riverbank_runtime::kafka;
use riverbank_schemas::risk::{RateApplied, RuleHit};
use riverbank_schemas::Environment;
use serde::{Deserialize, Serialize};

use super::analytics::{apply, fetch, Bind};
use super::fx_billing::range_binds;
use super::{
    complete_through, database_error, guarded, live, micros_cursor, next_cursor, Api, Params, TenantQuery,
};

/// Rows per page when the caller names no `limit` (at most `api.page_rows_max`).
pub const RISK_PAGE_ROWS_DEFAULT: u32 = 100;
/// Longest `from`..`to` span of a shadow diff: 93 days (a quarter), so one read scans a bounded range.
pub const SHADOW_DIFF_RANGE_S_MAX: i64 = 93 * 86_400;

fn page_limit(limit: Option<u32>, max: u32) -> Result<u32, HttpError> {
    let limit = limit.unwrap_or(RISK_PAGE_ROWS_DEFAULT.min(max));
    if limit == 0 || limit > max {
        return Err(HttpError::bad_request("invalid_limit", format!("limit must be 1..={max}")));
    }
    Ok(limit)
}

/// Transfer ids as the edge accepts them: 1–64 of ASCII letters, digits, `_`, `-`, `.`, `:`.
fn check_transfer_id(id: &str) -> Result<(), HttpError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(HttpError::bad_request(
            "invalid_transfer_id",
            "transfer_id must be 1-64 of ASCII letters, digits, '_', '-', '.', ':'",
        ))
    }
}

fn bad_cursor() -> HttpError {
    HttpError::bad_request("invalid_cursor", "after must be a next_cursor from a previous page")
}

/// JSON text Postgres gave back for a `jsonb` column, as the type the sinks wrote.
fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, HttpError> {
    serde_json::from_str(text).map_err(|e| HttpError::internal(&format!("risk_decisions.{column}: {e}")))
}

#[derive(Debug, sqlx::FromRow)]
struct QueuedRow {
    transfer_id: String,
    transfer_version: i32,
    kind: String,
    amount_minor: i64,
    currency: String,
    amount_report_minor: Option<i64>,
    report_currency: String,
    score: i32,
    hits: String,
    rule_set: String,
    rule_set_version: String,
    ctr: bool,
    user_id: Option<String>,
    requested_by: String,
    screened_at: DateTime<Utc>,
    queued_at: DateTime<Utc>,
}

/// A transfer waiting for a compliance officer, with what the rules saw.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct QueuedReview {
    transfer_id: String,
    transfer_version: i32,
    kind: String,
    /// Integer minor units of `currency`.
    amount_minor: i64,
    currency: String,
    /// The amount in the rule set's report currency (absent when no rate was seen).
    amount_report_minor: Option<i64>,
    report_currency: String,
    score: i32,
    /// Every rule that fired, its score and the feature values it saw.
    hits: Vec<RuleHit>,
    rule_set: String,
    rule_set_version: String,
    /// Over the currency-transaction-report threshold.
    ctr: bool,
    user_id: Option<String>,
    /// Who requested the transfer (the officer deciding must be someone else).
    requested_by: String,
    screened_at: DateTime<Utc>,
    /// When it entered the queue (the order of the queue).
    queued_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReviewQueue {
    tenant_id: String,
    environment: Environment,
    reviews: Vec<QueuedReview>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Queue cursor: `<queued_at unix micros>_<transfer_id>` (micros hold no `_`).
fn parse_queue_cursor(text: &str) -> Result<(DateTime<Utc>, String), HttpError> {
    micros_cursor(text, |id| check_transfer_id(id).is_ok(), bad_cursor)
}

/// `GET /v1/risk/reviews`: transfers whose latest live decision is `review`, oldest first (the time
/// they entered the queue, then the transfer id), a page at a time.
pub(super) async fn reviews(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<TenantQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let (after_at, after_id) = q.after.as_deref().map(parse_queue_cursor).transpose()?.unzip();
        // `risk_latest` holds each transfer's latest live decision (the sink moves it forward only);
        // its partial index on decision = 'review' is the queue in order.
        let rows: Vec<QueuedRow> = sqlx::query_as(
            "SELECT d.transfer_id, d.transfer_version, d.kind, d.amount_minor, d.currency, d.amount_report_minor,
                    d.report_currency, d.score, d.hits::text AS hits, d.rule_set, d.rule_set_version, d.ctr,
                    d.user_id, d.requested_by, d.screened_at, l.occurred_at AS queued_at
             FROM risk_latest l JOIN risk_decisions d ON d.event_id = l.event_id
             WHERE l.tenant_id = $1 AND l.environment = $2 AND l.decision = 'review'
               AND ($3::timestamptz IS NULL OR (l.occurred_at, l.transfer_id) > ($3, $4::text))
             ORDER BY l.occurred_at, l.transfer_id
             LIMIT $5",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let next_cursor =
            next_cursor(&rows, limit, |r| format!("{}_{}", r.queued_at.timestamp_micros(), r.transfer_id));
        let reviews = rows
            .into_iter()
            .map(|r| {
                Ok(QueuedReview {
                    hits: from_json("hits", &r.hits)?,
                    transfer_id: r.transfer_id,
                    transfer_version: r.transfer_version,
                    kind: r.kind,
                    amount_minor: r.amount_minor,
                    currency: r.currency,
                    amount_report_minor: r.amount_report_minor,
                    report_currency: r.report_currency,
                    score: r.score,
                    rule_set: r.rule_set,
                    rule_set_version: r.rule_set_version,
                    ctr: r.ctr,
                    user_id: r.user_id,
                    requested_by: r.requested_by,
                    screened_at: r.screened_at,
                    queued_at: r.queued_at,
                })
            })
            .collect::<Result<Vec<_>, HttpError>>()?;
        Ok(ReviewQueue { tenant_id: q.tenant_id, environment: q.environment, reviews, next_cursor })
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    transfer_id: String,
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct DecisionRow {
    event_id: uuid::Uuid,
    step: i64,
    transfer_version: i32,
    kind: String,
    decision: String,
    score: i32,
    hits: String,
    rule_set: String,
    rule_set_version: String,
    amount_minor: i64,
    currency: String,
    amount_report_minor: Option<i64>,
    report_currency: String,
    rate: Option<String>,
    lists: String,
    ctr: bool,
    user_id: Option<String>,
    requested_by: String,
    reviewed_by: Option<String>,
    review_reason: Option<String>,
    screened_at: DateTime<Utc>,
    occurred_at: DateTime<Utc>,
}

/// One live decision and everything it was based on.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DecisionView {
    event_id: uuid::Uuid,
    transfer_version: i32,
    kind: String,
    /// approve | review | block
    decision: String,
    score: i32,
    /// Every rule that fired, its score and the feature values it saw.
    hits: Vec<RuleHit>,
    rule_set: String,
    rule_set_version: String,
    /// Integer minor units of `currency`.
    amount_minor: i64,
    currency: String,
    amount_report_minor: Option<i64>,
    report_currency: String,
    /// The rate the amount was converted with, and the rates publication it came from.
    rate: Option<RateApplied>,
    /// Versions of the lists matched against, by list name.
    lists: BTreeMap<String, String>,
    ctr: bool,
    user_id: Option<String>,
    requested_by: String,
    /// The compliance officer, on a manual review's decision.
    reviewed_by: Option<String>,
    review_reason: Option<String>,
    screened_at: DateTime<Utc>,
    occurred_at: DateTime<Utc>,
}

impl DecisionView {
    fn of(r: DecisionRow) -> Result<DecisionView, HttpError> {
        Ok(DecisionView {
            hits: from_json("hits", &r.hits)?,
            rate: r.rate.as_deref().map(|t| from_json("rate", t)).transpose()?,
            lists: from_json("lists", &r.lists)?,
            event_id: r.event_id,
            transfer_version: r.transfer_version,
            kind: r.kind,
            decision: r.decision,
            score: r.score,
            rule_set: r.rule_set,
            rule_set_version: r.rule_set_version,
            amount_minor: r.amount_minor,
            currency: r.currency,
            amount_report_minor: r.amount_report_minor,
            report_currency: r.report_currency,
            ctr: r.ctr,
            user_id: r.user_id,
            requested_by: r.requested_by,
            reviewed_by: r.reviewed_by,
            review_reason: r.review_reason,
            screened_at: r.screened_at,
            occurred_at: r.occurred_at,
        })
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TransferDecisions {
    tenant_id: String,
    environment: Environment,
    transfer_id: String,
    decisions: Vec<DecisionView>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Decisions cursor: `<step>_<occurred_at unix micros>_<event_id>`.
fn parse_decisions_cursor(text: &str) -> Result<(i64, DateTime<Utc>, uuid::Uuid), HttpError> {
    let mut parts = text.splitn(3, '_');
    let step: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad_cursor)?;
    let at = parts
        .next()
        .and_then(|p| p.parse().ok())
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad_cursor)?;
    let id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad_cursor)?;
    Ok((step, at, id))
}

/// `GET /v1/risk/decisions?transfer_id=`: every live decision on a transfer, in order — each version's
/// screening, then an officer's decision on it — with the rules that fired, the features they saw and
/// the versions of the rule set, rates and lists. 404 when there is none.
pub(super) async fn decisions(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<DecisionsQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        check_transfer_id(&q.transfer_id)?;
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let (after_step, after_at, after_id) = match &q.after {
            Some(c) => {
                let (step, at, id) = parse_decisions_cursor(c)?;
                (Some(step), Some(at), Some(id))
            }
            None => (None, None, None),
        };
        // step: the order of a transfer's decisions (sinks/src/rows.rs `risk_step`).
        let rows: Vec<DecisionRow> = sqlx::query_as(
            "SELECT * FROM (
                 SELECT event_id, transfer_version::int8 * 2 + (reviewed_by IS NOT NULL)::int AS step,
                        transfer_version, kind, decision, score, hits::text AS hits, rule_set, rule_set_version,
                        amount_minor, currency, amount_report_minor, report_currency, rate::text AS rate,
                        lists::text AS lists, ctr, user_id, requested_by, reviewed_by, review_reason,
                        screened_at, occurred_at
                 FROM risk_decisions
                 WHERE tenant_id = $1 AND environment = $2 AND transfer_id = $3) d
             WHERE $4::int8 IS NULL OR (step, occurred_at, event_id) > ($4, $5::timestamptz, $6::uuid)
             ORDER BY step, occurred_at, event_id
             LIMIT $7",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&q.transfer_id)
        .bind(after_step)
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        if rows.is_empty() && q.after.is_none() {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no risk decision on this transfer for this tenant",
            ));
        }
        let next_cursor = next_cursor(&rows, limit, |r| {
            format!("{}_{}_{}", r.step, r.occurred_at.timestamp_micros(), r.event_id)
        });
        let decisions = rows.into_iter().map(DecisionView::of).collect::<Result<Vec<_>, _>>()?;
        Ok(TransferDecisions {
            tenant_id: q.tenant_id,
            environment: q.environment,
            transfer_id: q.transfer_id,
            decisions,
            next_cursor,
        })
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowDiffQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// Screened at or after (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    from: Option<String>,
    /// Screened before (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    to: Option<String>,
    /// Differing transfers listed at most.
    #[schemars(range(min = 1))]
    limit: Option<u32>,
}

/// `from` and `to`: required, RFC 3339, `from < to`, at most [`SHADOW_DIFF_RANGE_S_MAX`] apart, within
/// what ClickHouse `DateTime` holds.
fn diff_range(q: &ShadowDiffQuery) -> Result<(DateTime<Utc>, DateTime<Utc>), HttpError> {
    let time = |field: &str, v: &Option<String>| -> Result<DateTime<Utc>, HttpError> {
        let text = v.as_deref().ok_or_else(|| {
            HttpError::bad_request(
                "invalid_time",
                format!("{field} is required (RFC 3339, e.g. 2026-12-01T00:00:00Z)"),
            )
        })?;
        let t = DateTime::parse_from_rfc3339(text)
            .map_err(|_| {
                HttpError::bad_request(
                    "invalid_time",
                    format!("{field} must be RFC 3339, e.g. 2026-12-01T00:00:00Z"),
                )
            })?
            .with_timezone(&Utc);
        if !(0..=i64::from(u32::MAX)).contains(&t.timestamp()) {
            return Err(HttpError::bad_request("invalid_time", format!("{field} must be 1970..2106")));
        }
        Ok(t)
    };
    let (from, to) = (time("from", &q.from)?, time("to", &q.to)?);
    if from >= to {
        return Err(HttpError::bad_request("invalid_time", "from must be before to"));
    }
    if (to - from).num_seconds() > SHADOW_DIFF_RANGE_S_MAX {
        return Err(HttpError::bad_request(
            "invalid_time",
            format!("from..to spans at most {} days", SHADOW_DIFF_RANGE_S_MAX / 86_400),
        ));
    }
    Ok((from, to))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct DiffRow {
    transfer_id: String,
    transfer_version: u32,
    at_ms: u64,
    l_decision: String,
    l_score: u32,
    l_rule_set: String,
    l_rule_set_version: String,
    s_decision: String,
    s_score: u32,
    s_rule_set: String,
    s_rule_set_version: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PairRow {
    l_decision: String,
    s_decision: String,
    transfers: u64,
}

/// One side of a comparison.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Side {
    decision: String,
    score: u32,
    rule_set: String,
    rule_set_version: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Difference {
    transfer_id: String,
    transfer_version: u32,
    screened_at: DateTime<Utc>,
    live: Side,
    shadow: Side,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OutcomePair {
    live: String,
    shadow: String,
    transfers: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ShadowDiff {
    tenant_id: String,
    environment: Environment,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Every decision landed before this instant is counted; later ones may still arrive.
    complete_through: Option<DateTime<Utc>>,
    /// Screened transfers with both a live and a shadow decision, per (live, shadow) outcome pair.
    outcomes: Vec<OutcomePair>,
    /// Where they differ, in screening order, at most `limit`.
    differences: Vec<Difference>,
    /// More differences exist than listed (their count is in `outcomes`).
    truncated: bool,
}

/// Live screening decisions (officers' decisions left out: the rules are compared, not the people)
/// beside the shadow decisions of the same transfer version, screened in [from, to). Placeholders in
/// order: tenant, environment, from s, to s, from ms, to ms; then the same for the shadow side.
const SHADOW_PAIRS_SQL: &str = "
    SELECT transfer_id, transfer_version, at_ms, l_decision, l_score, l_rule_set, l_rule_set_version,
           s_decision, s_score, s_rule_set, s_rule_set_version
    FROM (
        SELECT transfer_id, transfer_version, toUInt64(occurred_at) * 1000 + occurred_ms AS at_ms,
               toString(decision) AS l_decision, score AS l_score, rule_set AS l_rule_set,
               rule_set_version AS l_rule_set_version
        FROM risk_decisions FINAL
        WHERE tenant_id = ? AND environment = ? AND shadow = 0 AND reviewed_by = ''
          AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?)
          AND toUInt64(occurred_at) * 1000 + occurred_ms >= ? AND toUInt64(occurred_at) * 1000 + occurred_ms < ?
    ) AS l ALL INNER JOIN (
        SELECT transfer_id, transfer_version, toString(decision) AS s_decision, score AS s_score,
               rule_set AS s_rule_set, rule_set_version AS s_rule_set_version
        FROM risk_decisions FINAL
        WHERE tenant_id = ? AND environment = ? AND shadow = 1
          AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?)
          AND toUInt64(occurred_at) * 1000 + occurred_ms >= ? AND toUInt64(occurred_at) * 1000 + occurred_ms < ?
    ) AS s USING (transfer_id, transfer_version)";

/// Counts per (live, shadow) outcome pair, as executed: [`SHADOW_PAIRS_SQL`]'s placeholders.
pub(super) fn shadow_outcomes_sql() -> String {
    format!(
        "SELECT l_decision, s_decision, toUInt64(count()) AS transfers FROM ({SHADOW_PAIRS_SQL})
         GROUP BY l_decision, s_decision ORDER BY l_decision, s_decision"
    )
}

/// Where the two sides differ, as executed: [`SHADOW_PAIRS_SQL`]'s placeholders, then rows (`limit + 1`).
pub(super) fn shadow_differences_sql() -> String {
    format!(
        "SELECT * FROM ({SHADOW_PAIRS_SQL}) WHERE l_decision != s_decision
         ORDER BY at_ms, transfer_id, transfer_version LIMIT ?"
    )
}

/// The binds of [`shadow_outcomes_sql`] (tenant, environment, from s, to s, from ms, to ms: the live
/// side, then the same for the shadow side) and, with `rows`, of [`shadow_differences_sql`].
pub(super) fn shadow_binds(
    tenant_id: &str,
    environment: Environment,
    range: (DateTime<Utc>, DateTime<Utc>),
    rows: Option<u64>,
) -> Vec<Bind> {
    let side = &range_binds(tenant_id, environment, range, 0)[..6];
    let mut b: Vec<Bind> = side.iter().chain(side).cloned().collect();
    b.extend(rows.map(|r| Bind::Int(i64::try_from(r).unwrap_or(i64::MAX))));
    b
}

/// `GET /v1/risk/shadow/diff?from=&to=&limit=`: where the shadow rule set decided otherwise than the
/// live one on the same transfer version, and counts per (live, shadow) outcome pair.
pub(super) async fn shadow_diff(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    Params(q): Params<ShadowDiffQuery>,
) -> Response {
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let (from, to) = diff_range(&q)?;
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let binds = |rows| shadow_binds(&q.tenant_id, q.environment, (from, to), rows);
        let pairs: Vec<PairRow> = apply(s2.ch.query(&shadow_outcomes_sql()), &binds(None))
            .fetch_all()
            .await
            .map_err(|e| database_error("clickhouse", &e))?;
        // One more than asked, to tell a full page from a truncated one.
        let differences_binds = binds(Some(u64::from(limit) + 1));
        let (rows, truncated) =
            fetch::<DiffRow>(&s2, &shadow_differences_sql(), &differences_binds, limit).await?;
        let differences = rows
            .into_iter()
            .map(|r| Difference {
                screened_at: i64::try_from(r.at_ms)
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
                    .unwrap_or_default(),
                transfer_id: r.transfer_id,
                transfer_version: r.transfer_version,
                live: Side {
                    decision: r.l_decision,
                    score: r.l_score,
                    rule_set: r.l_rule_set,
                    rule_set_version: r.l_rule_set_version,
                },
                shadow: Side {
                    decision: r.s_decision,
                    score: r.s_score,
                    rule_set: r.s_rule_set,
                    rule_set_version: r.s_rule_set_version,
                },
            })
            .collect();
        let outcomes = pairs
            .into_iter()
            .map(|p| OutcomePair { live: p.l_decision, shadow: p.s_decision, transfers: p.transfers })
            .collect();
        let topics = kafka::topics(&s2.kafka);
        let complete_through =
            complete_through(&s2.ch, &[topics.risk_decisions(q.environment)], s2.kafka.topic_partitions)
                .await?;
        Ok(ShadowDiff {
            tenant_id: q.tenant_id,
            environment: q.environment,
            from,
            to,
            complete_through,
            outcomes,
            differences,
            truncated,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("time");
        assert_eq!(parse_queue_cursor("1790000000123456_t_1.a:b").expect("cursor"), (at, "t_1.a:b".into()));
        let id = uuid::Uuid::new_v4();
        assert_eq!(parse_decisions_cursor(&format!("9_1790000000123456_{id}")).expect("cursor"), (9, at, id));
        for bad in ["", "t1", "x_t1", "1790000000123456_", "1790000000123456_t 1", "99999999999999999999_t1"]
        {
            assert_eq!(parse_queue_cursor(bad).unwrap_err().code, "invalid_cursor", "{bad}");
        }
        let nil = uuid::Uuid::nil();
        for bad in
            [String::new(), "1_2".into(), format!("a_2_{nil}"), format!("9_x_{nil}"), "9_1_notauuid".into()]
        {
            assert_eq!(parse_decisions_cursor(&bad).unwrap_err().code, "invalid_cursor", "{bad}");
        }
    }

    #[test]
    fn limits_and_time_ranges_are_validated() {
        assert_eq!(page_limit(None, 1000).expect("default"), RISK_PAGE_ROWS_DEFAULT);
        assert_eq!(page_limit(None, 10).expect("default under a small max"), 10);
        assert!(page_limit(Some(0), 1000).is_err());
        assert!(page_limit(Some(1001), 1000).is_err());
        let q = |from: Option<&str>, to: Option<&str>| ShadowDiffQuery {
            tenant_id: "acme".into(),
            environment: Environment::Live,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            limit: None,
        };
        assert!(diff_range(&q(Some("2026-12-01T00:00:00Z"), Some("2026-12-02T00:00:00+01:00"))).is_ok());
        for (from, to) in [
            (None, Some("2026-12-02T00:00:00Z")),
            (Some("2026-12-01T00:00:00Z"), None),
            (Some("yesterday"), Some("2026-12-02T00:00:00Z")),
            (Some("2026-12-02T00:00:00Z"), Some("2026-12-01T00:00:00Z")),
            (Some("2026-01-01T00:00:00Z"), Some("2026-12-01T00:00:00Z")),
            (Some("1969-12-31T00:00:00Z"), Some("1970-01-02T00:00:00Z")),
        ] {
            assert_eq!(diff_range(&q(from, to)).unwrap_err().code, "invalid_time", "{from:?}..{to:?}");
        }
    }
}
