//! The audit trail's acceptance checks, run at the end of the pipelines that move money (money loop,
//! FX and billing), so the trail is checked over every kind of significant action:
//! - capture: every event that must produce a record (read back from the topics, by the rules below,
//!   written here independently of the processor) has exactly one, and nothing else has one;
//! - each (tenant, environment) log is numbered 1..n without gap and hash-chained, in both stores;
//! - JSON and CSV exports hold the same rows, and the export is itself audited;
//! - an inclusion proof from the API checks out with the public key alone.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use riverbank_crypto::merkle;
use riverbank_crypto::sign::VerifyingKeys;
use riverbank_schemas::audit::{AuditRecord, ExportRow, GENESIS_HASH};
use riverbank_schemas::processor::Processor as _;
use riverbank_schemas::{Environment, Topics};

use crate::harness::Pipeline;

/// Config the pipelines add so a checkpoint comes within the test's time.
pub const AUDIT_EXTRA: &str = "[audit]\ncheckpoint_every_ms = 1500\ncheckpoint_every_records = 50\n";

/// Whether an event must be audited: the rule DOMAIN.md and issue 13 state, written independently of
/// `processors/src/audit.rs`.
fn must_audit(event_type: &str, payload: &serde_json::Value) -> bool {
    match event_type {
        "webhook.received"
        | "transfer.status_changed"
        | "transfer.input_rejected"
        | "risk.input_rejected" => true,
        // Live decisions and manual reviews; shadow runs decide nothing.
        "risk.decision_recorded" => payload["shadow"] != true,
        "user.kyc.updated" | "user.verified" | "user.frozen" | "user.unfrozen" | "user.closed" => true,
        "kyc.input_rejected" | "fx.conversion_recorded" | "fx.input_rejected" => true,
        "billing.fee_charged" | "billing.plan_set" | "billing.input_rejected" => true,
        "billing.invoice_recorded" => payload["status"] == "finalized",
        "audit.action_taken" => true,
        // Quotes, rates, reminders, drafts, bookings: not actions of their own.
        _ => false,
    }
}

async fn read(p: &Pipeline, topic: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut k = riverbank_runtime::Config::load(Some(&p.config))?.kafka;
    k.topic_prefix = p.topic_prefix.clone();
    let t = topic.to_owned();
    let records = tokio::task::spawn_blocking(move || {
        riverbank_runtime::kafka::read_all(&k, &t, 200_000, Duration::from_secs(30))
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e))?;
    records.iter().map(|r| Ok(serde_json::from_slice(&r.payload)?)).collect()
}

/// Source event ids per tenant that must be in the trail, from the topics the audit processor routes.
async fn expected(p: &Pipeline, env: Environment) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());
    let spec = riverbank::registry::audit(&cfg, topics.clone()).spec(&topics, env);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for topic in &spec.routed {
        for e in read(p, topic).await? {
            let event_type = e["event_type"].as_str().unwrap_or_default();
            if must_audit(event_type, &e["payload"]) {
                let tenant = e["tenant_id"].as_str().unwrap_or_default().to_owned();
                out.entry(tenant).or_default().insert(e["event_id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(out)
}

async fn pg_records(p: &Pipeline, tenant: &str, env: Environment) -> anyhow::Result<Vec<AuditRecord>> {
    let pool = p.pg().await?;
    let rows: Vec<riverbank_runtime::audit::AuditRow> = sqlx::query_as(&format!(
        "SELECT {} FROM audit_log WHERE tenant_id = $1 AND environment = $2 ORDER BY seq",
        riverbank_runtime::audit::AUDIT_COLUMNS
    ))
    .bind(tenant)
    .bind(env.as_str())
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    rows.iter().map(|r| r.to_record().map_err(|e| anyhow::anyhow!(e))).collect()
}

fn assert_chained(tenant: &str, records: &[AuditRecord]) {
    let mut prev = GENESIS_HASH.to_owned();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "{tenant}: seq {} at position {i} (gap or duplicate)", r.seq);
        assert_eq!(r.prev_hash, prev, "{tenant}: seq {} does not link to its predecessor", r.seq);
        assert_eq!(r.hash, r.compute_hash(), "{tenant}: seq {} does not hash to its hash", r.seq);
        prev = r.hash.clone();
    }
}

/// Everything the module doc says, for every tenant of the pipeline in `env`; `token` is an admin key.
pub async fn assert_trail(p: &Pipeline, env: Environment, token: &str) -> anyhow::Result<()> {
    for (tenant, records) in assert_captured(p, env).await? {
        exports_and_proof(p, env, &tenant, token, &records).await?;
    }
    Ok(())
}

/// Capture (exactly the events that must be recorded, each once) and the chain of every tenant's log in
/// `env`, in Postgres; ClickHouse holds no more. The logs, by tenant.
async fn assert_captured(
    p: &Pipeline,
    env: Environment,
) -> anyhow::Result<BTreeMap<String, Vec<AuditRecord>>> {
    // The trail lands after the events it records: wait until every expected one is in Postgres.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut logs = BTreeMap::new();
    let (want, mut got) = loop {
        let want = expected(p, env).await?;
        let mut got = BTreeMap::new();
        for tenant in want.keys() {
            got.insert(tenant.clone(), pg_records(p, tenant, env).await?);
        }
        let landed = want.iter().all(|(t, ids)| got[t].len() >= ids.len());
        if landed || Instant::now() > deadline {
            break (want, got);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (tenant, ids) in &want {
        let records = got.remove(tenant).unwrap_or_default();
        let sources: Vec<String> = records.iter().map(|r| r.source_event_id.to_string()).collect();
        let distinct: BTreeSet<String> = sources.iter().cloned().collect();
        assert_eq!(distinct.len(), sources.len(), "{tenant}: a source event audited twice");
        let missing: Vec<&String> = ids.difference(&distinct).collect();
        let extra: Vec<&String> = distinct.difference(ids).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{tenant}: missing {missing:?}, unexpected {extra:?}"
        );
        assert_chained(tenant, &records);
        // ClickHouse holds the same log.
        let ch: u64 = p
            .ch()
            .query("SELECT toUInt64(count()) FROM audit_trail FINAL WHERE tenant_id = ? AND environment = ?")
            .bind(tenant)
            .bind(env.as_str())
            .fetch_one()
            .await?;
        assert!(ch <= records.len() as u64, "{tenant}: clickhouse holds more records ({ch}) than postgres");
        logs.insert(tenant.clone(), records);
    }
    Ok(logs)
}

/// The audit processor SIGKILLed twice mid-stream and the transfers processor once (so its replays
/// write status events again upstream): every log still holds each source event exactly once, numbered
/// without a gap, and `riverbank audit verify` passes on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chains_have_no_gap_or_duplicate_after_sigkills() -> anyhow::Result<()> {
    const AUDIT: &[&str] = &["process", "audit"];
    const TRANSFERS: &[&str] = &["process", "transfers"];
    let components: [&[&str]; 4] = [AUDIT, TRANSFERS, &["sink", "postgres"], &["sink", "clickhouse"]];
    let extra = format!("[processor]\nbatch_events_max = 50\n{AUDIT_EXTRA}");
    let mut p = Pipeline::start_with("audit_crash", &[], &components, &extra).await?;
    let inputs = riverbank::workload::transfer_inputs(&["tenant-a", "tenant-b", "tenant-c"], 60, 17);
    let chunks: Vec<&[riverbank_schemas::RawEnvelope]> = inputs.chunks(inputs.len() / 4 + 1).collect();
    let kafka = riverbank_runtime::Config::load(Some(&p.config))?.kafka;
    for (i, chunk) in chunks.iter().enumerate() {
        riverbank::workload::produce_inputs(&kafka, chunk).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match i {
            0 | 2 => {
                p.kill(AUDIT).await?; // SIGKILL mid-stream
                p.spawn(AUDIT)?;
            }
            1 => {
                p.kill(TRANSFERS).await?;
                p.spawn(TRANSFERS)?;
            }
            _ => {}
        }
    }
    let logs = assert_captured(&p, Environment::Live).await?;
    assert_eq!(logs.len(), 3, "every tenant has a log: {:?}", logs.keys());
    // The stores, as an auditor would check them offline (ClickHouse once it has caught up).
    for store in ["--postgres", "--clickhouse"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = p.cli(&["audit", "verify", store], &[]).await;
            match out {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => anyhow::bail!("audit verify {store}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    p.finish().await
}

async fn exports_and_proof(
    p: &Pipeline,
    env: Environment,
    tenant: &str,
    token: &str,
    records: &[AuditRecord],
) -> anyhow::Result<()> {
    let get = |path: &str, query: Vec<(&str, String)>| {
        p.http.get(format!("{}{path}", p.api_url)).bearer_auth(token).query(&query)
    };
    let base = |format: &str| {
        vec![
            ("tenant_id", tenant.to_owned()),
            ("environment", env.as_str().to_owned()),
            ("format", format.to_owned()),
            ("to_seq", records.len().to_string()),
        ]
    };
    // A checkpoint signed on the partition clock may land between the two exports (it covers records
    // already exported): read both again until they agree, a few times at most.
    let mut tries = 0;
    let (from_json, from_csv) = loop {
        tries += 1;
        let json = get("/v1/audit/export", base("json")).send().await?.error_for_status()?.text().await?;
        let csv = get("/v1/audit/export", base("csv")).send().await?.error_for_status()?.text().await?;
        let from_json: Vec<ExportRow> = json.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        let from_csv = ExportRow::parse_csv(&csv).map_err(|e| anyhow::anyhow!(e))?;
        if from_json == from_csv || tries == 5 {
            break (from_json, from_csv);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert_eq!(from_json, from_csv, "{tenant}: JSON and CSV exports differ");
    let exported: Vec<&AuditRecord> = from_json
        .iter()
        .filter_map(|r| match r {
            ExportRow::Record(r) => Some(r),
            ExportRow::Checkpoint(_) => None,
        })
        .collect();
    assert_eq!(exported, records.iter().collect::<Vec<_>>(), "{tenant}: the export is the log");

    // A proof, once a signed checkpoint covers record 1: checked with the public key alone.
    let keys: serde_json::Value =
        p.http.get(format!("{}/v1/audit/keys", p.api_url)).send().await?.json().await?;
    let public: Vec<String> = keys["keys"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k["public_key"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let verifier =
        VerifyingKeys::parse(public.iter().map(String::as_str)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let first = &records[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let proof: serde_json::Value = loop {
        let r =
            get(&format!("/v1/audit/{}/proof", first.audit_id), base("json")[..2].to_vec()).send().await?;
        if r.status().is_success() {
            break r.json().await?;
        }
        assert_eq!(r.status().as_u16(), 409, "{tenant}: proof answered {}", r.status());
        assert!(Instant::now() < deadline, "{tenant}: no checkpoint covers record 1");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let record: AuditRecord = serde_json::from_value(proof["record"].clone())?;
    let checkpoint: riverbank_schemas::AuditCheckpoint = serde_json::from_value(proof["checkpoint"].clone())?;
    let path: Vec<merkle::Hash> = proof["inclusion_proof"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str().and_then(|h| merkle::parse_hash(h).ok())).collect())
        .unwrap_or_default();
    let root = merkle::parse_hash(&checkpoint.root_hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    let leaf = merkle::leaf_hash(&record.canonical_bytes());
    assert!(
        merkle::verify_inclusion(&leaf, record.seq - 1, checkpoint.tree_size, &path, &root),
        "{tenant}: the inclusion proof does not fold to the signed head"
    );
    verifier
        .verify(&checkpoint.key_id, &checkpoint.signed_message(), &checkpoint.signature)
        .map_err(|e| anyhow::anyhow!("{tenant}: checkpoint signature: {e}"))?;

    // Both exports were audited.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pg_records(p, tenant, env).await?.iter().filter(|r| r.action == "audit.exported").count();
        if n >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{tenant}: {n} of 2 exports audited");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
