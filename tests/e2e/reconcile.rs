//! `riverbank reconcile` against a pipeline that carried real traffic (signed webhooks → audit, transfer
//! lifecycles → statuses, legs, balances): clean once everything landed; then each deliberate corruption
//! of a store, one at a time and undone before the next, is reported as exactly the discrepancies it
//! causes, and the command exits non-zero.
use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use riverbank::reconcile::{Check, CheckResult, Report};
use riverbank::workload::{produce_inputs, transfer_inputs};
use riverbank_processors::{TransfersLimits, TransfersProcessor};
use riverbank_schemas::processor::{InputRef, Processor, Verdict};
use riverbank_schemas::transfers::{InputRejected, LedgerPosting, TransferStatusChanged};
use riverbank_schemas::{Environment, RawEnvelope, Topics};
use tokio::process::Command;

use crate::harness::{deliveries, sender, Pipeline};

const COMPONENTS: [&[&str]; 5] = [
    &["ingest"],
    &["process", "audit"],
    &["process", "transfers"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
];
const SINKS: [&[&str]; 2] = [&["sink", "postgres"], &["sink", "clickhouse"]];
const TENANTS: [(&str, u8); 2] = [("tenant-a", 41), ("tenant-b", 42)];
const WEBHOOKS_PER_TENANT: usize = 25;
const TRANSFERS_PER_TENANT: usize = 80;
/// How long the traffic may take to land in Postgres.
const LANDED_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a ClickHouse mutation (`ALTER TABLE … DELETE`) may take to apply.
const MUTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// (status events, ledger legs, rejections) an uninterrupted run of the transfers processor emits.
fn reference(topics: &Topics, inputs: &[RawEnvelope]) -> (i64, i64, i64) {
    let p = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let at = InputRef::log("x", 0, 0, Environment::Live);
    let mut state = Default::default();
    let (mut statuses, mut legs, mut rejections) = (0, 0, 0);
    for e in inputs {
        let Verdict::Emit(out) = p.apply(&mut state, &at, e.clone()) else { panic!("poison input") };
        for o in out {
            let env: RawEnvelope = serde_json::from_slice(&o.payload).expect("envelope");
            match env.event_type.as_str() {
                TransferStatusChanged::EVENT_TYPE => statuses += 1,
                LedgerPosting::EVENT_TYPE => legs += 1,
                InputRejected::EVENT_TYPE => rejections += 1,
                _ => {}
            }
        }
    }
    (statuses, legs, rejections)
}

/// Wait until Postgres holds every status change and leg, at least `rejections` refused inputs (the
/// refused webhook callbacks come on top), and an audit row for every webhook, status change and
/// refusal (ClickHouse and balances are left to reconcile's settling).
async fn wait_landed(
    p: &Pipeline,
    webhooks: i64,
    statuses: i64,
    legs: i64,
    rejections: i64,
) -> anyhow::Result<()> {
    let pool = p.pg().await?;
    let deadline = Instant::now() + LANDED_TIMEOUT;
    loop {
        let (audit, seen_statuses, seen_legs, seen_rejections): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM transfer_status_history),
                    (SELECT count(*) FROM ledger_postings), (SELECT count(*) FROM transfer_rejections)",
        )
        .fetch_one(&pool)
        .await?;
        let landed = (seen_statuses, seen_legs) == (statuses, legs)
            && seen_rejections >= rejections
            && audit == webhooks + seen_statuses + seen_rejections;
        if landed {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "postgres holds audit {audit}, statuses {seen_statuses}, legs {seen_legs}, rejections \
             {seen_rejections}; want statuses {statuses}, legs {legs}, rejections ≥ {rejections}, audit = \
             {webhooks} webhooks + statuses + rejections; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    pool.close().await;
    Ok(())
}

fn diffs(r: &Report) -> BTreeSet<(Check, String)> {
    r.discrepancies().into_iter().map(|d| (d.check, d.scope.clone())).collect()
}

fn set(items: &[(Check, &str)]) -> BTreeSet<(Check, String)> {
    items.iter().map(|(c, s)| (*c, (*s).to_owned())).collect()
}

fn result<'r>(r: &'r Report, check: Check, scope: &str) -> &'r CheckResult {
    r.results
        .iter()
        .find(|x| x.check == check && x.scope == scope)
        .unwrap_or_else(|| panic!("no {check:?} result for {scope}:\n{}", r.table()))
}

/// One run, no settling: the stores are quiet and the corruption is in place.
async fn once(p: &Pipeline) -> anyhow::Result<Report> {
    p.reconcile(Duration::ZERO).await
}

async fn assert_clean(p: &Pipeline, after: &str) -> anyhow::Result<()> {
    let r = once(p).await?;
    anyhow::ensure!(r.is_clean(), "not clean after {after}:\n{}", r.diff_table());
    Ok(())
}

async fn cli(p: &Pipeline, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_riverbank"))
        .arg("--config")
        .arg(&p.config)
        .arg("reconcile")
        .args(args)
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_is_clean_after_traffic_and_names_each_corruption() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("reconcile", &TENANTS, &COMPONENTS, "").await?;
    let mut work = Vec::new();
    for (tenant, seed) in TENANTS {
        work.extend(deliveries(&sender(tenant, seed), "rec", WEBHOOKS_PER_TENANT));
    }
    let answers = riverbank::demo::send_all(&p.http, &p.ingest_url, work).await;
    anyhow::ensure!(
        answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.as_u16() == 202)),
        "every webhook accepted: {answers:?}"
    );
    let tenants: Vec<&str> = TENANTS.iter().map(|t| t.0).collect();
    let inputs = transfer_inputs(&tenants, TRANSFERS_PER_TENANT, 23);
    produce_inputs(&riverbank_runtime::Config::load(Some(&p.config))?.kafka, &inputs).await?;
    let (statuses, legs, rejections) = reference(&Topics::new(p.topic_prefix.clone()), &inputs);
    // Every webhook, status change and rejection is audited.
    let webhooks = i64::try_from(TENANTS.len() * WEBHOOKS_PER_TENANT)?;
    wait_landed(&p, webhooks, statuses, legs, rejections).await?;

    // Clean: in-process (the harness helper) and through the binary.
    p.assert_reconciled().await;
    let clean = once(&p).await?;
    for tenant in &tenants {
        let scope = format!("{tenant}/live");
        for check in
            [Check::PostingBalanced, Check::BalancePosted, Check::BalancePending, Check::StatusHistory]
        {
            assert!(result(&clean, check, &scope).ok);
        }
        let usd = format!("{scope}/USD");
        for check in [Check::StatusStores, Check::LedgerStores, Check::LedgerCurrencySum] {
            assert!(result(&clean, check, &usd).ok);
        }
        let a = result(&clean, Check::AuditStores, &scope);
        let pool = p.pg().await?;
        let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_log WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        assert!(rows > WEBHOOKS_PER_TENANT as i64, "webhooks and transfers audited: {rows}");
        assert!(a.expected.starts_with(&format!("postgres rows {rows},")), "audit rows counted: {a:?}");
    }
    let positions = clean.results.iter().filter(|r| r.check == Check::SinkPosition).count();
    assert!(positions >= 2, "both sinks' positions checked:\n{}", clean.table());
    let out = cli(&p, &["--json"]).await?;
    assert!(out.status.success(), "clean reconcile exits 0: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["ok"], true);
    let results = json["results"].as_array().map(Vec::as_slice).unwrap_or_default();
    assert!(results.iter().all(|r| r["ok"] == true), "{json:#}");
    // The same checks and scopes as in-process (positions aside: an idle sink may add one meanwhile).
    let from_json: BTreeSet<(String, String)> = results
        .iter()
        .filter(|r| r["check"] != "sink_position")
        .map(|r| {
            (r["check"].as_str().unwrap_or("?").to_owned(), r["scope"].as_str().unwrap_or("?").to_owned())
        })
        .collect();
    let in_process: BTreeSet<(String, String)> = clean
        .results
        .iter()
        .filter(|r| r.check != Check::SinkPosition)
        .map(|r| (r.check.as_str().to_owned(), r.scope.clone()))
        .collect();
    assert_eq!(from_json, in_process);

    let pool = p.pg().await?;
    let ch = p.ch();

    // 1. A ledger leg deleted from ClickHouse: only the ClickHouse comparison of that currency differs.
    let (leg_id, pg_legs): (uuid::Uuid, i64) = sqlx::query_as(
        "SELECT min(event_id::text)::uuid, count(*) FROM ledger_postings
         WHERE tenant_id = 'tenant-a' AND currency = 'USD'",
    )
    .fetch_one(&pool)
    .await?;
    let leg = leg_id.to_string();
    ch.query("CREATE TABLE saved_leg AS ledger_postings").execute().await?;
    ch.query("INSERT INTO saved_leg SELECT * FROM ledger_postings FINAL WHERE event_id = toUUID(?)")
        .bind(&leg)
        .execute()
        .await?;
    ch.query("ALTER TABLE ledger_postings DELETE WHERE event_id = toUUID(?)").bind(&leg).execute().await?;
    let deadline = Instant::now() + MUTATION_TIMEOUT;
    while ch
        .query("SELECT toUInt64(count()) FROM ledger_postings WHERE event_id = toUUID(?)")
        .bind(&leg)
        .fetch_one::<u64>()
        .await?
        > 0
    {
        anyhow::ensure!(Instant::now() < deadline, "the delete mutation did not apply");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = once(&p).await?;
    assert_eq!(diffs(&r), set(&[(Check::LedgerStores, "tenant-a/live/USD")]), "\n{}", r.diff_table());
    let d = result(&r, Check::LedgerStores, "tenant-a/live/USD");
    assert!(d.expected.starts_with(&format!("postgres legs {pg_legs},")), "{d:?}");
    assert!(d.found.starts_with(&format!("clickhouse legs {},", pg_legs - 1)), "{d:?}");
    ch.query("INSERT INTO ledger_postings SELECT * FROM saved_leg").execute().await?;
    ch.query("DROP TABLE saved_leg").execute().await?;
    assert_clean(&p, "restoring the ClickHouse leg").await?;

    // 2. A stray Postgres leg (a post of 1 to acct_0): an unbalanced posting, a currency that no longer
    // sums to zero, an account off its legs (posted and pending), and a store difference.
    let (stray, posting) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(
        "INSERT INTO ledger_postings (event_id, posting_id, tenant_id, environment, transfer_id, phase,
             account, amount_minor, currency, occurred_at)
         VALUES ($1, $2, 'tenant-b', 'live', 't-0', 'post', 'acct_0', 1, 'USD', now())",
    )
    .bind(stray)
    .bind(posting)
    .execute(&pool)
    .await?;
    let r = once(&p).await?;
    let posting_scope = format!("tenant-b/live/posting {posting} USD");
    assert_eq!(
        diffs(&r),
        set(&[
            (Check::LedgerStores, "tenant-b/live/USD"),
            (Check::LedgerCurrencySum, "tenant-b/live/USD"),
            (Check::PostingBalanced, "tenant-b/live"),
            (Check::PostingBalanced, &posting_scope),
            (Check::BalancePosted, "tenant-b/live"),
            (Check::BalancePosted, "tenant-b/live/account acct_0 USD"),
            (Check::BalancePending, "tenant-b/live"),
            (Check::BalancePending, "tenant-b/live/account acct_0 USD"),
        ]),
        "\n{}",
        r.diff_table()
    );
    assert_eq!(result(&r, Check::LedgerCurrencySum, "tenant-b/live/USD").found, "legs sum 1");
    assert_eq!(result(&r, Check::PostingBalanced, &posting_scope).found, "legs sum 1 over 1 legs");
    sqlx::query("DELETE FROM ledger_postings WHERE event_id = $1").bind(stray).execute(&pool).await?;
    assert_clean(&p, "removing the stray leg").await?;

    // 3. A posted balance bumped by 7: that account alone is off its post legs. Settling retries
    // within its bound and still reports it.
    let (posted,): (i64,) = sqlx::query_as(
        "SELECT posted_minor FROM account_balances
         WHERE tenant_id = 'tenant-a' AND account = 'acct_1' AND currency = 'USD'",
    )
    .fetch_one(&pool)
    .await?;
    let bump = |by: i64| {
        sqlx::query(
            "UPDATE account_balances SET posted_minor = posted_minor + $1, available_minor = available_minor + $1
             WHERE tenant_id = 'tenant-a' AND account = 'acct_1' AND currency = 'USD'",
        )
        .bind(by)
    };
    bump(7).execute(&pool).await?;
    let started = Instant::now();
    // Long enough for a second attempt on a loaded machine (the stores hold every audit record too).
    let r = p.reconcile(Duration::from_millis(5_000)).await?;
    assert!(r.attempts > 1, "settling retried ({} attempts)", r.attempts);
    assert!(started.elapsed() < Duration::from_secs(30), "settling is bounded");
    assert_eq!(
        diffs(&r),
        set(&[
            (Check::BalancePosted, "tenant-a/live"),
            (Check::BalancePosted, "tenant-a/live/account acct_1 USD"),
        ]),
        "\n{}",
        r.diff_table()
    );
    let d = result(&r, Check::BalancePosted, "tenant-a/live/account acct_1 USD");
    assert_eq!(
        (d.expected.as_str(), d.found.as_str()),
        (&*format!("legs posted {posted}"), &*format!("balance posted {}", posted + 7))
    );
    bump(-7).execute(&pool).await?;
    assert_clean(&p, "undoing the balance bump").await?;

    // 4. A middle status change deleted: that transfer's history has a gap, and Postgres holds one
    // status row fewer than ClickHouse.
    let (transfer,): (String,) = sqlx::query_as(
        "SELECT transfer_id FROM transfers WHERE tenant_id = 'tenant-a' AND version >= 3 ORDER BY transfer_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    sqlx::query(
        "CREATE TABLE saved_history AS SELECT * FROM transfer_status_history
         WHERE tenant_id = 'tenant-a' AND transfer_id = $1 AND version = 2",
    )
    .bind(&transfer)
    .execute(&pool)
    .await?;
    sqlx::query("DELETE FROM transfer_status_history WHERE tenant_id = 'tenant-a' AND transfer_id = $1 AND version = 2")
        .bind(&transfer)
        .execute(&pool)
        .await?;
    let r = once(&p).await?;
    let transfer_scope = format!("tenant-a/live/transfer {transfer}");
    assert_eq!(
        diffs(&r),
        set(&[
            (Check::StatusStores, "tenant-a/live/USD"),
            (Check::StatusHistory, "tenant-a/live"),
            (Check::StatusHistory, &transfer_scope),
        ]),
        "\n{}",
        r.diff_table()
    );
    assert!(result(&r, Check::StatusHistory, &transfer_scope).found.contains(" rows)"));
    sqlx::query("INSERT INTO transfer_status_history SELECT * FROM saved_history").execute(&pool).await?;
    sqlx::query("DROP TABLE saved_history").execute(&pool).await?;
    assert_clean(&p, "restoring the status row").await?;

    // 5. With the sinks stopped, a stored position moved past its log's end: the binary names it and
    // exits non-zero, as a table and as JSON.
    for s in SINKS {
        p.kill(s).await?;
    }
    let (topic, partition): (String, i32) = sqlx::query_as(
        "SELECT topic, partition FROM sink_offsets WHERE sink = 'postgres' ORDER BY topic, partition LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    sqlx::query("UPDATE sink_offsets SET next_offset = next_offset + 1000 WHERE sink = 'postgres' AND topic = $1 AND partition = $2")
        .bind(&topic)
        .bind(partition)
        .execute(&pool)
        .await?;
    pool.close().await;
    let position = format!("postgres {topic}/{partition}");
    let r = once(&p).await?;
    assert_eq!(diffs(&r), set(&[(Check::SinkPosition, &position)]), "\n{}", r.diff_table());
    let out = cli(&p, &[]).await?;
    assert!(!out.status.success(), "a discrepancy exits non-zero");
    let table = String::from_utf8(out.stdout)?;
    let diff_lines: Vec<&str> = table.lines().filter(|l| l.ends_with("DIFF")).collect();
    assert_eq!(diff_lines.len(), 1, "{table}");
    assert!(diff_lines[0].starts_with("sink_position") && diff_lines[0].contains(&position), "{table}");
    let out = cli(&p, &["--json", "--env", "live"]).await?;
    assert!(!out.status.success(), "a discrepancy exits non-zero with --json too");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["ok"], false);
    let bad: Vec<&serde_json::Value> =
        json["results"].as_array().into_iter().flatten().filter(|r| r["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{json:#}");
    assert_eq!(
        (bad[0]["check"].as_str(), bad[0]["scope"].as_str()),
        (Some("sink_position"), Some(&*position))
    );
    p.finish().await
}
