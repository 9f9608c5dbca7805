//! `riverbank dlq list|redrive`: show dead letters and replay them after a fix. A webhook letter is mapped
//! again with the current provider definitions and, if it maps now, produced as the event the original
//! delivery would have become (same event id, so redriving twice changes nothing). A letter from a
//! processor goes back to the topic it came from, as it was.
//!
//! A webhook letter keeps its stored form, not the raw delivery: declared personal data sealed at the
//! edge (`riverbank_ingest::sealing`). The redrive maps that form and produces under the letter's id
//! (the original event id, which the sealed values are bound to): sealed values stay as they are, a
//! value in clear at a pointer declared since is sealed now (so redriving needs the key store). A
//! letter sealed whole (its body was not JSON) stays unmappable.
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use riverbank_ingest::core::sensitive::Pass;
use riverbank_ingest::sealing::{self, Sealer};
use riverbank_runtime::keystore::KeyStore;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::{DeadLetter, Environment, RawEnvelope};

/// Most dead letters read in one command.
pub const LETTERS_MAX: usize = 100_000;
/// How long reading a dead-letter topic may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A dead letter and where it sits.
#[derive(Debug, Clone)]
pub struct Located {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
}

/// Every dead letter of the configured environments (or one), oldest first per partition.
pub async fn read(cfg: &Config, env: Option<Environment>) -> anyhow::Result<Vec<Located>> {
    let topics = kafka::topics(&cfg.kafka);
    let mut out = Vec::new();
    for e in kafka::environments(&cfg.kafka).iter().copied().filter(|e| env.is_none_or(|x| x == *e)) {
        let topic = topics.dead_letters(e);
        let (k, t) = (cfg.kafka.clone(), topic.clone());
        let records = tokio::task::spawn_blocking(move || kafka::read_all(&k, &t, LETTERS_MAX, READ_TIMEOUT))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        for r in records {
            match serde_json::from_slice::<DeadLetter>(&r.payload) {
                Ok(letter) => out.push(Located {
                    topic: topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    letter,
                }),
                Err(e) => {
                    tracing::warn!(%topic, partition = r.partition, offset = r.offset, error = %e, "not a dead letter")
                }
            }
        }
    }
    Ok(out)
}

pub async fn list(cfg: &Config, env: Option<Environment>, json: bool) -> anyhow::Result<()> {
    let letters = read(cfg, env).await?;
    if json {
        for l in &letters {
            println!("{}", serde_json::to_string(&l.letter)?);
        }
        return Ok(());
    }
    println!(
        "{:<38} {:<18} {:<12} {:<14} {:>7}  reason",
        "dead_letter_id", "rejected_by", "source", "tenant", "bytes"
    );
    for l in &letters {
        let d = &l.letter;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(&d.raw_base64).map(|b| b.len()).unwrap_or(0);
        let reason: String = d.reason.chars().take(90).collect();
        println!(
            "{:<38} {:<18} {:<12} {:<14} {:>7}  {reason}",
            d.dead_letter_id.to_string(),
            d.rejected_by,
            d.source.as_deref().or(d.source_topic.as_deref()).unwrap_or("-"),
            d.tenant_id.as_deref().unwrap_or("-"),
            bytes
        );
    }
    println!("{} dead letters", letters.len());
    Ok(())
}

/// What redriving one letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Redriven { topic: String, event_id: uuid::Uuid },
    StillUnmappable(String),
    NotRedrivable(&'static str),
}

/// The event a dead letter becomes when redriven, if it can be redriven now (`Err`: the key store did
/// not answer; nothing was decided).
pub async fn redrive_emit(
    cfg: &Config,
    providers: &std::collections::BTreeMap<String, riverbank_ingest::core::provider::ProviderDef>,
    keys: &KeyStore,
    letter: &DeadLetter,
) -> anyhow::Result<Result<Emit, Outcome>> {
    Ok(match redrive_plan(providers, letter) {
        Err(o) => Err(o),
        Ok(Redrive::Done(r)) => r,
        Ok(Redrive::Seal { def, tenant, env, mapping, raw }) => {
            let plan = sealing::plan(def, &mapping, &raw, Pass::Stored);
            let sealer = Sealer::prepare(keys, tenant, env, plan).await.context("the key store")?;
            let id = letter.dead_letter_id;
            match sealer.seal(tenant, env, id, &mapping, &raw) {
                Err(_) => Err(Outcome::NotRedrivable("a declared value could not be sealed")),
                Ok((mapping, raw)) => {
                    let received_at = letter.received_at.unwrap_or_else(chrono::Utc::now);
                    let topics = kafka::topics(&cfg.kafka);
                    riverbank_ingest::webhooks::emit_redriven(
                        id,
                        &topics,
                        def,
                        tenant,
                        env,
                        &mapping,
                        letter.headers.clone(),
                        &raw,
                        received_at,
                    )
                    .map(|(emit, _)| emit)
                    .map_err(|_| Outcome::NotRedrivable("event does not serialize"))
                }
            }
        }
    })
}

/// What a letter needs before it can be redriven.
enum Redrive<'a> {
    Done(Result<Emit, Outcome>),
    /// A webhook letter that maps now: its personal data sealed, then produced.
    Seal {
        def: &'a riverbank_ingest::core::provider::ProviderDef,
        tenant: &'a str,
        env: Environment,
        mapping: Box<riverbank_ingest::core::provider::Mapping>,
        raw: Vec<u8>,
    },
}

fn redrive_plan<'a>(
    providers: &'a std::collections::BTreeMap<String, riverbank_ingest::core::provider::ProviderDef>,
    letter: &'a DeadLetter,
) -> Result<Redrive<'a>, Outcome> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&letter.raw_base64)
        .map_err(|_| Outcome::NotRedrivable("raw_base64 is not base64"))?;
    if letter.rejected_by == "ingest" {
        let provider = letter.source.as_deref().ok_or(Outcome::NotRedrivable("letter names no provider"))?;
        let def = providers.get(provider).ok_or(Outcome::NotRedrivable("provider has no definition now"))?;
        let tenant = letter.tenant_id.as_deref().ok_or(Outcome::NotRedrivable("letter names no tenant"))?;
        let env = letter.environment.ok_or(Outcome::NotRedrivable("letter names no environment"))?;
        let mapping = def.map(&letter.headers, &raw);
        if let Err(why) = &mapping.result {
            return Err(Outcome::StillUnmappable(why.to_string()));
        }
        return Ok(Redrive::Seal { def, tenant, env, mapping: Box::new(mapping), raw });
    }
    let topic = letter.source_topic.clone().ok_or(Outcome::NotRedrivable("letter names no source topic"))?;
    let input: RawEnvelope =
        serde_json::from_slice(&raw).map_err(|_| Outcome::NotRedrivable("input is not an envelope"))?;
    Ok(Redrive::Done(Ok(Emit {
        topic,
        key: input.tenant_id.clone(),
        event_id: input.event_id,
        payload: raw,
    })))
}

/// Redrive the letters with these ids (all when empty). Prints one line per letter.
pub async fn redrive(cfg: &Config, ids: &[uuid::Uuid], dry_run: bool) -> anyhow::Result<Vec<Outcome>> {
    let providers = riverbank_ingest::server::load_providers(&cfg.ingest.providers_dir)?;
    let letters = read(cfg, None).await?;
    let producer = kafka::producer(&cfg.kafka)?;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    let keys = riverbank_runtime::keystore::from_config(pool, &cfg.keys).await?;
    let timeout = Duration::from_millis(cfg.ingest.produce_timeout_ms);
    let mut outcomes = Vec::new();
    for l in letters.iter().filter(|l| ids.is_empty() || ids.contains(&l.letter.dead_letter_id)) {
        let outcome = match redrive_emit(cfg, &providers, &keys, &l.letter).await? {
            Ok(emit) => {
                if !dry_run {
                    produce_all(&producer, std::slice::from_ref(&emit), timeout)
                        .await
                        .map_err(|e| anyhow::anyhow!(e))
                        .context("producing a redriven event")?;
                    let letter = &l.letter;
                    let env = letter.environment.unwrap_or(riverbank_schemas::Environment::Live);
                    riverbank_runtime::audit::state_operator_action(
                        cfg,
                        riverbank_runtime::audit::OperatorAction {
                            tenant: letter
                                .tenant_id
                                .as_deref()
                                .unwrap_or(riverbank_runtime::audit::PLATFORM_TENANT),
                            env,
                            action: riverbank_schemas::audit::actions::DEAD_LETTER_REDRIVEN,
                            resource_type: "dead_letter",
                            resource_id: &letter.dead_letter_id.to_string(),
                            before: Some(format!("rejected_by={}", letter.rejected_by)),
                            after: Some(format!("redriven as {}", emit.event_id)),
                        },
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("redriven, but not audited: {e}"))?;
                }
                Outcome::Redriven { topic: emit.topic, event_id: emit.event_id }
            }
            Err(o) => o,
        };
        let what = match &outcome {
            Outcome::Redriven { topic, event_id } => {
                format!("{} {event_id} → {topic}", if dry_run { "would redrive" } else { "redriven" })
            }
            Outcome::StillUnmappable(why) => format!("still unmappable: {why}"),
            Outcome::NotRedrivable(why) => format!("not redrivable: {why}"),
        };
        println!("{} {what}", l.letter.dead_letter_id);
        outcomes.push(outcome);
    }
    let done = outcomes.iter().filter(|o| matches!(o, Outcome::Redriven { .. })).count();
    println!(
        "{done} of {} dead letters {}",
        outcomes.len(),
        if dry_run { "would be redriven" } else { "redriven" }
    );
    Ok(outcomes)
}
