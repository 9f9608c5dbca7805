//! Collecting bounded batches from a consumer, shared by the processor and sink loops.
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::Consumer;

/// Wait for the first message (or shutdown), then take more until `max` messages or `linger` elapsed.
/// Returns an empty batch only on shutdown. Consumer errors end the batch early and are returned
/// after the messages already taken, so nothing taken is dropped.
pub async fn collect(
    consumer: &Consumer,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
) -> (Vec<OwnedMessage>, Option<rdkafka::error::KafkaError>) {
    let mut batch = Vec::with_capacity(max.min(4096));
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return (batch, None),
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
