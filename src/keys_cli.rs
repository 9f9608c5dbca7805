//! `riverbank keys rewrap` and `riverbank gdpr erase`: the operator's side of the data-key store
//! (runtime/src/keystore.rs).
use riverbank_runtime::keystore::{self, Erasure, RewrapReport};
use riverbank_runtime::Config;
use riverbank_schemas::Environment;

#[derive(clap::Subcommand)]
pub enum GdprAction {
    /// Erase a data subject: destroy every data key of the subject, so no sealed field of theirs, in any
    /// topic or table, decrypts again (in other processes within keys.cache_ttl_ms; for backups see
    /// ARCHITECTURE.md "Personal data and keys").
    Erase {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = |s: &str| s.parse::<Environment>())]
        environment: Environment,
        /// The subject id the sealed fields name (an opaque id such as the user id).
        #[arg(long)]
        subject: String,
    },
}

async fn store(cfg: &Config) -> anyhow::Result<keystore::KeyStore> {
    use anyhow::Context as _;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
        .await
        .context("connecting to postgres")?;
    keystore::from_config(pool, &cfg.keys).await
}

/// Re-wrap every data key under its class's active key-encryption key (or, dry, say what would move).
/// Fails if any data key could not be unwrapped (it is left as it was).
pub async fn rewrap(cfg: &Config, dry_run: bool) -> anyhow::Result<RewrapReport> {
    let report = store(cfg).await?.rewrap(dry_run).await?;
    let verb = if dry_run { "would rewrap" } else { "rewrapped" };
    for ((class, from, to), count) in &report.moves {
        println!("{verb} {:>8} {class:<24} {from} -> {to}  (failed {})", count.keys, count.failed);
    }
    for class in &report.classes_without_active_kek {
        println!("no active key-encryption key for {class}: its data keys stay where they are");
    }
    println!(
        "{verb} {} data keys in total, {} failed, {} batches",
        report.total(),
        report.failed(),
        report.batches
    );
    if !dry_run {
        // A rewrap concerns every tenant's keys: it is recorded in the platform's own log.
        let env = cfg.kafka.environments.first().copied().unwrap_or(Environment::Live);
        let action = riverbank_runtime::audit::OperatorAction {
            tenant: riverbank_runtime::audit::PLATFORM_TENANT,
            env,
            action: riverbank_schemas::audit::actions::KEYS_REWRAPPED,
            resource_type: "data_keys",
            resource_id: "all",
            before: None,
            after: Some(format!("rewrapped={} failed={}", report.total(), report.failed())),
        };
        riverbank_runtime::audit::state_operator_action(cfg, action)
            .await
            .map_err(|e| anyhow::anyhow!("rewrapped, but not audited: {e}"))?;
    }
    anyhow::ensure!(
        report.failed() == 0,
        "{} data keys could not be unwrapped (is an old key-encryption key missing from the ring?)",
        report.failed()
    );
    Ok(report)
}

/// `riverbank gdpr …`.
pub async fn gdpr(cfg: &Config, action: GdprAction) -> anyhow::Result<()> {
    match action {
        GdprAction::Erase { tenant, environment, subject } => {
            erase(cfg, &tenant, environment, &subject).await.map(|_| ())
        }
    }
}

/// Destroy the subject's data keys and print the count. Returns what was destroyed: the audit record of
/// the erasure is made from it.
pub async fn erase(
    cfg: &Config,
    tenant: &str,
    environment: Environment,
    subject: &str,
) -> anyhow::Result<Erasure> {
    let erasure = store(cfg).await?.erase_subject(tenant, environment, subject).await?;
    let action = riverbank_runtime::audit::OperatorAction {
        tenant,
        env: environment,
        action: riverbank_schemas::audit::actions::SUBJECT_ERASED,
        resource_type: "subject",
        resource_id: subject,
        before: None,
        after: Some(format!("data keys destroyed: {}", erasure.destroyed.len())),
    };
    // The keys are gone either way; an erasure that could not be recorded says so (run it again: it
    // destroys nothing more and records it).
    riverbank_runtime::audit::state_operator_action(cfg, action)
        .await
        .map_err(|e| anyhow::anyhow!("erased, but not audited: {e}"))?;
    let keys: Vec<String> = erasure.destroyed.iter().map(|d| format!("{} v{}", d.class, d.version)).collect();
    println!(
        "erased subject {subject} of tenant {tenant} ({}): {} data keys destroyed{}",
        environment.as_str(),
        erasure.destroyed.len(),
        if keys.is_empty() { String::new() } else { format!(" ({})", keys.join(", ")) }
    );
    Ok(erasure)
}
