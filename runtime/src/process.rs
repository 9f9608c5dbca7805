//! The processor loop: consume → apply (pure) → produce → commit.
//!
//! Delivery: at-least-once with deterministic output ids. Offsets are committed only after every
//! output of the batch was acknowledged by the broker (acks=all). A crash before the commit replays
//! the batch; the processor is deterministic, so replayed outputs carry the same event ids and bytes,
//! and every consumer (next processor, sinks) deduplicates on event id. No Kafka transactions needed.
use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
pub use riverbank_schemas::processor::{Emit, InputRef, Processor, Verdict};
use riverbank_schemas::{derived_id, DeadLetter, Environment, RawEnvelope, Topics};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch;
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
    let sends = emits.iter().map(|e| {
        let id = e.event_id.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: EVENT_ID_HEADER, value: Some(id.as_bytes()) });
        let record = FutureRecord::to(&e.topic).key(&e.key).payload(&e.payload).headers(headers);
        producer.send(record, timeout)
    });
    for result in futures::future::join_all(sends).await {
        if let Err((err, _)) = result {
            return Err(format!("produce failed: {err}"));
        }
    }
    Ok(())
}

/// Run `processor` until `shutdown`; transient failures restart the consumer from the last commit.
pub async fn run<P: Processor>(
    cfg: &Config,
    processor: P,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    kafka::ensure_topics(&cfg.kafka, &kafka::all_topics(&cfg.kafka)).await?;
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
                tracing::warn!(processor = processor.name(), error = %e, attempts = backoff.attempts(), ?delay, "processor loop failed; restarting from the last commit");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
    tracing::info!(processor = processor.name(), "processor stopped");
    Ok(())
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
    let (consumer, _watch) =
        kafka::consumer(&cfg.kafka, &topics.group(&format!("processor.{}", processor.name())))?;
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    // State per input partition. Rebuilt from the stream after a restart (stateless processors keep none).
    let mut states: HashMap<(String, i32), P::State> = HashMap::new();
    let linger = Duration::from_millis(cfg.processor.batch_linger_ms);
    let produce_timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    loop {
        let (messages, error) =
            batch::collect(&consumer, cfg.processor.batch_events_max, linger, shutdown).await;
        if messages.is_empty() {
            if let Some(e) = error {
                return Err(e.into());
            }
            return Ok(()); // shutdown with nothing in flight
        }
        let mut emits = Vec::new();
        for m in &messages {
            let Some(env) = topics.environment_of(m.topic()) else {
                anyhow::bail!("subscribed to a topic outside the prefix: {}", m.topic());
            };
            let at =
                InputRef { topic: m.topic(), partition: m.partition(), offset: m.offset(), environment: env };
            let verdict = match serde_json::from_slice::<RawEnvelope>(m.payload().unwrap_or_default()) {
                Err(e) => Verdict::Poison(format!("not an envelope: {e}")),
                Ok(envelope) if envelope.environment != env => Verdict::Poison(format!(
                    "envelope says environment {} on a {} topic",
                    envelope.environment, env
                )),
                Ok(envelope) => {
                    let state = states.entry((m.topic().to_owned(), m.partition())).or_default();
                    processor.apply(state, &at, envelope)
                }
            };
            match verdict {
                Verdict::Emit(out) => emits.extend(out),
                Verdict::Poison(reason) => {
                    tracing::warn!(processor = processor.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "dead-lettered");
                    emits.push(dead_letter(
                        topics,
                        env,
                        &format!("processor:{}", processor.name()),
                        m,
                        reason,
                    ));
                }
            }
        }
        produce_all(producer, &emits, produce_timeout).await.map_err(anyhow::Error::msg)?;
        let offsets = batch::next_offsets(&messages);
        batch::commit(&consumer, &offsets, shutdown.is_cancelled())?;
        backoff.reset();
        tracing::debug!(
            processor = processor.name(),
            inputs = messages.len(),
            outputs = emits.len(),
            "batch done"
        );
        if let Some(e) = error {
            return Err(e.into());
        }
    }
}
