//! The live component (ARCHITECTURE.md, "Live monitoring"): the api reads every topic as it flows
//! ([`source`]), aggregates windows in event time with DataFusion each pane ([`window`]), reads gauges
//! ([`gauges`]), and pushes it all as frames ([`hub`]) on one multiplexed Server-Sent Events stream per
//! client, `GET /v1/live` ([`stream`]).
pub mod gauges;
pub mod hub;
pub mod page;
pub mod source;
pub mod window;

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use riverbank_runtime::config::Config;
use riverbank_runtime::http::HttpError;
use riverbank_runtime::CancellationToken;
use riverbank_schemas::{Environment, Topics};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, Semaphore};

use hub::{Audience, Frame, Hub, HubLimits, Outgoing, Slot, Start, View};
use source::{DeadSeen, Shared};
use window::{
    Emitted, LiveEvent, Metric, Retention, WindowKey, Windows, ALL_TENANTS, MINUTE_MS, PANE_MS, SLIDING_MS,
};

/// Chunks queued between a stream's task and its connection (each chunk is one or more frames).
const STREAM_CHUNKS_QUEUED_MAX: usize = 64;

pub struct Live {
    pub hub: Arc<Hub>,
    pub shared: Arc<Shared>,
    streams: Arc<Semaphore>,
    keepalive: Duration,
    lateness_ms: u64,
    /// How long minute and sliding windows are kept after their end (told in `hello`).
    minute_kept_ms: u64,
    sliding_kept_ms: u64,
    stop: CancellationToken,
}

impl Live {
    /// Start the reader, the aggregator and the gauges; `None` when `[live] enabled = false`.
    pub fn start(
        cfg: &Config,
        pg: PgPool,
        ch: clickhouse::Client,
        stop: CancellationToken,
    ) -> Option<Arc<Live>> {
        let l = &cfg.live;
        if !l.enabled {
            return None;
        }
        let hub = Arc::new(Hub::new(HubLimits {
            replay_frames_max: l.replay_frames_max,
            snapshot_frames_max: l.snapshot_frames_max,
            dead_letters_kept_max: l.dead_letters_kept_max,
            connection_queue_frames_max: l.connection_queue_frames_max,
        }));
        let shared = Shared::new(l.pending_events_max);
        tokio::spawn(source::run(cfg.kafka.clone(), l.lookback_ms, shared.clone(), stop.clone()));
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let windows = Windows::new(
            Retention { sliding_ms: ms(l.sliding_kept_ms), minute_ms: ms(l.lookback_ms) },
            ms(l.lateness_ms),
            ms(l.idle_ms),
        );
        let every = Duration::from_millis(l.batch_interval_ms);
        tokio::spawn(aggregate(windows, hub.clone(), shared.clone(), (every, l.tenants_max), stop.clone()));
        let g = GaugeTask {
            hub: hub.clone(),
            shared: shared.clone(),
            pg,
            ch,
            cfg: cfg.kafka.clone(),
            every: Duration::from_millis(l.gauge_interval_ms),
        };
        tokio::spawn(g.run(stop.clone()));
        Some(Arc::new(Live {
            hub,
            shared,
            streams: Arc::new(Semaphore::new(l.connections_max)),
            keepalive: Duration::from_millis(l.keepalive_ms),
            lateness_ms: l.lateness_ms,
            minute_kept_ms: l.lookback_ms,
            sliding_kept_ms: l.sliding_kept_ms,
            stop,
        }))
    }

    /// One client's stream of `view`, resuming after `last_event_id` when it can.
    pub fn stream(&self, view: View, last_event_id: Option<String>) -> Result<Response, HttpError> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            HttpError::unavailable(
                "too_many_streams",
                "every live stream slot is taken (live.connections_max)",
                5,
            )
        })?;
        let (start, rx) = self.hub.subscribe(&view, last_event_id.as_deref());
        let (tx, out) = mpsc::channel::<Bytes>(STREAM_CHUNKS_QUEUED_MAX);
        let hello = json!({
            "epoch": self.hub.epoch,
            "view": {"tenant_id": view.tenant.as_deref().unwrap_or(riverbank_runtime::audit::PLATFORM_TENANT), "environment": view.env},
            "resumed": matches!(start, Start::Replay(_)),
            "pane_ms": PANE_MS, "sliding_ms": SLIDING_MS, "minute_ms": MINUTE_MS, "lateness_ms": self.lateness_ms,
            "minute_kept_ms": self.minute_kept_ms, "sliding_kept_ms": self.sliding_kept_ms,
        });
        let task = StreamTask {
            hub: self.hub.clone(),
            view,
            tx,
            keepalive: self.keepalive,
            stop: self.stop.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            task.run(hello.to_string(), start, rx).await;
        });
        let body = Body::from_stream(futures::stream::unfold(out, |mut out| async move {
            out.recv().await.map(|b| (Ok::<_, Infallible>(b), out))
        }));
        let mut r = (StatusCode::OK, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(r)
    }
}

/// The `Last-Event-ID` a reconnecting client sends.
pub fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(64).collect())
}

struct StreamTask {
    hub: Arc<Hub>,
    view: View,
    tx: mpsc::Sender<Bytes>,
    keepalive: Duration,
    stop: CancellationToken,
}

impl StreamTask {
    async fn run(self, hello: String, start: Start, mut rx: broadcast::Receiver<Arc<Frame>>) {
        let epoch = self.hub.epoch.clone();
        let mut first = format!("event: hello\ndata: {hello}\n\n");
        match start {
            Start::Replay(frames) => frames.iter().for_each(|f| first.push_str(&f.sse(&epoch))),
            Start::Snapshot(s) => first.push_str(&snapshot_frame(&epoch, &s)),
        }
        if self.tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = keepalive.tick() => ": keepalive\n\n".to_owned(),
                f = rx.recv() => match f {
                    Ok(f) => {
                        let mut chunk = String::new();
                        if self.view.sees(&f) {
                            chunk.push_str(&f.sse(&epoch));
                        }
                        // Whatever else is already there goes in the same chunk.
                        while let Ok(f) = rx.try_recv() {
                            if self.view.sees(&f) {
                                chunk.push_str(&f.sse(&epoch));
                            }
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        chunk
                    }
                    // Too far behind: the current state supersedes what it missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        rx = rx.resubscribe();
                        snapshot_frame(&epoch, &self.hub.snapshot(&self.view))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if self.tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    }
}

/// A snapshot's SSE frame: its id is the newest sequence number it includes, so a client that
/// reconnects after it resumes from there.
fn snapshot_frame(epoch: &str, data: &str) -> String {
    let seq =
        serde_json::from_str::<serde_json::Value>(data).ok().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
    format!("id: {epoch}-{seq}\nevent: snapshot\ndata: {data}\n\n")
}

fn window_slot(w: &WindowKey) -> String {
    format!("{}|{}|{}|{}|{}", w.env.as_str(), w.metric.as_str(), w.tenant, w.key, w.start_ms)
}

fn audience(tenant: &str) -> Audience {
    if tenant == ALL_TENANTS {
        Audience::Platform
    } else {
        Audience::Tenant(Arc::from(tenant))
    }
}

/// Events per second over a sliding window (a rate for a chart, not money).
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn per_second(events: u64, window_ms: i64) -> f64 {
    events as f64 * 1000.0 / window_ms as f64
}

/// A window as a `window` frame.
pub fn window_frame(e: &Emitted) -> Outgoing {
    let w = &e.window;
    let value = match w.metric {
        Metric::Events => json!({"events": e.value.count, "per_s": per_second(e.value.count, SLIDING_MS)}),
        Metric::TransferVolume => {
            json!({"amount_minor": e.value.amount_minor.to_string(), "count": e.value.count})
        }
        Metric::TransferOutcomes | Metric::DeadLetters => json!({"count": e.value.count}),
    };
    let mut key = serde_json::Map::new();
    key.insert(w.metric.key_name().to_owned(), json!(w.key.as_ref()));
    let data = json!({
        "metric": w.metric.as_str(), "tenant_id": w.tenant.as_ref(), "environment": w.env, "key": key,
        "start_ms": w.start_ms, "end_ms": w.start_ms.saturating_add(w.metric.length_ms()),
        "state": e.state.as_str(), "revision": e.revision, "value": value,
    });
    Outgoing {
        env: Some(w.env),
        audience: audience(&w.tenant),
        event: "window",
        data: data.to_string(),
        slot: Slot::Window(window_slot(w)),
    }
}

fn dead_letter_frame(d: &DeadSeen) -> Outgoing {
    let tenant = d.tenant.as_deref().unwrap_or(ALL_TENANTS);
    let data = json!({
        "tenant_id": tenant, "environment": d.env, "dead_letter_id": d.dead_letter_id,
        "rejected_by": d.rejected_by, "reason": d.reason_class, "source": d.source,
        "source_topic": d.source_topic, "at_ms": d.at_ms,
    });
    Outgoing {
        env: Some(d.env),
        audience: audience(tenant),
        event: "dead_letter",
        data: data.to_string(),
        slot: Slot::DeadLetter,
    }
}

/// Every `live.batch_interval_ms`: fold what the reader read, move the watermark, publish what changed.
async fn aggregate(
    mut windows: Windows,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    (every, tenants_max): (Duration, usize),
    stop: CancellationToken,
) {
    let mut pane = tokio::time::interval(every);
    pane.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashSet<Arc<str>> = HashSet::new();
    let mut panes: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pane.tick() => {}
        }
        let (mut events, dead) = shared.drain();
        let now_ms = Utc::now().timestamp_millis();
        bound_tenants(&mut events, &mut known, tenants_max);
        if let Err(e) = windows.add(&events, now_ms).await {
            tracing::warn!(error = %e, "live windows");
        }
        let (emitted, forgotten) = windows.advance_forgetting(now_ms, shared.caught_up());
        let mut frames: Vec<Outgoing> = emitted.iter().map(window_frame).collect();
        frames.extend(dead.iter().map(dead_letter_frame));
        frames.push(watermark_frame(&windows, &shared));
        frames.push(stats_frame(&windows, &shared));
        hub.publish(frames);
        hub.forget_windows(&forgotten.iter().map(window_slot).collect::<Vec<_>>());
        panes += 1;
        // About once a minute.
        if panes.is_multiple_of(u64::try_from(60_000 / every.as_millis().max(1)).unwrap_or(1).max(1)) {
            known = windows.tenants();
        }
    }
}

/// Tenants beyond `tenants_max` count in the totals only.
fn bound_tenants(events: &mut [LiveEvent], known: &mut HashSet<Arc<str>>, tenants_max: usize) {
    for e in events.iter_mut() {
        let Some(t) = &e.tenant else { continue };
        if known.contains(t) {
            continue;
        }
        if known.len() < tenants_max {
            known.insert(t.clone());
        } else {
            e.tenant = None;
        }
    }
}

fn watermark_frame(windows: &Windows, shared: &Shared) -> Outgoing {
    let wm = windows.watermark_ms();
    let data = json!({"watermark_ms": (wm != i64::MIN).then_some(wm), "caught_up": shared.caught_up()});
    Outgoing {
        env: None,
        audience: Audience::Everyone,
        event: "watermark",
        data: data.to_string(),
        slot: Slot::None,
    }
}

fn stats_frame(windows: &Windows, shared: &Shared) -> Outgoing {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &windows.counters;
    let data = json!({
        "records_read": shared.records_read.load(Relaxed), "undecodable": shared.undecodable.load(Relaxed),
        "events_aggregated": c.events, "late_corrections": c.late_corrections, "late_dropped": c.late_dropped,
        "overflowed_sums": c.overflowed_sums, "windows": windows.len(),
    });
    Outgoing {
        env: None,
        audience: Audience::Platform,
        event: "stats",
        data: data.to_string(),
        slot: Slot::Gauge("stats".into()),
    }
}

struct GaugeTask {
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    pg: PgPool,
    ch: clickhouse::Client,
    cfg: riverbank_runtime::config::KafkaConfig,
    every: Duration,
}

impl GaugeTask {
    async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reviews_before = BTreeSet::new();
        let mut lag = match gauges::LagReader::new(&self.cfg) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "live consumer lag is off");
                None
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let at_ms = Utc::now().timestamp_millis();
            let mut frames = Vec::new();
            match self.reviews().await {
                Ok(rows) => frames.extend(gauges::review_frames(
                    &rows,
                    &self.cfg.environments,
                    &mut reviews_before,
                    at_ms,
                )),
                Err(e) => tracing::debug!(error = %e, "live review queue"),
            }
            frames.extend(self.landed(at_ms).await);
            if let Some(mut reader) = lag.take() {
                let shared = self.shared.clone();
                match tokio::task::spawn_blocking(move || (reader.read(&shared, at_ms), reader)).await {
                    Ok((result, reader)) => {
                        lag = Some(reader);
                        match result {
                            Ok(lags) => frames.extend(lags.iter().map(|l| lag_frame(l, at_ms))),
                            Err(e) => tracing::debug!(error = %e, "live consumer lag"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "live consumer lag reader panicked"),
                }
            }
            self.hub.publish(frames);
        }
    }

    async fn reviews(&self) -> Result<Vec<(String, Environment, i64)>, sqlx::Error> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as(gauges::REVIEW_QUEUE_SQL).fetch_all(&self.pg).await?;
        Ok(rows.into_iter().filter_map(|(t, e, n)| Some((t, e.parse().ok()?, n))).collect())
    }

    async fn landed(&self, at_ms: i64) -> Vec<Outgoing> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Least {
            partitions: u64,
            least: i64,
        }
        let topics = Topics::new(self.cfg.topic_prefix.clone());
        let mut out = Vec::new();
        for &env in &self.cfg.environments {
            let prefix = format!("{}{}.", topics.prefix(), env.as_str());
            let pg: Option<i64> = sqlx::query_as::<_, (i64, Option<i64>)>(gauges::PG_LANDED_SQL)
                .bind(riverbank_sinks_name::POSTGRES)
                .bind(&prefix)
                .fetch_one(&self.pg)
                .await
                .ok()
                .and_then(|(n, least)| (n > 0).then_some(least).flatten());
            let ch: Option<i64> = self
                .ch
                .query(gauges::CH_LANDED_SQL)
                .bind(&prefix)
                .fetch_one::<Least>()
                .await
                .ok()
                .and_then(|l| (l.partitions > 0).then_some(l.least));
            for (sink, least) in
                [(riverbank_sinks_name::POSTGRES, pg), (riverbank_sinks_name::CLICKHOUSE, ch)]
            {
                let value = json!({"complete_through_ms": least, "lag_ms": least.map(|l| at_ms.saturating_sub(l).max(0))});
                out.push(gauges::gauge(
                    env,
                    Audience::Everyone,
                    "landed",
                    ALL_TENANTS,
                    json!({"sink": sink}),
                    value,
                    at_ms,
                ));
            }
        }
        out
    }
}

/// The sinks' names as they record their positions (riverbank-sinks is not a dependency of the api).
mod riverbank_sinks_name {
    pub const POSTGRES: &str = "postgres";
    pub const CLICKHOUSE: &str = "clickhouse";
}

fn lag_frame(l: &gauges::Lag, at_ms: i64) -> Outgoing {
    let seconds = Duration::from_millis(l.seconds_ms.unsigned_abs()).as_secs_f64();
    let value = json!({"messages": l.messages, "seconds": seconds, "at_least": l.at_least});
    gauges::gauge(
        l.env,
        Audience::Platform,
        "consumer_lag",
        ALL_TENANTS,
        json!({"group": l.group}),
        value,
        at_ms,
    )
}
