//! Provider callbacks drive transfers, on the real stack: signed acmepay webhooks through ingest (fields
//! and the transfer callback resolved at the edge), the router (body dropped), the transfers processor
//! (found by provider reference), the real risk processor screening every transfer, and both sinks.
//!
//! - A deposit by API under a provider reference, no end user: its `deposit.completed` arrives before
//!   screening ends (risk is started only once the callback is in the transfers log), waits parked,
//!   and completes the deposit when risk approves it; the balance posts once.
//! - A deposit the provider starts (`deposit.received` for a reference nobody requested): created,
//!   screened, approved, completed by `deposit.completed`.
//! - An amount that disagrees, an unknown reference and an unparsable amount: accepted by ingest (202,
//!   the deliveries are authentic) and rejections with their reasons in `transfer_rejections`.
use std::time::{Duration, Instant};

use riverbank::demo::{send, Delivery, Sender};
use riverbank_runtime::config::KafkaConfig;
use riverbank_schemas::Environment;
use sqlx::PgPool;

use crate::harness::{sender, Pipeline};

const TENANT: &str = "cbk";
const SEED: u8 = 53;
const WAIT: Duration = Duration::from_secs(90);
const RISK: &[&str] = &["process", "risk"];

const COMPONENTS: [&[&str]; 5] = [
    &["ingest"],
    &["process", "transfers"],
    &["process", "audit"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
];

fn acmepay(kind: &str, reference: &str, amount: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut data = serde_json::json!({
        "object": kind.split('.').next().unwrap_or("deposit"), "id": reference,
        "amount": {"value": amount, "currency": "USD"},
    });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    serde_json::to_vec(&serde_json::json!({
        "type": kind, "api_version": "2025-09-15",
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    }))
    .unwrap_or_default()
}

async fn webhook(p: &Pipeline, s: &Sender, id: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let status = send(&p.http, &p.ingest_url, s, &Delivery { id: id.to_owned(), body }).await?;
    // An authentic delivery is accepted even when it cannot apply: the answer is an event, not a 4xx.
    anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "webhook {id}: {status}");
    Ok(())
}

async fn create_deposit(
    p: &Pipeline,
    token: &str,
    id: &str,
    amount: &str,
    reference: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "transfer_id": id, "kind": "deposit", "amount": amount, "currency": "USD",
        "destination_account": "acct_cbk", "provider": "acmepay", "provider_reference": reference,
    });
    let resp = p
        .http
        .post(format!("{}/v1/transfers", p.ingest_url))
        .bearer_auth(token)
        .header("x-environment", "live")
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    anyhow::ensure!(
        status == reqwest::StatusCode::ACCEPTED,
        "POST /v1/transfers {id}: {status} {}",
        resp.text().await?
    );
    Ok(())
}

/// Poll until `check` answers `Some`, at most `WAIT`.
async fn until<T, F, Fut>(what: &str, p: &Pipeline, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?} (logs in {})",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn status_of(pg: &PgPool, id: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT status FROM transfers WHERE tenant_id = $1 AND transfer_id = $2")
        .bind(TENANT)
        .bind(id)
        .fetch_optional(pg)
        .await?)
}

async fn wait_status(p: &Pipeline, pg: &PgPool, id: &str, want: &str) -> anyhow::Result<()> {
    until(&format!("transfer {id} {want}"), p, || async {
        Ok(status_of(pg, id).await?.filter(|s| s == want).map(|_| ()))
    })
    .await
}

async fn posted(pg: &PgPool, account: &str) -> anyhow::Result<i64> {
    let v: Option<i64> = sqlx::query_scalar(
        "SELECT posted_minor FROM account_balances WHERE tenant_id = $1 AND account = $2 AND currency = 'USD'",
    )
    .bind(TENANT)
    .bind(account)
    .fetch_optional(pg)
    .await?;
    Ok(v.unwrap_or(0))
}

/// The rejection whose reason contains `text`: (transfer id, input event type, reason).
async fn rejection(
    p: &Pipeline,
    pg: &PgPool,
    text: &str,
) -> anyhow::Result<(Option<String>, String, String)> {
    until(&format!("a rejection saying {text:?}"), p, || async {
        Ok(sqlx::query_as(
            "SELECT transfer_id, input_event_type, reason FROM transfer_rejections WHERE tenant_id = $1 AND strpos(reason, $2) > 0",
        )
        .bind(TENANT)
        .bind(text)
        .fetch_optional(pg)
        .await?)
    })
    .await
}

/// Whether the router has copied a webhook of `reference` into the transfers log.
async fn in_transfers_log(k: &KafkaConfig, reference: &str) -> anyhow::Result<bool> {
    let topic = riverbank_runtime::kafka::topics(k).transfer_inputs(Environment::Live);
    let k = k.clone();
    let records = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&k, &topic, 100_000, Duration::from_secs(30))
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(records.iter().any(|r| {
        serde_json::from_slice::<serde_json::Value>(&r.payload).is_ok_and(|v| {
            v["event_type"] == "webhook.received"
                && v["payload"]["transfer_callback"]["reference"] == reference
                && v["payload"]["body"].is_null()
        })
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_callbacks_complete_parked_and_provider_created_deposits_and_bad_ones_are_rejected(
) -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("callbacks", &[(TENANT, SEED)], &COMPONENTS, "").await?;
    let token =
        p.cli(&["keys", "create", "--tenant", TENANT, "--env", "live", "--role", "admin"], &[]).await?;
    let token = token.trim().to_owned();
    let k = riverbank_runtime::Config::load(Some(&p.config))?.kafka;
    let pg = p.pg().await?;
    let acme = sender(TENANT, SEED);

    // 1. A deposit by API whose provider is faster than screening: no risk processor runs yet.
    create_deposit(&p, &token, "dep-api-1", "120.00", "dep_cbk_1").await?;
    wait_status(&p, &pg, "dep-api-1", "COMPLIANCE_CHECK").await?;
    webhook(
        &p,
        &acme,
        "wh-cbk-1-completed",
        acmepay("deposit.completed", "dep_cbk_1", "120.00", serde_json::json!({})),
    )
    .await?;
    until("the completed callback in the transfers log", &p, || async {
        Ok(in_transfers_log(&k, "dep_cbk_1").await?.then_some(()))
    })
    .await?;
    // Give the processor time to take it (parked: it emits nothing), then screening starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(
        status_of(&pg, "dep-api-1").await?.as_deref() == Some("COMPLIANCE_CHECK"),
        "nothing moves before approval"
    );
    anyhow::ensure!(posted(&pg, "acct_cbk").await? == 0, "nothing posts before approval");
    p.spawn(RISK)?;
    wait_status(&p, &pg, "dep-api-1", "COMPLETED").await?;
    until("the deposit posted", &p, || async {
        Ok((posted(&pg, "acct_cbk").await? == 12_000).then_some(()))
    })
    .await?;
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM transfer_status_history WHERE tenant_id = $1 AND transfer_id = 'dep-api-1' ORDER BY version",
    )
    .bind(TENANT)
    .fetch_all(&pg)
    .await?;
    assert_eq!(
        history,
        [
            "INITIATED",
            "VALIDATING",
            "PENDING",
            "COMPLIANCE_CHECK",
            "APPROVED",
            "PROCESSING",
            "CONFIRMING",
            "COMPLETED"
        ]
    );

    // 2. A deposit the provider starts: created under `acmepay:{reference}`, screened, completed.
    let received = acmepay(
        "deposit.received",
        "dep_cbk_new",
        "75.25",
        serde_json::json!({"destination_account": "acct_cbk"}),
    );
    webhook(&p, &acme, "wh-cbk-new-received", received.clone()).await?;
    wait_status(&p, &pg, "acmepay:dep_cbk_new", "APPROVED").await?;
    // The provider redelivers it: recognised, nothing is created twice.
    webhook(&p, &acme, "wh-cbk-new-received", received).await?;
    webhook(
        &p,
        &acme,
        "wh-cbk-new-completed",
        acmepay("deposit.completed", "dep_cbk_new", "75.25", serde_json::json!({})),
    )
    .await?;
    wait_status(&p, &pg, "acmepay:dep_cbk_new", "COMPLETED").await?;
    until("both deposits posted", &p, || async {
        Ok((posted(&pg, "acct_cbk").await? == 19_525).then_some(()))
    })
    .await?;

    // 3. Callbacks that cannot apply: rejections with reasons, the transfer untouched.
    create_deposit(&p, &token, "dep-api-2", "50.00", "dep_cbk_2").await?;
    wait_status(&p, &pg, "dep-api-2", "APPROVED").await?;
    webhook(
        &p,
        &acme,
        "wh-cbk-2-completed",
        acmepay("deposit.completed", "dep_cbk_2", "55.00", serde_json::json!({})),
    )
    .await?;
    let (transfer, input, _) =
        rejection(&p, &pg, "states 55.00 USD, but transfer dep-api-2 is for 50.00 USD").await?;
    assert_eq!((transfer.as_deref(), input.as_str()), (Some("dep-api-2"), "webhook.received"));
    webhook(
        &p,
        &acme,
        "wh-cbk-nobody",
        acmepay("deposit.completed", "dep_cbk_nobody", "5.00", serde_json::json!({})),
    )
    .await?;
    let (transfer, _, _) =
        rejection(&p, &pg, "acmepay callback deposit.completed: unknown reference acmepay/dep_cbk_nobody")
            .await?;
    assert_eq!(transfer, None);
    webhook(
        &p,
        &acme,
        "wh-cbk-2-bad",
        acmepay("deposit.completed", "dep_cbk_2", "50.001", serde_json::json!({})),
    )
    .await?;
    rejection(&p, &pg, "cannot be resolved: amount: USD has 2 decimal places; '50.001' has more").await?;
    assert_eq!(status_of(&pg, "dep-api-2").await?.as_deref(), Some("APPROVED"));
    assert_eq!(posted(&pg, "acct_cbk").await?, 19_525, "nothing posted by a rejected callback");

    // Every screening was decided by the real risk processor (none stands in for it).
    let decided: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transfer_status_history WHERE tenant_id = $1 AND status = 'APPROVED'",
    )
    .bind(TENANT)
    .fetch_one(&pg)
    .await?;
    assert_eq!(decided, 3);
    p.assert_reconciled().await;
    p.finish().await
}
