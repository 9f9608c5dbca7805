//! Reading personal data (issue 13): signed kycflow webhooks carrying personal data → sealed at the edge
//! → the Postgres sink's `personal_data` (sealed values only) → `GET /v1/users/{id}/personal-data`.
//! An admin key reads the values in clear (equal to what was sent), a viewer key and a keyless read on
//! the trusted network read them masked, another tenant's key is refused; every read is a
//! `personal_data.read` record in `audit_log` (actor, resource, clear/masked, ip), and an API that
//! cannot state a read on the trail (no broker) answers 503 and serves nothing. After
//! `riverbank gdpr erase` the subject's values answer `erased` (another subject's still open).
//! ClickHouse holds no user id that was sent, only their pseudonyms, and no row of the webhooks.
use std::time::{Duration, Instant};

use riverbank::demo::{Delivery, Sender};
use riverbank_crypto::keys::DataClass;
use riverbank_crypto::mask::mask;
use riverbank_ingest::core::schemes::sign::Signer;
use riverbank_schemas::Environment;

use crate::harness::Pipeline;

const TENANT: &str = "pd-t";
const OTHER: &str = "pd-other";
const KYCFLOW_SECRET: &str = "e2e-pd-kycflow-secret-0123456789";
const COMPONENTS: [&[&str]; 6] = [
    &["ingest"],
    &["process", "kyc"],
    &["process", "audit"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
    &["api"],
];
const WAIT: Duration = Duration::from_secs(90);
const U1: &str = "usr_pd_1";
const U2: &str = "usr_pd_2";

/// u1's values, by pointer: (class, what was sent).
const U1_VALUES: &[(&str, DataClass, &str)] = &[
    ("/applicant/name", DataClass::PII_NAME, "Marguerite Ollendorff"),
    ("/applicant/dob", DataClass::PII_DOB, "1961-04-09"),
    ("/applicant/pan", DataClass::PII_NATIONAL_ID, "OLLPM4412K"),
    ("/applicant/phone", DataClass::PII_PHONE, "+91 98450 44120"),
    ("/applicant/email", DataClass::PII_EMAIL, "marguerite.o4412@example.org"),
    ("/documents/0/number", DataClass::PII_DOCUMENT, "OLLPM4412K"),
    ("/bank/accountNumber", DataClass::FINANCIAL_BANK_ACCOUNT, "5500441299887766"),
];

fn sender() -> anyhow::Result<Sender> {
    let providers = riverbank_ingest::core::provider::load(&[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Sender {
        provider: "kycflow".to_owned(),
        tenant_id: TENANT.to_owned(),
        environment: Environment::Live,
        scheme: providers["kycflow"].signature.clone(),
        signer: Signer::Secret(KYCFLOW_SECRET.to_owned()),
    })
}

fn sent(pointer: &str) -> &'static str {
    U1_VALUES.iter().find(|(p, _, _)| *p == pointer).map(|(_, _, v)| *v).expect("a sent value")
}

fn kycflow_u1() -> serde_json::Value {
    serde_json::json!({
        "transactionId": "kf_pd_1", "status": "auto_approved", "userId": U1, "tier": 1, "checks": ["pan", "bank"],
        "applicant": {
            "name": sent("/applicant/name"), "dob": sent("/applicant/dob"), "pan": sent("/applicant/pan"),
            "phone": sent("/applicant/phone"), "email": sent("/applicant/email"),
            "address": {"line1": "12 Ollendorff Lane", "city": "Bengaluru", "pincode": "560001"}
        },
        "documents": [{"type": "pan", "number": sent("/documents/0/number")}],
        "bank": {"accountNumber": sent("/bank/accountNumber"), "ifsc": "HDFC0000123"},
        "timestamp": (chrono::Utc::now() - chrono::Duration::seconds(30)).timestamp_millis()
    })
}

fn kycflow_u2() -> serde_json::Value {
    serde_json::json!({
        "transactionId": "kf_pd_2", "status": "auto_approved", "userId": U2, "tier": 1, "checks": ["pan"],
        "applicant": {"name": "Theodric Vanstraaten", "pan": "VNSPT7781L"},
        "timestamp": (chrono::Utc::now() - chrono::Duration::seconds(20)).timestamp_millis()
    })
}

async fn key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<(String, String)> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    let token = out.trim().to_owned();
    // rbk_{env}_{key id}_{secret}
    let key_id = token.split('_').nth(2).unwrap_or_default().to_owned();
    anyhow::ensure!(key_id.starts_with('k'), "a key id in the token");
    Ok((token, key_id))
}

/// `GET /v1/users/{user}/personal-data` with `token` (none: the trusted network): (status, body).
async fn read(
    p: &Pipeline,
    token: Option<&str>,
    user: &str,
    history: bool,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut req = p
        .http
        .get(format!("{}/v1/users/{user}/personal-data", p.api_url))
        .query(&[("tenant_id", TENANT), ("environment", "live")])
        .header("x-forwarded-for", "203.0.113.77")
        .header("user-agent", "riverbank-e2e-personal");
    if history {
        req = req.query(&[("history", "true")]);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// (actor, resource type, resource id, after, ip, user agent) of an audited read.
type AuditedRead = (String, String, String, Option<String>, Option<String>, Option<String>);

/// The answer's values by pointer.
fn by_pointer(v: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    v["values"]
        .as_array()
        .map(|a| {
            a.iter().map(|x| (x["pointer"].as_str().unwrap_or_default().to_owned(), x.clone())).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_read_personal_data_in_clear_others_masked_every_read_audited_and_erasure_ends_it(
) -> anyhow::Result<()> {
    let extra = format!(
        "[[ingest.webhooks]]\nprovider = \"kycflow\"\ntenant_id = \"{TENANT}\"\nenvironment = \"live\"\nsecrets = [\"{KYCFLOW_SECRET}\"]\n\
         [keys]\ncache_ttl_ms = 1000\n"
    );
    let mut p = Pipeline::start_with("personal", &[], &COMPONENTS, &extra).await?;
    let ((admin, admin_id), (viewer, viewer_id), (stranger, _)) =
        (key(&p, TENANT, "admin").await?, key(&p, TENANT, "viewer").await?, key(&p, OTHER, "admin").await?);
    let kyf = sender()?;
    for body in [kycflow_u1(), kycflow_u2()] {
        let delivery = Delivery { id: "-".to_owned(), body: serde_json::to_vec(&body)? };
        let status = riverbank::demo::send(&p.http, &p.ingest_url, &kyf, &delivery).await?;
        anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "kycflow webhook: {status}");
    }

    // The Postgres sink keeps every sealed value of both bodies, sealed.
    let pg = p.pg().await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM personal_data WHERE tenant_id = $1 AND subject = $2")
                .bind(TENANT)
                .bind(U1)
                .fetch_one(&pg)
                .await
                .unwrap_or(0);
        // name, dob, pan, phone, email, address, document number, bank account.
        if n == 8 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} of u1's 8 values stored; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT sealed FROM personal_data WHERE tenant_id = $1")
        .bind(TENANT)
        .fetch_all(&pg)
        .await?;
    assert!(stored.iter().all(|s| s.starts_with("rbf1.")), "only sealed values");
    for (_, _, clear) in U1_VALUES {
        assert!(!stored.iter().any(|s| s.contains(clear)), "{clear} stored in clear");
    }

    // An admin reads u1 in clear: what was sent.
    let (status, v) = read(&p, Some(&admin), U1, false).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access"], "clear", "{v}");
    let values = by_pointer(&v);
    for (pointer, class, clear) in U1_VALUES {
        let got = values.get(*pointer).unwrap_or_else(|| panic!("{pointer} in {v}"));
        assert_eq!(got["value"], *clear, "{pointer}: {v}");
        assert_eq!(got["data_class"], class.as_str(), "{pointer}");
        assert_eq!(got["provider"], "kycflow", "{pointer}");
    }
    assert_eq!(
        values["/applicant/address"]["value"],
        serde_json::json!({"line1": "12 Ollendorff Lane", "city": "Bengaluru", "pincode": "560001"})
    );
    assert_eq!(values.len(), 8, "{v}");

    // A viewer reads u1 masked: nothing sent appears; each value is its class's mask.
    let (status, masked) = read(&p, Some(&viewer), U1, false).await?;
    assert_eq!(status, 200, "{masked}");
    assert_eq!(masked["access"], "masked", "{masked}");
    let text = masked.to_string();
    for (pointer, class, clear) in U1_VALUES {
        assert!(!text.contains(clear), "{clear} shown to a viewer: {masked}");
        assert_eq!(by_pointer(&masked)[*pointer]["value"], mask(*class, clear), "{pointer}");
    }
    assert_eq!(by_pointer(&masked)["/applicant/name"]["value"], "M. O.");
    // The trusted network without a key (api.require_api_key = false): masked too.
    let (status, keyless) = read(&p, None, U1, true).await?;
    assert_eq!((status, keyless["access"].as_str()), (200, Some("masked")), "{keyless}");
    // Another tenant's key: refused, nothing served.
    let (status, refused) = read(&p, Some(&stranger), U1, false).await?;
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("wrong_tenant")), "{refused}");
    assert!(refused.get("values").is_none());

    // An API whose reads cannot be stated on the audit trail (no broker): 503, nothing opened or served.
    let blind_addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let blind_env = [
        ("RIVERBANK__KAFKA__BROKERS", "127.0.0.1:1".to_owned()),
        ("RIVERBANK__INGEST__PRODUCE_TIMEOUT_MS", "1000".to_owned()),
        ("RIVERBANK__API__LISTEN_ADDR", blind_addr.clone()),
    ];
    p.spawn_env("api-without-broker", &["api"], &blind_env)?;
    let deadline = Instant::now() + WAIT;
    let (status, blind) = loop {
        let resp = p
            .http
            .get(format!("http://{blind_addr}/v1/users/{U1}/personal-data"))
            .query(&[("tenant_id", TENANT), ("environment", "live")])
            .bearer_auth(&admin)
            .send()
            .await;
        if let Ok(r) = resp {
            let status = r.status().as_u16();
            break (status, r.text().await?);
        }
        anyhow::ensure!(Instant::now() < deadline, "the API without a broker never answered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 503, "{blind}");
    assert!(blind.contains("audit_unavailable"), "{blind}");
    for (_, _, clear) in U1_VALUES {
        assert!(!blind.contains(clear), "{clear} served unaudited: {blind}");
    }
    p.kill_named("api-without-broker").await?;

    // Each read served is one personal_data.read record (the refused ones are none).
    let deadline = Instant::now() + WAIT;
    let reads = loop {
        let rows: Vec<AuditedRead> = sqlx::query_as(
            "SELECT actor, resource_type, resource_id, after, ip, user_agent FROM audit_log
             WHERE tenant_id = $1 AND action = 'personal_data.read' ORDER BY seq",
        )
        .bind(TENANT)
        .fetch_all(&pg)
        .await?;
        if rows.len() >= 3 {
            break rows;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of 3 reads audited; logs in {}",
            rows.len(),
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(reads.len(), 3, "{reads:?}");
    let actors: Vec<&str> = reads.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actors,
        [format!("key:{admin_id}").as_str(), format!("key:{viewer_id}").as_str(), "system:trusted-network"]
    );
    for (i, r) in reads.iter().enumerate() {
        assert_eq!((r.1.as_str(), r.2.as_str()), ("user", U1), "{r:?}");
        let after = r.3.as_deref().unwrap_or_default();
        assert!(after.starts_with(if i == 0 { "clear " } else { "masked " }), "{r:?}");
        assert!(after.contains("pii.name") && after.contains("financial.bank_account"), "{r:?}");
        assert!(r.4.is_some() && r.5.as_deref() == Some("riverbank-e2e-personal"), "{r:?}");
    }

    // ClickHouse: the users' pseudonyms, never their ids, and nothing of the webhooks.
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let pkey = riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?;
    let deadline = Instant::now() + WAIT;
    let ids = loop {
        let ids: Vec<String> = p
            .ch()
            .query("SELECT DISTINCT user_id FROM kyc_facts WHERE tenant_id = ? ORDER BY user_id")
            .bind(TENANT)
            .fetch_all()
            .await?;
        if ids.len() == 2 {
            break ids;
        }
        anyhow::ensure!(Instant::now() < deadline, "clickhouse kyc_facts users: {ids:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut want = vec![
        riverbank_crypto::pseudonym::pseudonym(&pkey, TENANT, U1),
        riverbank_crypto::pseudonym::pseudonym(&pkey, TENANT, U2),
    ];
    want.sort();
    assert_eq!(ids, want);
    let webhook_events: u64 =
        p.ch().query("SELECT count() FROM events WHERE event_type = 'webhook.received'").fetch_one().await?;
    assert_eq!(webhook_events, 0, "ClickHouse counts no webhook it did not count before");
    let ch_tables = p
        .http
        .post(&p.ch_url)
        .body(format!("SELECT * FROM `{}`.kyc_facts FORMAT JSONEachRow", p.ch_db))
        .send()
        .await?
        .text()
        .await?;
    assert!(!ch_tables.contains(U1) && !ch_tables.contains(U2), "a user id in ClickHouse");

    // Erase u1: its values answer erased (once every process's key cache lapsed); u2's still open.
    let out =
        p.cli(&["gdpr", "erase", "--tenant", TENANT, "--environment", "live", "--subject", U1], &[]).await?;
    anyhow::ensure!(out.chars().any(|c| c.is_ascii_digit()), "gdpr erase prints the count: {out}");
    let deadline = Instant::now() + WAIT;
    let erased = loop {
        let (status, v) = read(&p, Some(&admin), U1, true).await?;
        assert_eq!(status, 200, "{v}");
        let all = v["values"].as_array().cloned().unwrap_or_default();
        if !all.is_empty() && all.iter().all(|x| x["erased"] == true) {
            break v;
        }
        anyhow::ensure!(Instant::now() < deadline, "u1 not erased: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for x in erased["values"].as_array().into_iter().flatten() {
        assert!(x.get("value").is_none(), "an erased value is served: {x}");
    }
    let text = erased.to_string();
    for (_, _, clear) in U1_VALUES {
        assert!(!text.contains(clear), "{clear} after the erasure");
    }
    let (status, v) = read(&p, Some(&admin), U2, false).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(by_pointer(&v)["/applicant/name"]["value"], "Theodric Vanstraaten", "{v}");
    assert_eq!(by_pointer(&v)["/applicant/pan"]["value"], "VNSPT7781L", "{v}");
    pg.close().await;
    p.finish().await
}
