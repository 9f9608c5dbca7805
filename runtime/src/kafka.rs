//! Kafka clients, configured only from `KafkaConfig` and only through the Kafka protocol, so the same
//! code runs against nisshi locally and Kafka, Redpanda or MSK in production.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;
use riverbank_schemas::{Environment, Topics};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("broker metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    Topic(String),
}

fn base(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-{role}", cfg.client_id))
        .set("socket.timeout.ms", cfg.metadata_timeout_ms.max(10).to_string())
        .set("log_level", "4");
    c
}

/// Idempotent producer with acks=all: a send is acknowledged only when the broker has it durably,
/// and librdkafka's retries never duplicate or reorder within a partition.
pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, KafkaSetupError> {
    producer_lingering(cfg, cfg.producer_linger_ms)
}

/// The producer of checkpoint records: as [`producer`], without linger. A batch's checkpoint is sent
/// all at once after its outputs are acknowledged and the loop waits for it, so lingering would only
/// add its time to every batch.
pub fn checkpoint_producer(cfg: &KafkaConfig) -> Result<FutureProducer, KafkaSetupError> {
    producer_lingering(cfg, 0)
}

fn producer_lingering(cfg: &KafkaConfig, linger_ms: u64) -> Result<FutureProducer, KafkaSetupError> {
    let mut c = base(cfg, "producer");
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("compression.type", "lz4")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .set("queue.buffering.max.messages", cfg.producer_queue_messages_max.to_string())
        .set("queue.buffering.max.kbytes", cfg.producer_queue_kbytes_max.to_string())
        .set("batch.num.messages", cfg.producer_batch_messages_max.to_string());
    Ok(c.create()?)
}

/// Counts rebalances so a loop can tell that its partitions may have changed hands.
#[derive(Debug, Default)]
pub struct RebalanceWatch {
    generation: AtomicU64,
    /// Partitions assigned by the latest rebalance.
    assigned: std::sync::Mutex<Vec<(String, i32)>>,
    /// Wakes a loop waiting for messages, so it can position newly assigned partitions at once.
    pub changed: tokio::sync::Notify,
}

impl RebalanceWatch {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Consumer context: logs assignments, bumps the rebalance generation, reports consumer lag.
#[derive(Debug, Clone, Default)]
pub struct WatchedContext {
    pub watch: Arc<RebalanceWatch>,
    /// The consumer group, the lag metric's only label.
    pub group: String,
}

impl ClientContext for WatchedContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        metrics::gauge!("riverbank_consumer_lag_messages", "group" => self.group.clone()).set(lag as f64);
    }
}

impl ConsumerContext for WatchedContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revoked partitions leave the assignment at once (eager rebalancing delivers Revoke and Assign
        // in different polls; between them this instance owns nothing it may position or restore), and
        // assigned ones join it (an eager Assign after a full Revoke, or an incremental one).
        let parts = |tpl: &rdkafka::TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
        };
        if let Ok(mut a) = self.watch.assigned.lock() {
            match rebalance {
                Rebalance::Assign(tpl) => {
                    for p in parts(tpl) {
                        if !a.contains(&p) {
                            a.push(p);
                        }
                    }
                }
                Rebalance::Revoke(tpl) => {
                    let gone = parts(tpl);
                    a.retain(|p| !gone.contains(p));
                }
                // librdkafka drops the assignment on a rebalance error.
                Rebalance::Error(_) => a.clear(),
            }
        }
        self.watch.generation.fetch_add(1, Ordering::AcqRel);
        self.watch.changed.notify_one();
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub type Consumer = StreamConsumer<WatchedContext>;

/// A group consumer that never auto-commits: callers commit only what is durably done.
pub fn consumer(
    cfg: &KafkaConfig,
    group_id: &str,
) -> Result<(Consumer, Arc<RebalanceWatch>), KafkaSetupError> {
    let ctx = WatchedContext { group: group_id.to_owned(), ..WatchedContext::default() };
    let watch = ctx.watch.clone();
    let mut c = base(cfg, "consumer");
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", cfg.consumer_session_timeout_ms.to_string())
        .set("fetch.wait.max.ms", cfg.consumer_fetch_wait_max_ms.to_string())
        .set("queued.max.messages.kbytes", cfg.consumer_queued_kbytes_max.to_string())
        .set("statistics.interval.ms", cfg.statistics_interval_ms.to_string());
    let consumer: Consumer = c.create_with_context(ctx)?;
    Ok((consumer, watch))
}

/// Whether a topic holds processor state checkpoints (never expired, never compacted).
pub fn is_checkpoint_topic(name: &str) -> bool {
    name.contains(".checkpoints.")
}

/// The configs riverbank creates a topic with. Checkpoint topics keep every record until a newer
/// snapshot makes it unneeded, so they never expire (`retention.ms = retention.bytes = -1`) and are
/// never compacted (every record of a partition shares one key, so compaction would keep one delta).
/// Other topics keep `topic_retention_ms`. `min.insync.replicas` is `min(2, replication factor)`.
pub fn topic_configs(cfg: &KafkaConfig, name: &str) -> Vec<(&'static str, String)> {
    let retention =
        if is_checkpoint_topic(name) { "-1".to_owned() } else { cfg.topic_retention_ms.to_string() };
    vec![
        ("cleanup.policy", "delete".to_owned()),
        ("retention.ms", retention),
        ("retention.bytes", "-1".to_owned()),
        ("min.insync.replicas", cfg.topic_replication_factor.clamp(1, 2).to_string()),
    ]
}

/// What is wrong with an existing topic's configs, if anything (a reason to refuse to run).
pub fn config_problem(name: &str, get: impl Fn(&str) -> Option<String>) -> Option<String> {
    let policy = get("cleanup.policy").unwrap_or_else(|| "delete".to_owned());
    if policy.split(',').any(|p| p.trim() == "compact") {
        return Some(format!(
            "topic {name} has cleanup.policy={policy}: compaction keeps one record per key and would drop \
             events (and checkpoint deltas); set cleanup.policy=delete"
        ));
    }
    if is_checkpoint_topic(name) {
        for key in ["retention.ms", "retention.bytes"] {
            if let Some(v) = get(key).filter(|v| v.trim() != "-1") {
                return Some(format!(
                    "checkpoint topic {name} has {key}={v}: a quiet partition's snapshot would expire and its \
                     state be lost; set {key}=-1"
                ));
            }
        }
    }
    None
}

/// Create the topics if they do not exist yet (with [`topic_configs`]), then verify every one of them:
/// the configured partition count (state is per partition: a changed count moves tenants between
/// partitions) and configs that cannot lose state ([`config_problem`]). A broker that cannot describe
/// configs is reported in the log, not refused.
pub async fn ensure_topics(cfg: &KafkaConfig, names: &[String]) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base(cfg, "admin").create()?;
    let configs: Vec<Vec<(&'static str, String)>> = names.iter().map(|n| topic_configs(cfg, n)).collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .zip(&configs)
        .map(|(n, c)| {
            c.iter().fold(
                NewTopic::new(n, cfg.topic_partitions, TopicReplication::Fixed(cfg.topic_replication_factor)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_millis(cfg.admin_timeout_ms)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    verify_topics(cfg, &admin, names, &opts).await
}

async fn verify_topics(
    cfg: &KafkaConfig,
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
    opts: &AdminOptions,
) -> Result<(), KafkaSetupError> {
    let timeout = Duration::from_millis(cfg.metadata_timeout_ms);
    let md = admin.inner().fetch_metadata(None, timeout)?;
    for name in names {
        let Some(t) = md.topics().iter().find(|t| t.name() == name) else { continue };
        let count = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
        if count != 0 && count != cfg.topic_partitions {
            return Err(KafkaSetupError::Topic(format!(
                "topic {name} has {count} partitions, the config says kafka.topic_partitions = {}: state and \
                 tenants are placed per partition, so the counts must agree (change the config, or recreate \
                 the topics and rebuild)",
                cfg.topic_partitions
            )));
        }
    }
    let specs: Vec<ResourceSpecifier<'_>> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let described = match admin.describe_configs(specs.iter(), opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "the broker cannot describe topic configs; retention not verified");
            return Ok(());
        }
    };
    for (name, result) in names.iter().zip(described) {
        match result {
            Ok(resource) => {
                let get = |k: &str| resource.get(k).and_then(|e| e.value.clone());
                if let Some(problem) = config_problem(name, get) {
                    return Err(KafkaSetupError::Topic(problem));
                }
            }
            Err(code) => {
                tracing::warn!(topic = %name, %code, "could not describe the topic's configs; not verified")
            }
        }
    }
    Ok(())
}

/// The event id header of the message at each (partition, offset) of `topic`, where the log has one;
/// partitions whose message cannot be read within `timeout` are absent. Blocking.
pub fn event_ids_at(
    cfg: &KafkaConfig,
    topic: &str,
    at: &[(i32, i64)],
    timeout: Duration,
) -> Result<std::collections::HashMap<i32, Option<String>>, String> {
    use rdkafka::message::Message as _;
    let mut out = std::collections::HashMap::new();
    if at.is_empty() {
        return Ok(out);
    }
    let consumer: BaseConsumer = base(cfg, "identity")
        .set("group.id", format!("{}-identity-unused", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("identity reader: {e}"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in at {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o)).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + timeout;
    while out.len() < at.len() {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            break;
        }
        match consumer.poll(remaining.min(Duration::from_millis(200))) {
            None => continue,
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            Some(Ok(m)) => {
                if at.contains(&(m.partition(), m.offset())) {
                    let id = crate::produce::header(&m, crate::produce::EVENT_ID_HEADER).map(str::to_owned);
                    out.insert(m.partition(), id);
                }
            }
        }
    }
    Ok(out)
}

/// Every topic riverbank owns in the configured environments.
pub fn all_topics(cfg: &KafkaConfig) -> Vec<String> {
    let topics = Topics::new(cfg.topic_prefix.clone());
    cfg.environments.iter().flat_map(|&env| topics.all(env)).collect()
}

pub fn topics(cfg: &KafkaConfig) -> Topics {
    Topics::new(cfg.topic_prefix.clone())
}

pub fn environments(cfg: &KafkaConfig) -> &[Environment] {
    &cfg.environments
}

/// Readiness: a metadata request answered within the timeout. Returns the number of brokers seen.
pub async fn ping(cfg: &KafkaConfig) -> Result<usize, KafkaSetupError> {
    let c = base(cfg, "ping");
    let timeout = Duration::from_millis(cfg.metadata_timeout_ms);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = c.create()?;
        let md = consumer.fetch_metadata(None, timeout)?;
        Ok(md.brokers().len())
    })
    .await
    .map_err(|e| KafkaSetupError::Metadata(e.to_string()))?
}

/// One record read by [`read_all`].
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Headers whose values are UTF-8 (event id, router source, tick).
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Read every partition of `topic` from its start to the high watermark seen on entry, at most
/// `records_max` records, within `timeout`. No consumer group; for tools (dead-letter listing) and tests.
/// Blocking: run it on a blocking thread.
pub fn read_all(
    cfg: &KafkaConfig,
    topic: &str,
    records_max: usize,
    timeout: std::time::Duration,
) -> Result<Vec<ReadRecord>, String> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let deadline = std::time::Instant::now() + timeout;
    let consumer: BaseConsumer = base(cfg, "reader")
        .set("group.id", format!("{}-reader-unused", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("reader: {e}"))?;
    let metadata =
        consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low)).map_err(|e| e.to_string())?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut done = std::collections::HashSet::new();
    while done.len() < ends.len() && out.len() < records_max {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return Err(format!("reading {topic} took over {timeout:?}"));
        }
        match consumer.poll(remaining.min(std::time::Duration::from_millis(500))) {
            None => continue,
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            Some(Ok(m)) => {
                use rdkafka::message::Headers as _;
                use rdkafka::Message as _;
                let end = ends.get(&m.partition()).copied().unwrap_or(0);
                if m.offset() < end {
                    out.push(ReadRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers: m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .filter_map(|h| {
                                        Some((
                                            h.key.to_owned(),
                                            std::str::from_utf8(h.value?).ok()?.to_owned(),
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
                if m.offset() >= end - 1 {
                    done.insert(m.partition());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_topics_never_expire_and_are_never_compacted() {
        let cfg = crate::config::Config::load(None).expect("defaults").kafka;
        let ck = "x.live.checkpoints.transfers";
        let c: std::collections::HashMap<_, _> = topic_configs(&cfg, ck).into_iter().collect();
        assert_eq!((c["retention.ms"].as_str(), c["retention.bytes"].as_str()), ("-1", "-1"));
        assert_eq!(c["cleanup.policy"], "delete");
        let input: std::collections::HashMap<_, _> =
            topic_configs(&cfg, "x.live.transfers.inputs").into_iter().collect();
        assert_eq!(input["retention.ms"], cfg.topic_retention_ms.to_string());
        assert_eq!(input["min.insync.replicas"], "1", "never more than the replication factor");
    }

    #[test]
    fn configs_that_would_lose_state_are_refused() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let ck = "x.live.checkpoints.transfers";
        assert!(config_problem(ck, with(&[("retention.ms", "-1"), ("retention.bytes", "-1")])).is_none());
        let expiring = config_problem(ck, with(&[("retention.ms", "604800000")])).expect("refused");
        assert!(expiring.contains("retention.ms=604800000") && expiring.contains(ck), "{expiring}");
        assert!(config_problem(ck, with(&[("cleanup.policy", "compact,delete")])).is_some());
        assert!(config_problem("x.live.transfers.inputs", with(&[("cleanup.policy", "compact")])).is_some());
        assert!(config_problem("x.live.transfers.inputs", with(&[("retention.ms", "1000")])).is_none());
    }
}
