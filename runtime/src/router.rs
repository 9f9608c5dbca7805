//! The router: brings a processor's inputs together in its one log, so each log partition is one totally
//! ordered history (the Kafka Streams repartition-topic pattern).
//!
//! - A *routed* (partitioned) input record is copied to the log keyed by its tenant (its key up to the
//!   first `/`: provider webhooks are keyed `{tenant}/{entity}`, everything else by tenant), so it lands in
//!   the partition every other record of that tenant lands in.
//! - A provider webhook (`webhook.received`) is copied without its raw `body` (set to null): the body may
//!   hold personal data and never leaves the ingest topic; processors read the fields the provider
//!   definition extracted at the edge.
//! - A *broadcast* (reference) input record is copied into every partition of the log, so each
//!   partition sees the rate, rule set or list version at one deterministic point of its own history.
//! - *Ticks*: every `processor.tick_interval_ms` a record holding the wall time goes into every
//!   partition; the partition clock is the latest tick, so timers fire in idle partitions too and a
//!   replay sees the same ticks.
//!
//! Copies carry `riverbank-source: {topic}/{partition}/{offset}`. The router's producer is idempotent
//! (one source partition's copies stay in order), it commits a batch's source offsets only after the
//! copies are acknowledged, and the processor skips a copy at or below the highest source offset it
//! applied (`engine.rs`), so a router crash or rebalance never applies an input twice or skips one.
use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use riverbank_schemas::processor::{Emit, Spec};
use riverbank_schemas::{derived_id, Environment};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{self, Tracker};
use crate::config::Config;
use crate::kafka;
use crate::produce::{send, Outgoing, SOURCE_HEADER, TICK_HEADER};

/// Where a source topic's records go.
#[derive(Debug, Clone)]
struct Route {
    log: String,
    broadcast: bool,
}

/// Run the router of processor `name` until `shutdown` (restarting after transient failures).
pub async fn run(
    cfg: &Config,
    name: &'static str,
    specs: &[(Environment, Spec)],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut routes: HashMap<String, Route> = HashMap::new();
    for (_, s) in specs {
        for t in &s.routed {
            routes.insert(t.clone(), Route { log: s.log.clone(), broadcast: false });
        }
        for t in &s.broadcast {
            routes.insert(t.clone(), Route { log: s.log.clone(), broadcast: true });
        }
    }
    let tick_logs: Vec<String> = specs.iter().filter(|(_, s)| s.ticks).map(|(_, s)| s.log.clone()).collect();
    let producer = kafka::producer(&cfg.kafka)?;
    let ticker = (!tick_logs.is_empty()).then(|| {
        let (c, p, stop) = (cfg.clone(), producer.clone(), shutdown.clone());
        tokio::spawn(async move { ticks(&c, &p, &tick_logs, stop).await })
    });
    let mut backoff =
        Backoff::new(cfg.processor.retry_backoff_initial_ms, cfg.processor.retry_backoff_max_ms);
    while !routes.is_empty() && !shutdown.is_cancelled() {
        match copy_loop(cfg, name, &routes, &producer, &shutdown, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(processor = name, error = %e, ?delay, "router failed; restarting from its committed offsets");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
    if let Some(t) = ticker {
        shutdown.cancelled().await;
        t.abort();
    }
    Ok(())
}

/// Write a tick into every partition of every log that wants them, every `tick_interval_ms`.
async fn ticks(cfg: &Config, producer: &FutureProducer, logs: &[String], shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(cfg.processor.tick_interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = every.tick() => {} }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let header = [(TICK_HEADER, now_ms.to_string())];
        let mut emits = Vec::new();
        for log in logs {
            for p in 0..cfg.kafka.topic_partitions {
                let id = derived_id(&["tick", log, &p.to_string(), &now_ms.to_string()]);
                let payload = format!("{{\"tick_ms\":{now_ms}}}").into_bytes();
                emits.push((p, Emit { topic: log.clone(), key: "tick".to_owned(), event_id: id, payload }));
            }
        }
        let out: Vec<Outgoing<'_>> =
            emits.iter().map(|(p, e)| Outgoing { emit: e, partition: Some(*p), headers: &header }).collect();
        if let Err(e) = send(producer, &out, timeout).await {
            // A lost tick only delays timers until the next one.
            tracing::warn!(error = %e, "ticks not written");
        }
    }
}

/// The copies of one source record: one to its key's partition, or one per partition (broadcast).
fn copies(m: &OwnedMessage, route: &Route, partitions: i32) -> Vec<(Option<i32>, Emit)> {
    let id = crate::produce::event_id(m).unwrap_or_else(|| {
        derived_id(&["routed", m.topic(), &m.partition().to_string(), &m.offset().to_string()])
    });
    let key = String::from_utf8_lossy(m.key().unwrap_or_default());
    let payload = m.payload().unwrap_or_default();
    let emit = Emit {
        topic: route.log.clone(),
        key: tenant_of_key(&key).to_owned(),
        event_id: id,
        payload: without_webhook_body(payload).unwrap_or_else(|| payload.to_vec()),
    };
    if route.broadcast {
        (0..partitions).map(|p| (Some(p), emit.clone())).collect()
    } else {
        vec![(None, emit)]
    }
}

/// The tenant part of a record key: up to the first `/`.
pub fn tenant_of_key(key: &str) -> &str {
    key.split_once('/').map_or(key, |(tenant, _)| tenant)
}

/// A `webhook.received` envelope with its `payload.body` set to null; `None` for any other record (or
/// one that is not JSON: it is copied as it is and the processor dead-letters it).
pub fn without_webhook_body(payload: &[u8]) -> Option<Vec<u8>> {
    // Cheap test first: most routed records are not webhooks.
    let marker = b"\"webhook.received\"";
    if !payload.windows(marker.len()).any(|w| w == marker) {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v.get("event_type")?.as_str()? != riverbank_schemas::WebhookReceived::EVENT_TYPE {
        return None;
    }
    let body = v.get_mut("payload")?.as_object_mut()?.get_mut("body")?;
    *body = serde_json::Value::Null;
    serde_json::to_vec(&v).ok()
}

/// The router's consumer loop: copy each batch, then commit its source offsets.
struct Copier<'a> {
    cfg: &'a Config,
    name: &'static str,
    routes: &'a HashMap<String, Route>,
    producer: &'a FutureProducer,
    shutdown: &'a CancellationToken,
    consumer: kafka::Consumer,
    watch: std::sync::Arc<kafka::RebalanceWatch>,
    tracker: Tracker,
    who: String,
    progressed: bool,
}

impl batch::Stage for Copier<'_> {
    fn consumer(&self) -> &kafka::Consumer {
        &self.consumer
    }
    fn watch(&self) -> &kafka::RebalanceWatch {
        &self.watch
    }
    fn batch_limits(&self) -> (usize, Duration) {
        (self.cfg.processor.batch_events_max, Duration::from_millis(self.cfg.processor.batch_linger_ms))
    }
    fn idle_wake(&self) -> Duration {
        Duration::from_millis(self.cfg.processor.idle_wake_ms)
    }
    async fn rebalanced(&mut self) -> anyhow::Result<()> {
        // The group's committed offsets are the position: forget what this instance knew.
        self.tracker = Tracker::default();
        Ok(())
    }
    async fn batch(&mut self, messages: Vec<OwnedMessage>) -> anyhow::Result<()> {
        let seek_timeout = Duration::from_millis(self.cfg.kafka.commit_timeout_ms);
        self.tracker.begin_batch();
        let mut out: Vec<(Option<i32>, Emit, String)> = Vec::new();
        let mut taken = Vec::new();
        for m in &messages {
            let Some(route) = self.routes.get(m.topic()) else { continue };
            if !batch::take(&self.consumer, &mut self.tracker, m, seek_timeout, &self.who, false)? {
                continue;
            }
            let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
            let partitions = self.cfg.kafka.topic_partitions;
            out.extend(copies(m, route, partitions).into_iter().map(|(p, e)| (p, e, source.clone())));
            taken.push(m);
        }
        let headers: Vec<[(&'static str, String); 1]> =
            out.iter().map(|(_, _, s)| [(SOURCE_HEADER, s.clone())]).collect();
        let items: Vec<Outgoing<'_>> = out
            .iter()
            .zip(&headers)
            .map(|((p, e, _), h)| Outgoing { emit: e, partition: *p, headers: h })
            .collect();
        let timeout = Duration::from_millis(self.cfg.kafka.message_timeout_ms);
        send(self.producer, &items, timeout).await.map_err(anyhow::Error::msg)?;
        let next = batch::next_offsets(taken.iter().copied());
        for (t, p, o) in &next {
            self.tracker.made_durable(t, *p, *o);
        }
        batch::commit(&self.consumer, &next, self.shutdown.is_cancelled())?;
        metrics::counter!("riverbank_router_copies_total", "processor" => self.name)
            .increment(out.len() as u64);
        self.progressed = true;
        Ok(())
    }
}

async fn copy_loop(
    cfg: &Config,
    name: &'static str,
    routes: &HashMap<String, Route>,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    let (consumer, watch) = kafka::consumer(&cfg.kafka, &topics.group(&format!("router.{name}")))?;
    let sources: Vec<&str> = routes.keys().map(String::as_str).collect();
    consumer.subscribe(&sources)?;
    let mut copier = Copier {
        cfg,
        name,
        routes,
        producer,
        shutdown,
        consumer,
        watch,
        tracker: Tracker::default(),
        who: format!("router:{name}"),
        progressed: false,
    };
    let result = batch::drive(&mut copier, shutdown).await;
    if copier.progressed {
        backoff.reset();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_keyed_by_tenant() {
        assert_eq!(tenant_of_key("acme/dep_1"), "acme");
        assert_eq!(tenant_of_key("acme/a/b"), "acme");
        assert_eq!(tenant_of_key("acme"), "acme");
        assert_eq!(tenant_of_key(""), "");
    }

    #[test]
    fn webhook_copies_drop_the_raw_body_and_keep_everything_else() {
        let env = serde_json::json!({
            "event_type": "webhook.received",
            "payload": {"provider": "idcheck", "fields": {"user_id": "usr_1"}, "body": {"name": "Jane Doe"}},
        });
        let out = without_webhook_body(&serde_json::to_vec(&env).unwrap()).expect("a webhook");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["payload"]["body"], serde_json::Value::Null);
        assert_eq!(v["payload"]["fields"]["user_id"], "usr_1");
        assert!(!String::from_utf8(out).unwrap().contains("Jane"));
        let other = serde_json::json!({"event_type": "transfer.status_changed", "payload": {"body": 1}});
        assert_eq!(without_webhook_body(&serde_json::to_vec(&other).unwrap()), None);
        assert_eq!(without_webhook_body(b"not json \"webhook.received\""), None);
    }
}
