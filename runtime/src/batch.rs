//! Collecting bounded batches from a consumer, shared by the processor and sink loops.
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::Consumer;

/// Wait for the first message, then take more until `max` messages or `linger` elapsed.
/// Returns an empty batch on shutdown, on a rebalance (`wake`) and after `idle` without messages.
/// Consumer errors end the batch early and are returned after the messages already taken, so nothing
/// taken is dropped.
pub async fn collect(
    consumer: &Consumer,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
    wake: &tokio::sync::Notify,
    idle: Duration,
) -> (Vec<OwnedMessage>, Option<rdkafka::error::KafkaError>) {
    let mut batch = Vec::with_capacity(max.min(4096));
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return (batch, None),
        _ = wake.notified() => return (batch, None),
        _ = tokio::time::sleep(idle) => return (batch, None),
        m = consumer.recv() => m,
    };
    match first {
        Ok(m) => batch.push(m.detach()),
        Err(e) => return (batch, Some(e)),
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        tokio::select! {
            biased;
            // A rebalance while lingering: end the batch so the loop positions the new partitions.
            _ = wake.notified() => {
                wake.notify_one();
                break;
            }
            r = tokio::time::timeout_at(deadline, consumer.recv()) => match r {
                Err(_) => break,
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => return (batch, Some(e)),
            },
        }
    }
    (batch, None)
}

/// What one consumer loop does at each point of the skeleton every loop shares ([`drive`]): the
/// processor loop, the router and the sink loop differ only here.
// `async fn` here is fine: the stages are this crate's loops, and whether their futures are `Send` is
// checked where they are spawned, at the concrete types.
#[allow(async_fn_in_trait)]
pub trait Stage {
    fn consumer(&self) -> &Consumer;
    fn watch(&self) -> &crate::kafka::RebalanceWatch;
    /// Messages per batch at most, and how long a batch may linger for more.
    fn batch_limits(&self) -> (usize, Duration);
    /// Wake after this long without a message (for [`Stage::idle`] and shutdown checks).
    fn idle_wake(&self) -> Duration;
    /// The partitions may have moved: position (restore, seek) what is assigned now.
    async fn rebalanced(&mut self) -> anyhow::Result<()>;
    /// A batch of at least one message, in the order the consumer delivered them.
    async fn batch(&mut self, messages: Vec<OwnedMessage>) -> anyhow::Result<()>;
    /// No message arrived within the idle wake.
    async fn idle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// After every wake (a batch or idle): periodic work.
    async fn after(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The consumer loop skeleton: on a new rebalance generation, reposition; collect a bounded batch;
/// hand it (or the idle wake) to the stage; return on shutdown, or with a consumer error after the
/// messages already collected were handled (nothing taken is dropped).
pub async fn drive<S: Stage>(stage: &mut S, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut generation = None;
    loop {
        let now = stage.watch().generation();
        if generation != Some(now) {
            generation = Some(now);
            stage.rebalanced().await?;
        }
        let (max, linger) = stage.batch_limits();
        let (messages, error) =
            collect(stage.consumer(), max, linger, shutdown, &stage.watch().changed, stage.idle_wake()).await;
        if messages.is_empty() {
            match error {
                Some(e) => return Err(e.into()),
                None if shutdown.is_cancelled() => return Ok(()),
                None if Some(stage.watch().generation()) != generation => continue,
                None => stage.idle().await?,
            }
        } else {
            stage.batch(messages).await?;
        }
        stage.after().await?;
        if let Some(e) = error {
            return Err(e.into());
        }
    }
}

/// The next offset to consume per (topic, partition) after `batch`.
pub fn next_offsets<'m>(batch: impl IntoIterator<Item = &'m OwnedMessage>) -> Vec<(String, i32, i64)> {
    let mut out: Vec<(String, i32, i64)> = Vec::new();
    for m in batch {
        let next = m.offset() + 1;
        match out.iter_mut().find(|(t, p, _)| t == m.topic() && *p == m.partition()) {
            Some(entry) => {
                debug_assert!(next > entry.2, "offsets only grow within a partition");
                entry.2 = entry.2.max(next);
            }
            None => out.push((m.topic().to_owned(), m.partition(), next)),
        }
    }
    out
}

/// Commit offsets to the consumer group (asynchronously unless `sync`).
pub fn commit(
    consumer: &Consumer,
    offsets: &[(String, i32, i64)],
    sync: bool,
) -> rdkafka::error::KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    consumer.commit(&tpl, if sync { CommitMode::Sync } else { CommitMode::Async })
}

/// Where the authority (a sink's store, a processor's checkpoint) says each partition stands, and the
/// next offset each partition must deliver. A partition's messages are taken strictly in sequence: one
/// at the expected offset is taken, one below it is a redelivery and skipped, and one above it is a gap
/// (the consumer stands past the authority, or a message fetched before a seek) that is never taken:
/// the consumer is sought back instead, so nothing between the authority's position and the consumer's
/// is ever skipped.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Next offset per (topic, partition) known durable in the authority.
    durable: HashMap<(String, i32), i64>,
    /// Next offset to take per (topic, partition): the durable one plus what this batch took.
    expected: HashMap<(String, i32), i64>,
    /// Partitions sought back during the current batch: their later messages in the batch were
    /// fetched before the seek.
    sought_in_batch: HashSet<(String, i32)>,
    /// Seeks issued per partition since it last took a message in sequence.
    gap_seeks: HashMap<(String, i32), u32>,
}

/// Seeks back to the expected offset, per partition, before a gap is reported as real.
pub const GAP_SEEKS_MAX: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Already taken or durable: skip.
    Skip,
    /// Past the expected offset: seek back there and skip this message.
    SeekTo(i64),
    /// Past the expected offset after `GAP_SEEKS_MAX` seeks: the caller decides (a log trimmed by
    /// retention really has no such offset).
    Gap(i64),
    Take,
}

impl Tracker {
    /// The authority's position for a partition: durable, and the next offset to take.
    pub fn set_durable(&mut self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        self.durable.insert(key.clone(), next);
        self.expected.insert(key.clone(), next);
        self.gap_seeks.remove(&key);
    }

    /// A batch landed: its positions are durable now (positions only grow).
    pub fn made_durable(&mut self, topic: &str, partition: i32, next: i64) {
        let e = self.durable.entry((topic.to_owned(), partition)).or_insert(next);
        *e = (*e).max(next);
    }

    pub fn durable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.durable.get(&(topic.to_owned(), partition)).copied()
    }

    pub fn has_position(&self, topic: &str, partition: i32) -> bool {
        self.expected.contains_key(&(topic.to_owned(), partition))
    }

    /// Every partition with a durable position.
    pub fn durable_positions(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.durable.iter().map(|((t, p), o)| (t.as_str(), *p, *o))
    }

    /// Forget a partition (revoked, or its state is being rebuilt).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        self.durable.remove(&key);
        self.expected.remove(&key);
        self.sought_in_batch.remove(&key);
        self.gap_seeks.remove(&key);
    }

    /// A new batch starts: seeks of the previous batch have taken effect (librdkafka discards messages
    /// fetched before a seek), so the next message of a sought partition is a post-seek one.
    pub fn begin_batch(&mut self) {
        self.sought_in_batch.clear();
    }

    /// Accept a real gap (the log no longer holds the expected offset): continue at `next`.
    pub fn accept_gap(&mut self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        self.expected.insert(key.clone(), next);
        self.gap_seeks.remove(&key);
    }

    pub fn admit(&mut self, topic: &str, partition: i32, offset: i64) -> Admit {
        let key = (topic.to_owned(), partition);
        let Some(&expected) = self.expected.get(&key) else {
            // No authority but the group (a stateless processor): its position is where the group
            // starts; from here on the partition is taken in sequence.
            self.expected.insert(key, offset + 1);
            return Admit::Take;
        };
        if offset < expected {
            return Admit::Skip;
        }
        if offset == expected {
            self.expected.insert(key.clone(), offset + 1);
            self.gap_seeks.remove(&key);
            return Admit::Take;
        }
        if self.sought_in_batch.contains(&key) {
            return Admit::Skip; // fetched before this batch's seek
        }
        let seeks = self.gap_seeks.entry(key.clone()).or_insert(0);
        if *seeks >= GAP_SEEKS_MAX {
            return Admit::Gap(expected);
        }
        *seeks += 1;
        self.sought_in_batch.insert(key);
        Admit::SeekTo(expected)
    }
}

/// Whether to process `m` now: skips redeliveries and what the authority already holds, and seeks the
/// consumer back when it stands past the next expected offset. When the log's start has moved past the
/// expected offset (retention removed unread messages) that is logged as an error and counted, and is
/// an error when `trimmed_is_fatal` (state built from the log would miss inputs); otherwise reading goes
/// on from the log's start. A gap that survives `GAP_SEEKS_MAX` seeks is an error: the loop restarts
/// from its authority. `who` names the loop in the log.
pub fn take(
    consumer: &Consumer,
    tracker: &mut Tracker,
    m: &OwnedMessage,
    seek_timeout: Duration,
    who: &str,
    trimmed_is_fatal: bool,
) -> Result<bool, TakeError> {
    match tracker.admit(m.topic(), m.partition(), m.offset()) {
        Admit::Skip => Ok(false),
        Admit::Take => Ok(true),
        Admit::SeekTo(next) => {
            let (low, _) = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(m.topic(), m.partition(), seek_timeout)
            })?;
            if next < low {
                // The log no longer holds the expected offset: nothing can be read from there.
                tracing::error!(
                    who,
                    topic = m.topic(),
                    partition = m.partition(),
                    expected = next,
                    log_start = low,
                    "the log's start is past the expected offset (retention removed unread messages)"
                );
                metrics::counter!("riverbank_log_gaps_total", "component" => who.to_owned()).increment(1);
                if trimmed_is_fatal {
                    return Err(TakeError::Trimmed {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        expected: next,
                        log_start: low,
                    });
                }
                tracker.accept_gap(m.topic(), m.partition(), low);
                if m.offset() == low {
                    return Ok(matches!(tracker.admit(m.topic(), m.partition(), low), Admit::Take));
                }
                consumer.seek(m.topic(), m.partition(), Offset::Offset(low), seek_timeout)?;
                return Ok(false);
            }
            tracing::info!(
                who,
                topic = m.topic(),
                partition = m.partition(),
                from = m.offset(),
                to = next,
                "consumer past the expected offset; seeking back"
            );
            consumer.seek(m.topic(), m.partition(), Offset::Offset(next), seek_timeout)?;
            Ok(false)
        }
        Admit::Gap(next) => Err(TakeError::Gap {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            expected: next,
            found: m.offset(),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(
        "{topic}/{partition}: expected offset {expected} but the consumer delivers {found} after {GAP_SEEKS_MAX} seeks back"
    )]
    Gap { topic: String, partition: i32, expected: i64, found: i64 },
    #[error(
        "{topic}/{partition}: the log starts at {log_start}, past the next input {expected} of this state: \
         inputs were deleted unread (retention); refusing to build state without them"
    )]
    Trimmed { topic: String, partition: i32, expected: i64, log_start: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_are_skipped_and_partitions_taken_in_sequence() {
        let mut t = Tracker::default();
        // No authority (a stateless processor): the group's start is the position.
        assert_eq!(t.admit("a", 0, 100), Admit::Take);
        assert_eq!(t.admit("a", 0, 101), Admit::Take);
        assert_eq!(t.admit("a", 1, 5), Admit::Take);
        // A rebalance restarted partition 0 from its committed offset in the middle of a batch.
        assert_eq!(t.admit("a", 0, 100), Admit::Skip);
        assert_eq!(t.admit("a", 0, 101), Admit::Skip);
        assert_eq!(t.admit("a", 0, 102), Admit::Take);
    }

    #[test]
    fn after_a_seek_back_no_message_fetched_before_it_is_taken() {
        // Finding 1: the consumer stands past the authority (durable 10, first message 12).
        let mut t = Tracker::default();
        t.set_durable("a", 0, 10);
        t.begin_batch();
        assert_eq!(t.admit("a", 0, 5), Admit::Skip);
        assert_eq!(t.admit("a", 0, 12), Admit::SeekTo(10));
        // The rest of the batch was fetched before the seek: none of it is taken, no second seek.
        assert_eq!(t.admit("a", 0, 13), Admit::Skip);
        assert_eq!(t.admit("a", 0, 14), Admit::Skip);
        // The next batch starts at the seek target and is taken in sequence.
        t.begin_batch();
        assert_eq!(t.admit("a", 0, 10), Admit::Take);
        assert_eq!(t.admit("a", 0, 11), Admit::Take);
        assert_eq!(t.admit("a", 0, 12), Admit::Take);
        // Other partitions are unaffected.
        assert_eq!(t.admit("b", 3, 7), Admit::Take);
    }

    #[test]
    fn a_seek_that_did_not_take_effect_is_repeated_then_reported() {
        let mut t = Tracker::default();
        t.set_durable("a", 0, 10);
        for _ in 0..GAP_SEEKS_MAX {
            t.begin_batch();
            assert_eq!(t.admit("a", 0, 12), Admit::SeekTo(10));
        }
        t.begin_batch();
        assert_eq!(t.admit("a", 0, 12), Admit::Gap(10), "never taken past a gap");
        // Once it arrives in sequence the count starts over.
        assert_eq!(t.admit("a", 0, 10), Admit::Take);
        t.begin_batch();
        assert_eq!(t.admit("a", 0, 13), Admit::SeekTo(11));
    }

    #[test]
    fn a_partition_given_a_position_mid_batch_uses_it() {
        // A partition assigned in the middle of a batch gets its position from the authority before
        // its first message is admitted; the messages before it are skipped, the one at it taken.
        let mut t = Tracker::default();
        t.begin_batch();
        t.set_durable("a", 2, 40);
        assert_eq!(t.admit("a", 2, 39), Admit::Skip);
        assert_eq!(t.admit("a", 2, 40), Admit::Take);
        t.made_durable("a", 2, 41);
        assert_eq!(t.durable("a", 2), Some(41));
        t.made_durable("a", 2, 30);
        assert_eq!(t.durable("a", 2), Some(41), "durable positions only grow");
        t.forget("a", 2);
        assert!(!t.has_position("a", 2));
    }
}
