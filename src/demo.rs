//! A sender of signed webhooks (demo, end-to-end tests, load runs) and the API reads that count
//! what landed.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use riverbank_ingest::core::schemes::sign::{self, Signer};
use riverbank_ingest::core::schemes::Scheme;
use riverbank_runtime::Config;
use riverbank_schemas::Environment;

/// Concurrent requests a sender keeps in flight.
pub const SEND_CONCURRENCY_MAX: usize = 32;

/// One configured sender: who signs, how (the provider's scheme), for which tenant and environment.
#[derive(Debug, Clone)]
pub struct Sender {
    pub provider: String,
    pub tenant_id: String,
    pub environment: Environment,
    pub scheme: Scheme,
    pub signer: Signer,
}

/// Senders from the config's webhook secrets (the first, newest, secret of each) for providers with a
/// shared-secret scheme (an asymmetric provider's private key is not ours to hold).
pub fn senders(cfg: &Config) -> anyhow::Result<Vec<Sender>> {
    let providers = riverbank_ingest::server::load_providers(&cfg.ingest.providers_dir)?;
    let mut out = Vec::new();
    for w in &cfg.ingest.webhooks {
        let def = providers.get(&w.provider).with_context(|| format!("no provider {}", w.provider))?;
        if matches!(def.signature, Scheme::Ed25519 { .. }) {
            continue;
        }
        let secret = w.secrets.first().context("webhook entry without secrets")?;
        out.push(Sender {
            provider: w.provider.clone(),
            tenant_id: w.tenant_id.clone(),
            environment: w.environment,
            scheme: def.signature.clone(),
            signer: Signer::Secret(secret.expose().clone()),
        });
    }
    Ok(out)
}

/// A realistic deposit / payout status callback in the `acmepay` provider's shape; `seq` varies amount,
/// status and id. No PII.
pub fn deposit_body(seq: usize, tenant_id: &str) -> Vec<u8> {
    let statuses = ["deposit.received", "deposit.processing", "deposit.completed", "payout.completed"];
    serde_json::to_vec(&serde_json::json!({
        "type": statuses[seq % statuses.len()],
        "api_version": "2024-06-01",
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": {
            "object": "deposit",
            "id": format!("dep_{tenant_id}_{seq:08}"),
            "amount": { "value": format!("{}.{:02}", 10 + seq % 990, seq % 100), "currency": "USD" },
            "chain": "ethereum",
            "confirmations": seq % 13
        }
    }))
    .unwrap_or_default()
}

/// One delivery: its id (where the scheme carries one) and raw body.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
}

/// POST one webhook to `ingest_url`; returns the HTTP status.
pub async fn send(
    client: &reqwest::Client,
    ingest_url: &str,
    sender: &Sender,
    delivery: &Delivery,
) -> reqwest::Result<reqwest::StatusCode> {
    let ts = chrono::Utc::now().timestamp();
    let mut req = client.post(format!("{ingest_url}/v1/webhooks/{}/{}", sender.provider, sender.tenant_id));
    for (k, v) in sign::headers(&sender.scheme, &sender.signer, &delivery.id, ts, &delivery.body) {
        req = req.header(k, v);
    }
    let resp = req
        .header("x-environment", sender.environment.as_str())
        .header("content-type", "application/json")
        .body(delivery.body.clone())
        .send()
        .await?;
    Ok(resp.status())
}

/// Send many deliveries with bounded concurrency; returns the statuses in order.
pub async fn send_all(
    client: &reqwest::Client,
    ingest_url: &str,
    work: Vec<(Sender, Delivery)>,
) -> Vec<reqwest::Result<reqwest::StatusCode>> {
    futures::stream::iter(work)
        .map(|(s, d)| async move { send(client, ingest_url, &s, &d).await })
        .buffered(SEND_CONCURRENCY_MAX)
        .collect()
        .await
}

/// Audit rows the API returns for a tenant (all pages) and their payload byte sum.
pub async fn audit_count(
    client: &reqwest::Client,
    api_url: &str,
    tenant_id: &str,
    env: Environment,
) -> anyhow::Result<(u64, u64)> {
    let (mut rows, mut bytes, mut after) = (0u64, 0u64, None::<String>);
    loop {
        let mut req = client.get(format!("{api_url}/v1/audit")).query(&[
            ("tenant_id", tenant_id),
            ("environment", env.as_str()),
            ("limit", "1000"),
        ]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let page: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
        let records = page["records"].as_array().context("records missing")?;
        rows += records.len() as u64;
        bytes += records.iter().filter_map(|r| r["payload_bytes"].as_u64()).sum::<u64>();
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return Ok((rows, bytes)),
        }
    }
}

/// Events and payload bytes the analytics endpoint reports for a tenant, summed over hours.
pub async fn analytics_count(
    client: &reqwest::Client,
    api_url: &str,
    tenant_id: &str,
    env: Environment,
) -> anyhow::Result<(u64, u64)> {
    let scope = [("tenant_id", tenant_id), ("environment", env.as_str())];
    let v = get_json(client, &format!("{api_url}/v1/analytics/audit-volume"), &scope).await?;
    let hours = v["hours"].as_array().context("hours missing")?;
    Ok(hours.iter().fold((0, 0), |(e, b), h| {
        (e + h["events"].as_u64().unwrap_or(0), b + h["payload_bytes"].as_u64().unwrap_or(0))
    }))
}

/// GET a JSON document; a non-2xx answer is an error.
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    Ok(client.get(url).query(query).send().await?.error_for_status()?.json().await?)
}

/// Wait until `{url}/health` answers 2xx.
pub async fn wait_healthy(client: &reqwest::Client, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match client.get(format!("{url}/health")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(r) => anyhow::bail!("{url}/health answered {} after {} s", r.status(), timeout.as_secs()),
            Err(e) => anyhow::bail!("{url}/health unreachable after {} s: {e}", timeout.as_secs()),
        }
    }
}

/// `riverbank demo`: send `count` signed webhooks spread over the configured senders, then wait for
/// them in Postgres (audit API) and ClickHouse (analytics API) and print where to look.
pub async fn run(cfg: &Config, count: usize, wait_s: u64) -> anyhow::Result<()> {
    let senders = senders(cfg)?;
    anyhow::ensure!(
        !senders.is_empty(),
        "no [[ingest.webhooks]] senders configured; see deploy/local/riverbank.toml"
    );
    let ingest_url = format!("http://{}", cfg.ingest.listen_addr);
    let api_url = format!("http://{}", cfg.api.listen_addr);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    for url in [&ingest_url, &api_url] {
        wait_healthy(&client, url, Duration::from_secs(wait_s)).await?;
    }
    // What each tenant held before (earlier runs may still be landing: take the larger store's count).
    let mut before = Vec::new();
    for s in &senders {
        let pg = audit_count(&client, &api_url, &s.tenant_id, s.environment).await?;
        let ch = analytics_count(&client, &api_url, &s.tenant_id, s.environment).await?;
        before.push(pg.0.max(ch.0));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let work: Vec<(Sender, Delivery)> = (0..count)
        .map(|i| {
            let s = senders[i % senders.len()].clone();
            let body = deposit_body(i, &s.tenant_id);
            (s, Delivery { id: format!("msg_{run_id}_{i}"), body })
        })
        .collect();
    let started = Instant::now();
    let statuses = send_all(&client, &ingest_url, work).await;
    let accepted =
        statuses.iter().filter(|s| matches!(s, Ok(c) if *c == reqwest::StatusCode::ACCEPTED)).count();
    println!("sent {count} signed webhooks in {:.2?}: {accepted} accepted (202)", started.elapsed());
    let mut accepted_per_sender = vec![0u64; senders.len()];
    for (i, st) in statuses.iter().enumerate() {
        if matches!(st, Ok(c) if *c == reqwest::StatusCode::ACCEPTED) {
            accepted_per_sender[i % senders.len()] += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    loop {
        let mut all_landed = true;
        let mut lines = Vec::new();
        for ((s, b), n) in senders.iter().zip(&before).zip(&accepted_per_sender) {
            let pg = audit_count(&client, &api_url, &s.tenant_id, s.environment).await?;
            let ch = analytics_count(&client, &api_url, &s.tenant_id, s.environment).await?;
            // Both stores hold at least what was there plus this run, and agree with each other.
            all_landed &= pg.0 >= b + n && ch.0 == pg.0;
            lines.push(format!(
                "  {:<12} {:<8} {:<10} postgres rows {:>7}  clickhouse events {:>7}",
                s.tenant_id,
                s.environment.as_str(),
                s.provider,
                pg.0,
                ch.0
            ));
        }
        if all_landed || Instant::now() > deadline {
            println!("landed after {:.2?} (totals per tenant, this run included):", started.elapsed());
            for l in lines {
                println!("{l}");
            }
            if all_landed {
                println!("this run: all {accepted} accepted webhooks landed; postgres and clickhouse agree");
            }
            println!("ingest:    {ingest_url}/v1/webhooks/{{provider}}/{{tenant_id}}");
            println!("api:       {api_url}/health");
            for s in &senders {
                println!(
                    "           {api_url}/v1/audit?tenant_id={}&environment={}",
                    s.tenant_id, s.environment
                );
                println!(
                    "           {api_url}/v1/analytics/audit-volume?tenant_id={}&environment={}",
                    s.tenant_id, s.environment
                );
            }
            anyhow::ensure!(all_landed, "not every accepted webhook landed in both stores within {wait_s} s");
            return command(cfg, &client, &ingest_url, &api_url, &run_id, wait_s).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The API half of the demo: a tenant API key, one deposit command sent twice under one
/// `Idempotency-Key` (one event), then the transfer as the read API shows it.
async fn command(
    cfg: &Config,
    client: &reqwest::Client,
    ingest_url: &str,
    api_url: &str,
    run_id: &str,
    wait_s: u64,
) -> anyhow::Result<()> {
    use riverbank_ingest::core::commands::Role;
    let tenant = format!("api-{}", &run_id[..8]);
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    riverbank_ingest::store::migrate(&pool).await?;
    let (key, token) =
        riverbank_runtime::apikeys::create_key(&pool, &tenant, Environment::Live, Role::Operator, "demo")
            .await?;
    pool.close().await;
    let transfer_id = format!("dep-{}", &run_id[..8]);
    let body = serde_json::json!({
        "transfer_id": transfer_id,
        "kind": "deposit",
        "amount": "125.00",
        "currency": "USD",
        "destination_account": "acct_demo"
    });
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = client
            .post(format!("{ingest_url}/v1/transfers"))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("demo-{run_id}"))
            .json(&body)
            .send()
            .await?;
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let status = resp.status();
        let json: serde_json::Value = resp.json().await?;
        anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "POST /v1/transfers: {status} {json}");
        answers.push((json["event_id"].clone(), replayed));
    }
    println!(
        "API key {} ({tenant}, operator): POST /v1/transfers twice with one Idempotency-Key → event {} both times (second replayed: {})",
        key.key_id, answers[0].0, answers[1].1
    );
    anyhow::ensure!(answers[0].0 == answers[1].0 && answers[1].1, "the retry must replay the first answer");
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let url = format!("{api_url}/v1/transfers/{transfer_id}");
    loop {
        let v = get_json(client, &url, &[("tenant_id", tenant.as_str())]).await;
        if let Ok(v) = v {
            let steps: Vec<&str> = v["history"]
                .as_array()
                .map(|h| h.iter().filter_map(|c| c["status"].as_str()).collect())
                .unwrap_or_default();
            println!(
                "landed: transfer {transfer_id} went {} so far (it waits for its provider); {url}?tenant_id={tenant}",
                steps.join(" → ")
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "transfer {transfer_id} did not reach the read API within {wait_s} s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
