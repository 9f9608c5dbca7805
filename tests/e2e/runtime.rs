//! Runtime v2 on the real broker: a processor with two routed inputs, a broadcast input and
//! event-time timers (the `volume` example) is SIGKILLed twice mid-stream; what it produced equals, byte
//! for byte, a pure replay of its log (the router's copies and ticks included) through the same engine.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use riverbank_runtime::engine::OwnedRecord;
use riverbank_runtime::kafka::ReadRecord;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_runtime::produce::{SOURCE_HEADER, TICK_HEADER};
use riverbank_schemas::transfers::{InputRejected, TransferKind, TransferStatus, TransferStatusChanged};
use riverbank_schemas::volume::VolumeWindowClosed;
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics};

use crate::harness::Pipeline;

const VOLUME: &[&str] = &["process", "volume"];
const TENANTS: [&str; 4] = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"];

fn envelope(
    tenant: &str,
    id: &str,
    minute: i64,
    event_type: &str,
    payload: serde_json::Value,
) -> RawEnvelope {
    // Two hours ago, so every window is past its close when the first tick arrives.
    let base = chrono::Utc::now().timestamp() / 3600 * 3600 - 7200;
    let at = chrono::Utc.timestamp_opt(base + minute * 60 + 7, 0).single().unwrap_or_default();
    Envelope::new(
        derived_id(&["rt-volume", id]),
        event_type,
        tenant,
        Environment::Live,
        at,
        "riverbank.transfers",
        payload,
    )
}

/// A wave of inputs: completed transfers (USD and EUR), a status that is not counted, rejections.
fn wave(topics: &Topics, n: usize) -> (Vec<Emit>, usize) {
    let env = Environment::Live;
    let mut out = Vec::new();
    let mut completed = 0;
    for (t, tenant) in TENANTS.iter().enumerate() {
        for i in 0..30 {
            let id = format!("{n}-{t}-{i}");
            let currency = if i % 3 == 0 { "EUR" } else { "USD" };
            let status = if i % 5 == 4 { TransferStatus::Processing } else { TransferStatus::Completed };
            completed += usize::from(status == TransferStatus::Completed);
            let s = TransferStatusChanged {
                transfer_id: id.clone(),
                kind: TransferKind::Deposit,
                amount: Money::new(100 + i, Currency::from_code(currency).expect("currency")),
                previous: Some(TransferStatus::Confirming),
                status,
                version: 5,
                reason: None,
                cause_event_id: uuid::Uuid::nil(),
            };
            let e = envelope(
                tenant,
                &id,
                (n as i64) * 3 + i % 3,
                TransferStatusChanged::EVENT_TYPE,
                serde_json::to_value(s).expect("json"),
            );
            out.push(emit(topics.transfer_status(env), &e));
            if i % 7 == 0 {
                let r = InputRejected {
                    input_event_id: uuid::Uuid::nil(),
                    input_event_type: "transfer.requested".into(),
                    transfer_id: Some(id.clone()),
                    reason: "unknown transfer".into(),
                    at: None,
                };
                let e = envelope(
                    tenant,
                    &format!("r{id}"),
                    (n as i64) * 3,
                    InputRejected::EVENT_TYPE,
                    serde_json::to_value(r).expect("json"),
                );
                out.push(emit(topics.transfer_rejections(env), &e));
            }
        }
    }
    let rates = serde_json::json!({"as_of": "2026-12-01T00:00:00Z", "published_by": "desk", "rates": [{"base": "EUR", "quote": "USD", "rate_e9": 1_080_000_000 + n as i64}]});
    let e = envelope("rates-desk", &format!("rates-{n}"), 0, "fx.rates_published", rates);
    out.push(emit(topics.fx_rates(env), &e));
    (out, completed)
}

fn emit(topic: String, e: &RawEnvelope) -> Emit {
    Emit {
        topic,
        key: e.tenant_id.clone(),
        event_id: e.event_id,
        payload: serde_json::to_vec(e).expect("json"),
    }
}

fn read(p: &Pipeline, topic: &str) -> anyhow::Result<Vec<ReadRecord>> {
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    riverbank_runtime::kafka::read_all(&cfg.kafka, topic, 1_000_000, Duration::from_secs(60))
        .map_err(anyhow::Error::msg)
}

/// The log as the engine sees it, per partition in offset order.
fn replayable(log: &[ReadRecord]) -> HashMap<i32, Vec<OwnedRecord>> {
    let mut by: HashMap<i32, Vec<&ReadRecord>> = HashMap::new();
    for r in log {
        by.entry(r.partition).or_default().push(r);
    }
    by.into_iter()
        .map(|(p, mut rs)| {
            rs.sort_by_key(|r| r.offset);
            let records = rs
                .into_iter()
                .map(|r| OwnedRecord {
                    payload: r.payload.clone(),
                    source: r.header(SOURCE_HEADER).map(str::to_owned),
                    tick: r.header(TICK_HEADER).map(str::to_owned),
                })
                .collect();
            (p, records)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_broadcast_and_timers_replay_byte_identically_after_sigkill() -> anyhow::Result<()> {
    let extra = "[processor]\ntick_interval_ms = 200\nbatch_events_max = 50\n";
    let mut p = Pipeline::start_with("rt_volume", &[], &[VOLUME], extra).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let mut completed = 0;
    for n in 0..3 {
        let (inputs, c) = wave(&topics, n);
        completed += c;
        produce_all(&producer, &inputs, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        if n < 2 {
            p.kill(VOLUME).await?; // SIGKILL mid-stream
            p.spawn(VOLUME)?;
        }
    }
    let out_topic = topics.volume_windows(Environment::Live);
    let log_topic = topics.log(Environment::Live, "volume");
    let registry = riverbank::registry::processor(&cfg, "volume")?;
    // Every completed input is counted once across the closed windows (corrections included).
    let deadline = Instant::now() + Duration::from_secs(120);
    let windows = loop {
        let mut seen: HashMap<uuid::Uuid, VolumeWindowClosed> = HashMap::new();
        for r in read(&p, &out_topic)? {
            let e: Envelope<VolumeWindowClosed> = serde_json::from_slice(&r.payload)?;
            seen.insert(e.event_id, e.payload);
        }
        let counted: u64 = seen.values().map(|w| w.completed_count).sum();
        if counted == completed as u64 {
            break seen;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{counted} of {completed} counted; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Late corrections holding only rejections close on the next tick too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.kill(VOLUME).await?;
    assert!(
        windows
            .values()
            .any(|w| w.rates_used.iter().any(|r| r.version.starts_with(&topics.fx_rates(Environment::Live)))),
        "a window records the broadcast rate version it used"
    );
    // The pure replay of the log as it stands: the same outputs, byte for byte.
    let mut want: HashMap<uuid::Uuid, Vec<u8>> = HashMap::new();
    let logged = read(&p, &log_topic)?;
    anyhow::ensure!(logged.iter().any(|r| r.header(TICK_HEADER).is_some()), "ticks are in the log");
    for records in replayable(&logged).values() {
        for e in registry.replay(&topics, Environment::Live, records, &[]).map_err(anyhow::Error::msg)? {
            anyhow::ensure!(e.topic == out_topic, "only windows are produced, got {}", e.topic);
            want.insert(e.event_id, e.payload);
        }
    }
    let got = read(&p, &out_topic)?;
    for r in &got {
        let id = r
            .header(riverbank_runtime::produce::EVENT_ID_HEADER)
            .unwrap_or_default()
            .parse::<uuid::Uuid>()?;
        let expected = want.get(&id).ok_or_else(|| anyhow::anyhow!("output {id} is not in the replay"))?;
        anyhow::ensure!(*expected == r.payload, "output {id} differs from the replay's bytes");
    }
    let distinct: std::collections::HashSet<&str> =
        got.iter().filter_map(|r| r.header(riverbank_runtime::produce::EVENT_ID_HEADER)).collect();
    assert_eq!(
        distinct.len(),
        want.len(),
        "every replayed output was produced ({} copies in all)",
        got.len()
    );
    p.finish().await
}

/// A component's log with terminal colours removed.
fn log_of(p: &Pipeline, name: &str) -> String {
    let raw = std::fs::read_to_string(p.dir.join(format!("{name}.log"))).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(assigned, kept)` of every `rebalanced` line of a processor's log.
fn rebalances(log: &str) -> Vec<(usize, usize)> {
    let field = |line: &str, name: &str| -> Option<usize> {
        line.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse().ok())
    };
    log.lines()
        .filter(|l| l.contains("rebalanced"))
        .filter_map(|l| Some((field(l, "assigned=")?, field(l, "kept=")?)))
        .collect()
}

/// Completed inputs counted across the closed windows on the output topic.
fn counted(p: &Pipeline, topics: &Topics) -> anyhow::Result<u64> {
    let mut seen: HashMap<uuid::Uuid, u64> = HashMap::new();
    for r in read(p, &topics.volume_windows(Environment::Live))? {
        let e: Envelope<VolumeWindowClosed> = serde_json::from_slice(&r.payload)?;
        seen.insert(e.event_id, e.payload.completed_count);
    }
    Ok(seen.values().sum())
}

async fn until_counted(p: &Pipeline, topics: &Topics, want: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = counted(p, topics)?;
        if n == want as u64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{n} of {want} counted; logs in {}", p.dir.display());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A second instance joins: the first keeps the partitions it still owns as they were (no restore, no
/// new snapshot: its writer goes on with deltas), and both go on counting every input once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_stays_on_its_instance_keeps_its_state_across_a_rebalance() -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 4\n[processor]\ntick_interval_ms = 200\n";
    let mut p = Pipeline::start_with("rt_keep", &[], &[], extra).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    p.spawn_named("vol-a", VOLUME)?;
    let (first, c0) = wave(&topics, 0);
    produce_all(&producer, &first, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    until_counted(&p, &topics, c0).await?;
    let restores_before = log_of(&p, "vol-a").matches("state restored from checkpoint").count();
    p.spawn_named("vol-b", VOLUME)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (assigned, kept) = loop {
        if let Some(&(a, k)) = rebalances(&log_of(&p, "vol-a")).iter().rev().find(|(a, _)| *a < 4 && *a > 0) {
            break (a, k);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "vol-a never gave partitions away; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(kept, assigned, "every partition vol-a still owns is kept, none restored");
    let (second, c1) = wave(&topics, 1);
    produce_all(&producer, &second, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    until_counted(&p, &topics, c0 + c1).await?;
    let restores_after = log_of(&p, "vol-a").matches("state restored from checkpoint").count();
    assert_eq!(restores_after, restores_before, "vol-a restored nothing after the rebalance");
    // No new snapshot by vol-a: one snapshot per partition from its start, plus one per partition
    // vol-b took over (a new writer starts with one); none for those vol-a kept.
    let ct = topics.checkpoints(Environment::Live, "volume");
    let mut snapshots = 0;
    for r in read(&p, &ct)? {
        let record = riverbank_runtime::checkpoint::decode(&r.payload).map_err(anyhow::Error::msg)?;
        snapshots += usize::from(matches!(record, riverbank_runtime::checkpoint::Record::Snapshot { .. }));
    }
    assert_eq!(snapshots, 4 + (4 - kept), "snapshots written (vol-a kept {kept})");
    p.finish().await
}

/// Records sent together land in the order given, also when the producer's queue fills up (the
/// router's deduplication of its copies and snapshot chunk order rely on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sent_together_land_in_order_when_the_producer_queue_is_full() -> anyhow::Result<()> {
    let p = Pipeline::start_with("rt_order", &[], &[], "[kafka]\nproducer_queue_messages_max = 50\n").await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let topic = format!("{}live.order-check", p.topic_prefix);
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, std::slice::from_ref(&topic)).await?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let emits: Vec<Emit> = (0..5_000u32)
        .map(|i| Emit {
            topic: topic.clone(),
            key: "k".into(),
            event_id: derived_id(&["order", &i.to_string()]),
            payload: i.to_string().into_bytes(),
        })
        .collect();
    produce_all(&producer, &emits, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    let mut got = read(&p, &topic)?;
    got.sort_by_key(|r| (r.partition, r.offset));
    let order: Vec<u32> =
        got.iter().map(|r| String::from_utf8_lossy(&r.payload).parse().unwrap_or(u32::MAX)).collect();
    let want: Vec<u32> = (0..5_000).collect();
    assert!(
        order == want,
        "records landed out of order (first difference at {:?})",
        order.iter().zip(&want).position(|(a, b)| a != b)
    );
    p.finish().await
}
