//! `riverbank bench live`: figures for the live component, printed and written as JSON, never asserted.
//!
//! The real api (its live reader, DataFusion windows and SSE hub) runs in process on a fresh topic
//! prefix, with two streams open as the dashboard opens them (the platform view and one tenant's),
//! each read and every frame parsed as JSON, as the page does. Completed-transfer status changes
//! (16 tenants, 4 currencies) are produced onto `{env}.transactions.update.status` at rising offered
//! rates, stamped `ingested_at` = the moment they are produced (what ingest stamps when it accepts).
//!
//! Per step:
//! - **kept up**: the events/s the live reader read over the step (its `stats` frames' `records_read`),
//!   against the rate actually produced, and how long after the step it took to read the rest;
//! - **delay to a chart**: every 100 ms one probe event of a tenant of its own (`probe-N`) is produced;
//!   its delay is from its `ingested_at` to the first `window` frame of that tenant on the platform
//!   stream (the first moment a chart can show it). p50 and p99 per step.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use riverbank_runtime::{CancellationToken, Config};
use riverbank_schemas::transfers::{TransferStatus, TransferStatusChanged};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, Topics, TransferKind};
use serde_json::{json, Value};

use crate::bench::{percentile, print_machine, write_report};

#[derive(clap::Args)]
pub struct Options {
    /// Offered rates (events/s), one step each.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 2_000, 5_000, 10_000, 20_000])]
    pub rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10)]
    pub step_seconds: u64,
    #[arg(long, default_value = "target/bench/live.json")]
    pub report: PathBuf,
}

const ENV: Environment = Environment::Live;
const TENANTS: usize = 16;
const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];
/// One probe per this long.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Produce in slices of this long (the rate is kept per slice).
const SLICE: Duration = Duration::from_millis(20);
/// How long after a step the reader may take to read the rest before the next step.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// What the streams saw: probes' first window frame, the reader's counters, frames and bytes.
#[derive(Default)]
struct Seen {
    probes: HashMap<String, Instant>,
    records_read: u64,
    frames: u64,
    bytes: u64,
}

fn status_event(tenant: &str, n: u64, minor: i64, ccy: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let now = Utc::now();
    let p = TransferStatusChanged {
        transfer_id: format!("tr-{n}"),
        kind: TransferKind::Deposit,
        amount: Money::new(minor, Currency::from_code(ccy)?),
        previous: Some(TransferStatus::Confirming),
        status: TransferStatus::Completed,
        version: 6,
        reason: None,
        cause_event_id: derived_id(&["bench-live-cause", tenant, &n.to_string()]),
    };
    let id = derived_id(&["bench-live", tenant, &n.to_string()]);
    let mut e = Envelope::new(id, TransferStatusChanged::EVENT_TYPE, tenant, ENV, now, "bench", p);
    e.ingested_at = now;
    Ok((serde_json::to_vec(&e)?, tenant.to_owned()))
}

async fn read_stream(http: reqwest::Client, url: String, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let Ok(mut resp) = http.get(&url).send().await else { return };
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return,
            c = resp.chunk() => match c { Ok(Some(c)) => c, _ => return },
        };
        let at = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        s.bytes += chunk.len() as u64;
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = ("", "");
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v;
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v;
                }
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            s.frames += 1;
            match event {
                "window" => {
                    if let Some(t) = v["tenant_id"].as_str().filter(|t| t.starts_with("probe-")) {
                        s.probes.entry(t.to_owned()).or_insert(at);
                    }
                }
                "stats" => s.records_read = s.records_read.max(v["records_read"].as_u64().unwrap_or(0)),
                _ => {}
            }
        }
    }
}

struct Step {
    offered: u64,
    produced: u64,
    produce_s: f64,
    read_during: u64,
    drain_s: f64,
    delays_ms: Vec<f64>,
    frames: u64,
    bytes: u64,
}

pub async fn live(base: &Config, o: &Options) -> anyhow::Result<()> {
    let machine = print_machine();
    let mut cfg = crate::bench::fresh_config(base, "bench-live");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    cfg.api.listen_addr = format!("127.0.0.1:{port}").parse()?;
    cfg.api.require_api_key = false;
    cfg.live.enabled = true;
    cfg.live.lookback_ms = 120_000;
    riverbank_runtime::kafka::ensure_topics(&cfg.kafka, &crate::registry::all_topics(&cfg))
        .await
        .context("creating topics")?;
    let stop = CancellationToken::new();
    let api = tokio::spawn({
        let (c, s) = (cfg.clone(), stop.clone());
        async move { riverbank_api::serve(&c, s).await }
    });
    let http = reqwest::Client::new();
    let base_url = format!("http://127.0.0.1:{port}");
    crate::demo::wait_healthy(&http, &base_url, Duration::from_secs(60)).await.ok();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tenant_seen = Arc::new(Mutex::new(Seen::default()));
    for (view, s) in [("platform", seen.clone()), ("tenant-00", tenant_seen.clone())] {
        let url = format!("{base_url}/v1/live?tenant_id={view}&environment=live");
        tokio::spawn(read_stream(http.clone(), url, s, stop.clone()));
    }
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    let topic = Topics::new(cfg.kafka.topic_prefix.clone()).transfer_status(ENV);
    // Let the reader start (it waits for its topics and seeks).
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("live component: the api in process, 2 streams open (platform view and tenant-00)");
    println!(
        "{:>9} {:>10} {:>11} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "offered/s", "produced/s", "read/s", "drain s", "p50 ms", "p99 ms", "frames/s", "KiB/s"
    );
    let mut n: u64 = 0;
    let mut probe_n: u64 = 0;
    let mut steps = Vec::new();
    for &rate in &o.rates {
        let step = run_step(&producer, &topic, rate, o.step_seconds, (&mut n, &mut probe_n), &seen).await?;
        println!(
            "{:>9} {:>10.0} {:>11.0} {:>10.2} {:>9.0} {:>9.0} {:>9.0} {:>10.1}",
            step.offered,
            step.produced as f64 / step.produce_s,
            step.read_during as f64 / step.produce_s,
            step.drain_s,
            percentile(&step.delays_ms, 0.5),
            percentile(&step.delays_ms, 0.99),
            step.frames as f64 / step.produce_s,
            step.bytes as f64 / 1024.0 / step.produce_s,
        );
        steps.push(step);
    }
    let kept_up = steps
        .iter()
        .filter(|s| s.drain_s < 1.0 && s.read_during as f64 >= 0.95 * s.produced as f64)
        .map(|s| s.produced as f64 / s.produce_s)
        .fold(0.0, f64::max);
    println!("highest produced rate the live component kept up with (read ≥ 95% during the step, the rest within 1 s): {kept_up:.0} events/s");
    let tenant_frames = tenant_seen.lock().unwrap_or_else(|p| p.into_inner()).frames;
    println!("tenant-00's stream: {tenant_frames} frames over the run");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), api).await;
    let report = json!({
        "bench": "live",
        "machine": machine,
        "command": "riverbank --config deploy/local/riverbank.toml bench live",
        "batch_interval_ms": cfg.live.batch_interval_ms,
        "kept_up_events_per_s": kept_up,
        "steps": steps.iter().map(|s| json!({
            "offered_per_s": s.offered,
            "produced_per_s": s.produced as f64 / s.produce_s,
            "read_per_s": s.read_during as f64 / s.produce_s,
            "drain_s": s.drain_s,
            "delay_ms_p50": percentile(&s.delays_ms, 0.5),
            "delay_ms_p99": percentile(&s.delays_ms, 0.99),
            "probes": s.delays_ms.len(),
            "platform_frames_per_s": s.frames as f64 / s.produce_s,
            "platform_kib_per_s": s.bytes as f64 / 1024.0 / s.produce_s,
        })).collect::<Vec<_>>(),
    });
    write_report(&o.report, &report)
}

async fn run_step(
    producer: &FutureProducer,
    topic: &str,
    rate: u64,
    seconds: u64,
    (n, probe_n): (&mut u64, &mut u64),
    seen: &Arc<Mutex<Seen>>,
) -> anyhow::Result<Step> {
    let (read0, frames0, bytes0) = {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        (s.records_read, s.frames, s.bytes)
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    let mut produced: u64 = 0;
    let mut probes: Vec<(String, Instant)> = Vec::new();
    let mut next_probe = t0;
    let mut pending = Vec::new();
    while Instant::now() < end {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while produced < due {
            let tenant = format!("tenant-{:02}", *n as usize % TENANTS);
            let ccy = CURRENCIES[(*n / TENANTS as u64) as usize % CURRENCIES.len()];
            let (payload, key) = status_event(&tenant, *n, 100 + (*n % 1_000) as i64, ccy)?;
            *n += 1;
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                Ok(f) => {
                    pending.push(f);
                    produced += 1;
                }
                Err(_) => {
                    // The producer's queue is full: let it drain.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    break;
                }
            }
        }
        if Instant::now() >= next_probe {
            let tenant = format!("probe-{probe_n}");
            let (payload, key) = status_event(&tenant, *probe_n, 1, "USD")?;
            *probe_n += 1;
            let at = Instant::now();
            if let Ok(f) = producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                pending.push(f);
                probes.push((tenant, at));
                produced += 1;
            }
            next_probe += PROBE_EVERY;
        }
        if pending.len() > 5_000 {
            for f in pending.drain(..) {
                let _ = f.await;
            }
        }
        tokio::time::sleep(SLICE).await;
    }
    for f in pending.drain(..) {
        let _ = f.await;
    }
    let produce_s = t0.elapsed().as_secs_f64();
    let read_during = seen.lock().unwrap_or_else(|p| p.into_inner()).records_read - read0;
    // Wait for the reader to read the rest.
    let t1 = Instant::now();
    while t1.elapsed() < DRAIN_MAX {
        let read = seen.lock().unwrap_or_else(|p| p.into_inner()).records_read - read0;
        if read >= produced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = t1.elapsed().as_secs_f64();
    // Probes still on their way get a moment (their delay is counted as it is).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut delays_ms: Vec<f64> = probes
        .iter()
        .filter_map(|(t, at)| {
            s.probes.get(t).map(|seen_at| seen_at.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    delays_ms.sort_by(f64::total_cmp);
    Ok(Step {
        offered: rate,
        produced,
        produce_s,
        read_during,
        drain_s,
        delays_ms,
        frames: s.frames - frames0,
        bytes: s.bytes - bytes0,
    })
}
