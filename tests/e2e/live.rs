//! `GET /v1/live` on the real stack: the api process reads the broker's topics as they flow and pushes
//! windows, gauges and dead letters over Server-Sent Events. Status changes and dead letters are
//! produced for two tenants; each tenant's stream holds exactly its own numbers (never a byte of the
//! other's, never a platform-only frame), the platform stream holds both and the totals, a late event
//! closes as `final` and a second one re-emits it as a visible `correction`, and a stream that
//! reconnects with `Last-Event-ID` is replayed exactly what it missed (or sent a snapshot when the id
//! is not resumable).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use riverbank_runtime::Config;
use riverbank_schemas::processor::Emit;
use riverbank_schemas::transfers::{TransferStatus, TransferStatusChanged};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, Topics, TransferKind};
use serde_json::{json, Value};

use crate::harness::Pipeline;

const ENV: Environment = Environment::Live;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A live stream read in the background into a list of frames.
pub struct SseStream {
    pub frames: Arc<Mutex<Vec<SseFrame>>>,
    pub raw: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseStream {
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        key: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<SseStream> {
        let mut req = http.get(url).bearer_auth(key).timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let mut resp = req.send().await?;
        anyhow::ensure!(resp.status() == 200, "{url}: {} {}", resp.status(), resp.text().await?);
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        anyhow::ensure!(ct.starts_with("text/event-stream"), "content type {ct}");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn({
            let (frames, raw) = (frames.clone(), raw.clone());
            async move {
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let text = String::from_utf8_lossy(&chunk);
                    raw.lock().expect("raw").push_str(&text);
                    buf.push_str(&text);
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        if let Some(f) = parse_frame(&block) {
                            frames.lock().expect("frames").push(f);
                        }
                    }
                }
            }
        });
        Ok(SseStream { frames, raw, task })
    }

    pub fn snapshot(&self) -> Vec<SseFrame> {
        self.frames.lock().expect("frames").clone()
    }

    pub async fn wait_for(&self, what: &str, ok: impl Fn(&[SseFrame]) -> bool) -> anyhow::Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            if ok(&self.snapshot()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let frames = self.snapshot();
        let tail: Vec<String> =
            frames.iter().rev().take(30).map(|f| format!("{} {}", f.event, f.data)).collect();
        anyhow::bail!("timed out waiting for {what}; last frames:\n{}", tail.join("\n"))
    }

    pub fn close(self) {
        self.task.abort();
    }
}

fn parse_frame(block: &str) -> Option<SseFrame> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    Some(SseFrame { id, event: event?, data: serde_json::from_str(&data).ok()? })
}

/// The latest revision of every window in `frames` (snapshots included), keyed by
/// (metric, tenant, key, start).
pub fn windows(frames: &[SseFrame]) -> BTreeMap<(String, String, String, i64), Value> {
    let mut out: BTreeMap<(String, String, String, i64), Value> = BTreeMap::new();
    let mut put = |w: &Value| {
        let key = w["key"].as_object().and_then(|k| k.values().next()).and_then(Value::as_str).unwrap_or("");
        let k = (
            w["metric"].as_str().unwrap_or("").to_owned(),
            w["tenant_id"].as_str().unwrap_or("").to_owned(),
            key.to_owned(),
            w["start_ms"].as_i64().unwrap_or(0),
        );
        let newer = out.get(&k).is_none_or(|old| old["revision"].as_u64() < w["revision"].as_u64());
        if newer {
            out.insert(k, w.clone());
        }
    };
    for f in frames {
        match f.event.as_str() {
            "window" => put(&f.data),
            "snapshot" => f.data["windows"].as_array().into_iter().flatten().for_each(&mut put),
            _ => {}
        }
    }
    out
}

/// The sum of a tenant's minute windows of `metric` and `key` (amount for volume, else count).
pub fn total(frames: &[SseFrame], metric: &str, tenant: &str, key: &str) -> i128 {
    windows(frames)
        .iter()
        .filter(|((m, t, k, _), _)| m == metric && t == tenant && k == key)
        .map(|(_, w)| match metric {
            "transfer_volume" => {
                w["value"]["amount_minor"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
            }
            _ => i128::from(w["value"]["count"].as_u64().unwrap_or(0)),
        })
        .sum()
}

struct Out {
    topics: Topics,
    emits: Vec<Emit>,
}

impl Out {
    #[allow(clippy::too_many_arguments)]
    fn status(
        &mut self,
        tenant: &str,
        id: &str,
        minor: i64,
        cur: &str,
        prev: TransferStatus,
        s: TransferStatus,
        at: DateTime<Utc>,
    ) {
        let p = TransferStatusChanged {
            transfer_id: id.into(),
            kind: TransferKind::Deposit,
            amount: Money::new(minor, Currency::from_code(cur).expect("currency")),
            previous: Some(prev),
            status: s,
            version: 2,
            reason: None,
            cause_event_id: derived_id(&["e2e-live-cause", tenant, id]),
        };
        let eid = derived_id(&["e2e-live", tenant, id, s.as_str()]);
        let mut env = Envelope::new(eid, TransferStatusChanged::EVENT_TYPE, tenant, ENV, at, "e2e", p);
        env.ingested_at = at;
        let payload = serde_json::to_vec(&env).expect("serializes");
        self.emits.push(Emit {
            topic: self.topics.transfer_status(ENV),
            key: tenant.into(),
            event_id: eid,
            payload,
        });
    }

    fn dead_letter(&mut self, tenant: &str, tag: &str, at: DateTime<Utc>) {
        let id = derived_id(&["e2e-live-dead", tenant, tag]);
        let d = json!({
            "dead_letter_id": id, "rejected_by": "ingest", "tenant_id": tenant, "environment": "live",
            "reason": "unmappable body: field amount = 4111111111111111", "source": "acmepay",
            "received_at": at, "raw_base64": "e30=",
        });
        let payload = serde_json::to_vec(&d).expect("serializes");
        self.emits.push(Emit {
            topic: self.topics.dead_letters(ENV),
            key: tenant.into(),
            event_id: id,
            payload,
        });
    }

    async fn send(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
        let emits = std::mem::take(&mut self.emits);
        riverbank_runtime::produce::produce_all(&producer, &emits, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)
    }
}

async fn create_key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_show_each_tenant_its_own_windows_and_resume_without_gaps() -> anyhow::Result<()> {
    use TransferStatus::{Completed, Confirming, Pending, Rejected, Validating};
    let mut p = Pipeline::start_with("live", &[], &[], "").await?;
    p.spawn_env("api", &["api"], &[("RIVERBANK__API__REQUIRE_API_KEY", "true".to_owned())])?;
    let api = p.api_url.clone();
    p.wait_healthy(&api).await?;
    let cfg = Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());
    let acme = create_key(&p, "acme", "viewer").await?;
    let globex = create_key(&p, "globex", "viewer").await?;
    let platform = create_key(&p, "platform", "viewer").await?;
    let url = |t: &str| format!("{api}/v1/live?tenant_id={t}&environment=live");

    // Refusals come before any stream, in the one error shape.
    for (who, key, status) in
        [("globex", &acme, 403), ("platform", &acme, 403), ("acme", &String::new(), 401)]
    {
        let r = p.http.get(url(who)).bearer_auth(key).send().await?;
        anyhow::ensure!(r.status() == status, "{who}: {}", r.status());
        let body: Value = r.json().await?;
        anyhow::ensure!(body["error"]["code"].is_string(), "{body}");
    }
    let r = p.http.get(format!("{api}/v1/live?tenant_id=acme&bucket=1")).bearer_auth(&acme).send().await?;
    anyhow::ensure!(r.status() == 400, "an unknown parameter: {}", r.status());

    let a = SseStream::open(&p.http, &url("acme"), &acme, None).await?;
    let g = SseStream::open(&p.http, &url("globex"), &globex, None).await?;
    let all = SseStream::open(&p.http, &url("platform"), &platform, None).await?;
    a.wait_for("hello and a snapshot", |f| {
        f.first().is_some_and(|h| h.event == "hello" && h.data["resumed"] == false)
            && f.get(1).is_some_and(|s| s.event == "snapshot")
    })
    .await?;

    let now = Utc::now();
    let mut out = Out { topics: topics.clone(), emits: Vec::new() };
    out.status("acme", "a1", 100, "USD", Confirming, Completed, now);
    out.status("acme", "a2", 250, "USD", Confirming, Completed, now);
    out.status("acme", "a3", 1_000, "USD", Confirming, Completed, now);
    out.status("acme", "a4", 500, "EUR", Confirming, Completed, now);
    out.status("acme", "a5", 9, "USD", Validating, Rejected, now);
    out.status("acme", "a6", 9, "USD", Validating, Pending, now);
    out.status("globex", "g1", 7_777, "USD", Confirming, Completed, now);
    out.dead_letter("acme", "d1", now);
    out.send(&cfg).await?;

    let usd = |f: &[SseFrame], t: &str| total(f, "transfer_volume", t, "USD");
    a.wait_for("acme's volumes, outcomes and dead letter", |f| {
        usd(f, "acme") == 1_350
            && total(f, "transfer_volume", "acme", "EUR") == 500
            && total(f, "transfer_outcomes", "acme", "rejected") == 1
            && total(f, "transfer_outcomes", "acme", "accepted") == 1
            && total(f, "transfer_outcomes", "acme", "completed") == 4
            && total(f, "dead_letters", "acme", "unmappable body") == 1
            && f.iter().any(|x| x.event == "dead_letter" && x.data["reason"] == "unmappable body")
    })
    .await?;
    g.wait_for("globex's volume", |f| usd(f, "globex") == 7_777).await?;
    all.wait_for("the platform's totals and consumer lag", |f| {
        usd(f, "*") == 9_127
            && usd(f, "acme") == 1_350
            && usd(f, "globex") == 7_777
            && f.iter().any(|x| x.event == "gauge" && x.data["metric"] == "consumer_lag")
            && f.iter().any(|x| x.event == "stats")
    })
    .await?;
    // Sliding windows count the topic's events.
    let status_topic = topics.transfer_status(ENV).trim_start_matches(topics.prefix()).to_owned();
    let events = |f: &[SseFrame]| {
        windows(f)
            .iter()
            .filter(|((m, t, k, _), _)| m == "events" && t == "acme" && *k == status_topic)
            .map(|(_, w)| w["value"]["events"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    a.wait_for("acme's 6 status events in a sliding window", |f| events(f) == 6).await?;

    // A late event: its minute closed long ago, so it arrives final; a second one corrects it visibly.
    let old = (now - chrono::Duration::minutes(3)).duration_trunc(chrono::Duration::minutes(1))?;
    out.status("acme", "late1", 40, "USD", Confirming, Completed, old + chrono::Duration::seconds(5));
    out.send(&cfg).await?;
    let old_ms = old.timestamp_millis();
    let late = |f: &[SseFrame]| {
        windows(f).get(&("transfer_volume".into(), "acme".into(), "USD".into(), old_ms)).cloned()
    };
    a.wait_for("the late window, final", |f| late(f).is_some_and(|w| w["state"] == "final")).await?;
    out.status("acme", "late2", 2, "USD", Confirming, Completed, old + chrono::Duration::seconds(6));
    out.send(&cfg).await?;
    a.wait_for("the late window corrected", |f| {
        late(f).is_some_and(|w| {
            w["state"] == "correction" && w["revision"] == 2 && w["value"]["amount_minor"] == "42"
        })
    })
    .await?;

    // Nothing of globex's, and nothing platform-only, ever reached acme's stream (or the reverse).
    let a_raw = a.raw.lock().expect("raw").clone();
    let g_raw = g.raw.lock().expect("raw").clone();
    for (raw, other, frames) in [(&a_raw, "globex", a.snapshot()), (&g_raw, "acme", g.snapshot())] {
        anyhow::ensure!(!raw.contains(other), "a stream carries {other}");
        // The only platform-wide frames a tenant sees: the sinks' landed-through lag.
        let platform_wide = frames.iter().find(|f| {
            let landed = f.event == "gauge" && f.data["metric"] == "landed";
            let in_snapshot =
                f.data["windows"].as_array().into_iter().flatten().any(|w| w["tenant_id"] == "*");
            (f.data["tenant_id"] == "*" && !landed) || in_snapshot
        });
        anyhow::ensure!(
            platform_wide.is_none(),
            "a tenant stream carries platform totals: {platform_wide:?}"
        );
        anyhow::ensure!(
            !raw.contains("consumer_lag") && !raw.contains("event: stats"),
            "platform gauges leak"
        );
        anyhow::ensure!(!raw.contains("4111111111111111"), "a dead letter's reason value leaks");
    }

    // Resume: what acme's stream missed while away is replayed, no more, no less.
    let frames = a.snapshot();
    let last_id = frames.iter().rev().find_map(|f| f.id.clone()).expect("numbered frames");
    let last_seq: u64 = last_id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("seq");
    a.close();
    let later = Utc::now();
    out.status("acme", "a7", 3_000, "USD", Confirming, Completed, later);
    out.status("globex", "g2", 1, "USD", Confirming, Completed, later);
    out.send(&cfg).await?;
    all.wait_for("the platform sees the new events", |f| usd(f, "*") == 9_127 + 42 + 3_001).await?;
    let b = SseStream::open(&p.http, &url("acme"), &acme, Some(&last_id)).await?;
    b.wait_for("the missed events, replayed", |f| {
        f.first().is_some_and(|h| h.event == "hello" && h.data["resumed"] == true)
            && usd(&[frames.clone(), f.to_vec()].concat(), "acme") == 1_350 + 42 + 3_000
    })
    .await?;
    let replayed = b.snapshot();
    anyhow::ensure!(replayed.iter().all(|f| f.event != "snapshot"), "a resumable id gets no snapshot");
    let seqs: Vec<u64> =
        replayed.iter().filter_map(|f| f.id.as_ref()?.rsplit('-').next()?.parse().ok()).collect();
    anyhow::ensure!(seqs.first().is_some_and(|&s| s > last_seq), "replay starts after {last_seq}: {seqs:?}");
    anyhow::ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeat");
    anyhow::ensure!(!b.raw.lock().expect("raw").contains("globex"));
    b.close();
    // An id that is not resumable (another epoch) gets the whole current state instead.
    let c = SseStream::open(&p.http, &url("acme"), &acme, Some("000000000000-1")).await?;
    c.wait_for("a snapshot with every window", |f| {
        f.get(1).is_some_and(|s| s.event == "snapshot") && usd(&f[..2], "acme") == 1_350 + 42 + 3_000
    })
    .await?;
    c.close();
    g.close();
    all.close();
    p.finish().await
}
