//! Every ClickHouse DDL statement and analytics query, run on a current engine and on the local server.
//!
//! The statements: the sinks' `ddl()` (every table, in order) and the analytics queries (each with its
//! sample binds substituted the way the `clickhouse` client binds `?`). `current_engine_*` writes them
//! as JSON and runs `tests/chdb/check.py` with the Python of the venv that `tests/chdb/setup` makes
//! (`target/chdb-venv`, or `RIVERBANK_CHDB_PYTHON`): chdb embeds a current ClickHouse (26.x) in process.
//! `local_server_*` runs the same statements on the local stack's ClickHouse (18.16,
//! `RIVERBANK_TEST_CH_URL`) in a database of its own, dropped afterwards.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;

/// How long the local server may take over one statement, in seconds.
const STATEMENT_TIMEOUT_S: u64 = 30;

#[derive(Debug, Clone, Serialize)]
struct Statement {
    /// `ddl.<table>` or the query's catalog name.
    name: String,
    /// `ddl` or `query`.
    kind: &'static str,
    /// The SQL as sent, bound values substituted.
    sql: String,
}

#[derive(Serialize)]
struct Catalog<'a> {
    database: &'a str,
    statements: &'a [Statement],
}

/// The SQL the `clickhouse` client sends for `template` with `binds` (SQL literals) bound in order:
/// each `?` takes the next bind, `??` is a literal `?`. Refuses `?fields` and a count that differs.
fn substitute(template: &str, binds: &[String]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut binds = binds.iter();
    let mut rest = template;
    while let Some(i) = rest.find('?') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('?') {
            out.push('?');
            rest = r;
        } else if rest.starts_with("fields") {
            bail!("?fields is bound from a row type, not a sample value");
        } else {
            out.push_str(binds.next().ok_or_else(|| anyhow!("more ? than binds"))?);
        }
    }
    out.push_str(rest);
    let left = binds.count();
    if left > 0 {
        bail!("{left} binds left over: fewer ? than binds");
    }
    Ok(out)
}

fn ddl_statements() -> anyhow::Result<Vec<Statement>> {
    riverbank_sinks::clickhouse::ddl()
        .into_iter()
        .map(|sql| {
            let table = sql
                .split("IF NOT EXISTS")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .ok_or_else(|| anyhow!("a DDL statement without `IF NOT EXISTS <table>`: {sql}"))?;
            Ok(Statement { name: format!("ddl.{table}"), kind: "ddl", sql: sql.to_string() })
        })
        .collect()
}

/// The analytics queries: every ClickHouse query of the API from its catalog
/// (`riverbank_api::server::analytics::clickhouse_queries`), each with its sample binds substituted.
fn analytics_queries() -> anyhow::Result<Vec<Statement>> {
    riverbank_api::server::analytics::clickhouse_queries()
        .into_iter()
        .map(|q| {
            let mut binds = q.binds.clone();
            binds.sort_by_key(|(at, _)| *at);
            anyhow::ensure!(
                binds.iter().enumerate().all(|(i, (at, _))| i == *at),
                "{}: bind positions {:?} are not 0..{}",
                q.name,
                binds.iter().map(|(at, _)| at).collect::<Vec<_>>(),
                binds.len()
            );
            let values: Vec<String> = binds.into_iter().map(|(_, v)| v).collect();
            let sql = substitute(&q.sql, &values).with_context(|| q.name.to_string())?;
            Ok(Statement { name: q.name.to_string(), kind: "query", sql })
        })
        .collect()
}

fn statements() -> anyhow::Result<Vec<Statement>> {
    let mut all = ddl_statements()?;
    let queries = analytics_queries()?;
    anyhow::ensure!(!all.is_empty() && !queries.is_empty(), "no DDL or no analytics query to check");
    all.extend(queries);
    Ok(all)
}

fn python() -> anyhow::Result<PathBuf> {
    let p = match std::env::var_os("RIVERBANK_CHDB_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chdb-venv/bin/python"),
    };
    anyhow::ensure!(
        p.exists(),
        "no chdb Python at {}: run tests/chdb/setup (deploy/local/test does) or set RIVERBANK_CHDB_PYTHON",
        p.display()
    );
    Ok(p)
}

#[test]
fn current_engine_runs_every_statement() -> anyhow::Result<()> {
    let statements = statements()?;
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chdb-catalog.json");
    let json = serde_json::to_vec_pretty(&Catalog { database: "riverbank", statements: &statements })?;
    std::fs::write(&file, json).with_context(|| format!("write {}", file.display()))?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/check.py");
    let out = Command::new(python()?).arg(&script).arg(&file).output().context("run check.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    anyhow::ensure!(out.status.success(), "check.py {}:\n{stdout}\n{stderr}", out.status);
    // Every statement ran: check.py's closing line counts them.
    let expected = format!("chdb: {} passed, 0 failed", statements.len());
    anyhow::ensure!(stdout.lines().any(|l| l == expected), "expected `{expected}` from check.py:\n{stdout}");
    Ok(())
}

#[tokio::test]
async fn local_server_runs_every_statement() -> anyhow::Result<()> {
    let url = std::env::var("RIVERBANK_TEST_CH_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into());
    let db = format!("chdb_check_{}", uuid::Uuid::new_v4().simple());
    let server = clickhouse::Client::default().with_url(&url);
    server
        .query_raw(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .with_context(|| format!("create database {db} on {url}"))?;
    let client = server.clone().with_database(&db);
    let mut failed = Vec::new();
    for s in statements()? {
        let run = client.query_raw(&s.sql).execute();
        match tokio::time::timeout(std::time::Duration::from_secs(STATEMENT_TIMEOUT_S), run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{} {}:\n{}\nerror: {e}", s.kind, s.name, s.sql)),
            Err(_) => failed.push(format!("{} {}: over {STATEMENT_TIMEOUT_S} s", s.kind, s.name)),
        }
    }
    server.query_raw(&format!("DROP DATABASE IF EXISTS {db}")).execute().await?;
    anyhow::ensure!(failed.is_empty(), "refused by the local server:\n{}", failed.join("\n\n"));
    Ok(())
}

#[test]
fn substitute_binds_like_the_client() -> anyhow::Result<()> {
    let binds = ["'t\\'x'".to_string(), "1700000000".to_string()];
    assert_eq!(
        substitute("SELECT ?? AS q WHERE a = ? AND b < toDateTime(?)", &binds)?,
        "SELECT ? AS q WHERE a = 't\\'x' AND b < toDateTime(1700000000)"
    );
    // The client's own rendering agrees.
    let q = clickhouse::Client::default().query("SELECT ?? AS q WHERE a = ? AND b < toDateTime(?)");
    let q = q.bind("t'x").bind(1_700_000_000_i64);
    assert_eq!(
        q.sql_display().to_string(),
        substitute("SELECT ?? AS q WHERE a = ? AND b < toDateTime(?)", &binds)?
    );
    assert!(substitute("SELECT ?", &[]).is_err());
    assert!(substitute("SELECT 1", &binds[..1]).is_err());
    assert!(substitute("SELECT ?fields FROM t", &[]).is_err());
    Ok(())
}
