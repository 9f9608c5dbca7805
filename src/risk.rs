//! `riverbank risk …`: publish rule sets and sanctions lists as reference inputs, and backtest a rule
//! set against stored history.
//!
//! **Backtest.** The history is the risk processor's own log (`{env}.risk.inputs`): every screening
//! request, KYC change, rate, list and rule publication, and tick, in the order the live processor saw
//! them. Each partition is replayed twice through the real engine and the real processor
//! (`riverbank_runtime::registry::replay`): once as it ran (the published rule sets decide: the
//! decisions it made) and once with the candidate rule set deciding every transfer
//! (`RiskProcessor::with_rules`). No second implementation of any rule exists. The paired decisions
//! become an Arrow `RecordBatch`, and DataFusion answers the aggregations (outcome pairs, changes per
//! rule set, examples). Nothing is produced and no group offset moves: nothing live is touched.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use riverbank_processors::risk::{parse_list, parse_rules, RiskProcessor};
use riverbank_runtime::engine::OwnedRecord;
use riverbank_runtime::produce::{produce_all, Emit, SOURCE_HEADER, TICK_HEADER};
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::risk::{event_types as et, DecisionRecorded, RulesPublished};
use riverbank_schemas::{derived_id, Envelope, Environment};

/// Log records read per backtest at most.
pub const BACKTEST_RECORDS_MAX: usize = 5_000_000;
/// How long reading the log may take.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Changed decisions printed as examples.
const EXAMPLES_MAX: usize = 10;
/// The tenant id reference publications carry (they are for every tenant).
pub const PLATFORM_TENANT: &str = "platform";

fn environments(cfg: &Config, env: Option<Environment>) -> Vec<Environment> {
    kafka::environments(&cfg.kafka).iter().copied().filter(|e| env.is_none_or(|x| x == *e)).collect()
}

async fn publish(
    cfg: &Config,
    env: Option<Environment>,
    event_type: &str,
    id_parts: &[&str],
    payload: serde_json::Value,
) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    kafka::ensure_topics(&cfg.kafka, &crate::registry::all_topics(cfg)).await.context("creating topics")?;
    let producer = kafka::producer(&cfg.kafka)?;
    let now = Utc::now();
    for e in environments(cfg, env) {
        let stamp = now.timestamp_millis().to_string();
        let mut parts = vec![event_type, e.as_str(), stamp.as_str()];
        parts.extend_from_slice(id_parts);
        let id = derived_id(&parts);
        let envelope =
            Envelope::new(id, event_type, PLATFORM_TENANT, e, now, "riverbank.cli", payload.clone());
        let emit = Emit {
            topic: topics.risk_reference(e),
            key: PLATFORM_TENANT.to_owned(),
            event_id: id,
            payload: serde_json::to_vec(&envelope)?,
        };
        produce_all(&producer, &[emit], Duration::from_millis(cfg.kafka.message_timeout_ms))
            .await
            .map_err(|err| anyhow::anyhow!("publishing to {}: {err}", topics.risk_reference(e)))?;
        println!("published {event_type} {id} to {}", topics.risk_reference(e));
    }
    Ok(())
}

/// `riverbank risk rules publish FILE [--shadow]`.
pub async fn publish_rules(
    cfg: &Config,
    file: &std::path::Path,
    shadow: bool,
    env: Option<Environment>,
    by: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rules = parse_rules(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!(
        "rule set {} version {} ({})",
        rules.name,
        rules.version,
        if shadow { "shadow" } else { "live" }
    );
    let version = rules.version.clone();
    let p = RulesPublished { rules, shadow, published_by: by.to_owned() };
    publish(
        cfg,
        env,
        et::RULES_PUBLISHED,
        &[&version, if shadow { "shadow" } else { "live" }],
        serde_json::to_value(&p)?,
    )
    .await
}

/// `riverbank risk lists publish FILE`.
pub async fn publish_list(
    cfg: &Config,
    file: &std::path::Path,
    env: Option<Environment>,
    by: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    publish_list_text(cfg, &text, env, by).await.with_context(|| file.display().to_string())
}

/// Validate, digest and publish a list given as TOML text.
pub async fn publish_list_text(
    cfg: &Config,
    text: &str,
    env: Option<Environment>,
    by: &str,
) -> anyhow::Result<()> {
    let list =
        parse_list(text, cfg.risk.name_key.expose().as_bytes(), by).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("list {} version {}: {} entries", list.list, list.version, list.entries.len());
    let version = list.version.clone();
    publish(cfg, env, et::LIST_PUBLISHED, &[&list.list.clone(), &version], serde_json::to_value(&list)?).await
}

/// Filters of a backtest.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub tenant: Option<String>,
}

impl Window {
    fn admits(&self, tenant: &str, d: &DecisionRecorded) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.from.is_none_or(|f| d.screened_at >= f)
            && self.to.is_none_or(|t| d.screened_at < t)
    }
}

/// One screened transfer, as decided then and as the candidate decides it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub tenant: String,
    pub transfer_id: String,
    pub version: u32,
    pub screened_at_ms: i64,
    pub old: DecisionRecorded,
    pub new: DecisionRecorded,
}

/// The live decisions (not shadow, not an officer's) in `emits`, by (tenant, transfer, version).
fn decisions(emits: &[Emit], decisions_topic: &str) -> BTreeMap<(String, String, u32), DecisionRecorded> {
    let mut out = BTreeMap::new();
    for e in emits.iter().filter(|e| e.topic == decisions_topic) {
        let Ok(env) = serde_json::from_slice::<Envelope<serde_json::Value>>(&e.payload) else { continue };
        if env.event_type != et::DECISION_RECORDED {
            continue;
        }
        let Ok(d) = serde_json::from_value::<DecisionRecorded>(env.payload) else { continue };
        if d.shadow || d.reviewed_by.is_some() {
            continue;
        }
        out.insert((env.tenant_id, d.transfer_id.clone(), d.transfer_version), d);
    }
    out
}

/// Replay the records of one log partition as it ran and with `candidate`, and pair the decisions.
pub fn backtest_partition(
    cfg: &Config,
    env: Environment,
    records: &[OwnedRecord],
    candidate: &riverbank_schemas::risk::Rules,
    window: &Window,
) -> Result<Vec<Pair>, String> {
    let topics = kafka::topics(&cfg.kafka);
    let live = RiskProcessor::new(topics.clone());
    let trial = live.clone().with_rules(candidate.clone());
    let old = riverbank_runtime::registry::replay(&live, &topics, env, records, &[])?;
    let new = riverbank_runtime::registry::replay(&trial, &topics, env, records, &[])?;
    let decisions_topic = topics.risk_decisions(env);
    let (old, mut new) = (decisions(&old, &decisions_topic), decisions(&new, &decisions_topic));
    let mut pairs = Vec::new();
    for ((tenant, transfer_id, version), o) in old {
        let Some(n) = new.remove(&(tenant.clone(), transfer_id.clone(), version)) else { continue };
        if window.admits(&tenant, &o) {
            let screened_at_ms = o.screened_at.timestamp_millis();
            pairs.push(Pair { tenant, transfer_id, version, screened_at_ms, old: o, new: n });
        }
    }
    Ok(pairs)
}

/// The pairs as one Arrow batch.
pub fn to_batch(pairs: &[Pair]) -> anyhow::Result<RecordBatch> {
    let word = |d: &DecisionRecorded| {
        serde_json::to_value(d.decision).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    };
    let rules = |d: &DecisionRecorded| {
        d.hits.iter().filter(|h| h.score > 0).map(|h| h.rule.as_str()).collect::<Vec<_>>().join(" ")
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("transfer_id", DataType::Utf8, false),
        Field::new("version", DataType::UInt32, false),
        Field::new("screened_at_ms", DataType::Int64, false),
        Field::new("old_decision", DataType::Utf8, false),
        Field::new("new_decision", DataType::Utf8, false),
        Field::new("old_score", DataType::UInt32, false),
        Field::new("new_score", DataType::UInt32, false),
        Field::new("old_rule_set", DataType::Utf8, false),
        Field::new("new_rules", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.tenant.as_str()))),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.transfer_id.as_str()))),
        Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.version))),
        Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.screened_at_ms))),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| word(&p.old)))),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| word(&p.new)))),
        Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.old.score))),
        Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.new.score))),
        Arc::new(StringArray::from_iter_values(
            pairs.iter().map(|p| format!("{} {}", p.old.rule_set, p.old.rule_set_version)),
        )),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| rules(&p.new)))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The backtest's answers, from DataFusion over the paired decisions.
pub async fn report(batch: RecordBatch) -> anyhow::Result<Vec<(String, RecordBatch)>> {
    let ctx = SessionContext::new();
    ctx.register_batch("decisions", batch)?;
    let examples = format!(
        "SELECT tenant, transfer_id, version, old_decision, old_score, new_decision, new_score, new_rules \
         FROM decisions WHERE old_decision <> new_decision ORDER BY screened_at_ms, tenant, transfer_id LIMIT {EXAMPLES_MAX}"
    );
    let queries = [
        (
            "outcomes, old vs new",
            "SELECT old_decision, new_decision, count(*) AS transfers, \
             sum(CASE WHEN old_decision <> new_decision THEN 1 ELSE 0 END) AS changed \
             FROM decisions GROUP BY old_decision, new_decision ORDER BY old_decision, new_decision",
        ),
        (
            "per outcome",
            "SELECT d AS decision, sum(o) AS old, sum(n) AS new FROM ( \
               SELECT old_decision AS d, 1 AS o, 0 AS n FROM decisions \
               UNION ALL SELECT new_decision AS d, 0 AS o, 1 AS n FROM decisions) t \
             GROUP BY d ORDER BY d",
        ),
        ("examples of changed decisions", examples.as_str()),
    ];
    let mut out = Vec::new();
    for (title, sql) in queries {
        let batches = ctx.sql(sql).await?.collect().await?;
        let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(Schema::empty()));
        let merged = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        out.push((title.to_owned(), merged));
    }
    Ok(out)
}

/// Read one environment's risk log, partition by partition, as the engine replays it.
pub fn read_log(cfg: &Config, env: Environment) -> Result<BTreeMap<i32, Vec<OwnedRecord>>, String> {
    let topics = kafka::topics(&cfg.kafka);
    let log = topics.log(env, "risk");
    let records = kafka::read_all(&cfg.kafka, &log, BACKTEST_RECORDS_MAX, READ_TIMEOUT)?;
    if records.len() >= BACKTEST_RECORDS_MAX {
        return Err(format!(
            "{log} holds more than {BACKTEST_RECORDS_MAX} records (BACKTEST_RECORDS_MAX); narrow it down"
        ));
    }
    let mut by_partition: BTreeMap<i32, Vec<(i64, OwnedRecord)>> = BTreeMap::new();
    for r in records {
        let rec = OwnedRecord {
            source: r.header(SOURCE_HEADER).map(str::to_owned),
            tick: r.header(TICK_HEADER).map(str::to_owned),
            payload: r.payload,
        };
        by_partition.entry(r.partition).or_default().push((r.offset, rec));
    }
    Ok(by_partition
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_by_key(|(o, _)| *o);
            (p, v.into_iter().map(|(_, r)| r).collect())
        })
        .collect())
}

/// `riverbank risk backtest --rules FILE [--from T] [--to T] [--tenant T] [--env E]`.
pub async fn backtest(
    cfg: &Config,
    file: &std::path::Path,
    window: Window,
    env: Option<Environment>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let candidate = parse_rules(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("candidate rule set {} version {}", candidate.name, candidate.version);
    let mut pairs = Vec::new();
    for e in environments(cfg, env) {
        let (c, w, cand) = (cfg.clone(), window.clone(), candidate.clone());
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<Pair>, String> {
            let mut out = Vec::new();
            for (_, records) in read_log(&c, e)? {
                out.extend(backtest_partition(&c, e, &records, &cand, &w)?);
            }
            Ok(out)
        })
        .await?
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        println!("{e}: {} screened transfers in the window", found.len());
        pairs.extend(found);
    }
    for (title, batch) in report(to_batch(&pairs)?).await? {
        println!("\n{title}:\n{}", pretty_format_batches(&[batch])?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_schemas::processor::Processor as _;

    /// A log as the router writes it: the risk processor's examples, each a routed or broadcast copy.
    fn log(cfg: &Config, env: Environment) -> Vec<OwnedRecord> {
        let topics = kafka::topics(&cfg.kafka);
        let p = RiskProcessor::new(topics.clone());
        p.examples(env)
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let source =
                    if e.event_type.starts_with("risk.rules") || e.event_type.starts_with("risk.list") {
                        topics.risk_reference(env)
                    } else if e.event_type.starts_with("fx.") {
                        topics.fx_rates(env)
                    } else {
                        topics.transfer_screening(env)
                    };
                OwnedRecord::routed(e, &source, 0, i as i64)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_backtest_pairs_every_screening_and_reports_what_changes() {
        let cfg = Config::load(None).expect("default config");
        let env = Environment::Live;
        let records = log(&cfg, env);
        let mut strict = parse_rules(riverbank_processors::risk::DEFAULT_RULES_TOML).expect("valid");
        strict.name = "strict".into();
        strict.threshold[0].amount_over_minor = 1; // everything above 0.01 USD goes to review
        let strict = strict.sealed();
        let pairs = backtest_partition(&cfg, env, &records, &strict, &Window::default()).expect("replays");
        assert!(pairs.len() >= 5, "{pairs:?}");
        assert!(pairs.iter().all(|p| p.new.rule_set_version == strict.version));
        let changed: Vec<&Pair> = pairs.iter().filter(|p| p.old.decision != p.new.decision).collect();
        assert!(!changed.is_empty(), "a stricter threshold changes some approvals");
        // The same rules as ran change nothing.
        let same = parse_rules(riverbank_processors::risk::DEFAULT_RULES_TOML).expect("valid");
        let unchanged = backtest_partition(&cfg, env, &records, &same, &Window::default()).expect("replays");
        assert!(unchanged.iter().all(|p| p.old.decision == p.new.decision && p.old.score == p.new.score));
        // Windows narrow by tenant.
        let only_b = Window { tenant: Some("tenant-b".into()), ..Window::default() };
        let b = backtest_partition(&cfg, env, &records, &strict, &only_b).expect("replays");
        assert!(!b.is_empty() && b.iter().all(|p| p.tenant == "tenant-b"));
        // DataFusion's tables agree with the pairs.
        let tables = report(to_batch(&pairs).expect("batch")).await.expect("report");
        let outcomes = pretty_format_batches(&[tables[0].1.clone()]).expect("table").to_string();
        assert!(outcomes.contains("old_decision") && outcomes.contains("changed"), "{outcomes}");
        let total: u64 = {
            use datafusion::arrow::array::AsArray as _;
            let col = tables[0].1.column_by_name("transfers").expect("transfers column");
            col.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .map(|v| *v as u64)
                .sum()
        };
        assert_eq!(total, pairs.len() as u64);
        assert_eq!(tables[2].1.num_rows(), changed.len().min(EXAMPLES_MAX));
    }
}
