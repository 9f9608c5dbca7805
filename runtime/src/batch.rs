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
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(m)) => batch.push(m.detach()),
            Ok(Err(e)) => return (batch, Some(e)),
        }
    }
    (batch, None)
}

/// The next offset to consume per (topic, partition) after `batch`.
pub fn next_offsets(batch: &[OwnedMessage]) -> Vec<(String, i32, i64)> {
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

/// Where the authority (a sink's store, a processor's checkpoint) says each partition stands, and
/// whether the consumer has been moved there yet.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Next offset per (topic, partition) known durable.
    pub durable: HashMap<(String, i32), i64>,
    /// Topics whose positions were loaded since the last rebalance.
    pub loaded: HashSet<String>,
    /// Partitions whose resume offset was checked against the log's bounds.
    pub resolved: HashSet<(String, i32)>,
    /// Partitions already positioned: sought to their durable offset, or found at or before it.
    pub positioned: HashMap<(String, i32), Positioned>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positioned {
    /// A seek to the durable offset was issued: the next message at or past it is the right one, even
    /// if the log has a gap there.
    Sought,
    /// Messages are flowing from the right place.
    Flowing,
}

pub enum Admit {
    /// Already durable: skip.
    Skip,
    /// Ahead of the durable offset (the group committed further than the authority holds): seek back.
    SeekTo(i64),
    Take,
}

impl Tracker {
    pub fn admit(&mut self, topic: &str, partition: i32, offset: i64) -> Admit {
        let key = (topic.to_owned(), partition);
        let Some(&next) = self.durable.get(&key) else {
            return Admit::Take; // nothing durable yet: take from wherever the group starts
        };
        if offset < next {
            return Admit::Skip;
        }
        match self.positioned.get(&key) {
            None if offset > next => {
                self.positioned.insert(key, Positioned::Sought);
                Admit::SeekTo(next)
            }
            _ => {
                self.positioned.insert(key, Positioned::Flowing);
                Admit::Take
            }
        }
    }
}

/// The highest offset a batch has taken per partition, so redeliveries within one batch are dropped.
#[derive(Debug, Default)]
pub struct InBatch {
    last: HashMap<(String, i32), i64>,
}

impl InBatch {
    /// Whether this batch already took `offset` or a later one from this partition.
    pub fn seen(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.last.get(&(topic.to_owned(), partition)).is_some_and(|&last| offset <= last)
    }

    /// Record a taken message.
    pub fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        self.last.insert((topic.to_owned(), partition), offset);
    }
}

/// Whether to process `m` now: drops redeliveries within the batch (a rebalance mid-batch can restart a
/// partition from its committed offset) and what the authority already holds, and seeks the consumer
/// back when it stands past the authority's position. `who` names the loop in the log.
pub fn take(
    consumer: &Consumer,
    tracker: &mut Tracker,
    in_batch: &InBatch,
    m: &OwnedMessage,
    seek_timeout: Duration,
    who: &str,
) -> rdkafka::error::KafkaResult<bool> {
    if in_batch.seen(m.topic(), m.partition(), m.offset()) {
        return Ok(false);
    }
    match tracker.admit(m.topic(), m.partition(), m.offset()) {
        Admit::Skip => Ok(false),
        Admit::SeekTo(next) => {
            tracing::info!(
                who,
                topic = m.topic(),
                partition = m.partition(),
                from = m.offset(),
                to = next,
                "consumer ahead of the durable position; seeking back"
            );
            consumer.seek(m.topic(), m.partition(), Offset::Offset(next), seek_timeout)?;
            Ok(false)
        }
        Admit::Take => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_within_a_batch_are_dropped() {
        let mut b = InBatch::default();
        for o in [100, 101] {
            assert!(!b.seen("a", 0, o));
            b.record("a", 0, o);
        }
        assert!(!b.seen("a", 1, 5));
        // A rebalance restarted partition 0 from its committed offset.
        assert!(b.seen("a", 0, 100) && b.seen("a", 0, 101));
        assert!(!b.seen("a", 0, 102));
    }

    #[test]
    fn tracker_skips_durable_and_seeks_back_once() {
        let mut t = Tracker::default();
        t.durable.insert(("a".into(), 0), 10);
        assert!(matches!(t.admit("a", 0, 5), Admit::Skip));
        assert!(matches!(t.admit("a", 0, 10), Admit::Take));
        let mut t = Tracker::default();
        t.durable.insert(("a".into(), 0), 10);
        assert!(matches!(t.admit("a", 0, 12), Admit::SeekTo(10)));
        // After the seek the first message at or past the position is taken, even past a gap in the
        // log (compaction, transaction markers): no second seek, no loop.
        assert!(matches!(t.admit("a", 0, 9), Admit::Skip));
        assert!(matches!(t.admit("a", 0, 12), Admit::Take));
        assert!(matches!(t.admit("a", 0, 14), Admit::Take));
        // A partition with no known position is taken from wherever the group starts.
        assert!(matches!(t.admit("b", 3, 7), Admit::Take));
    }
}
