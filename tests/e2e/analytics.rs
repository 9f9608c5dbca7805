//! The ClickHouse analytics on the real stack, as fx_billing_read.rs drives its reads: the outputs of the
//! transfers, risk and KYC processors (status changes, decisions, KYC changes, refused inputs, at
//! chosen times three days ago and now) are produced onto the broker, the real ClickHouse sink lands
//! them, and the real API process answers `/v1/analytics/{transfers, risk-outcomes, kyc-funnel,
//! transfer-latency, rejections}` with tenant keys: the numbers produced (counts, amounts, exact review
//! rates, exact quantiles), pages that put back the whole list, `complete_through` with buckets after it
//! `provisional`, a 400 naming the parameter and a 403 for another tenant's key.
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use riverbank_runtime::{CancellationToken, Config};
use riverbank_schemas::kyc::{
    event_types as kyc_et, KycInputRejected, KycStatus, UserKycChanged, UserStatus,
};
use riverbank_schemas::processor::Emit;
use riverbank_schemas::risk::{event_types as risk_et, DecisionRecorded, RiskInputRejected};
use riverbank_schemas::transfers::{InputRejected, RiskOutcome, TransferStatus, TransferStatusChanged};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, Topics, TransferKind};
use serde_json::{json, Value};

use crate::harness::Pipeline;

const TENANT: &str = "acme";
const ENV: Environment = Environment::Live;
/// How long anything asynchronous (the sink landing a batch, the watermark moving) may take to show.
const WAIT: Duration = Duration::from_secs(90);

type Transfer<'a> = (&'a str, TransferKind, i64, &'a str);

struct Outputs {
    topics: Topics,
    emits: Vec<Emit>,
}

impl Outputs {
    fn event<P: serde::Serialize>(
        &mut self,
        topic: String,
        event_type: &str,
        tag: &str,
        at: DateTime<Utc>,
        p: P,
    ) {
        let id = derived_id(&["e2e-analytics", tag]);
        let envelope = Envelope::new(id, event_type, TENANT, ENV, at, "e2e", p);
        let payload = serde_json::to_vec(&envelope).expect("an envelope serializes");
        self.emits.push(Emit { topic, key: TENANT.to_owned(), event_id: id, payload });
    }

    /// Transfer `(id, kind, amount in minor units, currency)` reaching status `s` as version `v`.
    fn status(&mut self, (id, kind, minor, cur): Transfer, s: TransferStatus, v: u32, at: DateTime<Utc>) {
        let currency = Currency::from_code(cur).expect("a currency");
        let p = TransferStatusChanged {
            transfer_id: id.into(),
            kind,
            amount: Money::new(minor, currency),
            previous: None,
            status: s,
            version: v,
            reason: None,
            cause_event_id: derived_id(&["e2e-analytics-cause", id]),
        };
        let topic = self.topics.transfer_status(ENV);
        self.event(topic, TransferStatusChanged::EVENT_TYPE, &format!("{id}-{v}"), at, p);
    }

    fn decision(
        &mut self,
        tag: &str,
        id: &str,
        d: RiskOutcome,
        shadow: bool,
        officer: bool,
        at: DateTime<Utc>,
    ) {
        let usd = Currency::from_code("USD").expect("USD");
        let p = DecisionRecorded {
            transfer_id: id.into(),
            transfer_version: 3,
            kind: TransferKind::Deposit,
            amount: Money::new(1_000, usd),
            user_id: None,
            requested_by: "user:maker-1".into(),
            decision: d,
            score: 10,
            hits: Vec::new(),
            rule_set: if shadow { "candidate" } else { "riverbank-default" }.into(),
            rule_set_version: "v1".into(),
            amount_report_minor: Some(1_000),
            report_currency: usd,
            rate: None,
            lists: Default::default(),
            ctr: false,
            shadow,
            reviewed_by: officer.then(|| "user:officer-1".to_owned()),
            review_reason: officer.then(|| "documents checked".to_owned()),
            screened_at: at,
        };
        let topic = self.topics.risk_decisions(ENV);
        self.event(topic, risk_et::DECISION_RECORDED, tag, at, p);
    }

    fn kyc(&mut self, user: &str, status: KycStatus, version: u64, at: DateTime<Utc>) {
        let approved = status == KycStatus::Approved;
        let p = UserKycChanged {
            user_id: user.into(),
            user_status: if approved { UserStatus::Active } else { UserStatus::Pending },
            kyc_status: status,
            tier: u8::from(approved),
            kyc_expires_at: approved.then(|| at + chrono::Duration::days(365)),
            version,
            case_id: Some(format!("case-{user}")),
            case_status: Some(status),
            provider: Some("idcheck".into()),
            reason: None,
            actor: None,
            cause_event_id: derived_id(&["e2e-analytics-kyc-cause", user, &version.to_string()]),
        };
        let event_type = if approved { kyc_et::USER_VERIFIED } else { kyc_et::USER_KYC_UPDATED };
        let topic = self.topics.kyc_events(ENV);
        self.event(topic, event_type, &format!("{user}-{version}"), at, p);
    }

    fn rejected(&mut self, source: &str, tag: &str, reason: &str, at: DateTime<Utc>) {
        let input_event_id = derived_id(&["e2e-analytics-input", tag]);
        match source {
            "transfers" => {
                let p = InputRejected {
                    input_event_id,
                    input_event_type: "transfer.requested".into(),
                    transfer_id: Some(tag.into()),
                    reason: reason.into(),
                    at: Some(at),
                };
                let topic = self.topics.transfer_rejections(ENV);
                self.event(topic, InputRejected::EVENT_TYPE, tag, at, p);
            }
            "risk" => {
                let p = RiskInputRejected {
                    input_event_id,
                    input_event_type: "risk.review_decided".into(),
                    transfer_id: Some(tag.into()),
                    reason: reason.into(),
                };
                let topic = self.topics.risk_decisions(ENV);
                self.event(topic, risk_et::INPUT_REJECTED, tag, at, p);
            }
            _ => {
                let p = KycInputRejected {
                    input_event_id,
                    input_event_type: "kyc.vendor_result".into(),
                    user_id: Some("usr-9".into()),
                    case_id: None,
                    reason: reason.into(),
                    at: Some(at),
                };
                let topic = self.topics.kyc_events(ENV);
                self.event(topic, kyc_et::KYC_INPUT_REJECTED, tag, at, p);
            }
        }
    }
}

struct Answer {
    status: u16,
    json: Value,
}

async fn get(p: &Pipeline, path: &str, token: &str) -> anyhow::Result<Answer> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let resp =
        p.http.get(format!("{}{path}{sep}tenant_id={TENANT}", p.api_url)).bearer_auth(token).send().await?;
    let status = resp.status().as_u16();
    Ok(Answer { status, json: resp.json().await.unwrap_or(Value::Null) })
}

/// GET `path` until `done` holds for a 200 answer, at most [`WAIT`].
async fn until(
    p: &Pipeline,
    path: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = get(p, path, token).await?;
        if a.status == 200 && done(&a.json) {
            return Ok(a.json);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{path}: not within {WAIT:?}; last answer {} {}; logs in {}",
            a.status,
            a.json,
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Commit, for the routers of the processors whose outputs this test produces, their sources' log ends
/// (what a router commits once it has copied everything).
async fn routers_caught_up(cfg: &Config, topics: &Topics) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    let (cfg, topics) = (cfg.clone(), topics.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for processor in ["transfers", "risk", "kyc"] {
            let group = topics.group(&format!("router.{processor}"));
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &cfg.kafka.brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            for topic in topics.router_sources(ENV, processor) {
                for p in 0..cfg.kafka.topic_partitions {
                    let (_, high) = c.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                    tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(high))?;
                }
            }
            c.commit(&tpl, CommitMode::Sync)?;
        }
        Ok(())
    })
    .await?
}

async fn create_key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The buckets' fields named in `keys`, without `bucket_start` and `provisional` (checked apart).
fn rows(v: &Value, keys: &[&str]) -> Vec<Value> {
    v["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| Value::Object(keys.iter().map(|k| ((*k).to_owned(), b[*k].clone())).collect()))
        .collect()
}

/// Every bucket is provisional exactly when it ends after `complete_through` (or none is stated).
fn provisional_marked(v: &Value, width_s: i64) -> bool {
    let ct = v["complete_through"].as_str().and_then(|c| DateTime::parse_from_rfc3339(c).ok());
    v["buckets"].as_array().is_some_and(|bs| {
        bs.iter().all(|b| {
            let start = b["bucket_start"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            let end = start.map(|s| s + chrono::Duration::seconds(width_s));
            let want = match (ct, end) {
                (None, _) => true,
                (Some(c), Some(e)) => e > c,
                (Some(_), None) => return false,
            };
            b["provisional"] == want
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_count_what_the_processors_produced() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("analytics", &[], &[], "").await?;
    p.spawn_env("api", &["api"], &[("RIVERBANK__API__REQUIRE_API_KEY", "true".to_owned())])?;
    let api = p.api_url.clone();
    p.wait_healthy(&api).await?;
    let cfg = Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());

    // The real ClickHouse sink over the registry's topics.
    let inputs = riverbank::registry::sink_inputs(&cfg);
    for t in [topics.transfer_status(ENV), topics.risk_decisions(ENV), topics.kyc_events(ENV)] {
        anyhow::ensure!(inputs.contains(&t), "the sinks do not read {t}");
    }
    let stop = CancellationToken::new();
    let ch_sink = tokio::spawn({
        let (c, i, s) = (cfg.clone(), inputs.clone(), stop.clone());
        let store = riverbank_sinks::clickhouse::ClickHouseSink::new(
            &cfg.clickhouse,
            riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?,
        );
        async move { riverbank_runtime::sink::run(&c, store, i, s).await }
    });
    let viewer = create_key(&p, TENANT, "viewer").await?;
    let stranger = create_key(&p, "globex", "viewer").await?;

    // Three days ago, on the hour (t0), the next hour (t1), and now.
    let now = Utc::now();
    let t0 = (now - chrono::Duration::days(3)).duration_trunc(chrono::Duration::hours(1))?;
    let t1 = t0 + chrono::Duration::hours(1);
    let ms = |base: DateTime<Utc>, ms: i64| base + chrono::Duration::milliseconds(ms);
    let mut out = Outputs { topics: topics.clone(), emits: Vec::new() };
    use TransferKind::{Deposit, Payout};
    use TransferStatus::{Cancelled, Completed, Initiated};
    out.status(("tr-1", Deposit, 100_000, "USD"), Initiated, 1, ms(t0, 250));
    out.status(("tr-1", Deposit, 100_000, "USD"), Completed, 2, ms(t0, 2_250));
    out.status(("tr-2", Deposit, 500, "USD"), Initiated, 1, ms(t0, 10_000));
    out.status(("tr-2", Deposit, 500, "USD"), Completed, 2, ms(t0, 14_000));
    out.status(("tr-3", Payout, 2_000, "EUR"), Initiated, 1, ms(t0, 20_000));
    out.status(("tr-3", Payout, 2_000, "EUR"), Cancelled, 2, ms(t1, 30_000));
    out.status(("tr-4", Deposit, 700, "USD"), Initiated, 1, now);
    out.decision("d-1", "tr-1", RiskOutcome::Approve, false, false, ms(t0, 5_000));
    out.decision("d-2", "tr-2", RiskOutcome::Review, false, false, ms(t0, 6_000));
    out.decision("d-2s", "tr-2", RiskOutcome::Block, true, false, ms(t0, 7_000));
    out.decision("d-3", "tr-3", RiskOutcome::Approve, false, false, ms(t0, 8_000));
    out.decision("d-2o", "tr-2", RiskOutcome::Approve, false, true, ms(t1, 5_000));
    out.kyc("u1", KycStatus::Pending, 1, ms(t0, 1_000));
    out.kyc("u1", KycStatus::Approved, 2, ms(t0, 61_000));
    out.kyc("u2", KycStatus::Pending, 1, ms(t0, 2_000));
    out.kyc("u2", KycStatus::InReview, 2, ms(t0, 5_000));
    out.kyc("u2", KycStatus::Rejected, 3, ms(t0, 122_000));
    out.kyc("u3", KycStatus::Pending, 1, ms(t0, 3_000));
    out.kyc("u4", KycStatus::InReview, 1, ms(t1, 1_000));
    out.rejected("transfers", "r-1", "insufficient_funds", ms(t0, 30_000));
    out.rejected("transfers", "r-2", "insufficient_funds", ms(t0, 31_000));
    out.rejected("risk", "r-3", "unknown_transfer", ms(t0, 32_000));
    out.rejected("kyc", "r-4", "stale_result", ms(t1, 2_000));
    let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
    riverbank_runtime::produce::produce_all(&producer, &out.emits, Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    // No processor runs here: the outputs above stand for everything they would make. Their routers
    // would have copied what these topics now hold (kyc events feed risk), so say so, or complete-through
    // rightly waits for copies that never come.
    routers_caught_up(&cfg, &topics).await?;

    let range =
        format!("from={}&to={}", rfc(t0 - chrono::Duration::hours(1)), rfc(now + chrono::Duration::hours(1)));
    let (h0, h1, hn) = (rfc(t0), rfc(t1), rfc(now.duration_trunc(chrono::Duration::hours(1))?));
    // Wait for everything to land and for complete_through to pass t1's hour.
    let past = |v: &Value| {
        v["complete_through"]
            .as_str()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .is_some_and(|c| c > t1 + chrono::Duration::hours(1))
    };

    // Transfers: status changes per bucket × currency × kind × status, amounts in minor units.
    let path = format!("/v1/analytics/transfers?{range}");
    let v = until(&p, &path, &viewer, |v| v["buckets"].as_array().is_some_and(|b| b.len() == 5) && past(v))
        .await?;
    let keys = ["bucket_start", "currency", "kind", "status", "transfers", "amount_minor"];
    let want = vec![
        json!({"bucket_start": h0, "currency": "EUR", "kind": "payout", "status": "INITIATED", "transfers": 1, "amount_minor": 2000}),
        json!({"bucket_start": h0, "currency": "USD", "kind": "deposit", "status": "COMPLETED", "transfers": 2, "amount_minor": 100_500}),
        json!({"bucket_start": h0, "currency": "USD", "kind": "deposit", "status": "INITIATED", "transfers": 2, "amount_minor": 100_500}),
        json!({"bucket_start": h1, "currency": "EUR", "kind": "payout", "status": "CANCELLED", "transfers": 1, "amount_minor": 2000}),
        json!({"bucket_start": hn, "currency": "USD", "kind": "deposit", "status": "INITIATED", "transfers": 1, "amount_minor": 700}),
    ];
    anyhow::ensure!(rows(&v, &keys) == want, "{v}");
    anyhow::ensure!(
        v["bucket"] == "hour" && v["next_cursor"].is_null() && provisional_marked(&v, 3_600),
        "{v}"
    );
    anyhow::ensure!(v["buckets"][0]["provisional"] == false && v["buckets"][4]["provisional"] == true, "{v}");
    // Pages of two put back the same five rows.
    let (mut paged, mut after, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let a = get(&p, &format!("{path}&limit=2{after}"), &viewer).await?;
        anyhow::ensure!(a.status == 200, "{} {}", a.status, a.json);
        paged.extend(rows(&a.json, &keys));
        pages += 1;
        match a.json["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
        anyhow::ensure!(pages < 5, "pages never end: {}", a.json);
    }
    anyhow::ensure!(paged == want && pages == 3, "{pages} pages: {paged:?}");
    // By day: t0's and t1's hours fall in one day unless t0 is 23:00.
    let day = until(&p, &format!("/v1/analytics/transfers?{range}&bucket=day"), &viewer, |_| true).await?;
    let eur_initiated: i64 = day["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["currency"] == "EUR" && b["status"] == "INITIATED")
        .filter_map(|b| b["amount_minor"].as_i64())
        .sum();
    anyhow::ensure!(
        day["bucket"] == "day" && eur_initiated == 2000 && provisional_marked(&day, 86_400),
        "{day}"
    );

    // Risk: live decisions only (the shadow one left out), the review rate as an exact fraction.
    let v = until(&p, &format!("/v1/analytics/risk-outcomes?{range}"), &viewer, |v| {
        v["buckets"].as_array().is_some_and(|b| b.len() == 2) && past(v)
    })
    .await?;
    let keys = [
        "bucket_start",
        "screened",
        "approved",
        "review",
        "blocked",
        "review_rate",
        "officer_approved",
        "officer_blocked",
    ];
    let want = vec![
        json!({"bucket_start": h0, "screened": 3, "approved": 2, "review": 1, "blocked": 0,
            "review_rate": {"numerator": 1, "denominator": 3}, "officer_approved": 0, "officer_blocked": 0}),
        json!({"bucket_start": h1, "screened": 0, "approved": 0, "review": 0, "blocked": 0,
            "review_rate": {"numerator": 0, "denominator": 0}, "officer_approved": 1, "officer_blocked": 0}),
    ];
    anyhow::ensure!(rows(&v, &keys) == want && provisional_marked(&v, 3_600), "{v}");
    anyhow::ensure!(v["buckets"][0]["provisional"] == false, "{v}");

    // KYC funnel: users by the hour they started, where they are now, time to the first decision.
    let v = until(&p, &format!("/v1/analytics/kyc-funnel?{range}"), &viewer, |v| {
        v["buckets"].as_array().is_some_and(|b| b.len() == 2 && b[0]["decided"] == 2) && past(v)
    })
    .await?;
    let keys = [
        "bucket_start",
        "started",
        "approved",
        "rejected",
        "in_review",
        "pending",
        "decided",
        "time_to_decision_ms",
    ];
    let want = vec![
        json!({"bucket_start": h0, "started": 3, "approved": 1, "rejected": 1, "in_review": 0, "pending": 1,
            "decided": 2, "time_to_decision_ms": {"p50": 120_000, "p90": 120_000, "p99": 120_000}}),
        json!({"bucket_start": h1, "started": 1, "approved": 0, "rejected": 0, "in_review": 1, "pending": 0,
            "decided": 0, "time_to_decision_ms": null}),
    ];
    anyhow::ensure!(rows(&v, &keys) == want && provisional_marked(&v, 3_600), "{v}");

    // Accept → final latency per bucket of the final status, kind and final status.
    let v = until(&p, &format!("/v1/analytics/transfer-latency?{range}"), &viewer, |v| {
        v["buckets"].as_array().is_some_and(|b| b.len() == 2) && past(v)
    })
    .await?;
    let keys = ["bucket_start", "kind", "final_status", "transfers", "latency_ms"];
    let want = vec![
        json!({"bucket_start": h0, "kind": "deposit", "final_status": "COMPLETED", "transfers": 2,
            "latency_ms": {"p50": 4_000, "p90": 4_000, "p99": 4_000}}),
        json!({"bucket_start": h1, "kind": "payout", "final_status": "CANCELLED", "transfers": 1,
            "latency_ms": {"p50": 3_610_000, "p90": 3_610_000, "p99": 3_610_000}}),
    ];
    anyhow::ensure!(rows(&v, &keys) == want && provisional_marked(&v, 3_600), "{v}");

    // Refused inputs by processor and reason.
    let v = until(&p, &format!("/v1/analytics/rejections?{range}"), &viewer, |v| {
        v["buckets"].as_array().is_some_and(|b| b.len() == 3) && past(v)
    })
    .await?;
    let keys = ["bucket_start", "source", "reason", "rejections"];
    let want = vec![
        json!({"bucket_start": h0, "source": "risk", "reason": "unknown_transfer", "rejections": 1}),
        json!({"bucket_start": h0, "source": "transfers", "reason": "insufficient_funds", "rejections": 2}),
        json!({"bucket_start": h1, "source": "kyc", "reason": "stale_result", "rejections": 1}),
    ];
    anyhow::ensure!(rows(&v, &keys) == want && provisional_marked(&v, 3_600), "{v}");

    // Parameters: a 400 naming the one at fault; another tenant's key: 403.
    let long = format!("from={}&to={}", rfc(now - chrono::Duration::days(40)), rfc(now));
    for (path, field) in [
        (format!("/v1/analytics/transfers?{range}&bucket=week"), "bucket"),
        (format!("/v1/analytics/risk-outcomes?to={}", rfc(now)), "from"),
        (format!("/v1/analytics/kyc-funnel?{long}"), "to"),
        (format!("/v1/analytics/transfer-latency?{range}&limit=0"), "limit"),
        (format!("/v1/analytics/rejections?{range}&after=zz"), "after"),
    ] {
        let a = get(&p, &path, &viewer).await?;
        anyhow::ensure!(
            a.status == 400 && a.json["error"]["field"] == field,
            "{path}: {} {}",
            a.status,
            a.json
        );
    }
    let a = get(&p, &format!("/v1/analytics/kyc-funnel?{long}&bucket=day"), &viewer).await?;
    anyhow::ensure!(a.status == 200, "40 days by day: {} {}", a.status, a.json);
    // The platform's keys read any tenant's analytics (the same answer as the tenant's own key), in
    // their environment only, and nothing else of a tenant's.
    let platform = create_key(&p, "platform", "viewer").await?;
    let platform_sandbox = p
        .cli(&["keys", "create", "--tenant", "platform", "--env", "sandbox", "--role", "admin"], &[])
        .await?
        .trim()
        .to_owned();
    for name in ["transfers", "risk-outcomes", "kyc-funnel", "transfer-latency", "rejections"] {
        let path = format!("/v1/analytics/{name}?{range}");
        let a = get(&p, &path, &stranger).await?;
        anyhow::ensure!(
            a.status == 403 && a.json["error"]["code"] == "wrong_tenant",
            "{name}: {} {}",
            a.status,
            a.json
        );
        // complete_through moves on between two reads; everything else is the same.
        let without_clock = |mut v: Value| {
            v.as_object_mut().map(|o| o.remove("complete_through"));
            v
        };
        let own = without_clock(get(&p, &path, &viewer).await?.json);
        let op = get(&p, &path, &platform).await?;
        anyhow::ensure!(
            op.status == 200 && without_clock(op.json.clone()) == own,
            "{name} for the platform: {} {}",
            op.status,
            op.json
        );
        let sb = get(&p, &path, &platform_sandbox).await?;
        anyhow::ensure!(
            sb.status == 403 && sb.json["error"]["code"] == "wrong_environment",
            "{name}: {}",
            sb.json
        );
    }
    for path in ["/v1/balances", "/v1/risk/reviews", "/v1/audit"] {
        let a = get(&p, path, &platform).await?;
        anyhow::ensure!(a.status == 403 && a.json["error"]["code"] == "wrong_tenant", "{path}: {}", a.json);
    }

    stop.cancel();
    ch_sink.await??;
    p.finish().await
}
