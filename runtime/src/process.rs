//! The processor loop: consume the processor's log → apply (pure, `engine::step`) → produce outputs →
//! checkpoint state → commit.
//!
//! Delivery: effectively once without Kafka transactions. Outputs carry ids derived from their input;
//! a batch's outputs are acknowledged (acks=all) before its checkpoint (state + next offset, one record
//! per partition) is written, and the checkpoint before the group commit. The checkpoint's round trip is
//! pipelined: it is on the wire while the next batch is collected, applied and its outputs sent, and it
//! is acknowledged (then the batch committed) before the next checkpoint is sent, before a rebalance is
//! handled, when the loop goes idle and at shutdown. On (re)assignment a partition's
//! state is restored from its checkpoint and consumption resumes at the checkpoint's offset, so a crash at
//! any point replays inputs into identical outputs, which consumers deduplicate by event id. A partition
//! that stays with this instance across a rebalance keeps its state (no restore, no new snapshot) when
//! nobody else wrote its checkpoint partition in between.
//! Stateless processors (no checkpoints) use the group's committed offsets as their position.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use riverbank_schemas::processor::{Emit, Processor, Spec};
use riverbank_schemas::{Environment, Topics};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{self, Tracker};
use crate::checkpoint::{self, Writer};
use crate::config::Config;
use crate::engine::{self, LogRecord, Panicked, Partition};
use crate::kafka;
use crate::produce::{enqueue_at, header, InFlight, SOURCE_HEADER, TICK_HEADER};

/// Inputs remembered as having panicked the processor (dead-lettered on their replay); a bound on memory.
const PANICKED_REMEMBERED_MAX: usize = 10_000;

/// Bounds of the restore retries of a blocked partition.
const BLOCKED_RETRY_INITIAL: Duration = Duration::from_secs(1);
const BLOCKED_RETRY_MAX: Duration = Duration::from_secs(60);

type PartKey = (String, i32);

/// Every topic a processor needs in the configured environments (created and verified at start).
pub fn topics_of(cfg: &Config, name: &str, specs: &[(Environment, Spec)]) -> Vec<String> {
    let topics = kafka::topics(&cfg.kafka);
    let mut all = kafka::all_topics(&cfg.kafka);
    for (env, spec) in specs {
        all.extend(spec.inputs().cloned());
        all.extend(spec.output_topics().cloned());
        if spec.stateful {
            all.push(topics.checkpoints(*env, name));
        }
    }
    all.sort();
    all.dedup();
    all
}

/// Run `processor` (and its router, if its spec needs one) until `shutdown`; transient failures
/// restart the consumer from the last checkpoint.
pub async fn run<P: Processor>(
    cfg: &Config,
    processor: P,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    let specs: Vec<(Environment, Spec)> =
        cfg.kafka.environments.iter().map(|&env| (env, processor.spec(&topics, env))).collect();
    kafka::ensure_topics(&cfg.kafka, &topics_of(cfg, processor.name(), &specs)).await?;
    let router = specs.iter().any(|(_, s)| s.routes()).then(|| {
        let (c, name, s, stop) = (cfg.clone(), processor.name(), specs.clone(), shutdown.clone());
        tokio::spawn(async move { crate::router::run(&c, name, &s, stop).await })
    });
    let producer = kafka::producer(&cfg.kafka)?;
    let checkpoints = kafka::checkpoint_producer(&cfg.kafka)?;
    let producers = Producers { outputs: &producer, checkpoints: &checkpoints };
    let mut backoff =
        Backoff::new(cfg.processor.retry_backoff_initial_ms, cfg.processor.retry_backoff_max_ms);
    let mut panicked: HashMap<(String, i32, i64), Panicked> = HashMap::new();
    while !shutdown.is_cancelled() {
        let mut l = Loop::new(cfg, &topics, &specs, &processor, producers, &shutdown, &mut panicked)?;
        let result = match batch::drive(&mut l, &shutdown).await {
            Ok(()) => l.settle().await,
            Err(e) => {
                // Let a checkpoint still on the wire land (or fail) before the restart restores from the
                // checkpoint topic, so the restore never races it.
                l.abandon_pending().await;
                Err(e)
            }
        };
        if l.progressed {
            backoff.reset();
        }
        match result {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(processor = processor.name(), error = %e, attempts = backoff.attempts(), ?delay, "processor loop failed; restarting from the last checkpoint");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
    if let Some(router) = router {
        router.abort();
    }
    tracing::info!(processor = processor.name(), "processor stopped");
    Ok(())
}

/// The loop's producers: outputs (with linger, for throughput) and checkpoints (without).
#[derive(Clone, Copy)]
struct Producers<'a> {
    outputs: &'a FutureProducer,
    checkpoints: &'a FutureProducer,
}

/// One log partition: state, checkpoint writer, and where the checkpoint stands.
struct Part<S> {
    part: Partition<S>,
    writer: Writer,
    /// The next input offset the last checkpoint (or restore) reflects.
    next: i64,
    /// The checkpoint partition's end after this instance's last checkpoint record (`None`: none
    /// written yet). If the end is still there after a rebalance, nobody else wrote since.
    checkpoint_end: Option<i64>,
}

/// A batch's checkpoint records on the wire (see the module's doc): what settling it makes durable.
struct PendingCheckpoint {
    in_flight: InFlight,
    /// (log topic, checkpoint partition) of each record, in the order enqueued.
    records: Vec<(String, i32)>,
    /// The batch's next offsets, committed once the records are acknowledged.
    next: Vec<(String, i32, i64)>,
    bytes: usize,
    started: Instant,
}

/// A partition whose state could not be restored: paused, its restore retried with backoff, while the
/// other partitions go on.
struct Blocked {
    retry_at: Instant,
    attempts: u32,
}

fn limits(cfg: &Config) -> checkpoint::Limits {
    checkpoint::Limits {
        snapshot_every_batches: cfg.processor.checkpoint_snapshot_every_batches,
        record_bytes_max: cfg.processor.checkpoint_record_bytes_max,
        restore_window_records: cfg.processor.restore_window_records,
        restore_timeout: Duration::from_millis(cfg.processor.restore_timeout_ms),
    }
}

fn pause(consumer: &kafka::Consumer, topic: &str, partition: i32, on: bool) {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let r = if on { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = r {
        tracing::debug!(topic, partition, error = %e, pause = on, "pause/resume not applied");
    }
}

/// The state of one run of the consumer loop.
struct Loop<'a, P: Processor> {
    cfg: &'a Config,
    topics: &'a Topics,
    specs: &'a [(Environment, Spec)],
    processor: &'a P,
    producers: Producers<'a>,
    shutdown: &'a CancellationToken,
    consumer: kafka::Consumer,
    watch: std::sync::Arc<kafka::RebalanceWatch>,
    stateful: bool,
    parts: HashMap<PartKey, Part<P::State>>,
    /// Partitions revoked while nothing is assigned (between an eager rebalance's revoke and assign).
    parked: HashMap<PartKey, Part<P::State>>,
    blocked: HashMap<PartKey, Blocked>,
    tracker: Tracker,
    panicked: &'a mut HashMap<(String, i32, i64), Panicked>,
    /// A batch completed since the loop started (the restart backoff resets).
    progressed: bool,
    /// The last batch's checkpoint, not yet acknowledged.
    pending: Option<PendingCheckpoint>,
}

impl<P: Processor> batch::Stage for Loop<'_, P> {
    fn consumer(&self) -> &kafka::Consumer {
        &self.consumer
    }
    fn watch(&self) -> &kafka::RebalanceWatch {
        &self.watch
    }
    fn batch_limits(&self) -> (usize, Duration) {
        (self.cfg.processor.batch_events_max, Duration::from_millis(self.cfg.processor.batch_linger_ms))
    }
    /// With a checkpoint on the wire, wake as soon as a batch's linger passes without input, to settle it.
    fn idle_wake(&self) -> Duration {
        if self.pending.is_some() {
            return Duration::from_millis(self.cfg.processor.batch_linger_ms.max(1));
        }
        Duration::from_millis(self.cfg.processor.idle_wake_ms)
    }
    async fn rebalanced(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        let keys = self.rebalance();
        self.restore_all(keys).await;
        Ok(())
    }
    async fn batch(&mut self, messages: Vec<OwnedMessage>) -> anyhow::Result<()> {
        let (emits, taken) = self.apply_batch(&messages).await?;
        if !taken.is_empty() {
            self.finish_batch(&emits, &taken).await?;
            self.progressed = true;
        }
        Ok(())
    }
    async fn idle(&mut self) -> anyhow::Result<()> {
        self.settle().await
    }
    /// Retry the restores of blocked partitions that are due.
    async fn after(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let due: Vec<PartKey> =
            self.blocked.iter().filter(|(_, b)| b.retry_at <= now).map(|(k, _)| k.clone()).collect();
        self.restore_all(due).await;
        Ok(())
    }
}

impl<'a, P: Processor> Loop<'a, P> {
    fn new(
        cfg: &'a Config,
        topics: &'a Topics,
        specs: &'a [(Environment, Spec)],
        processor: &'a P,
        producers: Producers<'a>,
        shutdown: &'a CancellationToken,
        panicked: &'a mut HashMap<(String, i32, i64), Panicked>,
    ) -> anyhow::Result<Self> {
        let (consumer, watch) =
            kafka::consumer(&cfg.kafka, &topics.group(&format!("processor.{}", processor.name())))?;
        let logs: Vec<&str> = specs.iter().map(|(_, s)| s.log.as_str()).collect();
        consumer.subscribe(&logs)?;
        let stateful = specs.iter().any(|(_, s)| s.stateful);
        Ok(Loop {
            cfg,
            topics,
            specs,
            processor,
            producers,
            shutdown,
            consumer,
            watch,
            stateful,
            parts: HashMap::new(),
            parked: HashMap::new(),
            blocked: HashMap::new(),
            tracker: Tracker::default(),
            panicked,
            progressed: false,
            pending: None,
        })
    }

    fn name(&self) -> &'static str {
        self.processor.name()
    }

    fn spec_of(&self, log: &str) -> Option<(Environment, &'a Spec)> {
        self.specs.iter().find(|(_, s)| s.log == log).map(|(e, s)| (*e, s))
    }

    fn checkpoint_topic(&self, log: &str) -> Option<String> {
        self.spec_of(log).map(|(env, _)| self.topics.checkpoints(env, self.name()))
    }

    /// After a rebalance: keep the partitions still assigned whose checkpoint nobody else wrote since
    /// ours; drop the rest. Returns the assigned partitions to restore.
    fn rebalance(&mut self) -> Vec<PartKey> {
        let assigned = self.watch.assigned();
        for (t, p) in self.blocked.keys() {
            pause(&self.consumer, t, *p, false);
        }
        self.blocked.clear();
        self.tracker = Tracker::default();
        // Partitions not assigned now are parked, not dropped: an eager rebalance revokes everything
        // before it assigns, and a partition that comes back unchanged is taken up again as it was.
        // Parked ones are dropped once an assignment without them arrives.
        let mut candidates = std::mem::take(&mut self.parts);
        candidates.extend(std::mem::take(&mut self.parked));
        for (key, part) in candidates {
            if !assigned.contains(&key) {
                if !assigned.is_empty() {
                    continue;
                }
                self.parked.insert(key, part);
            } else if self.unchanged_since_ours(&key, &part) {
                self.tracker.set_durable(&key.0, key.1, part.next);
                self.parts.insert(key, part);
            }
        }
        if !self.stateful || assigned.is_empty() {
            return vec![];
        }
        tracing::info!(
            processor = self.name(),
            assigned = assigned.len(),
            kept = self.parts.len(),
            "rebalanced"
        );
        assigned.into_iter().filter(|k| !self.parts.contains_key(k)).collect()
    }

    /// Whether this partition's checkpoint still ends where this instance's last record left it.
    fn unchanged_since_ours(&self, key: &PartKey, part: &Part<P::State>) -> bool {
        if !self.stateful {
            return true;
        }
        let (Some(end), Some(ct)) = (part.checkpoint_end, self.checkpoint_topic(&key.0)) else {
            return false;
        };
        let timeout = Duration::from_millis(self.cfg.kafka.metadata_timeout_ms);
        let high = tokio::task::block_in_place(|| self.consumer.fetch_watermarks(&ct, key.1, timeout));
        matches!(high, Ok((_, h)) if h == end)
    }

    /// Restore partitions from their checkpoints, in parallel; a failure blocks that partition only.
    async fn restore_all(&mut self, keys: Vec<PartKey>) {
        if keys.is_empty() {
            return;
        }
        let this = &*self;
        let restores = keys.into_iter().filter_map(|key| {
            let ct = this.checkpoint_topic(&key.0)?;
            Some(async move {
                let r = restore_part::<P>(this.cfg, this.name(), &this.consumer, ct, &key.0, key.1).await;
                (key, r)
            })
        });
        let results = futures::future::join_all(restores).await;
        for (key, restored) in results {
            match restored {
                Ok(part) => {
                    if self.blocked.remove(&key).is_some() {
                        pause(&self.consumer, &key.0, key.1, false);
                        tracing::info!(processor = self.name(), topic = %key.0, partition = key.1, "partition restored after all");
                    }
                    self.tracker.set_durable(&key.0, key.1, part.next);
                    self.parts.insert(key, part);
                }
                Err(e) => self.block(key, &e),
            }
        }
    }

    fn block(&mut self, key: PartKey, error: &anyhow::Error) {
        let attempts = self.blocked.get(&key).map_or(1, |b| b.attempts + 1);
        let delay = BLOCKED_RETRY_INITIAL.saturating_mul(1 << attempts.min(6)).min(BLOCKED_RETRY_MAX);
        tracing::error!(processor = self.name(), topic = %key.0, partition = key.1, error = %error, attempts, retry_in = ?delay, "partition not restored (or over its state limit); it waits (the others go on)");
        metrics::counter!("riverbank_processor_restore_failures_total", "processor" => self.name())
            .increment(1);
        pause(&self.consumer, &key.0, key.1, true);
        self.parts.remove(&key);
        self.tracker.forget(&key.0, key.1);
        self.blocked.insert(key, Blocked { retry_at: Instant::now() + delay, attempts });
    }

    /// Make sure a partition has state before its first message: restore it (stateful) or start empty.
    async fn ensure_part(&mut self, key: &PartKey) -> bool {
        if self.parts.contains_key(key) {
            return true;
        }
        if !self.stateful {
            let part =
                Part { part: Partition::empty(), writer: Writer::new(0), next: 0, checkpoint_end: None };
            self.parts.insert(key.clone(), part);
            return true;
        }
        self.restore_all(vec![key.clone()]).await;
        self.parts.contains_key(key)
    }

    /// Apply every admissible message of a batch. Returns the outputs and the messages taken.
    async fn apply_batch<'m>(
        &mut self,
        messages: &'m [OwnedMessage],
    ) -> anyhow::Result<(Vec<Emit>, Vec<&'m OwnedMessage>)> {
        self.tracker.begin_batch();
        let seek_timeout = Duration::from_millis(self.cfg.kafka.commit_timeout_ms);
        let mut emits = Vec::new();
        let mut taken = Vec::with_capacity(messages.len());
        let name = self.name();
        for m in messages {
            let key = (m.topic().to_owned(), m.partition());
            let Some((env, spec)) = self.spec_of(m.topic()) else {
                anyhow::bail!("subscribed to a topic that is not this processor's log: {}", m.topic());
            };
            if self.blocked.contains_key(&key) || !self.ensure_part(&key).await {
                continue; // fetched before the pause; read again once restored
            }
            let stateful = self.stateful;
            if !batch::take(&self.consumer, &mut self.tracker, m, seek_timeout, name, stateful)? {
                continue;
            }
            let rec = LogRecord {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().unwrap_or_default(),
                source: header(m, SOURCE_HEADER),
                tick: header(m, TICK_HEADER),
            };
            let ctx = engine::Ctx { topics: self.topics, env, spec };
            let at = (key.0.clone(), key.1, m.offset());
            let Some(part) = self.parts.get_mut(&key) else { anyhow::bail!("partition state vanished") };
            match engine::step(self.processor, &ctx, &mut part.part, &rec, self.panicked.get(&at)) {
                Ok(out) => emits.extend(out),
                Err(p) => {
                    // The state may be half-changed: drop it and restart from the checkpoint; on the
                    // replay this input (or timer) is dead-lettered instead, so the partition goes on
                    // and replays decide the same.
                    tracing::error!(processor = self.name(), topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %p.reason, "input dead-lettered; restarting from the checkpoint");
                    metrics::counter!("riverbank_processor_panics_total", "processor" => self.name())
                        .increment(1);
                    if self.panicked.len() >= PANICKED_REMEMBERED_MAX {
                        self.panicked.clear();
                    }
                    self.panicked.insert(at, p);
                    anyhow::bail!("processor panicked at {}/{}@{}", m.topic(), m.partition(), m.offset());
                }
            }
            taken.push(m);
        }
        Ok((emits, taken))
    }

    /// Produce a batch's outputs, settle the previous batch's checkpoint while they are on the wire,
    /// then send this batch's checkpoint once the outputs are acknowledged (stateless: commit).
    async fn finish_batch(&mut self, emits: &[Emit], taken: &[&OwnedMessage]) -> anyhow::Result<()> {
        let produce_timeout = Duration::from_millis(self.cfg.kafka.message_timeout_ms);
        let items: Vec<(Option<i32>, &Emit)> = emits.iter().map(|e| (None, e)).collect();
        let outputs =
            enqueue_at(self.producers.outputs, &items, produce_timeout).await.map_err(anyhow::Error::msg)?;
        self.settle().await?;
        outputs.landed().await.map_err(anyhow::Error::msg)?;
        let next = batch::next_offsets(taken.iter().copied());
        if self.stateful {
            self.send_checkpoint(next).await?;
        } else {
            for (t, p, o) in &next {
                self.tracker.made_durable(t, *p, *o);
            }
            batch::commit(&self.consumer, &next, self.shutdown.is_cancelled())?;
        }
        let name = self.name();
        metrics::counter!("riverbank_processor_events_in_total", "processor" => name)
            .increment(taken.len() as u64);
        metrics::counter!("riverbank_processor_events_out_total", "processor" => name)
            .increment(emits.len() as u64);
        metrics::histogram!("riverbank_processor_batch_events", "processor" => name)
            .record(taken.len() as f64);
        tracing::debug!(processor = name, inputs = taken.len(), outputs = emits.len(), "batch done");
        Ok(())
    }

    /// Build one checkpoint record set per touched partition (from the state as this batch left it) and
    /// put it on the wire; [`Loop::settle`] waits for it.
    async fn send_checkpoint(&mut self, next: Vec<(String, i32, i64)>) -> anyhow::Result<()> {
        debug_assert!(self.pending.is_none(), "the previous checkpoint is settled first");
        let started = Instant::now();
        let l = limits(self.cfg);
        let mut records = Vec::new();
        for (topic, partition, next_offset) in &next {
            let Some(ct) = self.checkpoint_topic(topic) else { continue };
            let Some(p) = self.parts.get_mut(&(topic.clone(), *partition)) else { continue };
            let changes = p.part.take_changes();
            let part = &p.part;
            let r = checkpoint::records_for_batch(
                &mut p.writer,
                &l,
                &ct,
                topic,
                *partition,
                *next_offset,
                || part.snapshot(),
                changes,
            );
            p.next = *next_offset;
            records.extend(r.into_iter().map(|r| (topic.clone(), r)));
        }
        let items: Vec<(Option<i32>, &Emit)> = records.iter().map(|(_, (p, e))| (Some(*p), e)).collect();
        let produce_timeout = Duration::from_millis(self.cfg.kafka.message_timeout_ms);
        let in_flight = enqueue_at(self.producers.checkpoints, &items, produce_timeout)
            .await
            .map_err(anyhow::Error::msg)?;
        let bytes = records.iter().map(|(_, (_, e))| e.payload.len()).sum();
        let records = records.into_iter().map(|(log, (partition, _))| (log, partition)).collect();
        self.pending = Some(PendingCheckpoint { in_flight, records, next, bytes, started });
        Ok(())
    }

    /// Wait for the last checkpoint's acknowledgement; remember where each partition's ends; the
    /// batch is durable then, and committed.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let landed = pending.in_flight.landed().await.map_err(anyhow::Error::msg)?;
        for ((log, partition), (_, offset)) in pending.records.iter().zip(&landed) {
            if let Some(p) = self.parts.get_mut(&(log.clone(), *partition)) {
                if p.checkpoint_end.is_none_or(|end| end <= *offset) {
                    // The first record of this partition's batch: a snapshot's first chunk, if any.
                    p.writer.landed(*offset);
                }
                p.checkpoint_end = Some(p.checkpoint_end.unwrap_or(0).max(offset + 1));
            }
        }
        self.check_state_sizes(&pending.next);
        for (t, p, o) in &pending.next {
            self.tracker.made_durable(t, *p, *o);
        }
        batch::commit(&self.consumer, &pending.next, self.shutdown.is_cancelled())?;
        let name = self.name();
        metrics::histogram!("riverbank_processor_checkpoint_seconds", "processor" => name)
            .record(pending.started.elapsed().as_secs_f64());
        metrics::histogram!("riverbank_processor_checkpoint_bytes", "processor" => name)
            .record(pending.bytes as f64);
        Ok(())
    }

    /// After a failure: wait (bounded by the produce timeout) for a checkpoint on the wire, dropping it.
    async fn abandon_pending(&mut self) {
        if let Some(pending) = self.pending.take() {
            if let Err(e) = pending.in_flight.landed().await {
                tracing::debug!(processor = self.name(), error = %e, "an abandoned checkpoint did not land");
            }
        }
    }

    /// Stop a partition whose state (measured at its last snapshot) passed `processor.state_bytes_max`.
    fn check_state_sizes(&mut self, next: &[(String, i32, i64)]) {
        let max = self.cfg.processor.state_bytes_max;
        for (topic, partition, _) in next {
            let key = (topic.clone(), *partition);
            let Some(bytes) = self.parts.get(&key).map(|p| p.writer.snapshot_bytes) else { continue };
            metrics::gauge!("riverbank_processor_state_bytes", "processor" => self.name()).set(bytes as f64);
            if bytes > max {
                let e = anyhow::anyhow!(
                    "{topic}/{partition}: state is {bytes} bytes, over processor.state_bytes_max = {max}; \
                     raise the limit or lower the processor's retention limits"
                );
                self.block(key, &e);
            }
        }
    }
}

/// Restore one partition: its state and the offset to resume from (the input's start when it has no
/// checkpoint yet, so a stateful processor never starts mid-history with empty state).
async fn restore_part<P: Processor>(
    cfg: &Config,
    name: &str,
    consumer: &kafka::Consumer,
    checkpoint_topic: String,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Part<P::State>> {
    let started = Instant::now();
    let (kcfg, l, input, ct) = (cfg.kafka.clone(), limits(cfg), topic.to_owned(), checkpoint_topic.clone());
    let restored =
        tokio::task::spawn_blocking(move || checkpoint::restore(&kcfg, &l, &ct, &input, partition)).await?;
    let restored = restored.map_err(anyhow::Error::msg)?;
    let timeout = Duration::from_millis(cfg.kafka.metadata_timeout_ms);
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let restored = match restored {
        Some(r) if r.next_offset <= high && r.next_offset < low => anyhow::bail!(
            "{topic}/{partition}: the checkpoint resumes at offset {}, but the log starts at {low}: inputs \
             were deleted unread (retention); refusing to continue without them",
            r.next_offset
        ),
        Some(r) if r.next_offset > high => {
            // The checkpoint names offsets this log never had: the input topic was recreated. Its state
            // belongs to another history; start over from this log's beginning.
            tracing::warn!(processor = name, topic, partition, checkpoint_offset = r.next_offset, log_end = high, "checkpoint is past the input's end (topic recreated?); processing from the start with fresh state");
            None
        }
        other => other,
    };
    let Some(r) = restored else {
        anyhow::ensure!(
            low == 0,
            "{topic}/{partition}: no checkpoint, and the log starts at offset {low} (earlier inputs were \
             deleted): refusing to start this partition with empty state; restore the checkpoint topic, or \
             rebuild from a complete input log"
        );
        tracing::info!(
            processor = name,
            topic,
            partition,
            from = low,
            "no checkpoint: processing from the start of the input"
        );
        return Ok(Part {
            part: Partition::empty(),
            writer: Writer::new(0),
            next: low,
            checkpoint_end: None,
        });
    };
    anyhow::ensure!(
        r.snapshot_bytes <= cfg.processor.state_bytes_max,
        "{topic}/{partition}: the checkpointed state is {} bytes, over processor.state_bytes_max = {}; raise the \
         limit to restore it",
        r.snapshot_bytes,
        cfg.processor.state_bytes_max
    );
    let part = Partition::restore(r.entries).map_err(anyhow::Error::msg)?;
    let elapsed = started.elapsed();
    metrics::histogram!("riverbank_processor_restore_seconds", "processor" => name.to_owned())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        processor = name,
        topic,
        partition,
        next_offset = r.next_offset,
        records = r.records_read,
        bytes = r.snapshot_bytes,
        restore_ms = elapsed.as_millis() as u64,
        "state restored from checkpoint"
    );
    let mut writer = Writer::new(r.snapshot_seq);
    writer.snapshot_bytes = r.snapshot_bytes;
    Ok(Part { part, writer, next: r.next_offset, checkpoint_end: None })
}
