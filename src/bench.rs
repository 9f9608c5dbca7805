//! `riverbank bench transfers`: throughput and latency figures, printed, never asserted.
//! (1) `apply` alone on one core; (2) the transfers processor on the real broker with checkpointing;
//! (3) a plain consume→produce passthrough over the same broker and input topic, as the ceiling.
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_processors::{TransfersLimits, TransfersProcessor};
use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_runtime::{CancellationToken, Config};
use riverbank_schemas::processor::{InputRef, Processor, Verdict, Via};
use riverbank_schemas::processor::{Output, Spec};
use riverbank_schemas::{Environment, RawEnvelope, Topics};

use crate::workload::transfer_inputs;

/// A stateless processor that forwards every input unchanged: the loop's ceiling on this broker.
/// With `copies`, it writes for each input as many records as the transfers processor writes for it
/// (copies of the input under ids derived from it): the ceiling for the same write volume, where the plain
/// passthrough writes one record per input and transfers about 2.5.
pub(crate) struct Passthrough {
    pub(crate) output: String,
    /// Records the transfers processor writes for each input (by input event id).
    pub(crate) copies: Option<HashMap<uuid::Uuid, usize>>,
}

impl Processor for Passthrough {
    type State = ();
    fn name(&self) -> &'static str {
        if self.copies.is_some() {
            "passthrough-fanned"
        } else {
            "passthrough"
        }
    }
    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            outputs: vec![Output::new(self.output.clone(), &[])],
            stateful: false,
            ..Spec::reading(topics.transfer_inputs(env))
        }
    }
    fn examples(&self, _: Environment) -> Vec<RawEnvelope> {
        Vec::new()
    }
    fn apply(&self, _: &mut (), _: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let Some(copies) = &self.copies else { return forward(&self.output, input) };
        let n = copies.get(&input.event_id).copied().unwrap_or(1);
        let payload = serde_json::to_vec(&input).unwrap_or_default();
        let id = input.event_id.to_string();
        Verdict::Emit(
            (0..n)
                .map(|i| Emit {
                    topic: self.output.clone(),
                    key: input.tenant_id.clone(),
                    event_id: riverbank_schemas::derived_id(&[&id, "copy", &i.to_string()]),
                    payload: payload.clone(),
                })
                .collect(),
        )
    }
}

/// The passthrough's one rule: the input, unchanged, to `output`.
fn forward(output: &str, input: RawEnvelope) -> Verdict {
    let payload = serde_json::to_vec(&input).unwrap_or_default();
    Verdict::Emit(vec![Emit {
        topic: output.to_owned(),
        key: input.tenant_id,
        event_id: input.event_id,
        payload,
    }])
}

/// [`Passthrough`] behind a router: it reads a log of its own that its router fills from the inputs
/// `like` names (routed, broadcast and ticks, as a real processor's spec says them), forwards each
/// input unchanged and keeps no state. The ceiling of router + loop for a routed processor.
pub(crate) struct RoutedPassthrough {
    pub(crate) output: String,
    pub(crate) like: fn(&Topics, Environment) -> Spec,
}

impl Processor for RoutedPassthrough {
    type State = ();
    fn name(&self) -> &'static str {
        "passthrough-routed"
    }
    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        let like = (self.like)(topics, env);
        Spec {
            log: topics.log(env, "passthrough-routed"),
            routed: like.routed,
            broadcast: like.broadcast,
            ticks: like.ticks,
            outputs: vec![Output::new(self.output.clone(), &[])],
            stateful: false,
        }
    }
    fn examples(&self, _: Environment) -> Vec<RawEnvelope> {
        Vec::new()
    }
    fn apply(&self, _: &mut (), _: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        forward(&self.output, input)
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The median of some runs' figures (any order).
pub(crate) fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    percentile(&sorted, 0.5)
}

/// The machine, for a report.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    serde_json::json!({"cpu": model, "cores": cores, "os": std::env::consts::OS})
}

/// Print the machine line every bench report starts with; returns [`machine`].
pub(crate) fn print_machine() -> serde_json::Value {
    let m = machine();
    println!(
        "machine: {} cores ({}); shared with other work while measured",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?")
    );
    m
}

/// Write a JSON report to `path` (its directory created) and say where it went.
pub(crate) fn write_report(path: &std::path::Path, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?).with_context(|| path.display().to_string())?;
    println!("report: {}", path.display());
    Ok(())
}

/// Records produced per call (below the producer's queue limit).
const PRODUCE_CHUNK: usize = 20_000;

/// Produce `inputs` as ingest or a processor would: each to `topic_of` it, keyed by its tenant.
pub(crate) async fn produce_to(
    cfg: &Config,
    inputs: &[RawEnvelope],
    topic_of: impl Fn(&RawEnvelope) -> String,
) -> anyhow::Result<()> {
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    for chunk in inputs.chunks(PRODUCE_CHUNK) {
        let emits: Vec<Emit> = chunk
            .iter()
            .map(|e| Emit {
                topic: topic_of(e),
                key: e.tenant_id.clone(),
                event_id: e.event_id,
                payload: serde_json::to_vec(e).unwrap_or_default(),
            })
            .collect();
        produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// How long to wait for a router to copy its sources, or to write its first ticks.
const ROUTER_WAIT: Duration = Duration::from_secs(120);

/// Wait until the router of `processor` has copied (and committed) everything on `sources`.
pub(crate) async fn router_caught_up(
    cfg: &Config,
    processor: &str,
    sources: &[String],
) -> anyhow::Result<()> {
    let kcfg = cfg.kafka.clone();
    let group = riverbank_runtime::kafka::topics(&kcfg).group(&format!("router.{processor}"));
    let (sources, processor) = (sources.to_vec(), processor.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kcfg.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let deadline = Instant::now() + ROUTER_WAIT;
        loop {
            let mut tpl = TopicPartitionList::new();
            let mut highs = Vec::new();
            for t in &sources {
                for p in 0..kcfg.topic_partitions {
                    tpl.add_partition(t, p);
                    highs.push(consumer.fetch_watermarks(t, p, Duration::from_secs(5))?.1);
                }
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
            let done = committed.elements().iter().zip(&highs).all(|(e, high)| match e.offset() {
                Offset::Offset(o) => o >= *high,
                _ => *high == 0,
            });
            if done {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "router of {processor} not caught up after {ROUTER_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// Wait until every partition of `log` holds a tick (a processor with ticks then has a clock: inputs
/// copied into the log from now on are applied after it).
pub(crate) async fn log_ticked(cfg: &Config, log: &str) -> anyhow::Result<()> {
    let (kcfg, log) = (cfg.kafka.clone(), log.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let deadline = Instant::now() + ROUTER_WAIT;
        loop {
            let records =
                riverbank_runtime::kafka::read_all(&kcfg, &log, usize::MAX, Duration::from_secs(30))
                    .map_err(anyhow::Error::msg)?;
            let ticked: std::collections::HashSet<i32> = records
                .iter()
                .filter(|r| r.header(riverbank_runtime::produce::TICK_HEADER).is_some())
                .map(|r| r.partition)
                .collect();
            if ticked.len() >= usize::try_from(kcfg.topic_partitions).unwrap_or(1) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no tick in every partition of {log} after {ROUTER_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}

/// Records a topic holds, over its partitions (fresh topics start at 0).
pub(crate) async fn records_on(cfg: &Config, topic: &str) -> anyhow::Result<i64> {
    let (kcfg, topic) = (cfg.kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &kcfg.brokers).create()?;
        Ok(total_high(&consumer, &topic, kcfg.topic_partitions))
    })
    .await?
}

/// One record of a processor's log as a benchmark applies it alone: an input and how the router
/// copied it, or a tick.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogItem {
    Routed(RawEnvelope),
    Broadcast(RawEnvelope),
    Tick(i64),
}

/// One partition applied alone, as the engine applies its log (`runtime/src/engine.rs`): a tick moves
/// the clock (never back) and fires the timers due, at most `TIMERS_PER_TICK_MAX` per tick; an input
/// is applied at the clock. The processor is called directly: no envelope parsing, no I/O.
pub(crate) struct Alone<P: Processor> {
    pub(crate) state: P::State,
    pub(crate) clock_ms: i64,
    offset: i64,
}

impl<P: Processor> Alone<P> {
    pub(crate) fn new() -> Self {
        Alone { state: <P::State as riverbank_schemas::state::State>::empty(), clock_ms: 0, offset: 0 }
    }

    /// Apply `items` in order; returns the outputs and how many inputs (or timers) were dead-lettered.
    pub(crate) fn apply(&mut self, p: &P, items: Vec<LogItem>) -> (Vec<Emit>, usize) {
        use riverbank_schemas::state::State as _;
        let (mut out, mut poisoned) = (Vec::with_capacity(items.len() * 2), 0);
        for item in items {
            self.offset += 1;
            let offset = self.offset;
            let (via, input) = match item {
                LogItem::Tick(ms) => {
                    self.clock_ms = self.clock_ms.max(ms);
                    let at = InputRef {
                        now_ms: self.clock_ms,
                        ..InputRef::log("bench.log", 0, offset, Environment::Live)
                    };
                    for _ in 0..riverbank_runtime::engine::TIMERS_PER_TICK_MAX {
                        let Some(t) = self.state.timers().and_then(|t| t.pop_due(self.clock_ms)) else {
                            break;
                        };
                        match p.on_timer(&mut self.state, &at, t) {
                            Verdict::Emit(e) => out.extend(e),
                            Verdict::Poison(_) => poisoned += 1,
                        }
                    }
                    continue;
                }
                LogItem::Routed(e) => (Via::Routed { topic: "bench.routed", partition: 0, offset }, e),
                LogItem::Broadcast(e) => {
                    (Via::Broadcast { topic: "bench.broadcast", partition: 0, offset }, e)
                }
            };
            let at = InputRef {
                now_ms: self.clock_ms,
                via,
                ..InputRef::log("bench.log", 0, offset, Environment::Live)
            };
            match p.apply(&mut self.state, &at, input) {
                Verdict::Emit(e) => out.extend(e),
                Verdict::Poison(_) => poisoned += 1,
            }
        }
        (out, poisoned)
    }
}

/// Outcomes counted by a label (`quote issued (fixed sell)`, `fee booked`, ...): the mix of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcomes(pub(crate) std::collections::BTreeMap<String, u64>);

impl Outcomes {
    pub(crate) fn add(&mut self, label: impl Into<String>) {
        *self.0.entry(label.into()).or_default() += 1;
    }
    pub(crate) fn get(&self, label: &str) -> u64 {
        self.0.get(label).copied().unwrap_or(0)
    }
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }
    /// `label n (share%)`, one per label, over all counted.
    pub(crate) fn lines(&self) -> Vec<String> {
        let total = self.total().max(1) as f64;
        self.0.iter().map(|(k, n)| format!("{k}: {n} ({:.2}%)", *n as f64 / total * 100.0)).collect()
    }
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self.0)
    }
    /// The labels whose counts differ from `other`'s: `label: ours vs theirs`.
    pub(crate) fn differences(&self, other: &Outcomes) -> Vec<String> {
        let mut labels: Vec<&String> = self.0.keys().chain(other.0.keys()).collect();
        labels.sort();
        labels.dedup();
        labels
            .into_iter()
            .filter(|l| self.get(l) != other.get(l))
            .map(|l| format!("{l}: {} vs {}", self.get(l), other.get(l)))
            .collect()
    }
}

/// `inputs` as a log holds them: those `broadcast` says copied as broadcast, the rest routed, and a
/// tick every `every` records, the clock moving on from `clock_ms` by `step_ms` each time.
pub(crate) fn ticked<'a>(
    inputs: impl Iterator<Item = &'a RawEnvelope>,
    broadcast: fn(&RawEnvelope) -> bool,
    clock_ms: i64,
    every: usize,
    step_ms: i64,
) -> Vec<LogItem> {
    let mut clock = clock_ms;
    let mut items = Vec::new();
    for (n, e) in inputs.enumerate() {
        if n > 0 && n % every.max(1) == 0 {
            clock = clock.saturating_add(step_ms);
            items.push(LogItem::Tick(clock));
        }
        items.push(if broadcast(e) { LogItem::Broadcast(e.clone()) } else { LogItem::Routed(e.clone()) });
    }
    items
}

/// The stable code a reason starts with (`unknown_pair: no rate ...` → `unknown_pair`).
pub(crate) fn reason_code(reason: Option<&str>) -> &str {
    reason.map_or("", |r| r.split(':').next().unwrap_or(r).trim())
}

/// The source of the benchmarks' generated inputs.
pub(crate) const SOURCE: &str = "riverbank.bench";

/// A generated tenant: `bank-07`.
pub(crate) fn tenant(t: usize) -> String {
    format!("bank-{t:02}")
}

/// The instant `ms` milliseconds after the epoch.
pub(crate) fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn currency(code: &str) -> anyhow::Result<riverbank_schemas::Currency> {
    riverbank_schemas::Currency::from_code(code).map_err(|e| anyhow::anyhow!("{code}: {e}"))
}

/// A live input envelope of bench `bench` with an id derived from `parts` (the same workload has the
/// same ids).
pub(crate) fn envelope<P: serde::Serialize>(
    bench: &str,
    parts: &[&str],
    event_type: &str,
    tenant: &str,
    at_ms: i64,
    payload: P,
) -> anyhow::Result<RawEnvelope> {
    let mut id_parts = vec![bench];
    id_parts.extend_from_slice(parts);
    let id = riverbank_schemas::derived_id(&id_parts);
    let payload = serde_json::to_value(payload)?;
    Ok(riverbank_schemas::Envelope::new(
        id,
        event_type,
        tenant,
        Environment::Live,
        at(at_ms),
        SOURCE,
        payload,
    ))
}

/// A size in whole units, mostly small: 70 % up to 200, 20 % up to 1,000, 8 % up to 5,000, 2 % up to
/// 50,000.
pub(crate) fn units_drawn(rng: &mut crate::workload::Lcg) -> i64 {
    (match rng.below(100) {
        0..70 => 1 + rng.below(200),
        70..90 => 200 + rng.below(800),
        90..98 => 1_000 + rng.below(4_000),
        _ => 5_000 + rng.below(45_000),
    }) as i64
}

/// Inputs laid out in stream order, where a follow-up (the next status of a transfer, a quote's
/// conversion) is due a number of steps later.
#[derive(Default)]
pub(crate) struct Stream {
    pub(crate) out: Vec<RawEnvelope>,
    pending: std::collections::BTreeMap<(usize, usize), RawEnvelope>,
    seq: usize,
}

impl Stream {
    /// `e` once step `due` is reached (after those already due then).
    pub(crate) fn later(&mut self, due: usize, e: RawEnvelope) {
        self.seq += 1;
        self.pending.insert((due, self.seq), e);
    }
    /// Everything due by step `k`, in order.
    pub(crate) fn release(&mut self, k: usize) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > k {
                break;
            }
            self.out.push(entry.remove());
        }
    }
    /// The stream with everything still pending at its end.
    pub(crate) fn finish(mut self) -> Vec<RawEnvelope> {
        self.release(usize::MAX);
        self.out
    }
}

/// The outcomes among `outputs` on `topic`, each counted by `count`.
pub(crate) fn outcomes_on<'a>(
    outputs: impl Iterator<Item = &'a Emit>,
    topic: &str,
    count: fn(&mut Outcomes, &[u8]),
) -> Outcomes {
    let mut mix = Outcomes::default();
    for o in outputs.filter(|o| o.topic == topic) {
        count(&mut mix, &o.payload);
    }
    mix
}

/// Every record of `topic` (at most `max`) read back, each counted by `count`.
pub(crate) async fn outcomes_read(
    cfg: &Config,
    topic: &str,
    max: usize,
    count: fn(&mut Outcomes, &[u8]),
) -> anyhow::Result<Outcomes> {
    let (kcfg, topic) = (cfg.kafka.clone(), topic.to_owned());
    let records = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&kcfg, &topic, max, Duration::from_secs(300))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let mut mix = Outcomes::default();
    for r in &records {
        count(&mut mix, &r.payload);
    }
    Ok(mix)
}

/// A copy of `base` on fresh topics (prefix `{name}-{uuid}.`), live only.
pub(crate) fn fresh_config(base: &Config, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.kafka.topic_prefix = format!("{name}-{}.", uuid::Uuid::new_v4().simple());
    cfg.kafka.environments = vec![Environment::Live];
    cfg
}

/// Creates the topics `p` runs on in `env` (its log, inputs and outputs) and the routed passthrough's log.
pub(crate) async fn ensure_processor_topics<P: Processor>(
    cfg: &Config,
    p: &P,
    topics: &Topics,
    env: Environment,
) -> anyhow::Result<()> {
    let specs = vec![(env, p.spec(topics, env))];
    let mut all = riverbank_runtime::process::topics_of(cfg, p.name(), &specs);
    all.push(topics.log(env, "passthrough-routed"));
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &all).await.context("creating bench topics")
}

/// Prints the routed passthrough's ceiling, the ratio of the processor's `inputs_per_s` to it, and
/// whether the outcomes on the broker are those of apply alone; returns the differences.
pub(crate) fn print_against_ceiling(
    inputs_per_s: f64,
    passthrough_per_s: f64,
    passthrough_steady_s: f64,
    alone: &Outcomes,
    broker: &Outcomes,
) -> Vec<String> {
    println!("    routed passthrough ceiling: {passthrough_per_s:>9.0} inputs/s (router + loop, no state; steady state over {passthrough_steady_s:.2} s)");
    println!("    ratio:                      {:>9.2}", inputs_per_s / passthrough_per_s);
    let diff = alone.differences(broker);
    if diff.is_empty() {
        println!("    outcomes on the broker: identical to (1) ({} records read back)", broker.total());
    } else {
        println!("    outcomes on the broker DIFFER from (1) (apply alone vs broker): {}", diff.join("; "));
    }
    diff
}

fn total_high(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .filter_map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())
        .map(|(_, h)| h)
        .sum()
}

/// Run a processor until `topic` holds `expected` messages. Returns the share of the work done after
/// the first output was seen and the seconds it took (steady state: start-up and group join excluded).
pub(crate) async fn drain<P: Processor>(
    cfg: &Config,
    p: P,
    topic: &str,
    expected: i64,
) -> anyhow::Result<(f64, f64)> {
    let (measured, secs) = drain_fed(cfg, p, topic, 0, expected, async { Ok(()) }).await?;
    Ok((measured as f64 / expected as f64, secs))
}

/// Run a processor until `topic` holds `expected` messages, `feed` running beside it (inputs produced
/// while it works). `topic` held `baseline` before. Returns the messages that landed after the first
/// one past `baseline` was seen, and the seconds that took (steady state: start-up, restore and group
/// join excluded).
pub(crate) async fn drain_fed<P: Processor>(
    cfg: &Config,
    p: P,
    topic: &str,
    baseline: i64,
    expected: i64,
    feed: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(i64, f64)> {
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, p, s).await });
    let kcfg = cfg.kafka.clone();
    let topic = topic.to_owned();
    let abandon = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let abandoned = std::sync::Arc::clone(&abandon);
    let watch = tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, f64)> {
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &kcfg.brokers).create()?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<(Instant, i64)> = None;
        loop {
            let n = total_high(&consumer, &topic, kcfg.topic_partitions);
            if n > baseline && first.is_none() {
                first = Some((Instant::now(), n));
            }
            if n >= expected {
                let (at, n0) = first.unwrap_or((Instant::now(), baseline));
                return Ok((expected - n0, at.elapsed().as_secs_f64()));
            }
            anyhow::ensure!(Instant::now() < deadline, "only {n} of {expected} outputs after 600 s");
            anyhow::ensure!(
                !abandoned.load(std::sync::atomic::Ordering::Relaxed),
                "feeding the inputs failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let fed = feed.await;
    if fed.is_err() {
        abandon.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let watched = watch.await;
    stop.cancel();
    let ran = task.await;
    fed?;
    let elapsed = watched??;
    ran??;
    Ok(elapsed)
}

/// Produce inputs at `rate_per_s` while the processor runs; latency = output CreateTime − input CreateTime.
async fn paced_latency<P: Processor>(
    cfg: &Config,
    p: P,
    inputs: &[RawEnvelope],
    output_topic: &str,
    rate_per_s: u64,
    cause: fn(&[u8]) -> Option<uuid::Uuid>,
) -> anyhow::Result<(f64, f64, usize)> {
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, p, s).await });
    tokio::time::sleep(Duration::from_secs(2)).await; // join the group first
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let start_offsets = high_marks(&cfg.kafka, output_topic)?;
    let tick = Duration::from_millis(10);
    let per_tick = (rate_per_s / 100).max(1) as usize;
    let mut sent_at: HashMap<uuid::Uuid, i64> = HashMap::new();
    for chunk in inputs.chunks(per_tick) {
        let t0 = Instant::now();
        let emits = crate::workload::input_emits(
            &riverbank_runtime::kafka::topics(&cfg.kafka),
            Environment::Live,
            chunk,
        );
        let now_ms = chrono::Utc::now().timestamp_millis();
        for e in chunk {
            sent_at.entry(e.event_id).or_insert(now_ms);
        }
        produce_all(&producer, &emits, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
        tokio::time::sleep(tick.saturating_sub(t0.elapsed())).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    task.await??;
    let kcfg = cfg.kafka.clone();
    let topic = output_topic.to_owned();
    let latencies = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kcfg.brokers)
            .set("group.id", "bench-reader-unused")
            .set("enable.partition.eof", "true")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in start_offsets.iter().enumerate() {
            tpl.add_partition_offset(&topic, p as i32, Offset::Offset(*o))?;
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let mut eofs = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while eofs < start_offsets.len() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let (Some(ts), Some(id)) =
                        (m.timestamp().to_millis(), cause(m.payload().unwrap_or_default()))
                    else {
                        continue;
                    };
                    if let Some(sent) = sent_at.get(&id) {
                        out.push((ts - sent) as f64);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
                _ => {}
            }
        }
        Ok(out)
    })
    .await??;
    let mut sorted = latencies;
    sorted.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&sorted, 0.5), percentile(&sorted, 0.99), sorted.len()))
}

fn high_marks(kcfg: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kcfg.brokers).create()?;
    (0..kcfg.topic_partitions)
        .map(|p| Ok(consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?.1))
        .collect()
}

fn status_cause(payload: &[u8]) -> Option<uuid::Uuid> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v["payload"]["cause_event_id"].as_str()?.parse().ok()
}

fn passthrough_cause(payload: &[u8]) -> Option<uuid::Uuid> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v["event_id"].as_str()?.parse().ok()
}

/// `riverbank bench transfers`.
pub async fn transfers(
    cfg: &Config,
    tenants: usize,
    per_tenant: usize,
    rate_per_s: u64,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..tenants).map(|i| format!("bench-tenant-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let inputs = transfer_inputs(&refs, per_tenant, 1);
    let n = inputs.len();
    println!("workload: {n} transfer inputs over {tenants} tenants (deposits, withdrawals, internal, payouts; reviews, blocks, failures, retries, duplicates)");

    // (1) apply alone, one core.
    let topics = Topics::new("bench.");
    let p = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let at = InputRef::log("bench", 0, 0, Environment::Live);
    let mut apply_rates = Vec::new();
    let mut outputs_per_run = 0usize;
    for _ in 0..5 {
        let batch = inputs.clone();
        let mut state = Default::default();
        let t0 = Instant::now();
        let mut outputs = 0usize;
        for e in batch {
            if let Verdict::Emit(o) = p.apply(&mut state, &at, e) {
                outputs += o.len();
            }
        }
        apply_rates.push(n as f64 / t0.elapsed().as_secs_f64());
        outputs_per_run = outputs;
    }
    apply_rates.sort_by(|a, b| a.total_cmp(b));
    println!("(1) apply alone:            median {:>10.0} inputs/s over 5 runs ({outputs_per_run} outputs per run)", apply_rates[2]);

    // (2) and (3) on the broker, same input topic, one run.
    let mut cfg = cfg.clone();
    cfg.kafka.topic_prefix = format!("bench-{}.", uuid::Uuid::new_v4().simple());
    cfg.kafka.environments = vec![Environment::Live];
    let topics = riverbank_runtime::kafka::topics(&cfg.kafka);
    let passthrough_topic = format!("{}live.bench.passthrough", cfg.kafka.topic_prefix);
    let mut all = riverbank_runtime::kafka::all_topics(&cfg.kafka);
    all.push(passthrough_topic.clone());
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &all).await.context("creating bench topics")?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let emits = crate::workload::input_emits(&topics, Environment::Live, &inputs);
    produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    let transfers = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let status_topic = topics.transfer_status(Environment::Live);
    let (status_count, copies) = {
        let mut state = Default::default();
        let mut count = 0i64;
        let mut copies = HashMap::new();
        for e in &inputs {
            if let Verdict::Emit(o) = transfers.apply(&mut state, &at, e.clone()) {
                count += o.iter().filter(|x| x.topic == status_topic).count() as i64;
                *copies.entry(e.event_id).or_insert(0) += o.len();
            }
        }
        (count, copies)
    };
    let fanned_total: i64 = inputs.iter().map(|e| copies.get(&e.event_id).copied().unwrap_or(1) as i64).sum();
    let (share_proc, t_proc) = drain(&cfg, transfers, &status_topic, status_count).await?;
    let (share_pass, t_pass) = drain(
        &cfg,
        Passthrough { output: passthrough_topic.clone(), copies: None },
        &passthrough_topic,
        n as i64,
    )
    .await?;
    let (r_proc, r_pass) = (n as f64 * share_proc / t_proc, n as f64 * share_pass / t_pass);
    println!("(2) transfers on broker:    {r_proc:>10.0} inputs/s (checkpoint after every batch; steady state over {t_proc:.2} s)");
    println!("(3) passthrough on broker:  {r_pass:>10.0} inputs/s (steady state over {t_pass:.2} s)");
    println!("    ratio (2)/(3):          {:>10.2}", r_proc / r_pass);
    let fanned_topic = format!("{}live.bench.fanned", cfg.kafka.topic_prefix);
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, std::slice::from_ref(&fanned_topic)).await?;
    let fanned = Passthrough { output: fanned_topic.clone(), copies: Some(copies) };
    let (share_fan, t_fan) = drain(&cfg, fanned, &fanned_topic, fanned_total).await?;
    let r_fan = n as f64 * share_fan / t_fan;
    println!("(3b) passthrough writing as many records per input as transfers ({:.2}): {r_fan:>8.0} inputs/s (steady state over {t_fan:.2} s)", fanned_total as f64 / n as f64);
    println!("    ratio (2)/(3b):         {:>10.2}", r_proc / r_fan);

    // Latency at a steady rate: fresh tenants (new transfers, new ids) on the same topic.
    let paced_names: Vec<String> = (0..tenants).map(|i| format!("paced-tenant-{i}")).collect();
    let paced_refs: Vec<&str> = paced_names.iter().map(String::as_str).collect();
    let paced = transfer_inputs(&paced_refs, (rate_per_s as usize * 10 / tenants / 5).max(1), 2);
    let transfers = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let (p50, p99, k) =
        paced_latency(&cfg, transfers, &paced, &status_topic, rate_per_s, status_cause).await?;
    println!("    transfers latency at {rate_per_s}/s: p50 {p50:.0} ms, p99 {p99:.0} ms (input produced → status event produced; {k} events)");
    let transfers_latency = serde_json::json!({"p50_ms": p50, "p99_ms": p99, "events": k});
    let paced = transfer_inputs(&paced_refs, (rate_per_s as usize * 10 / tenants / 5).max(1), 3);
    let (p50, p99, k) = paced_latency(
        &cfg,
        Passthrough { output: passthrough_topic.clone(), copies: None },
        &paced,
        &passthrough_topic,
        rate_per_s,
        passthrough_cause,
    )
    .await?;
    println!("    passthrough latency at {rate_per_s}/s: p50 {p50:.0} ms, p99 {p99:.0} ms ({k} events)");
    let report = serde_json::json!({
        "bench": "transfers",
        "machine": machine(),
        "workload": {"inputs": n, "tenants": tenants, "per_tenant": per_tenant, "outputs_per_apply_run": outputs_per_run},
        "apply_alone_inputs_per_s_median_of_5": apply_rates[2],
        "on_broker_inputs_per_s": {"transfers": r_proc, "passthrough": r_pass, "passthrough_fanned": r_fan},
        "ratio": {"transfers_over_passthrough": r_proc / r_pass, "transfers_over_fanned": r_proc / r_fan},
        "latency_at_rate": {"rate_per_s": rate_per_s, "transfers": transfers_latency, "passthrough": {"p50_ms": p50, "p99_ms": p99, "events": k}},
    });
    write_report(std::path::Path::new("target/bench/transfers.json"), &report)
}

/// Messages a sink has made durable: the sum of its stored next offsets (fresh topics start at 0).
async fn pg_landed(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let n: Option<i64> =
        sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM sink_offsets").fetch_one(pool).await?;
    Ok(n.unwrap_or(0))
}

async fn ch_landed(ch: &clickhouse::Client) -> anyhow::Result<i64> {
    Ok(ch
        .query("SELECT toInt64(sum(m)) FROM (SELECT argMax(next_offset, version) AS m FROM sink_positions GROUP BY topic, partition)")
        .fetch_one::<i64>()
        .await?)
}

/// Run a sink until `landed()` reaches `expected`. Returns the messages landed after the first
/// observation and the seconds that took (steady state: start-up and group join excluded).
async fn drain_sink<S, F, Fut>(cfg: &Config, store: S, expected: i64, landed: F) -> anyhow::Result<(i64, f64)>
where
    S: riverbank_runtime::sink::SinkStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move {
        riverbank_runtime::sink::run(&c, store, crate::registry::sink_inputs(&c), s).await
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let n = landed().await.unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= expected {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {n} of {expected} landed after 600 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (at, n0) = first.unwrap_or((Instant::now(), 0));
    let secs = at.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    Ok((expected - n0, secs))
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `riverbank bench sinks`: rows/s through each sink vs the bare rate for the same rows, and
/// produce → queryable latency at a steady rate.
pub async fn sinks(cfg: &Config, tenants: usize, per_tenant: usize, rate_per_s: u64) -> anyhow::Result<()> {
    use riverbank_sinks::clickhouse::{ChRow, ClickHouseSink};
    use riverbank_sinks::postgres::PostgresSink;

    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut cfg = cfg.clone();
    cfg.kafka.topic_prefix = format!("benchsink-{id}.");
    cfg.kafka.environments = vec![Environment::Live];
    let topics = riverbank_runtime::kafka::topics(&cfg.kafka);
    let sink_topics = crate::registry::sink_inputs(&cfg);
    // The processor's outputs for a workload, produced straight onto the sinks' input topics.
    let outputs = |seed: u64, per: usize| -> Vec<Emit> {
        let names: Vec<String> = (0..tenants).map(|i| format!("bench-tenant-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
        let at = InputRef::log("bench", 0, 0, Environment::Live);
        let mut state = Default::default();
        let mut out = Vec::new();
        for e in transfer_inputs(&refs, per, seed) {
            if let Verdict::Emit(o) = p.apply(&mut state, &at, e) {
                // What the sinks read (not the screening requests, which go to risk), less rejections.
                out.extend(o.into_iter().filter(|x| {
                    x.topic != topics.transfer_rejections(Environment::Live) && sink_topics.contains(&x.topic)
                }));
            }
        }
        out
    };
    let emits = outputs(1, per_tenant);
    let n = emits.len() as i64;

    // Fresh databases for the run.
    let admin = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await.context("postgres")?;
    let db = format!("riverbank_bench_{id}");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await?;
    let base = cfg.postgres.url.expose().clone();
    let url = match base.rsplit_once('/') {
        Some((b, _)) => format!("{b}/{db}"),
        None => anyhow::bail!("postgres.url has no database part"),
    };
    cfg.postgres.url = riverbank_runtime::Secret::new(url);
    cfg.clickhouse.database = format!("riverbank_bench_{id}");
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    riverbank_sinks::postgres::migrate(&pool).await?;
    riverbank_sinks::clickhouse::create(&cfg.clickhouse).await?;
    let ch = riverbank_runtime::stores::clickhouse_client(&cfg.clickhouse);
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &riverbank_runtime::kafka::all_topics(&cfg.kafka))
        .await?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    println!(
        "workload: {n} processor outputs (status events, ledger legs, balances) from {tenants} tenants; sinks.batch_rows_max = {}, batch_linger_ms = {}",
        cfg.sinks.batch_rows_max, cfg.sinks.batch_linger_ms
    );

    let (pg_measured, t_pg) =
        drain_sink(&cfg, PostgresSink::new(pool.clone()), n, || pg_landed(&pool)).await?;
    let pseudonym_key = riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?;
    let (ch_measured, t_ch) =
        drain_sink(&cfg, ClickHouseSink::new(&cfg.clickhouse, pseudonym_key), n, || ch_landed(&ch)).await?;

    // Bare rates for the same rows: COPY into same-shaped tables; the ClickHouse inserter with
    // pre-built rows into same-shaped tables.
    let mut rows = Vec::new();
    let mut ch_rows = Vec::new();
    for e in &emits {
        let (decoded, _) =
            riverbank_sinks::rows::decode(&e.topic, riverbank_schemas::Environment::Live, 0, 0, &e.payload)
                .map_err(anyhow::Error::msg)?;
        for r in decoded {
            ch_rows.extend(ChRow::from_row(&r, &pseudonym_key).map_err(anyhow::Error::msg)?);
            rows.push(r);
        }
    }
    let (mut status_csv, mut posting_csv, mut balance_csv) = (String::new(), String::new(), String::new());
    for r in &rows {
        use riverbank_sinks::rows::Row;
        match r {
            Row::Status(m, s) => status_csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                m.event_id,
                csv_field(&m.tenant_id),
                m.environment,
                csv_field(&s.transfer_id),
                s.previous.map(|p| p.as_str()).unwrap_or_default(),
                s.status.as_str(),
                s.version,
                s.reason.as_deref().map(csv_field).unwrap_or_default(),
                s.cause_event_id,
                m.occurred_at.to_rfc3339()
            )),
            Row::Posting(m, p) => posting_csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                m.event_id,
                p.posting_id,
                csv_field(&m.tenant_id),
                m.environment,
                csv_field(&p.transfer_id),
                p.phase.as_str(),
                csv_field(&p.account),
                p.amount_minor,
                p.currency,
                m.occurred_at.to_rfc3339()
            )),
            Row::Balance(m, b) => balance_csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&m.tenant_id),
                m.environment,
                csv_field(&b.account),
                b.currency,
                b.posted_minor,
                b.pending_debit_minor,
                b.pending_credit_minor,
                b.available_minor,
                b.version,
                m.occurred_at.to_rfc3339()
            )),
            Row::Audit(..)
            | Row::AuditCheckpoint(..)
            | Row::PersonalData(..)
            | Row::Rejection(..)
            | Row::RiskDecision(..)
            | Row::RiskRejection(..)
            | Row::User(..)
            | Row::KycRejection(..)
            | Row::FxRates(..)
            | Row::Quote(..)
            | Row::Conversion(..)
            | Row::FxRejection(..)
            | Row::Booking(..)
            | Row::Fee(..)
            | Row::Invoice(..)
            | Row::BillingRejection(..) => {}
        }
    }
    let mut conn = pool.acquire().await?;
    for (t, like) in [
        ("bare_status", "transfer_status_history"),
        ("bare_postings", "ledger_postings"),
        ("bare_balances", "account_balances"),
    ] {
        sqlx::query(&format!("CREATE TABLE {t} (LIKE {like})")).execute(&mut *conn).await?;
    }
    let started = Instant::now();
    for (t, csv) in
        [("bare_status", &status_csv), ("bare_postings", &posting_csv), ("bare_balances", &balance_csv)]
    {
        let mut copy = conn.copy_in_raw(&format!("COPY {t} FROM STDIN (FORMAT csv)")).await?;
        copy.send(csv.as_bytes()).await?;
        copy.finish().await?;
    }
    let t_copy = started.elapsed().as_secs_f64();
    drop(conn);
    for (t, like) in [
        ("bare_events", "events"),
        ("bare_transfer_facts", "transfer_facts"),
        ("bare_ledger_postings", "ledger_postings"),
    ] {
        ch.query(&format!("CREATE TABLE {t} AS {like}")).execute().await?;
    }
    let started = Instant::now();
    riverbank_sinks::clickhouse::insert_rows(&ch, &ch_rows, "bare_", Duration::from_secs(300))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_bare_ch = started.elapsed().as_secs_f64();
    let ch_n = ch_rows.len() as f64;

    // Every message is one Postgres row; in ClickHouse one `events` row plus one typed row (none for
    // balances).
    let ch_share = ch_n / n as f64;
    let (pg_rate, copy_rate) = (pg_measured as f64 / t_pg, rows.len() as f64 / t_copy);
    let (ch_rate, bare_ch_rate) = (ch_measured as f64 * ch_share / t_ch, ch_n / t_bare_ch);
    println!("postgres:   sink {pg_rate:>9.0} rows/s (steady state, {pg_measured} rows in {t_pg:.2} s)   COPY {copy_rate:>9.0} rows/s   ratio {:.2}", pg_rate / copy_rate);
    println!("clickhouse: sink {ch_rate:>9.0} rows/s (steady state over {t_ch:.2} s)   bare insert {bare_ch_rate:>9.0} rows/s   ratio {:.2}", ch_rate / bare_ch_rate);

    // Latency at a steady rate: both sinks running, messages produced in order at `rate_per_s`;
    // message k is queryable once a store's landed count reaches k.
    let paced = outputs(2, (rate_per_s as usize * 10 / tenants / 15).max(1));
    let stop = CancellationToken::new();
    let (c1, s1, p1) = (cfg.clone(), stop.clone(), pool.clone());
    let pg_task = tokio::spawn(async move {
        riverbank_runtime::sink::run(&c1, PostgresSink::new(p1), crate::registry::sink_inputs(&c1), s1).await
    });
    let (c2, s2) = (cfg.clone(), stop.clone());
    let ch_cfg = cfg.clickhouse.clone();
    let ch_task = tokio::spawn(async move {
        let store = ClickHouseSink::new(&ch_cfg, pseudonym_key);
        riverbank_runtime::sink::run(&c2, store, crate::registry::sink_inputs(&c2), s2).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = n;
    let per_tick = (rate_per_s / 100).max(1) as usize;
    let mut sent_at: Vec<Instant> = Vec::with_capacity(paced.len());
    let (mut pg_seen, mut ch_seen): (Vec<Option<Instant>>, Vec<Option<Instant>>) =
        (vec![None; paced.len()], vec![None; paced.len()]);
    let mark = |seen: &mut Vec<Option<Instant>>, landed: i64| {
        let upto = usize::try_from(landed - base).unwrap_or(0).min(seen.len());
        for s in seen.iter_mut().take(upto) {
            s.get_or_insert_with(Instant::now);
        }
    };
    for chunk in paced.chunks(per_tick) {
        let t0 = Instant::now();
        sent_at.extend(std::iter::repeat_n(Instant::now(), chunk.len()));
        produce_all(&producer, chunk, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
        mark(&mut pg_seen, pg_landed(&pool).await?);
        mark(&mut ch_seen, ch_landed(&ch).await?);
        tokio::time::sleep(Duration::from_millis(10).saturating_sub(t0.elapsed())).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (pg_seen.iter().any(Option::is_none) || ch_seen.iter().any(Option::is_none))
        && Instant::now() < deadline
    {
        mark(&mut pg_seen, pg_landed(&pool).await?);
        mark(&mut ch_seen, ch_landed(&ch).await?);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    pg_task.await??;
    ch_task.await??;
    let mut latency = serde_json::Map::new();
    for (name, seen) in [("postgres", &pg_seen), ("clickhouse", &ch_seen)] {
        let mut ms: Vec<f64> = seen
            .iter()
            .zip(&sent_at)
            .filter_map(|(s, t)| s.map(|s| s.saturating_duration_since(*t).as_secs_f64() * 1000.0))
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:<10}  produce → queryable at {rate_per_s} msg/s: p50 {:.0} ms, p99 {:.0} ms ({} messages)",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.len()
        );
        latency.insert(
            name.to_owned(),
            serde_json::json!({"p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99), "messages": ms.len()}),
        );
    }
    // Clean up the run's databases.
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await?;
    riverbank_runtime::stores::clickhouse_server_client(&cfg.clickhouse)
        .query(&format!("DROP DATABASE IF EXISTS {}", cfg.clickhouse.database))
        .execute()
        .await?;
    let report = serde_json::json!({
        "bench": "sinks",
        "machine": machine(),
        "workload": {"messages": n, "tenants": tenants, "per_tenant": per_tenant,
            "batch_rows_max": cfg.sinks.batch_rows_max, "batch_linger_ms": cfg.sinks.batch_linger_ms},
        "postgres": {"sink_rows_per_s": pg_rate, "copy_rows_per_s": copy_rate, "ratio": pg_rate / copy_rate},
        "clickhouse": {"sink_rows_per_s": ch_rate, "bare_insert_rows_per_s": bare_ch_rate, "ratio": ch_rate / bare_ch_rate},
        "produce_to_queryable": {"rate_per_s": rate_per_s, "stores": latency},
    });
    write_report(std::path::Path::new("target/bench/sinks.json"), &report)
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    process_cpu_s(std::process::id(), false).unwrap_or(0.0)
}

/// CPU seconds (user + system) of a process (Linux `/proc/<pid>/stat`, 100 ticks/s); with `children`,
/// also those of the children it reaped and of its live children (Postgres backends).
pub(crate) fn process_cpu_s(pid: u32, children: bool) -> Option<f64> {
    let fields = |pid: u32| -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (in parentheses, which may contain spaces).
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0)).collect())
    };
    // proc(5): utime, stime, cutime, cstime are fields 14-17; after the name, indices 11-14. ppid is 4 (1).
    let f = fields(pid)?;
    let mut ticks = f.get(11)? + f.get(12)?;
    if children {
        ticks += f.get(13)? + f.get(14)?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(c) = fields(child).filter(|c| c.get(1) == Some(&u64::from(pid))) {
                ticks += c.get(11).unwrap_or(&0) + c.get(12).unwrap_or(&0);
            }
        }
    }
    Some(ticks as f64 / 100.0)
}

/// Stop a child process: SIGTERM, then SIGKILL if it is still running after `grace`.
pub(crate) fn terminate(child: &mut std::process::Child, grace: Duration) {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Machine-wide (busy, total) CPU ticks from /proc/stat: everything on the box, Postgres and the
/// broker included.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

struct Load {
    ok: u64,
    failed: u64,
    latencies_ms: Vec<f64>,
    seconds: f64,
    cpu_percent: f64,
    /// Busy share of all cores of the machine during the run.
    machine_percent: f64,
}

/// `concurrency` workers send requests back to back for `seconds`; `send(worker, n)` performs one.
async fn load<F, Fut>(seconds: u64, concurrency: usize, send: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (cpu0, t0, m0) = (cpu_seconds(), Instant::now(), machine_ticks());
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let send = send.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    if send(w, n).await {
                        ok += 1;
                        lat.push(started.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        failed += 1;
                    }
                    n += 1;
                }
                (ok, failed, lat)
            })
        })
        .collect();
    let mut out = Load {
        ok: 0,
        failed: 0,
        latencies_ms: Vec::new(),
        seconds: 0.0,
        cpu_percent: 0.0,
        machine_percent: 0.0,
    };
    for w in workers {
        if let Ok((ok, failed, lat)) = w.await {
            out.ok += ok;
            out.failed += failed;
            out.latencies_ms.extend(lat);
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.cpu_percent = (cpu_seconds() - cpu0) / out.seconds * 100.0;
    let m1 = machine_ticks();
    out.machine_percent = (m1.0 - m0.0) / (m1.1 - m0.1).max(1.0) * 100.0;
    out.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    out
}

fn report(name: &str, l: &Load) -> f64 {
    let rate = l.ok as f64 / l.seconds;
    println!(
        "{name:<22} {rate:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   {} ok, {} failed   CPU {:>4.0}% of one core (this process, load generator included), machine {:>3.0}% of {} cores",
        percentile(&l.latencies_ms, 0.5),
        percentile(&l.latencies_ms, 0.99),
        l.ok,
        l.failed,
        l.cpu_percent,
        l.machine_percent,
        std::thread::available_parallelism().map(usize::from).unwrap_or(1)
    );
    rate
}

pub(crate) fn free_local_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `riverbank bench ingest`: signed webhooks over HTTP on loopback at full speed (202 only after the
/// broker's acknowledgement), and an axum hello-world in the same run as the ceiling.
pub async fn ingest(cfg: &Config, seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    use base64::Engine as _;
    use riverbank_runtime::config::WebhookSecretConfig;

    let mut cfg = cfg.clone();
    cfg.kafka.topic_prefix = format!("benchingest-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    cfg.kafka.environments = vec![Environment::Live];
    cfg.ingest.listen_addr = free_local_addr()?;
    cfg.ingest.in_flight_requests_max = cfg.ingest.in_flight_requests_max.max(concurrency * 2);
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
    cfg.ingest.webhooks = vec![WebhookSecretConfig {
        provider: "acmepay".into(),
        tenant_id: "bench-tenant".into(),
        environment: Environment::Live,
        secrets: vec![riverbank_runtime::Secret::new(secret)],
    }];
    let senders = crate::demo::senders(&cfg)?;
    let sender = senders.first().context("bench sender")?.clone();
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let server = tokio::spawn(async move { riverbank_ingest::serve(&c, s).await });
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let ingest_url = format!("http://{}", cfg.ingest.listen_addr);
    crate::demo::wait_healthy(&client, &ingest_url, Duration::from_secs(30)).await?;
    println!("{concurrency} concurrent clients for {seconds} s each, on loopback; server and load generator share this process");

    let (cl, url, snd) = (client.clone(), ingest_url.clone(), sender.clone());
    let signed = load(seconds, concurrency, move |w, n| {
        let (cl, url, snd) = (cl.clone(), url.clone(), snd.clone());
        async move {
            let d = crate::demo::Delivery {
                id: format!("msg_{w}_{n}"),
                body: crate::demo::deposit_body(n as usize, "bench-tenant"),
            };
            matches!(crate::demo::send(&cl, &url, &snd, &d).await, Ok(s) if s == reqwest::StatusCode::ACCEPTED)
        }
    })
    .await;
    stop.cancel();
    server.await??;

    // The ceiling: axum answering 202 with a small JSON body, nothing else.
    let addr = free_local_addr()?;
    let hello = axum::Router::new().route(
        "/",
        axum::routing::post(|| async {
            (axum::http::StatusCode::ACCEPTED, axum::Json(serde_json::json!({"status": "accepted"})))
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    // The same server loop and limits as ingest: the ceiling differs only in what the handler does.
    let limits = cfg.ingest.server_limits();
    let hello_server =
        tokio::spawn(async move { riverbank_runtime::http::serve(listener, hello, limits, s).await });
    let (cl, url) = (client.clone(), format!("http://{addr}/"));
    let plain = load(seconds, concurrency, move |_, n| {
        let (cl, url) = (cl.clone(), url.clone());
        async move {
            let body = crate::demo::deposit_body(n as usize, "bench-tenant");
            matches!(cl.post(&url).body(body).send().await, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED)
        }
    })
    .await;
    stop.cancel();
    hello_server.await??;

    let r1 = report("signed webhooks", &signed);
    let r2 = report("axum hello-world", &plain);
    println!("ratio (ingest / hello-world): {:.2}", r1 / r2);
    let figures = |l: &Load, rate: f64| {
        serde_json::json!({"req_per_s": rate, "p50_ms": percentile(&l.latencies_ms, 0.5),
            "p99_ms": percentile(&l.latencies_ms, 0.99), "ok": l.ok, "failed": l.failed,
            "cpu_percent_of_one_core": l.cpu_percent, "machine_percent": l.machine_percent})
    };
    let report = serde_json::json!({
        "bench": "ingest",
        "machine": machine(),
        "seconds": seconds,
        "concurrency": concurrency,
        "signed_webhooks": figures(&signed, r1),
        "hello_world": figures(&plain, r2),
        "ratio": r1 / r2,
    });
    write_report(std::path::Path::new("target/bench/ingest.json"), &report)
}
