//! `riverbank bench pipeline`: the whole pipeline end to end at rising offered load. Figures are printed
//! and written as JSON, never asserted.
//!
//! `riverbank run` (ingest → every processor → the Postgres and ClickHouse sinks → api) runs as a child
//! process of this binary on a fresh topic prefix and fresh databases (environment overrides; its
//! config is the bench's `--config` plus idcheck and acmepay secrets for the bench's tenants). Once it
//! is healthy, the loadgen ([`crate::loadgen`], in this process, over HTTP with real signatures and
//! keys) drives it at each offered rate for `--step-s` seconds. Per step:
//! - offered/s and accepted/s (HTTP 2xx received), errors by class;
//! - accept → queryable: one deposit in `--probe-every` (5) is a probe; from its 2xx, both stores are polled every
//!   [`POLL_EVERY`] by transfer id (all open probes in one query per store) until its first status row
//!   is in Postgres (`transfer_status_history`) and in ClickHouse (`transfer_facts`): p50/p99/max;
//! - CPU seconds per 1,000 accepted events of the pipeline process and of the broker, Postgres (its
//!   postmaster, the backends it reaped and those alive) and ClickHouse processes (`/proc/<pid>/stat`,
//!   pids from the local stack's state directory), over the step and its settling time, raw and net
//!   of what each burned per second idle (measured for [`IDLE_MEASURE`] before the load: the machine
//!   is shared, the broker serves others' topics too);
//! - consumer lag (messages) per group at the end of the step: the group whose lag grows is the stage
//!   that saturates first.
//!
//! A warm-up at the first step's rate (`--warmup-s`, not reported) comes first. A step keeps up when accepted/s is at least 95% of the offered rate and every probe became
//! queryable in both stores within the step and [`SETTLE_MAX`] after it; the bench stops after the
//! first step that does not. It reports the highest rate kept up with accept → queryable p99 < 1 s in
//! both stores. The databases and topics are dropped at the end.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use riverbank_runtime::Config;
use serde::Serialize;
use serde_json::json;

use crate::bench::{percentile, print_machine, process_cpu_s as cpu_s, write_report};
use crate::loadgen::{self, Drive, Mix, Probe, Target};

/// `riverbank bench pipeline` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Offered rates (requests/s), one step each, rising.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 250, 500, 1_000, 2_000, 4_000])]
    pub steps: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 20)]
    pub step_s: u64,
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,
    /// Users per tenant (enough that the default rules' velocity and tier limits are rarely reached).
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of load at the first step's rate before the steps (group joins, caches; not reported).
    #[arg(long, default_value_t = 10)]
    pub warmup_s: u64,
    /// One deposit in this many is a probe.
    #[arg(long, default_value_t = 5)]
    pub probe_every: u64,
    /// The JSON report; the child's config and log go beside it (`<json without .json>.d/`).
    #[arg(long, default_value = "target/bench/pipeline.json")]
    pub json: PathBuf,
}

/// How often open probes are looked up in each store.
pub const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long after a step its probes may take to become queryable before the step counts as not kept up.
pub const SETTLE_MAX: Duration = Duration::from_secs(10);
/// A probe not queryable this long after its acceptance is counted missing.
const PROBE_GIVE_UP: Duration = Duration::from_secs(60);
/// How long the idle CPU of each process is measured before the load.
const IDLE_MEASURE: Duration = Duration::from_secs(5);
/// How long the child may take to answer /health.
const START_MAX: Duration = Duration::from_secs(180);
/// Accept → queryable p99 a sustained rate stays under, in both stores (ms).
pub const QUERYABLE_P99_MS_MAX: f64 = 1_000.0;
/// Share of the offered rate that must be accepted for a step to keep up.
const ACCEPTED_SHARE_MIN: f64 = 0.95;

/// One probe's fate.
#[derive(Debug, Clone)]
struct ProbeSeen {
    accepted_at: Instant,
    pg: Option<Instant>,
    ch: Option<Instant>,
}

/// Probes by transfer id (tenant, fate).
type Probes = Arc<Mutex<HashMap<String, (String, ProbeSeen)>>>;

/// Poll the stores for the open probes until `stop`.
async fn prober(
    pool: sqlx::PgPool,
    ch: clickhouse::Client,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Probe>,
    probes: Probes,
    stop: riverbank_runtime::CancellationToken,
) {
    loop {
        while let Ok(p) = rx.try_recv() {
            let seen = ProbeSeen { accepted_at: p.accepted_at, pg: None, ch: None };
            probes.lock().unwrap_or_else(|e| e.into_inner()).insert(p.transfer_id, (p.tenant, seen));
        }
        let (pg_open, ch_open): (Vec<String>, Vec<String>) = {
            let all = probes.lock().unwrap_or_else(|e| e.into_inner());
            let open = |f: fn(&ProbeSeen) -> bool| -> Vec<String> {
                all.iter()
                    .filter(|(_, (_, s))| f(s) && s.accepted_at.elapsed() < PROBE_GIVE_UP)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            (open(|s| s.pg.is_none()), open(|s| s.ch.is_none()))
        };
        if !pg_open.is_empty() {
            let found: Result<Vec<String>, _> = sqlx::query_scalar(
                "SELECT DISTINCT transfer_id FROM transfer_status_history WHERE environment = 'live' AND transfer_id = ANY($1)",
            )
            .bind(&pg_open)
            .fetch_all(&pool)
            .await;
            mark(&probes, found.unwrap_or_default(), |s| &mut s.pg);
        }
        // The ids are the loadgen's own ([A-Za-z0-9_-]); anything else is never put in the query.
        let ch_open: Vec<String> = ch_open
            .into_iter()
            .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .collect();
        if !ch_open.is_empty() {
            let list = ch_open.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
            let found = ch
                .query(&format!(
                    "SELECT DISTINCT transfer_id FROM transfer_facts WHERE transfer_id IN ({list})"
                ))
                .fetch_all::<String>()
                .await;
            mark(&probes, found.unwrap_or_default(), |s| &mut s.ch);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

fn mark(probes: &Probes, found: Vec<String>, field: fn(&mut ProbeSeen) -> &mut Option<Instant>) {
    let now = Instant::now();
    let mut all = probes.lock().unwrap_or_else(|e| e.into_inner());
    for id in found {
        if let Some((_, s)) = all.get_mut(&id) {
            field(s).get_or_insert(now);
        }
    }
}

/// The local stack's processes: (name, pid, count its children).
fn stack_pids() -> Vec<(&'static str, u32, bool)> {
    let state = std::env::var("RIVERBANK_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(".riverbank"));
    let first_line =
        |p: PathBuf| -> Option<u32> { std::fs::read_to_string(p).ok()?.lines().next()?.trim().parse().ok() };
    let mut out = Vec::new();
    for (name, file, children) in [
        ("broker", state.join("broker.pid"), false),
        ("postgres", state.join("postgres-link").join("data").join("postmaster.pid"), true),
        ("clickhouse", state.join("clickhouse.pid"), false),
    ] {
        match first_line(file.clone()) {
            Some(pid) if cpu_s(pid, false).is_some() => out.push((name, pid, children)),
            _ => println!("note: no live {name} pid in {} (its CPU is not reported)", file.display()),
        }
    }
    out
}

/// Each consumer group of the pipeline and the topics it reads: processors, routers, sinks.
fn groups(cfg: &Config) -> BTreeMap<String, Vec<String>> {
    let topics = riverbank_runtime::kafka::topics(&cfg.kafka);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for env in cfg.kafka.environments.clone() {
        for (g, inputs) in riverbank_api::live::gauges::groups(&topics, env) {
            out.entry(g).or_default().extend(inputs);
        }
        for sink in ["postgres", "clickhouse"] {
            out.entry(format!("sink.{sink}")).or_default().extend(crate::registry::sink_inputs_in(cfg, env));
        }
    }
    out
}

/// Messages each group has not consumed (committed offset to high watermark), by group.
fn lags(cfg: &Config, groups: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, i64> {
    let topics = riverbank_runtime::kafka::topics(&cfg.kafka);
    let timeout = Duration::from_secs(5);
    let mut out = BTreeMap::new();
    for (short, inputs) in groups {
        let group = topics.group(short);
        let Ok(c) = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &cfg.kafka.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for t in inputs {
            for p in 0..cfg.kafka.topic_partitions {
                if let Ok((_, high)) = c.fetch_watermarks(t, p, timeout) {
                    tpl.add_partition(t, p);
                    ends.push((t.clone(), p, high));
                }
            }
        }
        let Ok(committed) = c.committed_offsets(tpl, timeout) else { continue };
        let lag = ends
            .iter()
            .map(|(t, p, high)| {
                let at = match committed.find_partition(t, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                (high - at).max(0)
            })
            .sum();
        out.insert(short.clone(), lag);
    }
    out
}

/// The config file the bench was started with (`--config`, or `RIVERBANK_CONFIG`).
fn config_path() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        if (a == "--config" || a == "-c") && i + 1 < args.len() {
            return Some(PathBuf::from(&args[i + 1]));
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var("RIVERBANK_CONFIG").ok().map(PathBuf::from)
}

/// A secret for a tenant's provider in the form its scheme takes.
fn secret(provider: &str) -> String {
    use base64::Engine as _;
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    match provider {
        "acmepay" => format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD
                .encode([a.as_bytes().as_slice(), b.as_bytes()].concat())
        ),
        _ => format!("{}{}", a.simple(), b.simple()),
    }
}

/// The child's config: the bench's file plus idcheck and acmepay secrets for `tenants`.
fn child_config(dir: &Path, tenants: &[String]) -> anyhow::Result<PathBuf> {
    let mut text = match config_path() {
        Some(p) => std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        None => String::new(),
    };
    text.push_str(
        "\n# Added by `riverbank bench pipeline`: the bench's tenants (secrets made for this run).\n",
    );
    for t in tenants {
        for provider in ["idcheck", "acmepay"] {
            text.push_str(&format!(
                "[[ingest.webhooks]]\nprovider = \"{provider}\"\ntenant_id = \"{t}\"\nenvironment = \"live\"\nsecrets = [\"{}\"]\n\n",
                secret(provider)
            ));
        }
    }
    let path = dir.join("riverbank.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One step's figures.
#[derive(Debug, Clone, Serialize)]
struct Step {
    offered_target_per_s: u64,
    offered_per_s: f64,
    accepted_per_s: f64,
    errors: u64,
    errors_by_class: BTreeMap<String, u64>,
    probes: usize,
    pg_missing: usize,
    ch_missing: usize,
    pg_ms_p50: f64,
    pg_ms_p99: f64,
    pg_ms_max: f64,
    ch_ms_p50: f64,
    ch_ms_p99: f64,
    ch_ms_max: f64,
    settle_s: f64,
    /// CPU seconds per 1,000 accepted events, by process, over the step and its settling.
    cpu_s_per_1000: BTreeMap<String, f64>,
    /// The same less what the process burned idle over as long.
    cpu_net_s_per_1000: BTreeMap<String, f64>,
    /// Consumer lag (messages) per group at the end of the step.
    lag_end: BTreeMap<String, i64>,
    kept_up: bool,
    sustained: bool,
    /// The load generator's view: answer times, requests by kind.
    answer_ms_p50: f64,
    answer_ms_p99: f64,
    kinds: BTreeMap<loadgen::Kind, loadgen::KindCount>,
}

struct Run {
    cfg: Config,
    child: Child,
    log: PathBuf,
}

/// `riverbank bench pipeline`.
pub async fn pipeline(base: &Config, o: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(!o.steps.is_empty() && o.step_s > 0, "--steps and --step-s must be positive");
    let machine = print_machine();
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let dir = o.json.with_extension("d");
    std::fs::create_dir_all(&dir)?;
    let tenants: Vec<String> = (0..o.tenants.max(1)).map(|i| format!("bp{id}-t{i}")).collect();

    // Fresh databases and topics.
    let mut cfg = base.clone();
    let db = format!("riverbank_bench_pipe_{id}");
    let admin = riverbank_runtime::stores::postgres_pool(&base.postgres, false).await.context("postgres")?;
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await?;
    let url = match base.postgres.url.expose().rsplit_once('/') {
        Some((b, _)) => format!("{b}/{db}"),
        None => anyhow::bail!("postgres.url has no database part"),
    };
    let child_cfg = child_config(&dir, &tenants)?;
    let loaded = Config::load(Some(&child_cfg))?;
    cfg.ingest.webhooks = loaded.ingest.webhooks;
    cfg.postgres.url = riverbank_runtime::Secret::new(url.clone());
    cfg.clickhouse.database = db.clone();
    cfg.kafka.topic_prefix = format!("bench-pipeline-{id}.");
    cfg.ingest.listen_addr = crate::bench::free_local_addr()?;
    cfg.api.listen_addr = crate::bench::free_local_addr()?;
    let metrics = crate::bench::free_local_addr()?;

    let log = dir.join("run.log");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--config")
        .arg(&child_cfg)
        .arg("run")
        .env("RIVERBANK__KAFKA__TOPIC_PREFIX", &cfg.kafka.topic_prefix)
        .env("RIVERBANK__POSTGRES__URL", &url)
        .env("RIVERBANK__CLICKHOUSE__DATABASE", &db)
        .env("RIVERBANK__INGEST__LISTEN_ADDR", cfg.ingest.listen_addr.to_string())
        .env("RIVERBANK__API__LISTEN_ADDR", cfg.api.listen_addr.to_string())
        .env("RIVERBANK__TELEMETRY__METRICS_LISTEN_ADDR", metrics.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd.spawn().context("starting riverbank run")?;
    println!(
        "pipeline: `riverbank run` ({build} build) as child {} on topics {}*, databases {db}; its log: {}",
        child.id(),
        cfg.kafka.topic_prefix,
        log.display()
    );
    let mut run = Run { cfg, child, log };
    let result = measure(&mut run, o, &tenants, &id, machine, build).await;
    crate::bench::terminate(&mut run.child, Duration::from_secs(30));
    cleanup(&run.cfg, &admin, &db).await;
    result
}

async fn cleanup(cfg: &Config, admin: &sqlx::PgPool, db: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let pg = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(admin).await;
    let ch = riverbank_runtime::stores::clickhouse_server_client(&cfg.clickhouse)
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
    let names = crate::registry::all_topics(cfg);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let deleted = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create::<AdminClient<DefaultClientContext>>()
    {
        Ok(a) => a
            .delete_topics(&refs, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
            .await
            .map(|r| r.iter().filter(|x| x.is_ok()).count())
            .unwrap_or(0),
        Err(_) => 0,
    };
    println!(
        "cleanup: postgres {db} {}, clickhouse {db} {}, {deleted} of {} topics deleted",
        if pg.is_ok() { "dropped" } else { "NOT dropped" },
        if ch.is_ok() { "dropped" } else { "NOT dropped" },
        names.len()
    );
}

fn alive(run: &mut Run) -> anyhow::Result<()> {
    if let Some(status) = run.child.try_wait()? {
        anyhow::bail!("riverbank run exited ({status}); see {}", run.log.display());
    }
    Ok(())
}

async fn measure(
    run: &mut Run,
    o: &Options,
    tenants: &[String],
    id: &str,
    machine: serde_json::Value,
    build: &str,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    for url in
        [format!("http://{}", run.cfg.ingest.listen_addr), format!("http://{}", run.cfg.api.listen_addr)]
    {
        loop {
            alive(run)?;
            if crate::demo::wait_healthy(&http, &url, Duration::from_secs(2)).await.is_ok() {
                break;
            }
            anyhow::ensure!(started.elapsed() < START_MAX, "{url}/health not healthy after {START_MAX:?}");
        }
    }
    println!("healthy after {:.1} s", started.elapsed().as_secs_f64());
    let cfg = run.cfg.clone();
    let target = Arc::new(Target::new(&cfg, tenants, false).await?);
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    let ch = riverbank_runtime::stores::clickhouse_client(&cfg.clickhouse);
    let probes: Probes = Arc::new(Mutex::new(HashMap::new()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = riverbank_runtime::CancellationToken::new();
    let poller = tokio::spawn(prober(pool.clone(), ch, rx, probes.clone(), stop.clone()));
    let mut stack = stack_pids();
    // This process: the load generator and the probes (on the same 2 cores).
    stack.push(("loadgen", std::process::id(), false));
    let groups = groups(&cfg);
    let pipeline_pid = run.child.id();
    let mut mix = Mix::new(o.seed, id, tenants.len(), o.users, Mix::follow_up_for_rate(o.steps[0]));
    mix.set_probe_every(o.probe_every);

    println!(
        "{} tenants x {} users, steps {:?} requests/s, {} s each; one deposit in {} is a probe",
        tenants.len(),
        o.users,
        o.steps,
        o.step_s,
        o.probe_every.max(1)
    );
    let cpu_now = || -> Vec<f64> {
        std::iter::once(cpu_s(pipeline_pid, false))
            .chain(stack.iter().map(|(_, pid, c)| cpu_s(*pid, *c)))
            .map(|c| c.unwrap_or(0.0))
            .collect()
    };
    let names: Vec<&str> = std::iter::once("pipeline").chain(stack.iter().map(|(n, _, _)| *n)).collect();
    // What each process burns with the pipeline up and no load from here (other work on the machine,
    // timers, polling): CPU seconds per second, subtracted in the net figures.
    let (idle0, idle_t) = (cpu_now(), Instant::now());
    tokio::time::sleep(IDLE_MEASURE).await;
    let idle_dt = idle_t.elapsed().as_secs_f64();
    let idle: Vec<f64> = cpu_now().iter().zip(&idle0).map(|(b, a)| (b - a) / idle_dt).collect();
    let idle_cpu: BTreeMap<String, f64> =
        names.iter().zip(&idle).map(|(n, v)| ((*n).to_owned(), *v)).collect();
    let line: Vec<String> = idle_cpu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    println!("idle, {:.0} s: CPU s per s {}", idle_dt, line.join(", "));
    if o.warmup_s > 0 {
        println!("warm-up {}/s for {} s (not reported)", o.steps[0], o.warmup_s);
        let d = Drive { rate: o.steps[0], seconds: o.warmup_s, concurrency: 0, progress: true };
        let w = loadgen::drive(target.clone(), &mut mix, d, None).await;
        println!("  accepted {:.0}/s, {} errors", w.accepted_per_s, w.errors);
    }
    let mut steps: Vec<Step> = Vec::new();
    for &rate in &o.steps {
        alive(run)?;
        mix.set_follow_up_after(Mix::follow_up_for_rate(rate));
        let cpu0 = cpu_now();
        let t0 = Instant::now();
        println!("step {rate}/s for {} s", o.step_s);
        let d = Drive { rate, seconds: o.step_s, concurrency: 0, progress: true };
        let summary = loadgen::drive(target.clone(), &mut mix, d, Some(tx.clone())).await;
        let t1 = Instant::now();
        let lag_end = {
            let (c, g) = (cfg.clone(), groups.clone());
            tokio::task::spawn_blocking(move || lags(&c, &g)).await?
        };
        // Let this step's probes land (at most SETTLE_MAX after the step).
        let settle = t1;
        loop {
            let open = probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|(_, s)| s.accepted_at >= t0 && (s.pg.is_none() || s.ch.is_none()))
                .count();
            if open == 0 || settle.elapsed() >= SETTLE_MAX {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let settle_s = settle.elapsed().as_secs_f64();
        let cpu1 = cpu_now();
        let window_s = t0.elapsed().as_secs_f64();
        let thousands = summary.accepted.max(1) as f64 / 1_000.0;
        let per_1000 = |i: usize| (cpu1[i] - cpu0[i]) / thousands;
        let net_per_1000 = |i: usize| ((cpu1[i] - cpu0[i] - idle[i] * window_s) / thousands).max(0.0);
        let cpu_s_per_1000: BTreeMap<String, f64> =
            names.iter().enumerate().map(|(i, n)| ((*n).to_owned(), per_1000(i))).collect();
        let cpu_net_s_per_1000: BTreeMap<String, f64> =
            names.iter().enumerate().map(|(i, n)| ((*n).to_owned(), net_per_1000(i))).collect();
        let (mut pg_ms, mut ch_ms, mut n, mut pg_missing, mut ch_missing) = (Vec::new(), Vec::new(), 0, 0, 0);
        for (_, s) in probes.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if s.accepted_at < t0 || s.accepted_at >= t1 {
                continue;
            }
            n += 1;
            let ms = |at: Option<Instant>| {
                at.map(|a| a.saturating_duration_since(s.accepted_at).as_secs_f64() * 1e3)
            };
            match ms(s.pg) {
                Some(x) => pg_ms.push(x),
                None => pg_missing += 1,
            }
            match ms(s.ch) {
                Some(x) => ch_ms.push(x),
                None => ch_missing += 1,
            }
        }
        pg_ms.sort_by(f64::total_cmp);
        ch_ms.sort_by(f64::total_cmp);
        let kept_up = summary.accepted_per_s >= ACCEPTED_SHARE_MIN * rate as f64
            && pg_missing == 0
            && ch_missing == 0
            && n > 0;
        let step = Step {
            offered_target_per_s: rate,
            offered_per_s: summary.offered_per_s,
            accepted_per_s: summary.accepted_per_s,
            errors: summary.errors,
            errors_by_class: summary.errors_by_class.clone(),
            probes: n,
            pg_missing,
            ch_missing,
            pg_ms_p50: percentile(&pg_ms, 0.5),
            pg_ms_p99: percentile(&pg_ms, 0.99),
            pg_ms_max: pg_ms.last().copied().unwrap_or(f64::NAN),
            ch_ms_p50: percentile(&ch_ms, 0.5),
            ch_ms_p99: percentile(&ch_ms, 0.99),
            ch_ms_max: ch_ms.last().copied().unwrap_or(f64::NAN),
            settle_s,
            cpu_s_per_1000,
            cpu_net_s_per_1000,
            lag_end,
            kept_up,
            sustained: false,
            answer_ms_p50: summary.answer_ms_p50,
            answer_ms_p99: summary.answer_ms_p99,
            kinds: summary.kinds.clone(),
        };
        let step = Step {
            sustained: kept_up
                && step.pg_ms_p99 < QUERYABLE_P99_MS_MAX
                && step.ch_ms_p99 < QUERYABLE_P99_MS_MAX,
            ..step
        };
        print_step(&step, steps.last());
        steps.push(step);
        if !kept_up {
            println!("step {rate}/s did not keep up: stopping");
            break;
        }
    }
    stop.cancel();
    let _ = poller.await;
    pool.close().await;
    print_table(&steps);
    let sustained = steps.iter().filter(|s| s.sustained).map(|s| s.offered_target_per_s).max();
    match sustained {
        Some(r) => println!(
            "highest rate sustained with accept → queryable p99 < 1 s in both stores: {r} requests/s"
        ),
        None => println!("no step sustained accept → queryable p99 < 1 s in both stores"),
    }
    let report = json!({
        "bench": "pipeline",
        "machine": machine,
        "command": "riverbank --config deploy/local/riverbank.toml bench pipeline",
        "pipeline_build": build,
        "tenants": tenants.len(), "users_per_tenant": o.users, "seed": o.seed, "step_s": o.step_s,
        "probe_every_deposits": o.probe_every.max(1), "poll_every_ms": POLL_EVERY.as_millis() as u64,
        "sustained_per_s": sustained, "idle_cpu_s_per_s": idle_cpu, "warmup_s": o.warmup_s,
        "steps": steps,
    });
    write_report(&o.json, &report)
}

/// One line per step, and the groups whose lag grew since the previous step.
fn print_step(s: &Step, before: Option<&Step>) {
    println!(
        "  offered {:.0}/s, accepted {:.0}/s, {} errors; {} probes: postgres p50/p99/max {:.0}/{:.0}/{:.0} ms ({} missing), clickhouse {:.0}/{:.0}/{:.0} ms ({} missing); settled in {:.1} s",
        s.offered_per_s, s.accepted_per_s, s.errors, s.probes, s.pg_ms_p50, s.pg_ms_p99, s.pg_ms_max, s.pg_missing,
        s.ch_ms_p50, s.ch_ms_p99, s.ch_ms_max, s.ch_missing, s.settle_s
    );
    println!("  ingest answered in p50 {:.0} ms, p99 {:.0} ms", s.answer_ms_p50, s.answer_ms_p99);
    for (class, n) in &s.errors_by_class {
        println!("  error {class}: {n}");
    }
    let cpu: Vec<String> = s
        .cpu_s_per_1000
        .iter()
        .map(|(k, v)| format!("{k} {v:.2} ({:.2})", s.cpu_net_s_per_1000.get(k).copied().unwrap_or(f64::NAN)))
        .collect();
    println!("  CPU s per 1,000 events (net of idle): {}", cpu.join(", "));
    let mut lagging: Vec<(&String, &i64)> = s.lag_end.iter().filter(|(_, l)| **l > 0).collect();
    lagging.sort_by(|a, b| b.1.cmp(a.1));
    let grew: Vec<String> = lagging
        .iter()
        .map(|(g, l)| {
            let prev = before.and_then(|b| b.lag_end.get(*g)).copied().unwrap_or(0);
            format!("{g} {l}{}", if **l > prev { format!(" (+{})", **l - prev) } else { String::new() })
        })
        .collect();
    println!(
        "  lag at the end (messages): {}",
        if grew.is_empty() { "none".to_owned() } else { grew.join(", ") }
    );
}

fn print_table(steps: &[Step]) {
    println!();
    println!("| offered/s | accepted/s | errors | PG p50 / p99 / max ms | CH p50 / p99 / max ms | CPU s / 1,000 events, (net of idle): pipeline, broker, postgres, clickhouse, loadgen | most lag at the end | kept up | p99 < 1 s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in steps {
        let cpu = |k: &str| match (s.cpu_s_per_1000.get(k), s.cpu_net_s_per_1000.get(k)) {
            (Some(v), Some(n)) => format!("{v:.2} ({n:.2})"),
            _ => "-".to_owned(),
        };
        let top = s
            .lag_end
            .iter()
            .max_by_key(|(_, l)| **l)
            .filter(|(_, l)| **l > 0)
            .map_or("none".to_owned(), |(g, l)| format!("{g} {l}"));
        println!(
            "| {} | {:.0} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {}, {}, {}, {}, {} | {top} | {} | {} |",
            s.offered_target_per_s,
            s.accepted_per_s,
            s.errors,
            s.pg_ms_p50,
            s.pg_ms_p99,
            s.pg_ms_max,
            s.ch_ms_p50,
            s.ch_ms_p99,
            s.ch_ms_max,
            cpu("pipeline"),
            cpu("broker"),
            cpu("postgres"),
            cpu("clickhouse"),
            cpu("loadgen"),
            if s.kept_up { "yes" } else { "no" },
            if s.sustained { "yes" } else { "no" },
        );
    }
}
