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
    while !shutdown.is_cancelled() {
        match run_consumer(cfg, &topics, &inputs, &processor, &producer, &shutdown, &mut backoff).await {
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

async fn run_consumer<P: Processor>(
    cfg: &Config,
    topics: &Topics,
    inputs: &[String],
    processor: &P,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (consumer, watch) =
        kafka::consumer(&cfg.kafka, &topics.group(&format!("processor.{}", processor.name())))?;
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let stateful = processor.checkpoints();
    let mut generation = watch.generation();
    let mut parts: HashMap<(String, i32), Part<P::State>> = HashMap::new();
    let mut tracker = Tracker::default();
    let linger = Duration::from_millis(cfg.processor.batch_linger_ms);
    let produce_timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    let seek_timeout = Duration::from_millis(cfg.kafka.commit_timeout_ms);
    let checkpoint_limits = limits(cfg);
    let idle = Duration::from_millis(cfg.processor.idle_wake_ms);
    loop {
        if watch.generation() != generation {
            // Partitions may have moved: forget them all, and restore every assigned one from its
            // checkpoint now (in parallel), before its inputs arrive.
            generation = watch.generation();
            parts.clear();
            tracker = Tracker::default();
            if stateful {
                let assigned = watch.assigned();
                let consumer = &consumer;
                let restores = assigned.iter().filter_map(|(topic, partition)| {
                    let env = topics.environment_of(topic)?;
                    let ct = topics.checkpoints(env, processor.name());
                    Some(async move {
                        let r = restore_part(cfg, processor, consumer, ct, topic, *partition).await;
                        ((topic.clone(), *partition), r)
                    })
                });
                for (key, restored) in futures::future::join_all(restores).await {
                    let (part, next) = restored?;
                    tracker.durable.insert(key.clone(), next);
                    parts.insert(key, part);
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
        let mut emits = Vec::new();
        let mut taken: Vec<&OwnedMessage> = Vec::with_capacity(messages.len());
        let mut touched: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut batch_order = batch::InBatch::default();
        for m in &messages {
            let Some(env) = topics.environment_of(m.topic()) else {
                anyhow::bail!("subscribed to a topic outside the prefix: {}", m.topic());
            };
            let key = (m.topic().to_owned(), m.partition());
            if !parts.contains_key(&key) {
                let part = if stateful {
                    let ct = topics.checkpoints(env, processor.name());
                    let (part, next) =
                        restore_part(cfg, processor, &consumer, ct, m.topic(), m.partition()).await?;
                    tracker.durable.insert(key.clone(), next);
                    part
                } else {
                    Part { state: P::State::default(), writer: Writer::new(0) }
                };
                parts.insert(key.clone(), part);
            }
            if !batch::take(&consumer, &mut tracker, &batch_order, m, seek_timeout, processor.name())? {
                continue;
            }
            let at =
                InputRef { topic: m.topic(), partition: m.partition(), offset: m.offset(), environment: env };
            let verdict = match serde_json::from_slice::<RawEnvelope>(m.payload().unwrap_or_default()) {
                Err(e) => Verdict::Poison(format!("not an envelope: {e}")),
                Ok(envelope) if envelope.environment != env => Verdict::Poison(format!(
                    "envelope says environment {} on a {} topic",
                    envelope.environment, env
                )),
                Ok(envelope) => match parts.get_mut(&key) {
                    Some(part) => processor.apply(&mut part.state, &at, envelope),
                    None => anyhow::bail!("partition state vanished"),
                },
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
            batch_order.record(m.topic(), m.partition(), m.offset());
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
            tracker.durable.insert((t.clone(), *p), *o);
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
