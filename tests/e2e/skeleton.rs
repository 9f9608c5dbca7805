//! The walking skeleton: signed webhooks in, exact rows out in Postgres and ClickHouse, through the API.
use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use riverbank::demo::{analytics_count, audit_count, send_all, Delivery, Sender};
use riverbank_schemas::Environment;

use crate::harness::{deliveries, sender, Pipeline};

fn expected(work: &[(Sender, Delivery)]) -> HashMap<String, (u64, u64)> {
    let mut want: HashMap<String, (u64, u64)> = HashMap::new();
    for (s, d) in work {
        let e = want.entry(s.tenant_id.clone()).or_default();
        e.0 += 1;
        e.1 += d.body.len() as u64;
    }
    want
}

fn count(statuses: &[reqwest::Result<StatusCode>], code: StatusCode) -> usize {
    statuses.iter().filter(|s| matches!(s, Ok(c) if *c == code)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_land_exactly_once_and_rejected_ones_never() -> anyhow::Result<()> {
    let p = Pipeline::start("skeleton", &[("tenant-a", 1), ("tenant-b", 2)]).await?;
    let (a, b) = (sender("tenant-a", 1), sender("tenant-b", 2));
    let mut good = deliveries(&a, "good", 600);
    good.extend(deliveries(&b, "good", 400));
    let want = expected(&good);

    // 50 forged: signed with a key that is not the tenant's, or claiming the other tenant.
    let mut forged = Vec::new();
    for i in 0..50 {
        let impostor = if i % 2 == 0 { sender("tenant-a", 99) } else { sender("tenant-b", 1) };
        let body = riverbank::demo::deposit_body(10_000 + i, "forged");
        forged.push((impostor, Delivery { id: format!("msg_forged_{i}"), body }));
    }
    // 5 oversized, validly signed.
    let oversized: Vec<(Sender, Delivery)> = (0..5)
        .map(|i| {
            let mut body = br#"{"type":"deposit.completed","pad":""#.to_vec();
            body.extend(std::iter::repeat_n(b'x', p.body_bytes_max + 1));
            body.extend(br#""}"#);
            (a.clone(), Delivery { id: format!("msg_big_{i}"), body })
        })
        .collect();
    // 20 redeliveries of accepted webhooks (same id, same body): accepted again, stored once.
    let redelivered: Vec<(Sender, Delivery)> = good.iter().step_by(50).cloned().collect();

    let good_statuses = send_all(&p.http, &p.ingest_url, good).await;
    assert_eq!(count(&good_statuses, StatusCode::ACCEPTED), 1000, "every valid webhook is accepted");
    let forged_statuses = send_all(&p.http, &p.ingest_url, forged).await;
    assert_eq!(count(&forged_statuses, StatusCode::UNAUTHORIZED), 50, "{forged_statuses:?}");
    let big_statuses = send_all(&p.http, &p.ingest_url, oversized).await;
    assert_eq!(count(&big_statuses, StatusCode::PAYLOAD_TOO_LARGE), 5, "{big_statuses:?}");
    let again = send_all(&p.http, &p.ingest_url, redelivered).await;
    assert_eq!(count(&again, StatusCode::ACCEPTED), 20);

    // A rejected request says what is wrong, in the one error shape.
    let forged_one = p
        .http
        .post(format!("{}/v1/webhooks/acmepay/tenant-a", p.ingest_url))
        .header("webhook-id", "msg_x")
        .header("webhook-timestamp", chrono::Utc::now().timestamp().to_string())
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await?;
    assert_eq!(forged_one.status(), StatusCode::UNAUTHORIZED);
    let err: serde_json::Value = forged_one.json().await?;
    assert_eq!(err["error"]["code"], "invalid_signature", "{err}");

    p.wait_exact(&want, Duration::from_secs(90)).await?;
    for (tenant, &(rows, bytes)) in &want {
        assert_eq!(
            audit_count(&p.http, &p.api_url, tenant, Environment::Live).await?,
            (rows, bytes),
            "{tenant} via /v1/audit"
        );
        assert_eq!(
            analytics_count(&p.http, &p.api_url, tenant, Environment::Live).await?,
            (rows, bytes),
            "{tenant} via /v1/analytics/audit-volume"
        );
        assert_eq!(
            audit_count(&p.http, &p.api_url, tenant, Environment::Sandbox).await?,
            (0, 0),
            "sandbox stays empty"
        );
    }
    let health: serde_json::Value = p.http.get(format!("{}/health", p.api_url)).send().await?.json().await?;
    assert_eq!(health["status"], "ok", "{health}");
    p.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_and_sinks_killed_mid_stream_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let mut p = Pipeline::start("restart", &[("tenant-a", 3), ("tenant-b", 4)]).await?;
    let (a, b) = (sender("tenant-a", 3), sender("tenant-b", 4));
    let mut all = deliveries(&a, "r", 500);
    all.extend(deliveries(&b, "r", 500));
    // Interleave tenants so both flow while components die.
    let (first, second): (Vec<_>, Vec<_>) = all.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let all: Vec<(Sender, Delivery)> =
        first.into_iter().zip(second).flat_map(|((_, x), (_, y))| [x, y]).collect();
    let want = expected(&all);
    let chunks: Vec<Vec<(Sender, Delivery)>> = all.chunks(250).map(<[_]>::to_vec).collect();
    let restartable: [&[&str]; 3] = [&["process", "audit"], &["sink", "postgres"], &["sink", "clickhouse"]];

    let mut accepted = 0;
    for (round, chunk) in chunks.into_iter().enumerate() {
        let statuses = send_all(&p.http, &p.ingest_url, chunk).await;
        accepted += count(&statuses, StatusCode::ACCEPTED);
        // Kill while the previous chunk is still being processed and written.
        tokio::time::sleep(Duration::from_millis(150 * round as u64)).await;
        for c in restartable {
            p.kill(c).await?;
        }
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for c in restartable {
            p.spawn(c)?;
        }
    }
    assert_eq!(accepted, 1000);
    p.wait_exact(&want, Duration::from_secs(120)).await?;
    for tenant in want.keys() {
        assert_eq!(
            p.ch_distinct_ids(tenant).await?,
            want[tenant].0,
            "{tenant}: distinct audit ids in clickhouse"
        );
        assert_eq!(audit_count(&p.http, &p.api_url, tenant, Environment::Live).await?, want[tenant]);
    }
    p.assert_reconciled().await;
    p.finish().await
}
