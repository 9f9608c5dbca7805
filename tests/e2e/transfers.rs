//! The transfers processor on the real broker, killed with SIGKILL at random points while 12,000+
//! inputs flow: the deduplicated status events and the final balances must equal an uninterrupted run.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_processors::{TransfersLimits, TransfersProcessor};
use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::process::{produce_all, Emit, InputRef, Processor, Verdict};
use riverbank_schemas::transfers::{input_types as it, BalanceChanged, TransferStatusChanged};
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics};

use crate::harness::Pipeline;

const PROCESSOR: &[&str] = &["process", "transfers"];
/// Small batches and frequent snapshots: more checkpoint boundaries for a kill to land between.
const SMALL_BATCHES: &str = "[processor]\nbatch_events_max = 100\ncheckpoint_snapshot_every_batches = 5\n";

/// Status events on the output topic so far (sum of high watermarks).
fn outputs_so_far(kcfg: &KafkaConfig, topics: &Topics) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kcfg.brokers)
        .create()
        .expect("watermark reader");
    (0..kcfg.topic_partitions)
        .filter_map(|p| {
            consumer
                .fetch_watermarks(&topics.transfer_status(Environment::Live), p, Duration::from_secs(5))
                .ok()
        })
        .map(|(_, high)| high)
        .sum()
}

/// Wait until the processor has emitted `more` new status events (so it is busy), at most `timeout`.
async fn wait_busy(kcfg: &KafkaConfig, topics: &Topics, more: i64, timeout: Duration) {
    let (k, t) = (kcfg.clone(), topics.clone());
    let start = tokio::task::spawn_blocking(move || outputs_so_far(&k, &t)).await.unwrap_or(0);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (k, t) = (kcfg.clone(), topics.clone());
        if tokio::task::spawn_blocking(move || outputs_so_far(&k, &t)).await.unwrap_or(0) >= start + more {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic generator (no randomness crate needed, same sequence every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Lifecycles of many transfers for several tenants, interleaved (per-transfer order kept), with
/// duplicates, stale callbacks, reviews, blocks, failures, retries and cancels.
fn inputs(tenants: &[&str], transfers_per_tenant: usize, seed: u64) -> Vec<RawEnvelope> {
    let mut rng = Lcg(seed);
    let mut lanes: Vec<Vec<(String, &'static str, serde_json::Value)>> = Vec::new();
    for tenant in tenants {
        // Funding first, in its own lane, so later withdrawals can succeed.
        let mut funding = Vec::new();
        for a in 0..10 {
            let id = format!("fund-{a}");
            funding.push((tenant.to_string(), it::REQUESTED, serde_json::json!({"transfer_id": id, "kind": "deposit", "amount": {"amount_minor": 1_000_000, "currency": "USD"}, "destination_account": format!("acct_{a}"), "requested_by": "ops"})));
            funding.push((tenant.to_string(), it::RISK_DECIDED, serde_json::json!({"transfer_id": id, "decision": "approve", "score": 1, "reasons": [], "rule_set_version": "r1"})));
            funding.push((
                tenant.to_string(),
                it::PROVIDER_STATUS,
                serde_json::json!({"transfer_id": id, "status": "completed"}),
            ));
        }
        lanes.push(funding);
        for n in 0..transfers_per_tenant {
            let id = format!("t-{n}");
            let kind = ["deposit", "withdrawal", "internal", "payout"][rng.below(4) as usize];
            let amount = 1 + rng.below(50_000) as i64;
            let (a, b) = (rng.below(10), rng.below(10));
            let b = if a == b { (b + 1) % 10 } else { b };
            let mut lane = vec![(
                tenant.to_string(),
                it::REQUESTED,
                serde_json::json!({"transfer_id": id, "kind": kind, "amount": {"amount_minor": amount, "currency": "USD"}, "source_account": format!("acct_{a}"), "destination_account": format!("acct_{b}"), "requested_by": "maker"}),
            )];
            let risk = |d: &str| serde_json::json!({"transfer_id": id, "decision": d, "score": 5, "reasons": ["test"], "rule_set_version": "r1"});
            let cb = |s: &str| serde_json::json!({"transfer_id": id, "status": s});
            match rng.below(10) {
                0 => lane.push((tenant.to_string(), it::RISK_DECIDED, risk("block"))),
                1 => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("review")));
                    lane.push((
                        tenant.to_string(),
                        it::APPROVED,
                        serde_json::json!({"transfer_id": id, "actor": "checker"}),
                    ));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                }
                2 => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("failed")));
                    lane.push((
                        tenant.to_string(),
                        it::RETRY_REQUESTED,
                        serde_json::json!({"transfer_id": id, "actor": "maker"}),
                    ));
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                }
                _ => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("confirming")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                    if rng.below(4) == 0 {
                        lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                        // stale
                    }
                }
            }
            lanes.push(lane);
        }
    }
    // Interleave: repeatedly take the next input of a random lane (funding lanes first).
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut cursors = vec![0usize; lanes.len()];
    let funding: Vec<usize> = (0..lanes.len())
        .filter(|&i| {
            lanes[i]
                .first()
                .is_some_and(|l| l.2["transfer_id"].as_str().is_some_and(|t| t.starts_with("fund-")))
        })
        .collect();
    let mut order: Vec<usize> =
        funding.iter().flat_map(|&i| std::iter::repeat_n(i, lanes[i].len())).collect();
    let mut rest: Vec<usize> = (0..lanes.len())
        .filter(|i| !funding.contains(i))
        .flat_map(|i| std::iter::repeat_n(i, lanes[i].len()))
        .collect();
    for i in (1..rest.len()).rev() {
        rest.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order.extend(rest);
    for lane in order {
        let (tenant, event_type, payload) = lanes[lane][cursors[lane]].clone();
        cursors[lane] += 1;
        seq += 1;
        let t = chrono::DateTime::from_timestamp(1_790_000_000 + (seq / 100) as i64, 0).unwrap_or_default();
        let e = Envelope {
            event_id: derived_id(&["e2e-transfers", &seed.to_string(), &seq.to_string()]),
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant_id: tenant,
            environment: Environment::Live,
            occurred_at: t,
            ingested_at: t,
            idempotency_key: None,
            source: "api".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload,
        };
        // Some inputs arrive twice (an upstream replay).
        if rng.below(20) == 0 {
            out.push(e.clone());
        }
        out.push(e);
    }
    out
}

/// Status events by id, and each account's last balance: what a run emitted.
#[derive(Default)]
struct Outputs {
    statuses: HashMap<uuid::Uuid, Vec<u8>>,
    balances: BTreeMap<(String, String), BalanceChanged>,
}

/// What an uninterrupted run emits.
fn expected(topics: &Topics, inputs: &[RawEnvelope]) -> Outputs {
    let p = TransfersProcessor::new(topics.clone(), TransfersLimits::default());
    let mut state = Default::default();
    let at = InputRef { topic: "x", partition: 0, offset: 0, environment: Environment::Live };
    let mut outputs = Outputs::default();
    for e in inputs {
        let Verdict::Emit(out) = p.apply(&mut state, &at, e.clone()) else {
            panic!("generated input is poison")
        };
        for o in out {
            collect(topics, &o.topic, &o.payload, &mut outputs);
        }
    }
    outputs
}

fn collect(topics: &Topics, topic: &str, payload: &[u8], out: &mut Outputs) {
    let Outputs { statuses, balances } = out;
    let env: RawEnvelope = serde_json::from_slice(payload).expect("envelope");
    if topic == topics.transfer_status(Environment::Live) {
        let _: TransferStatusChanged = serde_json::from_value(env.payload.clone()).expect("status");
        if let Some(previous) = statuses.insert(env.event_id, payload.to_vec()) {
            assert_eq!(previous, payload, "one event id, two different events");
        }
    } else if topic == topics.balances(Environment::Live) {
        let b: BalanceChanged = serde_json::from_value(env.payload).expect("balance");
        let key = (env.tenant_id, format!("{}/{}", b.account, b.currency));
        if balances.get(&key).is_none_or(|old: &BalanceChanged| old.version < b.version) {
            balances.insert(key, b);
        }
    }
}

fn kafka_config(p: &Pipeline) -> KafkaConfig {
    let cfg = riverbank_runtime::Config::load(Some(&p.config)).expect("the test's config loads");
    cfg.kafka
}

/// Read every status and balance event so far; returns them and how many duplicates were delivered.
fn read_outputs(kcfg: &KafkaConfig, topics: &Topics) -> (Outputs, usize) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kcfg.brokers)
        .set("group.id", "e2e-reader-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for topic in [topics.transfer_status(Environment::Live), topics.balances(Environment::Live)] {
        for p in 0..kcfg.topic_partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning).expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let (mut out, mut total, mut eofs) = (Outputs::default(), 0usize, 0);
    let parts = 2 * kcfg.topic_partitions as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while eofs < parts && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if m.topic() == topics.transfer_status(Environment::Live) {
                    total += 1;
                }
                collect(topics, m.topic(), m.payload().unwrap_or_default(), &mut out);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
            _ => {}
        }
    }
    let dups = total - out.statuses.len();
    (out, dups)
}

async fn produce_inputs(kcfg: &KafkaConfig, topics: &Topics, inputs: &[RawEnvelope]) -> anyhow::Result<()> {
    let producer = riverbank_runtime::kafka::producer(kcfg)?;
    let emits: Vec<Emit> = inputs
        .iter()
        .map(|e| Emit {
            topic: topics.transfer_inputs(Environment::Live),
            key: e.tenant_id.clone(),
            event_id: e.event_id,
            payload: serde_json::to_vec(e).expect("serializes"),
        })
        .collect();
    produce_all(&producer, &emits, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)
}

async fn wait_and_compare(p: &Pipeline, want: &Outputs) -> anyhow::Result<usize> {
    let kcfg = kafka_config(p);
    let topics = Topics::new(p.topic_prefix.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (kc, t) = (kcfg.clone(), topics.clone());
        let (Outputs { statuses, balances }, dups) =
            tokio::task::spawn_blocking(move || read_outputs(&kc, &t)).await?;
        if statuses.len() >= want.statuses.len() || Instant::now() > deadline {
            let missing = want.statuses.keys().filter(|k| !statuses.contains_key(k)).count();
            let extra = statuses.keys().filter(|k| !want.statuses.contains_key(k)).count();
            anyhow::ensure!(
                missing == 0 && extra == 0,
                "status events: {missing} missing, {extra} unexpected (logs in {})",
                p.dir.display()
            );
            for (id, bytes) in &want.statuses {
                anyhow::ensure!(
                    statuses[id] == *bytes,
                    "status event {id} differs from the uninterrupted run"
                );
            }
            anyhow::ensure!(balances == want.balances, "final balances differ from the uninterrupted run");
            return Ok(dups);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_changes_no_status_and_no_balance() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("transfers_kill", &[], &[PROCESSOR], SMALL_BATCHES).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let all = inputs(&["tenant-a", "tenant-b", "tenant-c", "tenant-d"], 650, 42);
    assert!(all.len() >= 10_000, "{} inputs", all.len());
    let want = expected(&topics, &all);
    let kcfg = kafka_config(&p);
    let mut rng = Lcg(7);
    let mut kills = 0;
    for chunk in all.chunks(all.len() / 5 + 1) {
        produce_inputs(&kcfg, &topics, chunk).await?;
        // Wait until outputs are flowing, then kill it at a random point mid-stream.
        wait_busy(&kcfg, &topics, 1 + rng.below(1_500) as i64, Duration::from_secs(30)).await;
        anyhow::ensure!(p.running(PROCESSOR), "processor exited by itself; logs in {}", p.dir.display());
        p.kill(PROCESSOR).await?;
        kills += 1;
        p.spawn(PROCESSOR)?;
    }
    let dups = wait_and_compare(&p, &want).await?;
    eprintln!(
        "{} inputs, {kills} SIGKILLs, {} status events, {dups} duplicate deliveries deduplicated",
        all.len(),
        want.statuses.len()
    );
    p.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_a_rebalance_change_nothing() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("transfers_rebalance", &[], &[PROCESSOR], SMALL_BATCHES).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let all = inputs(&["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"], 400, 99);
    assert!(all.len() >= 10_000, "{} inputs", all.len());
    let want = expected(&topics, &all);
    let kcfg = kafka_config(&p);
    let (first_half, second_half) = all.split_at(all.len() / 2);
    // A second instance joins: the group rebalances and partitions move mid-stream.
    p.spawn_named("second", PROCESSOR)?;
    produce_inputs(&kcfg, &topics, first_half).await?;
    wait_busy(&kcfg, &topics, 2_000, Duration::from_secs(30)).await;
    // One instance dies hard mid-stream; the survivor takes its partitions from their checkpoints.
    p.kill_named("second").await?;
    produce_inputs(&kcfg, &topics, second_half).await?;
    let dups = wait_and_compare(&p, &want).await?;
    eprintln!(
        "{} inputs over two instances and a rebalance, {dups} duplicate deliveries deduplicated",
        all.len()
    );
    p.finish().await
}
