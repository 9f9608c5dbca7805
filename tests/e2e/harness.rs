//! A pipeline of real `riverbank` processes over the real stack, one per test.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use riverbank::demo::{Delivery, Sender};
use riverbank_ingest::core::schemes::sign::Signer;
use riverbank_ingest::core::schemes::Scheme;
use riverbank_schemas::Environment;
use tokio::process::{Child, Command};

pub fn brokers() -> String {
    std::env::var("RIVERBANK_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}
pub fn pg_url() -> String {
    std::env::var("RIVERBANK_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/postgres".into())
}
pub fn ch_url() -> String {
    std::env::var("RIVERBANK_TEST_CH_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A tenant's webhook sender and the key it signs with.
pub fn sender(tenant: &str, seed: u8) -> Sender {
    let secret = secret_of(seed);
    Sender {
        provider: "acmepay".into(),
        tenant_id: tenant.into(),
        environment: Environment::Live,
        scheme: acmepay_scheme(),
        signer: Signer::Secret(secret),
    }
}

pub fn acmepay_scheme() -> Scheme {
    let providers = riverbank_ingest::core::provider::load(&[]).expect("built-in providers");
    providers["acmepay"].signature.clone()
}

pub fn secret_of(seed: u8) -> String {
    use base64::Engine as _;
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([seed; 32]))
}

pub const COMPONENTS: [&[&str]; 5] =
    [&["ingest"], &["process", "audit"], &["sink", "postgres"], &["sink", "clickhouse"], &["api"]];

pub struct Pipeline {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topic_prefix: String,
    pub ingest_url: String,
    pub api_url: String,
    pub pg_db_url: String,
    pub ch_db: String,
    pub ch_url: String,
    pub body_bytes_max: usize,
    children: HashMap<String, Child>,
    pub http: reqwest::Client,
}

impl Pipeline {
    /// Create databases and topics, then start every component as its own process.
    pub async fn start(name: &str, tenants: &[(&str, u8)]) -> anyhow::Result<Pipeline> {
        Self::start_with(name, tenants, &COMPONENTS, "").await
    }

    pub async fn start_with(
        name: &str,
        tenants: &[(&str, u8)],
        components: &[&[&str]],
        extra_toml: &str,
    ) -> anyhow::Result<Pipeline> {
        Self::start_on(name, tenants, components, extra_toml, &ch_url()).await
    }

    /// Start only `components` (each an argument list of `riverbank`).
    /// `extra_toml` is appended to the generated config (sections not generated here); `ch` is the
    /// ClickHouse server to use.
    pub async fn start_on(
        name: &str,
        tenants: &[(&str, u8)],
        components: &[&[&str]],
        extra_toml: &str,
        ch: &str,
    ) -> anyhow::Result<Pipeline> {
        let id = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = std::env::temp_dir().join(format!("riverbank-e2e-{id}"));
        std::fs::create_dir_all(&dir)?;
        let admin = sqlx::PgPool::connect(&pg_url()).await.context("connect to the test Postgres")?;
        sqlx::query(&format!("CREATE DATABASE {id}")).execute(&admin).await?;
        admin.close().await;
        let base = pg_url();
        let pg_db_url = format!("{}/{id}", base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base));
        let (ingest_port, api_port) = (free_port(), free_port());
        let body_bytes_max = 4096;
        let mut toml = format!(
            r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "e2e-{id}."
environments = ["live"]
consumer_session_timeout_ms = 6000
[ingest]
listen_addr = "127.0.0.1:{ingest_port}"
body_bytes_max = {body_bytes_max}
[api]
listen_addr = "127.0.0.1:{api_port}"
require_api_key = false
[postgres]
url = "{pg_db_url}"
[clickhouse]
url = "{ch}"
database = "{id}"
[telemetry]
log_filter = "info"
"#,
            brokers = brokers(),
        );
        // Keys under a header `extra_toml` shares with the generated config join that section.
        let mut extra = String::new();
        let mut merge_into: Option<String> = None;
        for line in extra_toml.lines() {
            let t = line.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                let header = format!("{t}\n");
                merge_into = toml.contains(&format!("\n{header}")).then_some(header);
                if merge_into.is_some() {
                    continue;
                }
            } else if t.starts_with("[[") {
                merge_into = None;
            }
            match &merge_into {
                Some(h) => toml = toml.replacen(&format!("\n{h}"), &format!("\n{h}{line}\n"), 1),
                None => {
                    extra.push_str(line);
                    extra.push('\n');
                }
            }
        }
        let extra_toml = extra.as_str();
        toml.push_str(extra_toml);
        if !extra_toml.contains("[sinks]") {
            toml.push_str("[sinks]\nbatch_linger_ms = 50\n");
        }
        for (tenant, seed) in tenants {
            toml.push_str(&format!(
                "[[ingest.webhooks]]\nprovider = \"acmepay\"\ntenant_id = \"{tenant}\"\nenvironment = \"live\"\nsecrets = [\"{}\"]\n",
                secret_of(*seed)
            ));
        }
        let config = dir.join("riverbank.toml");
        std::fs::write(&config, toml)?;
        let mut p = Pipeline {
            id: id.clone(),
            dir,
            config,
            topic_prefix: format!("e2e-{id}."),
            ingest_url: format!("http://127.0.0.1:{ingest_port}"),
            api_url: format!("http://127.0.0.1:{api_port}"),
            pg_db_url,
            ch_db: id,
            ch_url: ch.to_owned(),
            body_bytes_max,
            children: HashMap::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        };
        let status = Command::new(env!("CARGO_BIN_EXE_riverbank"))
            .arg("--config")
            .arg(&p.config)
            .arg("migrate")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.dir.join("migrate.log"))?)
            .status()
            .await?;
        anyhow::ensure!(
            status.success(),
            "riverbank migrate failed; see {}",
            p.dir.join("migrate.log").display()
        );
        for args in components {
            p.spawn(args)?;
        }
        let mut urls = Vec::new();
        if components.contains(&&["ingest"][..]) {
            urls.push(p.ingest_url.clone());
        }
        if components.contains(&&["api"][..]) {
            urls.push(p.api_url.clone());
        }
        for url in &urls {
            riverbank::demo::wait_healthy(&p.http, url, Duration::from_secs(30))
                .await
                .with_context(|| format!("logs in {}", p.dir.display()))?;
        }
        Ok(p)
    }

    pub fn spawn(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.spawn_named(&args.join("-"), args)
    }

    /// Spawn a component under a name of its own (a second instance of the same component).
    pub fn spawn_named(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        self.spawn_env(name, args, &[])
    }

    /// Spawn a component with config overrides in its environment (`RIVERBANK__SECTION__KEY`).
    pub fn spawn_env(&mut self, name: &str, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<()> {
        let name = name.to_owned();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_riverbank"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.children.insert(name, child);
        Ok(())
    }

    /// Whether a component process is still running.
    pub fn running(&mut self, args: &[&str]) -> bool {
        self.children.get_mut(&args.join("-")).is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL a component: no shutdown hook runs, in-flight work is lost mid-way.
    pub async fn kill(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.kill_named(&args.join("-")).await
    }

    pub async fn kill_named(&mut self, name: &str) -> anyhow::Result<()> {
        let mut child = self.children.remove(name).context("no such component")?;
        child.kill().await?;
        Ok(())
    }

    /// Run `riverbank <args>` to completion against this pipeline's config; returns stdout.
    pub async fn cli(&self, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_riverbank"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "riverbank {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Wait until `url/health` answers 200.
    pub async fn wait_healthy(&self, url: &str) -> anyhow::Result<()> {
        riverbank::demo::wait_healthy(&self.http, url, Duration::from_secs(30))
            .await
            .with_context(|| format!("logs in {}", self.dir.display()))
    }

    pub fn ch(&self) -> clickhouse::Client {
        clickhouse::Client::default().with_url(&self.ch_url).with_database(&self.ch_db).with_validation(false)
    }

    pub async fn pg(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.pg_db_url).await?)
    }

    /// (audit rows of webhooks, sum of their payload_bytes) for a tenant, straight from Postgres.
    pub async fn pg_counts(&self, tenant: &str) -> anyhow::Result<(i64, i64)> {
        let pool = sqlx::PgPool::connect(&self.pg_db_url).await?;
        let row: (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), sum(payload_bytes)::int8 FROM audit_log WHERE tenant_id = $1 AND source_event_type = 'webhook.received'")
                .bind(tenant)
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        Ok((row.0, row.1.unwrap_or(0)))
    }

    /// (audit rows of webhooks, sum of their payload_bytes) for a tenant, straight from ClickHouse, each
    /// record once.
    pub async fn ch_counts(&self, tenant: &str) -> anyhow::Result<(u64, u64)> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct C {
            n: u64,
            bytes: u64,
        }
        let c = self.ch();
        let r: C = c
            .query("SELECT toUInt64(count()) AS n, toUInt64(sum(payload_bytes)) AS bytes FROM audit_trail FINAL WHERE tenant_id = ? AND source_event_type = 'webhook.received'")
            .bind(tenant)
            .fetch_one()
            .await?;
        Ok((r.n, r.bytes))
    }

    /// Raw ClickHouse rows for a tenant, duplicates included (to show replays were collapsed by key).
    pub async fn ch_distinct_ids(&self, tenant: &str) -> anyhow::Result<u64> {
        let c = self.ch();
        Ok(c.query("SELECT toUInt64(uniqExact(audit_id)) FROM audit_trail WHERE tenant_id = ? AND source_event_type = 'webhook.received'")
            .bind(tenant)
            .fetch_one::<u64>()
            .await?)
    }

    /// Wait until both stores hold `want` (rows, bytes) for every tenant, then hold still for a moment
    /// and check again: exactly, not at least.
    pub async fn wait_exact(
        &self,
        want: &HashMap<String, (u64, u64)>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            let mut seen = Vec::new();
            for (tenant, &(rows, bytes)) in want {
                let pg = self.pg_counts(tenant).await?;
                let ch = self.ch_counts(tenant).await?;
                seen.push(format!("{tenant}: pg {pg:?} ch {ch:?} want ({rows}, {bytes})"));
                anyhow::ensure!(pg.0 as u64 <= rows && ch.0 <= rows, "more rows than accepted: {seen:?}");
                all &= (pg.0 as u64, pg.1 as u64) == (rows, bytes) && ch == (rows, bytes);
            }
            if all {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "stores did not converge: {seen:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Nothing more may arrive (no late duplicates).
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (tenant, &(rows, bytes)) in want {
            let pg = self.pg_counts(tenant).await?;
            let ch = self.ch_counts(tenant).await?;
            anyhow::ensure!(
                (pg.0 as u64, pg.1 as u64) == (rows, bytes),
                "{tenant}: postgres {pg:?} != ({rows}, {bytes})"
            );
            anyhow::ensure!(ch == (rows, bytes), "{tenant}: clickhouse {ch:?} != ({rows}, {bytes})");
        }
        Ok(())
    }

    /// Stop every component and drop the test's databases (left in place if the test failed earlier).
    pub async fn finish(mut self) -> anyhow::Result<()> {
        for (_, mut c) in self.children.drain() {
            let _ = c.kill().await;
        }
        let admin = sqlx::PgPool::connect(&pg_url()).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.id)).execute(&admin).await?;
        let c = clickhouse::Client::default().with_url(&self.ch_url).with_validation(false);
        c.query(&format!("DROP DATABASE IF EXISTS {}", self.ch_db)).execute().await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Unique, validly signed deliveries for a sender, with their body sizes.
pub fn deliveries(s: &Sender, tag: &str, n: usize) -> Vec<(Sender, Delivery)> {
    (0..n)
        .map(|i| {
            let body = riverbank::demo::deposit_body(i, &s.tenant_id);
            (s.clone(), Delivery { id: format!("msg_{tag}_{}_{i}", s.tenant_id), body })
        })
        .collect()
}

/// How long `assert_reconciled` lets the stores settle (sinks finishing their last batches).
pub const RECONCILE_SETTLE_MS: u64 = 60_000;

impl Pipeline {
    /// `riverbank reconcile`, in-process, against this pipeline's stores and topics, re-checking for
    /// up to `settle` until everything agrees.
    pub async fn reconcile(&self, settle: Duration) -> anyhow::Result<riverbank::reconcile::Report> {
        let cfg = riverbank_runtime::Config::load(Some(&self.config))?;
        let opts = riverbank::reconcile::Options { environment: None, settle };
        riverbank::reconcile::reconcile(&cfg, &opts).await
    }

    /// Panics with the discrepancies unless Postgres, ClickHouse, the ledger and the sinks' positions
    /// agree within `RECONCILE_SETTLE_MS`.
    pub async fn assert_reconciled(&self) {
        let report = match self.reconcile(Duration::from_millis(RECONCILE_SETTLE_MS)).await {
            Ok(r) => r,
            Err(e) => panic!("reconcile could not run: {e:#}; logs in {}", self.dir.display()),
        };
        assert!(
            report.is_clean(),
            "reconcile found discrepancies after {RECONCILE_SETTLE_MS} ms (logs in {}):\n{}",
            self.dir.display(),
            report.diff_table()
        );
    }
}
