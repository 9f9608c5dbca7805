//! The sink loop: consume → decode → write rows and positions to the store in one transaction.
//!
//! The store, not the consumer group, is the authority on progress: a sink writes each batch together
//! with the next offset per (topic, partition), and on (re)assignment it resumes from the offsets the
//! store holds. Consumer-group commits happen afterwards and only for lag monitoring. Rows are keyed on
//! event id, so a batch written twice (crash between store commit and group commit, or a replay) lands once.
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::Offset;
use riverbank_schemas::{Environment, Topics};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{self, Tracker};
use crate::config::Config;
use crate::kafka;
use crate::process::{dead_letter, produce_all, Emit};

pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// The next offset to consume for one (topic, partition): everything before it is durable in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    /// The latest ingestion time (ms) of an event landed in this partition so far, if any: every event
    /// of this partition ingested before it has landed (the complete-through watermark's input).
    pub landed_through_ms: Option<i64>,
}

/// A store a sink writes to. Implementations live in `sinks/`; this loop knows nothing of SQL.
pub trait SinkStore: Send + Sync + 'static {
    type Row: Send + Sync;
    /// `postgres`, `clickhouse`: names the consumer group and the positions the store keeps.
    fn name(&self) -> &'static str;
    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String>;
    /// Turn one message into rows (possibly none) and its ingestion time (ms); `Err(reason)`
    /// dead-letters it.
    fn decode(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(Vec<Self::Row>, i64), String>;
    /// Positions this store holds for `topic` (partitions never written are absent).
    fn load_positions(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<HashMap<i32, i64>, StoreError>> + Send;
    /// Write `rows` and `positions` atomically (or, where the store has no transactions, rows first and
    /// positions after, with rows idempotent on their key).
    fn write(
        &self,
        rows: &[Self::Row],
        positions: &[Position],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Run the sink until `shutdown`. Store outages are retried with bounded backoff, forever: the sink
/// reports them in the log and catches up when the store returns. Nothing is skipped.
pub async fn run<S: SinkStore>(cfg: &Config, store: S, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    kafka::ensure_topics(&cfg.kafka, &kafka::all_topics(&cfg.kafka)).await?;
    let inputs: Vec<String> =
        cfg.kafka.environments.iter().flat_map(|&env| store.inputs(&topics, env)).collect();
    let producer = kafka::producer(&cfg.kafka)?;
    let mut backoff = Backoff::new(cfg.sinks.retry_backoff_initial_ms, cfg.sinks.retry_backoff_max_ms);
    while !shutdown.is_cancelled() {
        match run_consumer(cfg, &topics, &inputs, &store, &producer, &shutdown, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = store.name(), error = %e, attempts = backoff.attempts(), ?delay, "sink loop failed; resuming from the store's positions");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
    tracing::info!(sink = store.name(), "sink stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_consumer<S: SinkStore>(
    cfg: &Config,
    topics: &Topics,
    inputs: &[String],
    store: &S,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (consumer, watch) = kafka::consumer(&cfg.kafka, &topics.group(&format!("sink.{}", store.name())))?;
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let mut generation = watch.generation();
    let mut tracker = Tracker::default();
    let linger = Duration::from_millis(cfg.sinks.batch_linger_ms);
    let produce_timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    let seek_timeout = Duration::from_millis(cfg.kafka.commit_timeout_ms);
    let idle = Duration::from_millis(cfg.sinks.idle_watermark_ms);
    // An event is stamped `ingested_at` before it is produced, and may take up to this long to be acked.
    let margin_ms =
        i64::try_from(cfg.kafka.message_timeout_ms.max(cfg.ingest.produce_timeout_ms)).unwrap_or(i64::MAX);
    loop {
        if watch.generation() != generation {
            // New assignment: position every assigned partition at the store's offset now, so a store
            // that is behind the group (a replay, a restored backup) is caught up even with no new input.
            generation = watch.generation();
            tracker = Tracker::default();
            position_assigned(
                store,
                &consumer,
                &watch.assigned(),
                &mut tracker,
                backoff,
                shutdown,
                seek_timeout,
            )
            .await?;
        }
        let (messages, error) =
            batch::collect(&consumer, cfg.sinks.batch_rows_max, linger, shutdown, &watch.changed, idle).await;
        if messages.is_empty() {
            match error {
                Some(e) => return Err(e.into()),
                None if shutdown.is_cancelled() => return Ok(()),
                None => {
                    reposition_behind(store, &consumer, &mut tracker, seek_timeout)?;
                    refresh_idle_watermarks(store, &consumer, &tracker, margin_ms, backoff, shutdown).await?;
                    continue;
                }
            }
        }
        let mut rows = Vec::with_capacity(messages.len());
        let mut dead = Vec::new();
        let mut taken: Vec<OwnedMessage> = Vec::with_capacity(messages.len());
        let mut landed: HashMap<(String, i32), i64> = HashMap::new();
        let mut batch_order = batch::InBatch::default();
        for m in messages {
            if !tracker.loaded.contains(m.topic()) {
                let loaded = retry(store.name(), "load positions", backoff, shutdown, || {
                    store.load_positions(m.topic())
                })
                .await?;
                for (p, o) in loaded {
                    tracker.durable.insert((m.topic().to_owned(), p), o);
                }
                tracker.loaded.insert(m.topic().to_owned());
            }
            let key = (m.topic().to_owned(), m.partition());
            if !tracker.resolved.contains(&key) {
                let stored = tracker.durable.get(&key).copied();
                if let Some(next) =
                    resume_at(store.name(), &consumer, m.topic(), m.partition(), stored, seek_timeout)
                {
                    tracker.durable.insert(key.clone(), next);
                }
                tracker.resolved.insert(key);
            }
            if !batch::take(&consumer, &mut tracker, &batch_order, &m, seek_timeout, store.name())? {
                continue;
            }
            match store.decode(m.topic(), m.partition(), m.offset(), m.payload().unwrap_or_default()) {
                Ok((r, ingested_ms)) => {
                    rows.extend(r);
                    let e = landed.entry((m.topic().to_owned(), m.partition())).or_insert(ingested_ms);
                    *e = (*e).max(ingested_ms);
                }
                Err(reason) => {
                    let env = topics.environment_of(m.topic()).unwrap_or(Environment::Live);
                    tracing::warn!(sink = store.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "dead-lettered");
                    metrics::counter!("riverbank_dead_letters_total", "component" => store.name())
                        .increment(1);
                    dead.push(dead_letter(topics, env, &format!("sink:{}", store.name()), &m, reason));
                }
            }
            batch_order.record(m.topic(), m.partition(), m.offset());
            taken.push(m);
        }
        if taken.is_empty() {
            continue;
        }
        // Dead letters are acknowledged before their offsets are passed.
        if !dead.is_empty() {
            let dead: &[Emit] = &dead;
            retry(store.name(), "dead-letter", backoff, shutdown, || async move {
                produce_all(producer, dead, produce_timeout).await.map_err(StoreError::from)
            })
            .await?;
        }
        let next = batch::next_offsets(&taken);
        let positions: Vec<Position> = next
            .iter()
            .map(|(t, p, o)| Position {
                topic: t.clone(),
                partition: *p,
                next_offset: *o,
                landed_through_ms: landed.get(&(t.clone(), *p)).copied(),
            })
            .collect();
        let (rows, positions) = (&rows, &positions);
        let started = std::time::Instant::now();
        retry(store.name(), "write", backoff, shutdown, || store.write(rows, positions)).await?;
        let sink = store.name();
        metrics::histogram!("riverbank_sink_write_seconds", "sink" => sink)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("riverbank_sink_rows_total", "sink" => sink).increment(rows.len() as u64);
        metrics::counter!("riverbank_sink_messages_total", "sink" => sink).increment(taken.len() as u64);
        for (t, p, o) in &next {
            let entry = tracker.durable.entry((t.clone(), *p)).or_insert(*o);
            *entry = (*entry).max(*o);
        }
        if let Err(e) = batch::commit(&consumer, &next, false) {
            tracing::debug!(sink = store.name(), error = %e, "group commit failed (advisory only)");
        }
        tracing::debug!(sink = store.name(), messages = taken.len(), rows = rows.len(), "batch durable");
        if let Some(e) = error {
            return Err(e.into());
        }
    }
}

/// Where to resume a partition, given the store's position. The store is the authority: with no
/// position it has landed nothing, so the partition is read from the start of the log (a wiped or new
/// store is rebuilt, not skipped). A position past the log's end means the topic was recreated (a new
/// cluster, a wiped dev broker): its offsets name other records, so the log is read from its start and
/// event-id deduplication keeps anything already landed from counting twice. `None` only when the
/// broker cannot be asked; the group's position is then used until the next assignment.
fn resume_at(
    sink: &str,
    consumer: &kafka::Consumer,
    topic: &str,
    partition: i32,
    stored: Option<i64>,
    timeout: Duration,
) -> Option<i64> {
    let (low, high) =
        match tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, partition, timeout)) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(sink, topic, partition, error = %e, "cannot read the log's bounds");
                return stored;
            }
        };
    match stored {
        Some(next) if next > high => {
            tracing::warn!(
                sink,
                topic,
                partition,
                stored = next,
                log_end = high,
                "store position is past the log's end (topic recreated?); reading the log from its start"
            );
            Some(low)
        }
        Some(next) => Some(next),
        None => Some(low),
    }
}

/// Attempts, and the pause between them, to seek a just-assigned partition.
const SEEK_ATTEMPTS_MAX: u32 = 50;
const SEEK_RETRY_MS: u64 = 100;

/// Load the store's positions for the assigned partitions and seek each one there.
async fn position_assigned<S: SinkStore>(
    store: &S,
    consumer: &kafka::Consumer,
    assigned: &[(String, i32)],
    tracker: &mut Tracker,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    seek_timeout: Duration,
) -> anyhow::Result<()> {
    let topics: std::collections::BTreeSet<&str> = assigned.iter().map(|(t, _)| t.as_str()).collect();
    for topic in topics {
        let loaded =
            retry(store.name(), "load positions", backoff, shutdown, || store.load_positions(topic)).await?;
        for (t, p) in assigned.iter().filter(|(t, _)| t == topic) {
            // The store is the authority: a partition it has no position for has landed nothing, so it
            // is read from the start of the log (a wiped or new store is rebuilt, not skipped).
            let next = match loaded.get(p) {
                Some(&next) => Some(next),
                None => tokio::task::block_in_place(|| consumer.fetch_watermarks(t, *p, seek_timeout))
                    .ok()
                    .map(|(low, _)| low),
            };
            if let Some(next) = next {
                tracker.durable.insert((t.clone(), *p), next);
                // Right after an assignment the partition may not be fetching yet ("erroneous state"):
                // retry briefly; if it still fails, `admit` positions it on its first message.
                let mut sought = false;
                for _ in 0..SEEK_ATTEMPTS_MAX {
                    match consumer.seek(t, *p, Offset::Offset(next), seek_timeout) {
                        Ok(()) => {
                            sought = true;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(SEEK_RETRY_MS)).await,
                    }
                }
                if sought {
                    tracker.positioned.insert((t.clone(), *p), batch::Positioned::Sought);
                } else {
                    tracing::warn!(sink = store.name(), topic = t, partition = p, "could not seek to the store's position on assignment; positioning on the first message");
                }
            }
        }
        tracker.loaded.insert(topic.to_owned());
    }
    Ok(())
}

/// While idle: if the consumer stands past the store's position (the group's committed offset was
/// ahead of a store that was reset or restored), seek back to the store's position. Right after an
/// assignment the group's offset can override an early seek, so this check is repeated while idle.
fn reposition_behind<S: SinkStore>(
    store: &S,
    consumer: &kafka::Consumer,
    tracker: &mut Tracker,
    seek_timeout: Duration,
) -> anyhow::Result<()> {
    let positions = consumer.position()?;
    for e in positions.elements() {
        let key = (e.topic().to_owned(), e.partition());
        let (Offset::Offset(at), Some(&next)) = (e.offset(), tracker.durable.get(&key)) else { continue };
        if at > next {
            tracing::info!(
                sink = store.name(),
                topic = e.topic(),
                partition = e.partition(),
                from = at,
                to = next,
                "consumer ahead of the store; seeking back"
            );
            consumer.seek(e.topic(), e.partition(), Offset::Offset(next), seek_timeout)?;
            tracker.positioned.insert(key, batch::Positioned::Sought);
        }
    }
    Ok(())
}

/// While idle: a partition whose store position has reached the log's end has landed everything
/// ingested before now (less the produce-time margin); record that so the watermark keeps moving.
async fn refresh_idle_watermarks<S: SinkStore>(
    store: &S,
    consumer: &kafka::Consumer,
    tracker: &Tracker,
    margin_ms: i64,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let now_ms = chrono_now_ms();
    let mut positions = Vec::new();
    for ((topic, partition), &next) in &tracker.durable {
        let high = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, *partition, Duration::from_secs(2))
        });
        if matches!(high, Ok((_, h)) if h <= next) {
            positions.push(Position {
                topic: topic.clone(),
                partition: *partition,
                next_offset: next,
                landed_through_ms: Some(now_ms - margin_ms),
            });
        }
    }
    if !positions.is_empty() {
        let positions = &positions;
        retry(store.name(), "watermark", backoff, shutdown, || store.write(&[], positions)).await?;
    }
    Ok(())
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Retry a store operation with bounded backoff until it succeeds or shutdown is requested.
async fn retry<T, F, Fut>(
    sink: &str,
    what: &str,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    mut op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    loop {
        match op().await {
            Ok(v) => {
                if backoff.attempts() > 0 {
                    tracing::info!(sink, what, "store healthy again");
                }
                metrics::gauge!("riverbank_sink_healthy", "sink" => sink.to_owned()).set(1.0);
                backoff.reset();
                return Ok(v);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink, what, error = %e, attempts = backoff.attempts(), ?delay, "store unavailable; retrying");
                metrics::counter!("riverbank_sink_store_errors_total", "sink" => sink.to_owned())
                    .increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shutdown while retrying {what}: {e}"),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
