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
use riverbank_runtime::process::{produce_all, Emit, InputRef, Processor, Verdict};
use riverbank_runtime::{CancellationToken, Config};
use riverbank_schemas::{Environment, RawEnvelope, Topics};

use crate::workload::transfer_inputs;

/// A stateless processor that forwards every input unchanged: the loop's ceiling on this broker.
struct Passthrough {
    output: String,
}

impl Processor for Passthrough {
    type State = ();
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String> {
        vec![topics.transfer_inputs(env)]
    }
    fn checkpoints(&self) -> bool {
        false
    }
    fn apply(&self, _: &mut (), _: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let payload = serde_json::to_vec(&input).unwrap_or_default();
        Verdict::Emit(vec![Emit {
            topic: self.output.clone(),
            key: input.tenant_id,
            event_id: input.event_id,
            payload,
        }])
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn total_high(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .filter_map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())
        .map(|(_, h)| h)
        .sum()
}

/// Run a processor until `topic` holds `expected` messages; seconds from its first output to the last.
async fn drain<P: Processor>(cfg: &Config, p: P, topic: &str, expected: i64) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, p, s).await });
    let kcfg = cfg.kafka.clone();
    let topic = topic.to_owned();
    let elapsed = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &kcfg.brokers).create()?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<Instant> = None;
        loop {
            let n = total_high(&consumer, &topic, kcfg.topic_partitions);
            if n > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if n >= expected {
                return Ok(first.map_or(0.0, |f| f.elapsed().as_secs_f64()));
            }
            anyhow::ensure!(Instant::now() < deadline, "only {n} of {expected} outputs after 600 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await??;
    stop.cancel();
    task.await??;
    Ok(elapsed)
}

/// Produce inputs at `rate_per_s` while the processor runs; latency = output CreateTime − input CreateTime.
async fn paced_latency<P: Processor>(
    cfg: &Config,
    p: P,
    inputs: &[RawEnvelope],
    input_topic: &str,
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
        let emits: Vec<Emit> = chunk
            .iter()
            .map(|e| Emit {
                topic: input_topic.to_owned(),
                key: e.tenant_id.clone(),
                event_id: e.event_id,
                payload: serde_json::to_vec(e).unwrap_or_default(),
            })
            .collect();
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
    let at = InputRef { topic: "bench", partition: 0, offset: 0, environment: Environment::Live };
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
    let input_topic = topics.transfer_inputs(Environment::Live);
    let passthrough_topic = format!("{}live.bench.passthrough", cfg.kafka.topic_prefix);
    let mut all = riverbank_runtime::kafka::all_topics(&cfg.kafka);
    all.push(passthrough_topic.clone());
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &all).await.context("creating bench topics")?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let emits: Vec<Emit> = inputs
        .iter()
        .map(|e| Emit {
            topic: input_topic.clone(),
            key: e.tenant_id.clone(),
            event_id: e.event_id,
            payload: serde_json::to_vec(e).unwrap_or_default(),
        })
        .collect();
    produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    let transfers = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let status_topic = topics.transfer_status(Environment::Live);
    let status_count = {
        let mut state = Default::default();
        let mut count = 0i64;
        for e in &inputs {
            if let Verdict::Emit(o) = transfers.apply(&mut state, &at, e.clone()) {
                count += o.iter().filter(|x| x.topic == status_topic).count() as i64;
            }
        }
        count
    };
    let t_proc = drain(&cfg, transfers, &status_topic, status_count).await?;
    let t_pass =
        drain(&cfg, Passthrough { output: passthrough_topic.clone() }, &passthrough_topic, n as i64).await?;
    let (r_proc, r_pass) = (n as f64 / t_proc, n as f64 / t_pass);
    println!("(2) transfers on broker:    {r_proc:>10.0} inputs/s (checkpoint after every batch; {n} inputs in {t_proc:.2} s)");
    println!("(3) passthrough on broker:  {r_pass:>10.0} inputs/s ({n} inputs in {t_pass:.2} s)");
    println!("    ratio (2)/(3):          {:>10.2}", r_proc / r_pass);

    // Latency at a steady rate, fresh inputs (new ids) on the same topic.
    let paced = transfer_inputs(&refs, (rate_per_s as usize * 10 / tenants / 5).max(1), 2);
    let transfers = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let (p50, p99, k) =
        paced_latency(&cfg, transfers, &paced, &input_topic, &status_topic, rate_per_s, status_cause).await?;
    println!("    transfers latency at {rate_per_s}/s: p50 {p50:.0} ms, p99 {p99:.0} ms (input produced → status event produced; {k} events)");
    let paced = transfer_inputs(&refs, (rate_per_s as usize * 10 / tenants / 5).max(1), 3);
    let (p50, p99, k) = paced_latency(
        &cfg,
        Passthrough { output: passthrough_topic.clone() },
        &paced,
        &input_topic,
        &passthrough_topic,
        rate_per_s,
        passthrough_cause,
    )
    .await?;
    println!("    passthrough latency at {rate_per_s}/s: p50 {p50:.0} ms, p99 {p99:.0} ms ({k} events)");
    Ok(())
}
