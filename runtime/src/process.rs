//! The processor loop: consume → apply (pure) → produce outputs → checkpoint state → commit.
//!
//! Delivery: effectively once without Kafka transactions. Outputs carry ids derived from their input;
//! a batch's outputs are acknowledged (acks=all) before its checkpoint (state + next offset, one record
//! per partition) is written, and the checkpoint before the group commit. On (re)assignment a partition's
//! state is restored from its checkpoint and consumption resumes at the checkpoint's offset, so a crash at
//! any point replays inputs into identical outputs, which consumers deduplicate by event id.
//! Stateless processors (no checkpoints) use the group's committed offsets as their position.
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
pub use riverbank_schemas::processor::{Emit, InputRef, KvState, Processor, Verdict};
use riverbank_schemas::{derived_id, DeadLetter, Environment, RawEnvelope, Topics};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{self, Tracker};
use crate::checkpoint::{self, Writer};
use crate::config::Config;
use crate::kafka;

/// Inputs remembered as having panicked the processor (dead-lettered on their replay); a bound on memory.
const PANICKED_REMEMBERED_MAX: usize = 10_000;

/// Header carrying the event id, so consumers can deduplicate without decoding the payload.
pub const EVENT_ID_HEADER: &str = "riverbank-event-id";

/// A dead letter for a Kafka input, as an `Emit` to the environment's dead-letter topic.
pub fn dead_letter(
    topics: &Topics,
    env: Environment,
    rejected_by: &str,
    message: &OwnedMessage,
    reason: String,
) -> Emit {
    use base64::Engine as _;
    let id = derived_id(&[
        "deadletter",
        rejected_by,
        message.topic(),
        &message.partition().to_string(),
        &message.offset().to_string(),
    ]);
    let letter = DeadLetter {
        dead_letter_id: id,
        rejected_by: rejected_by.to_owned(),
        reason,
        source_topic: Some(message.topic().to_owned()),
        source_partition: Some(message.partition()),
        source_offset: Some(message.offset()),
        tenant_id: None,
        source: None,
        environment: Some(env),
        received_at: None,
        headers: Default::default(),
        raw_base64: base64::engine::general_purpose::STANDARD.encode(message.payload().unwrap_or_default()),
    };
    Emit {
        topic: topics.dead_letters(env),
        key: message.topic().to_owned(),
        event_id: id,
        payload: serde_json::to_vec(&letter).unwrap_or_default(),
    }
}

/// Produce every emit and wait until all are acknowledged. Sends are pipelined; the producer's queue
/// bounds memory (a full queue makes `send` wait, which is the backpressure).
pub async fn produce_all(producer: &FutureProducer, emits: &[Emit], timeout: Duration) -> Result<(), String> {
    let items: Vec<(Option<i32>, &Emit)> = emits.iter().map(|e| (None, e)).collect();
    produce_at(producer, &items, timeout).await
}

/// As `produce_all`, with an explicit partition where one is given (checkpoints).
pub async fn produce_at(
    producer: &FutureProducer,
    items: &[(Option<i32>, &Emit)],
    timeout: Duration,
) -> Result<(), String> {
    let sends = items.iter().map(|(partition, e)| {
        let id = e.event_id.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: EVENT_ID_HEADER, value: Some(id.as_bytes()) });
        let mut record = FutureRecord::to(&e.topic).key(&e.key).payload(&e.payload).headers(headers);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        producer.send(record, timeout)
    });
    for result in futures::future::join_all(sends).await {
        if let Err((err, _)) = result {
            return Err(format!("produce failed: {err}"));
        }
    }
    Ok(())
}

/// Run `processor` until `shutdown`; transient failures restart the consumer from the last checkpoint.
pub async fn run<P: Processor>(
    cfg: &Config,
    processor: P,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    let mut all = kafka::all_topics(&cfg.kafka);
    if processor.checkpoints() {
        all.extend(cfg.kafka.environments.iter().map(|&env| topics.checkpoints(env, processor.name())));
    }
    kafka::ensure_topics(&cfg.kafka, &all).await?;
    let inputs: Vec<String> =
        cfg.kafka.environments.iter().flat_map(|&env| processor.inputs(&topics, env)).collect();
    let producer = kafka::producer(&cfg.kafka)?;
    let mut backoff =
        Backoff::new(cfg.processor.retry_backoff_initial_ms, cfg.processor.retry_backoff_max_ms);
    let mut panicked: HashMap<(String, i32, i64), String> = HashMap::new();
    while !shutdown.is_cancelled() {
        match run_consumer(
            cfg,
            &topics,
            &inputs,
            &processor,
            &producer,
            &shutdown,
            &mut backoff,
            &mut panicked,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(processor = processor.name(), error = %e, attempts = backoff.attempts(), ?delay, "processor loop failed; restarting from the last checkpoint");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
    tracing::info!(processor = processor.name(), "processor stopped");
    Ok(())
}

/// One input partition's state and its checkpoint writer.
struct Part<S> {
    state: S,
    writer: Writer,
}

fn limits(cfg: &Config) -> checkpoint::Limits {
    checkpoint::Limits {
        snapshot_every_batches: cfg.processor.checkpoint_snapshot_every_batches,
        record_bytes_max: cfg.processor.checkpoint_record_bytes_max,
        restore_window_records: cfg.processor.restore_window_records,
        restore_timeout: Duration::from_millis(cfg.processor.restore_timeout_ms),
    }
}

/// Restore one partition: its state and the offset to resume from (the input's start when it has no
/// checkpoint yet, so a stateful processor never starts mid-history with empty state).
async fn restore_part<P: Processor>(
    cfg: &Config,
    processor: &P,
    consumer: &kafka::Consumer,
    checkpoint_topic: String,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(Part<P::State>, i64)> {
    let started = Instant::now();
    let (kcfg, l, input) = (cfg.kafka.clone(), limits(cfg), topic.to_owned());
    let ct = checkpoint_topic.clone();
    let restored =
        tokio::task::spawn_blocking(move || checkpoint::restore(&kcfg, &l, &ct, &input, partition)).await?;
    let restored = restored.map_err(anyhow::Error::msg)?;
    let (low, high) =
        consumer.fetch_watermarks(topic, partition, Duration::from_millis(cfg.kafka.metadata_timeout_ms))?;
    let restored = match restored {
        Some(r) if r.next_offset <= high && r.next_offset < low => anyhow::bail!(
            "{topic}/{partition}: the checkpoint resumes at offset {}, but the log starts at {low}: inputs \
             were deleted unread (retention); refusing to continue without them",
            r.next_offset
        ),
        Some(r) if r.next_offset > high => {
            // The checkpoint names offsets this log never had: the input topic was recreated. Its state
            // belongs to another history; start over from this log's beginning.
            tracing::warn!(processor = processor.name(), topic, partition, checkpoint_offset = r.next_offset, log_end = high, "checkpoint is past the input's end (topic recreated?); processing from the start with fresh state");
            None
        }
        other => other,
    };
    match restored {
        Some(r) => {
            let (records, seq, next) = (r.records_read, r.snapshot_seq, r.next_offset);
            let state = P::State::restore(r.entries).map_err(anyhow::Error::msg)?;
            metrics::histogram!("riverbank_processor_restore_seconds", "processor" => processor.name())
                .record(started.elapsed().as_secs_f64());
            tracing::info!(
                processor = processor.name(),
                topic,
                partition,
                next_offset = next,
                records,
                restore_ms = started.elapsed().as_millis() as u64,
                "state restored from checkpoint"
            );
            Ok((Part { state, writer: Writer::new(seq) }, next))
        }
        None if low > 0 => anyhow::bail!(
            "{topic}/{partition}: no checkpoint, and the log starts at offset {low} (earlier inputs were \
             deleted): refusing to start this partition with empty state; restore the checkpoint topic, or \
             rebuild from a complete input log"
        ),
        None => {
            tracing::info!(
                processor = processor.name(),
                topic,
                partition,
                from = low,
                "no checkpoint: processing from the start of the input"
            );
            Ok((Part { state: P::State::default(), writer: Writer::new(0) }, low))
        }
    }
}

/// A partition whose state could not be restored: paused, its restore retried with backoff, while the
/// other partitions go on.
struct Blocked {
    retry_at: Instant,
    attempts: u32,
}

/// Bounds of the restore retries of a blocked partition.
const BLOCKED_RETRY_INITIAL: Duration = Duration::from_secs(1);
const BLOCKED_RETRY_MAX: Duration = Duration::from_secs(60);

fn pause(consumer: &kafka::Consumer, topic: &str, partition: i32, on: bool) {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let r = if on { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = r {
        tracing::debug!(topic, partition, error = %e, pause = on, "pause/resume not applied");
    }
}

fn block(
    processor: &str,
    consumer: &kafka::Consumer,
    blocked: &mut HashMap<(String, i32), Blocked>,
    key: (String, i32),
    error: &anyhow::Error,
) {
    let attempts = blocked.get(&key).map_or(1, |b| b.attempts + 1);
    let delay = BLOCKED_RETRY_INITIAL.saturating_mul(1 << attempts.min(6)).min(BLOCKED_RETRY_MAX);
    tracing::error!(processor, topic = %key.0, partition = key.1, error = %error, attempts, retry_in = ?delay, "partition not restored; it waits (the others go on)");
    metrics::counter!("riverbank_processor_restore_failures_total", "processor" => processor.to_owned())
        .increment(1);
    pause(consumer, &key.0, key.1, true);
    blocked.insert(key, Blocked { retry_at: Instant::now() + delay, attempts });
}

#[allow(clippy::too_many_arguments)]
async fn run_consumer<P: Processor>(
    cfg: &Config,
    topics: &Topics,
    inputs: &[String],
    processor: &P,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    panicked: &mut HashMap<(String, i32, i64), String>,
) -> anyhow::Result<()> {
    let (consumer, watch) =
        kafka::consumer(&cfg.kafka, &topics.group(&format!("processor.{}", processor.name())))?;
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let stateful = processor.checkpoints();
    let mut generation = watch.generation();
    let mut parts: HashMap<(String, i32), Part<P::State>> = HashMap::new();
    let mut blocked: HashMap<(String, i32), Blocked> = HashMap::new();
    let mut tracker = Tracker::default();
    let linger = Duration::from_millis(cfg.processor.batch_linger_ms);
    let produce_timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    let seek_timeout = Duration::from_millis(cfg.kafka.commit_timeout_ms);
    let checkpoint_limits = limits(cfg);
    let idle = Duration::from_millis(cfg.processor.idle_wake_ms);
    loop {
        let mut to_restore: Vec<(String, i32)> = Vec::new();
        if watch.generation() != generation {
            // Partitions may have moved: forget them all, and restore every assigned one from its
            // checkpoint now (in parallel), before its inputs arrive.
            generation = watch.generation();
            parts.clear();
            for (t, p) in blocked.keys() {
                pause(&consumer, t, *p, false);
            }
            blocked.clear();
            tracker = Tracker::default();
            if stateful {
                to_restore = watch.assigned();
            }
        }
        let now = Instant::now();
        let due: Vec<(String, i32)> =
            blocked.iter().filter(|(_, b)| b.retry_at <= now).map(|(k, _)| k.clone()).collect();
        to_restore.extend(due);
        if !to_restore.is_empty() {
            let consumer = &consumer;
            let restores = to_restore.iter().filter_map(|(topic, partition)| {
                let env = topics.environment_of(topic)?;
                let ct = topics.checkpoints(env, processor.name());
                Some(async move {
                    let r = restore_part(cfg, processor, consumer, ct, topic, *partition).await;
                    ((topic.clone(), *partition), r)
                })
            });
            for (key, restored) in futures::future::join_all(restores).await {
                match restored {
                    Ok((part, next)) => {
                        if blocked.remove(&key).is_some() {
                            pause(consumer, &key.0, key.1, false);
                            tracing::info!(processor = processor.name(), topic = %key.0, partition = key.1, "partition restored after all");
                        }
                        tracker.set_durable(&key.0, key.1, next);
                        parts.insert(key, part);
                    }
                    Err(e) => block(processor.name(), consumer, &mut blocked, key, &e),
                }
            }
        }
        let (messages, error) =
            batch::collect(&consumer, cfg.processor.batch_events_max, linger, shutdown, &watch.changed, idle)
                .await;
        if messages.is_empty() {
            match error {
                Some(e) => return Err(e.into()),
                None if shutdown.is_cancelled() => return Ok(()),
                None => continue, // idle or rebalanced: partitions are restored as their inputs come
            }
        }
        tracker.begin_batch();
        let mut emits = Vec::new();
        let mut taken: Vec<&OwnedMessage> = Vec::with_capacity(messages.len());
        let mut touched: BTreeSet<(String, i32)> = BTreeSet::new();
        for m in &messages {
            let Some(env) = topics.environment_of(m.topic()) else {
                anyhow::bail!("subscribed to a topic outside the prefix: {}", m.topic());
            };
            let key = (m.topic().to_owned(), m.partition());
            if blocked.contains_key(&key) {
                continue; // fetched before the pause; read again once restored
            }
            if !parts.contains_key(&key) {
                if stateful {
                    let ct = topics.checkpoints(env, processor.name());
                    match restore_part(cfg, processor, &consumer, ct, m.topic(), m.partition()).await {
                        Ok((part, next)) => {
                            tracker.set_durable(m.topic(), m.partition(), next);
                            parts.insert(key.clone(), part);
                        }
                        Err(e) => {
                            block(processor.name(), &consumer, &mut blocked, key, &e);
                            continue;
                        }
                    }
                } else {
                    parts.insert(key.clone(), Part { state: P::State::default(), writer: Writer::new(0) });
                }
            }
            if !batch::take(&consumer, &mut tracker, m, seek_timeout, processor.name(), stateful)? {
                continue;
            }
            let at =
                InputRef { topic: m.topic(), partition: m.partition(), offset: m.offset(), environment: env };
            let verdict = if let Some(reason) = panicked.get(&(key.0.clone(), key.1, m.offset())) {
                Verdict::Poison(reason.clone())
            } else {
                match serde_json::from_slice::<RawEnvelope>(m.payload().unwrap_or_default()) {
                    Err(e) => Verdict::Poison(format!("not an envelope: {e}")),
                    Ok(envelope) if envelope.environment != env => Verdict::Poison(format!(
                        "envelope says environment {} on a {} topic",
                        envelope.environment, env
                    )),
                    Ok(envelope) => {
                        let Some(part) = parts.get_mut(&key) else {
                            anyhow::bail!("partition state vanished")
                        };
                        let state = &mut part.state;
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            processor.apply(state, &at, envelope)
                        })) {
                            Ok(v) => v,
                            Err(panic) => {
                                // The state may be half-changed: drop it and restart from the checkpoint;
                                // on the replay this input is dead-lettered instead of applied, so the
                                // partition goes on and replays decide the same.
                                let what = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| (*s).to_owned())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "a panic".to_owned());
                                let reason =
                                    format!("processor {} panicked on this input: {what}", processor.name());
                                tracing::error!(processor = processor.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "input dead-lettered; restarting from the checkpoint");
                                metrics::counter!("riverbank_processor_panics_total", "processor" => processor.name())
                                    .increment(1);
                                if panicked.len() >= PANICKED_REMEMBERED_MAX {
                                    panicked.clear();
                                }
                                panicked.insert((key.0.clone(), key.1, m.offset()), reason);
                                anyhow::bail!(
                                    "processor panicked at {}/{}@{}",
                                    m.topic(),
                                    m.partition(),
                                    m.offset()
                                );
                            }
                        }
                    }
                }
            };
            match verdict {
                Verdict::Emit(out) => emits.extend(out),
                Verdict::Poison(reason) => {
                    tracing::warn!(processor = processor.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "dead-lettered");
                    metrics::counter!("riverbank_dead_letters_total", "component" => processor.name())
                        .increment(1);
                    emits.push(dead_letter(
                        topics,
                        env,
                        &format!("processor:{}", processor.name()),
                        m,
                        reason,
                    ));
                }
            }
            touched.insert(key);
            taken.push(m);
        }
        if taken.is_empty() {
            continue;
        }
        produce_all(producer, &emits, produce_timeout).await.map_err(anyhow::Error::msg)?;
        let owned: Vec<OwnedMessage> = taken.iter().map(|m| (*m).clone()).collect();
        let next = batch::next_offsets(&owned);
        if stateful {
            let started = Instant::now();
            let mut records = Vec::new();
            for (topic, partition, next_offset) in &next {
                let env = topics.environment_of(topic).unwrap_or(Environment::Live);
                let Some(part) = parts.get_mut(&(topic.clone(), *partition)) else { continue };
                let changes = part.state.take_changes();
                let state = &part.state;
                records.extend(checkpoint::records_for_batch(
                    &mut part.writer,
                    &checkpoint_limits,
                    &topics.checkpoints(env, processor.name()),
                    topic,
                    *partition,
                    *next_offset,
                    || state.entries(),
                    changes,
                ));
            }
            let items: Vec<(Option<i32>, &Emit)> = records.iter().map(|(p, e)| (Some(*p), e)).collect();
            produce_at(producer, &items, produce_timeout).await.map_err(anyhow::Error::msg)?;
            let bytes: usize = records.iter().map(|(_, e)| e.payload.len()).sum();
            let name = processor.name();
            metrics::histogram!("riverbank_processor_checkpoint_seconds", "processor" => name)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("riverbank_processor_checkpoint_bytes", "processor" => name)
                .record(bytes as f64);
            tracing::debug!(
                processor = processor.name(),
                records = records.len(),
                bytes,
                checkpoint_ms = started.elapsed().as_millis() as u64,
                "checkpoint written"
            );
        }
        for (t, p, o) in &next {
            tracker.made_durable(t, *p, *o);
        }
        batch::commit(&consumer, &next, shutdown.is_cancelled())?;
        backoff.reset();
        let name = processor.name();
        metrics::counter!("riverbank_processor_events_in_total", "processor" => name)
            .increment(taken.len() as u64);
        metrics::counter!("riverbank_processor_events_out_total", "processor" => name)
            .increment(emits.len() as u64);
        metrics::histogram!("riverbank_processor_batch_events", "processor" => name)
            .record(taken.len() as f64);
        tracing::debug!(
            processor = processor.name(),
            inputs = taken.len(),
            outputs = emits.len(),
            "batch done"
        );
        if let Some(e) = error {
            return Err(e.into());
        }
    }
}
