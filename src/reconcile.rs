//! `riverbank reconcile`: checks, at any time against a running system, that the stores agree with each
//! other and with the ledger's own rules, per tenant and environment:
//!
//! 1. PostgreSQL and ClickHouse hold the same events: rows and sums per table, tenant, environment (and
//!    currency where the table has amounts); ClickHouse counts each event id once.
//! 2. Every posting's legs sum to zero, and so do all legs of a currency.
//! 3. Each account's balance row is what its legs add up to: posted, pending debit, pending credit.
//! 4. Each transfer's status history is versions 1..n with no gap, and `transfers` holds version n.
//! 5. No sink's stored position is past its partition's log end.
//! 6. KYC: `kyc_history` vs `kyc_facts` and `kyc_rejections` in both stores (rows and versions per event
//!    or input type); each user's history is versions 1..n with no gap, and `users` holds version n.
//! 7. Risk: live `risk_decisions` (rows and scores per decision) and `risk_rejections` in both stores;
//!    each transfer's `risk_latest` row (the review queue) is its highest-step live decision.
//! 8. FX and billing: quotes and conversions (`fx_quotes`, `fx_conversions` vs `fx_facts`) and fees
//!    (`fees` vs `fee_facts`) in both stores, each at its latest version; every invoice's totals are the
//!    sum of its lines per currency, its lines sum to the `billing:fees` legs of the bookings counted on
//!    it (its fees' and its period's plan charge), and each usage line is the sum of its booked fees;
//!    every completed conversion's booking is posted with its amounts (sold, bought, the desk's mid value,
//!    fee, residue) and sums to zero per currency (the zero sum per posting is check 2's as well).
//!
//! Sinks land batches independently (each store, each topic), so a running system may disagree for a
//! moment: [`Options::settle`] re-runs every check until they all agree or the settle time is up. Only
//! reads. Prints identifiers (tenants, transfers, accounts, postings, topics), never payloads or actors.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clickhouse::Row;
use rdkafka::consumer::Consumer as _;
use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::sink::SinkStore as _;
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::{Environment, Topics};
use riverbank_sinks::clickhouse::ClickHouseSink;
use riverbank_sinks::postgres::PostgresSink;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};

/// Scopes one query may return (tenant × currency groups, sink partitions). Past it reconcile stops
/// with an error rather than report on part of the data.
pub const SCOPE_ROWS_MAX: usize = 100_000;
/// Offending items (postings, accounts, transfers) listed per check, tenant and environment; the
/// summary row of the check still counts all of them.
pub const ITEMS_LISTED_MAX: i64 = 20;
/// Longest `--settle-ms` accepted.
pub const SETTLE_MS_MAX: u64 = 600_000;
/// Pause between two attempts while settling.
pub const SETTLE_RETRY_INTERVAL_MS: u64 = 500;

/// What is checked. Store comparisons put Postgres in `expected` and ClickHouse in `found`; ledger
/// checks put what the legs add up to in `expected` and the stored row in `found`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// `audit_log` (Postgres) vs `audit_trail` (ClickHouse): rows, payload bytes.
    AuditStores,
    /// `transfer_status_history` (amounts from `transfers`) vs `transfer_facts`: rows, amounts, versions.
    StatusStores,
    /// `ledger_postings` in both stores: legs, debits, credits per currency.
    LedgerStores,
    /// `transfer_rejections` in both stores: rows per refused input type.
    RejectionStores,
    /// Live `risk_decisions` in both stores (ClickHouse: `shadow = 0`): rows and scores per decision.
    RiskDecisionStores,
    /// `risk_rejections` in both stores: rows per refused input type.
    RiskRejectionStores,
    /// `risk_latest` (the review queue's source) holds each transfer's highest-step live decision.
    RiskLatest,
    /// `kyc_history` vs `kyc_facts`: rows and versions per tenant and event type.
    KycStores,
    /// `kyc_rejections` in both stores: rows per refused input type.
    KycRejectionStores,
    /// A user's KYC history is v1..vn without a gap; `users` holds vn and its statuses.
    KycHistory,
    /// `fx_quotes` and `fx_conversions` vs `fx_facts` (latest version per id): rows and versions per
    /// tenant, kind and status.
    FxStores,
    /// `fees` vs `fee_facts` (latest version per transfer): rows, fee sums and versions per tenant,
    /// status and currency.
    FeeStores,
    /// An invoice's totals per currency = Σ its lines of that currency.
    InvoiceTotals,
    /// An invoice's lines per currency = Σ `billing:fees` legs of the bookings counted on it.
    InvoiceLegs,
    /// A usage line = its booked fees (count, sum) of its transfer kind and currency.
    InvoiceUsageLines,
    /// A completed conversion's booking is posted: its amounts, zero per currency.
    ConversionPostings,
    /// All legs of a tenant's currency sum to zero.
    LedgerCurrencySum,
    /// Each posting's legs sum to zero.
    PostingBalanced,
    /// Σ post legs of an account = `account_balances.posted_minor`.
    BalancePosted,
    /// Pending debit and credit as the hold, release and post legs leave them = the balance row's.
    BalancePending,
    /// Status history is v1..vn without a gap; `transfers` holds vn and its status.
    StatusHistory,
    /// A sink's stored next offset is at or behind its partition's high watermark.
    SinkPosition,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::AuditStores => "audit_stores",
            Check::StatusStores => "status_stores",
            Check::LedgerStores => "ledger_stores",
            Check::RejectionStores => "rejection_stores",
            Check::RiskDecisionStores => "risk_decision_stores",
            Check::RiskRejectionStores => "risk_rejection_stores",
            Check::RiskLatest => "risk_latest",
            Check::KycStores => "kyc_stores",
            Check::KycRejectionStores => "kyc_rejection_stores",
            Check::KycHistory => "kyc_history",
            Check::FxStores => "fx_stores",
            Check::FeeStores => "fee_stores",
            Check::InvoiceTotals => "invoice_totals",
            Check::InvoiceLegs => "invoice_legs",
            Check::InvoiceUsageLines => "invoice_usage_lines",
            Check::ConversionPostings => "conversion_postings",
            Check::LedgerCurrencySum => "ledger_currency_sum",
            Check::PostingBalanced => "posting_balanced",
            Check::BalancePosted => "balance_posted",
            Check::BalancePending => "balance_pending",
            Check::StatusHistory => "status_history",
            Check::SinkPosition => "sink_position",
        }
    }
}

/// One comparison. `scope` is `tenant/env[/currency]`, `tenant/env/<item>` for one posting, account or
/// transfer, or `<sink> <topic>/<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub scope: String,
    pub expected: String,
    pub found: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub environments: Vec<Environment>,
    /// Runs of every check (more than one while settling).
    pub attempts: u32,
    pub ok: bool,
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }

    pub fn discrepancies(&self) -> Vec<&CheckResult> {
        self.results.iter().filter(|r| !r.ok).collect()
    }

    /// A readable table, one line per result, then a summary line.
    pub fn table(&self) -> String {
        self.render(self.results.iter().collect())
    }

    /// The table of the discrepancies alone, then the summary line.
    pub fn diff_table(&self) -> String {
        self.render(self.discrepancies())
    }

    fn render(&self, results: Vec<&CheckResult>) -> String {
        const HEADER: [&str; 5] = ["CHECK", "SCOPE", "EXPECTED", "FOUND", "RESULT"];
        let rows: Vec<[&str; 5]> = results
            .iter()
            .map(|r| [r.check.as_str(), &r.scope, &r.expected, &r.found, if r.ok { "ok" } else { "DIFF" }])
            .collect();
        let mut width = HEADER.map(str::len);
        for row in &rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&HEADER).chain(&rows) {
            let line: Vec<String> = row.iter().zip(width).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(&format!(
            "{} results, {} discrepancies ({}; {} attempt{})\n",
            self.results.len(),
            self.discrepancies().len(),
            self.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", "),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        ));
        out
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// One environment, or every configured one.
    pub environment: Option<Environment>,
    /// Re-run the checks until they agree, for at most this long (at most [`SETTLE_MS_MAX`]); zero: once.
    pub settle: Duration,
}

/// `riverbank reconcile`: print the report (a table, or JSON) and fail if anything differs.
pub async fn run(
    cfg: &Config,
    environment: Option<Environment>,
    json: bool,
    settle_ms: u64,
) -> anyhow::Result<()> {
    let report = reconcile(cfg, &Options { environment, settle: Duration::from_millis(settle_ms) }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let diffs = report.discrepancies().len();
    anyhow::ensure!(diffs == 0, "reconcile found {diffs} discrepancies");
    Ok(())
}

/// Run every check (again, while settling, until all agree); the report of the last run.
pub async fn reconcile(cfg: &Config, opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.settle <= Duration::from_millis(SETTLE_MS_MAX),
        "settle time is at most {SETTLE_MS_MAX} ms"
    );
    let configured = kafka::environments(&cfg.kafka);
    let environments: Vec<Environment> = match opts.environment {
        Some(e) => {
            anyhow::ensure!(configured.contains(&e), "environment {e} is not in kafka.environments");
            vec![e]
        }
        None => configured.to_vec(),
    };
    let stores = Stores::connect(cfg).await?;
    let deadline = Instant::now() + opts.settle;
    let mut attempts = 0;
    let report = loop {
        attempts += 1;
        let mut results = Vec::new();
        for &env in &environments {
            results.extend(stores.check(env).await?);
        }
        let ok = results.iter().all(|r| r.ok);
        let now = Instant::now();
        if ok || now >= deadline {
            break Report { environments: environments.clone(), attempts, ok, results };
        }
        tracing::debug!(attempts, "stores disagree; checking again");
        tokio::time::sleep((deadline - now).min(Duration::from_millis(SETTLE_RETRY_INTERVAL_MS))).await;
    };
    stores.pg.close().await;
    Ok(report)
}

struct Stores {
    pg: sqlx::PgPool,
    /// Whole-query bound on top of the server-side `statement_timeout`.
    pg_timeout: Duration,
    ch: clickhouse::Client,
    ch_timeout: Duration,
    kafka: KafkaConfig,
    topics: Topics,
    /// The sinks' inputs per environment (from the registry).
    sink_inputs: HashMap<Environment, Vec<String>>,
    /// The sinks themselves, to read their positions exactly as they do on assignment.
    pg_sink: PostgresSink,
    ch_sink: ClickHouseSink,
}

async fn bounded<T, E: Into<anyhow::Error>>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Into::into).with_context(|| what.to_owned()),
        Err(_) => anyhow::bail!("{what}: no answer within {} ms", timeout.as_millis()),
    }
}

fn at_most<T>(rows: Vec<T>, what: &str) -> anyhow::Result<Vec<T>> {
    anyhow::ensure!(
        rows.len() <= SCOPE_ROWS_MAX,
        "{what}: more than {SCOPE_ROWS_MAX} rows; reconcile refuses to report on part of the data"
    );
    Ok(rows)
}

/// `SCOPE_ROWS_MAX + 1` as a SQL limit (one more than allowed, to tell that there were more).
fn scope_limit() -> i64 {
    i64::try_from(SCOPE_ROWS_MAX).unwrap_or(i64::MAX - 1) + 1
}

fn scope(tenant: &str, env: Environment, rest: &str) -> String {
    if rest.is_empty() {
        format!("{tenant}/{env}")
    } else {
        format!("{tenant}/{env}/{rest}")
    }
}

/// Named figures, e.g. "rows 12, bytes 3400".
fn figures(names: &[&str], values: &[i64]) -> String {
    names.iter().zip(values).map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ")
}

/// Aggregates per (tenant, currency — empty where the table has none).
type Groups = BTreeMap<(String, String), Vec<i64>>;

/// One result per scope in either store; a scope missing from one store counts as zeros there.
fn compare_stores(
    check: Check,
    env: Environment,
    names: &[&str],
    pg: &Groups,
    ch: &Groups,
) -> Vec<CheckResult> {
    let zeros = vec![0; names.len()];
    let keys: BTreeSet<&(String, String)> = pg.keys().chain(ch.keys()).collect();
    keys.into_iter()
        .map(|key| {
            let p = pg.get(key).unwrap_or(&zeros);
            let c = ch.get(key).unwrap_or(&zeros);
            CheckResult {
                check,
                scope: scope(&key.0, env, &key.1),
                expected: format!("postgres {}", figures(names, p)),
                found: format!("clickhouse {}", figures(names, c)),
                ok: p == c,
            }
        })
        .collect()
}

/// An offending item from a Postgres check, with how many the tenant has in all.
#[derive(sqlx::FromRow)]
struct Item {
    tenant_id: String,
    item: String,
    expected: String,
    found: String,
    total: i64,
}

/// A summary row per tenant (zero offending items expected), then the listed items.
fn item_results(
    check: Check,
    env: Environment,
    noun: &str,
    tenants: &BTreeSet<String>,
    items: Vec<Item>,
) -> Vec<CheckResult> {
    let mut by_tenant: BTreeMap<String, Vec<Item>> =
        tenants.iter().map(|t| (t.clone(), Vec::new())).collect();
    for i in items {
        by_tenant.entry(i.tenant_id.clone()).or_default().push(i);
    }
    let mut out = Vec::new();
    for (tenant, items) in by_tenant {
        let total = items.first().map_or(0, |i| i.total);
        let listed = if usize::try_from(total).is_ok_and(|t| t > items.len()) {
            format!(" (first {} listed)", items.len())
        } else {
            String::new()
        };
        out.push(CheckResult {
            check,
            scope: scope(&tenant, env, ""),
            expected: format!("0 {noun}"),
            found: format!("{total} {noun}{listed}"),
            ok: total == 0,
        });
        out.extend(items.into_iter().map(|i| CheckResult {
            check,
            scope: scope(&tenant, env, &i.item),
            expected: i.expected,
            found: i.found,
            ok: false,
        }));
    }
    out
}

const POSTING_SUMS_SQL: &str = "
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'posting ' || posting_id::text || ' ' || currency AS item,
           'legs sum 0' AS expected,
           'legs sum ' || sum(amount_minor)::text || ' over ' || count(*)::text || ' legs' AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY posting_id, currency) AS rn
    FROM ledger_postings WHERE environment = $1
    GROUP BY tenant_id, posting_id, currency
    HAVING sum(amount_minor) <> 0) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per account: what the legs add up to (the signs of `move_funds` in processors/src/transfers.rs:
/// the source leg is −amount, the destination leg +amount; a hold adds the amount to the source's
/// pending debit and the destination's pending credit, a release and a post take it off again (a post
/// of something never held, a booking's, leaves pending alone), and a
/// post moves it into `posted`), beside the balance row.
const ACCOUNTS_CTE: &str = "
WITH held AS (
    SELECT DISTINCT tenant_id, transfer_id FROM ledger_postings WHERE environment = $1 AND phase = 'hold'),
legs AS (
    SELECT p.tenant_id, p.account, p.currency,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.phase = 'post'), 0)::int8 AS posted,
           coalesce(sum(CASE WHEN p.phase = 'hold' THEN -p.amount_minor ELSE p.amount_minor END)
                    FILTER (WHERE p.amount_minor < 0 AND h.transfer_id IS NOT NULL), 0)::int8 AS pending_debit,
           coalesce(sum(CASE WHEN p.phase = 'hold' THEN p.amount_minor ELSE -p.amount_minor END)
                    FILTER (WHERE p.amount_minor > 0 AND h.transfer_id IS NOT NULL), 0)::int8 AS pending_credit
    FROM ledger_postings p
    LEFT JOIN held h ON h.tenant_id = p.tenant_id AND h.transfer_id = p.transfer_id
    WHERE p.environment = $1
    GROUP BY p.tenant_id, p.account, p.currency),
bal AS (
    SELECT tenant_id, account, currency, posted_minor, pending_debit_minor, pending_credit_minor
    FROM account_balances WHERE environment = $1),
j AS (
    SELECT coalesce(l.tenant_id, b.tenant_id) AS tenant_id, coalesce(l.account, b.account) AS account,
           coalesce(l.currency, b.currency) AS currency,
           coalesce(l.posted, 0) AS l_posted, coalesce(l.pending_debit, 0) AS l_debit,
           coalesce(l.pending_credit, 0) AS l_credit,
           b.posted_minor, b.pending_debit_minor, b.pending_credit_minor
    FROM legs l FULL JOIN bal b
      ON l.tenant_id = b.tenant_id AND l.account = b.account AND l.currency = b.currency)";

fn posted_sql() -> String {
    format!(
        "{ACCOUNTS_CTE}
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'account ' || account || ' ' || currency AS item,
           'legs posted ' || l_posted::text AS expected,
           coalesce('balance posted ' || posted_minor::text, 'no balance row') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY account, currency) AS rn
    FROM j WHERE posted_minor IS DISTINCT FROM l_posted) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3"
    )
}

fn pending_sql() -> String {
    format!(
        "{ACCOUNTS_CTE}
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'account ' || account || ' ' || currency AS item,
           'legs pending debit ' || l_debit::text || ' credit ' || l_credit::text AS expected,
           coalesce('balance pending debit ' || pending_debit_minor::text || ' credit '
                    || pending_credit_minor::text, 'no balance row') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY account, currency) AS rn
    FROM j WHERE (pending_debit_minor, pending_credit_minor) IS DISTINCT FROM (l_debit, l_credit)) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3"
    )
}

/// Versions are unique per transfer (a constraint), so v1..vn without a gap is: lowest 1, n rows.
const HISTORY_SQL: &str = "
WITH h AS (
    SELECT tenant_id, transfer_id, count(*)::int8 AS n, min(version) AS lo, max(version) AS hi
    FROM transfer_status_history WHERE environment = $1
    GROUP BY tenant_id, transfer_id),
hs AS (
    SELECT h.*, s.status AS hi_status FROM h
    JOIN transfer_status_history s
      ON s.environment = $1 AND s.tenant_id = h.tenant_id AND s.transfer_id = h.transfer_id
     AND s.version = h.hi),
t AS (SELECT tenant_id, transfer_id, status, version FROM transfers WHERE environment = $1),
j AS (
    SELECT coalesce(hs.tenant_id, t.tenant_id) AS tenant_id, coalesce(hs.transfer_id, t.transfer_id) AS transfer_id,
           hs.n, hs.lo, hs.hi, hs.hi_status, t.version, t.status
    FROM hs FULL JOIN t ON hs.tenant_id = t.tenant_id AND hs.transfer_id = t.transfer_id)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'transfer ' || transfer_id AS item,
           coalesce('history v1..v' || hi::text || ' (' || hi::text || ' rows), transfers v' || hi::text
                    || ' ' || hi_status, 'a status history') AS expected,
           coalesce('history v' || lo::text || '..v' || hi::text || ' (' || n::text || ' rows)', 'no history')
               || ', ' || coalesce('transfers v' || version::text || ' ' || status, 'no transfers row') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY transfer_id) AS rn
    FROM j
    WHERE n IS NULL OR version IS NULL OR lo <> 1 OR n <> hi OR version <> hi OR status <> hi_status) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per transfer: the highest step of its live decisions (2 · version, + 1 for an officer's) beside its
/// `risk_latest` row and the decision row that row names.
const RISK_LATEST_SQL: &str = "
WITH m AS (
    SELECT tenant_id, transfer_id, max(transfer_version::int8 * 2 + (reviewed_by IS NOT NULL)::int) AS top
    FROM risk_decisions WHERE environment = $1
    GROUP BY tenant_id, transfer_id),
l AS (
    SELECT l.tenant_id, l.transfer_id, l.step, l.decision, d.decision AS d_decision,
           d.transfer_version::int8 * 2 + (d.reviewed_by IS NOT NULL)::int AS d_step
    FROM risk_latest l
    LEFT JOIN risk_decisions d
      ON d.event_id = l.event_id AND d.tenant_id = l.tenant_id AND d.environment = l.environment
     AND d.transfer_id = l.transfer_id
    WHERE l.environment = $1),
j AS (
    SELECT coalesce(m.tenant_id, l.tenant_id) AS tenant_id, coalesce(m.transfer_id, l.transfer_id) AS transfer_id,
           m.top, l.step, l.decision, l.d_step, l.d_decision
    FROM m FULL JOIN l ON m.tenant_id = l.tenant_id AND m.transfer_id = l.transfer_id)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'transfer ' || transfer_id AS item,
           coalesce('risk_latest at step ' || top::text || ', naming a decision of that step',
                    'no risk_latest row (no decisions)') AS expected,
           coalesce('risk_latest at step ' || step::text || ' ' || decision
                        || coalesce(', naming a decision at step ' || d_step::text || ' ' || d_decision,
                                    ', naming no decision of the transfer'),
                    'no risk_latest row') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY transfer_id) AS rn
    FROM j
    WHERE top IS NULL OR step IS NULL OR step <> top OR d_step IS NULL OR d_step <> step
       OR d_decision <> decision) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

#[derive(Row, Deserialize)]
struct ChAudit {
    tenant_id: String,
    n: i64,
    bytes: i64,
}

#[derive(Row, Deserialize)]
struct ChStatus {
    tenant_id: String,
    currency: String,
    n: i64,
    amount: i64,
    versions: i64,
}

#[derive(Row, Deserialize)]
struct ChCount {
    tenant_id: String,
    kind: String,
    n: i64,
}

#[derive(Row, Deserialize)]
struct ChCountSum {
    tenant_id: String,
    kind: String,
    n: i64,
    versions: i64,
}

/// Per user: the KYC history's versions and last statuses beside the `users` row.
const KYC_HISTORY_SQL: &str = "
WITH h AS (
    SELECT tenant_id, user_id, count(*)::int8 AS n, min(version) AS lo, max(version) AS hi
    FROM kyc_history WHERE environment = $1
    GROUP BY tenant_id, user_id),
hs AS (
    SELECT h.*, s.user_status AS hi_status, s.kyc_status AS hi_kyc FROM h
    JOIN kyc_history s
      ON s.environment = $1 AND s.tenant_id = h.tenant_id AND s.user_id = h.user_id AND s.version = h.hi),
u AS (SELECT tenant_id, user_id, user_status, kyc_status, version FROM users WHERE environment = $1),
j AS (
    SELECT coalesce(hs.tenant_id, u.tenant_id) AS tenant_id, coalesce(hs.user_id, u.user_id) AS user_id,
           hs.n, hs.lo, hs.hi, hs.hi_status, hs.hi_kyc, u.version, u.user_status, u.kyc_status
    FROM hs FULL JOIN u ON hs.tenant_id = u.tenant_id AND hs.user_id = u.user_id)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'user ' || user_id AS item,
           coalesce('history v1..v' || hi::text || ' (' || hi::text || ' rows), users v' || hi::text
                    || ' ' || hi_status || '/' || hi_kyc, 'a KYC history') AS expected,
           coalesce('history v' || lo::text || '..v' || hi::text || ' (' || n::text || ' rows)', 'no history')
               || ', ' || coalesce('users v' || version::text || ' ' || user_status || '/' || kyc_status,
                                   'no users row') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY user_id) AS rn
    FROM j
    WHERE n IS NULL OR version IS NULL OR lo <> 1 OR n <> hi OR version <> hi
       OR user_status <> hi_status OR kyc_status <> hi_kyc) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per invoice and currency: the totals it states beside the sum of its lines.
const INVOICE_TOTALS_SQL: &str = "
WITH t AS (
    SELECT i.tenant_id, i.invoice_id, e->>'currency' AS currency, sum((e->>'amount_minor')::int8)::int8 AS stated
    FROM invoices i CROSS JOIN LATERAL jsonb_array_elements(i.totals) e
    WHERE i.environment = $1
    GROUP BY 1, 2, 3),
l AS (
    SELECT tenant_id, invoice_id, currency, sum(amount_minor)::int8 AS lines, count(*)::int8 AS n
    FROM invoice_lines WHERE environment = $1
    GROUP BY 1, 2, 3),
j AS (
    SELECT coalesce(t.tenant_id, l.tenant_id) AS tenant_id, coalesce(t.invoice_id, l.invoice_id) AS invoice_id,
           coalesce(t.currency, l.currency) AS currency, t.stated, coalesce(l.lines, 0) AS lines,
           coalesce(l.n, 0) AS n
    FROM t FULL JOIN l ON t.tenant_id = l.tenant_id AND t.invoice_id = l.invoice_id AND t.currency = l.currency)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'invoice ' || invoice_id || ' ' || currency AS item,
           'total ' || lines::text || ' (sum of ' || n::text || ' lines)' AS expected,
           coalesce('total ' || stated::text, 'no total') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY invoice_id, currency) AS rn
    FROM j WHERE stated IS DISTINCT FROM lines) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per invoice and currency: the `billing:fees` legs of the bookings counted on it (the fees naming it,
/// and the plan charge booked for its period) beside the sum of its lines. An invoice is a view over
/// fee legs: the legs are what is expected.
const INVOICE_LEGS_SQL: &str = "
WITH b AS (
    SELECT tenant_id, invoice_id, booking_id FROM fees
    WHERE environment = $1 AND invoice_id IS NOT NULL AND booking_id IS NOT NULL
    UNION
    SELECT i.tenant_id, i.invoice_id, lb.booking_id FROM invoices i
    JOIN ledger_bookings lb
      ON lb.environment = i.environment AND lb.tenant_id = i.tenant_id AND lb.purpose = 'plan'
     AND lb.outcome = 'booked' AND lb.reference = i.period
    WHERE i.environment = $1),
g AS (
    SELECT b.tenant_id, b.invoice_id, p.currency, sum(p.amount_minor)::int8 AS legs,
           count(DISTINCT b.booking_id)::int8 AS bookings
    FROM b JOIN ledger_postings p
      ON p.environment = $1 AND p.tenant_id = b.tenant_id AND p.transfer_id = b.booking_id
     AND p.phase = 'post' AND p.account = 'billing:fees'
    GROUP BY 1, 2, 3),
l AS (
    SELECT tenant_id, invoice_id, currency, sum(amount_minor)::int8 AS lines
    FROM invoice_lines WHERE environment = $1
    GROUP BY 1, 2, 3),
j AS (
    SELECT coalesce(l.tenant_id, g.tenant_id) AS tenant_id, coalesce(l.invoice_id, g.invoice_id) AS invoice_id,
           coalesce(l.currency, g.currency) AS currency, coalesce(l.lines, 0) AS lines,
           coalesce(g.legs, 0) AS legs, coalesce(g.bookings, 0) AS bookings
    FROM l FULL JOIN g ON l.tenant_id = g.tenant_id AND l.invoice_id = g.invoice_id AND l.currency = g.currency)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id, 'invoice ' || invoice_id || ' ' || currency AS item,
           'lines ' || legs::text || ' (billing:fees legs of ' || bookings::text || ' bookings)' AS expected,
           'lines ' || lines::text AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY invoice_id, currency) AS rn
    FROM j WHERE lines <> legs) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per usage line: the booked fees counted on its invoice (not as adjustments) of its transfer kind and
/// currency, beside the line's count and amount; a group of such fees without a line is named too.
const INVOICE_USAGE_SQL: &str = "
WITH u AS (
    SELECT tenant_id, invoice_id, line_id, transfer_kind, currency, counted, amount_minor
    FROM invoice_lines WHERE environment = $1 AND kind = 'usage'),
f AS (
    SELECT tenant_id, invoice_id, transfer_kind, currency, count(*)::int8 AS n, sum(fee_minor)::int8 AS fees
    FROM fees
    WHERE environment = $1 AND status = 'booked' AND NOT adjustment AND invoice_id IS NOT NULL
    GROUP BY 1, 2, 3, 4),
j AS (
    SELECT coalesce(u.tenant_id, f.tenant_id) AS tenant_id, coalesce(u.invoice_id, f.invoice_id) AS invoice_id,
           u.line_id, coalesce(u.transfer_kind, f.transfer_kind) AS transfer_kind,
           coalesce(u.currency, f.currency) AS currency, u.counted, u.amount_minor,
           coalesce(f.n, 0) AS n, coalesce(f.fees, 0) AS fees
    FROM u FULL JOIN f
      ON u.tenant_id = f.tenant_id AND u.invoice_id = f.invoice_id AND u.transfer_kind = f.transfer_kind
     AND u.currency = f.currency)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT tenant_id,
           'invoice ' || invoice_id || ' line '
               || coalesce(line_id, 'usage/' || coalesce(transfer_kind, '') || '/' || currency) AS item,
           'count ' || n::text || ', amount ' || fees::text || ' (its booked fees)' AS expected,
           coalesce('count ' || counted::text || ', amount ' || amount_minor::text, 'no usage line') AS found,
           count(*) OVER (PARTITION BY tenant_id) AS total,
           row_number() OVER (PARTITION BY tenant_id ORDER BY invoice_id, line_id, transfer_kind, currency) AS rn
    FROM j WHERE counted IS DISTINCT FROM n OR amount_minor IS DISTINCT FROM fees) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

/// Per completed conversion: its booking's post legs (by account and currency) beside its amounts:
/// `account` −S and `fx:desk` +S in the sell currency; `fx:desk` −M, `destination` +B, `fx:fees` +F and
/// `fx:residue` +R in the buy currency (a zero amount has no leg), nothing in any other currency.
const CONVERSION_POSTINGS_SQL: &str = "
WITH c AS (
    SELECT tenant_id, conversion_id, booking_id, account, destination, sell_minor, sell_currency, buy_minor,
           buy_currency, mid_value_minor, fee_minor, residue_minor
    FROM fx_conversions WHERE environment = $1 AND status = 'completed'),
s AS (
    SELECT c.tenant_id, c.conversion_id, count(p.event_id)::int8 AS legs,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.currency = c.sell_currency), 0)::int8 AS sell_net,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.currency = c.buy_currency), 0)::int8 AS buy_net,
           count(p.event_id) FILTER (WHERE p.currency <> c.sell_currency AND p.currency <> c.buy_currency)::int8
               AS other,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.account = c.account AND p.currency = c.sell_currency), 0)
               ::int8 AS sold,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.account = 'fx:desk' AND p.currency = c.buy_currency), 0)
               ::int8 AS desk,
           coalesce(sum(p.amount_minor)
                    FILTER (WHERE p.account = c.destination AND p.currency = c.buy_currency), 0)::int8 AS bought,
           coalesce(sum(p.amount_minor) FILTER (WHERE p.account = 'fx:fees' AND p.currency = c.buy_currency), 0)
               ::int8 AS fee,
           coalesce(sum(p.amount_minor)
                    FILTER (WHERE p.account = 'fx:residue' AND p.currency = c.buy_currency), 0)::int8 AS residue
    FROM c LEFT JOIN ledger_postings p
      ON p.environment = $1 AND p.tenant_id = c.tenant_id AND p.transfer_id = c.booking_id AND p.phase = 'post'
    GROUP BY c.tenant_id, c.conversion_id)
SELECT tenant_id, item, expected, found, total FROM (
    SELECT c.tenant_id, 'conversion ' || c.conversion_id AS item,
           'booking ' || c.booking_id || ': ' || c.account || ' ' || (-c.sell_minor)::text || ' ' || c.sell_currency
               || ', fx:desk ' || (-c.mid_value_minor)::text || ', ' || c.destination || ' ' || c.buy_minor::text
               || ', fx:fees ' || c.fee_minor::text || ', fx:residue ' || c.residue_minor::text || ' '
               || c.buy_currency || ', each currency 0' AS expected,
           s.legs::text || ' legs: ' || c.account || ' ' || s.sold::text || ' ' || c.sell_currency || ', fx:desk '
               || s.desk::text || ', ' || c.destination || ' ' || s.bought::text || ', fx:fees ' || s.fee::text
               || ', fx:residue ' || s.residue::text || ' ' || c.buy_currency || '; sums ' || s.sell_net::text
               || ' ' || c.sell_currency || ', ' || s.buy_net::text || ' ' || c.buy_currency || ', '
               || s.other::text || ' legs in other currencies' AS found,
           count(*) OVER (PARTITION BY c.tenant_id) AS total,
           row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.conversion_id) AS rn
    FROM c JOIN s ON s.tenant_id = c.tenant_id AND s.conversion_id = c.conversion_id
    WHERE s.legs = 0 OR s.sell_net <> 0 OR s.buy_net <> 0 OR s.other <> 0 OR s.sold <> -c.sell_minor
       OR s.desk <> -c.mid_value_minor OR s.bought <> c.buy_minor OR s.fee <> c.fee_minor
       OR s.residue <> c.residue_minor) d
WHERE rn <= $2 ORDER BY tenant_id, rn LIMIT $3";

#[derive(Row, Deserialize)]
struct ChFeeCount {
    tenant_id: String,
    kind: String,
    n: i64,
    fees: i64,
    versions: i64,
}

#[derive(Row, Deserialize)]
struct ChRiskCount {
    tenant_id: String,
    decision: String,
    n: i64,
    scores: i64,
}

#[derive(Row, Deserialize)]
struct ChLedger {
    tenant_id: String,
    currency: String,
    n: i64,
    debits: i64,
    credits: i64,
}

impl Stores {
    async fn connect(cfg: &Config) -> anyhow::Result<Stores> {
        let pg = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
            .await
            .context("connecting to postgres")?;
        Ok(Stores {
            pg_timeout: Duration::from_millis(
                cfg.postgres.statement_timeout_ms.saturating_add(cfg.postgres.acquire_timeout_ms),
            ),
            ch: riverbank_runtime::stores::clickhouse_client(&cfg.clickhouse),
            ch_timeout: Duration::from_millis(cfg.clickhouse.request_timeout_ms),
            kafka: cfg.kafka.clone(),
            topics: kafka::topics(&cfg.kafka),
            sink_inputs: cfg
                .kafka
                .environments
                .iter()
                .map(|&e| (e, crate::registry::sink_inputs_in(cfg, e)))
                .collect(),
            pg_sink: PostgresSink::new(pg.clone()),
            ch_sink: ClickHouseSink::new(
                &cfg.clickhouse,
                riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?,
            ),
            pg,
        })
    }

    /// A ClickHouse query bounded on the server (`max_execution_time`) and here.
    fn ch_query(&self, sql: &str) -> clickhouse::query::Query {
        let seconds = self.ch_timeout.as_millis().div_ceil(1000).max(1);
        self.ch.query(sql).with_setting("max_execution_time", seconds.to_string())
    }

    async fn ch_fetch<T>(&self, what: &str, q: clickhouse::query::Query) -> anyhow::Result<Vec<T>>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let rows = bounded(self.ch_timeout, what, q.fetch_all::<T>()).await?;
        at_most(rows, what)
    }

    /// Every check of one environment. Postgres is read in one repeatable-read snapshot.
    async fn check(&self, env: Environment) -> anyhow::Result<Vec<CheckResult>> {
        let mut tx: Transaction<'_, Postgres> =
            bounded(self.pg_timeout, "postgres: begin", self.pg.begin()).await?;
        bounded(
            self.pg_timeout,
            "postgres: snapshot",
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx),
        )
        .await?;
        let mut out = Vec::new();

        // 1. Both stores hold the same events.
        let pg_audit: Vec<(String, i64, i64)> = self
            .pg_fetch(
                &mut tx,
                "postgres: audit_log",
                "SELECT tenant_id, count(*)::int8, coalesce(sum(payload_bytes), 0)::int8 FROM audit_log
                 WHERE environment = $1 GROUP BY tenant_id ORDER BY tenant_id LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_audit: Vec<ChAudit> = self
            .ch_fetch(
                "clickhouse: audit_trail",
                self.ch_query(&format!(
                    "SELECT tenant_id, toInt64(uniqExact(audit_id)) AS n, toInt64(sum(payload_bytes)) AS bytes
                     FROM audit_trail FINAL WHERE environment = ?
                     GROUP BY tenant_id ORDER BY tenant_id LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups =
            pg_audit.into_iter().map(|(t, n, b)| ((t, String::new()), vec![n, b])).collect();
        let ch_groups: Groups =
            ch_audit.into_iter().map(|r| ((r.tenant_id, String::new()), vec![r.n, r.bytes])).collect();
        let mut tenants: BTreeSet<String> =
            pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()).collect();
        out.extend(compare_stores(
            Check::AuditStores,
            env,
            &["rows", "payload bytes"],
            &pg_groups,
            &ch_groups,
        ));

        let pg_status: Vec<(String, String, i64, i64, i64)> = self
            .pg_fetch(
                &mut tx,
                "postgres: transfer_status_history",
                "SELECT h.tenant_id, coalesce(t.currency, ''), count(*)::int8,
                        coalesce(sum(t.amount_minor), 0)::int8, coalesce(sum(h.version), 0)::int8
                 FROM transfer_status_history h
                 LEFT JOIN transfers t ON t.tenant_id = h.tenant_id AND t.environment = h.environment
                                      AND t.transfer_id = h.transfer_id
                 WHERE h.environment = $1 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_status: Vec<ChStatus> = self
            .ch_fetch(
                "clickhouse: transfer_facts",
                self.ch_query(&format!(
                    "SELECT tenant_id, currency, toInt64(uniqExact(event_id)) AS n,
                            toInt64(sum(amount_minor)) AS amount, toInt64(sum(version)) AS versions
                     FROM transfer_facts FINAL WHERE environment = ?
                     GROUP BY tenant_id, currency ORDER BY tenant_id, currency LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups =
            pg_status.into_iter().map(|(t, c, n, a, v)| ((t, c), vec![n, a, v])).collect();
        let ch_groups: Groups = ch_status
            .into_iter()
            .map(|r| ((r.tenant_id, r.currency), vec![r.n, r.amount, r.versions]))
            .collect();
        tenants.extend(pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()));
        out.extend(compare_stores(
            Check::StatusStores,
            env,
            &["rows", "amount", "versions"],
            &pg_groups,
            &ch_groups,
        ));

        let pg_ledger: Vec<(String, String, i64, i64, i64)> = self
            .pg_fetch(
                &mut tx,
                "postgres: ledger_postings",
                "SELECT tenant_id, currency, count(*)::int8,
                        coalesce(sum(amount_minor) FILTER (WHERE amount_minor < 0), 0)::int8,
                        coalesce(sum(amount_minor) FILTER (WHERE amount_minor > 0), 0)::int8
                 FROM ledger_postings WHERE environment = $1
                 GROUP BY tenant_id, currency ORDER BY tenant_id, currency LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_ledger: Vec<ChLedger> = self
            .ch_fetch(
                "clickhouse: ledger_postings",
                self.ch_query(&format!(
                    "SELECT tenant_id, currency, toInt64(uniqExact(event_id)) AS n,
                            toInt64(sumIf(amount_minor, amount_minor < 0)) AS debits,
                            toInt64(sumIf(amount_minor, amount_minor > 0)) AS credits
                     FROM ledger_postings FINAL WHERE environment = ?
                     GROUP BY tenant_id, currency ORDER BY tenant_id, currency LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups =
            pg_ledger.into_iter().map(|(t, c, n, d, cr)| ((t, c), vec![n, d, cr])).collect();
        let ch_groups: Groups = ch_ledger
            .into_iter()
            .map(|r| ((r.tenant_id, r.currency), vec![r.n, r.debits, r.credits]))
            .collect();
        tenants.extend(pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()));
        out.extend(compare_stores(
            Check::LedgerStores,
            env,
            &["legs", "debits", "credits"],
            &pg_groups,
            &ch_groups,
        ));

        let pg_rejections: Vec<(String, String, i64)> = self
            .pg_fetch(
                &mut tx,
                "postgres: transfer_rejections",
                "SELECT tenant_id, input_event_type, count(*)::int8 FROM transfer_rejections WHERE environment = $1
                 GROUP BY tenant_id, input_event_type ORDER BY tenant_id, input_event_type LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_rejections: Vec<ChCount> = self
            .ch_fetch(
                "clickhouse: transfer_rejections",
                self.ch_query(&format!(
                    "SELECT tenant_id, input_event_type AS kind, toInt64(uniqExact(event_id)) AS n
                     FROM transfer_rejections FINAL WHERE environment = ?
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_counts: Groups = pg_rejections.into_iter().map(|(t, k, n)| ((t, k), vec![n])).collect();
        let ch_counts: Groups =
            ch_rejections.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n])).collect();
        out.extend(compare_stores(Check::RejectionStores, env, &["rows"], &pg_counts, &ch_counts));
        out.extend(self.risk_checks(&mut tx, env).await?);
        out.extend(self.kyc_checks(&mut tx, env).await?);
        out.extend(self.fx_billing_checks(&mut tx, env).await?);

        // 2. Legs sum to zero: per currency (from the Postgres aggregate above), then per posting.
        for ((tenant, currency), v) in &pg_groups {
            let sum = v[1].checked_add(v[2]).context("ledger sum overflows i64")?;
            out.push(CheckResult {
                check: Check::LedgerCurrencySum,
                scope: scope(tenant, env, currency),
                expected: "legs sum 0".to_owned(),
                found: format!("legs sum {sum}"),
                ok: sum == 0,
            });
        }
        let postings: Vec<Item> =
            self.pg_items(&mut tx, "postgres: posting sums", POSTING_SUMS_SQL, env).await?;

        // 3. Balances are what their legs add up to.
        let posted: Vec<Item> =
            self.pg_items(&mut tx, "postgres: posted balances", &posted_sql(), env).await?;
        let pending: Vec<Item> =
            self.pg_items(&mut tx, "postgres: pending balances", &pending_sql(), env).await?;
        // 4. Status histories are gapless and end where `transfers` stands.
        let history: Vec<Item> = self.pg_items(&mut tx, "postgres: status history", HISTORY_SQL, env).await?;
        for i in postings.iter().chain(&posted).chain(&pending).chain(&history) {
            tenants.insert(i.tenant_id.clone());
        }
        // Tenants with a balance or transfer row but no event rows at all still get summary rows.
        let more: Vec<(String,)> = self
            .pg_fetch(
                &mut tx,
                "postgres: tenants",
                "SELECT tenant_id FROM account_balances WHERE environment = $1
                 UNION SELECT tenant_id FROM transfers WHERE environment = $1 ORDER BY 1 LIMIT $2",
                env,
                None,
            )
            .await?;
        tenants.extend(more.into_iter().map(|(t,)| t));
        bounded(self.pg_timeout, "postgres: end snapshot", tx.rollback()).await?;

        out.extend(item_results(Check::PostingBalanced, env, "unbalanced postings", &tenants, postings));
        out.extend(item_results(Check::BalancePosted, env, "accounts off their post legs", &tenants, posted));
        out.extend(item_results(
            Check::BalancePending,
            env,
            "accounts off their pending legs",
            &tenants,
            pending,
        ));
        out.extend(item_results(
            Check::StatusHistory,
            env,
            "transfers with a broken history",
            &tenants,
            history,
        ));

        // 5. Sink positions are at or behind the log ends.
        out.extend(self.positions(env).await?);
        Ok(out)
    }

    /// The KYC checks of one environment, inside the Postgres snapshot of [`Self::check`].
    async fn kyc_checks(&self, tx: &mut PgConnection, env: Environment) -> anyhow::Result<Vec<CheckResult>> {
        let mut out = Vec::new();
        let pg_facts: Vec<(String, String, i64, i64)> = self
            .pg_fetch(
                tx,
                "postgres: kyc_history",
                "SELECT tenant_id, event_type, count(*)::int8, coalesce(sum(version), 0)::int8 FROM kyc_history
                 WHERE environment = $1 GROUP BY tenant_id, event_type ORDER BY tenant_id, event_type LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_facts: Vec<ChCountSum> = self
            .ch_fetch(
                "clickhouse: kyc_facts",
                self.ch_query(&format!(
                    "SELECT tenant_id, event_type AS kind, toInt64(uniqExact(event_id)) AS n,
                            toInt64(sum(version)) AS versions
                     FROM kyc_facts FINAL WHERE environment = ?
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups = pg_facts.into_iter().map(|(t, k, n, v)| ((t, k), vec![n, v])).collect();
        let ch_groups: Groups =
            ch_facts.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n, r.versions])).collect();
        let mut tenants: BTreeSet<String> =
            pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()).collect();
        out.extend(compare_stores(Check::KycStores, env, &["rows", "versions"], &pg_groups, &ch_groups));

        let pg_rejections: Vec<(String, String, i64)> = self
            .pg_fetch(
                tx,
                "postgres: kyc_rejections",
                "SELECT tenant_id, input_event_type, count(*)::int8 FROM kyc_rejections WHERE environment = $1
                 GROUP BY tenant_id, input_event_type ORDER BY tenant_id, input_event_type LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_rejections: Vec<ChCount> = self
            .ch_fetch(
                "clickhouse: kyc_rejections",
                self.ch_query(&format!(
                    "SELECT tenant_id, input_event_type AS kind, toInt64(uniqExact(event_id)) AS n
                     FROM kyc_rejections FINAL WHERE environment = ?
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_counts: Groups = pg_rejections.into_iter().map(|(t, k, n)| ((t, k), vec![n])).collect();
        let ch_counts: Groups =
            ch_rejections.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n])).collect();
        out.extend(compare_stores(Check::KycRejectionStores, env, &["rows"], &pg_counts, &ch_counts));

        let history: Vec<Item> = self.pg_items(tx, "postgres: kyc history", KYC_HISTORY_SQL, env).await?;
        tenants.extend(history.iter().map(|i| i.tenant_id.clone()));
        out.extend(item_results(
            Check::KycHistory,
            env,
            "users with a broken KYC history",
            &tenants,
            history,
        ));
        Ok(out)
    }

    /// The risk store comparisons of one environment, inside the Postgres snapshot of [`Self::check`]:
    /// live decisions (Postgres keeps no shadow ones) and refused risk inputs.
    async fn risk_checks(&self, tx: &mut PgConnection, env: Environment) -> anyhow::Result<Vec<CheckResult>> {
        let pg_decisions: Vec<(String, String, i64, i64)> = self
            .pg_fetch(
                tx,
                "postgres: risk_decisions",
                "SELECT tenant_id, decision, count(*)::int8, coalesce(sum(score), 0)::int8 FROM risk_decisions
                 WHERE environment = $1 GROUP BY tenant_id, decision ORDER BY tenant_id, decision LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_decisions: Vec<ChRiskCount> = self
            .ch_fetch(
                "clickhouse: risk_decisions",
                self.ch_query(&format!(
                    "SELECT tenant_id, toString(decision) AS decision, toInt64(uniqExact(event_id)) AS n,
                            toInt64(sum(score)) AS scores
                     FROM risk_decisions FINAL WHERE environment = ? AND shadow = 0
                     GROUP BY tenant_id, decision ORDER BY tenant_id, decision LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups = pg_decisions.into_iter().map(|(t, d, n, s)| ((t, d), vec![n, s])).collect();
        let ch_groups: Groups =
            ch_decisions.into_iter().map(|r| ((r.tenant_id, r.decision), vec![r.n, r.scores])).collect();
        let mut out =
            compare_stores(Check::RiskDecisionStores, env, &["rows", "scores"], &pg_groups, &ch_groups);

        let pg_rejections: Vec<(String, String, i64)> = self
            .pg_fetch(
                tx,
                "postgres: risk_rejections",
                "SELECT tenant_id, input_event_type, count(*)::int8 FROM risk_rejections WHERE environment = $1
                 GROUP BY tenant_id, input_event_type ORDER BY tenant_id, input_event_type LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_rejections: Vec<ChCount> = self
            .ch_fetch(
                "clickhouse: risk_rejections",
                self.ch_query(&format!(
                    "SELECT tenant_id, input_event_type AS kind, toInt64(uniqExact(event_id)) AS n
                     FROM risk_rejections FINAL WHERE environment = ?
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_counts: Groups = pg_rejections.into_iter().map(|(t, k, n)| ((t, k), vec![n])).collect();
        let ch_counts: Groups =
            ch_rejections.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n])).collect();
        out.extend(compare_stores(Check::RiskRejectionStores, env, &["rows"], &pg_counts, &ch_counts));

        let latest: Vec<Item> = self.pg_items(tx, "postgres: risk_latest", RISK_LATEST_SQL, env).await?;
        let mut tenants: BTreeSet<String> = pg_groups.keys().map(|k| k.0.clone()).collect();
        tenants.extend(latest.iter().map(|i| i.tenant_id.clone()));
        out.extend(item_results(
            Check::RiskLatest,
            env,
            "transfers whose latest decision is off",
            &tenants,
            latest,
        ));
        Ok(out)
    }

    /// The FX and billing checks of one environment, inside the Postgres snapshot of [`Self::check`]:
    /// both stores' current states, invoices against their lines and the ledger's fee legs, completed
    /// conversions against their postings.
    async fn fx_billing_checks(
        &self,
        tx: &mut PgConnection,
        env: Environment,
    ) -> anyhow::Result<Vec<CheckResult>> {
        let pg_fx: Vec<(String, String, i64, i64)> = self
            .pg_fetch(
                tx,
                "postgres: fx_quotes, fx_conversions",
                "SELECT tenant_id, kind, n, v FROM (
                     SELECT tenant_id, 'quote ' || status AS kind, count(*)::int8 AS n,
                            coalesce(sum(version), 0)::int8 AS v
                     FROM fx_quotes WHERE environment = $1 GROUP BY 1, 2
                     UNION ALL
                     SELECT tenant_id, 'conversion ' || status, count(*)::int8, coalesce(sum(version), 0)::int8
                     FROM fx_conversions WHERE environment = $1 GROUP BY 1, 2) x
                 ORDER BY 1, 2 LIMIT $2",
                env,
                None,
            )
            .await?;
        // Each quote's and conversion's state is its highest version (FINAL: each event once).
        let ch_fx: Vec<ChCountSum> = self
            .ch_fetch(
                "clickhouse: fx_facts",
                self.ch_query(&format!(
                    "SELECT tenant_id, concat(toString(fact), ' ', st) AS kind, toInt64(count()) AS n,
                            toInt64(sum(v)) AS versions
                     FROM (SELECT tenant_id, fact, id, argMax(status, version) AS st, max(version) AS v
                           FROM fx_facts FINAL WHERE environment = ? GROUP BY tenant_id, fact, id)
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups = pg_fx.into_iter().map(|(t, k, n, v)| ((t, k), vec![n, v])).collect();
        let ch_groups: Groups =
            ch_fx.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n, r.versions])).collect();
        let mut tenants: BTreeSet<String> =
            pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()).collect();
        let mut out = compare_stores(Check::FxStores, env, &["rows", "versions"], &pg_groups, &ch_groups);

        let pg_fees: Vec<(String, String, i64, i64, i64)> = self
            .pg_fetch(
                tx,
                "postgres: fees",
                "SELECT tenant_id, status || ' ' || currency, count(*)::int8, coalesce(sum(fee_minor), 0)::int8,
                        coalesce(sum(version), 0)::int8
                 FROM fees WHERE environment = $1 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $2",
                env,
                None,
            )
            .await?;
        let ch_fees: Vec<ChFeeCount> = self
            .ch_fetch(
                "clickhouse: fee_facts",
                self.ch_query(&format!(
                    "SELECT tenant_id, concat(st, ' ', cur) AS kind, toInt64(count()) AS n,
                            toInt64(sum(fee)) AS fees, toInt64(sum(v)) AS versions
                     FROM (SELECT tenant_id, transfer_id, argMax(status, version) AS st,
                                  argMax(currency, version) AS cur, argMax(fee_minor, version) AS fee,
                                  max(version) AS v
                           FROM fee_facts FINAL WHERE environment = ? GROUP BY tenant_id, transfer_id)
                     GROUP BY tenant_id, kind ORDER BY tenant_id, kind LIMIT {}",
                    scope_limit()
                ))
                .bind(env.as_str()),
            )
            .await?;
        let pg_groups: Groups = pg_fees.into_iter().map(|(t, k, n, f, v)| ((t, k), vec![n, f, v])).collect();
        let ch_groups: Groups =
            ch_fees.into_iter().map(|r| ((r.tenant_id, r.kind), vec![r.n, r.fees, r.versions])).collect();
        tenants.extend(pg_groups.keys().chain(ch_groups.keys()).map(|k| k.0.clone()));
        out.extend(compare_stores(
            Check::FeeStores,
            env,
            &["rows", "fee minor", "versions"],
            &pg_groups,
            &ch_groups,
        ));

        let more: Vec<(String,)> = self
            .pg_fetch(
                tx,
                "postgres: invoice tenants",
                "SELECT tenant_id FROM invoices WHERE environment = $1 ORDER BY 1 LIMIT $2",
                env,
                None,
            )
            .await?;
        tenants.extend(more.into_iter().map(|(t,)| t));
        let checks: [(Check, &str, &str, &str); 4] = [
            (
                Check::InvoiceTotals,
                "postgres: invoice totals",
                INVOICE_TOTALS_SQL,
                "invoice totals off their lines",
            ),
            (
                Check::InvoiceLegs,
                "postgres: invoice fee legs",
                INVOICE_LEGS_SQL,
                "invoice lines off their fee legs",
            ),
            (
                Check::InvoiceUsageLines,
                "postgres: invoice usage lines",
                INVOICE_USAGE_SQL,
                "usage lines off their fees",
            ),
            (
                Check::ConversionPostings,
                "postgres: conversion postings",
                CONVERSION_POSTINGS_SQL,
                "completed conversions off their postings",
            ),
        ];
        for (check, what, sql, noun) in checks {
            let items: Vec<Item> = self.pg_items(tx, what, sql, env).await?;
            let mut with_items = tenants.clone();
            with_items.extend(items.iter().map(|i| i.tenant_id.clone()));
            out.extend(item_results(check, env, noun, &with_items, items));
        }
        Ok(out)
    }

    /// A bounded Postgres query with the environment as `$1` and the scope limit as `$2` (or `$3`, after
    /// `items` as `$2`).
    async fn pg_fetch<T>(
        &self,
        tx: &mut PgConnection,
        what: &str,
        sql: &str,
        env: Environment,
        items: Option<i64>,
    ) -> anyhow::Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut q = sqlx::query_as::<_, T>(sql).bind(env.as_str());
        if let Some(n) = items {
            q = q.bind(n);
        }
        let rows = bounded(self.pg_timeout, what, q.bind(scope_limit()).fetch_all(tx)).await?;
        at_most(rows, what)
    }

    async fn pg_items(
        &self,
        tx: &mut PgConnection,
        what: &str,
        sql: &str,
        env: Environment,
    ) -> anyhow::Result<Vec<Item>> {
        self.pg_fetch(tx, what, sql, env, Some(ITEMS_LISTED_MAX)).await
    }

    /// Each sink's positions as the sink itself loads them on assignment, against the log ends.
    async fn positions(&self, env: Environment) -> anyhow::Result<Vec<CheckResult>> {
        let inputs = self.sink_inputs.get(&env).cloned().unwrap_or_default();
        let ends = self.log_ends(&inputs).await?;
        let mut stored: Vec<(&str, &String, i32, i64)> = Vec::new();
        for topic in &inputs {
            let pg = bounded(self.pg_timeout, &format!("postgres positions of {topic}"), async {
                self.pg_sink.load_positions(topic).await.map_err(|e| anyhow::anyhow!(e))
            })
            .await?;
            let ch = bounded(self.ch_timeout, &format!("clickhouse positions of {topic}"), async {
                self.ch_sink.load_positions(topic).await.map_err(|e| anyhow::anyhow!(e))
            })
            .await?;
            for (sink, positions) in [(self.pg_sink.name(), pg), (self.ch_sink.name(), ch)] {
                stored.extend(positions.into_iter().map(|(p, s)| (sink, topic, p, s.next_offset)));
            }
        }
        stored.sort();
        Ok(stored
            .into_iter()
            .map(|(sink, topic, partition, next)| {
                let end = ends.get(&(topic.clone(), partition)).copied();
                CheckResult {
                    check: Check::SinkPosition,
                    scope: format!("{sink} {topic}/{partition}"),
                    expected: end
                        .map_or("a partition on the broker".to_owned(), |h| format!("next offset <= {h}")),
                    found: format!("next offset {next}"),
                    ok: end.is_some_and(|h| next <= h),
                }
            })
            .collect())
    }

    /// High watermarks of every partition of `topics`, each request within `kafka.metadata_timeout_ms`.
    async fn log_ends(&self, topics: &[String]) -> anyhow::Result<HashMap<(String, i32), i64>> {
        let group = self.topics.group("reconcile");
        // The runtime's consumer, so every client setting of the deployment applies; it never joins
        // its group (no subscribe) and never commits.
        let (consumer, _) = kafka::consumer(&self.kafka, &group).context("kafka client")?;
        let timeout = Duration::from_millis(self.kafka.metadata_timeout_ms);
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut ends = HashMap::new();
            for topic in topics {
                let md = consumer
                    .fetch_metadata(Some(topic.as_str()), timeout)
                    .with_context(|| format!("metadata of {topic}"))?;
                for t in md.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
                    for p in t.partitions() {
                        let (_, high) = consumer
                            .fetch_watermarks(&topic, p.id(), timeout)
                            .with_context(|| format!("log end of {topic}/{}", p.id()))?;
                        ends.insert((topic.clone(), p.id()), high);
                    }
                }
            }
            Ok::<_, anyhow::Error>(ends)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(rows: &[(&str, &str, &[i64])]) -> Groups {
        rows.iter().map(|(t, c, v)| (((*t).to_owned(), (*c).to_owned()), v.to_vec())).collect()
    }

    #[test]
    fn a_scope_missing_from_one_store_counts_as_zeros_there() {
        let pg = groups(&[("a", "USD", &[3, -10, 10]), ("b", "USD", &[2, -5, 5])]);
        let ch = groups(&[("a", "USD", &[3, -10, 10]), ("c", "EUR", &[1, 0, 4])]);
        let r =
            compare_stores(Check::LedgerStores, Environment::Live, &["legs", "debits", "credits"], &pg, &ch);
        let got: Vec<(&str, bool)> = r.iter().map(|x| (x.scope.as_str(), x.ok)).collect();
        assert_eq!(got, [("a/live/USD", true), ("b/live/USD", false), ("c/live/EUR", false)]);
        assert_eq!(r[1].expected, "postgres legs 2, debits -5, credits 5");
        assert_eq!(r[1].found, "clickhouse legs 0, debits 0, credits 0");
    }

    fn item(tenant: &str, name: &str, total: i64) -> Item {
        Item {
            tenant_id: tenant.to_owned(),
            item: name.to_owned(),
            expected: "legs sum 0".to_owned(),
            found: "legs sum 1 over 1 legs".to_owned(),
            total,
        }
    }

    #[test]
    fn every_tenant_gets_a_summary_and_offending_items_are_listed_under_it() {
        let tenants: BTreeSet<String> = ["a", "b"].map(str::to_owned).into();
        let r = item_results(
            Check::PostingBalanced,
            Environment::Sandbox,
            "unbalanced postings",
            &tenants,
            vec![item("b", "posting p1 USD", 3), item("b", "posting p2 USD", 3)],
        );
        let got: Vec<(&str, &str, bool)> =
            r.iter().map(|x| (x.scope.as_str(), x.found.as_str(), x.ok)).collect();
        assert_eq!(
            got,
            [
                ("a/sandbox", "0 unbalanced postings", true),
                ("b/sandbox", "3 unbalanced postings (first 2 listed)", false),
                ("b/sandbox/posting p1 USD", "legs sum 1 over 1 legs", false),
                ("b/sandbox/posting p2 USD", "legs sum 1 over 1 legs", false),
            ]
        );
    }

    #[test]
    fn the_table_marks_differences_and_counts_them() {
        let ok = CheckResult {
            check: Check::SinkPosition,
            scope: "postgres t/0".into(),
            expected: "next offset <= 5".into(),
            found: "next offset 5".into(),
            ok: true,
        };
        let bad = CheckResult { found: "next offset 9".into(), ok: false, ..ok.clone() };
        let report =
            Report { environments: vec![Environment::Live], attempts: 2, ok: false, results: vec![ok, bad] };
        let table = report.table();
        assert_eq!(table.lines().filter(|l| l.ends_with("DIFF")).count(), 1, "{table}");
        assert_eq!(table.lines().filter(|l| l.ends_with("ok")).count(), 1, "{table}");
        assert!(table.ends_with("2 results, 1 discrepancies (live; 2 attempts)\n"), "{table}");
        assert_eq!(report.diff_table().lines().count(), 3);
    }
}
