//! The one list of processors. Registering a processor is one line in [`processors`]; everything else
//! is derived from its declaration (`Processor::spec`): topic creation, `riverbank run`,
//! `riverbank process NAME`, the sinks' inputs, and the checks in `tests/registry.rs` (every declared
//! output has a consumer and a JSON Schema per event type; the conformance suite runs every processor).
use riverbank_runtime::registry::Runnable;
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::{Environment, Topics};

/// Every processor riverbank runs.
pub fn processors(cfg: &Config) -> Vec<Box<dyn Runnable>> {
    let topics = kafka::topics(&cfg.kafka);
    vec![
        Box::new(audit(cfg, topics.clone())),
        Box::new(riverbank_processors::RiskProcessor::new(topics.clone())),
        Box::new(riverbank_processors::KycProcessor::new(topics.clone(), kyc_limits(cfg))),
        Box::new(fx(cfg, topics.clone())),
        Box::new(billing(cfg, topics.clone())),
        Box::new(transfers(cfg, topics)),
    ]
}

/// `[audit]` as the audit processor's settings. Config validation has already refused a signing key
/// that is not a 64-hex-digit seed.
pub fn audit(cfg: &Config, topics: Topics) -> riverbank_processors::AuditProcessor {
    let a = &cfg.audit;
    let signer = riverbank_crypto::sign::CheckpointSigner::from_seed_hex(a.signing_key.expose()).ok();
    let settings = riverbank_processors::audit::AuditSettings {
        signer: signer.map(std::sync::Arc::new),
        checkpoint_every_records: a.checkpoint_every_records,
        checkpoint_every_ms: i64::try_from(a.checkpoint_every_ms).unwrap_or(i64::MAX),
        inputs_remembered_max: a.inputs_remembered_max,
        logs_per_partition_max: a.logs_per_partition_max,
    };
    riverbank_processors::AuditProcessor::new(topics, settings)
}

fn kyc_limits(cfg: &Config) -> riverbank_processors::KycLimits {
    const DAY_MS: i64 = 86_400_000;
    let k = &cfg.kyc;
    riverbank_processors::KycLimits {
        approval_valid_ms: i64::from(k.approval_valid_days) * DAY_MS,
        expiry_reminder_ms: i64::from(k.expiry_reminder_days) * DAY_MS,
        users_max: k.users_per_partition_max,
        inputs_remembered_max: k.inputs_remembered_max,
    }
}

/// `[fx]` as the FX processor's settings. Config validation has already refused an unknown pivot or
/// rounding mode and any threshold that is not `<amount> <CCY>`, so nothing here is dropped.
pub fn fx(cfg: &Config, topics: Topics) -> riverbank_processors::FxProcessor {
    use riverbank_processors::fx::FxTenantSettings;
    use riverbank_runtime::config::parse_money_text;
    let f = &cfg.fx;
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let thresholds = |list: &[String]| list.iter().filter_map(|t| parse_money_text(t)).collect::<Vec<_>>();
    let defaults = riverbank_processors::FxSettings::default();
    let tenants = f.tenants.iter().map(|(tenant, t)| {
        let otc_thresholds = t.otc_thresholds.as_deref().map(thresholds);
        (tenant.clone(), FxTenantSettings { markup_bps: t.markup_bps, otc_thresholds })
    });
    let settings = riverbank_processors::FxSettings {
        rate_age_max_ms: ms(f.rate_age_max_ms),
        quote_ttl_ms: ms(f.quote_ttl_ms),
        pivot: riverbank_schemas::Currency::from_code(&f.pivot_currency).unwrap_or(defaults.pivot),
        rounding: riverbank_schemas::rounding::RoundingMode::parse(&f.rounding).unwrap_or(defaults.rounding),
        markup_bps_default: f.markup_bps_default,
        otc_thresholds_default: thresholds(&f.otc_thresholds_default),
        tenants: tenants.collect(),
        entries_max: f.entries_per_partition_max,
        final_retention_ms: ms(f.final_retention_ms),
    };
    riverbank_processors::FxProcessor::new(topics, settings)
}

/// `[billing]` as the billing processor's settings (config validation has refused an unknown rounding).
pub fn billing(cfg: &Config, topics: Topics) -> riverbank_processors::BillingProcessor {
    let b = &cfg.billing;
    let settings = riverbank_processors::BillingSettings {
        lateness_ms: i64::try_from(b.lateness_ms).unwrap_or(i64::MAX),
        rounding: riverbank_schemas::rounding::RoundingMode::parse(&b.rounding).unwrap_or_default(),
        fees_remembered_max: b.fees_remembered_max,
        open_invoices_max: b.open_invoices_max,
    };
    riverbank_processors::BillingProcessor::new(topics, settings)
}

fn transfers(cfg: &Config, topics: Topics) -> riverbank_processors::TransfersProcessor {
    let t = &cfg.transfers;
    let limits = riverbank_processors::TransfersLimits {
        final_retention_ms: t.final_retention_s.saturating_mul(1000),
        final_retained_max: t.final_retained_max,
    };
    let reuse = riverbank_processors::ReuseLimits {
        id_reuse_refused_ms: t.id_reuse_refused_s.saturating_mul(1000),
        tombstones_retained_max: t.tombstones_retained_max,
        clock_step_max_ms: t.clock_step_max_ms,
    };
    riverbank_processors::TransfersProcessor::new(topics, limits).with_reuse_limits(reuse)
}

/// Worked examples of the runtime: `riverbank process NAME` runs one; `riverbank run` does not, and
/// nothing is required to consume their outputs. The conformance suite runs them like the others.
pub fn examples(cfg: &Config) -> Vec<Box<dyn Runnable>> {
    let topics = kafka::topics(&cfg.kafka);
    vec![Box::new(riverbank_processors::VolumeProcessor::new(topics))]
}

/// The processor (or example) called `name`, or an error listing the names there are.
pub fn processor(cfg: &Config, name: &str) -> anyhow::Result<Box<dyn Runnable>> {
    let mut all = processors(cfg);
    all.extend(examples(cfg));
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let list = names.join(", ");
    all.into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| anyhow::anyhow!("no processor {name:?}; there are: {list}"))
}

/// Every topic riverbank uses in the configured environments: the edge's, and every processor's
/// log, inputs, outputs and checkpoints.
pub fn all_topics(cfg: &Config) -> Vec<String> {
    let mut all = kafka::all_topics(&cfg.kafka);
    for p in processors(cfg) {
        let specs = specs_of(cfg, p.as_ref());
        all.extend(riverbank_runtime::process::topics_of(cfg, p.name(), &specs));
    }
    all.sort();
    all.dedup();
    all
}

fn specs_of(cfg: &Config, p: &dyn Runnable) -> Vec<(Environment, riverbank_schemas::processor::Spec)> {
    let topics = kafka::topics(&cfg.kafka);
    cfg.kafka.environments.iter().map(|&env| (env, p.spec(&topics, env))).collect()
}

/// The topics the sinks read in one environment: every declared output carrying an event type the
/// sinks project (`riverbank_sinks::rows::PROJECTED`), and ingest's webhooks.
pub fn sink_inputs_in(cfg: &Config, env: Environment) -> Vec<String> {
    let topics = kafka::topics(&cfg.kafka);
    let mut out: Vec<String> = processors(cfg)
        .iter()
        .flat_map(|p| p.spec(&topics, env).outputs)
        .filter(|o| o.event_types.iter().any(|t| riverbank_sinks::rows::PROJECTED.contains(t)))
        .map(|o| o.topic)
        .collect();
    // Ingest's webhooks: the Postgres sink keeps their sealed personal values (`personal_data`).
    out.push(topics.ingest_webhooks(env));
    out.sort();
    out.dedup();
    out
}

/// The sinks' inputs in every configured environment.
pub fn sink_inputs(cfg: &Config) -> Vec<String> {
    cfg.kafka.environments.iter().flat_map(|&env| sink_inputs_in(cfg, env)).collect()
}
