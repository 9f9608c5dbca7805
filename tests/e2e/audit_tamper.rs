//! Tamper evidence, end to end: a real pipeline writes hash-chained, checkpointed audit logs;
//! `riverbank audit verify` passes on Postgres, ClickHouse and both export formats; then, as an attacker
//! with database access would, one row is changed, deleted or has its seq swapped (Postgres with the
//! append-only triggers disabled; ClickHouse by ALTER UPDATE/DELETE and by inserting changed copies),
//! and one byte of an export is flipped: every time verify exits non-zero and names the row (tenant,
//! seq, audit id). Each case has its own tenant, so the cases do not touch each other's logs, and an
//! untouched tenant keeps verifying throughout.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use riverbank::demo::send_all;
use uuid::Uuid;

use crate::harness::{deliveries, sender, Pipeline};

/// Webhooks per tenant: one audit record each.
const RECORDS: u64 = 10;
/// Checkpoints after 4 and 8 records (and on the timer for the rest).
const AUDIT_EXTRA: &str = "[audit]\ncheckpoint_every_records = 4\ncheckpoint_every_ms = 1000\n";
const TENANTS: [(&str, u8); 5] =
    [("tamper-a", 31), ("tamper-b", 32), ("tamper-c", 33), ("tamper-d", 34), ("tamper-e", 35)];

/// `riverbank audit verify <args>`: (exit code 0, stdout and stderr).
async fn verify(p: &Pipeline, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_riverbank"))
        .arg("--config")
        .arg(&p.config)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .await?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

async fn verify_fails_naming(p: &Pipeline, args: &[&str], named: &str, why: &str) -> anyhow::Result<()> {
    let (ok, text) = verify(p, args).await?;
    assert!(!ok, "audit verify {args:?} passed on a tampered trail:\n{text}");
    assert!(
        text.contains(named) && text.contains(why),
        "audit verify {args:?} did not name {named:?} ({why:?}):\n{text}"
    );
    Ok(())
}

async fn verify_passes(p: &Pipeline, args: &[&str]) -> anyhow::Result<String> {
    let (ok, text) = verify(p, args).await?;
    assert!(ok, "audit verify {args:?} failed on an untouched trail (logs in {}):\n{text}", p.dir.display());
    Ok(text)
}

/// (seq → audit id) of a tenant's log in Postgres.
async fn audit_ids(pg: &sqlx::PgPool, tenant: &str) -> anyhow::Result<BTreeMap<u64, Uuid>> {
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT seq, event_id FROM audit_log WHERE tenant_id = $1 AND environment = 'live' AND seq IS NOT NULL ORDER BY seq",
    )
    .bind(tenant)
    .fetch_all(pg)
    .await?;
    Ok(rows.into_iter().map(|(s, id)| (s as u64, id)).collect())
}

/// The FAILED line verify prints for a record.
fn named(tenant: &str, seq: u64, id: Uuid) -> String {
    format!("FAILED  tenant {tenant} environment live seq {seq} audit_id {id}:")
}

/// Postgres DDL/DML as the attacker: the append-only triggers off for one statement, back on after.
async fn pg_as_attacker(pg: &sqlx::PgPool, sql: &[&str]) -> anyhow::Result<()> {
    let mut tx = pg.begin().await?;
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await?;
    for s in sql {
        sqlx::query(s).execute(&mut *tx).await?;
    }
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// A ClickHouse mutation, waited for (mutations are asynchronous, and the stack's server predates
/// `mutations_sync`).
async fn ch_mutate(ch: &clickhouse::Client, sql: &str) -> anyhow::Result<()> {
    ch.query(sql).execute().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: u64 = ch
            .query("SELECT toUInt64(count()) FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
            .fetch_one()
            .await?;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "mutation not done within 60 s: {sql}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `audit_trail`'s columns, in order.
const TRAIL_COLUMNS: [&str; 26] = [
    "audit_id",
    "tenant_id",
    "environment",
    "seq",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "before",
    "after",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "source_event_id",
    "source_event_type",
    "occurred_at",
    "occurred_ms",
    "recorded_at",
    "recorded_ms",
    "payload_bytes",
    "prev_hash",
    "hash",
    "source_topic",
    "source_partition",
    "source_offset",
];

/// Inserts copies of a tenant's rows with one column changed (the last insert per seq wins). The new
/// value gets an alias of its own: ClickHouse resolves aliases in WHERE, so `… AS seq` would filter on it.
async fn ch_insert_copies(
    ch: &clickhouse::Client,
    tenant: &str,
    rows: &str,
    column: &str,
    value: &str,
) -> anyhow::Result<()> {
    let select: Vec<String> = TRAIL_COLUMNS
        .iter()
        .map(|c| if *c == column { format!("{value} AS tampered_{c}") } else { (*c).to_owned() })
        .collect();
    let sql = format!(
        "INSERT INTO audit_trail ({}) SELECT {} FROM (SELECT * FROM audit_trail FINAL WHERE tenant_id = '{tenant}' AND {rows})",
        TRAIL_COLUMNS.join(", "),
        select.join(", ")
    );
    ch.query(&sql).execute().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_every_tampered_row() -> anyhow::Result<()> {
    let components: [&[&str]; 5] =
        [&["ingest"], &["process", "audit"], &["sink", "postgres"], &["sink", "clickhouse"], &["api"]];
    let p = Pipeline::start_with("audit_tamper", &TENANTS, &components, AUDIT_EXTRA).await?;
    let mut work = Vec::new();
    for (tenant, seed) in TENANTS {
        work.extend(deliveries(&sender(tenant, seed), "tamper", RECORDS as usize));
    }
    let statuses = send_all(&p.http, &p.ingest_url, work).await;
    assert!(statuses.iter().all(|s| matches!(s, Ok(c) if c.as_u16() == 202)), "{statuses:?}");

    // Wait until both stores hold every record and the checkpoint after record 8, and both verify.
    let pg = p.pg().await?;
    let ch = p.ch();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (pg_rows, pg_cps): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log WHERE tenant_id LIKE 'tamper-%' AND seq IS NOT NULL),
                    (SELECT count(*) FROM audit_checkpoints WHERE tenant_id LIKE 'tamper-%' AND tree_size >= 8)",
        )
        .fetch_one(&pg)
        .await?;
        let ch_rows: u64 = ch
            .query("SELECT toUInt64(count()) FROM audit_trail FINAL WHERE tenant_id LIKE 'tamper-%'")
            .fetch_one()
            .await?;
        let ch_cps: u64 = ch
            .query("SELECT toUInt64(count()) FROM audit_checkpoints FINAL WHERE tenant_id LIKE 'tamper-%' AND tree_size >= 8")
            .fetch_one()
            .await?;
        let want = RECORDS * TENANTS.len() as u64;
        let tenants = TENANTS.len() as u64;
        if pg_rows as u64 == want && ch_rows == want && pg_cps as u64 >= tenants && ch_cps >= tenants {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit rows did not land: postgres {pg_rows} records {pg_cps} checkpoints, clickhouse {ch_rows} \
             records {ch_cps} checkpoints, want {want} records; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for store in ["--postgres", "--clickhouse"] {
        let text = verify_passes(&p, &[store]).await?;
        for (tenant, _) in TENANTS {
            assert!(
                text.contains(&format!("ok      tenant {tenant} environment live: {RECORDS} records")),
                "{text}"
            );
        }
    }
    // The key printed by `audit public-key` verifies the same trail from the command line.
    let key = p.cli(&["audit", "public-key"], &[]).await?;
    verify_passes(&p, &["--postgres", "--public-key", key.trim()]).await?;
    let (ok, text) = verify(&p, &["--postgres", "--public-key", &"11".repeat(32)]).await?;
    assert!(!ok && text.contains("not among the keys given"), "{text}");

    let mut ids = BTreeMap::new();
    for (tenant, _) in TENANTS {
        let log = audit_ids(&pg, tenant).await?;
        assert_eq!(log.keys().copied().collect::<Vec<_>>(), (1..=RECORDS).collect::<Vec<_>>(), "{tenant}");
        ids.insert(tenant, log);
    }

    // --- Postgres ---------------------------------------------------------------------------------
    // The triggers refuse an honest attempt.
    let refused =
        sqlx::query("UPDATE audit_log SET resource_id = 'x' WHERE tenant_id = 'tamper-a' AND seq = 3")
            .execute(&pg)
            .await;
    assert!(refused.is_err(), "audit_log accepted an update");

    // a: one field of seq 3 changed.
    pg_as_attacker(
        &pg,
        &["UPDATE audit_log SET resource_id = 'forged' WHERE tenant_id = 'tamper-a' AND seq = 3"],
    )
    .await?;
    let a = &["--postgres", "--tenant", "tamper-a"];
    verify_fails_naming(&p, a, &named("tamper-a", 3, ids["tamper-a"][&3]), "a field was changed").await?;
    // b: seq 6 deleted.
    pg_as_attacker(&pg, &["DELETE FROM audit_log WHERE tenant_id = 'tamper-b' AND seq = 6"]).await?;
    let b = &["--postgres", "--tenant", "tamper-b"];
    verify_fails_naming(&p, b, &named("tamper-b", 7, ids["tamper-b"][&7]), "seq 6 is missing").await?;
    // c: seq 2 and 3 swapped (through a free seq: the unique index holds at every statement).
    pg_as_attacker(
        &pg,
        &[
            "UPDATE audit_log SET seq = 1000000 WHERE tenant_id = 'tamper-c' AND seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE tenant_id = 'tamper-c' AND seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE tenant_id = 'tamper-c' AND seq = 1000000",
        ],
    )
    .await?;
    let c = &["--postgres", "--tenant", "tamper-c"];
    verify_fails_naming(&p, c, &named("tamper-c", 2, ids["tamper-c"][&3]), "a field was changed").await?;
    // e: the end of a signed range deleted (seq 7 onwards; the checkpoint after 8 still says 8).
    pg_as_attacker(&pg, &["DELETE FROM audit_log WHERE tenant_id = 'tamper-e' AND seq >= 7"]).await?;
    let e = &["--postgres", "--tenant", "tamper-e"];
    verify_fails_naming(
        &p,
        e,
        "FAILED  tenant tamper-e environment live seq 7 checkpoint ",
        "seq 7..=8 are missing",
    )
    .await?;
    // The whole store fails, names all four, and the untouched tenant still verifies.
    let (ok, text) = verify(&p, &["--postgres"]).await?;
    assert!(!ok, "{text}");
    assert!(text.contains("ok      tenant tamper-d environment live: 10 records"), "{text}");
    assert!(text.contains("4 logs failed"), "{text}");
    // ClickHouse was not touched: it still verifies.
    verify_passes(&p, &["--clickhouse"]).await?;

    // --- ClickHouse -------------------------------------------------------------------------------
    // a: ALTER UPDATE of one field.
    ch_mutate(
        &ch,
        "ALTER TABLE audit_trail UPDATE resource_id = 'forged' WHERE tenant_id = 'tamper-a' AND seq = 3",
    )
    .await?;
    let a = &["--clickhouse", "--tenant", "tamper-a"];
    verify_fails_naming(&p, a, &named("tamper-a", 3, ids["tamper-a"][&3]), "a field was changed").await?;
    // b: ALTER DELETE of one row.
    ch_mutate(&ch, "ALTER TABLE audit_trail DELETE WHERE tenant_id = 'tamper-b' AND seq = 6").await?;
    let b = &["--clickhouse", "--tenant", "tamper-b"];
    verify_fails_naming(&p, b, &named("tamper-b", 7, ids["tamper-b"][&7]), "seq 6 is missing").await?;
    // c: changed copies with swapped seqs inserted (ReplacingMergeTree keeps the last insert per seq).
    ch_insert_copies(&ch, "tamper-c", "seq IN (2, 3)", "seq", "if(seq = 2, 3, 2)").await?;
    let c = &["--clickhouse", "--tenant", "tamper-c"];
    verify_fails_naming(&p, c, &named("tamper-c", 2, ids["tamper-c"][&3]), "a field was changed").await?;
    // d: a changed copy of one record inserted over it.
    ch_insert_copies(&ch, "tamper-d", "seq = 5", "action", "'transfer.forged'").await?;
    let d = &["--clickhouse", "--tenant", "tamper-d"];
    verify_fails_naming(&p, d, &named("tamper-d", 5, ids["tamper-d"][&5]), "a field was changed").await?;
    // Postgres' tamper-d and ClickHouse's tamper-e are still intact.
    verify_passes(&p, &["--postgres", "--tenant", "tamper-d"]).await?;
    verify_passes(&p, &["--clickhouse", "--tenant", "tamper-e"]).await?;

    // --- Export files -----------------------------------------------------------------------------
    for (format, ext) in [("json", "jsonl"), ("csv", "csv")] {
        let body = p
            .http
            .get(format!("{}/v1/audit/export", p.api_url))
            .query(&[("tenant_id", "tamper-d"), ("environment", "live"), ("format", format)])
            .query(&[("to_seq", RECORDS)])
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let path = p.dir.join(format!("tamper-d.{ext}"));
        std::fs::write(&path, &body)?;
        let file = path.to_str().expect("a UTF-8 temp path");
        let text = verify_passes(&p, &["--file", file]).await?;
        assert!(text.contains("ok      tenant tamper-d environment live: 10 records"), "{text}");

        // Flip one byte of record 4: the first letter of its action (after its audit id).
        let id = ids["tamper-d"][&4].to_string();
        let mut bytes = body.to_vec();
        let at = bytes.windows(id.len()).position(|w| w == id.as_bytes()).expect("record 4 is exported");
        let action = b"webhook.received";
        let off = bytes[at..].windows(action.len()).position(|w| w == action).expect("its action") + at;
        bytes[off] ^= 0x20;
        std::fs::write(&path, &bytes)?;
        verify_fails_naming(
            &p,
            &["--file", file],
            &named("tamper-d", 4, ids["tamper-d"][&4]),
            "a field was changed",
        )
        .await?;
        // The same file read as the other format is refused, not passed.
        let other = if ext == "csv" { "jsonl" } else { "csv" };
        let (ok, text) = verify(&p, &["--file", file, "--format", other]).await?;
        assert!(!ok, "{text}");
    }

    pg.close().await;
    p.finish().await
}
