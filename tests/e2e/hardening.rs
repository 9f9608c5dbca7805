//! Delivery hardening (the correctness review of 2026-12-01): each test names the finding it settles.
//! They run the real `riverbank` processes (or the runtime in process) against the local stack.
use std::time::{Duration, Instant};

use riverbank::workload::transfer_inputs;
use riverbank_runtime::produce::{produce_all, produce_at, Emit};
use riverbank_schemas::processor::{InputRef, Processor, Verdict};
use riverbank_schemas::processor::{Output, Spec};
use riverbank_schemas::transfers::{TransferKind, TransferStatus, TransferStatusChanged};
use riverbank_schemas::{Currency, Envelope, Environment, Money, RawEnvelope, Topics};

use crate::harness::Pipeline;
use crate::sinks::{converge, produce, reference};

const PG_SINK: &[&str] = &["sink", "postgres"];
const CH_SINK: &[&str] = &["sink", "clickhouse"];
const TRANSFERS: &[&str] = &["process", "transfers"];

fn config(p: &Pipeline) -> riverbank_runtime::Config {
    riverbank_runtime::Config::load(Some(&p.config)).expect("the test's config loads")
}

/// Findings 1(a), 10 and the black-box run's 80 s stall: partitions handed between two sink instances
/// while batches linger, then two SIGKILLs a few seconds apart, with 8 partitions per topic. Every row
/// lands exactly once, and after the last restart the sink lands again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_handing_partitions_over_mid_batch_lose_nothing_and_resume_quickly() -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 8\n[sinks]\nbatch_rows_max = 300\nbatch_linger_ms = 1500\n";
    let mut p = Pipeline::start_with("harden_handover", &[], &[TRANSFERS, PG_SINK, CH_SINK], extra).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let inputs = transfer_inputs(&["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"], 80, 5);
    let want = reference(&topics, &inputs);
    let chunks: Vec<&[RawEnvelope]> = inputs.chunks(inputs.len() / 4 + 1).collect();
    p.spawn_named("second-sink", PG_SINK)?;
    produce(&p, chunks[0]).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The second instance dies: its partitions move to the first one while it lingers on a batch.
    p.kill_named("second-sink").await?;
    produce(&p, chunks[1]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Two kills a few seconds apart (the black-box run's stall came from exactly this).
    for pause_s in [5, 3] {
        p.kill(PG_SINK).await?;
        p.spawn(PG_SINK)?;
        produce(&p, chunks[2.min(chunks.len() - 1)]).await.ok();
        tokio::time::sleep(Duration::from_secs(pause_s)).await;
    }
    p.kill(PG_SINK).await?;
    let before = pg_positions(&p).await?;
    let restarted = Instant::now();
    p.spawn(PG_SINK)?;
    for chunk in &chunks[3..] {
        produce(&p, chunk).await?;
    }
    // The time to land again: from the restart to the first batch made durable.
    while pg_positions(&p).await? <= before {
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(30),
            "the sink landed nothing for 30 s after a restart; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("sink landed again {:.1} s after its last restart", restarted.elapsed().as_secs_f64());
    converge(&p, &want, false, Duration::from_secs(180)).await?;
    p.assert_reconciled().await;
    p.finish().await
}

/// Finding 1(b): a zombie's complete snapshot at an older offset lands in the checkpoint topic after
/// the group committed past it. The restore picks it, so the consumer must be sought back there and
/// replay: the outputs and balances still equal an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_snapshot_behind_the_group_offset_is_replayed_from() -> anyhow::Result<()> {
    let extra = "[processor]\nbatch_events_max = 100\n";
    let mut p = Pipeline::start_with("harden_zombie", &[], &[TRANSFERS, PG_SINK, CH_SINK], extra).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let cfg = config(&p);
    let inputs = transfer_inputs(&["tenant-a", "tenant-b", "tenant-c"], 60, 21);
    let (first, second) = inputs.split_at(inputs.len() / 2);
    produce(&p, first).await?;
    converge(&p, &reference(&topics, first), false, Duration::from_secs(120)).await?;
    p.kill(TRANSFERS).await?;
    // The zombie: a writer that restored nothing and was paused before its first batch's checkpoint,
    // which now arrives: empty state at offset 0, a complete snapshot, newer than everything else.
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let input_topic = topics.transfer_inputs(Environment::Live);
    let ct = topics.checkpoints(Environment::Live, "transfers");
    let limits = riverbank_runtime::checkpoint::Limits {
        snapshot_every_batches: 1,
        record_bytes_max: 1 << 16,
        restore_window_records: 16,
        restore_timeout: Duration::from_secs(10),
    };
    let records: Vec<(i32, Emit)> = (0..cfg.kafka.topic_partitions)
        .flat_map(|partition| {
            let mut w = riverbank_runtime::checkpoint::Writer::new(0);
            riverbank_runtime::checkpoint::records_for_batch(
                &mut w,
                &limits,
                &ct,
                &input_topic,
                partition,
                0,
                Vec::new,
                Vec::new(),
            )
        })
        .collect();
    let items: Vec<(Option<i32>, &Emit)> = records.iter().map(|(p, e)| (Some(*p), e)).collect();
    produce_at(&producer, &items, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    p.spawn(TRANSFERS)?;
    produce(&p, second).await?;
    converge(&p, &reference(&topics, &inputs), false, Duration::from_secs(120)).await?;
    p.assert_reconciled().await;
    p.finish().await
}

/// A processor whose `apply` panics on one input, to prove the runtime contains it (finding 4).
struct Panicky {
    topic: String,
}

impl Processor for Panicky {
    type State = ();
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn spec(&self, _topics: &Topics, _env: Environment) -> Spec {
        Spec {
            outputs: vec![Output::new(format!("{}.out", self.topic), &[])],
            stateful: false,
            ..Spec::reading(self.topic.clone())
        }
    }
    fn examples(&self, _env: Environment) -> Vec<RawEnvelope> {
        Vec::new()
    }
    fn apply(&self, _state: &mut (), _at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        assert!(input.event_type != "test.explode", "boom: an input-reachable assertion");
        let id = riverbank_schemas::derived_id(&["panicky", &input.event_id.to_string()]);
        Verdict::Emit(vec![Emit {
            topic: format!("{}.out", self.topic),
            key: input.tenant_id,
            event_id: id,
            payload: vec![],
        }])
    }
}

fn envelope(event_type: &str, n: u32) -> RawEnvelope {
    let now = chrono::Utc::now();
    RawEnvelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        tenant_id: format!("tenant-{n}"),
        environment: Environment::Live,
        occurred_at: now,
        ingested_at: now,
        idempotency_key: None,
        source: "test".to_owned(),
        user_id: None,
        customer_id: None,
        session_id: None,
        trace_id: None,
        payload: serde_json::json!({}),
    }
}

fn emit_of(topic: &str, e: &RawEnvelope) -> Emit {
    Emit {
        topic: topic.to_owned(),
        key: e.tenant_id.clone(),
        event_id: e.event_id,
        payload: serde_json::to_vec(e).expect("json"),
    }
}

/// Finding 4 (runtime half): a panic inside `apply` dead-letters that input with the reason and the
/// partition goes on; the process never crash-loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_dead_letters_the_input_and_the_partition_goes_on() -> anyhow::Result<()> {
    let p = Pipeline::start_with("harden_panic", &[], &[], "").await?;
    let cfg = config(&p);
    let topics = Topics::new(p.topic_prefix.clone());
    let input = format!("{}live.panicky.in", p.topic_prefix);
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &[input.clone(), format!("{input}.out")]).await?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    // One tenant, so all three share a partition: the bad one sits between two good ones.
    let mut batch = vec![envelope("test.fine", 1), envelope("test.explode", 1), envelope("test.fine", 1)];
    for e in &mut batch {
        e.tenant_id = "tenant-1".to_owned();
    }
    let emits: Vec<Emit> = batch.iter().map(|e| emit_of(&input, e)).collect();
    produce_all(&producer, &emits, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    let stop = riverbank_runtime::CancellationToken::new();
    let run = {
        let (cfg, stop, topic) = (cfg.clone(), stop.clone(), input.clone());
        tokio::spawn(async move { riverbank_runtime::process::run(&cfg, Panicky { topic }, stop).await })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (outputs, letters) = loop {
        let kcfg = cfg.kafka.clone();
        let (out, dlq) = (format!("{input}.out"), topics.dead_letters(Environment::Live));
        let (o, d) = tokio::task::spawn_blocking(move || {
            let o = riverbank_runtime::kafka::read_all(&kcfg, &out, 100, Duration::from_secs(10));
            let d = riverbank_runtime::kafka::read_all(&kcfg, &dlq, 100, Duration::from_secs(10));
            (o, d)
        })
        .await?;
        let (o, d) = (o.map_err(anyhow::Error::msg)?, d.map_err(anyhow::Error::msg)?);
        if (o.len() >= 2 && !d.is_empty()) || Instant::now() > deadline {
            break (o, d);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.cancel();
    run.await??;
    let distinct: std::collections::HashSet<Vec<u8>> = outputs.iter().filter_map(|r| r.key.clone()).collect();
    anyhow::ensure!(
        outputs.len() >= 2 && !distinct.is_empty(),
        "the good inputs were processed: {} outputs",
        outputs.len()
    );
    anyhow::ensure!(letters.len() == 1, "exactly the bad input is dead-lettered: {} letters", letters.len());
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload)?;
    let reason = letter["reason"].as_str().unwrap_or_default();
    anyhow::ensure!(reason.contains("panicked") && reason.contains("boom"), "the reason says why: {reason}");
    anyhow::ensure!(letter["source_offset"] == 1, "the letter names the input: {letter}");
    p.finish().await
}

fn status_event(tenant: &str, i: usize) -> RawEnvelope {
    let s = TransferStatusChanged {
        transfer_id: format!("t-{i}"),
        kind: TransferKind::Deposit,
        amount: Money::new(100, Currency::from_code("USD").expect("USD")),
        previous: None,
        status: TransferStatus::Initiated,
        version: 1,
        reason: None,
        cause_event_id: uuid::Uuid::new_v4(),
    };
    let now = chrono::Utc::now();
    let e = Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: TransferStatusChanged::EVENT_TYPE.to_owned(),
        schema_version: 1,
        tenant_id: tenant.to_owned(),
        environment: Environment::Live,
        occurred_at: now,
        ingested_at: now,
        idempotency_key: None,
        source: "test".to_owned(),
        user_id: None,
        customer_id: None,
        session_id: None,
        trace_id: None,
        payload: s,
    };
    serde_json::from_value(serde_json::to_value(e).expect("json")).expect("raw")
}

async fn pg_positions(p: &Pipeline) -> anyhow::Result<i64> {
    let pool = p.pg().await?;
    let n: Option<i64> =
        sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM sink_offsets WHERE sink = 'postgres'")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(n.unwrap_or(0))
}

async fn history_rows(p: &Pipeline) -> anyhow::Result<i64> {
    let pool = p.pg().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transfer_status_history").fetch_one(&pool).await?;
    pool.close().await;
    Ok(n)
}

async fn wait_rows(p: &Pipeline, want: i64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = history_rows(p).await?;
        if n == want {
            return Ok(());
        }
        anyhow::ensure!(
            n < want && Instant::now() < deadline,
            "{n} rows, want {want}; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Finding 7: a recreated topic. The sink landed 1,000 events; the topic is deleted and created again;
/// 10 events land; the sink stops while 2,000 more arrive (the new log grows past the old position),
/// then starts: all 2,010 of the new log land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_read_from_its_start_even_after_it_outgrows_the_old_position(
) -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 1\n";
    let mut p = Pipeline::start_with("harden_recreate", &[], &[PG_SINK], extra).await?;
    let cfg = config(&p);
    let topic = Topics::new(p.topic_prefix.clone()).transfer_status(Environment::Live);
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let send = |from: usize, n: usize| {
        let emits: Vec<Emit> =
            (from..from + n).map(|i| emit_of(&topic, &status_event("tenant-a", i))).collect();
        emits
    };
    produce_all(&producer, &send(0, 1000), Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    wait_rows(&p, 1000, Duration::from_secs(90)).await?;
    p.kill(PG_SINK).await?;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create()?;
    admin.delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, std::slice::from_ref(&topic)).await?;
    produce_all(&producer, &send(1000, 10), Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    p.spawn(PG_SINK)?;
    wait_rows(&p, 1010, Duration::from_secs(90)).await?;
    p.kill(PG_SINK).await?;
    produce_all(&producer, &send(1010, 2000), Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    p.spawn(PG_SINK)?;
    wait_rows(&p, 3010, Duration::from_secs(90)).await?;
    p.finish().await
}

/// Finding 3: rows a store would refuse (a time before 1970, a NUL in text, a negative pending
/// balance) are dead-lettered with the reason, and the events behind them land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_store_would_refuse_is_dead_lettered_and_the_rest_land() -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 1\n";
    let p = Pipeline::start_with("harden_poison", &[], &[PG_SINK], extra).await?;
    let cfg = config(&p);
    let topics = Topics::new(p.topic_prefix.clone());
    let topic = topics.transfer_status(Environment::Live);
    let mut ancient = status_event("tenant-a", 0);
    ancient.occurred_at = chrono::DateTime::from_timestamp(-300_000_000_000, 0).expect("representable");
    let mut nul = status_event("tenant-a", 1);
    nul.payload["transfer_id"] = serde_json::Value::from("t\u{0}x");
    let good = status_event("tenant-b", 2);
    let emits = vec![emit_of(&topic, &ancient), emit_of(&topic, &nul), emit_of(&topic, &good)];
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    produce_all(&producer, &emits, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    wait_rows(&p, 1, Duration::from_secs(30)).await?;
    let kcfg = cfg.kafka.clone();
    let dlq = topics.dead_letters(Environment::Live);
    let letters = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&kcfg, &dlq, 100, Duration::from_secs(10))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| serde_json::from_slice::<serde_json::Value>(&l.payload).map(|v| v["reason"].to_string()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(reasons.len() == 2, "two letters: {reasons:?}");
    anyhow::ensure!(reasons.iter().any(|r| r.contains("occurred_at")), "{reasons:?}");
    anyhow::ensure!(reasons.iter().any(|r| r.contains("NUL")), "{reasons:?}");
    p.finish().await
}

/// Status events so far per partition of the live status topic (log ends).
fn status_ends(cfg: &riverbank_runtime::Config, topics: &Topics) -> anyhow::Result<Vec<i64>> {
    use rdkafka::consumer::Consumer as _;
    let c: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create()?;
    let topic = topics.transfer_status(Environment::Live);
    (0..cfg.kafka.topic_partitions)
        .map(|p| Ok(c.fetch_watermarks(&topic, p, Duration::from_secs(5))?.1))
        .collect()
}

/// Poll `done` every half second until it says so, at most `timeout`.
async fn until(
    p: &Pipeline,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        anyhow::ensure!(Instant::now() < deadline, "not within {timeout:?}; logs in {}", p.dir.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

fn log_of(p: &Pipeline, name: &str) -> String {
    std::fs::read_to_string(p.dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Finding 2: a stateful processor that finds no checkpoint while its input's log start is past 0
/// (retention removed the first inputs) refuses that partition with a clear error naming it, and never
/// starts it from nothing; the other partitions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkpoint_over_a_trimmed_input_log_is_refused_not_started_empty() -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 2\n";
    let mut p = Pipeline::start_with("harden_trimmed", &[], &[], extra).await?;
    let cfg = config(&p);
    let topics = Topics::new(p.topic_prefix.clone());
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &riverbank_runtime::kafka::all_topics(&cfg.kafka))
        .await?;
    let tenants =
        ["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e", "tenant-f", "tenant-g", "tenant-h"];
    let inputs = transfer_inputs(&tenants, 5, 3);
    produce(&p, &inputs).await?;
    // Retention (simulated with DeleteRecords) removes the first two inputs of partition 0 before any
    // processor ran.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let input_topic = topics.transfer_inputs(Environment::Live);
    tpl.add_partition_offset(&input_topic, 0, rdkafka::Offset::Offset(2))?;
    admin.delete_records(&tpl, &rdkafka::admin::AdminOptions::new()).await?;
    p.spawn(TRANSFERS)?;
    until(&p, Duration::from_secs(60), || {
        let ends = status_ends(&cfg, &topics)?;
        let log = log_of(&p, "process-transfers");
        if ends[1] > 0 && log.contains("refusing to start this partition with empty state") {
            anyhow::ensure!(ends[0] == 0, "partition 0 was started from nothing: {ends:?}");
            anyhow::ensure!(log.contains(&format!("{input_topic}/0")), "the error names the partition");
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    anyhow::ensure!(p.running(TRANSFERS), "the process keeps running the other partitions");
    p.finish().await
}

/// Finding 11/13: one unreadable checkpoint record blocks its own partition only; the others restore
/// and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_blocks_only_its_partition() -> anyhow::Result<()> {
    let extra = "[kafka]\ntopic_partitions = 2\n";
    let mut p = Pipeline::start_with("harden_badckpt", &[], &[TRANSFERS], extra).await?;
    let cfg = config(&p);
    let topics = Topics::new(p.topic_prefix.clone());
    let tenants = ["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e", "tenant-f"];
    produce(&p, &transfer_inputs(&tenants, 5, 4)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_ends(&cfg, &topics)?.contains(&0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "both partitions never produced; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    p.kill(TRANSFERS).await?;
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let ct = topics.checkpoints(Environment::Live, "transfers");
    let garbage =
        Emit { topic: ct, key: "x".into(), event_id: uuid::Uuid::nil(), payload: b"not a record".to_vec() };
    produce_at(&producer, &[(Some(0), &garbage)], Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let before = status_ends(&cfg, &topics)?;
    p.spawn(TRANSFERS)?;
    let mut more = transfer_inputs(&tenants, 5, 5);
    for e in &mut more {
        e.event_id = uuid::Uuid::new_v4(); // new inputs, not replays of the first ones
        if let Some(id) = e.payload.get("transfer_id").and_then(|v| v.as_str()).map(|s| format!("{s}-2")) {
            e.payload["transfer_id"] = serde_json::Value::from(id);
        }
    }
    produce(&p, &more).await?;
    until(&p, Duration::from_secs(60), || {
        let now = status_ends(&cfg, &topics)?;
        let log = log_of(&p, "process-transfers");
        if now[1] > before[1] && log.contains("partition not restored") {
            anyhow::ensure!(now[0] == before[0], "the blocked partition produced: {before:?} → {now:?}");
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    anyhow::ensure!(p.running(TRANSFERS), "the process keeps running");
    p.finish().await
}

/// Finding 13: `/v1/balances` pages with a cursor instead of truncating silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_page_with_a_cursor_and_never_truncate_silently() -> anyhow::Result<()> {
    let extra = "[api]\npage_rows_max = 3\n";
    let p = Pipeline::start_with("harden_balances", &[], &[TRANSFERS, PG_SINK, &["api"]], extra).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let inputs = transfer_inputs(&["tenant-a"], 12, 8);
    produce(&p, &inputs).await?;
    converge(&p, &reference(&topics, &inputs), false, Duration::from_secs(120)).await?;
    let pool = p.pg().await?;
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM account_balances WHERE tenant_id = 'tenant-a'")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    anyhow::ensure!(all > 3, "the workload spans more accounts than a page: {all}");
    p.wait_healthy(&format!("{}/health", p.api_url)).await.ok();
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut url = format!("{}/v1/balances?tenant_id=tenant-a", p.api_url);
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", urlencode(a)));
        }
        let body: serde_json::Value = p.http.get(&url).send().await?.error_for_status()?.json().await?;
        let rows = body["balances"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(rows.len() <= 3, "a page holds at most page_rows_max rows");
        seen.extend(rows.iter().map(|r| format!("{}/{}", r["account"], r["currency"])));
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
        anyhow::ensure!(pages < 100, "pagination ends");
    }
    let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
    anyhow::ensure!(
        seen.len() as i64 == all && distinct.len() == seen.len(),
        "{} of {all} over {pages} pages",
        seen.len()
    );
    p.finish().await
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn complete_through(
    p: &Pipeline,
    tenant: &str,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let scope = [("tenant_id", tenant), ("environment", "live")];
    let v = riverbank::demo::get_json(&p.http, &format!("{}/v1/analytics/audit-volume", p.api_url), &scope)
        .await?;
    Ok(v["complete_through"]
        .as_str()
        .map(chrono::DateTime::parse_from_rfc3339)
        .transpose()?
        .map(|t| t.to_utc()))
}

/// Finding 5: `complete_through` never claims an instant while events stamped before it can still
/// arrive. With the audit processor stopped, accepted webhooks are upstream; the answer must not claim
/// their time (the old sink stamped "now − 30 s" every second while idle). Once the processor runs, it
/// moves past them, and it never moves backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_through_waits_for_a_stopped_upstream_processor() -> anyhow::Result<()> {
    // A short margin (produce timeouts 5 s + skew 0.1 s) so the test does not wait for the production one.
    let extra = "[kafka]\nmessage_timeout_ms = 3000\n[sinks]\nclock_skew_max_ms = 100\n";
    let audit: &[&str] = &["process", "audit"];
    let mut p =
        Pipeline::start_with("harden_complete", &[("tenant-a", 7)], &[&["ingest"], CH_SINK, &["api"]], extra)
            .await?;
    let a = crate::harness::sender("tenant-a", 7);
    // Before anything: the audit topic's partitions have no value yet, so there is none.
    let first_sent = chrono::Utc::now();
    let statuses =
        riverbank::demo::send_all(&p.http, &p.ingest_url, crate::harness::deliveries(&a, "ct", 40)).await;
    anyhow::ensure!(
        statuses.iter().all(|s| s.as_ref().is_ok_and(|s| s.is_success())),
        "accepted: {statuses:?}"
    );
    // The processor is down: whatever the sink says, it must not cover the accepted events.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(t) = complete_through(&p, "tenant-a").await? {
            anyhow::ensure!(
                t < first_sent,
                "complete_through {t} claims events accepted at {first_sent} that are upstream"
            );
        }
    }
    anyhow::ensure!(
        riverbank::demo::analytics_count(&p.http, &p.api_url, "tenant-a", Environment::Live).await?.0 == 0
    );
    p.spawn(audit)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        let t = complete_through(&p, "tenant-a").await?;
        anyhow::ensure!(t >= last, "complete_through moved back: {last:?} → {t:?}");
        last = t;
        if t.is_some_and(|t| t > first_sent) {
            let (n, _) =
                riverbank::demo::analytics_count(&p.http, &p.api_url, "tenant-a", Environment::Live).await?;
            anyhow::ensure!(n == 40, "complete through {t:?}, past the sends, but {n} of 40 events counted");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "complete_through never passed the sends: {t:?}; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    p.finish().await
}

/// Findings 2 and 13: start-up refuses existing topics whose configs would lose state (an expiring or
/// compacted checkpoint topic, a compacted event topic) or whose partition count differs from the
/// config, naming the topic and the setting; topics riverbank creates itself pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_topics_that_would_lose_state() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let p = Pipeline::start_with("harden_topics", &[], &[], "").await?;
    let kcfg = config(&p).kafka;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kcfg.brokers).create()?;
    let name = |n: &str| format!("{}live.{n}", p.topic_prefix);
    let (expiring, compacted, skewed) =
        (name("checkpoints.x"), name("events.compacted"), name("events.skewed"));
    let parts = kcfg.topic_partitions;
    let topics = [
        NewTopic::new(&expiring, parts, TopicReplication::Fixed(1)).set("retention.ms", "604800000"),
        NewTopic::new(&compacted, parts, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"),
        NewTopic::new(&skewed, parts + 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(topics.iter(), &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let refusal = |topic: &String| {
        let (kcfg, topic) = (kcfg.clone(), topic.clone());
        async move {
            match riverbank_runtime::kafka::ensure_topics(&kcfg, std::slice::from_ref(&topic)).await {
                Ok(()) => anyhow::bail!("{topic} was accepted"),
                Err(e) => Ok(e.to_string()),
            }
        }
    };
    let e = refusal(&expiring).await?;
    anyhow::ensure!(e.contains(&expiring) && e.contains("retention.ms=604800000"), "{e}");
    let e = refusal(&compacted).await?;
    anyhow::ensure!(e.contains(&compacted) && e.contains("cleanup.policy=compact"), "{e}");
    let e = refusal(&skewed).await?;
    anyhow::ensure!(e.contains(&skewed) && e.contains("partitions"), "{e}");
    // What riverbank creates itself is accepted, again and again.
    let fresh = vec![name("checkpoints.fresh"), name("events.fresh")];
    riverbank_runtime::kafka::ensure_topics(&kcfg, &fresh).await?;
    riverbank_runtime::kafka::ensure_topics(&kcfg, &fresh).await?;
    p.finish().await
}
