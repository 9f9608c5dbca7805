//! The live reader: every topic of every configured environment, read as it flows by a consumer of
//! its own that joins no group and commits nothing (it never moves anyone's position).
//!
//! At start it seeks each partition to `now - lookback_ms` (`offsets_for_times`) and notes the log end:
//! until every partition has reached the end it noted, the reader is *catching up* and the windows'
//! watermark holds (history from slower partitions would otherwise arrive after its windows closed).
//! Each record becomes a [`LiveEvent`] of codes only (tenant, topic, event time, a transfer's outcome
//! class and amount, a dead letter's reason class); payload values are never kept. Per partition it
//! also keeps (offset, record time) samples, from which consumer lag in seconds is read.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::CancellationToken;
use riverbank_schemas::transfers::TransferStatus;
use riverbank_schemas::{Environment, Topics};
use serde::Deserialize;

use super::window::LiveEvent;

/// Lag samples kept per partition (one per `SAMPLE_EVERY_MS` of record time at most).
const SAMPLES_PER_PARTITION_MAX: usize = 20_000;
/// Record time between two lag samples of a partition.
const SAMPLE_EVERY_MS: i64 = 100;
/// How long to wait for topics that do not exist yet between tries.
const TOPICS_RETRY_MS: u64 = 2_000;
/// Longest reason class kept (the text before the first ':' of a dead letter's reason), cut at a word.
pub const REASON_CLASS_CHARS_MAX: usize = 64;

/// A dead letter as the dashboard lists it (no payload, no header values).
#[derive(Debug, Clone)]
pub struct DeadSeen {
    pub env: Environment,
    pub tenant: Option<String>,
    pub dead_letter_id: String,
    pub rejected_by: String,
    pub reason_class: String,
    pub source: Option<String>,
    pub source_topic: Option<String>,
    pub at_ms: i64,
}

#[derive(Default)]
struct Track {
    /// The log end noted at start: caught up once `next` reaches it.
    target: i64,
    next: i64,
    samples: VecDeque<(i64, i64)>,
}

/// What the reader hands the aggregator, and what gauges read from it.
pub struct Shared {
    pending: Mutex<(Vec<LiveEvent>, Vec<DeadSeen>)>,
    space: tokio::sync::Notify,
    pending_max: usize,
    tracks: Mutex<HashMap<(String, i32), Track>>,
    caught_up: AtomicBool,
    pub records_read: AtomicU64,
    pub undecodable: AtomicU64,
}

impl Shared {
    pub fn new(pending_max: usize) -> Arc<Shared> {
        Arc::new(Shared {
            pending: Mutex::new((Vec::new(), Vec::new())),
            space: tokio::sync::Notify::new(),
            pending_max,
            tracks: Mutex::new(HashMap::new()),
            caught_up: AtomicBool::new(false),
            records_read: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
        })
    }

    /// Everything read since the last call.
    pub fn drain(&self) -> (Vec<LiveEvent>, Vec<DeadSeen>) {
        let out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        self.space.notify_waiters();
        out
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The record time (ms) at `offset` of a partition, from the samples: the newest sample at or
    /// before it (so never later than the record's own time), and whether the samples reach back that
    /// far (`false`: the answer is the oldest sample, a lower bound of the lag).
    pub fn time_at(&self, topic: &str, partition: i32, offset: i64) -> Option<(i64, bool)> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let t = tracks.get(&(topic.to_owned(), partition))?;
        let i = t.samples.partition_point(|&(o, _)| o <= offset);
        match i {
            0 => t.samples.front().map(|&(_, ts)| (ts, false)),
            i => t.samples.get(i - 1).map(|&(_, ts)| (ts, true)),
        }
    }
}

/// Run the reader until `stop`.
pub async fn run(cfg: KafkaConfig, lookback_ms: u64, shared: Arc<Shared>, stop: CancellationToken) {
    let topics = Topics::new(cfg.topic_prefix.clone());
    let names: Vec<String> = cfg.environments.iter().flat_map(|&e| topics.all(e)).collect();
    let consumer = loop {
        match setup(&cfg, &names, lookback_ms, &shared).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::info!(error = %e, "live reader waits for its topics");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(TOPICS_RETRY_MS)) => {}
                }
            }
        }
    };
    tracing::info!(topics = names.len(), "live reader started");
    loop {
        if pending_len(&shared) >= shared.pending_max {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.space.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        let m = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "live reader");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        shared.records_read.fetch_add(1, Ordering::Relaxed);
        let record_ms = m.timestamp().to_millis().unwrap_or(0);
        track(&shared, m.topic(), m.partition(), m.offset(), record_ms);
        let Some(env) = topics.environment_of(m.topic()) else { continue };
        let short: Arc<str> = m.topic().strip_prefix(topics.prefix()).unwrap_or(m.topic()).into();
        let decoded = decode(&topics, env, m.topic(), short, m.payload().unwrap_or_default(), record_ms);
        let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        match decoded {
            Some((event, dead)) => {
                p.0.push(event);
                p.1.extend(dead);
            }
            None => {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn pending_len(shared: &Shared) -> usize {
    shared.pending.lock().unwrap_or_else(|p| p.into_inner()).0.len()
}

fn track(shared: &Shared, topic: &str, partition: i32, offset: i64, record_ms: i64) {
    let mut tracks = shared.tracks.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = tracks.get_mut(&(topic.to_owned(), partition)) {
        t.next = t.next.max(offset + 1);
        if t.samples.back().is_none_or(|&(_, ts)| record_ms >= ts + SAMPLE_EVERY_MS) {
            t.samples.push_back((offset, record_ms));
            while t.samples.len() > SAMPLES_PER_PARTITION_MAX {
                t.samples.pop_front();
            }
        }
        if !shared.caught_up() && tracks.values().all(|t| t.next >= t.target) {
            shared.caught_up.store(true, Ordering::Release);
            tracing::info!("live reader caught up with its lookback");
        }
    }
}

/// Assign every partition of `names` from `now - lookback_ms`, noting each log end.
async fn setup(
    cfg: &KafkaConfig,
    names: &[String],
    lookback_ms: u64,
    shared: &Arc<Shared>,
) -> Result<StreamConsumer, String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-live", cfg.client_id))
        .set("group.id", format!("{}-live-unused", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.consumer_fetch_wait_max_ms.to_string())
        .set("queued.max.messages.kbytes", cfg.consumer_queued_kbytes_max.to_string())
        .set("log_level", "4")
        .create()
        .map_err(|e| format!("live reader: {e}"))?;
    let timeout = Duration::from_millis(cfg.metadata_timeout_ms);
    let from = Utc::now().timestamp_millis().saturating_sub(i64::try_from(lookback_ms).unwrap_or(i64::MAX));
    let (consumer, tpl, ends) = tokio::task::spawn_blocking({
        let names = names.to_vec();
        move || -> Result<_, String> {
            let mut tpl = TopicPartitionList::new();
            let mut ends = Vec::new();
            for name in &names {
                let md = consumer.fetch_metadata(Some(name), timeout).map_err(|e| format!("{name}: {e}"))?;
                let parts: Vec<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if parts.is_empty() {
                    return Err(format!("{name} does not exist yet"));
                }
                for p in parts {
                    tpl.add_partition_offset(name, p, Offset::Offset(from)).map_err(|e| e.to_string())?;
                    let (_, high) = consumer.fetch_watermarks(name, p, timeout).map_err(|e| e.to_string())?;
                    ends.push((name.clone(), p, high));
                }
            }
            let tpl =
                consumer.offsets_for_times(tpl, timeout).map_err(|e| format!("offsets for times: {e}"))?;
            Ok((consumer, tpl, ends))
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    {
        let mut tracks = shared.tracks.lock().unwrap_or_else(|p| p.into_inner());
        for (name, p, high) in ends {
            let start = match tpl.find_partition(&name, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => high,
            };
            tracks.insert((name, p), Track { target: high, next: start, samples: VecDeque::new() });
        }
        if tracks.values().all(|t| t.next >= t.target) {
            shared.caught_up.store(true, Ordering::Release);
        }
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    Ok(consumer)
}

#[derive(Deserialize)]
struct Head {
    event_type: String,
    tenant_id: String,
    ingested_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct StatusEnvelope {
    tenant_id: String,
    ingested_at: DateTime<Utc>,
    payload: StatusLite,
}

#[derive(Deserialize)]
struct StatusLite {
    amount: riverbank_schemas::Money,
    #[serde(default)]
    previous: Option<TransferStatus>,
    status: TransferStatus,
}

#[derive(Deserialize)]
struct DeadLite {
    dead_letter_id: uuid::Uuid,
    rejected_by: String,
    reason: String,
    #[serde(default)]
    source_topic: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    received_at: Option<DateTime<Utc>>,
}

/// A status change's outcome class: accepted (validated), rejected, blocked, completed, failed.
fn outcome(previous: Option<TransferStatus>, status: TransferStatus) -> Option<&'static str> {
    use TransferStatus::*;
    match (previous, status) {
        (Some(Validating), Pending) => Some("accepted"),
        (_, Rejected) => Some("rejected"),
        (_, Blocked) => Some("blocked"),
        (_, Completed) => Some("completed"),
        (_, Failed) => Some("failed"),
        _ => None,
    }
}

/// The text before the first ':' of a reason, trimmed to letters, digits and ` _-.`: a class, never a
/// value the reason may quote.
pub fn reason_class(reason: &str) -> String {
    let head = reason.split(':').next().unwrap_or_default();
    let kept: String = head.chars().filter(|c| c.is_ascii_alphanumeric() || " _-.".contains(*c)).collect();
    let mut class: String = kept.chars().take(REASON_CLASS_CHARS_MAX).collect();
    if kept.len() > class.len() {
        // Cut at the last word that fits.
        if let Some(space) = class.rfind(' ') {
            class.truncate(space);
        }
    }
    match class.trim() {
        "" => "other".to_owned(),
        c => c.to_owned(),
    }
}

type Decoded = (LiveEvent, Option<DeadSeen>);

/// One record as a live event (and a dead letter to list), or `None` when it does not decode.
fn decode(
    topics: &Topics,
    env: Environment,
    topic: &str,
    short: Arc<str>,
    bytes: &[u8],
    record_ms: i64,
) -> Option<Decoded> {
    let base = |tenant: Option<String>, ts_ms: i64| LiveEvent {
        topic: short.clone(),
        tenant: tenant.filter(|t| !t.is_empty()).map(Into::into),
        env,
        ts_ms,
        outcome: None,
        amount: None,
        reason: None,
    };
    if topic == topics.dead_letters(env) {
        let d: DeadLite = serde_json::from_slice(bytes).ok()?;
        let at_ms = d.received_at.map_or(record_ms, |t| t.timestamp_millis());
        let class = reason_class(&d.reason);
        let seen = DeadSeen {
            env,
            tenant: d.tenant_id.clone(),
            dead_letter_id: d.dead_letter_id.to_string(),
            rejected_by: d.rejected_by.chars().take(REASON_CLASS_CHARS_MAX).collect(),
            reason_class: class.clone(),
            source: d.source.map(|s| s.chars().take(REASON_CLASS_CHARS_MAX).collect()),
            source_topic: d.source_topic.map(|t| t.strip_prefix(topics.prefix()).unwrap_or(&t).to_owned()),
            at_ms,
        };
        let event = LiveEvent { reason: Some(class.into()), ..base(d.tenant_id, at_ms) };
        return Some((event, Some(seen)));
    }
    if topic == topics.transfer_status(env) {
        if let Ok(s) = serde_json::from_slice::<StatusEnvelope>(bytes) {
            let o = outcome(s.payload.previous, s.payload.status);
            let amount = (o == Some("completed"))
                .then(|| (s.payload.amount.amount_minor, Arc::from(s.payload.amount.currency.code())));
            let event =
                LiveEvent { outcome: o, amount, ..base(Some(s.tenant_id), s.ingested_at.timestamp_millis()) };
            return Some((event, None));
        }
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(h) => {
            let _ = h.event_type;
            Some((base(Some(h.tenant_id), h.ingested_at.timestamp_millis()), None))
        }
        // Not an envelope: counted on its topic at its record time, in the totals only.
        Err(_) => Some((base(None, record_ms), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_classes_never_carry_what_follows_the_colon() {
        assert_eq!(reason_class("invalid signature: expected abc got def"), "invalid signature");
        assert_eq!(reason_class("unmappable body"), "unmappable body");
        assert_eq!(reason_class(":secret"), "other");
        assert_eq!(reason_class("bad <script>"), "bad script");
        assert_eq!(reason_class(&"x".repeat(100)).len(), REASON_CLASS_CHARS_MAX);
        let long = "event type deposit.completed is not in the provider's declared types at all";
        assert_eq!(reason_class(long), "event type deposit.completed is not in the providers declared");
    }

    #[test]
    fn records_decode_to_codes_only() {
        let topics = Topics::new("p.");
        let env = Environment::Live;
        let status = serde_json::json!({
            "event_id": uuid::Uuid::nil(), "event_type": "transfer.status_changed", "schema_version": 1,
            "tenant_id": "acme", "environment": "live", "occurred_at": "2026-12-02T00:00:00Z",
            "ingested_at": "2026-12-02T00:00:01Z", "source": "api",
            "payload": {"transfer_id": "t1", "kind": "payout", "amount": {"amount_minor": 1234, "currency": "EUR"},
                        "previous": "CONFIRMING", "status": "COMPLETED", "version": 7, "cause_event_id": uuid::Uuid::nil()}
        });
        let t = topics.transfer_status(env);
        let bytes = serde_json::to_vec(&status).expect("json");
        let (e, dead) = decode(&topics, env, &t, "x".into(), &bytes, 5).expect("decodes");
        assert!(dead.is_none());
        assert_eq!(e.tenant.as_deref(), Some("acme"));
        assert_eq!(e.outcome, Some("completed"));
        assert_eq!(e.amount, Some((1234, "EUR".into())));
        assert_eq!(e.ts_ms, 1_796_169_601_000);
        let dl = serde_json::json!({"dead_letter_id": uuid::Uuid::nil(), "rejected_by": "ingest",
            "reason": "unmappable: field x = 4111111111111111", "tenant_id": "acme", "raw_base64": "AAAA"});
        let bytes = serde_json::to_vec(&dl).expect("json");
        let (e, dead) =
            decode(&topics, env, &topics.dead_letters(env), "d".into(), &bytes, 9).expect("decodes");
        let dead = dead.expect("listed");
        assert_eq!((e.reason.as_deref(), e.ts_ms), (Some("unmappable"), 9));
        assert_eq!(dead.reason_class, "unmappable");
        let garbage =
            decode(&topics, env, &topics.ingest_webhooks(env), "w".into(), b"\xff", 3).expect("counted");
        assert_eq!((garbage.0.tenant, garbage.0.ts_ms), (None, 3));
    }
}
