//! The PII scan (issue 13, "Sensitive data"): a full pipeline (ingest, every processor, both sinks, the
//! API) at TRACE logging gets KYC and payment webhooks carrying seeded, unmistakable personal values of
//! every data class, normal traffic, and two dead-lettered deliveries holding seeded values (one JSON,
//! one not). Once the sinks have caught up, every topic of the test's prefix, every table of every
//! schema of its Postgres database, every table of its ClickHouse database, every process's log and
//! every process's `/metrics` are scanned: no seeded value appears, in clear, JSON-escaped or
//! base64-encoded (the decoded forms are searched too). The sealed values found are shown to open to
//! the seeded ones (so the scan looks where the data is). Then `riverbank gdpr erase` destroys one
//! subject's keys: every sealed value of that subject found anywhere no longer opens (its key is
//! `Erased`), another subject's still does.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use riverbank::demo::{Delivery, Sender};
use riverbank_crypto::field::{self, FieldContext};
use riverbank_ingest::core::schemes::sign::Signer;
use riverbank_runtime::keystore::{KeyStore, KeyStoreError};
use riverbank_schemas::Environment;

use crate::harness::{free_port, Pipeline};

const TENANT: &str = "pii-t";
const IDCHECK_SECRET: &str = "e2e-pii-idcheck-secret-0123456789";
const KYCFLOW_SECRET: &str = "e2e-pii-kycflow-secret-0123456789";
const WAIT: Duration = Duration::from_secs(90);

/// Three users (u1 and u3 through kycflow, u2 through idcheck) and a body without its subject.
const U1: &str = "usr_pii_1";
const U2: &str = "usr_pii_2";
const U3: &str = "usr_pii_3";

/// Every seeded value, by what it is. None of them may appear anywhere but sealed.
const SEEDED: &[(&str, &str)] = &[
    // u1 (kycflow, then an acmepay payout to their bank)
    ("u1 name", "Zebulon Quixotehaven"),
    ("u1 father", "Ignatius Quixotehaven"),
    ("u1 dob", "1931-02-17"),
    ("u1 pan", "QZXPK7731Q"),
    ("u1 aadhaar", "7731 9902 4418"),
    ("u1 phone", "+91 99877 31024"),
    ("u1 email", "zebulon.q7731@example.org"),
    ("u1 address", "77 Quixotehaven Crescent"),
    ("u1 document url", "https://files.kycflow.example/zq7731-pan.jpg"),
    ("u1 bank account", "770012349988123"),
    ("u1 ip", "198.51.100.77"),
    ("u1 iban", "GB33QZXP77311234567890"),
    // u2 (idcheck)
    ("u2 first name", "Philomena"),
    ("u2 last name", "Xandervoort-Quill"),
    ("u2 dob", "1944-12-03"),
    ("u2 ssn", "899-77-3141"),
    ("u2 phone", "+1 415 555 0199"),
    ("u2 street", "4419 Wyvernhollow Lane"),
    ("u2 place of birth", "Vexholmsund"),
    ("u2 passport", "XQ7731904"),
    ("u2 email", "philomena.xq@example.net"),
    // u3 (kycflow)
    ("u3 name", "Ottoline Brackenwhistle"),
    ("u3 pan", "BRKPO4471Z"),
    ("u3 aadhaar", "4471 2208 9135"),
    ("u3 dob", "1952-06-30"),
    // a kycflow body without its user id (sealed under the tenant's fallback subject)
    ("no-subject name", "Cassius Nobodyfield"),
    ("no-subject pan", "NBDPC5520R"),
    // dead letters: an idcheck delivery of an unknown type (JSON), a kycflow body that is not JSON
    ("dead JSON name", "Dorabella Unmappington"),
    ("dead JSON tin", "899-41-2207"),
    ("dead raw name", "Fitzgerald Notajsonbody"),
    ("dead raw pan", "NJSPF0042X"),
];

fn seeded(what: &str) -> &'static str {
    SEEDED.iter().find(|(w, _)| *w == what).map(|(_, v)| *v).expect("seeded value")
}

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

async fn webhook(p: &Pipeline, s: &Sender, id: &str, body: Vec<u8>, want: &str) -> anyhow::Result<()> {
    let delivery = Delivery { id: id.to_owned(), body };
    let status = riverbank::demo::send(&p.http, &p.ingest_url, s, &delivery).await?;
    anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "{} webhook ({want}): {status}", s.provider);
    Ok(())
}

fn now_rfc3339(age_s: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(age_s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn kycflow_u1() -> serde_json::Value {
    serde_json::json!({
        "transactionId": "kf_pii_1", "status": "auto_approved", "userId": U1, "tier": 1,
        "checks": ["pan", "aadhaar", "selfie", "bank"],
        "applicant": {
            "name": seeded("u1 name"), "fatherName": seeded("u1 father"), "dob": seeded("u1 dob"),
            "pan": seeded("u1 pan"), "aadhaar": seeded("u1 aadhaar"), "phone": seeded("u1 phone"),
            "email": seeded("u1 email"),
            "address": {"line1": seeded("u1 address"), "city": "Bengaluru", "pincode": "560001"}
        },
        "documents": [
            {"type": "pan", "number": seeded("u1 pan"), "imageUrl": seeded("u1 document url")},
            {"type": "aadhaar", "number": seeded("u1 aadhaar")}
        ],
        "bank": {"accountNumber": seeded("u1 bank account"), "ifsc": "HDFC0000123", "accountHolder": seeded("u1 name")},
        "ipAddress": seeded("u1 ip"),
        "timestamp": (chrono::Utc::now() - chrono::Duration::seconds(30)).timestamp_millis()
    })
}

fn kycflow_u3() -> serde_json::Value {
    serde_json::json!({
        "transactionId": "kf_pii_3", "status": "auto_approved", "userId": U3, "tier": 1, "checks": ["pan"],
        "applicant": {"name": seeded("u3 name"), "pan": seeded("u3 pan"), "aadhaar": seeded("u3 aadhaar"), "dob": seeded("u3 dob")},
        "documents": [{"type": "pan", "number": seeded("u3 pan")}],
        "timestamp": (chrono::Utc::now() - chrono::Duration::seconds(25)).timestamp_millis()
    })
}

fn kycflow_no_subject() -> serde_json::Value {
    serde_json::json!({
        "transactionId": "kf_pii_x", "status": "needs_review", "tier": 0, "checks": ["pan"],
        "applicant": {"name": seeded("no-subject name"), "pan": seeded("no-subject pan")},
        "reviewReason": "face_match_low",
        "timestamp": (chrono::Utc::now() - chrono::Duration::seconds(20)).timestamp_millis()
    })
}

fn idcheck_u2(kind: &str, name: &str, tin: &str) -> serde_json::Value {
    serde_json::json!({
        "applicantId": format!("appl-pii-{kind}"), "inspectionId": "insp-pii-2",
        "correlationId": format!("req-pii-{kind}"), "levelName": "basic-kyc-level", "externalUserId": U2,
        "type": kind, "reviewStatus": "completed", "createdAt": now_rfc3339(15),
        "reviewResult": {"reviewAnswer": "GREEN"},
        "info": {
            "firstName": name, "lastName": seeded("u2 last name"), "dob": seeded("u2 dob"),
            "placeOfBirth": seeded("u2 place of birth"), "country": "USA", "tin": tin,
            "phone": seeded("u2 phone"),
            "addresses": [{"street": seeded("u2 street"), "town": "Springfield", "postCode": "62704", "country": "USA"}],
            "idDocs": [{"idDocType": "PASSPORT", "country": "USA", "number": seeded("u2 passport"),
                        "firstName": name, "lastName": seeded("u2 last name"), "dob": seeded("u2 dob")}]
        },
        "email": seeded("u2 email")
    })
}

/// An acmepay payout to u1's bank account (deposit.received creates the transfer; the bank block is
/// declared sensitive).
fn acmepay_u1(kind: &str) -> serde_json::Value {
    serde_json::json!({
        "type": kind, "api_version": "2024-06-01", "created_at": now_rfc3339(10),
        "data": {
            "object": "deposit", "id": "dep_pii_1", "user_id": U1,
            "amount": {"value": "125.00", "currency": "USD"},
            "destination_account": "acct_pii_1",
            "bank": {"account_number": seeded("u1 bank account"), "iban": seeded("u1 iban"),
                     "holder_name": seeded("u1 name"), "holder_address": seeded("u1 address")}
        }
    })
}

/// Every process of the pipeline: (log name, arguments).
const PROCESSES: &[(&str, &[&str])] = &[
    ("ingest", &["ingest"]),
    ("process-audit", &["process", "audit"]),
    ("process-risk", &["process", "risk"]),
    ("process-kyc", &["process", "kyc"]),
    ("process-fx", &["process", "fx"]),
    ("process-billing", &["process", "billing"]),
    ("process-transfers", &["process", "transfers"]),
    ("sink-postgres", &["sink", "postgres"]),
    ("sink-clickhouse", &["sink", "clickhouse"]),
    ("api", &["api"]),
];

/// Where a seeded value was found, if anywhere in `haystack`: in clear (case-insensitive), JSON-escaped,
/// with its spaces and dashes dropped, or inside any base64 (standard or URL-safe) token, decoded.
fn find_seeded(haystack: &[u8]) -> Vec<&'static str> {
    let text = String::from_utf8_lossy(haystack).into_owned();
    let mut forms = vec![text.to_lowercase(), unescape(&text).to_lowercase()];
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=-_".contains(c))) {
        if token.len() < 12 {
            continue;
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            if let Ok(decoded) = engine.decode(token.trim_end_matches('=')).or_else(|_| engine.decode(token))
            {
                let d = String::from_utf8_lossy(&decoded).into_owned();
                forms.push(unescape(&d).to_lowercase());
                forms.push(d.to_lowercase());
            }
        }
    }
    let compact: Vec<String> = forms.iter().map(|f| f.replace([' ', '-'], "")).collect();
    let mut found = Vec::new();
    for (what, value) in SEEDED {
        let v = value.to_lowercase();
        let v_compact = v.replace([' ', '-'], "");
        let escaped = serde_json::to_string(value).unwrap_or_default().to_lowercase();
        let escaped = escaped.trim_matches('"').to_owned();
        let hit = forms.iter().any(|f| f.contains(&v) || f.contains(&escaped))
            || (v_compact.len() >= 8 && compact.iter().any(|f| f.contains(&v_compact)));
        if hit {
            found.push(*what);
        }
    }
    found
}

/// JSON string escapes undone (`\"`, `\\`, `\/`, `\uXXXX`), repeatedly for nested encodings.
fn unescape(s: &str) -> String {
    let mut cur = s.to_owned();
    for _ in 0..3 {
        let mut out = String::with_capacity(cur.len());
        let mut chars = cur.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(ch) => out.push(ch),
                        None => out.push_str(&hex),
                    }
                }
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        if out == cur {
            break;
        }
        cur = out;
    }
    cur
}

/// Every sealed envelope (`rbf1.…`) in `haystack`.
fn envelopes(haystack: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    text.match_indices("rbf1.")
        .filter_map(|(at, _)| {
            let tail: String =
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect();
            field::parse(&tail).map(|_| tail)
        })
        .collect()
}

/// Every place the scan reads: (what, bytes).
async fn haystacks(p: &Pipeline, metrics: &[(String, String)]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    // Topics of the test's prefix, from the beginning.
    let brokers = crate::harness::brokers();
    let prefix = p.topic_prefix.clone();
    let mut k = riverbank_runtime::Config::load(Some(&p.config))?.kafka;
    k.brokers = brokers.clone();
    let topics: Vec<String> = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let md = c.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(md.topics().iter().map(|t| t.name().to_owned()).filter(|n| n.starts_with(&prefix)).collect())
    })
    .await??;
    anyhow::ensure!(topics.len() > 10, "the pipeline's topics: {topics:?}");
    for topic in topics {
        let (kc, t) = (k.clone(), topic.clone());
        let records = tokio::task::spawn_blocking(move || {
            riverbank_runtime::kafka::read_all(&kc, &t, 1_000_000, Duration::from_secs(60))
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
        for r in records {
            let mut bytes = r.payload.clone();
            bytes.extend(r.key.unwrap_or_default());
            for (hk, hv) in &r.headers {
                bytes.extend(format!("\n{hk}={hv}").into_bytes());
            }
            out.push((format!("topic {topic}/{}@{}", r.partition, r.offset), bytes));
        }
    }
    // Every table of every schema of the test's Postgres database.
    let pg = p.pg().await?;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&pg)
    .await?;
    anyhow::ensure!(tables.iter().any(|(s, _)| s == "keys"), "the key store's schema: {tables:?}");
    for (schema, table) in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{schema}\".\"{table}\" t"))
                .fetch_all(&pg)
                .await?;
        for (i, row) in rows.into_iter().enumerate() {
            out.push((format!("postgres {schema}.{table} row {i}"), row.into_bytes()));
        }
    }
    pg.close().await;
    // Every table of the test's ClickHouse database.
    let ch_tables: Vec<String> = {
        let body =
            ch_query(p, &format!("SELECT name FROM system.tables WHERE database = '{}' FORMAT TSV", p.ch_db))
                .await?;
        body.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    };
    anyhow::ensure!(!ch_tables.is_empty(), "no ClickHouse tables in {}", p.ch_db);
    for t in &ch_tables {
        let body = ch_query(p, &format!("SELECT * FROM `{}`.`{t}` FORMAT JSONEachRow", p.ch_db)).await?;
        out.push((format!("clickhouse {t}"), body.into_bytes()));
    }
    // Every process's log.
    for entry in std::fs::read_dir(&p.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            out.push((format!("log {}", path.display()), std::fs::read(&path)?));
        }
    }
    // Every process's /metrics.
    for (name, addr) in metrics {
        let resp = p.http.get(format!("http://{addr}/metrics")).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{name}: /metrics at {addr}: {}", resp.status());
        let body = resp.text().await?;
        out.push((format!("metrics of {name}"), body.into_bytes()));
    }
    Ok(out)
}

async fn ch_query(p: &Pipeline, q: &str) -> anyhow::Result<String> {
    let resp = p.http.post(&p.ch_url).body(q.to_owned()).send().await?;
    anyhow::ensure!(resp.status().is_success(), "clickhouse {q}: {}", resp.status());
    Ok(resp.text().await?)
}

/// Opens `sealed` where it was found (`pointer` in the body of record `record`); `Err` says why not.
async fn open_sealed(keys: &KeyStore, sealed: &str, pointer: &str, record: &str) -> Result<Vec<u8>, String> {
    let s = field::parse(sealed).ok_or("not an envelope")?;
    let dek = keys.open_key(TENANT, Environment::Live, &s.key_id).await.map_err(|e| format!("{e:?}"))?;
    let ctx =
        FieldContext { tenant: TENANT, environment: "live", subject: &s.subject, field: pointer, record };
    field::open(&dek, &ctx, sealed).map_err(|e| e.to_string())
}

/// Every (pointer, sealed value) in a JSON body.
fn sealed_in(v: &serde_json::Value, at: &mut String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) if field::is_sealed(s) => out.push((at.clone(), s.clone())),
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                sealed_in(child, at, out);
                at.truncate(len);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                sealed_in(child, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

async fn key_store(p: &Pipeline) -> anyhow::Result<KeyStore> {
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let pool = p.pg().await?;
    riverbank_runtime::keystore::from_config(pool, &cfg.keys).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seeded_personal_value_is_anywhere_in_clear_and_erasure_makes_a_subject_unreadable(
) -> anyhow::Result<()> {
    let mut extra = String::new();
    for (provider, secret) in [("idcheck", IDCHECK_SECRET), ("kycflow", KYCFLOW_SECRET)] {
        extra.push_str(&format!(
            "[[ingest.webhooks]]\nprovider = \"{provider}\"\ntenant_id = \"{TENANT}\"\nenvironment = \"live\"\nsecrets = [\"{secret}\"]\n"
        ));
    }
    let mut p = Pipeline::start_with("pii", &[(TENANT, 41)], &[], &extra).await?;
    let mut metrics = Vec::new();
    for (name, args) in PROCESSES {
        let addr = format!("127.0.0.1:{}", free_port());
        let envs =
            [("RUST_LOG", "trace".to_owned()), ("RIVERBANK__TELEMETRY__METRICS_LISTEN_ADDR", addr.clone())];
        p.spawn_env(name, args, &envs)?;
        metrics.push((name.to_string(), addr));
    }
    p.wait_healthy(&p.ingest_url.clone()).await?;
    p.wait_healthy(&p.api_url.clone()).await?;

    let (idc, kyf, acme) = (
        sender("idcheck", IDCHECK_SECRET)?,
        sender("kycflow", KYCFLOW_SECRET)?,
        crate::harness::sender(TENANT, 41),
    );
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    webhook(&p, &kyf, "-", json(kycflow_u1()), "u1").await?;
    webhook(
        &p,
        &idc,
        "-",
        json(idcheck_u2("applicantApproved", seeded("u2 first name"), seeded("u2 ssn"))),
        "u2",
    )
    .await?;
    webhook(&p, &kyf, "-", json(kycflow_u3()), "u3").await?;
    webhook(&p, &kyf, "-", json(kycflow_no_subject()), "no subject").await?;
    webhook(&p, &acme, "msg_pii_dep_1", json(acmepay_u1("deposit.received")), "deposit").await?;
    webhook(&p, &acme, "msg_pii_dep_2", json(acmepay_u1("deposit.completed")), "deposit").await?;
    // Normal traffic.
    for (s, d) in crate::harness::deliveries(&acme, "pii", 8) {
        let status = riverbank::demo::send(&p.http, &p.ingest_url, &s, &d).await?;
        anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "normal traffic: {status}");
    }
    // Dead letters: a JSON delivery of a type idcheck's definition does not know, and a body that is not
    // JSON at all, both holding seeded values.
    let dead = idcheck_u2("applicantTeleported", seeded("dead JSON name"), seeded("dead JSON tin"));
    webhook(&p, &idc, "-", json(dead), "dead letter").await?;
    let raw = format!("name={}&pan={}&note=not json", seeded("dead raw name"), seeded("dead raw pan"));
    webhook(&p, &kyf, "-", raw.into_bytes(), "dead letter").await?;

    // The redrive of the JSON letter after a definition fix: produced from the stored (sealed) form
    // under the letter's id; the letter sealed whole stays unmappable.
    let dir = p.dir.join("providers");
    std::fs::create_dir_all(&dir)?;
    let builtin = riverbank_ingest::core::provider::BUILTIN.iter().find(|(f, _)| *f == "idcheck.toml");
    let fixed = builtin
        .context("idcheck built-in")?
        .1
        .replace("[event.types]\n", "[event.types]\n\"applicantTeleported\" = \"kyc.case_needs_review\"\n");
    std::fs::write(dir.join("idcheck.toml"), fixed)?;
    let providers_dir = [("RIVERBANK__INGEST__PROVIDERS_DIR", dir.display().to_string())];
    let redriven = p.cli(&["dlq", "redrive", "--all"], &providers_dir).await?;
    anyhow::ensure!(redriven.contains("1 of 2 dead letters redriven"), "{redriven}");

    // Wait until the KYC results reached Postgres, then until every store agrees (sinks caught up).
    let pg = p.pg().await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE tenant_id = $1 AND user_id = ANY($2)")
                .bind(TENANT)
                .bind(vec![U1, U2, U3])
                .fetch_one(&pg)
                .await?;
        if n == 3 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{n} of 3 users in Postgres; logs in {}", p.dir.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pg.close().await;
    p.assert_reconciled().await;

    // The scan.
    let mut places = haystacks(&p, &metrics).await?;
    places.push(("cli dlq redrive (stdout)".to_owned(), redriven.into_bytes()));
    let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (place, bytes) in &places {
        let kind = kinds.entry(place.split(' ').next().unwrap_or_default()).or_default();
        kind.0 += 1;
        kind.1 += bytes.len();
    }
    eprintln!("scanned (places, bytes): {kinds:?}");
    for kind in ["topic", "postgres", "clickhouse", "log", "metrics"] {
        anyhow::ensure!(kinds.contains_key(kind), "{kind} not scanned: {kinds:?}");
    }
    let mut leaks = Vec::new();
    for (place, bytes) in &places {
        for what in find_seeded(bytes) {
            leaks.push(format!("{what} in {place}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "seeded personal values in clear ({} places):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // The scanner finds what it looks for (a clear body is caught, in every form it searches).
    let clear = json(kycflow_u1());
    assert!(find_seeded(&clear).contains(&"u1 pan"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&clear);
    assert!(find_seeded(format!("{{\"raw_base64\":\"{b64}\"}}").as_bytes()).contains(&"u1 name"));
    let escaped = serde_json::to_string(&serde_json::to_string(&kycflow_u1())?)?;
    assert!(find_seeded(escaped.as_bytes()).contains(&"u1 email"));
    // RUST_LOG=trace took: every process logged below INFO, and TRACE events were written.
    let logs: Vec<&(String, Vec<u8>)> = places.iter().filter(|(w, _)| w.starts_with("log ")).collect();
    for (name, _) in PROCESSES {
        let log = logs.iter().find(|(w, _)| w.ends_with(&format!("/{name}.log")));
        let log = log.with_context(|| format!("no log of {name}"))?;
        let text = String::from_utf8_lossy(&log.1);
        anyhow::ensure!(text.contains("DEBUG") || text.contains("TRACE"), "{name} logged below INFO");
    }
    anyhow::ensure!(
        logs.iter().any(|(_, b)| String::from_utf8_lossy(b).contains("TRACE")),
        "TRACE events logged"
    );

    // Where the sealed values are, and that they open to the seeded values: the webhooks topic (bound
    // to the event id) and the dead letters (bound to the letter's id).
    let keys = key_store(&p).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let topics = riverbank_runtime::kafka::topics(&cfg.kafka);
    let (webhooks_topic, dead_topic) =
        (topics.ingest_webhooks(Environment::Live), topics.dead_letters(Environment::Live));
    let mut opened: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sealed_anywhere: Vec<String> = Vec::new();
    for (_, bytes) in &places {
        sealed_anywhere.extend(envelopes(bytes));
    }
    let records = {
        let (kc, t) = (cfg.kafka.clone(), webhooks_topic.clone());
        let mut kc = kc;
        kc.brokers = crate::harness::brokers();
        tokio::task::spawn_blocking(move || riverbank_runtime::kafka::read_all(&kc, &t, 10_000, WAIT))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?
    };
    let mut webhook_ids = BTreeSet::new();
    for r in &records {
        let envelope: serde_json::Value = serde_json::from_slice(&r.payload)?;
        let record = envelope["event_id"].as_str().unwrap_or_default().to_owned();
        webhook_ids.insert(record.clone());
        let mut found = Vec::new();
        sealed_in(&envelope["payload"]["body"], &mut String::new(), &mut found);
        for (pointer, sealed) in found {
            let subject = field::parse(&sealed).map(|s| s.subject).unwrap_or_default();
            let clear = open_sealed(&keys, &sealed, &pointer, &record)
                .await
                .map_err(|e| anyhow::anyhow!("{pointer} of {record}: {e}"))?;
            opened.entry(subject).or_default().insert(String::from_utf8_lossy(&clear).into_owned());
        }
    }
    let letters = {
        let mut kc = cfg.kafka.clone();
        kc.brokers = crate::harness::brokers();
        let t = dead_topic.clone();
        tokio::task::spawn_blocking(move || riverbank_runtime::kafka::read_all(&kc, &t, 10_000, WAIT))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?
    };
    let mut whole_body_opened = false;
    for r in &letters {
        let letter: riverbank_schemas::DeadLetter = serde_json::from_slice(&r.payload)?;
        let stored = base64::engine::general_purpose::STANDARD.decode(&letter.raw_base64)?;
        let record = letter.dead_letter_id.to_string();
        match serde_json::from_slice::<serde_json::Value>(&stored) {
            Ok(body) => {
                let mut found = Vec::new();
                sealed_in(&body, &mut String::new(), &mut found);
                anyhow::ensure!(!found.is_empty(), "the JSON dead letter holds sealed values");
                anyhow::ensure!(
                    webhook_ids.contains(&record),
                    "the redriven letter is produced under its id {record} (its values opened there too)"
                );
                for (pointer, sealed) in found {
                    let subject = field::parse(&sealed).map(|s| s.subject).unwrap_or_default();
                    let clear = open_sealed(&keys, &sealed, &pointer, &record)
                        .await
                        .map_err(|e| anyhow::anyhow!(e))?;
                    opened.entry(subject).or_default().insert(String::from_utf8_lossy(&clear).into_owned());
                }
            }
            Err(_) => {
                let first = std::str::from_utf8(&stored)?.split('\n').next().unwrap_or_default().to_owned();
                let s = field::parse(&first).context("a whole-body sealed letter")?;
                let dek = keys
                    .open_key(TENANT, Environment::Live, &s.key_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let clear = riverbank_ingest::sealing::open_whole_body(
                    &dek,
                    TENANT,
                    Environment::Live,
                    letter.dead_letter_id,
                    &stored,
                )?;
                let clear = String::from_utf8(clear)?;
                anyhow::ensure!(
                    clear.contains(seeded("dead raw pan")),
                    "the whole body opens to what was sent"
                );
                whole_body_opened = true;
            }
        }
    }
    anyhow::ensure!(
        letters.len() == 2 && whole_body_opened,
        "two dead letters, one sealed whole: {}",
        letters.len()
    );
    let has = |subject: &str, what: &str| {
        opened.get(subject).is_some_and(|set| set.iter().any(|v| v.contains(seeded(what))))
    };
    for what in [
        "u1 name",
        "u1 dob",
        "u1 pan",
        "u1 aadhaar",
        "u1 phone",
        "u1 email",
        "u1 address",
        "u1 document url",
        "u1 bank account",
        "u1 ip",
        "u1 iban",
    ] {
        anyhow::ensure!(has(U1, what), "{what} sealed under {U1}: {:?}", opened.get(U1).map(|s| s.len()));
    }
    for what in [
        "u2 first name",
        "u2 last name",
        "u2 dob",
        "u2 ssn",
        "u2 phone",
        "u2 street",
        "u2 passport",
        "u2 email",
        "dead JSON name",
        "dead JSON tin",
    ] {
        anyhow::ensure!(has(U2, what), "{what} sealed under {U2}");
    }
    for what in ["u3 name", "u3 pan", "u3 aadhaar", "u3 dob"] {
        anyhow::ensure!(has(U3, what), "{what} sealed under {U3}");
    }
    let fallback = riverbank_ingest::core::sensitive::FALLBACK_SUBJECT;
    anyhow::ensure!(
        has(fallback, "no-subject name") && has(fallback, "no-subject pan"),
        "a body without its subject: {fallback}"
    );

    // Every sealed value found anywhere names a key that opens, before the erasure.
    let by_subject = |subject: &str| -> BTreeSet<String> {
        sealed_anywhere
            .iter()
            .filter_map(|s| field::parse(s))
            .filter(|s| s.subject == subject)
            .map(|s| s.key_id)
            .collect()
    };
    let (u1_keys, u2_keys) = (by_subject(U1), by_subject(U2));
    anyhow::ensure!(
        u1_keys.len() >= 6 && u2_keys.len() >= 4,
        "key ids: u1 {} u2 {}",
        u1_keys.len(),
        u2_keys.len()
    );
    for key_id in u1_keys.iter().chain(&u2_keys) {
        keys.open_key(TENANT, Environment::Live, key_id)
            .await
            .map_err(|e| anyhow::anyhow!("{key_id}: {e:?}"))?;
    }

    // Erase u1: none of its sealed values opens any more, anywhere; u2's still do.
    let out =
        p.cli(&["gdpr", "erase", "--tenant", TENANT, "--environment", "live", "--subject", U1], &[]).await?;
    anyhow::ensure!(out.chars().any(|c| c.is_ascii_digit()), "gdpr erase prints the count: {out}");
    let keys = key_store(&p).await?;
    let mut still = Vec::new();
    for sealed in sealed_anywhere.iter().filter(|s| field::parse(s).is_some_and(|s| s.subject == U1)) {
        let key_id = field::parse(sealed).map(|s| s.key_id).unwrap_or_default();
        match keys.open_key(TENANT, Environment::Live, &key_id).await {
            Err(KeyStoreError::Erased) => {}
            other => still.push(format!("{key_id}: {:?}", other.map(|_| "opens"))),
        }
    }
    anyhow::ensure!(still.is_empty(), "u1's keys after the erasure: {still:?}");
    for key_id in &u2_keys {
        keys.open_key(TENANT, Environment::Live, key_id)
            .await
            .map_err(|e| anyhow::anyhow!("u2 after erasing u1: {key_id}: {e:?}"))?;
    }
    p.finish().await
}
