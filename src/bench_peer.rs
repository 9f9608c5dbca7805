//! `riverbank bench peer`: the same stateful job in riverbank and in a peer, Quix Streams 3.28
//! (`bench/peers/quix/app.py`), against the same broker and the same input topic, in one run. Figures
//! are printed and written as JSON, never asserted.
//!
//! The job: per account, a balance with a no-overdraft check (a debit beyond the balance is refused);
//! per user, the sum of accepted debits over a sliding hour of event time (the velocity); one result
//! record (accepted / refused / too late, the balance, the user's velocity) and one audit record per
//! input. An input more than [`LATENESS_MAX_MS`] behind its user's newest event is refused as too late
//! and changes nothing. Each user owns one account and inputs are keyed by account, so a user's events
//! are in one partition for both systems.
//!
//! riverbank's job is [`PeerProcessor`], run by the runtime (`process::run`: the router-less
//! single-input path, a checkpoint after every batch, outputs with ids derived from their input), in a
//! child process (`riverbank bench peer --job-prefix …`) so its CPU time is measured as the peer's is
//! (`/proc/<pid>/stat`). The peer runs at-least-once: this broker has no Kafka transactions.
//!
//! 1. Throughput: N inputs on one fresh topic; each system from an empty state until its N results
//!    are on the broker: results/s from its first result to its last, CPU seconds of its process over
//!    that time, and results per CPU-second (throughput per core). Every result is then read back and
//!    compared with the reference (the same rules applied in order, in this process).
//! 2. Latency: each system running, inputs produced at a fixed rate to a fresh topic; input produced →
//!    result read by a consumer here, p50 and p99.
//! 3. A crash: N inputs on another fresh topic; each system is SIGKILLed once half its results are on
//!    the broker, restarted, and left to finish. Then, by input event id: results and audit records
//!    duplicated, missing, wrong (not the reference's), and late inputs dropped.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_runtime::Config;
use riverbank_schemas::processor::{decode_v1, derived_emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::state::Table;
use riverbank_schemas::{Environment, RawEnvelope, Topics};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::bench::{self, percentile, print_machine, process_cpu_s, terminate, write_report};
use crate::workload::Lcg;

/// The velocity window (ms of event time).
pub const WINDOW_MS: i64 = 3_600_000;
/// How far behind its user's newest event an input may be and still be applied (ms of event time).
pub const LATENESS_MAX_MS: i64 = 600_000;
/// Accepted debits remembered per user (those within window + lateness of the newest); an input that
/// would remember more is dead-lettered with the reason.
pub const USER_DEBITS_MAX: usize = 100_000;

/// Event type of the inputs, the results and the audit records.
pub const EVENT: &str = "peer.event";
pub const RESULT: &str = "peer.result";
pub const AUDIT: &str = "peer.audit";

/// Event clock of the workload (ms): inputs are [`STEP_MS`] apart in event time (so N = 200,000 spans
/// about 67 minutes of it).
const T0_MS: i64 = 1_790_000_000_000;
const STEP_MS: i64 = 20;
/// Shares of the inputs, per mille: 1-5 minutes older than their place (late, within the allowance),
/// 15-30 minutes older (beyond it); credits among the inputs of a user after the first (a credit).
const LATE_PER_MILLE: u64 = 10;
const TOO_LATE_PER_MILLE: u64 = 2;
const CREDIT_PER_CENT: u64 = 45;
/// Inputs of the latency phase produced before it (the job has joined its group once their results
/// are on the broker).
const WARM_UP: usize = 200;
/// A crashed run is over when its results stopped growing for this long.
const SETTLED: Duration = Duration::from_secs(8);
/// How long any one phase may take.
const PHASE_MAX: Duration = Duration::from_secs(1_800);
const TENANT: &str = "tenant-peer";

/// `riverbank bench peer` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Inputs of the throughput run and of the crash run.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Users (each owns one account).
    #[arg(long, default_value_t = 2_000)]
    pub users: u64,
    /// Inputs of the latency phase, and their rate (inputs/s).
    #[arg(long, default_value_t = 10_000)]
    pub latency_events: usize,
    #[arg(long, default_value_t = 1_000)]
    pub rate_per_s: u64,
    /// The peer's Python (bench/peers/quix/setup installs it) and app.
    #[arg(long, default_value = "target/quix-venv/bin/python")]
    pub quix_python: PathBuf,
    #[arg(long, default_value = "bench/peers/quix/app.py")]
    pub quix_app: PathBuf,
    /// Where the JSON report, and the children's logs and the peer's state, go.
    #[arg(long, default_value = "target/bench/peer.json")]
    pub json: PathBuf,
    /// Skip the crash run.
    #[arg(long)]
    pub no_crash: bool,
    /// (Internal: the child process) run riverbank's job on topics under this prefix, reading
    /// `--job-input`, writing `--job-results` and `--job-audit`, until SIGTERM.
    #[arg(long, hide = true)]
    pub job_prefix: Option<String>,
    #[arg(long, hide = true)]
    pub job_input: Option<String>,
    #[arg(long, hide = true)]
    pub job_results: Option<String>,
    #[arg(long, hide = true)]
    pub job_audit: Option<String>,
}

/// One input's payload (in a riverbank envelope: its id is the envelope's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEvent {
    pub account: String,
    pub user: String,
    pub kind: Kind,
    pub amount_minor: i64,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Credit,
    Debit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Refused,
    TooLate,
}

/// The result record of one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerResult {
    pub input_event_id: Uuid,
    pub account: String,
    pub user: String,
    pub status: Status,
    pub balance_minor: i64,
    pub velocity_minor: i64,
}

/// The audit record of one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAudit {
    pub input_event_id: Uuid,
    pub account: String,
    pub user: String,
    pub kind: Kind,
    pub amount_minor: i64,
    pub ts_ms: i64,
    pub status: Status,
}

/// A user's window: the newest event time seen, and accepted debits `(ts_ms, amount_minor)` within
/// window + lateness of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserWindow {
    pub newest_ms: Option<i64>,
    pub debits: Vec<(i64, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    /// Balance (minor units) by account.
    pub accounts: Table<i64>,
    pub users: Table<UserWindow>,
}

impl PeerState {
    pub fn new() -> Self {
        PeerState { accounts: Table::new("a"), users: Table::new("u") }
    }
}

impl Default for PeerState {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(PeerState { accounts, users });

/// Apply one input: the rules of the job, shared by the processor and the reference.
pub fn step(state: &mut PeerState, id: Uuid, e: &PeerEvent) -> Result<PeerResult, String> {
    if e.amount_minor <= 0 {
        return Err(format!("amount_minor must be positive, got {}", e.amount_minor));
    }
    let mut w = state.users.get(&e.user).cloned().unwrap_or_default();
    let mut balance = state.accounts.get(&e.account).copied().unwrap_or(0);
    let too_late = w.newest_ms.is_some_and(|n| e.ts_ms < n.saturating_sub(LATENESS_MAX_MS));
    let status = if too_late {
        Status::TooLate
    } else {
        match e.kind {
            Kind::Credit => {
                balance = balance
                    .checked_add(e.amount_minor)
                    .ok_or_else(|| format!("the balance of {} would overflow", e.account))?;
                Status::Accepted
            }
            Kind::Debit if e.amount_minor <= balance => {
                balance -= e.amount_minor;
                if w.debits.len() >= USER_DEBITS_MAX {
                    return Err(format!(
                        "{USER_DEBITS_MAX} debits already remembered for this user (USER_DEBITS_MAX)"
                    ));
                }
                w.debits.push((e.ts_ms, e.amount_minor));
                Status::Accepted
            }
            Kind::Debit => Status::Refused,
        }
    };
    if !too_late {
        let newest = w.newest_ms.map_or(e.ts_ms, |n| n.max(e.ts_ms));
        w.newest_ms = Some(newest);
        let horizon = newest.saturating_sub(WINDOW_MS + LATENESS_MAX_MS);
        w.debits.retain(|&(t, _)| t >= horizon);
    }
    let from = e.ts_ms.saturating_sub(WINDOW_MS);
    let velocity = w
        .debits
        .iter()
        .filter(|&&(t, _)| from < t && t <= e.ts_ms)
        .try_fold(0i64, |sum, &(_, a)| sum.checked_add(a))
        .ok_or_else(|| format!("the velocity of {} would overflow", e.user))?;
    if !too_late {
        state.accounts.insert(e.account.clone(), balance);
        state.users.insert(e.user.clone(), w);
    }
    Ok(PeerResult {
        input_event_id: id,
        account: e.account.clone(),
        user: e.user.clone(),
        status,
        balance_minor: balance,
        velocity_minor: velocity,
    })
}

/// riverbank's job: reads one topic (no router, no ticks), checkpointed, two outputs per input.
#[derive(Debug, Clone)]
pub struct PeerProcessor {
    pub input: String,
    pub results: String,
    pub audit: String,
}

impl Processor for PeerProcessor {
    type State = PeerState;

    fn name(&self) -> &'static str {
        "peer"
    }

    fn spec(&self, _: &Topics, _: Environment) -> Spec {
        Spec {
            outputs: vec![
                Output::new(self.results.clone(), &[RESULT]),
                Output::new(self.audit.clone(), &[AUDIT]),
            ],
            ..Spec::reading(self.input.clone())
        }
    }

    fn apply(&self, state: &mut PeerState, _: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        if input.event_type != EVENT {
            return Verdict::Poison(format!("peer has no rule for {}", input.event_type));
        }
        let e = match decode_v1::<PeerEvent>(&input) {
            Ok(e) => e,
            Err(reason) => return Verdict::Poison(reason),
        };
        let r = match step(state, input.event_id, &e) {
            Ok(r) => r,
            Err(reason) => return Verdict::Poison(reason),
        };
        let audit = PeerAudit {
            input_event_id: input.event_id,
            account: e.account.clone(),
            user: e.user,
            kind: e.kind,
            amount_minor: e.amount_minor,
            ts_ms: e.ts_ms,
            status: r.status,
        };
        let mut result = derived_emit("peer", &input, 0, self.results.clone(), RESULT, r);
        let mut audit = derived_emit("peer", &input, 1, self.audit.clone(), AUDIT, audit);
        // Keyed by account, as the inputs are.
        result.key.clone_from(&e.account);
        audit.key = e.account;
        Verdict::Emit(vec![result, audit])
    }

    fn examples(&self, _: Environment) -> Vec<RawEnvelope> {
        workload(8, 2, 7).into_iter().map(|(e, _)| e).collect()
    }
}

/// `n` inputs over `users` users, deterministic for `seed`: a user's first input is a credit, then
/// [`CREDIT_PER_CENT`] % credits, the rest debits (some beyond the balance); a few inputs late.
pub fn workload(n: usize, users: u64, seed: u64) -> Vec<(RawEnvelope, PeerEvent)> {
    let mut rng = Lcg(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let u = rng.below(users.max(1));
        let place = T0_MS + i as i64 * STEP_MS;
        let roll = rng.below(1_000);
        let ts_ms = if roll < LATE_PER_MILLE {
            place - 60_000 - rng.below(240_000) as i64
        } else if roll < LATE_PER_MILLE + TOO_LATE_PER_MILLE {
            place - 900_000 - rng.below(900_000) as i64
        } else {
            place
        };
        let credit = seen.insert(u) || rng.below(100) < CREDIT_PER_CENT;
        let (kind, amount_minor) = if credit {
            (Kind::Credit, 1_000 + rng.below(49_000) as i64)
        } else {
            (Kind::Debit, 500 + rng.below(29_500) as i64)
        };
        let e = PeerEvent {
            account: format!("acct-{u:05}"),
            user: format!("user-{u:05}"),
            kind,
            amount_minor,
            ts_ms,
        };
        let id = riverbank_schemas::derived_id(&["bench-peer", &seed.to_string(), &i.to_string()]);
        let payload = serde_json::to_value(&e).unwrap_or_default();
        let env = riverbank_schemas::Envelope::new(
            id,
            EVENT,
            TENANT,
            Environment::Live,
            bench::at(ts_ms),
            bench::SOURCE,
            payload,
        );
        out.push((env, e));
    }
    out
}

/// What every input should give (the rules applied in the order of the topic), and the late inputs:
/// behind their user's newest and applied, and too late.
pub struct Reference {
    pub results: HashMap<Uuid, PeerResult>,
    pub late_applied: Vec<Uuid>,
    pub too_late: usize,
}

pub fn reference(events: &[(RawEnvelope, PeerEvent)]) -> anyhow::Result<Reference> {
    let mut s = PeerState::new();
    let mut r = Reference { results: HashMap::new(), late_applied: Vec::new(), too_late: 0 };
    for (env, e) in events {
        let behind = s.users.get(&e.user).and_then(|w| w.newest_ms).is_some_and(|n| e.ts_ms < n);
        let res = step(&mut s, env.event_id, e).map_err(anyhow::Error::msg)?;
        match res.status {
            Status::TooLate => r.too_late += 1,
            _ if behind => r.late_applied.push(env.event_id),
            _ => {}
        }
        r.results.insert(env.event_id, res);
    }
    Ok(r)
}

/// The two systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Riverbank,
    Quix,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Riverbank => "riverbank",
            System::Quix => "quix",
        }
    }
}

/// Topics of one system in one run.
#[derive(Debug, Clone)]
struct RunTopics {
    input: String,
    results: String,
    audit: String,
    /// riverbank: the prefix of its checkpoints and group; quix: its group (state dir named after it).
    scope: String,
}

fn run_topics(run_prefix: &str, system: System) -> RunTopics {
    let t = Topics::new(run_prefix);
    let sys = system.label();
    RunTopics {
        input: t.name(Environment::Live, "peer.inputs"),
        results: t.name(Environment::Live, &format!("peer.{sys}.results")),
        audit: t.name(Environment::Live, &format!("peer.{sys}.audit")),
        scope: format!("{run_prefix}{sys}."),
    }
}

/// The `--config` the bench was started with (the child riverbank reads the same).
fn config_args() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if (a == "--config" || a == "-c") && i + 1 < args.len() {
            out = vec!["--config".to_owned(), args[i + 1].clone()];
        } else if let Some(v) = a.strip_prefix("--config=") {
            out = vec!["--config".to_owned(), v.to_owned()];
        }
    }
    out
}

/// Start one system's job as a child process, its output to `log`.
fn spawn(
    cfg: &Config,
    o: &Options,
    system: System,
    t: &RunTopics,
    dir: &Path,
    log: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(log))?;
    let mut cmd = match system {
        System::Riverbank => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(config_args()).args(["bench", "peer", "--job-prefix", &t.scope]).args([
                "--job-input",
                &t.input,
                "--job-results",
                &t.results,
                "--job-audit",
                &t.audit,
            ]);
            c
        }
        System::Quix => {
            let mut c = Command::new(&o.quix_python);
            let state = dir.join(format!("quix-state-{}", t.scope.trim_end_matches('.')));
            c.arg(&o.quix_app).args(["--broker", &cfg.kafka.brokers, "--input", &t.input]).args([
                "--results",
                &t.results,
                "--audit",
                &t.audit,
                "--group",
                t.scope.trim_end_matches('.'),
                "--state-dir",
            ]);
            c.arg(state);
            c
        }
    };
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    cmd.spawn().with_context(|| format!("starting {}", system.label()))
}

/// How long a child has after SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(20);

fn reader(kcfg: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kcfg.brokers)
        .set("group.id", "bench-peer-reader-unused")
        .set("enable.auto.commit", "false")
        .create()?)
}

fn high_marks(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    (0..partitions).map(|p| Ok(consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?.1)).collect()
}

fn records(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    Ok(high_marks(consumer, topic, partitions)?.iter().sum())
}

/// Fails if the child exited.
fn alive(child: &mut Child, system: System, dir: &Path) -> anyhow::Result<()> {
    if let Some(status) = child.try_wait()? {
        anyhow::bail!("{} exited ({status}); see its log in {}", system.label(), dir.display());
    }
    Ok(())
}

/// Throughput of one system over the run's inputs.
#[derive(Debug, Clone, Default)]
struct Throughput {
    results_per_s: f64,
    steady_s: f64,
    cpu_s: f64,
    per_cpu_s: f64,
    start_s: f64,
    /// From the child's start to its last result: seconds, and CPU seconds (start-up included).
    total_s: f64,
    total_cpu_s: f64,
}

/// (1) for one system: from an empty state until its `n` results are on the broker.
fn throughput(
    cfg: &Config,
    o: &Options,
    system: System,
    t: &RunTopics,
    dir: &Path,
    n: i64,
) -> anyhow::Result<Throughput> {
    let consumer = reader(&cfg.kafka)?;
    let parts = cfg.kafka.topic_partitions;
    let started = Instant::now();
    let mut child = spawn(cfg, o, system, t, dir, &format!("{}-throughput.log", system.label()))?;
    let mut first: Option<(Instant, i64, f64)> = None;
    let result = loop {
        if let Err(e) = alive(&mut child, system, dir) {
            break Err(e);
        }
        let got = records(&consumer, &t.results, parts)?;
        if got > 0 && first.is_none() {
            first = Some((Instant::now(), got, process_cpu_s(child.id(), false).unwrap_or(0.0)));
        }
        if got >= n {
            let (at, n0, cpu0) = first.unwrap_or((started, 0, 0.0));
            let total_cpu_s = process_cpu_s(child.id(), false).unwrap_or(0.0);
            let cpu = total_cpu_s - cpu0;
            let steady_s = at.elapsed().as_secs_f64();
            let measured = (n - n0) as f64;
            break Ok(Throughput {
                results_per_s: measured / steady_s,
                steady_s,
                cpu_s: cpu,
                per_cpu_s: measured / cpu.max(0.01),
                start_s: at.duration_since(started).as_secs_f64(),
                total_s: started.elapsed().as_secs_f64(),
                total_cpu_s,
            });
        }
        if started.elapsed() > PHASE_MAX {
            break Err(anyhow::anyhow!("{}: {got} of {n} results after {PHASE_MAX:?}", system.label()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    terminate(&mut child, TERMINATE_GRACE);
    result
}

/// Latency of one system: p50 and p99 (ms) from an input produced to its result read, and how many.
#[derive(Debug, Clone, Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    measured: usize,
    offered_per_s: f64,
}

/// Produce `inputs` keyed by account to `topic`; returns when each chunk was handed over (µs), by id.
async fn produce(
    cfg: &Config,
    topic: &str,
    inputs: &[(RawEnvelope, PeerEvent)],
    rate_per_s: Option<u64>,
) -> anyhow::Result<HashMap<Uuid, i64>> {
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let tick = Duration::from_millis(10);
    let chunk = rate_per_s.map_or(20_000, |r| (r / 100).max(1) as usize);
    let mut sent = HashMap::with_capacity(inputs.len());
    let mut pending = Vec::new();
    for c in inputs.chunks(chunk) {
        let t0 = Instant::now();
        let emits: Vec<Emit> = c
            .iter()
            .map(|(env, e)| Emit {
                topic: topic.to_owned(),
                key: e.account.clone(),
                event_id: env.event_id,
                payload: serde_json::to_vec(env).unwrap_or_default(),
            })
            .collect();
        let now = chrono::Utc::now().timestamp_micros();
        sent.extend(c.iter().map(|(env, _)| (env.event_id, now)));
        if rate_per_s.is_some() {
            // Paced: the chunks' deliveries overlap (awaiting each would cap the rate at one round trip
            // per chunk).
            let p = producer.clone();
            pending.push(tokio::spawn(async move { produce_all(&p, &emits, Duration::from_secs(60)).await }));
            tokio::time::sleep(tick.saturating_sub(t0.elapsed())).await;
        } else {
            produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        }
    }
    for p in pending {
        p.await?.map_err(anyhow::Error::msg)?;
    }
    Ok(sent)
}

/// The input a result record answers (riverbank's are envelopes, the peer's plain records).
fn answered(payload: &[u8]) -> Option<(Uuid, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let body = if v.get("input_event_id").is_some() { v } else { v.get("payload")?.clone() };
    let id = body.get("input_event_id")?.as_str()?.parse().ok()?;
    Some((id, body))
}

/// (2) for one system: a warm-up, then `inputs` at `rate_per_s`; results read as they land.
async fn latency(
    cfg: &Config,
    o: &Options,
    system: System,
    t: &RunTopics,
    dir: &Path,
    inputs: &[(RawEnvelope, PeerEvent)],
) -> anyhow::Result<Latency> {
    let mut child = spawn(cfg, o, system, t, dir, &format!("{}-latency.log", system.label()))?;
    let r = async {
        let (warm, measured) = inputs.split_at(WARM_UP.min(inputs.len() / 2));
        produce(cfg, &t.input, warm, None).await?;
        let consumer = reader(&cfg.kafka)?;
        let parts = cfg.kafka.topic_partitions;
        let deadline = Instant::now() + Duration::from_secs(300);
        while records(&consumer, &t.results, parts)? < warm.len() as i64 {
            alive(&mut child, system, dir)?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: the warm-up's results never came",
                system.label()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Read every result from here on, noting when each lands.
        let starts = high_marks(&consumer, &t.results, parts)?;
        let (topic, expected) = (t.results.clone(), measured.len());
        let kcfg = cfg.kafka.clone();
        let wait =
            Duration::from_secs_f64(expected as f64 / o.rate_per_s.max(1) as f64) + Duration::from_secs(120);
        let tail = std::thread::spawn(move || -> anyhow::Result<HashMap<Uuid, i64>> {
            let c = reader(&kcfg)?;
            let mut tpl = TopicPartitionList::new();
            for (p, off) in starts.iter().enumerate() {
                tpl.add_partition_offset(&topic, p as i32, Offset::Offset(*off))?;
            }
            c.assign(&tpl)?;
            let mut landed = HashMap::with_capacity(expected);
            let deadline = Instant::now() + wait;
            while landed.len() < expected && Instant::now() < deadline {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let now = chrono::Utc::now().timestamp_micros();
                    if let Some((id, _)) = answered(m.payload().unwrap_or_default()) {
                        landed.entry(id).or_insert(now);
                    }
                }
            }
            Ok(landed)
        });
        let t0 = Instant::now();
        let sent = produce(cfg, &t.input, measured, Some(o.rate_per_s)).await?;
        let offered = measured.len() as f64 / t0.elapsed().as_secs_f64();
        let landed = tokio::task::spawn_blocking(move || tail.join())
            .await?
            .map_err(|_| anyhow::anyhow!("tail panicked"))??;
        let mut ms: Vec<f64> =
            landed.iter().filter_map(|(id, at)| Some((at - sent.get(id)?) as f64 / 1_000.0)).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        Ok(Latency {
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
            measured: ms.len(),
            offered_per_s: offered,
        })
    }
    .await;
    terminate(&mut child, TERMINATE_GRACE);
    r
}

/// What was on a system's output topics, by input event id, against the reference.
#[derive(Debug, Clone, Default, Serialize)]
struct Correctness {
    result_records: usize,
    audit_records: usize,
    /// Inputs with more than one result (or audit) record, and the records beyond the first.
    results_duplicated: usize,
    results_extra_records: usize,
    audit_duplicated: usize,
    /// Inputs with no result (or audit) record.
    results_missing: usize,
    audit_missing: usize,
    /// Inputs with a result other than the reference's (any of its copies).
    results_wrong: usize,
    /// Inputs whose duplicated results differ from each other.
    duplicates_inconsistent: usize,
    /// Late inputs the reference applies (behind their user's newest, within the allowance) whose
    /// result is missing or not the reference's.
    late_dropped: usize,
    late_inputs: usize,
    too_late_inputs: usize,
}

async fn read_topic(cfg: &Config, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let (kcfg, topic) = (cfg.kafka.clone(), topic.to_owned());
    let records = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&kcfg, &topic, usize::MAX, Duration::from_secs(600))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    Ok(records.into_iter().map(|r| r.payload).collect())
}

async fn correctness(cfg: &Config, t: &RunTopics, r: &Reference) -> anyhow::Result<Correctness> {
    let results = read_topic(cfg, &t.results).await?;
    let audit = read_topic(cfg, &t.audit).await?;
    let mut c = Correctness {
        result_records: results.len(),
        audit_records: audit.len(),
        late_inputs: r.late_applied.len(),
        too_late_inputs: r.too_late,
        ..Correctness::default()
    };
    let mut by_id: HashMap<Uuid, Vec<serde_json::Value>> = HashMap::new();
    for p in &results {
        if let Some((id, body)) = answered(p) {
            by_id.entry(id).or_default().push(body);
        }
    }
    let mut audit_by_id: HashMap<Uuid, usize> = HashMap::new();
    for p in &audit {
        if let Some((id, _)) = answered(p) {
            *audit_by_id.entry(id).or_default() += 1;
        }
    }
    let mut right: HashMap<Uuid, bool> = HashMap::new();
    for (id, want) in &r.results {
        let want = serde_json::to_value(want)?;
        match by_id.get(id) {
            None => c.results_missing += 1,
            Some(got) => {
                if got.len() > 1 {
                    c.results_duplicated += 1;
                    c.results_extra_records += got.len() - 1;
                    if got.iter().any(|g| g != &got[0]) {
                        c.duplicates_inconsistent += 1;
                    }
                }
                let ok = got.iter().all(|g| g == &want);
                if !ok {
                    c.results_wrong += 1;
                }
                right.insert(*id, ok);
            }
        }
        match audit_by_id.get(id) {
            None => c.audit_missing += 1,
            Some(&k) if k > 1 => c.audit_duplicated += 1,
            Some(_) => {}
        }
    }
    c.late_dropped = r.late_applied.iter().filter(|id| !right.get(id).copied().unwrap_or(false)).count();
    Ok(c)
}

/// (3) for one system: SIGKILL once half its results are on the broker, restart, let it finish.
async fn crash(
    cfg: &Config,
    o: &Options,
    system: System,
    t: &RunTopics,
    dir: &Path,
    n: i64,
) -> anyhow::Result<(i64, f64)> {
    let consumer = reader(&cfg.kafka)?;
    let parts = cfg.kafka.topic_partitions;
    let mut child = spawn(cfg, o, system, t, dir, &format!("{}-crash.log", system.label()))?;
    let deadline = Instant::now() + PHASE_MAX;
    let at_kill = loop {
        alive(&mut child, system, dir)?;
        let got = records(&consumer, &t.results, parts)?;
        if got >= n / 2 {
            child.kill()?; // SIGKILL
            child.wait()?;
            break got;
        }
        anyhow::ensure!(Instant::now() < deadline, "{}: {got} results before the kill", system.label());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let restarted = Instant::now();
    let mut child = spawn(cfg, o, system, t, dir, &format!("{}-crash.log", system.label()))?;
    let r = async {
        let (mut last, mut since) = (-1, Instant::now());
        loop {
            alive(&mut child, system, dir)?;
            let got = records(&consumer, &t.results, parts)?;
            if got != last {
                (last, since) = (got, Instant::now());
            } else if since.elapsed() > SETTLED && (got >= n || since.elapsed() > SETTLED * 8) {
                return Ok((at_kill, restarted.elapsed().as_secs_f64() - SETTLED.as_secs_f64()));
            }
            anyhow::ensure!(Instant::now() < deadline, "{}: {got} results after the restart", system.label());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    terminate(&mut child, TERMINATE_GRACE);
    r
}

/// The riverbank child: its job on the given topics until SIGTERM.
async fn job(cfg: &Config, o: &Options, prefix: &str) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    cfg.kafka.topic_prefix = prefix.to_owned();
    cfg.kafka.environments = vec![Environment::Live];
    let need = |v: &Option<String>, what: &str| v.clone().with_context(|| format!("--job-{what} is needed"));
    let p = PeerProcessor {
        input: need(&o.job_input, "input")?,
        results: need(&o.job_results, "results")?,
        audit: need(&o.job_audit, "audit")?,
    };
    let stop = riverbank_runtime::shutdown::on_signals();
    riverbank_runtime::process::run(&cfg, p, stop).await
}

fn ensure_run_topics(
    cfg: &Config,
    ts: &[&RunTopics],
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let mut names: Vec<String> =
        ts.iter().flat_map(|t| [t.input.clone(), t.results.clone(), t.audit.clone()]).collect();
    names.sort();
    names.dedup();
    let kcfg = cfg.kafka.clone();
    async move { riverbank_runtime::kafka::ensure_topics(&kcfg, &names).await.context("creating bench topics") }
}

fn fresh_prefix(name: &str) -> String {
    format!("{name}-{}.", Uuid::new_v4().simple())
}

/// `riverbank bench peer` (or, with `--job-prefix`, its riverbank child).
pub async fn peer(cfg: &Config, o: &Options) -> anyhow::Result<()> {
    if let Some(prefix) = &o.job_prefix {
        return job(cfg, o, prefix).await;
    }
    anyhow::ensure!(
        o.quix_python.exists(),
        "{} is missing: run bench/peers/quix/setup first",
        o.quix_python.display()
    );
    let m = print_machine();
    let dir = o.json.with_extension("d");
    std::fs::create_dir_all(&dir)?;
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let version = Command::new(&o.quix_python)
        .args(["-c", "import quixstreams; print(quixstreams.__version__)"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("riverbank: {build} build; peer: Quix Streams {version} (at-least-once: no Kafka transactions on this broker)");
    let n = o.events;
    let events = workload(n, o.users, 0x9ee7);
    let reference = reference(&events)?;
    let mut mix: HashMap<Status, usize> = HashMap::new();
    for r in reference.results.values() {
        *mix.entry(r.status).or_default() += 1;
    }
    let count = |s| mix.get(&s).copied().unwrap_or(0);
    println!(
        "workload: {n} inputs over {} users (one account each), keyed by account; {} accepted, {} refused (overdraft), {} too late (> {} min behind); {} late within the allowance",
        o.users,
        count(Status::Accepted),
        count(Status::Refused),
        count(Status::TooLate),
        LATENESS_MAX_MS / 60_000,
        reference.late_applied.len()
    );
    let systems = [System::Riverbank, System::Quix];

    // (1) Throughput, both on one input topic.
    let run = fresh_prefix("peer");
    let ts: Vec<RunTopics> = systems.iter().map(|&s| run_topics(&run, s)).collect();
    ensure_run_topics(cfg, &ts.iter().collect::<Vec<_>>()).await?;
    produce(cfg, &ts[0].input, &events, None).await?;
    println!("(1) {n} inputs on {}", ts[0].input);
    let mut tp = Vec::new();
    let mut clean = Vec::new();
    for (s, t) in systems.iter().zip(&ts) {
        let r = tokio::task::block_in_place(|| throughput(cfg, o, *s, t, &dir, n as i64))?;
        println!(
            "    {:<9} {:>9.0} results/s over {:.1} s (first result after {:.1} s), {:.1} CPU s = {:>9.0} results per CPU-second",
            s.label(), r.results_per_s, r.steady_s, r.start_s, r.cpu_s, r.per_cpu_s
        );
        println!(
            "              from its start: {:.1} s, {:.1} CPU s (start-up included)",
            r.total_s, r.total_cpu_s
        );
        let c = correctness(cfg, t, &reference).await?;
        println!(
            "              read back: {} results, {} missing, {} duplicated, {} wrong",
            c.result_records, c.results_missing, c.results_duplicated, c.results_wrong
        );
        tp.push(r);
        clean.push(c);
    }

    // (2) Latency at a fixed rate, each on a fresh topic.
    let lat_events = workload(o.latency_events + WARM_UP, o.users, 0x1a7e);
    let mut lat = Vec::new();
    for s in systems {
        let t = run_topics(&fresh_prefix("peerlat"), s);
        ensure_run_topics(cfg, &[&t]).await?;
        let l = latency(cfg, o, s, &t, &dir, &lat_events).await?;
        println!(
            "(2) {:<9} p50 {:>7.1} ms, p99 {:>7.1} ms input produced → result read, {} inputs at {:.0}/s",
            s.label(),
            l.p50_ms,
            l.p99_ms,
            l.measured,
            l.offered_per_s
        );
        lat.push(l);
    }

    // (3) A SIGKILL mid-run, both on one input topic.
    let mut crashed = Vec::new();
    if !o.no_crash {
        let run = fresh_prefix("peercrash");
        let ts: Vec<RunTopics> = systems.iter().map(|&s| run_topics(&run, s)).collect();
        ensure_run_topics(cfg, &ts.iter().collect::<Vec<_>>()).await?;
        produce(cfg, &ts[0].input, &events, None).await?;
        for (s, t) in systems.iter().zip(&ts) {
            let (at_kill, after_s) = crash(cfg, o, *s, t, &dir, n as i64).await?;
            let c = correctness(cfg, t, &reference).await?;
            println!(
                "(3) {:<9} SIGKILL at {at_kill} results, finished {after_s:.1} s after the restart: results {} duplicated ({} extra records, {} inconsistent), {} missing, {} wrong; audit {} duplicated, {} missing; late dropped {} of {}",
                s.label(), c.results_duplicated, c.results_extra_records, c.duplicates_inconsistent, c.results_missing, c.results_wrong, c.audit_duplicated, c.audit_missing, c.late_dropped, c.late_inputs
            );
            crashed.push((at_kill, after_s, c));
        }
    }

    print_table(&tp, &lat, &crashed);
    let per_system = |i: usize| {
        let (t, l, c) = (&tp[i], &lat[i], &clean[i]);
        let crash = crashed.get(i).map(
            |(k, a, c)| json!({"killed_at_results": k, "finished_after_restart_s": a, "correctness": c}),
        );
        json!({
            "throughput": {"results_per_s": t.results_per_s, "steady_s": t.steady_s, "first_result_after_s": t.start_s,
                "cpu_s": t.cpu_s, "results_per_cpu_s": t.per_cpu_s, "from_start_s": t.total_s,
                "from_start_cpu_s": t.total_cpu_s, "correctness": c},
            "latency": {"p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "measured": l.measured, "offered_per_s": l.offered_per_s},
            "crash": crash,
        })
    };
    let report = json!({
        "machine": m,
        "command": "riverbank --config deploy/local/riverbank.toml bench peer",
        "riverbank_build": build,
        "peer": {"name": "Quix Streams", "version": version, "processing_guarantee": "at-least-once"},
        "workload": {"events": n, "users": o.users, "latency_events": o.latency_events, "rate_per_s": o.rate_per_s,
            "accepted": count(Status::Accepted), "refused": count(Status::Refused), "too_late": count(Status::TooLate),
            "late_within_allowance": reference.late_applied.len(), "window_ms": WINDOW_MS, "lateness_max_ms": LATENESS_MAX_MS},
        "riverbank": per_system(0),
        "quix": per_system(1),
        "throughput_per_core_ratio": tp[0].per_cpu_s / tp[1].per_cpu_s,
    });
    write_report(&o.json, &report)
}

fn print_table(tp: &[Throughput], lat: &[Latency], crashed: &[(i64, f64, Correctness)]) {
    println!();
    println!("| measure | riverbank | Quix Streams | riverbank / Quix |");
    println!("|---|---|---|---|");
    let row = |name: &str, a: f64, b: f64| println!("| {name} | {a:.0} | {b:.0} | {:.2} |", a / b);
    row("results/s (wall)", tp[0].results_per_s, tp[1].results_per_s);
    println!("| CPU seconds | {:.1} | {:.1} | |", tp[0].cpu_s, tp[1].cpu_s);
    row("results per CPU-second (per core)", tp[0].per_cpu_s, tp[1].per_cpu_s);
    println!(
        "| latency p50 / p99 (ms) | {:.1} / {:.1} | {:.1} / {:.1} | |",
        lat[0].p50_ms, lat[0].p99_ms, lat[1].p50_ms, lat[1].p99_ms
    );
    if let [(_, _, a), (_, _, b)] = crashed {
        let pair = |f: fn(&Correctness) -> usize| format!("| {} | {} |", f(a), f(b));
        println!("| after SIGKILL: inputs with duplicated results {} |", pair(|c| c.results_duplicated));
        println!("| after SIGKILL: inputs with duplicated audit records {} |", pair(|c| c.audit_duplicated));
        println!(
            "| after SIGKILL: inputs missing a result / audit {} / {} | {} / {} | |",
            a.results_missing, a.audit_missing, b.results_missing, b.audit_missing
        );
        println!("| after SIGKILL: results not the reference's {} |", pair(|c| c.results_wrong));
        println!("| after SIGKILL: late events dropped {} |", pair(|c| c.late_dropped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: u32, kind: Kind, amount_minor: i64, ts_ms: i64) -> PeerEvent {
        PeerEvent { account: format!("acct-{user}"), user: format!("user-{user}"), kind, amount_minor, ts_ms }
    }

    fn apply(s: &mut PeerState, i: u32, e: PeerEvent) -> PeerResult {
        step(s, riverbank_schemas::derived_id(&["t", &i.to_string()]), &e).expect("applies")
    }

    #[test]
    fn a_debit_beyond_the_balance_is_refused_and_changes_nothing() {
        let mut s = PeerState::new();
        let r = apply(&mut s, 0, ev(1, Kind::Debit, 100, 0));
        assert_eq!((r.status, r.balance_minor, r.velocity_minor), (Status::Refused, 0, 0));
        apply(&mut s, 1, ev(1, Kind::Credit, 1_000, 1));
        let r = apply(&mut s, 2, ev(1, Kind::Debit, 1_001, 2));
        assert_eq!((r.status, r.balance_minor), (Status::Refused, 1_000));
        let r = apply(&mut s, 3, ev(1, Kind::Debit, 1_000, 3));
        assert_eq!((r.status, r.balance_minor, r.velocity_minor), (Status::Accepted, 0, 1_000));
        assert!(step(&mut s, Uuid::nil(), &ev(1, Kind::Credit, 0, 4)).is_err(), "no zero amounts");
    }

    #[test]
    fn the_velocity_is_the_sum_of_accepted_debits_over_the_hour_before_the_event() {
        let mut s = PeerState::new();
        apply(&mut s, 0, ev(1, Kind::Credit, 10_000, 0));
        apply(&mut s, 1, ev(1, Kind::Debit, 100, 1_000));
        apply(&mut s, 2, ev(1, Kind::Debit, 200, 1_800_000));
        let r = apply(&mut s, 3, ev(1, Kind::Debit, 300, WINDOW_MS + 1_000));
        assert_eq!(r.velocity_minor, 500, "the debit at 1 s left the window at exactly one hour");
        let r = apply(&mut s, 4, ev(2, Kind::Credit, 1, WINDOW_MS + 2_000));
        assert_eq!(r.velocity_minor, 0, "another user's window");
    }

    #[test]
    fn late_events_within_the_allowance_count_in_their_own_window_and_older_ones_are_refused() {
        let mut s = PeerState::new();
        apply(&mut s, 0, ev(1, Kind::Credit, 10_000, 0));
        apply(&mut s, 1, ev(1, Kind::Debit, 100, WINDOW_MS));
        apply(&mut s, 2, ev(1, Kind::Debit, 200, 2 * WINDOW_MS));
        // Five minutes late: applied; its window is the hour before its own time.
        let r = apply(&mut s, 3, ev(1, Kind::Debit, 50, 2 * WINDOW_MS - 300_000));
        assert_eq!((r.status, r.balance_minor, r.velocity_minor), (Status::Accepted, 9_650, 50 + 100));
        let r = apply(&mut s, 4, ev(1, Kind::Debit, 1, 2 * WINDOW_MS + 1));
        assert_eq!(r.velocity_minor, 200 + 50 + 1, "the late debit counts in later windows");
        // Beyond the allowance: refused as too late, nothing changes.
        let r = apply(&mut s, 5, ev(1, Kind::Credit, 7, 2 * WINDOW_MS - LATENESS_MAX_MS - 1));
        assert_eq!((r.status, r.balance_minor), (Status::TooLate, 9_649));
        assert_eq!(apply(&mut s, 6, ev(1, Kind::Credit, 1, 2 * WINDOW_MS + 2)).balance_minor, 9_650);
    }

    #[test]
    fn the_processor_emits_a_result_and_an_audit_record_keyed_by_account_and_replays_identically() {
        use riverbank_schemas::state::{Encoded, State as _};
        let p = PeerProcessor { input: "i".into(), results: "r".into(), audit: "a".into() };
        let inputs = workload(300, 5, 3);
        let at = InputRef::log("i", 0, 0, Environment::Live);
        let mut s = PeerState::new();
        let mut outs = Vec::new();
        for (env, _) in &inputs[..150] {
            outs.push(p.apply(&mut s, &at, env.clone()));
        }
        let snap: Vec<(String, Encoded)> =
            s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
        let mut restored = PeerState::restore(&snap).expect("restores");
        let reference = reference(&inputs).unwrap();
        for (env, e) in &inputs[150..] {
            let Verdict::Emit(a) = p.apply(&mut s, &at, env.clone()) else { panic!("emits") };
            assert_eq!(
                p.apply(&mut restored, &at, env.clone()),
                Verdict::Emit(a.clone()),
                "restored state differs"
            );
            assert_eq!((a.len(), a[0].topic.as_str(), a[1].topic.as_str()), (2, "r", "a"));
            assert!(a.iter().all(|o| o.key == e.account));
            let (id, body) = answered(&a[0].payload).expect("a result");
            assert_eq!(body, serde_json::to_value(&reference.results[&id]).unwrap());
        }
        assert!(matches!(outs[0], Verdict::Emit(_)));
        let mut bad = inputs[0].0.clone();
        bad.payload = json!({"account": "x"});
        assert!(matches!(p.apply(&mut s, &at, bad), Verdict::Poison(_)));
    }
}
