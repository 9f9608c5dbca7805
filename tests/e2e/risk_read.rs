//! The risk read side on the real stack, as a tenant and a compliance officer use it: transfers created
//! through `POST /v1/transfers` are screened by the risk processor (default rule set, a candidate rule
//! set published as shadow), the decisions land in both stores, a large transfer waits in
//! `GET /v1/risk/reviews` until an officer decides it, `GET /v1/risk/decisions` explains both records,
//! and `GET /v1/risk/shadow/diff` shows where the candidate disagrees. Reconcile is clean at the end.
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::Method;
use riverbank_runtime::config::KafkaConfig;
use riverbank_schemas::processor::Emit;
use riverbank_schemas::risk::{event_types as et, RulesPublished};
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics};
use serde_json::{json, Value};

use crate::harness::Pipeline;

const COMPONENTS: &[&[&str]] = &[
    &["ingest"],
    &["process", "transfers"],
    &["process", "risk"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
];
const TENANT: &str = "acme";
/// How long anything asynchronous (screening, sinks) may take to show.
const WAIT: Duration = Duration::from_secs(90);

struct Answer {
    status: u16,
    json: Value,
}

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(u) = user {
        req = req.header("x-user-id", u);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok(Answer { status, json: resp.json().await.unwrap_or(Value::Null) })
}

async fn create_key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

/// Poll `what` until it returns `Some`, at most [`WAIT`].
async fn eventually<T, F, Fut>(p: &Pipeline, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kafka_config(p: &Pipeline) -> KafkaConfig {
    riverbank_runtime::Config::load(Some(&p.config)).expect("the test's config loads").kafka
}

/// The default rule set with its `large-single` threshold at 5.00 USD: it sends to review what the
/// live rule set approves. Published as shadow, as `riverbank risk rules publish --shadow` does.
async fn publish_candidate(kcfg: &KafkaConfig, topics: &Topics) -> anyhow::Result<String> {
    let mut rules = riverbank_processors::risk::parse_rules(riverbank_processors::risk::DEFAULT_RULES_TOML)
        .map_err(anyhow::Error::msg)?;
    rules.name = "candidate".into();
    for t in &mut rules.threshold {
        t.amount_over_minor = 500;
    }
    let rules = rules.sealed();
    let version = rules.version.clone();
    let published = RulesPublished { rules, shadow: true, published_by: "e2e".into() };
    let id = derived_id(&["e2e-risk-read", &version]);
    let envelope = Envelope::new(
        id,
        et::RULES_PUBLISHED,
        "riverbank",
        Environment::Live,
        chrono::Utc::now(),
        "riverbank.cli",
        published,
    );
    let emit = Emit {
        topic: topics.risk_reference(Environment::Live),
        key: "riverbank".into(),
        event_id: id,
        payload: serde_json::to_vec(&envelope)?,
    };
    let producer = riverbank_runtime::kafka::producer(kcfg)?;
    riverbank_runtime::produce::produce_all(&producer, &[emit], Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(version)
}

/// Whether the risk router has copied a rule set publication into every partition of the risk log
/// (then every screening request copied after it is decided by the shadow rule set too).
fn rules_in_every_partition(kcfg: &KafkaConfig, topics: &Topics) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kcfg.brokers)
        .set("group.id", "e2e-risk-read-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let log = topics.log(Environment::Live, "risk");
    let mut tpl = TopicPartitionList::new();
    for p in 0..kcfg.topic_partitions {
        tpl.add_partition_offset(&log, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = std::collections::BTreeSet::new();
    let (mut eofs, deadline) = (0, Instant::now() + Duration::from_secs(20));
    while eofs < kcfg.topic_partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let e: Option<RawEnvelope> = m.payload().and_then(|b| serde_json::from_slice(b).ok());
                if e.is_some_and(|e| e.event_type == et::RULES_PUBLISHED) {
                    seen.insert(m.partition());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
            _ => {}
        }
    }
    Ok(seen.len() == usize::try_from(kcfg.topic_partitions).unwrap_or(0))
}

/// (decision, reviewed_by) of a transfer's live decisions in Postgres, in order.
async fn pg_decisions(pool: &sqlx::PgPool, transfer: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT decision, reviewed_by FROM risk_decisions WHERE tenant_id = $1 AND transfer_id = $2
         ORDER BY transfer_version, reviewed_by IS NOT NULL",
    )
    .bind(TENANT)
    .bind(transfer)
    .fetch_all(pool)
    .await?)
}

/// (decision, shadow, reviewed_by) of a transfer's decisions in ClickHouse, each event once.
async fn ch_decisions(p: &Pipeline, transfer: &str) -> anyhow::Result<Vec<(String, u8, String)>> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct D {
        decision: String,
        shadow: u8,
        reviewed_by: String,
    }
    let rows: Vec<D> = p
        .ch()
        .query(
            "SELECT toString(decision) AS decision, shadow, reviewed_by FROM risk_decisions FINAL
             WHERE tenant_id = ? AND transfer_id = ? ORDER BY shadow, transfer_version, reviewed_by != ''",
        )
        .bind(TENANT)
        .bind(transfer)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|d| (d.decision, d.shadow, d.reviewed_by)).collect())
}

/// The hit of `rule` in a decision's or queue entry's `hits`.
fn hit<'a>(decision: &'a Value, rule: &str) -> Option<&'a Value> {
    decision["hits"].as_array()?.iter().find(|h| h["rule"] == rule)
}

fn owned(rows: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    rows.iter().map(|(d, r)| ((*d).to_owned(), r.map(str::to_owned))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_decisions_and_the_shadow_diff_read_what_risk_decided() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("risk_read", &[], COMPONENTS, "").await?;
    p.spawn_env("api", &["api"], &[("RIVERBANK__API__REQUIRE_API_KEY", "true".to_owned())])?;
    let (ingest, api) = (p.ingest_url.clone(), p.api_url.clone());
    p.wait_healthy(&api).await?;
    let topics = Topics::new(p.topic_prefix.clone());
    let kcfg = kafka_config(&p);

    // A candidate rule set runs beside the live one from the first screening on.
    let candidate = publish_candidate(&kcfg, &topics).await?;
    eventually(&p, "the shadow rule set copied into every risk partition", || {
        let (k, t) = (kcfg.clone(), topics.clone());
        async move {
            Ok(tokio::task::spawn_blocking(move || rules_in_every_partition(&k, &t)).await??.then_some(()))
        }
    })
    .await?;

    let operator = create_key(&p, TENANT, "operator").await?;
    let viewer = create_key(&p, TENANT, "viewer").await?;
    let officer = create_key(&p, TENANT, "compliance_officer").await?;
    let stranger = create_key(&p, "globex", "viewer").await?;
    let http = p.http.clone();
    let h = &http;
    let from = chrono::Utc::now() - chrono::Duration::minutes(5);

    // A small deposit and a 1,500 USD one, neither naming an end user, requested by maker-1.
    for (id, amount) in [("t-small", "10.00"), ("t-large", "1500.00")] {
        let body = json!({"transfer_id": id, "kind": "deposit", "amount": amount, "currency": "USD",
            "destination_account": "acct_1"});
        let a =
            call(h, Method::POST, &format!("{ingest}/v1/transfers"), &operator, Some("maker-1"), Some(body))
                .await?;
        anyhow::ensure!(a.status == 202, "create {id}: {} {}", a.status, a.json);
    }
    let status = |id: &'static str| {
        let (h, url, key) =
            (http.clone(), format!("{api}/v1/transfers/{id}?tenant_id={TENANT}"), viewer.clone());
        async move {
            let a = call(&h, Method::GET, &url, &key, None, None).await?;
            anyhow::Ok(a.json["status"].as_str().map(str::to_owned))
        }
    };

    // Small: approved by the rules; the decision is in both stores (and the candidate's beside it).
    eventually(&p, "t-small APPROVED", || async { Ok(status("t-small").await?.filter(|s| s == "APPROVED")) })
        .await?;
    let pool = p.pg().await?;
    let want_small = owned(&[("approve", None)]);
    eventually(&p, "t-small's decision in Postgres", || async {
        Ok((pg_decisions(&pool, "t-small").await? == want_small).then_some(()))
    })
    .await?;
    let want_small_ch =
        vec![("approve".to_owned(), 0, String::new()), ("review".to_owned(), 1, String::new())];
    eventually(&p, "t-small's live and shadow decisions in ClickHouse", || async {
        Ok((ch_decisions(&p, "t-small").await? == want_small_ch).then_some(()))
    })
    .await?;

    // Large: held for review, and in the queue with its score, the rule that fired, amount and requester.
    let reviews_url = format!("{api}/v1/risk/reviews?tenant_id={TENANT}");
    let queue = eventually(&p, "t-large in the review queue", || async {
        let a = call(h, Method::GET, &reviews_url, &viewer, None, None).await?;
        anyhow::ensure!(a.status == 200, "{} {}", a.status, a.json);
        Ok((a.json["reviews"].as_array().is_some_and(|r| !r.is_empty())).then_some(a.json))
    })
    .await?;
    let reviews = queue["reviews"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(reviews.len() == 1 && queue["next_cursor"].is_null(), "{queue}");
    let r = &reviews[0];
    anyhow::ensure!(
        r["transfer_id"] == "t-large"
            && r["score"] == 35
            && r["amount_minor"] == 150_000
            && r["currency"] == "USD"
            && r["requested_by"] == "user:maker-1"
            && r["rule_set"] == "riverbank-default"
            && hit(r, "large-single").is_some_and(|h| {
                h["kind"] == "threshold"
                    && h["score"] == 35
                    && h["features"]["amount"] == "1500.00"
                    && h["features"]["over"] == "1000.00"
            })
            && hit(r, "missing_user").is_some_and(|h| h["score"] == 0),
        "{r}"
    );
    anyhow::ensure!(status("t-large").await?.as_deref() == Some("COMPLIANCE_CHECK"), "t-large not held");
    // Reads are the key's tenant's only, and parameters are checked.
    let a = call(h, Method::GET, &reviews_url, &stranger, None, None).await?;
    anyhow::ensure!(a.status == 403 && a.json["error"]["code"] == "wrong_tenant", "{}", a.json);
    for (url, code) in [
        (format!("{reviews_url}&limit=0"), "invalid_limit"),
        (format!("{reviews_url}&after=garbage"), "invalid_cursor"),
        (format!("{api}/v1/risk/decisions?tenant_id={TENANT}&transfer_id=t%20x"), "invalid_transfer_id"),
        (format!("{api}/v1/risk/shadow/diff?tenant_id={TENANT}&from=yesterday&to=today"), "invalid_time"),
    ] {
        let a = call(h, Method::GET, &url, &viewer, None, None).await?;
        anyhow::ensure!(a.status == 400 && a.json["error"]["code"] == code, "{url}: {} {}", a.status, a.json);
    }
    // A page of one: the cursor leads to an empty last page.
    let a = call(h, Method::GET, &format!("{reviews_url}&limit=1"), &viewer, None, None).await?;
    let cursor = a.json["next_cursor"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(a.json["reviews"][0]["transfer_id"] == "t-large" && !cursor.is_empty(), "{}", a.json);
    let a =
        call(h, Method::GET, &format!("{reviews_url}&limit=1&after={cursor}"), &viewer, None, None).await?;
    anyhow::ensure!(a.json["reviews"].as_array().is_some_and(Vec::is_empty), "{}", a.json);

    // The shadow diff: the candidate sends t-small to review where the live rules approved it; on
    // t-large both review.
    let to = chrono::Utc::now() + chrono::Duration::minutes(5);
    let diff_url = format!(
        "{api}/v1/risk/shadow/diff?tenant_id={TENANT}&from={}&to={}&limit=10",
        from.format("%Y-%m-%dT%H:%M:%SZ"),
        to.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let diff = eventually(&p, "both transfers in the shadow diff", || async {
        let a = call(h, Method::GET, &diff_url, &viewer, None, None).await?;
        anyhow::ensure!(a.status == 200, "{} {}", a.status, a.json);
        let total: u64 =
            a.json["outcomes"].as_array().into_iter().flatten().filter_map(|o| o["transfers"].as_u64()).sum();
        Ok((total == 2).then_some(a.json))
    })
    .await?;
    anyhow::ensure!(
        diff["outcomes"]
            == json!([
                {"live": "approve", "shadow": "review", "transfers": 1},
                {"live": "review", "shadow": "review", "transfers": 1},
            ]),
        "{diff}"
    );
    let d = &diff["differences"];
    anyhow::ensure!(
        d.as_array().map(Vec::len) == Some(1)
            && d[0]["transfer_id"] == "t-small"
            && d[0]["live"]["decision"] == "approve"
            && d[0]["live"]["score"] == 0
            && d[0]["shadow"]["decision"] == "review"
            && d[0]["shadow"]["score"] == 35
            && d[0]["shadow"]["rule_set"] == "candidate"
            && d[0]["shadow"]["rule_set_version"] == candidate.as_str()
            && diff["truncated"] == false,
        "{diff}"
    );

    // Deciding: an operator may not; the requester may not review their own transfer (refused by risk,
    // with the reason, in both stores); another officer approves.
    let decide = format!("{ingest}/v1/risk/reviews/t-large/decision");
    let ok = json!({"decision": "approved", "reason": "ok"});
    let a = call(h, Method::POST, &decide, &operator, Some("maker-2"), Some(ok.clone())).await?;
    anyhow::ensure!(a.status == 403 && a.json["error"]["code"] == "forbidden_role", "{}", a.json);
    let a = call(h, Method::POST, &decide, &officer, Some("maker-1"), Some(ok.clone())).await?;
    anyhow::ensure!(a.status == 202, "{} {}", a.status, a.json);
    let reason = "the reviewer must not be the requester (maker-checker)";
    eventually(&p, "the self-review refused in Postgres", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM risk_rejections WHERE tenant_id = $1 AND transfer_id = 't-large' AND reason = $2",
        )
        .bind(TENANT)
        .bind(reason)
        .fetch_one(&pool)
        .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    eventually(&p, "the self-review refused in ClickHouse", || async {
        let n: u64 = p
            .ch()
            .query("SELECT toUInt64(count()) FROM risk_rejections FINAL WHERE tenant_id = ? AND reason = ?")
            .bind(TENANT)
            .bind(reason)
            .fetch_one()
            .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    let a = call(h, Method::POST, &decide, &officer, Some("officer-7"), Some(ok)).await?;
    anyhow::ensure!(a.status == 202, "{} {}", a.status, a.json);

    // Approved, out of the queue, and both records explained.
    eventually(&p, "t-large APPROVED", || async { Ok(status("t-large").await?.filter(|s| s == "APPROVED")) })
        .await?;
    eventually(&p, "the review queue empty", || async {
        let a = call(h, Method::GET, &reviews_url, &viewer, None, None).await?;
        Ok(a.json["reviews"].as_array().is_some_and(Vec::is_empty).then_some(()))
    })
    .await?;
    let a = call(
        h,
        Method::GET,
        &format!("{api}/v1/risk/decisions?tenant_id={TENANT}&transfer_id=t-large"),
        &viewer,
        None,
        None,
    )
    .await?;
    anyhow::ensure!(a.status == 200, "{} {}", a.status, a.json);
    let ds = a.json["decisions"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(ds.len() == 2 && a.json["next_cursor"].is_null(), "{}", a.json);
    anyhow::ensure!(
        ds[0]["decision"] == "review" && ds[0]["reviewed_by"].is_null() && ds[0]["score"] == 35,
        "{}",
        ds[0]
    );
    anyhow::ensure!(
        ds[1]["decision"] == "approve"
            && ds[1]["reviewed_by"] == "user:officer-7"
            && ds[1]["review_reason"] == "ok"
            && ds[1]["requested_by"] == "user:maker-1",
        "{}",
        ds[1]
    );
    for d in &ds {
        anyhow::ensure!(
            hit(d, "large-single").is_some_and(|h| h["score"] == 35)
                && d["rule_set"] == "riverbank-default"
                && d["rule_set_version"].as_str().is_some_and(|v| v.starts_with("rs_"))
                && d["amount_report_minor"] == 150_000
                && d["report_currency"] == "USD"
                && d["ctr"] == false,
            "{d}"
        );
    }
    let a = call(
        h,
        Method::GET,
        &format!("{api}/v1/risk/decisions?tenant_id={TENANT}&transfer_id=t-unknown"),
        &viewer,
        None,
        None,
    )
    .await?;
    anyhow::ensure!(a.status == 404, "{} {}", a.status, a.json);

    // Both stores: two live records (Postgres has no shadow ones), plus the candidate's in ClickHouse.
    let want = owned(&[("review", None), ("approve", Some("user:officer-7"))]);
    anyhow::ensure!(pg_decisions(&pool, "t-large").await? == want, "postgres t-large");
    let want_ch = vec![
        ("review".to_owned(), 0, String::new()),
        ("approve".to_owned(), 0, "user:officer-7".to_owned()),
        ("review".to_owned(), 1, String::new()),
    ];
    eventually(&p, "t-large's decisions in ClickHouse", || async {
        Ok((ch_decisions(&p, "t-large").await? == want_ch).then_some(()))
    })
    .await?;
    p.assert_reconciled().await;

    // A queue row its decisions do not back is named by reconcile.
    sqlx::query(
        "UPDATE risk_latest SET step = step - 1, decision = 'review' WHERE tenant_id = $1 AND transfer_id = 't-large'",
    )
    .bind(TENANT)
    .execute(&pool)
    .await?;
    pool.close().await;
    let report = p.reconcile(Duration::ZERO).await?;
    let off: Vec<String> =
        report.discrepancies().iter().map(|r| format!("{} {}", r.check.as_str(), r.scope)).collect();
    anyhow::ensure!(
        off == ["risk_latest acme/live", "risk_latest acme/live/transfer t-large"],
        "{}",
        report.diff_table()
    );
    p.finish().await
}
