//! The KYC lifecycle on the real stack, as a tenant would see it: signed idcheck and kycflow webhooks at
//! the edge → the `kyc` processor → both sinks → `GET /v1/users/{id}/kyc`; an admin's freeze through the
//! tenant API; a late vendor result refused with its reason; tenant scoping of the read; rows in Postgres
//! and ClickHouse, and `riverbank reconcile` clean.
use std::time::{Duration, Instant};

use riverbank::demo::{Delivery, Sender};
use riverbank_ingest::core::schemes::sign::Signer;
use riverbank_schemas::Environment;

use crate::harness::Pipeline;

const TENANT: &str = "kyc-t";
const OTHER: &str = "kyc-other";
const IDCHECK_SECRET: &str = "e2e-kyc-idcheck-secret-0123456789";
const KYCFLOW_SECRET: &str = "e2e-kyc-kycflow-secret-0123456789";
const COMPONENTS: [&[&str]; 5] =
    [&["ingest"], &["process", "kyc"], &["sink", "postgres"], &["sink", "clickhouse"], &["api"]];
const WAIT: Duration = Duration::from_secs(60);

fn sender(provider: &str, secret: &str) -> anyhow::Result<Sender> {
    let providers = riverbank_ingest::core::provider::load(&[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Sender {
        provider: provider.to_owned(),
        tenant_id: TENANT.to_owned(),
        environment: Environment::Live,
        scheme: providers[provider].signature.clone(),
        signer: Signer::Secret(secret.to_owned()),
    })
}

async fn webhook(p: &Pipeline, s: &Sender, body: serde_json::Value) -> anyhow::Result<()> {
    let delivery = Delivery { id: "-".to_owned(), body: serde_json::to_vec(&body)? };
    let status = riverbank::demo::send(&p.http, &p.ingest_url, s, &delivery).await?;
    anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "{} webhook: {status}", s.provider);
    Ok(())
}

fn secs_ago(s: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::seconds(s)
}

/// An idcheck delivery (Sumsub style) about `case` of `user`, `age_s` seconds old.
fn idcheck(kind: &str, user: &str, case: &str, level: &str, age_s: i64) -> serde_json::Value {
    serde_json::json!({
        "applicantId": case, "inspectionId": format!("{case}-i"), "correlationId": format!("req-{case}-{kind}"),
        "levelName": level, "externalUserId": user, "type": kind, "reviewStatus": "completed",
        "createdAt": secs_ago(age_s).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "reviewResult": {"reviewAnswer": "GREEN"}
    })
}

/// A kycflow delivery (HyperVerge style) about `case` of `user`, `age_s` seconds old.
fn kycflow(status: &str, user: &str, case: &str, tier: u8, age_s: i64) -> serde_json::Value {
    serde_json::json!({
        "transactionId": case, "status": status, "userId": user, "tier": tier, "checks": ["pan", "selfie"],
        "reviewReason": "face_match_low", "timestamp": secs_ago(age_s).timestamp_millis()
    })
}

async fn key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

/// `GET /v1/users/{user}/kyc` with `token`: (status, body).
async fn read(p: &Pipeline, token: &str, user: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = p
        .http
        .get(format!("{}/v1/users/{user}/kyc", p.api_url))
        .query(&[("tenant_id", TENANT)])
        .bearer_auth(token)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// Poll the user's KYC until `done`, at most [`WAIT`].
async fn until(
    p: &Pipeline,
    token: &str,
    user: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = read(p, token, user).await?;
        if status == 200 && done(&v) {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{user}: {what} not within {WAIT:?}; last answer {status} {v}; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_vendor_results_and_an_admin_freeze_reach_the_read_api_and_both_stores() -> anyhow::Result<()>
{
    let mut extra = String::new();
    for (provider, secret) in [("idcheck", IDCHECK_SECRET), ("kycflow", KYCFLOW_SECRET)] {
        extra.push_str(&format!(
            "[[ingest.webhooks]]\nprovider = \"{provider}\"\ntenant_id = \"{TENANT}\"\nenvironment = \"live\"\nsecrets = [\"{secret}\"]\n"
        ));
    }
    let p = Pipeline::start_with("kyc", &[], &COMPONENTS, &extra).await?;
    let (admin, reader, other) =
        (key(&p, TENANT, "admin").await?, key(&p, TENANT, "viewer").await?, key(&p, OTHER, "admin").await?);
    let (idc, kyf) = (sender("idcheck", IDCHECK_SECRET)?, sender("kycflow", KYCFLOW_SECRET)?);
    let (u1, u2) = ("usr_e2e_1", "usr_e2e_2");

    // idcheck: approved at the basic level → tier 1, active.
    webhook(&p, &idc, idcheck("applicantApproved", u1, "appl-e2e-1", "basic-kyc-level", 30)).await?;
    let v = until(&p, &reader, u1, "approved", |v| v["kyc_status"] == "approved").await?;
    assert_eq!((v["user_status"].as_str(), v["tier"].as_i64()), (Some("active"), Some(1)), "{v}");
    assert_eq!(v["usable_tier"], 1, "{v}");
    assert!(v["kyc_expires_at"].is_string(), "{v}");
    assert_eq!(v["history"][0]["event_type"], "user.verified", "{v}");
    assert_eq!(v["cases"][0]["case_id"], "appl-e2e-1", "{v}");
    assert_eq!(v["cases"][0]["provider"], "idcheck", "{v}");

    // kycflow: approved at tier 1, upgraded to tier 3, then a "needs review" the vendor sent before the
    // approval arrives late: refused, the user stays at tier 3.
    webhook(&p, &kyf, kycflow("auto_approved", u2, "kf_txn_e2e", 1, 20)).await?;
    webhook(&p, &kyf, kycflow("tier_upgraded", u2, "kf_txn_e2e", 3, 10)).await?;
    webhook(&p, &kyf, kycflow("needs_review", u2, "kf_txn_e2e", 0, 25)).await?;
    let v = until(&p, &reader, u2, "tier 3", |v| v["tier"] == 3).await?;
    assert_eq!((v["kyc_status"].as_str(), v["version"].as_i64()), (Some("approved"), Some(2)), "{v}");

    // An admin freezes u1 through the tenant API.
    let resp = p
        .http
        .post(format!("{}/v1/kyc/users/{u1}/freeze", p.ingest_url))
        .bearer_auth(&admin)
        .header("x-environment", "live")
        .json(&serde_json::json!({"reason": "account_takeover_suspected"}))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == reqwest::StatusCode::ACCEPTED, "freeze: {}", resp.text().await?);
    let v = until(&p, &reader, u1, "frozen", |v| v["user_status"] == "frozen").await?;
    assert_eq!(
        (v["kyc_status"].as_str(), v["tier"].as_i64(), v["version"].as_i64()),
        (Some("approved"), Some(1), Some(2))
    );
    let last = &v["history"][1];
    assert_eq!(
        (last["event_type"].as_str(), last["reason"].as_str()),
        (Some("user.frozen"), Some("account_takeover_suspected"))
    );
    assert!(last["actor"].as_str().is_some_and(|a| !a.is_empty()), "{v}");

    // Unknown users are 404; another tenant's key reads nothing of this tenant.
    let (status, v) = read(&p, &reader, "usr_nobody").await?;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (status, v) = read(&p, &other, u1).await?;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("wrong_tenant")), "{v}");

    // Both stores: the users and their histories, the refused late result with its reason.
    let pg = p.pg().await?;
    let users: Vec<(String, String, String, i16, i64)> = sqlx::query_as(
        "SELECT user_id, user_status, kyc_status, tier, version FROM users WHERE tenant_id = $1 ORDER BY user_id",
    )
    .bind(TENANT)
    .fetch_all(&pg)
    .await?;
    assert_eq!(
        users,
        [
            (u1.to_owned(), "frozen".to_owned(), "approved".to_owned(), 1, 2),
            (u2.to_owned(), "active".to_owned(), "approved".to_owned(), 3, 2),
        ]
    );
    let deadline = Instant::now() + WAIT;
    let rejected: Vec<(String, String)> = loop {
        let r: Vec<(String, String)> =
            sqlx::query_as("SELECT coalesce(user_id, ''), reason FROM kyc_rejections WHERE tenant_id = $1")
                .bind(TENANT)
                .fetch_all(&pg)
                .await?;
        if !r.is_empty() || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, u2);
    assert!(rejected[0].1.starts_with("late: case kf_txn_e2e"), "{rejected:?}");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM kyc_history WHERE tenant_id = $1")
        .bind(TENANT)
        .fetch_one(&pg)
        .await?;
    assert_eq!(history, 4);
    pg.close().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let facts: u64 = p
            .ch()
            .query("SELECT count() FROM kyc_facts FINAL WHERE tenant_id = ?")
            .bind(TENANT)
            .fetch_one()
            .await?;
        let refused: u64 = p
            .ch()
            .query("SELECT count() FROM kyc_rejections FINAL WHERE tenant_id = ?")
            .bind(TENANT)
            .fetch_one()
            .await?;
        if (facts, refused) == (4, 1) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "clickhouse: {facts} facts, {refused} rejections; want 4, 1"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let frozen: String = p
        .ch()
        .query("SELECT actor FROM kyc_facts FINAL WHERE tenant_id = ? AND event_type = 'user.frozen'")
        .bind(TENANT)
        .fetch_one()
        .await?;
    assert!(!frozen.is_empty());
    p.assert_reconciled().await;
    p.finish().await
}
