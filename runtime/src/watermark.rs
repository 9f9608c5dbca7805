//! Complete-through: per sink input partition, an instant T such that every event accepted by ingest
//! with `ingested_at < T` has landed in the sink's store (or was dead-lettered on the way).
//!
//! It is derived from log positions, never from the times of the events a sink happens to read, so
//! out-of-order `ingested_at` values, a lagging or stopped upstream processor and idle partitions are
//! all accounted for. One observation round at sink-host time `t`:
//! 1. For each input partition of the upstream processor (the ingest topic that feeds the sink's
//!    topic), record the log end `H_in` seen at `t`. An event stamped before `t − margin` was
//!    acknowledged before `t` (ingest gives up on a produce after `produce_timeout_ms`; `margin` adds
//!    the allowed clock skew between hosts), so it lies below `H_in`.
//! 2. Read the upstream processor group's committed offsets `C`. A processor commits only after its
//!    outputs are acknowledged, so the latest recorded round whose `H_in ≤ C` for every upstream
//!    partition gives a bound `b`: the outputs of every event stamped before `b − margin` are in the
//!    sink's topics now. (A topic ingest writes directly has `b = t`.)
//! 3. Record the sink topic's log end `H_out` per assigned partition (after step 2). Once the store's
//!    durable position reaches `H_out`, that partition has landed everything stamped before
//!    `b − margin`.
//!
//! A processor with a router (ARCHITECTURE.md, "Processors: one log each") has two hops: its router
//! copies the source topics into its log, and the processor turns the log into outputs. Each round then
//! first takes the router's bound over the sources (steps 1–2 with the router's group), and records the
//! log's ends with *that* bound instead of the round's time: a log end recorded in a round holds every
//! copy of what the sources held before the router bound (the router commits only acknowledged
//! copies, and its offsets are read before the log ends are), so once the processor has committed past
//! it, their outputs are in the sink's topic. A stopped router or processor holds the bound back.
//!
//! The published value per partition only grows. Readers take the minimum over every partition of
//! every topic they depend on, and have no value while any partition has none.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use riverbank_schemas::Topics;

use crate::config::KafkaConfig;
use crate::kafka::RebalanceWatch;

/// Observations kept per partition (older ones are dropped; the bound then waits for newer ones).
pub const OBSERVATIONS_MAX: usize = 256;
/// Observation rounds queued for the sink loop at most (a busy loop drains them between batches).
pub const ROUNDS_QUEUED_MAX: usize = 8;

type Key = (String, i32);

/// One observation of a sink input partition: its log end, and the bound (ms) that holds once the
/// store's position reaches it.
pub type Observation = (String, i32, i64, i64);

/// The Kafka side of complete-through: observation rounds (steps 1–3 of the module comment), on a
/// thread of its own with clients of its own, so the sink loop never waits for them.
pub struct Observer {
    cfg: KafkaConfig,
    topics: Topics,
    timeout: Duration,
    client: BaseConsumer,
    /// Per (group, upstream input partition): (bound ms that holds once the group reaches the log end,
    /// log end), oldest first. Keyed by group too: one topic can feed two groups at different paces.
    upstream: HashMap<(String, String, i32), VecDeque<(i64, i64)>>,
    /// Group readers for upstream processors, by group id.
    readers: HashMap<String, BaseConsumer>,
    /// Partition ids of upstream input topics (the count is verified at start-up and never changes).
    partitions: HashMap<String, Vec<i32>>,
}

impl Observer {
    pub fn new(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, String> {
        Ok(Observer {
            client: Self::client(cfg, &format!("{}-watermark-unused", cfg.client_id))?,
            cfg: cfg.clone(),
            topics: Topics::new(cfg.topic_prefix.clone()),
            timeout,
            upstream: HashMap::new(),
            readers: HashMap::new(),
            partitions: HashMap::new(),
        })
    }

    /// A client that never joins a group (it only reads metadata, log ends and committed offsets).
    fn client(cfg: &KafkaConfig, group: &str) -> Result<BaseConsumer, String> {
        ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("{}-watermark", cfg.client_id))
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("log_level", "4")
            .create()
            .map_err(|e| format!("watermark reader: {e}"))
    }

    fn log_end(&self, topic: &str, partition: i32) -> Result<i64, String> {
        let (_, high) = self
            .client
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|e| format!("log end of {topic}/{partition}: {e}"))?;
        Ok(high)
    }

    /// The bound (ms) for outputs in `topic`: see the module comment. `None` while unknown.
    fn upstream_bound(&mut self, topic: &str, now_ms: i64) -> Result<Option<i64>, String> {
        let Some((processor, inputs)) = self.topics.upstream(topic) else { return Ok(Some(now_ms)) };
        let sources = match self.topics.environment_of(topic) {
            Some(env) => self.topics.router_sources(env, processor),
            None => Vec::new(),
        };
        // The log ends recorded now hold what the sources held before the router's bound; without a
        // router, what was acknowledged before now.
        let value = if sources.is_empty() {
            Some(now_ms)
        } else {
            let router = self.topics.group(&format!("router.{processor}"));
            self.hop(&router, &sources, Some(now_ms))?
        };
        let group = self.topics.group(&format!("processor.{processor}"));
        self.hop(&group, &inputs, value)
    }

    /// One hop: record `(value, log end)` for every partition of `inputs` (when there is a value), then
    /// answer the value of the latest record each partition's committed offset in `group` has reached,
    /// the least over partitions; `None` while a partition has reached none.
    fn hop(&mut self, group: &str, inputs: &[String], value: Option<i64>) -> Result<Option<i64>, String> {
        let mut tpl = TopicPartitionList::new();
        let mut keys = Vec::new();
        for input in inputs {
            if !self.partitions.contains_key(input) {
                let md = self
                    .client
                    .fetch_metadata(Some(input), self.timeout)
                    .map_err(|e| format!("metadata of {input}: {e}"))?;
                let ids: Vec<i32> =
                    md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
                self.partitions.insert(input.clone(), ids);
            }
            let ids = self.partitions.get(input).cloned().unwrap_or_default();
            for p in ids {
                let key = (group.to_owned(), input.clone(), p);
                if let Some(v) = value {
                    let high = self.log_end(input, p)?;
                    let obs = self.upstream.entry(key.clone()).or_default();
                    obs.push_back((v, high));
                    while obs.len() > OBSERVATIONS_MAX {
                        obs.pop_front();
                    }
                }
                tpl.add_partition(input, p);
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        if !self.readers.contains_key(group) {
            self.readers.insert(group.to_owned(), Self::client(&self.cfg, group)?);
        }
        let reader = self.readers.get(group).ok_or("watermark reader vanished")?;
        let committed = reader
            .committed_offsets(tpl, self.timeout)
            .map_err(|e| format!("committed offsets of {group}: {e}"))?;
        let mut bound = i64::MAX;
        for key in keys {
            let c = match committed.find_partition(&key.1, key.2).map(|e| e.offset()) {
                Some(Offset::Offset(c)) => c,
                _ => 0, // nothing committed yet: only an empty log is caught up
            };
            let Some(obs) = self.upstream.get_mut(&key) else { return Ok(None) };
            // The latest observation the group has reached; older ones are no longer needed.
            let Some(i) = obs.iter().rposition(|&(_, high)| high <= c) else { return Ok(None) };
            let at = obs[i].0;
            obs.drain(..i);
            bound = bound.min(at);
        }
        Ok(Some(bound))
    }

    /// One observation round over `assigned` at `now_ms`. Blocking.
    pub fn round(&mut self, assigned: &[(String, i32)], now_ms: i64) -> Result<Vec<Observation>, String> {
        let mut topics: Vec<&str> = assigned.iter().map(|(t, _)| t.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        // Topics fed by the same processor share one bound per round.
        let mut bounds: HashMap<Option<&'static str>, Option<i64>> = HashMap::new();
        let mut out = Vec::new();
        for topic in topics {
            let upstream = self.topics.upstream(topic).map(|(p, _)| p);
            let bound = match bounds.get(&upstream) {
                Some(b) => *b,
                None => {
                    let b = self.upstream_bound(topic, now_ms)?;
                    bounds.insert(upstream, b);
                    b
                }
            };
            let Some(bound) = bound else { continue };
            for (_, p) in assigned.iter().filter(|(t, _)| t == topic) {
                out.push((topic.to_owned(), *p, self.log_end(topic, *p)?, bound));
            }
        }
        Ok(out)
    }
}

/// Runs observation rounds every `interval` over the partitions `watch` says are assigned, on a thread
/// of its own, until the returned guard is dropped. Rounds queue (at most `ROUNDS_QUEUED_MAX`; a full
/// queue drops the round) for the sink loop to apply with [`Completeness::add`].
pub fn spawn_observer(
    cfg: &KafkaConfig,
    watch: Arc<RebalanceWatch>,
    interval: Duration,
    timeout: Duration,
    sink: &'static str,
) -> Result<(ObserverGuard, Receiver<Vec<Observation>>), String> {
    let mut observer = Observer::new(cfg, timeout)?;
    let (tx, rx): (SyncSender<Vec<Observation>>, _) = sync_channel(ROUNDS_QUEUED_MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name(format!("{sink}-watermark"))
        .spawn(move || {
            let step = Duration::from_millis(50).min(interval);
            while !stopped.load(Ordering::Acquire) {
                let started = std::time::Instant::now();
                match observer.round(&watch.assigned(), now_ms()) {
                    Ok(round) => match tx.try_send(round) {
                        Ok(()) | Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => return,
                    },
                    Err(e) => tracing::debug!(sink, error = %e, "complete-through round failed"),
                }
                metrics::histogram!("riverbank_sink_watermark_seconds", "sink" => sink)
                    .record(started.elapsed().as_secs_f64());
                while started.elapsed() < interval && !stopped.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                }
            }
        })
        .map_err(|e| format!("watermark thread: {e}"))?;
    Ok((ObserverGuard { stop }, rx))
}

/// Stops the observer thread when dropped.
pub struct ObserverGuard {
    stop: Arc<AtomicBool>,
}

impl Drop for ObserverGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The pure side: observations waiting for the store to reach them, and the published values.
#[derive(Debug, Default)]
pub struct Completeness {
    margin_ms: i64,
    /// Sink input partitions: (log end, bound ms), oldest first.
    pending: HashMap<Key, VecDeque<(i64, i64)>>,
    /// Complete-through per sink input partition (ms), only growing.
    landed: HashMap<Key, i64>,
}

impl Completeness {
    pub fn new(margin_ms: i64) -> Self {
        Completeness { margin_ms, ..Completeness::default() }
    }

    /// The value already in the store for a partition (published values never move back).
    pub fn seed(&mut self, topic: &str, partition: i32, landed_ms: i64) {
        let e = self.landed.entry((topic.to_owned(), partition)).or_insert(landed_ms);
        *e = (*e).max(landed_ms);
    }

    pub fn landed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.landed.get(&(topic.to_owned(), partition)).copied()
    }

    /// Forget partitions no longer assigned.
    pub fn retain(&mut self, assigned: &[(String, i32)]) {
        self.pending.retain(|k, _| assigned.contains(k));
        self.landed.retain(|k, _| assigned.contains(k));
    }

    /// Queue one observation round (partitions not assigned here are ignored).
    pub fn add(&mut self, round: Vec<Observation>, assigned: &[(String, i32)]) {
        for (topic, p, high, bound) in round {
            let key = (topic, p);
            if !assigned.contains(&key) {
                continue;
            }
            let q = self.pending.entry(key).or_default();
            q.push_back((high, bound));
            while q.len() > OBSERVATIONS_MAX {
                q.pop_front();
            }
        }
    }

    /// Apply store positions to the pending observations. Returns the partitions whose value moved.
    pub fn resolve(&mut self, durable: impl Fn(&str, i32) -> Option<i64>) -> Vec<(String, i32, i64)> {
        let mut moved = Vec::new();
        for ((topic, p), q) in &mut self.pending {
            let Some(at) = durable(topic, *p) else { continue };
            let mut best = None;
            while let Some(&(high, bound)) = q.front() {
                if high > at {
                    break;
                }
                best = Some(bound.saturating_sub(self.margin_ms));
                q.pop_front();
            }
            if let Some(candidate) = best {
                let key = (topic.clone(), *p);
                let prev = self.landed.get(&key).copied();
                if prev.is_none_or(|v| candidate > v) {
                    self.landed.insert(key, candidate);
                    moved.push((topic.clone(), *p, candidate));
                }
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completeness() -> Completeness {
        Completeness::new(100)
    }

    #[test]
    fn a_partition_is_complete_only_through_what_its_position_covers() {
        let mut c = completeness();
        let key = ("t".to_owned(), 0);
        // Observed log ends 10 (bound 1000) then 20 (bound 2000); the store is at 5.
        c.pending.insert(key.clone(), VecDeque::from([(10, 1000), (20, 2000)]));
        assert!(c.resolve(|_, _| Some(5)).is_empty(), "nothing covered yet");
        assert_eq!(c.resolve(|_, _| Some(10)), vec![("t".to_owned(), 0, 900)]);
        assert_eq!(c.resolve(|_, _| Some(25)), vec![("t".to_owned(), 0, 1900)]);
        // A value never moves back, even when a later observation carries an older bound.
        c.pending.insert(key, VecDeque::from([(25, 1500)]));
        assert!(c.resolve(|_, _| Some(25)).is_empty());
        assert_eq!(c.landed("t", 0), Some(1900));
    }

    #[test]
    fn seeded_values_are_a_floor() {
        let mut c = completeness();
        c.seed("t", 1, 5000);
        c.pending.insert(("t".to_owned(), 1), VecDeque::from([(1, 3000)]));
        assert!(c.resolve(|_, _| Some(1)).is_empty());
        assert_eq!(c.landed("t", 1), Some(5000));
    }
}
