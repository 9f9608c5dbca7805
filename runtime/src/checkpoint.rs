//! Processor state checkpoints in Kafka: per input partition, a full snapshot now and then (in chunks)
//! and the changed entries after every batch (a delta), each record carrying the next input offset it
//! reflects. State and offset are one record, so they are written atomically.
//!
//! Restore reads only the tail of the checkpoint partition: the newest complete snapshot plus the deltas
//! its writer appended after it. A snapshot is written once the deltas since the last one add up to its
//! size (at least `record_bytes_max`), or after `snapshot_every_batches` deltas: restore reads at most
//! about twice the state, and the snapshot's cost is spread over the batches whose changes called for
//! it. A snapshot left incomplete by a crash is ignored (the previous one and its deltas are used).
//! Records from another writer (a zombie) are ignored unless they hold the newest complete snapshot —
//! and any checkpoint is a correct state for its offset, because processors are deterministic, so at
//! worst some inputs are replayed into identical outputs.
//!
//! Records are bincode behind a one-byte format tag; records written before (JSON, starting with `{`)
//! are still read, so an upgrade restores old checkpoints.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_schemas::processor::Emit;
use riverbank_schemas::state::{Change, Encoded, Entry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::KafkaConfig;

/// First byte of a bincode checkpoint record (JSON records start with `{`).
const FORMAT_BINCODE_V1: u8 = 0xB1;

/// A checkpoint record as restore sees it (values still encoded).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Snapshot {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        chunk: u32,
        chunks: u32,
        next_offset: i64,
        entries: Vec<(String, Encoded)>,
    },
    Delta {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        delta_seq: u64,
        next_offset: i64,
        changes: Vec<(String, Option<Encoded>)>,
        /// Offset (in the checkpoint partition) of the first chunk of the snapshot this delta builds
        /// on, so a restore reads from there instead of searching the tail; -1 when unknown.
        base_offset: i64,
    },
}

/// The record on the wire (bincode).
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Snapshot {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        chunk: u32,
        chunks: u32,
        next_offset: i64,
        entries: Vec<Entry>,
    },
    Delta {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        delta_seq: u64,
        next_offset: i64,
        changes: Vec<Change>,
        base_offset: i64,
    },
}

/// Records written before bincode (JSON, values as JSON).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Legacy {
    Snapshot {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        chunk: u32,
        chunks: u32,
        next_offset: i64,
        entries: Vec<(String, serde_json::Value)>,
    },
    Delta {
        input_topic: String,
        partition: i32,
        writer: Uuid,
        snapshot_seq: u64,
        delta_seq: u64,
        next_offset: i64,
        changes: Vec<(String, Option<serde_json::Value>)>,
    },
}

fn encode(w: &Wire) -> Vec<u8> {
    let mut out = vec![FORMAT_BINCODE_V1];
    // Strings, integers and byte vectors always serialize.
    out.extend(bincode::serialize(w).unwrap_or_default());
    out
}

impl Wire {
    fn into_record(self) -> Record {
        match self {
            Wire::Snapshot {
                input_topic,
                partition,
                writer,
                snapshot_seq,
                chunk,
                chunks,
                next_offset,
                entries,
            } => {
                let entries = entries.into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
                Record::Snapshot {
                    input_topic,
                    partition,
                    writer,
                    snapshot_seq,
                    chunk,
                    chunks,
                    next_offset,
                    entries,
                }
            }
            Wire::Delta {
                input_topic,
                partition,
                writer,
                snapshot_seq,
                delta_seq,
                next_offset,
                changes,
                base_offset,
            } => {
                let changes = changes.into_iter().map(|(k, v)| (k, v.map(Encoded::Bin))).collect();
                Record::Delta {
                    input_topic,
                    partition,
                    writer,
                    snapshot_seq,
                    delta_seq,
                    next_offset,
                    changes,
                    base_offset,
                }
            }
        }
    }
}

impl Legacy {
    fn into_record(self) -> Record {
        match self {
            Legacy::Snapshot {
                input_topic,
                partition,
                writer,
                snapshot_seq,
                chunk,
                chunks,
                next_offset,
                entries,
            } => {
                let entries = entries.into_iter().map(|(k, v)| (k, Encoded::Json(v))).collect();
                Record::Snapshot {
                    input_topic,
                    partition,
                    writer,
                    snapshot_seq,
                    chunk,
                    chunks,
                    next_offset,
                    entries,
                }
            }
            Legacy::Delta {
                input_topic,
                partition,
                writer,
                snapshot_seq,
                delta_seq,
                next_offset,
                changes,
            } => {
                let changes = changes.into_iter().map(|(k, v)| (k, v.map(Encoded::Json))).collect();
                Record::Delta {
                    input_topic,
                    partition,
                    writer,
                    snapshot_seq,
                    delta_seq,
                    next_offset,
                    changes,
                    base_offset: -1,
                }
            }
        }
    }
}

/// Decode a checkpoint record of either format.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    match bytes.first() {
        Some(&FORMAT_BINCODE_V1) => {
            bincode::deserialize::<Wire>(&bytes[1..]).map(Wire::into_record).map_err(|e| e.to_string())
        }
        Some(b'{') => {
            serde_json::from_slice::<Legacy>(bytes).map(Legacy::into_record).map_err(|e| e.to_string())
        }
        _ => Err("not a checkpoint record (unknown format)".to_owned()),
    }
}

/// What a restore found: entries and the next input offset they reflect.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub entries: Vec<(String, Encoded)>,
    pub next_offset: i64,
    pub snapshot_seq: u64,
    pub records_read: usize,
    /// Bytes of the snapshot restored (its entries' keys and values).
    pub snapshot_bytes: usize,
}

/// Where a writer stands for one input partition.
#[derive(Debug, Clone)]
pub struct Writer {
    pub writer: Uuid,
    pub snapshot_seq: u64,
    pub delta_seq: u64,
    pub batches_since_snapshot: u32,
    /// A new writer must start with a snapshot: its deltas need a base of its own.
    pub needs_snapshot: bool,
    /// Size of the last snapshot (keys and values): the state's size then.
    pub snapshot_bytes: usize,
    /// Bytes of deltas written since.
    pub delta_bytes: usize,
    /// Offset of the first chunk of this writer's current snapshot, once the loop knows it.
    pub snapshot_offset: Option<i64>,
    /// The last records made were a snapshot whose offset the loop must record ([`Writer::landed`]).
    pub snapshot_pending: bool,
}

impl Writer {
    pub fn new(after_snapshot_seq: u64) -> Self {
        Writer {
            writer: Uuid::new_v4(),
            snapshot_seq: after_snapshot_seq,
            delta_seq: 0,
            batches_since_snapshot: 0,
            needs_snapshot: true,
            snapshot_bytes: 0,
            delta_bytes: 0,
            snapshot_offset: None,
            snapshot_pending: false,
        }
    }

    /// The records of the last batch landed at `first_offset` and on: if they were a snapshot, later
    /// deltas point there.
    pub fn landed(&mut self, first_offset: i64) {
        if std::mem::take(&mut self.snapshot_pending) {
            self.snapshot_offset = Some(first_offset);
        }
    }

    fn snapshot_due(&self, limits: &Limits) -> bool {
        self.needs_snapshot
            || self.batches_since_snapshot + 1 >= limits.snapshot_every_batches
            || self.delta_bytes >= self.snapshot_bytes.max(limits.record_bytes_max)
    }
}

/// Limits for checkpoint records.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub snapshot_every_batches: u32,
    pub record_bytes_max: usize,
    pub restore_window_records: i64,
    pub restore_timeout: Duration,
}

fn record_key(input_topic: &str, partition: i32) -> String {
    format!("{input_topic}/{partition}")
}

fn entry_bytes(k: &str, v: &[u8]) -> usize {
    k.len() + v.len() + 8
}

/// The checkpoint records for one batch of one partition.
#[allow(clippy::too_many_arguments)]
pub fn records_for_batch(
    w: &mut Writer,
    limits: &Limits,
    checkpoint_topic: &str,
    input_topic: &str,
    partition: i32,
    next_offset: i64,
    snapshot: impl FnOnce() -> Vec<Entry>,
    changes: Vec<Change>,
) -> Vec<(i32, Emit)> {
    let key = record_key(input_topic, partition);
    let emit = |payload: Vec<u8>| {
        (
            partition,
            Emit { topic: checkpoint_topic.to_owned(), key: key.clone(), event_id: Uuid::nil(), payload },
        )
    };
    if !w.snapshot_due(limits) {
        w.delta_seq += 1;
        w.batches_since_snapshot += 1;
        let r = Wire::Delta {
            input_topic: input_topic.to_owned(),
            partition,
            writer: w.writer,
            snapshot_seq: w.snapshot_seq,
            delta_seq: w.delta_seq,
            next_offset,
            changes,
            base_offset: w.snapshot_offset.unwrap_or(-1),
        };
        let bytes = encode(&r);
        if bytes.len() <= limits.record_bytes_max {
            w.delta_bytes += bytes.len();
            return vec![emit(bytes)];
        }
        // Too large for one record: a snapshot (in chunks) replaces it.
        w.delta_seq -= 1;
    }
    let entries = snapshot();
    w.snapshot_seq += 1;
    w.delta_seq = 0;
    w.batches_since_snapshot = 0;
    w.needs_snapshot = false;
    w.delta_bytes = 0;
    w.snapshot_offset = None;
    w.snapshot_pending = true;
    w.snapshot_bytes = entries.iter().map(|(k, v)| entry_bytes(k, v)).sum();
    // Chunk by encoded size.
    let mut chunks: Vec<Vec<Entry>> = vec![Vec::new()];
    let mut size = 0usize;
    for e in entries {
        let n = entry_bytes(&e.0, &e.1);
        if size + n > limits.record_bytes_max / 2 && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += n;
        if let Some(last) = chunks.last_mut() {
            last.push(e);
        }
    }
    let total = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, entries)| {
            let r = Wire::Snapshot {
                input_topic: input_topic.to_owned(),
                partition,
                writer: w.writer,
                snapshot_seq: w.snapshot_seq,
                chunk: i as u32,
                chunks: total,
                next_offset,
                entries,
            };
            emit(encode(&r))
        })
        .collect()
}

/// The newest complete snapshot for one partition: its (writer, seq).
fn newest_complete(records: &[Record], input_topic: &str, partition: i32) -> Option<(Uuid, u64)> {
    // Complete snapshots, by (writer, seq): chunk count and the position of their last chunk.
    let mut seen: HashMap<(Uuid, u64), (u32, u32, usize)> = HashMap::new();
    let mut best: Option<(usize, Uuid, u64)> = None;
    for (pos, r) in records.iter().enumerate() {
        if let Record::Snapshot { input_topic: t, partition: p, writer, snapshot_seq, chunks, .. } = r {
            if t != input_topic || *p != partition {
                continue;
            }
            let e = seen.entry((*writer, *snapshot_seq)).or_insert((0, *chunks, pos));
            e.0 += 1;
            e.2 = pos;
            if e.0 == e.1 && best.is_none_or(|(b, _, _)| pos > b) {
                best = Some((pos, *writer, *snapshot_seq));
            }
        }
    }
    best.map(|(_, w, s)| (w, s))
}

/// Rebuild from records in log order (the tail of a checkpoint partition). `None`: no complete snapshot.
pub fn rebuild(records: &[Record], input_topic: &str, partition: i32) -> Option<Restored> {
    rebuild_owned(records.to_vec(), input_topic, partition)
}

/// As [`rebuild`], taking the records: their entries are moved, not copied.
pub fn rebuild_owned(records: Vec<Record>, input_topic: &str, partition: i32) -> Option<Restored> {
    let (writer, seq) = newest_complete(&records, input_topic, partition)?;
    let records_read = records.len();
    let ours = |w: &Uuid, s: &u64, t: &String, p: &i32| {
        *w == writer && *s == seq && t == input_topic && *p == partition
    };
    let mut kv: BTreeMap<String, Encoded> = BTreeMap::new();
    let (mut next_offset, mut snapshot_bytes, mut expected_delta) = (0, 0, 1);
    let mut in_snapshot = false;
    for r in records {
        match r {
            Record::Snapshot {
                writer: w,
                snapshot_seq: s,
                entries,
                next_offset: n,
                input_topic: t,
                partition: p,
                ..
            } if ours(&w, &s, &t, &p) => {
                in_snapshot = true;
                for (k, v) in entries {
                    snapshot_bytes += k.len() + 8 + if let Encoded::Bin(b) = &v { b.len() } else { 0 };
                    kv.insert(k, v);
                }
                next_offset = n;
            }
            Record::Delta {
                writer: w,
                snapshot_seq: s,
                delta_seq,
                next_offset: n,
                changes,
                input_topic: t,
                partition: p,
                ..
            } if in_snapshot && ours(&w, &s, &t, &p) => {
                if delta_seq != expected_delta {
                    break; // a gap: stop at the last contiguous delta
                }
                expected_delta += 1;
                for (k, v) in changes {
                    match v {
                        Some(v) => {
                            kv.insert(k, v);
                        }
                        None => {
                            kv.remove(&k);
                        }
                    }
                }
                debug_assert!(n >= next_offset, "checkpoint offsets only grow");
                next_offset = n;
            }
            _ => {}
        }
    }
    Some(Restored {
        entries: kv.into_iter().collect(),
        next_offset,
        snapshot_seq: seq,
        records_read,
        snapshot_bytes,
    })
}

/// Read the tail of a checkpoint partition and rebuild. Blocking: run it on a blocking thread.
pub fn restore(
    cfg: &KafkaConfig,
    limits: &Limits,
    checkpoint_topic: &str,
    input_topic: &str,
    partition: i32,
) -> Result<Option<Restored>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-restore", cfg.client_id))
        .set("group.id", format!("{}-restore-unused", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("log_level", "4")
        .create()
        .map_err(|e| format!("restore consumer: {e}"))?;
    let deadline = Instant::now() + limits.restore_timeout;
    let (low, high) = consumer
        .fetch_watermarks(checkpoint_topic, partition, limits.restore_timeout)
        .map_err(|e| format!("checkpoint watermarks of {checkpoint_topic}/{partition}: {e}"))?;
    if high <= low {
        return Ok(None);
    }
    let reader = Reader { consumer: &consumer, topic: checkpoint_topic, partition, deadline, limits };
    // The last record says where its snapshot starts: a delta names its snapshot's first offset, a
    // snapshot chunk its index. Read from there; search the tail only if that does not hold one.
    let start = match reader.read(high - 1, high)?.pop() {
        Some(Record::Delta { base_offset, .. }) if base_offset >= low && base_offset < high => {
            Some(base_offset)
        }
        Some(Record::Snapshot { chunk, .. }) => Some((high - 1 - i64::from(chunk)).max(low)),
        _ => None,
    };
    if let Some(start) = start {
        let records = reader.read(start, high)?;
        let started = Instant::now();
        let rebuilt = rebuild_owned(records, input_topic, partition);
        tracing::debug!(rebuild_ms = started.elapsed().as_millis() as u64, "checkpoint rebuilt");
        if let Some(restored) = rebuilt {
            return Ok(Some(restored));
        }
    }
    let mut window = limits.restore_window_records.max(1);
    loop {
        let start = (high - window).max(low);
        if let Some(restored) = rebuild_owned(reader.read(start, high)?, input_topic, partition) {
            return Ok(Some(restored));
        }
        if start == low {
            return Ok(None);
        }
        window = window.saturating_mul(4);
    }
}

/// Reads ranges of one checkpoint partition within a deadline.
struct Reader<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: i32,
    deadline: Instant,
    limits: &'a Limits,
}

impl Reader<'_> {
    /// The records at offsets `start..high`, decoded.
    fn read(&self, start: i64, high: i64) -> Result<Vec<Record>, String> {
        let started = Instant::now();
        let records = self.read_range(start, high)?;
        tracing::debug!(
            topic = self.topic,
            partition = self.partition,
            start,
            high,
            records = records.len(),
            read_ms = started.elapsed().as_millis() as u64,
            "checkpoint records read"
        );
        Ok(records)
    }

    fn read_range(&self, start: i64, high: i64) -> Result<Vec<Record>, String> {
        let (topic, partition) = (self.topic, self.partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(|e| e.to_string())?;
        self.consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut records = Vec::with_capacity(usize::try_from(high - start).unwrap_or(0));
        let mut last = start - 1;
        while last < high - 1 {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(format!(
                    "restoring {topic}/{partition} took over {:?}",
                    self.limits.restore_timeout
                ));
            }
            match self.consumer.poll(remaining.min(Duration::from_millis(500))) {
                None => continue,
                // An end-of-partition before any record of this read is the previous read's (the
                // consumer was reassigned after it reached the end): not this range's end.
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if last >= start => break,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => return Err(format!("reading checkpoints: {e}")),
                Some(Ok(m)) => {
                    if m.offset() < start {
                        continue; // fetched for the previous read
                    }
                    last = m.offset();
                    if last >= high {
                        break;
                    }
                    let r = decode(m.payload().unwrap_or_default())
                        .map_err(|e| format!("checkpoint record at {topic}/{partition}@{last}: {e}"))?;
                    records.push(r);
                }
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bytes: usize) -> Limits {
        Limits {
            snapshot_every_batches: 3,
            record_bytes_max: bytes,
            restore_window_records: 16,
            restore_timeout: Duration::from_secs(1),
        }
    }

    fn decode(emits: Vec<(i32, Emit)>) -> Vec<Record> {
        emits.into_iter().map(|(_, e)| super::decode(&e.payload).expect("record")).collect()
    }

    fn v(n: i64) -> Vec<u8> {
        riverbank_schemas::state::encode(&n)
    }

    fn kv(pairs: &[(&str, i64)]) -> Vec<Entry> {
        pairs.iter().map(|(k, n)| (k.to_string(), v(*n))).collect()
    }

    fn restored(entries: Vec<Entry>) -> Vec<(String, Encoded)> {
        entries.into_iter().map(|(k, b)| (k, Encoded::Bin(b))).collect()
    }

    #[test]
    fn snapshot_then_deltas_then_snapshot_rebuild_the_latest_state() {
        let l = limits(1 << 20);
        let mut w = Writer::new(0);
        let mut log = Vec::new();
        log.extend(decode(records_for_batch(&mut w, &l, "c", "in", 0, 10, || kv(&[("a", 1)]), vec![])));
        log.extend(decode(records_for_batch(
            &mut w,
            &l,
            "c",
            "in",
            0,
            20,
            || unreachable!(),
            vec![("b".into(), Some(v(2)))],
        )));
        log.extend(decode(records_for_batch(
            &mut w,
            &l,
            "c",
            "in",
            0,
            30,
            || unreachable!(),
            vec![("a".into(), None)],
        )));
        assert!(
            matches!(log[0], Record::Snapshot { .. }) && matches!(log[2], Record::Delta { delta_seq: 2, .. })
        );
        let r = rebuild(&log, "in", 0).expect("restorable");
        assert_eq!((r.entries.clone(), r.next_offset), (restored(kv(&[("b", 2)])), 30));
        // Third batch since the snapshot: a new snapshot.
        log.extend(decode(records_for_batch(
            &mut w,
            &l,
            "c",
            "in",
            0,
            40,
            || kv(&[("b", 2), ("c", 3)]),
            vec![],
        )));
        assert!(matches!(log[3], Record::Snapshot { snapshot_seq: 2, .. }));
        let r = rebuild(&log, "in", 0).expect("restorable");
        assert_eq!((r.entries, r.next_offset), (restored(kv(&[("b", 2), ("c", 3)])), 40));
        assert_eq!(rebuild(&log, "in", 1), None, "another partition has none");
    }

    #[test]
    fn incomplete_snapshots_and_foreign_writers_are_ignored() {
        let l = limits(200);
        let mut w = Writer::new(0);
        let big: Vec<Entry> = (0..20).map(|i| (format!("k{i:02}"), v(i))).collect();
        let mut log = decode(records_for_batch(&mut w, &l, "c", "in", 0, 5, || big.clone(), vec![]));
        assert!(log.len() > 2, "chunked: {}", log.len());
        let full = rebuild(&log, "in", 0).expect("complete");
        assert_eq!(full.entries, restored(big.clone()));
        // A crash mid-snapshot: the second snapshot lacks its last chunk; the first still counts.
        let mut w2 = Writer::new(1);
        let mut partial = decode(records_for_batch(&mut w2, &l, "c", "in", 0, 9, || big.clone(), vec![]));
        partial.pop();
        log.extend(partial);
        assert_eq!(rebuild(&log, "in", 0).expect("previous").next_offset, 5);
        // A zombie's delta on top of someone else's snapshot is not applied.
        let mut zombie = Writer::new(7);
        zombie.needs_snapshot = false;
        log.extend(decode(records_for_batch(
            &mut zombie,
            &limits(1 << 20),
            "c",
            "in",
            0,
            99,
            || unreachable!(),
            vec![("k00".into(), None)],
        )));
        let r = rebuild(&log, "in", 0).expect("restorable");
        assert_eq!((r.entries.len(), r.next_offset), (20, 5));
    }

    #[test]
    fn oversized_deltas_become_snapshots() {
        let l = limits(300);
        let mut w = Writer::new(0);
        records_for_batch(&mut w, &l, "c", "in", 0, 1, Vec::new, vec![]);
        let changes: Vec<Change> = (0..30).map(|i| (format!("key-{i}"), Some(v(i)))).collect();
        let snap: Vec<Entry> =
            changes.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        let recs = decode(records_for_batch(&mut w, &l, "c", "in", 0, 2, || snap.clone(), changes));
        assert!(recs.iter().all(|r| matches!(r, Record::Snapshot { snapshot_seq: 2, .. })));
        assert_eq!(rebuild(&recs, "in", 0).expect("complete").entries.len(), 30);
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn json_records_written_before_bincode_still_decode() {
        let old = br#"{"kind":"delta","input_topic":"in","partition":0,"writer":"00000000-0000-0000-0000-000000000001","snapshot_seq":1,"delta_seq":1,"next_offset":9,"changes":[["clock",5],["t/x",null]]}"#;
        let Record::Delta { changes, next_offset, .. } = decode(old).expect("decodes") else {
            panic!("a delta")
        };
        assert_eq!(next_offset, 9);
        assert_eq!(
            changes,
            vec![("clock".to_owned(), Some(Encoded::Json(5.into()))), ("t/x".to_owned(), None)]
        );
        assert!(decode(b"\x00junk").is_err());
    }

    #[test]
    fn snapshots_come_when_deltas_add_up_to_the_state_not_every_few_batches() {
        let l = Limits {
            snapshot_every_batches: 1_000,
            record_bytes_max: 1_000,
            restore_window_records: 16,
            restore_timeout: Duration::from_secs(1),
        };
        let mut w = Writer::new(0);
        let state: Vec<Entry> = (0..400).map(|i| (format!("k{i:04}"), vec![0u8; 8])).collect();
        let first = records_for_batch(&mut w, &l, "c", "in", 0, 1, || state.clone(), vec![]);
        assert!(first.len() > 1 && w.snapshot_bytes > 6_000, "a chunked snapshot of ~8 KB");
        let mut deltas = 0;
        loop {
            let change = vec![("k0001".to_owned(), Some(vec![1u8; 8]))];
            let out = records_for_batch(&mut w, &l, "c", "in", 0, 2 + deltas, || state.clone(), change);
            if matches!(super::decode(&out[0].1.payload).expect("record"), Record::Snapshot { .. }) {
                break;
            }
            deltas += 1;
        }
        // Each delta is ~80 bytes: a snapshot once ~8 KB of them were written, not after 3 batches.
        assert!((60..200).contains(&deltas), "{deltas} deltas before the next snapshot");
    }
}
