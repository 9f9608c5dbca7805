//! The transfers processor on the real broker, killed with SIGKILL at random points while 12,000+
//! inputs flow: the deduplicated status events and the final balances must equal an uninterrupted run.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_processors::{TransfersLimits, TransfersProcessor};
use riverbank_runtime::config::KafkaConfig;
use riverbank_schemas::processor::{InputRef, Processor, Verdict};
use riverbank_schemas::transfers::{BalanceChanged, TransferStatusChanged};
use riverbank_schemas::{Environment, RawEnvelope, Topics};

use riverbank::workload::{produce_inputs, transfer_inputs, Lcg};

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
    let at = InputRef::log("x", 0, 0, Environment::Live);
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
    let all = transfer_inputs(&["tenant-a", "tenant-b", "tenant-c", "tenant-d"], 650, 42);
    assert!(all.len() >= 10_000, "{} inputs", all.len());
    let want = expected(&topics, &all);
    let kcfg = kafka_config(&p);
    let mut rng = Lcg(7);
    let mut kills = 0;
    for chunk in all.chunks(all.len() / 5 + 1) {
        produce_inputs(&kcfg, chunk).await?;
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
    let all = transfer_inputs(&["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"], 400, 99);
    assert!(all.len() >= 10_000, "{} inputs", all.len());
    let want = expected(&topics, &all);
    let kcfg = kafka_config(&p);
    let (first_half, second_half) = all.split_at(all.len() / 2);
    // A second instance joins: the group rebalances and partitions move mid-stream.
    p.spawn_named("second", PROCESSOR)?;
    produce_inputs(&kcfg, first_half).await?;
    wait_busy(&kcfg, &topics, 2_000, Duration::from_secs(30)).await;
    // One instance dies hard mid-stream; the survivor takes its partitions from their checkpoints.
    p.kill_named("second").await?;
    produce_inputs(&kcfg, second_half).await?;
    let dups = wait_and_compare(&p, &want).await?;
    eprintln!(
        "{} inputs over two instances and a rebalance, {dups} duplicate deliveries deduplicated",
        all.len()
    );
    p.finish().await
}
