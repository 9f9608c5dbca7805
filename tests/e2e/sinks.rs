//! Sinks under crashes, replays and a ClickHouse outage: every processor output lands exactly once in
//! PostgreSQL and ClickHouse, and "current" projections end where an uninterrupted run ends.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use riverbank::workload::{produce_inputs, transfer_inputs, Lcg};
use riverbank_processors::{TransfersLimits, TransfersProcessor};
use riverbank_schemas::processor::{InputRef, Processor, Verdict};
use riverbank_schemas::transfers::{BalanceChanged, LedgerPosting, TransferStatusChanged};
use riverbank_schemas::{Environment, RawEnvelope, Topics};

use crate::harness::Pipeline;

const COMPONENTS: [&[&str]; 3] = [&["process", "transfers"], &["sink", "postgres"], &["sink", "clickhouse"]];
const SINKS: [&[&str]; 2] = [&["sink", "postgres"], &["sink", "clickhouse"]];
const SMALL_BATCHES: &str = "[sinks]\nbatch_rows_max = 200\nbatch_linger_ms = 20\n";

/// (tenant, account, currency)
type AccountKey = (String, String, String);
/// (posted, pending debit, pending credit, version)
type BalanceRow = (i64, i64, i64, i64);

/// What the stores must hold, from the pure processor over the same inputs.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Landed {
    statuses: u64,
    /// (tenant, transfer) → (status, version)
    current: BTreeMap<(String, String), (String, i64)>,
    postings: u64,
    /// Sum of the credit legs (the debit legs mirror them).
    credits: i64,
    balances: BTreeMap<AccountKey, BalanceRow>,
}

pub(crate) fn reference(topics: &Topics, inputs: &[RawEnvelope]) -> Landed {
    let p = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let at = InputRef::log("x", 0, 0, Environment::Live);
    let mut state = Default::default();
    let mut l = Landed::default();
    for e in inputs {
        let Verdict::Emit(out) = p.apply(&mut state, &at, e.clone()) else { panic!("poison input") };
        for o in out {
            let env: RawEnvelope = serde_json::from_slice(&o.payload).expect("envelope");
            let tenant = env.tenant_id.clone();
            match env.event_type.as_str() {
                TransferStatusChanged::EVENT_TYPE => {
                    let s: TransferStatusChanged = serde_json::from_value(env.payload).expect("status");
                    l.statuses += 1;
                    let v = i64::from(s.version);
                    let cur = l.current.entry((tenant, s.transfer_id)).or_insert((String::new(), 0));
                    if cur.1 < v {
                        *cur = (s.status.as_str().to_owned(), v);
                    }
                }
                LedgerPosting::EVENT_TYPE => {
                    let p: LedgerPosting = serde_json::from_value(env.payload).expect("posting");
                    l.postings += 1;
                    l.credits += p.amount_minor.max(0);
                }
                BalanceChanged::EVENT_TYPE => {
                    let b: BalanceChanged = serde_json::from_value(env.payload).expect("balance");
                    let key = (tenant, b.account.clone(), b.currency.code().to_owned());
                    let v = i64::try_from(b.version).expect("version fits");
                    if l.balances.get(&key).is_none_or(|old| old.3 < v) {
                        l.balances
                            .insert(key, (b.posted_minor, b.pending_debit_minor, b.pending_credit_minor, v));
                    }
                }
                _ => {}
            }
        }
    }
    l
}

async fn postgres_landed(p: &Pipeline) -> anyhow::Result<Landed> {
    let pool = p.pg().await?;
    let statuses: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transfer_status_history").fetch_one(&pool).await?;
    let current: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT tenant_id, transfer_id, status, version FROM transfers")
            .fetch_all(&pool)
            .await?;
    let (postings, credits): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), (sum(amount_minor) FILTER (WHERE amount_minor > 0))::int8 FROM ledger_postings",
    )
    .fetch_one(&pool)
    .await?;
    #[allow(clippy::type_complexity)]
    let balances: Vec<(String, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, account, currency, posted_minor, pending_debit_minor, pending_credit_minor, version
         FROM account_balances",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(Landed {
        statuses: statuses as u64,
        current: current.into_iter().map(|(t, id, s, v)| ((t, id), (s, i64::from(v)))).collect(),
        postings: postings as u64,
        credits: credits.unwrap_or(0),
        balances: balances.into_iter().map(|(t, a, c, p, d, cr, v)| ((t, a, c), (p, d, cr, v))).collect(),
    })
}

/// ClickHouse holds facts and postings (balances are Postgres-only): counted once per event id.
async fn clickhouse_landed(p: &Pipeline) -> anyhow::Result<Landed> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Cur {
        tenant_id: String,
        transfer_id: String,
        last_status: String,
        last_version: u32,
    }
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Sums {
        n: u64,
        credits: i64,
    }
    let c = p.ch();
    let statuses: u64 = c.query("SELECT toUInt64(count()) FROM transfer_facts FINAL").fetch_one().await?;
    let current: Vec<Cur> = c
        .query(
            "SELECT tenant_id, transfer_id, argMax(status, version) AS last_status, max(version) AS last_version
             FROM transfer_facts FINAL GROUP BY tenant_id, transfer_id",
        )
        .fetch_all()
        .await?;
    let sums: Sums = c
        .query("SELECT toUInt64(count()) AS n, toInt64(sumIf(amount_minor, amount_minor > 0)) AS credits FROM ledger_postings FINAL")
        .fetch_one()
        .await?;
    Ok(Landed {
        statuses,
        current: current
            .into_iter()
            .map(|r| ((r.tenant_id, r.transfer_id), (r.last_status, i64::from(r.last_version))))
            .collect(),
        postings: sums.n,
        credits: sums.credits,
        balances: BTreeMap::new(),
    })
}

fn without_balances(l: &Landed) -> Landed {
    Landed {
        statuses: l.statuses,
        current: l.current.clone(),
        postings: l.postings,
        credits: l.credits,
        balances: BTreeMap::new(),
    }
}

/// Wait until Postgres (and ClickHouse, if `ch`) hold exactly `want`.
pub(crate) async fn converge(p: &Pipeline, want: &Landed, ch: bool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pg = postgres_landed(p).await?;
        anyhow::ensure!(
            pg.statuses <= want.statuses && pg.postings <= want.postings,
            "postgres holds more than was emitted: {} statuses, {} postings",
            pg.statuses,
            pg.postings
        );
        let pg_ok = pg == *want;
        let ch_ok = if ch {
            let c = clickhouse_landed(p).await?;
            anyhow::ensure!(
                c.statuses <= want.statuses && c.postings <= want.postings,
                "clickhouse holds more than was emitted"
            );
            c == without_balances(want)
        } else {
            true
        };
        if pg_ok && ch_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let c = clickhouse_landed(p).await.ok();
            anyhow::bail!(
                "stores did not converge: postgres statuses {}/{} postings {}/{} balances {}/{}; clickhouse {:?}; logs in {}",
                pg.statuses, want.statuses, pg.postings, want.postings, pg.balances.len(), want.balances.len(),
                c.map(|c| (c.statuses, c.postings)), p.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn produce(p: &Pipeline, inputs: &[RawEnvelope]) -> anyhow::Result<()> {
    produce_inputs(&riverbank_runtime::Config::load(Some(&p.config))?.kafka, inputs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_kills_and_a_replay_land_every_row_exactly_once() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("sinks_replay", &[], &COMPONENTS, SMALL_BATCHES).await?;
    let inputs = transfer_inputs(&["tenant-a", "tenant-b", "tenant-c"], 300, 5);
    let want = reference(&Topics::new(p.topic_prefix.clone()), &inputs);
    let mut rng = Lcg(11);
    for chunk in inputs.chunks(inputs.len() / 4 + 1) {
        produce(&p, chunk).await?;
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        for s in SINKS {
            p.kill(s).await?;
            p.spawn(s)?;
        }
    }
    converge(&p, &want, true, Duration::from_secs(120)).await?;

    // Both sinks read the same topics (ClickHouse skips balances but records its position past them):
    // wait until both stand at the same end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_position_sum(&p).await? != ch_position_sum(&p).await? {
        anyhow::ensure!(Instant::now() < deadline, "sinks did not reach the same end");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Replay: move both sinks' stored positions back to the start and restart them.
    for s in SINKS {
        p.kill(s).await?;
    }
    let (pg_end, ch_end) = (pg_position_sum(&p).await?, ch_position_sum(&p).await?);
    anyhow::ensure!(
        pg_end > 0 && pg_end == ch_end,
        "both sinks at the end before the replay: {pg_end} {ch_end}"
    );
    // Rows go too, so a sink that skipped everything on the replay would fail the comparison below.
    let pool = p.pg().await?;
    sqlx::query(
        "TRUNCATE sink_offsets, transfers, transfer_status_history, ledger_postings, account_balances",
    )
    .execute(&pool)
    .await?;
    pool.close().await;
    for table in
        ["sink_positions", "sink_offsets", "sink_watermarks", "events", "transfer_facts", "ledger_postings"]
    {
        p.ch().query(&format!("DROP TABLE IF EXISTS {table}")).execute().await?;
        // re-created by the sink
    }
    anyhow::ensure!(postgres_landed(&p).await? != want, "the stores were wiped");
    for s in SINKS {
        p.spawn(s)?;
    }
    // Wait until both sinks have re-read everything, then check nothing changed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while pg_position_sum(&p).await? < pg_end || ch_position_sum(&p).await.unwrap_or(0) < ch_end {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replay did not reach the end in 120 s; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(postgres_landed(&p).await?, want, "postgres after replay");
    assert_eq!(clickhouse_landed(&p).await?, without_balances(&want), "clickhouse after replay");
    p.assert_reconciled().await;
    p.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_a_minute_stalls_nothing_else_and_catches_up() -> anyhow::Result<()> {
    // A private ClickHouse, so stopping it disturbs no other test; stopped on drop, pass or fail.
    let private = PrivateClickHouse::new();
    let stack = |cmd: &str| private.stack(cmd);
    let http = private.http;
    anyhow::ensure!(stack("clickhouse-up")?.success(), "private clickhouse did not start");
    let ch = format!("http://127.0.0.1:{http}");
    let p = Pipeline::start_on("sinks_ch_outage", &[], &COMPONENTS, SMALL_BATCHES, &ch).await?;
    let inputs = transfer_inputs(&["tenant-a", "tenant-b"], 240, 8);
    let parts: Vec<&[RawEnvelope]> = inputs.chunks(inputs.len() / 4 + 1).collect();
    let topics = Topics::new(p.topic_prefix.clone());
    produce(&p, parts[0]).await?;
    converge(&p, &reference(&topics, parts[0]), true, Duration::from_secs(60)).await?;

    anyhow::ensure!(stack("clickhouse-down")?.success(), "could not stop clickhouse");
    let outage = Instant::now();
    // Load keeps coming during the outage; Postgres keeps landing all of it.
    let mut sent = parts[0].len();
    for chunk in &parts[1..] {
        produce(&p, chunk).await?;
        sent += chunk.len();
        converge(&p, &reference(&topics, &inputs[..sent]), false, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let landed_during_outage = postgres_landed(&p).await?.statuses;
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(outage.elapsed())).await;
    eprintln!(
        "clickhouse down for {:.0?}; postgres landed {landed_during_outage} status events meanwhile",
        outage.elapsed()
    );

    anyhow::ensure!(stack("clickhouse-up")?.success(), "private clickhouse did not restart");
    converge(&p, &reference(&topics, &inputs), true, Duration::from_secs(120)).await?;
    p.assert_reconciled().await;
    p.finish().await
}

/// A ClickHouse server of one test's own, started and stopped by the project's stack script.
struct PrivateClickHouse {
    state: std::path::PathBuf,
    http: u16,
    tcp: u16,
}

impl PrivateClickHouse {
    fn new() -> Self {
        let state =
            std::env::temp_dir().join(format!("riverbank-ch-outage-{}", uuid::Uuid::new_v4().simple()));
        PrivateClickHouse { state, http: free_port(), tcp: free_port() }
    }

    fn stack(&self, cmd: &str) -> std::io::Result<std::process::ExitStatus> {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/stack"))
            .arg(cmd)
            .env("RIVERBANK_STATE_DIR", &self.state)
            .env("RIVERBANK_CH_HTTP_PORT", self.http.to_string())
            .env("RIVERBANK_CH_TCP_PORT", self.tcp.to_string())
            .status()
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        let _ = self.stack("clickhouse-down");
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn pg_position_sum(p: &Pipeline) -> anyhow::Result<i64> {
    let pool = p.pg().await?;
    let n: Option<i64> =
        sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM sink_offsets").fetch_one(&pool).await?;
    pool.close().await;
    Ok(n.unwrap_or(0))
}

async fn ch_position_sum(p: &Pipeline) -> anyhow::Result<i64> {
    Ok(p.ch()
        .query("SELECT toInt64(sum(m)) FROM (SELECT argMax(next_offset, version) AS m FROM sink_positions GROUP BY topic, partition)")
        .fetch_one::<i64>()
        .await?)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
    l.local_addr().expect("addr").port()
}
