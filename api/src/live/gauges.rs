//! Gauges read every `gauge_interval_ms`: the review queue (Postgres), each consumer group's lag in
//! messages and in seconds (Kafka), and the sinks' landed-through lag (each store's own positions).
//!
//! Lag in seconds is the age of the oldest record a group has not consumed: the record time at its
//! committed offset, looked up in the live reader's samples (never later than the record's own time,
//! so the lag is never understated; `at_least: true` when the samples do not reach back that far).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use riverbank_runtime::config::KafkaConfig;
use riverbank_schemas::{Environment, Topics};
use serde_json::json;

use super::hub::{Audience, Outgoing, Slot};
use super::source::Shared;
use super::window::ALL_TENANTS;

/// Every consumer group of an environment and the topics it reads: each processor's group over its
/// inputs, and each router's over its sources (as the sinks' complete-through follows them).
pub fn groups(topics: &Topics, env: Environment) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in topics.all(env) {
        let Some((p, inputs)) = topics.upstream(&t) else { continue };
        out.entry(format!("processor.{p}")).or_default().extend(inputs);
        let sources = topics.router_sources(env, p);
        if !sources.is_empty() {
            out.entry(format!("router.{p}")).or_default().extend(sources);
        }
    }
    out
}

/// One group's lag in one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    pub env: Environment,
    pub group: String,
    pub messages: i64,
    pub seconds_ms: i64,
    pub at_least: bool,
}

/// The Kafka side of the gauges, on a blocking thread: group readers and partition lists are kept.
pub struct LagReader {
    cfg: KafkaConfig,
    topics: Topics,
    timeout: Duration,
    meta: BaseConsumer,
    readers: HashMap<String, BaseConsumer>,
    partitions: HashMap<String, Vec<i32>>,
    /// Reads single records for [`LagReader::peek`] (assigned one partition at a time, never a group).
    peeker: BaseConsumer,
    peeked: HashMap<(String, i32), (i64, i64)>,
}

/// Records read per lag round at most to learn a partition's time at a committed offset.
const PEEKS_PER_ROUND_MAX: usize = 16;
/// How long one such read may take.
const PEEK_TIMEOUT: Duration = Duration::from_millis(500);

impl LagReader {
    pub fn new(cfg: &KafkaConfig) -> Result<LagReader, String> {
        Ok(LagReader {
            meta: reader(cfg, &format!("{}-live-unused", cfg.client_id))?,
            topics: Topics::new(cfg.topic_prefix.clone()),
            timeout: Duration::from_millis(cfg.metadata_timeout_ms),
            cfg: cfg.clone(),
            readers: HashMap::new(),
            partitions: HashMap::new(),
            peeker: reader(cfg, &format!("{}-live-unused", cfg.client_id))?,
            peeked: HashMap::new(),
        })
    }

    /// Every group's lag at `now_ms`. Blocking.
    pub fn read(&mut self, shared: &Shared, now_ms: i64) -> Result<Vec<Lag>, String> {
        let mut out = Vec::new();
        let mut peeks = 0;
        for &env in &self.cfg.environments.clone() {
            for (short, inputs) in groups(&self.topics, env) {
                let group = self.topics.group(&short);
                let mut tpl = TopicPartitionList::new();
                let mut ends = Vec::new();
                for input in &inputs {
                    for p in self.partitions_of(input)? {
                        let (_, high) =
                            self.meta.fetch_watermarks(input, p, self.timeout).map_err(|e| e.to_string())?;
                        tpl.add_partition(input, p);
                        ends.push((input.clone(), p, high));
                    }
                }
                if !self.readers.contains_key(&group) {
                    self.readers.insert(group.clone(), reader(&self.cfg, &group)?);
                }
                let r = self.readers.get(&group).ok_or("lag reader vanished")?;
                let committed =
                    r.committed_offsets(tpl, self.timeout).map_err(|e| format!("{group}: {e}"))?;
                let mut lag = Lag { env, group: short, messages: 0, seconds_ms: 0, at_least: false };
                for (input, p, high) in ends {
                    let c = match committed.find_partition(&input, p).map(|e| e.offset()) {
                        Some(Offset::Offset(c)) => c,
                        _ => 0,
                    };
                    let behind = high.saturating_sub(c).max(0);
                    lag.messages = lag.messages.saturating_add(behind);
                    if behind > 0 {
                        // The live reader's samples, or (a processor's log, which it does not read) the
                        // record itself.
                        let at = shared.time_at(&input, p, c).or_else(|| self.peek(&input, p, c, &mut peeks));
                        if let Some((ts, exact)) = at {
                            lag.seconds_ms = lag.seconds_ms.max(now_ms.saturating_sub(ts).max(0));
                            lag.at_least |= !exact;
                        }
                    }
                }
                out.push(lag);
            }
        }
        Ok(out)
    }

    /// The record time at `offset` of a partition, read from the broker (at most `PEEKS_PER_ROUND_MAX`
    /// per round; remembered while the offset stays).
    fn peek(&mut self, topic: &str, partition: i32, offset: i64, peeks: &mut usize) -> Option<(i64, bool)> {
        let key = (topic.to_owned(), partition);
        if let Some(&(o, ts)) = self.peeked.get(&key) {
            if o == offset {
                return Some((ts, true));
            }
        }
        if *peeks >= PEEKS_PER_ROUND_MAX {
            return None;
        }
        *peeks += 1;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
        self.peeker.assign(&tpl).ok()?;
        let m = self.peeker.poll(PEEK_TIMEOUT)?.ok()?;
        let ts = m.timestamp().to_millis()?;
        self.peeked.insert(key, (offset, ts));
        Some((ts, true))
    }

    fn partitions_of(&mut self, topic: &str) -> Result<Vec<i32>, String> {
        if let Some(p) = self.partitions.get(topic) {
            return Ok(p.clone());
        }
        let md = self.meta.fetch_metadata(Some(topic), self.timeout).map_err(|e| format!("{topic}: {e}"))?;
        let ids: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !ids.is_empty() {
            self.partitions.insert(topic.to_owned(), ids.clone());
        }
        Ok(ids)
    }
}

fn reader(cfg: &KafkaConfig, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-live-lag", cfg.client_id))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "4")
        .create()
        .map_err(|e| format!("lag reader: {e}"))
}

/// Open reviews per (tenant, environment): the transfers whose latest decision is `review`.
pub const REVIEW_QUEUE_SQL: &str = "SELECT tenant_id, environment, count(*) AS open FROM risk_latest
WHERE decision = 'review' GROUP BY tenant_id, environment";

/// The Postgres sink's least landed-through (ms) over the topics it holds positions for, per topic
/// prefix: `$1` the sink, `$2` the environment's topic prefix (`{prefix}{env}.`).
pub const PG_LANDED_SQL: &str =
    "SELECT count(*) AS partitions, min((extract(epoch FROM landed_through) * 1000)::bigint) AS least
FROM sink_offsets WHERE sink = $1 AND starts_with(topic, $2)";

/// The ClickHouse sink's least landed-through over its partitions of one environment's topics.
pub const CH_LANDED_SQL: &str = "SELECT toUInt64(count()) AS partitions, toInt64(min(l)) AS least FROM (
    SELECT topic, partition, max(landed_through_ms) AS l FROM sink_watermarks
    WHERE sink = 'clickhouse' AND position(topic, ?) = 1 GROUP BY topic, partition)";

/// A gauge frame.
pub fn gauge(
    env: Environment,
    audience: Audience,
    metric: &str,
    tenant: &str,
    key: serde_json::Value,
    value: serde_json::Value,
    at_ms: i64,
) -> Outgoing {
    let slot = format!("{}|{metric}|{tenant}|{key}", env.as_str());
    Outgoing {
        env: Some(env),
        audience,
        event: "gauge",
        data: json!({"metric": metric, "tenant_id": tenant, "environment": env, "key": key, "at_ms": at_ms, "value": value})
            .to_string(),
        slot: Slot::Gauge(slot),
    }
}

/// Review-queue frames: one per tenant with an open review (and 0 for a tenant whose queue emptied
/// since `before`), plus the platform total per environment.
pub fn review_frames(
    rows: &[(String, Environment, i64)],
    envs: &[Environment],
    before: &mut BTreeSet<(String, Environment)>,
    at_ms: i64,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let mut now = BTreeSet::new();
    for (tenant, env, open) in rows {
        now.insert((tenant.clone(), *env));
        let a = Audience::Tenant(Arc::from(tenant.as_str()));
        out.push(gauge(*env, a, "review_queue", tenant, json!({}), json!({"open": open}), at_ms));
    }
    for (tenant, env) in before.difference(&now) {
        let a = Audience::Tenant(Arc::from(tenant.as_str()));
        out.push(gauge(*env, a, "review_queue", tenant, json!({}), json!({"open": 0}), at_ms));
    }
    for &env in envs {
        let total: i64 = rows.iter().filter(|r| r.1 == env).map(|r| r.2).sum();
        out.push(gauge(
            env,
            Audience::Platform,
            "review_queue",
            ALL_TENANTS,
            json!({}),
            json!({"open": total}),
            at_ms,
        ));
    }
    *before = now;
    out
}
