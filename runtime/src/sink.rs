//! The sink loop: consume → decode → write rows and positions to the store in one transaction.
//!
//! The store, not the consumer group, is the authority on progress: a sink writes each batch together
//! with the next offset per (topic, partition), and on (re)assignment it resumes from the offsets the
//! store holds. Consumer-group commits happen afterwards and only for lag monitoring. Rows are keyed on
//! event id, so a batch written twice (crash between store commit and group commit, or a replay) lands once.
//!
//! A batch's write runs on a task of its own while the next batch is collected and decoded; one write is
//! in flight at a time, in order, and it is complete before the next one starts, before a rebalance is
//! handled, when the loop goes idle and at shutdown.
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
use crate::dead_letter::dead_letter;
use crate::kafka;
use crate::produce::{produce_all, Emit};
use crate::watermark::{self, Completeness};

pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// The next offset to consume for one (topic, partition): everything before it is durable in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    /// Complete-through (ms) of this partition, if known: every event ingested before it has landed
    /// (see `watermark`). Stores keep the greatest value written.
    pub landed_through_ms: Option<i64>,
    /// The event id of the message at `next_offset − 1`: the log's identity, checked on resume so a
    /// recreated topic is never read from a position that belongs to its previous life.
    pub last_event_id: Option<uuid::Uuid>,
    /// Bumped each time the topic is found recreated. Within an epoch a stored position only grows;
    /// a newer epoch replaces it.
    pub log_epoch: i32,
}

/// A position as a store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub next_offset: i64,
    pub last_event_id: Option<uuid::Uuid>,
    pub log_epoch: i32,
    pub landed_through_ms: Option<i64>,
}

/// A store a sink writes to. Implementations live in `sinks/`; this loop knows nothing of SQL.
pub trait SinkStore: Send + Sync + 'static {
    type Row: Send + Sync + 'static;
    /// `postgres`, `clickhouse`: names the consumer group and the positions the store keeps.
    fn name(&self) -> &'static str;
    /// Turn one message into rows (possibly none) and its ingestion time (ms); `Err(reason)`
    /// dead-letters it. `env` is the environment of the topic it was read from.
    fn decode(
        &self,
        topic: &str,
        env: Environment,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(Vec<Self::Row>, i64), String>;
    /// Positions this store holds for `topic` (partitions never written are absent).
    fn load_positions(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<HashMap<i32, Stored>, StoreError>> + Send;
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
pub async fn run<S: SinkStore>(
    cfg: &Config,
    store: S,
    inputs: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    let mut all = kafka::all_topics(&cfg.kafka);
    all.extend(inputs.iter().cloned());
    all.sort();
    all.dedup();
    kafka::ensure_topics(&cfg.kafka, &all).await?;
    let producer = kafka::producer(&cfg.kafka)?;
    let store = std::sync::Arc::new(store);
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

/// A batch's write on its task, and the offsets it makes durable.
struct Landing {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    next: Vec<(String, i32, i64)>,
    messages: usize,
    rows: usize,
}

/// What the loop knows of a partition beyond its offset: the store's log epoch, the id of the last
/// message landed, and whether the next write must replace a position of an earlier epoch.
#[derive(Debug, Clone, Default)]
struct PartMeta {
    log_epoch: i32,
    last_event_id: Option<uuid::Uuid>,
}

/// The sink's consumer loop on the shared skeleton (`batch::drive`).
struct SinkLoop<'a, S: SinkStore> {
    cfg: &'a Config,
    topics: &'a Topics,
    store: &'a S,
    /// The same store, for the task that writes a batch.
    shared: std::sync::Arc<S>,
    /// The batch being written.
    landing: Option<Landing>,
    producer: &'a FutureProducer,
    shutdown: &'a CancellationToken,
    backoff: &'a mut Backoff,
    consumer: kafka::Consumer,
    watch: std::sync::Arc<kafka::RebalanceWatch>,
    tracker: Tracker,
    meta: HashMap<(String, i32), PartMeta>,
    completeness: Completeness,
    /// Observation rounds (Kafka round trips) run on a thread of their own; the loop only applies them.
    rounds: std::sync::mpsc::Receiver<Vec<watermark::Observation>>,
    _observer: watermark::ObserverGuard,
    last_watermark: std::time::Instant,
    /// Assigned partitions whose seek failed (not fetching yet): sought again while idle.
    unpositioned: Vec<(String, i32)>,
}

impl<S: SinkStore> batch::Stage for SinkLoop<'_, S> {
    fn consumer(&self) -> &kafka::Consumer {
        &self.consumer
    }
    fn watch(&self) -> &kafka::RebalanceWatch {
        &self.watch
    }
    fn batch_limits(&self) -> (usize, Duration) {
        (self.cfg.sinks.batch_rows_max, Duration::from_millis(self.cfg.sinks.batch_linger_ms))
    }
    /// With a write in flight, wake as soon as a batch's linger passes without input, to complete it.
    fn idle_wake(&self) -> Duration {
        if self.landing.is_some() {
            return Duration::from_millis(self.cfg.sinks.batch_linger_ms.max(1));
        }
        Duration::from_millis(self.cfg.sinks.idle_watermark_ms)
    }
    /// Position every assigned partition at the store's offset now, so a store that is behind the group
    /// (a replay, a restored backup) is caught up even with no new input. One seek attempt each:
    /// positioning never holds up polling (a partition not yet fetching is sought again while idle, and
    /// `take` keeps every partition in sequence regardless).
    async fn rebalanced(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        self.tracker = Tracker::default();
        self.meta.clear();
        let assigned = self.watch.assigned();
        self.completeness.retain(&assigned);
        let started = std::time::Instant::now();
        let seek_timeout = Duration::from_millis(self.cfg.sinks.seek_timeout_ms);
        self.unpositioned = position_assigned(
            self.cfg,
            self.store,
            &self.consumer,
            &assigned,
            &mut self.tracker,
            &mut self.meta,
            &mut self.completeness,
            self.backoff,
            self.shutdown,
            seek_timeout,
        )
        .await?;
        tracing::info!(
            sink = self.store.name(),
            partitions = assigned.len(),
            not_fetching_yet = self.unpositioned.len(),
            positioning_ms = started.elapsed().as_millis() as u64,
            "assigned partitions positioned at the store's offsets"
        );
        Ok(())
    }
    async fn batch(&mut self, messages: Vec<OwnedMessage>) -> anyhow::Result<()> {
        self.land(messages).await
    }
    async fn idle(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        let seek_timeout = Duration::from_millis(self.cfg.sinks.seek_timeout_ms);
        let assigned = self.watch.assigned();
        reposition_behind(
            self.store.name(),
            &self.consumer,
            &assigned,
            &self.tracker,
            &mut self.unpositioned,
            seek_timeout,
        );
        Ok(())
    }
    /// Apply the complete-through observation rounds that arrived, every `watermark_interval_ms`.
    async fn after(&mut self) -> anyhow::Result<()> {
        if self.last_watermark.elapsed() < Duration::from_millis(self.cfg.sinks.watermark_interval_ms) {
            return Ok(());
        }
        self.last_watermark = std::time::Instant::now();
        let arrived: Vec<Vec<watermark::Observation>> = self.rounds.try_iter().collect();
        let assigned = self.watch.assigned();
        advance_watermarks(
            self.store,
            arrived,
            &assigned,
            &self.tracker,
            &self.meta,
            &mut self.completeness,
            self.backoff,
            self.shutdown,
        )
        .await
    }
}

async fn run_consumer<S: SinkStore>(
    cfg: &Config,
    topics: &Topics,
    inputs: &[String],
    store: &std::sync::Arc<S>,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (consumer, watch) = kafka::consumer(&cfg.kafka, &topics.group(&format!("sink.{}", store.name())))?;
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    // An event is stamped `ingested_at` before it is produced and may take up to the produce timeout to
    // be acknowledged; hosts' clocks may differ by up to the configured skew.
    let margin_ms = i64::try_from(
        cfg.kafka.message_timeout_ms.max(cfg.ingest.produce_timeout_ms) + cfg.sinks.clock_skew_max_ms,
    )
    .unwrap_or(i64::MAX);
    let (observer, rounds) = watermark::spawn_observer(
        &cfg.kafka,
        watch.clone(),
        Duration::from_millis(cfg.sinks.watermark_interval_ms),
        Duration::from_millis(cfg.kafka.metadata_timeout_ms),
        store.name(),
    )
    .map_err(anyhow::Error::msg)?;
    let mut l = SinkLoop {
        cfg,
        topics,
        store: &**store,
        shared: std::sync::Arc::clone(store),
        landing: None,
        producer,
        shutdown,
        backoff,
        consumer,
        watch,
        tracker: Tracker::default(),
        meta: HashMap::new(),
        completeness: Completeness::new(margin_ms),
        rounds,
        _observer: observer,
        last_watermark: std::time::Instant::now(),
        unpositioned: Vec::new(),
    };
    match batch::drive(&mut l, shutdown).await {
        Ok(()) => l.settle().await,
        Err(e) => {
            // The write in flight finishes (or fails) before the loop restarts from the store's positions.
            if let Some(landing) = l.landing.take() {
                let _ = landing.task.await;
            }
            Err(e)
        }
    }
}

impl<S: SinkStore> SinkLoop<'_, S> {
    /// Decode a batch (dead-lettering what cannot be), then make it durable.
    async fn land(&mut self, messages: Vec<OwnedMessage>) -> anyhow::Result<()> {
        let (store, topics) = (self.store, self.topics);
        let seek_timeout = Duration::from_millis(self.cfg.sinks.seek_timeout_ms);
        self.tracker.begin_batch();
        let mut rows = Vec::with_capacity(messages.len());
        let mut dead = Vec::new();
        let mut taken: Vec<OwnedMessage> = Vec::with_capacity(messages.len());
        for m in messages {
            if !self.tracker.has_position(m.topic(), m.partition()) {
                // Assigned in the middle of this batch (before the loop saw the rebalance): its position
                // comes from the store, like any assigned partition's.
                let one = [(m.topic().to_owned(), m.partition())];
                resolve_positions(
                    self.cfg,
                    store,
                    &self.consumer,
                    &one,
                    &mut self.tracker,
                    &mut self.meta,
                    &mut self.completeness,
                    self.backoff,
                    self.shutdown,
                )
                .await?;
            }
            if !batch::take(&self.consumer, &mut self.tracker, &m, seek_timeout, store.name(), false)? {
                continue;
            }
            let env = topics.environment_of(m.topic()).unwrap_or(Environment::Live);
            match store.decode(m.topic(), env, m.partition(), m.offset(), m.payload().unwrap_or_default()) {
                Ok((r, _ingested_ms)) => rows.extend(r),
                Err(reason) => {
                    tracing::warn!(sink = store.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "dead-lettered");
                    metrics::counter!("riverbank_dead_letters_total", "component" => store.name())
                        .increment(1);
                    dead.push(dead_letter(topics, env, &format!("sink:{}", store.name()), &m, reason));
                }
            }
            taken.push(m);
        }
        if taken.is_empty() {
            return Ok(());
        }
        self.write(rows, dead, &taken).await
    }

    /// Complete the previous batch's write, then start this batch's on a task: dead letters first
    /// (acknowledged before their offsets are passed), then rows and positions in one store write.
    async fn write(
        &mut self,
        rows: Vec<S::Row>,
        dead: Vec<Emit>,
        taken: &[OwnedMessage],
    ) -> anyhow::Result<()> {
        let next = batch::next_offsets(taken);
        for m in taken {
            let e = self.meta.entry((m.topic().to_owned(), m.partition())).or_default();
            e.last_event_id = crate::produce::event_id(m);
        }
        let positions: Vec<Position> = next
            .iter()
            .map(|(t, p, o)| {
                let pm = self.meta.get(&(t.clone(), *p)).cloned().unwrap_or_default();
                Position {
                    topic: t.clone(),
                    partition: *p,
                    next_offset: *o,
                    landed_through_ms: self.completeness.landed(t, *p),
                    last_event_id: pm.last_event_id,
                    log_epoch: pm.log_epoch,
                }
            })
            .collect();
        self.settle().await?;
        let (store, producer, shutdown) =
            (std::sync::Arc::clone(&self.shared), self.producer.clone(), self.shutdown.clone());
        let produce_timeout = Duration::from_millis(self.cfg.kafka.message_timeout_ms);
        let mut backoff =
            Backoff::new(self.cfg.sinks.retry_backoff_initial_ms, self.cfg.sinks.retry_backoff_max_ms);
        let (messages, row_count) = (taken.len(), rows.len());
        let task = tokio::spawn(async move {
            let (producer, dead, store) = (&producer, &dead, &*store);
            if !dead.is_empty() {
                retry(store.name(), "dead-letter", &mut backoff, &shutdown, || async move {
                    produce_all(producer, dead, produce_timeout).await.map_err(StoreError::from)
                })
                .await?;
            }
            let (rows, positions) = (&rows, &positions);
            let started = std::time::Instant::now();
            retry(store.name(), "write", &mut backoff, &shutdown, || store.write(rows, positions)).await?;
            let sink = store.name();
            metrics::histogram!("riverbank_sink_write_seconds", "sink" => sink)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("riverbank_sink_rows_total", "sink" => sink).increment(rows.len() as u64);
            metrics::counter!("riverbank_sink_messages_total", "sink" => sink).increment(messages as u64);
            Ok(())
        });
        self.landing = Some(Landing { task, next, messages, rows: row_count });
        Ok(())
    }

    /// Wait for the batch being written; its offsets are durable then (the group commit is advisory).
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(landing) = self.landing.take() else { return Ok(()) };
        landing.task.await??;
        for (t, p, o) in &landing.next {
            self.tracker.made_durable(t, *p, *o);
        }
        let sink = self.store.name();
        if let Err(e) = batch::commit(&self.consumer, &landing.next, false) {
            tracing::debug!(sink, error = %e, "group commit failed (advisory only)");
        }
        tracing::debug!(sink, messages = landing.messages, rows = landing.rows, "batch durable");
        Ok(())
    }
}

/// Partitions whose log bounds are asked for at the same time (each is two broker round trips).
const BOUNDS_CONCURRENCY: usize = 16;

/// The (low, high) offsets of `partitions` of `topic`, asked up to `BOUNDS_CONCURRENCY` at a time: a
/// sink assigned many partitions of a slow broker is positioned in a few round trips, not one per
/// partition in turn.
fn log_bounds(
    consumer: &kafka::Consumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> rdkafka::error::KafkaResult<HashMap<i32, (i64, i64)>> {
    tokio::task::block_in_place(|| {
        let mut bounds = HashMap::new();
        for chunk in partitions.chunks(BOUNDS_CONCURRENCY) {
            let fetched: Vec<(i32, rdkafka::error::KafkaResult<(i64, i64)>)> = std::thread::scope(|s| {
                let asks: Vec<_> = chunk
                    .iter()
                    .map(|&p| (p, s.spawn(move || consumer.fetch_watermarks(topic, p, timeout))))
                    .collect();
                asks.into_iter()
                    .map(|(p, h)| {
                        let r = h.join().unwrap_or(Err(rdkafka::error::KafkaError::MetadataFetch(
                            rdkafka::types::RDKafkaErrorCode::Fail,
                        )));
                        (p, r)
                    })
                    .collect()
            });
            for (p, r) in fetched {
                bounds.insert(p, r?);
            }
        }
        Ok(bounds)
    })
}

/// Load the store's positions for `parts` and decide where each resumes (`resume_at`).
#[allow(clippy::too_many_arguments)]
async fn resolve_positions<S: SinkStore>(
    cfg: &Config,
    store: &S,
    consumer: &kafka::Consumer,
    parts: &[(String, i32)],
    tracker: &mut Tracker,
    meta: &mut HashMap<(String, i32), PartMeta>,
    completeness: &mut Completeness,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let topics: std::collections::BTreeSet<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    let timeout = Duration::from_millis(cfg.kafka.metadata_timeout_ms);
    for topic in topics {
        let loaded =
            retry(store.name(), "load positions", backoff, shutdown, || store.load_positions(topic)).await?;
        let mine: Vec<i32> = parts.iter().filter(|(t, _)| t == topic).map(|(_, p)| *p).collect();
        let bounds = log_bounds(consumer, topic, &mine, timeout)?;
        // The log identity: the message before each stored position must be the one the store landed.
        let probes: Vec<(i32, i64)> = mine
            .iter()
            .filter_map(|p| {
                let s = loaded.get(p)?;
                let (low, high) = bounds[p];
                (s.last_event_id.is_some() && s.next_offset > low && s.next_offset <= high)
                    .then_some((*p, s.next_offset - 1))
            })
            .collect();
        let kcfg = cfg.kafka.clone();
        let t = topic.to_owned();
        let found =
            tokio::task::spawn_blocking(move || kafka::event_ids_at(&kcfg, &t, &probes, timeout)).await?;
        let found = found.unwrap_or_else(|e| {
            tracing::warn!(sink = store.name(), topic, error = %e, "cannot read the log to check its identity");
            HashMap::new()
        });
        for p in mine {
            let stored = loaded.get(&p);
            let (low, high) = bounds[&p];
            let (next, epoch) = resume_at(store.name(), topic, p, stored, (low, high), found.get(&p));
            tracker.set_durable(topic, p, next);
            meta.insert(
                (topic.to_owned(), p),
                PartMeta {
                    log_epoch: epoch,
                    last_event_id: stored.filter(|s| s.log_epoch == epoch).and_then(|s| s.last_event_id),
                },
            );
            if let Some(l) = stored.and_then(|s| s.landed_through_ms) {
                completeness.seed(topic, p, l);
            }
        }
    }
    Ok(())
}

/// Where to resume a partition and in which log epoch, given the store's position, the log's bounds
/// and the event id found at the stored position − 1. The store is the authority: with no position it
/// has landed nothing, so the partition is read from the start of the log (a wiped or new store is
/// rebuilt, not skipped). A position past the log's end, or one whose previous message is not the one
/// the store landed, means the topic was recreated (a new cluster, a wiped broker): its offsets name
/// other records, so the log is read from its start in a new epoch (positions of the old one are
/// replaced, not kept by "only forward"), and event-id deduplication keeps anything already landed from
/// counting twice.
fn resume_at(
    sink: &str,
    topic: &str,
    partition: i32,
    stored: Option<&Stored>,
    (low, high): (i64, i64),
    found: Option<&Option<String>>,
) -> (i64, i32) {
    let Some(s) = stored else { return (low, 0) };
    let recreated = if s.next_offset > high {
        Some(format!("store position {} is past the log's end {high}", s.next_offset))
    } else {
        match (s.last_event_id, found) {
            (Some(expected), Some(got)) if got.as_deref() != Some(expected.to_string().as_str()) => {
                Some(format!(
                    "the message before store position {} is not the one the store landed",
                    s.next_offset
                ))
            }
            _ => None,
        }
    };
    match recreated {
        Some(why) => {
            tracing::warn!(sink, topic, partition, %why, from = low, "topic recreated: reading the new log from its start");
            (low, s.log_epoch + 1)
        }
        None => (s.next_offset, s.log_epoch),
    }
}

/// Load the store's positions for the assigned partitions and seek each one there (one attempt each).
/// Returns the partitions whose seek failed (not fetching yet); they are sought again while idle.
#[allow(clippy::too_many_arguments)]
async fn position_assigned<S: SinkStore>(
    cfg: &Config,
    store: &S,
    consumer: &kafka::Consumer,
    assigned: &[(String, i32)],
    tracker: &mut Tracker,
    meta: &mut HashMap<(String, i32), PartMeta>,
    completeness: &mut Completeness,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    seek_timeout: Duration,
) -> anyhow::Result<Vec<(String, i32)>> {
    resolve_positions(cfg, store, consumer, assigned, tracker, meta, completeness, backoff, shutdown).await?;
    let mut failed = Vec::new();
    for (t, p) in assigned {
        let Some(next) = tracker.durable(t, *p) else { continue };
        if consumer.seek(t, *p, Offset::Offset(next), seek_timeout).is_err() {
            failed.push((t.clone(), *p));
        }
    }
    if !failed.is_empty() {
        tracing::debug!(
            sink = store.name(),
            partitions = failed.len(),
            "not fetching yet; positioned when idle or on their first message"
        );
    }
    Ok(failed)
}

/// While idle: seek again the partitions whose seek failed on assignment, and any partition the
/// consumer reads past the store's position (the group's committed offset was ahead of a store that
/// was reset or restored). One attempt each per idle round.
fn reposition_behind(
    sink: &str,
    consumer: &kafka::Consumer,
    assigned: &[(String, i32)],
    tracker: &Tracker,
    unpositioned: &mut Vec<(String, i32)>,
    seek_timeout: Duration,
) {
    unpositioned.retain(|(t, p)| {
        let Some(next) = tracker.durable(t, *p) else { return false };
        consumer.seek(t, *p, Offset::Offset(next), seek_timeout).is_err()
    });
    let Ok(positions) = consumer.position() else { return };
    for e in positions.elements() {
        let key = (e.topic().to_owned(), e.partition());
        if !assigned.contains(&key) {
            continue;
        }
        let (Offset::Offset(at), Some(next)) = (e.offset(), tracker.durable(e.topic(), e.partition())) else {
            continue;
        };
        if at > next {
            tracing::info!(
                sink,
                topic = e.topic(),
                partition = e.partition(),
                from = at,
                to = next,
                "consumer ahead of the store; seeking back"
            );
            if consumer.seek(e.topic(), e.partition(), Offset::Offset(next), seek_timeout).is_err() {
                unpositioned.push(key);
            }
        }
    }
}

/// Apply the observation rounds that arrived (see `watermark`); partitions whose complete-through
/// moved get it written with their unchanged positions. No I/O but that write.
#[allow(clippy::too_many_arguments)]
async fn advance_watermarks<S: SinkStore>(
    store: &S,
    arrived: Vec<Vec<watermark::Observation>>,
    assigned: &[(String, i32)],
    tracker: &Tracker,
    meta: &HashMap<(String, i32), PartMeta>,
    completeness: &mut Completeness,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for round in arrived {
        completeness.add(round, assigned);
    }
    let positions: Vec<Position> = completeness
        .resolve(|t, p| tracker.durable(t, p))
        .into_iter()
        .filter_map(|(t, p, landed)| {
            let next = tracker.durable(&t, p)?;
            let pm = meta.get(&(t.clone(), p)).cloned().unwrap_or_default();
            Some(Position {
                topic: t,
                partition: p,
                next_offset: next,
                landed_through_ms: Some(landed),
                last_event_id: pm.last_event_id,
                log_epoch: pm.log_epoch,
            })
        })
        .collect();
    if !positions.is_empty() {
        let positions = &positions;
        retry(store.name(), "watermark", backoff, shutdown, || store.write(&[], positions)).await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(next: i64, id: Option<uuid::Uuid>, epoch: i32) -> Stored {
        Stored { next_offset: next, last_event_id: id, log_epoch: epoch, landed_through_ms: None }
    }

    #[test]
    fn resume_follows_the_store_unless_the_log_is_another_one() {
        let id = uuid::Uuid::new_v4();
        let same = Some(id.to_string());
        // Never written: the start of the log.
        assert_eq!(resume_at("s", "t", 0, None, (3, 10), None), (3, 0));
        // The store's position, when the message before it is the one it landed.
        assert_eq!(resume_at("s", "t", 0, Some(&stored(7, Some(id), 2)), (0, 10), Some(&same)), (7, 2));
        // Unreadable (timeout): the store is trusted.
        assert_eq!(resume_at("s", "t", 0, Some(&stored(7, Some(id), 2)), (0, 10), None), (7, 2));
        // Past the end: recreated; a new epoch from the start.
        assert_eq!(resume_at("s", "t", 0, Some(&stored(70, Some(id), 2)), (0, 10), None), (0, 3));
        // Inside the new log, but another message sits before it (finding 7): recreated.
        let other = Some(uuid::Uuid::new_v4().to_string());
        assert_eq!(resume_at("s", "t", 0, Some(&stored(7, Some(id), 0)), (0, 10), Some(&other)), (0, 1));
        assert_eq!(resume_at("s", "t", 0, Some(&stored(7, Some(id), 0)), (0, 10), Some(&None)), (0, 1));
        // No identity recorded (an older release): the store is trusted.
        assert_eq!(resume_at("s", "t", 0, Some(&stored(7, None, 0)), (0, 10), Some(&other)), (7, 0));
    }
}
