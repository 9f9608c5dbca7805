//! The money loop on a fresh pipeline (every processor, both sinks, the API), over the real edges only:
//! `riverbank::money_loop` (the flow the demo runs), then what the stores and the topics must show:
//! every transfer that reached COMPLIANCE_CHECK was screened exactly once (coverage), every decision is
//! in both stores with its reasons, a KYC that expires blocks the next transfer, and
//! `riverbank reconcile` finds nothing to report.
use std::collections::BTreeSet;
use std::time::Duration;

use riverbank_runtime::config::KafkaConfig;
use riverbank_schemas::Environment;

use crate::harness::Pipeline;

const TENANT: &str = "loop";
const IDCHECK_SECRET: &str = "e2e-idcheck-secret-0123456789";

const COMPONENTS: [&[&str]; 8] = [
    &["ingest"],
    &["process", "audit"],
    &["process", "transfers"],
    &["process", "risk"],
    &["process", "kyc"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
    &["api"],
];

async fn key(p: &Pipeline, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", TENANT, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

fn kafka(p: &Pipeline) -> KafkaConfig {
    riverbank_runtime::Config::load(Some(&p.config)).expect("config").kafka
}

/// (transfer id, version) of every event of `event_type` on `topic`, skipping shadow decision records.
async fn keys_on(k: &KafkaConfig, topic: &str, event_type: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let (k, t) = (k.clone(), topic.to_owned());
    let records = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&k, &t, 100_000, Duration::from_secs(30))
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut out = Vec::new();
    for r in records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
        if v["event_type"] != event_type
            || v["payload"]["shadow"] == true
            || !v["payload"]["reviewed_by"].is_null()
        {
            continue;
        }
        let p = &v["payload"];
        let version = p["version"].as_u64().or_else(|| p["transfer_version"].as_u64()).unwrap_or(0);
        out.push((p["transfer_id"].as_str().unwrap_or_default().to_owned(), version));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_verified_deposits_are_screened_reviewed_and_completed_and_risky_ones_blocked(
) -> anyhow::Result<()> {
    let extra = format!(
        "[[ingest.webhooks]]\nprovider = \"idcheck\"\ntenant_id = \"{TENANT}\"\nenvironment = \"live\"\nsecrets = [\"{IDCHECK_SECRET}\"]\n{}",
        crate::audit::AUDIT_EXTRA
    );
    let p = Pipeline::start_with("money_loop", &[(TENANT, 41)], &COMPONENTS, &extra).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let (admin_token, officer_token) = (key(&p, "admin").await?, key(&p, "compliance_officer").await?);
    riverbank::money_loop::publish_sanctions(&cfg, Environment::Live).await?;
    let flow = riverbank::money_loop::Flow {
        cfg: &cfg,
        client: &p.http,
        ingest_url: p.ingest_url.clone(),
        api_url: p.api_url.clone(),
        tenant: TENANT.to_owned(),
        env: Environment::Live,
        kyc: riverbank::money_loop::sender_with("idcheck", TENANT, Environment::Live, IDCHECK_SECRET)?,
        payments: riverbank::money_loop::sender_with(
            "acmepay",
            TENANT,
            Environment::Live,
            &crate::harness::secret_of(41),
        )?,
        admin_token: admin_token.clone(),
        officer_token,
        run: "e2e1".to_owned(),
        wait: Duration::from_secs(60),
    };
    let outcome = riverbank::money_loop::run(&flow).await?;
    let statuses: Vec<&str> = outcome.transfers.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["COMPLETED", "COMPLETED", "BLOCKED", "BLOCKED"]);

    // A KYC approved longer ago than it stays valid (the vendor's own time) expires on the next tick, and
    // the user's next transfer is blocked: tier 0 moves nothing.
    let old = chrono::Utc::now() - chrono::Duration::days(400);
    flow.kyc_approved_at("usr_expired", "case_expired", "basic-kyc-level", old).await?;
    flow.kyc_status("usr_expired", "expired").await?;
    flow.deposit("dep-expired", "usr_expired", "acct_expired", "20.00").await?;
    let v = flow.transfer_status("dep-expired", &["BLOCKED"]).await?;
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("tier_0_limit")), "{v}");

    // Coverage: every screening request has exactly one live decision, and nothing else was decided.
    let k = kafka(&p);
    let topics = riverbank_runtime::kafka::topics(&k);
    let requested =
        keys_on(&k, &topics.transfer_screening(Environment::Live), "transfer.screening_requested").await?;
    let decided = keys_on(&k, &topics.risk_decisions(Environment::Live), "risk.decision_recorded").await?;
    let requested_set: BTreeSet<_> = requested.iter().cloned().collect();
    let decided_set: BTreeSet<_> = decided.iter().cloned().collect();
    assert_eq!(requested_set.len(), 5, "{requested:?}");
    assert_eq!(requested_set, decided_set, "screened: {requested:?}; decided: {decided:?}");

    // Both stores hold every live decision with its reasons.
    let pg = p.pg().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT transfer_id, decision, hits FROM risk_decisions WHERE tenant_id = $1 ORDER BY occurred_at, transfer_id",
        )
        .bind(TENANT)
        .fetch_all(&pg)
        .await?;
        if rows.len() >= 6 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(rows.len(), 6, "5 screenings and the officer's decision: {rows:?}");
    let sanctioned =
        rows.iter().find(|(t, _, _)| t.starts_with("po-sanctioned")).expect("sanctions decision");
    assert_eq!(sanctioned.1, "block");
    assert!(sanctioned.2.to_string().contains("DEMO-SDN-1"), "{:?}", sanctioned.2);
    // ClickHouse lands on its own sink's schedule: wait for it to hold the same live decisions.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ch_rows: u64 = p
            .ch()
            .query("SELECT count() FROM risk_decisions WHERE tenant_id = ? AND shadow = 0")
            .bind(TENANT)
            .fetch_one()
            .await?;
        if ch_rows as usize == rows.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clickhouse holds {ch_rows} live decisions, postgres {}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    p.assert_reconciled().await;
    // Consents are events too: a grant, then its revocation, read back from the trail.
    for granted in [true, false] {
        let body = serde_json::json!({"purpose": "marketing", "granted": granted, "ip": "198.51.100.77", "user_agent": "App/2.1"});
        flow.command(&admin_token, "/v1/users/usr-consent/consents", None, body).await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let consents: serde_json::Value = loop {
        let c: serde_json::Value = p
            .http
            .get(format!("{}/v1/users/usr-consent/consents", p.api_url))
            .query(&[("tenant_id", TENANT), ("environment", "live")])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if c["history"].as_array().is_some_and(|h| h.len() == 2) || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(consents["current"]["marketing"], false, "{consents}");
    assert_eq!(consents["history"][0]["granted"], true, "{consents}");
    assert_eq!(consents["history"][1]["ip"], "198.51.100.0/24", "only the network is kept: {consents}");
    crate::audit::assert_trail(&p, Environment::Live, &admin_token).await?;
    p.finish().await
}
