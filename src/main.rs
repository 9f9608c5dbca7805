//! The `riverbank` command: wires the crates together. No logic of its own beyond the CLI.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use riverbank_runtime::{kafka, shutdown, telemetry, CancellationToken, Config};

mod bench_crypto;
mod keys_cli;

#[derive(Parser)]
#[command(name = "riverbank", version, about = "Money-movement event pipeline on Kafka")]
struct Cli {
    /// Config file layered over the embedded defaults (then RIVERBANK__SECTION__KEY env vars).
    #[arg(long, short, env = "RIVERBANK_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component in one process: ingest, processors, sinks, api.
    Run,
    /// The HTTP edge: provider webhooks and tenant API commands.
    Ingest,
    /// A stream processor (and its router), by name: `riverbank process --help` lists them.
    Process {
        /// One of the registered processors (src/registry.rs): audit, transfers.
        processor: String,
    },
    /// A sink writing to one store.
    Sink {
        #[arg(value_enum)]
        store: StoreName,
    },
    /// The read API.
    Api,
    /// Create topics, run Postgres migrations and ClickHouse DDL, then exit.
    Migrate,
    /// Send signed demo webhooks for every configured sender and report what landed, then run the
    /// money loop (KYC, screened deposits, provider callbacks, a review, sanctions, a frozen user).
    Demo {
        /// Webhooks to send in total.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Seconds to wait for every webhook to land in both stores.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
        /// Then keep traffic flowing for this many seconds (for the live dashboard).
        #[arg(long, default_value_t = 0)]
        flow_s: u64,
    },
    /// Benchmarks: print figures for one workload (never used as a test).
    Bench {
        #[command(subcommand)]
        which: BenchName,
    },
    /// Tenant API keys (stored hashed; the token is shown once, at creation).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Personal data: erase a data subject by destroying its data keys.
    Gdpr {
        #[command(subcommand)]
        action: keys_cli::GdprAction,
    },
    /// Dead letters: inputs that could not be processed, with the reason.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Check that Postgres, ClickHouse, the ledger and the sinks' positions agree (read-only);
    /// exits non-zero on any difference.
    Reconcile {
        /// One environment (default: every configured one).
        #[arg(long, value_parser = parse_env)]
        env: Option<riverbank_schemas::Environment>,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
        /// Re-run the checks for up to this long until they agree (sinks may be mid-batch); 0: once.
        #[arg(long, default_value_t = 0)]
        settle_ms: u64,
    },
    /// Print the effective config (secrets redacted) after validating it.
    Config,
    /// The audit trail: verify an export or the stores offline; print the checkpoint public key.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Risk scoring: publish rule sets and sanctions lists; backtest a rule set on stored history.
    Risk {
        #[command(subcommand)]
        action: RiskAction,
    },
    /// A realistic fintech mix (KYC, deposits and their callbacks, transfers, payouts, FX, duplicates,
    /// late callbacks) at a rate or flat out, over HTTP with real signatures or straight to the topics.
    Loadgen(riverbank::loadgen::Options),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain, the Merkle tree heads and the signatures of every log of an export
    /// (--file) or of the stores (--postgres, --clickhouse); names the first row of each log that
    /// does not verify and exits non-zero.
    Verify(riverbank::audit_verify::VerifyArgs),
    /// Print the key id and public key (hex) of `audit.signing_key`: what verifiers need.
    PublicKey,
}

#[derive(Subcommand)]
enum RiskAction {
    /// Rule sets (TOML, see deploy/risk/rules.toml).
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Sanctions / blacklists (TOML: list, entries with id, names, ids).
    Lists {
        #[command(subcommand)]
        action: ListsAction,
    },
    /// Replay the risk log through the same rule code with a candidate rule set; print what would
    /// change. Read-only: nothing is produced, no offset moves.
    Backtest {
        #[arg(long)]
        rules: PathBuf,
        /// Screened at or after (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Screened before (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_parser = parse_env)]
        env: Option<riverbank_schemas::Environment>,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Validate a rule set and publish it to every partition (live, or --shadow beside the live one).
    Publish {
        file: PathBuf,
        #[arg(long)]
        shadow: bool,
        #[arg(long, value_parser = parse_env)]
        env: Option<riverbank_schemas::Environment>,
        /// Who publishes (recorded with the publication).
        #[arg(long, default_value = "cli")]
        by: String,
    },
    /// Validate a rule set file and print its version; publish nothing.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum ListsAction {
    /// Validate a list, digest its names with `risk.name_key`, and publish it to every partition.
    Publish {
        file: PathBuf,
        #[arg(long, value_parser = parse_env)]
        env: Option<riverbank_schemas::Environment>,
        #[arg(long, default_value = "cli")]
        by: String,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print its token (once).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = parse_env)]
        env: riverbank_schemas::Environment,
        /// admin, operator, viewer, rates_publisher, compliance_officer or auditor.
        #[arg(long, value_parser = parse_role)]
        role: riverbank_ingest::core::commands::Role,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key by id (`k…`); ingest refuses it within `ingest.api_key_cache_ttl_ms`.
    Revoke { key_id: String },
    /// List keys (never their secrets), newest first.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Field encryption: re-wrap every data key under its class's active key-encryption key (after a
    /// rotation); --dry-run says what would move and changes nothing.
    Rewrap {
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show dead letters (all configured environments, or one).
    List {
        #[arg(long, value_parser = parse_env)]
        env: Option<riverbank_schemas::Environment>,
        /// One JSON object per line, raw input included.
        #[arg(long)]
        json: bool,
    },
    /// Replay dead letters after a fix: by id, or every one with --all.
    Redrive {
        ids: Vec<uuid::Uuid>,
        #[arg(long)]
        all: bool,
        /// Say what would happen; produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_env(s: &str) -> Result<riverbank_schemas::Environment, String> {
    s.parse()
}

fn parse_role(s: &str) -> Result<riverbank_ingest::core::commands::Role, String> {
    riverbank_ingest::core::commands::Role::parse(s)
        .ok_or_else(|| "one of admin, operator, viewer, rates_publisher, compliance_officer".to_owned())
}

#[derive(Subcommand)]
enum BenchName {
    /// apply alone; the transfers processor on the broker with checkpoints; a passthrough ceiling.
    Transfers(Workload),
    /// Signed webhooks over loopback at full speed vs an axum hello-world (the ceiling).
    Ingest {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Rows/s through each sink vs the bare COPY / inserter rate; produce → queryable latency.
    Sinks(Workload),
    /// One transfers partition at scale: snapshot, restore, steady-state checkpoint cost; bincode vs JSON.
    State {
        #[arg(long, default_value_t = 1_000_000)]
        accounts: usize,
        #[arg(long, default_value_t = 1_000_000)]
        transfers: usize,
        #[arg(long, default_value_t = 1_000)]
        batch_inputs: usize,
    },
    /// Risk scoring: apply alone; on the broker with its router and checkpoints (and a routed
    /// passthrough); POST /v1/transfers accepted → decision landed at an offered load.
    Risk(riverbank::bench_risk::Options),
    /// FX: apply alone (quotes, conversions, OTC decisions, rates, ledger answers); on the broker with
    /// its router and checkpoints, and a routed passthrough over the same inputs.
    Fx(riverbank::bench_fx::Options),
    /// Billing: apply alone (fee configs, transfer status changes, ledger answers; fees/s); on the
    /// broker with its router and checkpoints, and a routed passthrough over the same inputs.
    Billing(riverbank::bench_billing::Options),
    /// Field encryption: ns per seal and open (16, 256, 4096 bytes), data-key wrap/unwrap, pseudonyms.
    Crypto(bench_crypto::Options),
    /// The live component: events/s it keeps up with while two dashboard streams are open, and the
    /// delay from an event's acceptance to its first window frame (p50/p99), at rising rates.
    Live(riverbank::bench_live::Options),
    /// The same stateful job in riverbank and Quix Streams 3.28 (bench/peers/quix): results/s, CPU,
    /// p99, and outputs duplicated or missing after a SIGKILL of each.
    Peer(riverbank::bench_peer::Options),
    /// The whole pipeline (`riverbank run` as a child) driven by the loadgen at rising rates: accept →
    /// queryable in Postgres and ClickHouse, CPU per 1,000 events, consumer lag per group.
    Pipeline(riverbank::bench_pipeline::Options),
}

/// The workload of the transfers and sinks benchmarks.
#[derive(clap::Args)]
struct Workload {
    #[arg(long, default_value_t = 8)]
    tenants: usize,
    /// Transfers per tenant (each is 3-7 inputs, each input a few messages).
    #[arg(long, default_value_t = 2_000)]
    per_tenant: usize,
    /// Input rate for the latency phase.
    #[arg(long, default_value_t = 2_000)]
    rate_per_s: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreName {
    Postgres,
    Clickhouse,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    telemetry::init(&cfg.telemetry);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let stop = shutdown::on_signals();
        // Only the long-running components serve metrics (one-shot commands would take their port).
        if matches!(
            cli.command,
            Command::Run | Command::Ingest | Command::Process { .. } | Command::Sink { .. } | Command::Api
        ) {
            telemetry::install_metrics(&cfg.telemetry)?;
        }
        match cli.command {
            Command::Run => run_all(&cfg, stop).await,
            Command::Ingest => riverbank_ingest::serve(&cfg, stop).await,
            Command::Process { processor } => {
                riverbank::registry::processor(&cfg, &processor)?.run(cfg.clone(), stop).await
            }
            Command::Sink { store: StoreName::Postgres } => run_postgres_sink(&cfg, stop).await,
            Command::Sink { store: StoreName::Clickhouse } => run_clickhouse_sink(&cfg, stop).await,
            Command::Api => riverbank_api::serve(&cfg, stop).await,
            Command::Migrate => migrate(&cfg).await,
            Command::Demo { count, wait_s, flow_s } => {
                riverbank::demo::run(&cfg, count, wait_s).await?;
                riverbank::money_loop::demo(&cfg, wait_s, flow_s).await
            }
            Command::Bench { which: BenchName::Transfers(w) } => {
                riverbank::bench::transfers(&cfg, w.tenants, w.per_tenant, w.rate_per_s).await
            }
            Command::Bench { which: BenchName::Ingest { seconds, concurrency } } => {
                riverbank::bench::ingest(&cfg, seconds, concurrency).await
            }
            Command::Bench { which: BenchName::Sinks(w) } => {
                riverbank::bench::sinks(&cfg, w.tenants, w.per_tenant, w.rate_per_s).await
            }
            Command::Bench { which: BenchName::State { accounts, transfers, batch_inputs } } => {
                riverbank::bench_state::state(&cfg, accounts, transfers, batch_inputs).await
            }
            Command::Bench { which: BenchName::Risk(o) } => riverbank::bench_risk::risk(&cfg, &o).await,
            Command::Bench { which: BenchName::Fx(o) } => riverbank::bench_fx::fx(&cfg, &o).await,
            Command::Bench { which: BenchName::Billing(o) } => {
                riverbank::bench_billing::billing(&cfg, &o).await
            }
            Command::Bench { which: BenchName::Crypto(o) } => bench_crypto::crypto(&o),
            Command::Bench { which: BenchName::Live(o) } => riverbank::bench_live::live(&cfg, &o).await,
            Command::Bench { which: BenchName::Peer(o) } => riverbank::bench_peer::peer(&cfg, &o).await,
            Command::Bench { which: BenchName::Pipeline(o) } => {
                riverbank::bench_pipeline::pipeline(&cfg, &o).await
            }
            Command::Loadgen(o) => riverbank::loadgen::run(&cfg, &o).await,
            Command::Gdpr { action } => keys_cli::gdpr(&cfg, action).await,
            Command::Keys { action } => keys(&cfg, action).await,
            Command::Dlq { action: DlqAction::List { env, json } } => {
                riverbank::dlq::list(&cfg, env, json).await
            }
            Command::Dlq { action: DlqAction::Redrive { ids, all, dry_run } } => {
                anyhow::ensure!(all == ids.is_empty(), "name dead letter ids, or --all (not both)");
                riverbank::dlq::redrive(&cfg, &ids, dry_run).await.map(|_| ())
            }
            Command::Reconcile { env, json, settle_ms } => {
                riverbank::reconcile::run(&cfg, env, json, settle_ms).await
            }
            Command::Risk { action } => risk(&cfg, action).await,
            Command::Audit { action: AuditCommand::Verify(args) } => {
                riverbank::audit_verify::run(&cfg, &args).await
            }
            Command::Audit { action: AuditCommand::PublicKey } => {
                let signer =
                    riverbank_crypto::sign::CheckpointSigner::from_seed_hex(cfg.audit.signing_key.expose())?;
                println!("{}={}", signer.key_id(), signer.public_key_hex());
                Ok(())
            }
            Command::Config => {
                let (providers, _) = riverbank_ingest::server::webhook_keys(&cfg)?;
                println!("{cfg:#?}");
                for def in providers.values() {
                    println!(
                        "provider {:<12} {:<18} {} event types  {}",
                        def.name,
                        def.signature.name(),
                        def.event.types.len(),
                        def.description
                    );
                }
                Ok(())
            }
        }
    })
}

async fn risk(cfg: &Config, action: RiskAction) -> anyhow::Result<()> {
    use riverbank::risk as r;
    match action {
        RiskAction::Rules { action: RulesAction::Publish { file, shadow, env, by } } => {
            r::publish_rules(cfg, &file, shadow, env, &by).await
        }
        RiskAction::Rules { action: RulesAction::Check { file } } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let rules = riverbank_processors::risk::parse_rules(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("rule set {} version {}: valid", rules.name, rules.version);
            Ok(())
        }
        RiskAction::Lists { action: ListsAction::Publish { file, env, by } } => {
            r::publish_list(cfg, &file, env, &by).await
        }
        RiskAction::Backtest { rules, from, to, tenant, env } => {
            r::backtest(cfg, &rules, r::Window { from, to, tenant }, env).await
        }
    }
}

async fn migrate(cfg: &Config) -> anyhow::Result<()> {
    kafka::ensure_topics(&cfg.kafka, &riverbank::registry::all_topics(cfg))
        .await
        .context("creating topics")?;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
        .await
        .context("connecting to postgres")?;
    riverbank_sinks::postgres::migrate(&pool).await.context("postgres migrations")?;
    riverbank_ingest::store::migrate(&pool).await.context("ingest schema")?;
    riverbank_sinks::clickhouse::create(&cfg.clickhouse).await.context("clickhouse ddl")?;
    tracing::info!("topics, postgres and clickhouse are up to date");
    Ok(())
}

async fn keys(cfg: &Config, action: KeysAction) -> anyhow::Result<()> {
    use riverbank_runtime::apikeys as store;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
        .await
        .context("connecting to postgres")?;
    riverbank_ingest::store::migrate(&pool).await.context("ingest schema")?;
    match action {
        KeysAction::Create { tenant, env, role, label } => {
            anyhow::ensure!(
                riverbank_runtime::config::is_tenant_id(&tenant),
                "tenant id must be 1-64 of ASCII letters, digits, '-', '_'"
            );
            let (key, token) = store::create_key(&pool, &tenant, env, role, &label).await?;
            // A key nobody can find in the audit trail is never handed out: unaudited, it is revoked.
            let stated = riverbank_runtime::audit::state_operator_action(
                cfg,
                riverbank_runtime::audit::OperatorAction {
                    tenant: &key.tenant_id,
                    env: key.environment,
                    action: riverbank_schemas::audit::actions::API_KEY_CREATED,
                    resource_type: "api_key",
                    resource_id: &key.key_id,
                    before: None,
                    after: Some(format!("role={}", key.role.as_str())),
                },
            )
            .await;
            if let Err(e) = stated {
                store::revoke_key(&pool, &key.key_id).await?;
                anyhow::bail!("the key could not be audited ({e}); it was revoked again");
            }
            eprintln!(
                "created {} for tenant {} ({}, role {}); the token below is shown only now:",
                key.key_id,
                key.tenant_id,
                key.environment,
                key.role.as_str()
            );
            println!("{token}");
        }
        KeysAction::Revoke { key_id } => {
            let key = store::find_key(&pool, &key_id).await?;
            anyhow::ensure!(store::revoke_key(&pool, &key_id).await?, "no live key {key_id}");
            if let Some(key) = key {
                let stated = riverbank_runtime::audit::state_operator_action(
                    cfg,
                    riverbank_runtime::audit::OperatorAction {
                        tenant: &key.tenant_id,
                        env: key.environment,
                        action: riverbank_schemas::audit::actions::API_KEY_REVOKED,
                        resource_type: "api_key",
                        resource_id: &key.key_id,
                        before: Some(format!("role={}", key.role.as_str())),
                        after: Some("revoked".to_owned()),
                    },
                )
                .await;
                // Revoked either way: a revocation is never held back by the audit trail.
                if let Err(e) = stated {
                    anyhow::bail!("revoked {key_id}, but the revocation could not be audited: {e}");
                }
            }
            println!("revoked {key_id}");
        }
        KeysAction::Rewrap { dry_run } => {
            keys_cli::rewrap(cfg, dry_run).await?;
        }
        KeysAction::List { tenant, limit } => {
            for k in store::list_keys(&pool, tenant.as_deref(), limit).await? {
                println!(
                    "{}  {:<16} {:<8} {:<16} {}  {}  {}",
                    k.key_id,
                    k.tenant_id,
                    k.environment.as_str(),
                    k.role.as_str(),
                    k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    k.revoked_at
                        .map_or("live".to_owned(), |t| format!("revoked {}", t.format("%Y-%m-%dT%H:%M:%SZ"))),
                    k.label
                );
            }
        }
    }
    Ok(())
}

async fn run_postgres_sink(cfg: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
        .await
        .context("connecting to postgres")?;
    if cfg.postgres.migrate_on_start {
        riverbank_sinks::postgres::migrate(&pool).await.context("postgres migrations")?;
    }
    let store = riverbank_sinks::postgres::PostgresSink::new(pool);
    riverbank_runtime::sink::run(cfg, store, riverbank::registry::sink_inputs(cfg), stop).await
}

async fn run_clickhouse_sink(cfg: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    if cfg.clickhouse.create_on_start {
        riverbank_sinks::clickhouse::create(&cfg.clickhouse).await.context("clickhouse ddl")?;
    }
    let store = riverbank_sinks::clickhouse::ClickHouseSink::new(
        &cfg.clickhouse,
        riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?,
    );
    riverbank_runtime::sink::run(cfg, store, riverbank::registry::sink_inputs(cfg), stop).await
}

/// Every component as a task; the first to fail stops the others.
async fn run_all(cfg: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    migrate(cfg).await?;
    let mut tasks = tokio::task::JoinSet::new();
    macro_rules! component {
        ($name:expr, |$c:ident, $s:ident| $body:expr) => {{
            let ($c, $s) = (cfg.clone(), stop.clone());
            tasks.spawn(async move { ($name, $body.await) });
        }};
    }
    component!("ingest", |c, s| riverbank_ingest::serve(&c, s));
    for p in riverbank::registry::processors(cfg) {
        let (name, run) = (p.name(), p.run(cfg.clone(), stop.clone()));
        tasks.spawn(async move { (name, run.await) });
    }
    component!("sink:postgres", |c, s| run_postgres_sink(&c, s));
    component!("sink:clickhouse", |c, s| run_clickhouse_sink(&c, s));
    component!("api", |c, s| riverbank_api::serve(&c, s));
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("component panicked")?;
        if let Err(e) = result {
            tracing::error!(component = name, error = %e, "component failed; stopping the rest");
            first_error.get_or_insert(e.context(name));
        }
        stop.cancel();
    }
    first_error.map_or(Ok(()), Err)
}
