//! `riverbank bench risk`: figures for the risk-scoring processor, printed and written as JSON, never
//! asserted.
//!
//! 1. `RiskProcessor::apply` alone on one core over a generated workload ([`workload`]): the reference
//!    data and users' KYC first (untimed), then the screening requests, timed; the median of 5 runs and
//!    the decision mix.
//! 2. On the broker: the real processor with its router and checkpoints (`process::run`, a fresh topic
//!    prefix), the same inputs produced to the real source topics (rates to `fx.commands`, the sanctions
//!    list to `risk.reference`, KYC `user.*` events to `kyc.events`, screening requests to
//!    `transfers.screening`), measured as decisions landing on `risk.decisions` in steady state; then
//!    `bench transfers`' passthrough behind a router of its own over the same screening requests, as the
//!    ceiling of router + loop on this broker.
//! 3. Latency: ingest, the transfers processor and the risk processor as tasks of this process; users
//!    approved first (their `user.*` events on `kyc.events`); `POST /v1/transfers` at an offered load
//!    (open loop); from each 202 to the arrival of its `risk.decision_recorded` on `risk.decisions`
//!    (this process's consumer, same clock); and the share of accepted transfers screened.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_processors::risk::{parse_list, RiskProcessor, RiskState};
use riverbank_runtime::produce::Emit;
use riverbank_runtime::{kafka, CancellationToken, Config};
use riverbank_schemas::commands::{command_types, FxRate, FxRatesPublished};
use riverbank_schemas::kyc::{event_types as kyc_types, KycStatus, UserKycChanged, UserStatus};
use riverbank_schemas::processor::{InputRef, Processor, Spec, Verdict, Via};
use riverbank_schemas::risk::{event_types as et, name_keys, DecisionRecorded};
use riverbank_schemas::transfers::{Counterparty, RiskOutcome, ScreeningRequested};
use riverbank_schemas::{
    derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics, TransferKind,
};
use serde_json::json;

use crate::bench::{
    drain, free_local_addr, median, percentile, print_machine, produce_to, router_caught_up, write_report,
    RoutedPassthrough,
};
use crate::workload::Lcg;

/// Tenants the users are spread over (inputs are keyed by tenant: a log partition holds whole tenants).
const TENANTS: usize = 16;
/// Entries of the generated sanctions list.
const SANCTIONS_ENTRIES: usize = 1_000;
/// The screening requests' event times spread over this span (ms): two weeks, so the 1 h, 24 h and 7 d
/// velocity windows all fill.
const SPAN_MS: i64 = 14 * 24 * 3600 * 1000;
/// Event clock of the apply-alone workload (ms).
const CLOCK_MS: i64 = 1_790_000_000_000;
/// Runs of (1); the median is reported.
const APPLY_RUNS: usize = 5;
/// Users approved (tier 2) for the latency phase.
const LATENCY_USERS: usize = 500;
/// Transfers sent and waited for before the latency phase measures (group joins, first fetches).
const WARMUP_TRANSFERS: usize = 20;
/// How long to wait for decisions (warm-up, and after the last request).
const DECISIONS_WAIT: Duration = Duration::from_secs(120);
/// Tenant of reference publications (they are for every tenant).
const PLATFORM_TENANT: &str = "platform";
const SOURCE: &str = "riverbank.bench";

/// `riverbank bench risk` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Users with KYC events (tiers 0-3, some frozen).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Counterparties (ids, countries, name digests).
    #[arg(long, default_value_t = 2_000)]
    pub counterparties: usize,
    /// Screening requests.
    #[arg(long, default_value_t = 200_000)]
    pub screenings: usize,
    /// Offered load of the latency phase: POST /v1/transfers per second.
    #[arg(long, default_value_t = 200)]
    pub rate_per_s: u64,
    /// Duration of the latency phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench-risk.json")]
    pub json: PathBuf,
}

/// The generated workload: reference data and users' KYC (applied first), then screening requests.
pub struct Workload {
    /// Rates, the sanctions list, then the users' `user.*` events.
    pub setup: Vec<RawEnvelope>,
    pub screenings: Vec<RawEnvelope>,
    /// Screening requests whose counterparty is a list entry, by name (written differently) or id.
    pub sanctioned: usize,
    /// Screening requests whose counterparty is in a comprehensively sanctioned country.
    pub denied_country: usize,
}

const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ra", "ve", "dun", "sor", "tel", "bri", "an", "mar", "zu", "qen", "ol", "pha", "rin",
    "tas", "vo", "gel", "nu", "ir", "sa", "dek", "hu",
];
const COUNTRIES: [&str; 16] =
    ["DE", "FR", "GB", "US", "NL", "ES", "IT", "JP", "IN", "BR", "SG", "CH", "PL", "SE", "MX", "CA"];
const DENIED_COUNTRIES: [&str; 4] = ["CU", "IR", "KP", "SY"];

/// A made-up name (never a real person's data): `tokens` capitalised words of 3-4 syllables.
fn synthetic_name(rng: &mut Lcg, tokens: usize) -> String {
    let word = |rng: &mut Lcg| {
        let n = 3 + rng.below(2) as usize;
        let w: String = (0..n).map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize]).collect();
        let mut c = w.chars();
        c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
    };
    (0..tokens).map(|_| word(rng)).collect::<Vec<_>>().join(" ")
}

/// The same name as a payment form would carry it: upper case, surname first, a comma.
fn written_differently(name: &str) -> String {
    let mut tokens: Vec<&str> = name.split(' ').collect();
    let last = tokens.pop().unwrap_or_default();
    format!("{}, {}", last.to_uppercase(), tokens.join(" "))
}

fn tenant(t: usize) -> String {
    format!("bank-{t:02}")
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn currency(code: &str) -> anyhow::Result<Currency> {
    Currency::from_code(code).map_err(|e| anyhow::anyhow!("{code}: {e}"))
}

fn envelope<P: serde::Serialize>(
    parts: &[&str],
    event_type: &str,
    tenant: &str,
    at_ms: i64,
    payload: P,
) -> anyhow::Result<RawEnvelope> {
    let mut id_parts = vec!["bench-risk"];
    id_parts.extend_from_slice(parts);
    let id = derived_id(&id_parts);
    Ok(Envelope::new(
        id,
        event_type,
        tenant,
        Environment::Live,
        at(at_ms),
        SOURCE,
        serde_json::to_value(payload)?,
    ))
}

/// A user's KYC as the KYC processor states it.
fn kyc_event(
    user: &str,
    status: (UserStatus, KycStatus),
    tier: u8,
    version: u64,
    expires_ms: Option<i64>,
) -> UserKycChanged {
    UserKycChanged {
        user_id: user.to_owned(),
        user_status: status.0,
        kyc_status: status.1,
        tier,
        kyc_expires_at: expires_ms.map(at),
        version,
        case_id: Some(format!("case_{user}")),
        case_status: Some(status.1),
        provider: Some("idcheck".to_owned()),
        reason: None,
        actor: (status.0 == UserStatus::Frozen).then(|| "user:bench-admin".to_owned()),
        cause_event_id: derived_id(&["bench-risk-kyc", user, &version.to_string()]),
    }
}

/// The reference data: EUR, GBP and JPY to USD.
fn rates(t0_ms: i64) -> anyhow::Result<RawEnvelope> {
    let usd = currency("USD")?;
    let rate = |c: &str, rate_e9| -> anyhow::Result<FxRate> {
        Ok(FxRate { base: currency(c)?, quote: usd, rate_e9 })
    };
    let p = FxRatesPublished {
        as_of: at(t0_ms),
        rates: vec![rate("EUR", 1_084_500_000)?, rate("GBP", 1_268_300_000)?, rate("JPY", 6_712_000)?],
        published_by: "bench-rates".to_owned(),
    };
    envelope(&["rates"], command_types::FX_RATES_PUBLISHED, PLATFORM_TENANT, t0_ms, p)
}

/// A sanctions list of `entries` made-up names (a third with an alias, a fifth with a wallet id), as its
/// TOML file says it, published through `parse_list` with `name_key`. Returns the list envelope, the
/// entries' names and ids.
fn sanctions(
    rng: &mut Lcg,
    name_key: &[u8],
    t0_ms: i64,
) -> anyhow::Result<(RawEnvelope, Vec<String>, Vec<String>)> {
    let mut toml = String::from("list = \"bench-sanctions\"\n");
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    for k in 0..SANCTIONS_ENTRIES {
        let tokens = 2 + rng.below(2) as usize;
        let name = synthetic_name(rng, tokens);
        let mut all = vec![format!("\"{name}\"")];
        if k % 3 == 0 {
            all.push(format!("\"{}\"", synthetic_name(rng, 2)));
        }
        toml.push_str(&format!("\n[[entries]]\nid = \"BS-{k:04}\"\nnames = [{}]\n", all.join(", ")));
        if k % 5 == 0 {
            let id = format!("0xbench{k:033x}");
            toml.push_str(&format!("ids = [\"{id}\"]\n"));
            ids.push(id);
        }
        names.push(name);
    }
    let list = parse_list(&toml, name_key, "bench-compliance").map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = envelope(&["list"], et::LIST_PUBLISHED, PLATFORM_TENANT, t0_ms, list)?;
    Ok((e, names, ids))
}

/// Users: `usr_{i}` of tenant `i % TENANTS`; 5 % with a pending KYC (tier 0), the rest approved at tier 1
/// (40 %), 2 (35 %) or 3 (20 %); 2 % of all frozen after their approval. Their events precede `t0_ms`.
fn users(rng: &mut Lcg, n: usize, t0_ms: i64) -> anyhow::Result<Vec<RawEnvelope>> {
    let mut out = Vec::new();
    let day = 24 * 3600 * 1000;
    for i in 0..n {
        let (user, tenant) = (format!("usr_{i:05}"), tenant(i % TENANTS));
        let r = rng.below(100);
        let at_ms = t0_ms - 2 * day + i as i64;
        let expires = Some(t0_ms + 365 * day);
        let approved = (UserStatus::Active, KycStatus::Approved);
        let first = match r {
            0..5 => (
                kyc_types::USER_KYC_UPDATED,
                kyc_event(&user, (UserStatus::Pending, KycStatus::Pending), 0, 1, None),
            ),
            5..45 => (kyc_types::USER_VERIFIED, kyc_event(&user, approved, 1, 1, expires)),
            45..80 => (kyc_types::USER_VERIFIED, kyc_event(&user, approved, 2, 1, expires)),
            _ => (kyc_types::USER_VERIFIED, kyc_event(&user, approved, 3, 1, expires)),
        };
        let tier = first.1.tier;
        out.push(envelope(&["user", &user, "1"], first.0, &tenant, at_ms, first.1)?);
        if r >= 5 && rng.below(50) == 0 {
            let frozen = kyc_event(&user, (UserStatus::Frozen, KycStatus::Approved), tier, 2, expires);
            out.push(envelope(&["user", &user, "2"], kyc_types::USER_FROZEN, &tenant, at_ms + day, frozen)?);
        }
    }
    Ok(out)
}

/// An amount: mostly small (70 % up to 200, 20 % up to 1,000, 8 % up to 5,000, 2 % up to 50,000 in
/// USD-like units), in USD (55 %), EUR (25 %), GBP (12 %) or JPY (8 %).
fn amount(rng: &mut Lcg, currencies: &[Currency; 4]) -> Money {
    let major = match rng.below(100) {
        0..70 => 1 + rng.below(200),
        70..90 => 200 + rng.below(800),
        90..98 => 1_000 + rng.below(4_000),
        _ => 5_000 + rng.below(45_000),
    } as i64;
    let c = match rng.below(100) {
        0..55 => currencies[0],
        55..80 => currencies[1],
        80..92 => currencies[2],
        _ => currencies[3],
    };
    let minor = if c.precision() == 0 { major * 150 } else { major * 100 + rng.below(100) as i64 };
    Money::new(minor, c)
}

/// The deterministic workload of (1) and (2): event times from `t0_ms` on.
pub fn workload(
    name_key: &[u8],
    users_n: usize,
    counterparties_n: usize,
    screenings_n: usize,
    t0_ms: i64,
) -> anyhow::Result<Workload> {
    anyhow::ensure!(users_n > 0 && counterparties_n > 0, "needs users and counterparties");
    let mut rng = Lcg(0x5eed_7215);
    let (list, listed_names, listed_ids) = sanctions(&mut rng, name_key, t0_ms)?;
    let mut setup = vec![rates(t0_ms)?, list];
    setup.extend(users(&mut rng, users_n, t0_ms)?);
    // Counterparties: 2.5 % of them get 30 % of the transfers; 1 % of the others are in a
    // comprehensively sanctioned country.
    let hot_counterparties = (counterparties_n / 40).max(1) as u64;
    let counterparties: Vec<Counterparty> = (0..counterparties_n)
        .map(|k| {
            // (Never one of the busiest, which would make the share depend on which one it is.)
            let country = if rng.below(100) == 0 && k as u64 >= hot_counterparties {
                DENIED_COUNTRIES[rng.below(4) as usize]
            } else {
                COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]
            };
            let tokens = 2 + rng.below(2) as usize;
            let name = synthetic_name(&mut rng, tokens);
            Counterparty {
                id: Some(format!("payee-{k:05}")),
                country: Some(country.to_owned()),
                name_keys: name_keys(name_key, &name),
            }
        })
        .collect();
    let currencies = [currency("USD")?, currency("EUR")?, currency("GBP")?, currency("JPY")?];
    let hot_users = (users_n / 100).max(1) as u64;
    let step_ms = SPAN_MS / screenings_n.max(1) as i64;
    let (mut screenings, mut sanctioned, mut denied_country) = (Vec::with_capacity(screenings_n), 0, 0);
    for n in 0..screenings_n {
        // 95 % name a user (a fifth of those one of the busiest 1 %), 5 % none (treasury, provider).
        let user = match rng.below(100) {
            0..5 => None,
            5..24 => Some(rng.below(hot_users) as usize),
            _ => Some(rng.below(users_n as u64) as usize),
        };
        let t = user.map_or(rng.below(TENANTS as u64) as usize, |u| u % TENANTS);
        let kind = match rng.below(100) {
            0..35 => TransferKind::Deposit,
            35..70 => TransferKind::Payout,
            70..90 => TransferKind::Withdrawal,
            _ => TransferKind::Internal,
        };
        let account = user.map_or("acct_treasury".to_owned(), |u| format!("acct_{u:05}"));
        let (source, destination) = match kind {
            TransferKind::Deposit => ("external".to_owned(), account),
            TransferKind::Internal => (account, format!("acct_{:05}", rng.below(users_n as u64))),
            _ => (account, "external".to_owned()),
        };
        let counterparty = match (rng.below(1_000), kind) {
            // ~1 %: a listed name, written as a payment form would (surname first, upper case).
            (0..9, _) => {
                let name = &listed_names[rng.below(listed_names.len() as u64) as usize];
                Some(Counterparty {
                    id: None,
                    country: Some("DE".to_owned()),
                    name_keys: name_keys(name_key, &written_differently(name)),
                })
            }
            // ~0.1 %: a listed wallet id.
            (9, _) if !listed_ids.is_empty() => Some(Counterparty {
                id: Some(listed_ids[rng.below(listed_ids.len() as u64) as usize].to_uppercase()),
                country: None,
                name_keys: Vec::new(),
            }),
            (_, TransferKind::Internal) => None,
            (r, TransferKind::Deposit) if r % 2 == 0 => None,
            _ => {
                let k = if rng.below(10) < 3 {
                    rng.below(hot_counterparties)
                } else {
                    rng.below(counterparties_n as u64)
                };
                Some(counterparties[k as usize].clone())
            }
        };
        let c = counterparty.as_ref();
        if c.is_some_and(|c| c.id.as_ref().is_none_or(|i| !i.starts_with("payee-"))) {
            sanctioned += 1;
        }
        if c.and_then(|c| c.country.as_deref()).is_some_and(|x| DENIED_COUNTRIES.contains(&x)) {
            denied_country += 1;
        }
        let r = ScreeningRequested {
            transfer_id: format!("tr-{n:07}"),
            kind,
            amount: amount(&mut rng, &currencies),
            requested_by: "user:bench-operator".to_owned(),
            user_id: user.map(|u| format!("usr_{u:05}")),
            source_account: source,
            destination_account: destination,
            counterparty,
            version: 4,
            needs_approval: false,
        };
        let at_ms = t0_ms + step_ms * n as i64;
        screenings.push(envelope(
            &["screening", &n.to_string()],
            ScreeningRequested::EVENT_TYPE,
            &tenant(t),
            at_ms,
            r,
        )?);
    }
    Ok(Workload { setup, screenings, sanctioned, denied_country })
}

/// What the decisions say: outcomes, and how many decisions each rule kind fired in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mix {
    pub decisions: u64,
    pub approve: u64,
    pub review: u64,
    pub block: u64,
    /// Flagged for a currency transaction report.
    pub ctr: u64,
    /// `risk.input_rejected` records.
    pub rejected: u64,
    /// Rule kind → decisions it fired in (with a score above 0).
    pub fired: BTreeMap<String, u64>,
}

impl Mix {
    /// Count one record of `risk.decisions`.
    pub fn add(&mut self, payload: &[u8]) {
        let Ok(e) = serde_json::from_slice::<RawEnvelope>(payload) else { return };
        if e.event_type == et::INPUT_REJECTED {
            self.rejected += 1;
            return;
        }
        let Ok(d) = serde_json::from_value::<DecisionRecorded>(e.payload) else { return };
        self.decisions += 1;
        match d.decision {
            RiskOutcome::Approve => self.approve += 1,
            RiskOutcome::Review => self.review += 1,
            RiskOutcome::Block => self.block += 1,
        }
        self.ctr += u64::from(d.ctr);
        let mut kinds: Vec<&str> = d.hits.iter().filter(|h| h.score > 0).map(|h| h.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for k in kinds {
            *self.fired.entry(k.to_owned()).or_default() += 1;
        }
    }

    fn share(&self, n: u64) -> f64 {
        n as f64 / self.decisions.max(1) as f64 * 100.0
    }

    pub fn line(&self) -> String {
        let fired: Vec<String> =
            self.fired.iter().map(|(k, n)| format!("{k} {:.1}%", self.share(*n))).collect();
        format!(
            "approve {:.1}%, review {:.1}%, block {:.1}% of {} decisions (CTR flagged {:.1}%; rules fired: {})",
            self.share(self.approve),
            self.share(self.review),
            self.share(self.block),
            self.decisions,
            self.share(self.ctr),
            fired.join(", ")
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "decisions": self.decisions,
            "approve": self.approve, "review": self.review, "block": self.block,
            "approve_share": self.share(self.approve) / 100.0,
            "review_share": self.share(self.review) / 100.0,
            "block_share": self.share(self.block) / 100.0,
            "ctr_flagged": self.ctr,
            "input_rejected": self.rejected,
            "rules_fired": self.fired,
        })
    }
}

/// How an input reaches the risk log: reference data broadcast, everything else routed.
fn via(event_type: &str) -> Via<'static> {
    let broadcast = event_type == et::LIST_PUBLISHED || event_type == command_types::FX_RATES_PUBLISHED;
    if broadcast {
        Via::Broadcast { topic: "bench.risk.reference", partition: 0, offset: 0 }
    } else {
        Via::Routed { topic: "bench.risk.routed", partition: 0, offset: 0 }
    }
}

/// Apply `inputs` in order; returns the outputs and the number of poisoned inputs.
fn apply_all(p: &RiskProcessor, state: &mut RiskState, inputs: Vec<RawEnvelope>) -> (Vec<Emit>, usize) {
    let (mut outputs, mut poisoned) = (Vec::with_capacity(inputs.len() * 2), 0);
    for e in inputs {
        let at = InputRef { via: via(&e.event_type), ..InputRef::log("bench.risk", 0, 0, Environment::Live) };
        match p.apply(state, &at, e) {
            Verdict::Emit(o) => outputs.extend(o),
            Verdict::Poison(_) => poisoned += 1,
        }
    }
    (outputs, poisoned)
}

fn mix_of(outputs: &[Emit], decisions_topic: &str) -> Mix {
    let mut mix = Mix::default();
    for o in outputs.iter().filter(|o| o.topic == decisions_topic) {
        mix.add(&o.payload);
    }
    mix
}

/// (1): decisions/s of `apply` on one core, median of [`APPLY_RUNS`], and the mix of the first run.
/// `with_list: false` leaves the sanctions list out (what matching against it costs).
fn apply_alone(w: &Workload, with_list: bool) -> anyhow::Result<(f64, Vec<f64>, Mix)> {
    let topics = Topics::new("bench.");
    let p = RiskProcessor::new(topics.clone());
    let decisions_topic = topics.risk_decisions(Environment::Live);
    let n = w.screenings.len();
    let (mut rates, mut mix) = (Vec::new(), Mix::default());
    for run in 0..APPLY_RUNS {
        let mut state = RiskState::new();
        let setup =
            w.setup.iter().filter(|e| with_list || e.event_type != et::LIST_PUBLISHED).cloned().collect();
        let (_, poisoned) = apply_all(&p, &mut state, setup);
        anyhow::ensure!(poisoned == 0, "{poisoned} setup inputs were dead-lettered");
        let batch = w.screenings.clone();
        let t0 = Instant::now();
        let (outputs, poisoned) = apply_all(&p, &mut state, batch);
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(poisoned == 0, "{poisoned} screening requests were dead-lettered");
        rates.push(n as f64 / secs);
        if run == 0 {
            mix = mix_of(&outputs, &decisions_topic);
        }
    }
    Ok((median(&rates), rates, mix))
}

/// What the routed passthrough reads: the screening requests only (risk's router copies them as it
/// does into risk's log).
fn screenings_only(topics: &Topics, env: Environment) -> Spec {
    Spec { routed: vec![topics.transfer_screening(env)], ..Spec::reading(topics.log(env, "risk")) }
}

/// The source topic of an input.
fn source_topic(topics: &Topics, env: Environment, event_type: &str) -> String {
    if event_type == et::LIST_PUBLISHED {
        topics.risk_reference(env)
    } else if event_type == command_types::FX_RATES_PUBLISHED {
        topics.fx_rates(env)
    } else if event_type == ScreeningRequested::EVENT_TYPE {
        topics.transfer_screening(env)
    } else {
        topics.kyc_events(env)
    }
}

async fn produce(cfg: &Config, inputs: &[RawEnvelope]) -> anyhow::Result<()> {
    let topics = kafka::topics(&cfg.kafka);
    produce_to(cfg, inputs, |e| source_topic(&topics, e.environment, &e.event_type)).await
}

/// Figures of (2).
struct Broker {
    risk_per_s: f64,
    risk_steady_s: f64,
    passthrough_per_s: f64,
    passthrough_steady_s: f64,
    mix: Mix,
}

/// (2): the real processor with its router and checkpoints, then the routed passthrough.
async fn on_broker(base: &Config, o: &Options) -> anyhow::Result<Broker> {
    let mut cfg = base.clone();
    cfg.kafka.topic_prefix = format!("benchrisk-{}.", uuid::Uuid::new_v4().simple());
    cfg.kafka.environments = vec![Environment::Live];
    let env = Environment::Live;
    let topics = kafka::topics(&cfg.kafka);
    // Event times end an hour ago: the partition clock (ticks, wall time) never passes a history's
    // horizon while the run lasts, as in production.
    let t0_ms = Utc::now().timestamp_millis() - SPAN_MS - 3_600_000;
    let w = workload(cfg.risk.name_key.expose().as_bytes(), o.users, o.counterparties, o.screenings, t0_ms)?;
    let n = w.screenings.len() as i64;
    let risk = RiskProcessor::new(topics.clone());
    let specs = vec![(env, risk.spec(&topics, env))];
    let mut all = riverbank_runtime::process::topics_of(&cfg, risk.name(), &specs);
    all.push(topics.log(env, "passthrough-routed"));
    kafka::ensure_topics(&cfg.kafka, &all).await.context("creating bench topics")?;

    // Reference data and users first, copied into the log before any screening request.
    produce(&cfg, &w.setup).await?;
    let stop = CancellationToken::new();
    let (c, s) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, risk, s).await });
    let sources = [topics.fx_rates(env), topics.risk_reference(env), topics.kyc_events(env)];
    let caught_up = router_caught_up(&cfg, "risk", &sources).await;
    stop.cancel();
    task.await??;
    caught_up?;
    println!("    setup: {} reference and KYC inputs copied into the risk log", w.setup.len());

    produce(&cfg, &w.screenings).await?;
    let decisions_topic = topics.risk_decisions(env);
    let (share, risk_steady_s) = drain(&cfg, RiskProcessor::new(topics.clone()), &decisions_topic, n).await?;
    let passthrough_topic = format!("{}live.bench.passthrough", cfg.kafka.topic_prefix);
    let ceiling = RoutedPassthrough { output: passthrough_topic.clone(), like: screenings_only };
    let (p_share, passthrough_steady_s) = drain(&cfg, ceiling, &passthrough_topic, n).await?;

    let (kcfg, topic) = (cfg.kafka.clone(), decisions_topic.clone());
    let records = tokio::task::spawn_blocking(move || {
        kafka::read_all(&kcfg, &topic, n as usize + 1, Duration::from_secs(300))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let mut mix = Mix::default();
    for r in &records {
        mix.add(&r.payload);
    }
    Ok(Broker {
        risk_per_s: n as f64 * share / risk_steady_s,
        risk_steady_s,
        passthrough_per_s: n as f64 * p_share / passthrough_steady_s,
        passthrough_steady_s,
        mix,
    })
}

/// Figures of (3).
struct Latency {
    offered_per_s: f64,
    sent: usize,
    accepted: usize,
    refused: BTreeMap<String, usize>,
    screened: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    answer_p50_ms: f64,
    answer_p99_ms: f64,
    mix: Mix,
}

/// Watches `risk.decisions` from its start: the first arrival (this process's clock) of each transfer's
/// live decision, and the mix.
struct Watcher {
    arrived: Arc<Mutex<HashMap<String, Instant>>>,
    mix: Arc<Mutex<Mix>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Watcher {
    fn start(cfg: &Config, topic: &str) -> Watcher {
        let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (mix, stop): (Arc<Mutex<Mix>>, _) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let (a, m, s) = (Arc::clone(&arrived), Arc::clone(&mix), Arc::clone(&stop));
        let (kcfg, topic) = (cfg.kafka.clone(), topic.to_owned());
        let task = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kcfg.brokers)
                .set("group.id", format!("{}-bench-watcher-unused", kcfg.client_id))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..kcfg.topic_partitions {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&tpl)?;
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else { continue };
                let now = Instant::now();
                let payload = msg.payload().unwrap_or_default();
                let Ok(e) = serde_json::from_slice::<RawEnvelope>(payload) else { continue };
                let id = e.payload["transfer_id"].as_str().map(str::to_owned);
                if let (true, Some(id)) = (e.event_type == et::DECISION_RECORDED, id) {
                    a.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.entry(id).or_insert(now);
                }
                m.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(payload);
            }
            Ok(())
        });
        Watcher { arrived, mix, stop, task }
    }

    fn arrivals(&self) -> HashMap<String, Instant> {
        self.arrived.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Wait until every transfer of `ids` has a decision, at most `timeout`.
    async fn wait_for(&self, ids: &[String], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.arrivals();
            let n = ids.iter().filter(|i| arrived.contains_key(*i)).count();
            if n == ids.len() || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finish(self) -> anyhow::Result<Mix> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        Ok(self.mix.lock().map(|m| m.clone()).unwrap_or_default())
    }
}

/// A latency-phase deposit: a user and an amount of 10.00-200.00 USD (in cents).
fn latency_transfer(rng: &mut Lcg) -> (usize, u64) {
    (rng.below(LATENCY_USERS as u64) as usize, 1_000 + rng.below(19_000))
}

/// One `POST /v1/transfers` (a deposit of user `u`); returns when it was answered and the status.
async fn post_transfer(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    transfer_id: &str,
    u: usize,
    amount_minor: u64,
) -> (Instant, Result<(), String>) {
    let body = json!({
        "transfer_id": transfer_id, "kind": "deposit",
        "amount": format!("{}.{:02}", amount_minor / 100, amount_minor % 100), "currency": "USD",
        "destination_account": format!("acct_{u:04}"), "user_id": format!("usr_{u:04}"),
    });
    let sent = client
        .post(url)
        .bearer_auth(token)
        .header("x-environment", "live")
        .header("idempotency-key", transfer_id)
        .json(&body)
        .send()
        .await;
    let answered = Instant::now();
    match sent {
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => (answered, Ok(())),
        Ok(r) => (answered, Err(r.status().as_u16().to_string())),
        Err(e) => (answered, Err(if e.is_timeout() { "timeout".into() } else { "connection".into() })),
    }
}

/// (3): ingest + transfers + risk in this process; 202 → `risk.decision_recorded` landed.
async fn latency(base: &Config, o: &Options) -> anyhow::Result<Latency> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut cfg = base.clone();
    cfg.kafka.topic_prefix = format!("benchrisklat-{id}.");
    cfg.kafka.environments = vec![Environment::Live];
    cfg.ingest.listen_addr = free_local_addr()?;
    // Provider secrets are for webhooks, which this phase does not send (and may name other environments).
    cfg.ingest.webhooks = Vec::new();
    let (env, topics) = (Environment::Live, kafka::topics(&cfg.kafka));
    let tenant = format!("benchrisk-{id}");
    kafka::ensure_topics(&cfg.kafka, &crate::registry::all_topics(&cfg)).await.context("creating topics")?;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await.context("postgres")?;
    riverbank_ingest::store::migrate(&pool).await.context("ingest schema")?;
    let role = riverbank_schemas::roles::Role::Admin;
    let (key, token) =
        riverbank_runtime::apikeys::create_key(&pool, &tenant, env, role, "bench risk (revoked after)")
            .await?;

    // The users, approved at tier 2 before anything else.
    let now_ms = Utc::now().timestamp_millis();
    let users: Vec<RawEnvelope> = (0..LATENCY_USERS)
        .map(|u| {
            let user = format!("usr_{u:04}");
            let approved = (UserStatus::Active, KycStatus::Approved);
            let e = kyc_event(&user, approved, 2, 1, Some(now_ms + 365 * 24 * 3600 * 1000));
            envelope(&["latency", &id, &user], kyc_types::USER_VERIFIED, &tenant, now_ms, e)
        })
        .collect::<anyhow::Result<_>>()?;
    produce(&cfg, &users).await?;

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (c, s) = (cfg.clone(), stop.clone());
        tasks.spawn(async move { riverbank_ingest::serve(&c, s).await.context("ingest") });
    }
    for name in ["transfers", "risk"] {
        let run = crate::registry::processor(&cfg, name)?.run(cfg.clone(), stop.clone());
        tasks.spawn(async move { run.await.context(name) });
    }
    // A component that stops (fails) ends the measurement.
    let result = tokio::select! {
        r = measure(&cfg, o, &token, &topics, &id) => r,
        Some(joined) = tasks.join_next() => match joined {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("a component stopped before the measurement ended")),
            Err(e) => Err(e.into()),
        },
    };
    stop.cancel();
    let mut stopped = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            stopped = stopped.and(Err(e));
        }
    }
    let revoked = riverbank_runtime::apikeys::revoke_key(&pool, &key.key_id).await;
    let figures = result?;
    stopped?;
    revoked?;
    Ok(figures)
}

async fn measure(
    cfg: &Config,
    o: &Options,
    token: &str,
    topics: &Topics,
    run: &str,
) -> anyhow::Result<Latency> {
    let env = Environment::Live;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let ingest_url = format!("http://{}", cfg.ingest.listen_addr);
    crate::demo::wait_healthy(&client, &ingest_url, Duration::from_secs(60)).await?;
    router_caught_up(cfg, "risk", &[topics.kyc_events(env)]).await?;
    let watcher = Watcher::start(cfg, &topics.risk_decisions(env));
    let url = format!("{ingest_url}/v1/transfers");
    let mut rng = Lcg(7);

    // Warm-up: group joins, first fetches, connections.
    let mut warm = Vec::new();
    for k in 0..WARMUP_TRANSFERS {
        let tid = format!("warm-{run}-{k}");
        let (u, a) = latency_transfer(&mut rng);
        let (_, r) = post_transfer(&client, &url, token, &tid, u, a).await;
        r.map_err(|s| anyhow::anyhow!("warm-up transfer refused: {s}"))?;
        warm.push(tid);
    }
    let got = watcher.wait_for(&warm, DECISIONS_WAIT).await;
    anyhow::ensure!(got == warm.len(), "warm-up: {got} of {} transfers decided", warm.len());

    // Open loop at the offered load: request k is sent at start + k / rate, whatever earlier ones do.
    let total = (o.rate_per_s * o.seconds) as usize;
    let mut requests = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / o.rate_per_s as f64)).await;
        let (u, a) = latency_transfer(&mut rng);
        let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
        let tid = format!("lat-{run}-{k}");
        requests.spawn(async move {
            let sent = Instant::now();
            let (answered, r) = post_transfer(&client, &url, &token, &tid, u, a).await;
            (tid, sent, answered, r)
        });
    }
    let offered_per_s = total as f64 / start.elapsed().as_secs_f64();
    let (mut accepted, mut refused, mut answers) = (Vec::new(), BTreeMap::new(), Vec::new());
    while let Some(j) = requests.join_next().await {
        let (tid, sent, answered, r) = j?;
        match r {
            Ok(()) => {
                answers.push(answered.duration_since(sent).as_secs_f64() * 1000.0);
                accepted.push((tid, answered));
            }
            Err(s) => *refused.entry(s).or_insert(0) += 1,
        }
    }
    let ids: Vec<String> = accepted.iter().map(|(t, _)| t.clone()).collect();
    watcher.wait_for(&ids, DECISIONS_WAIT).await;
    let arrived = watcher.arrivals();
    let mix = watcher.finish().await?;
    let mut ms: Vec<f64> = accepted
        .iter()
        .filter_map(|(t, answered)| arrived.get(t).map(|a| a.saturating_duration_since(*answered)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    answers.sort_by(|a, b| a.total_cmp(b));
    Ok(Latency {
        offered_per_s,
        sent: total,
        accepted: accepted.len(),
        refused,
        screened: ms.len(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        answer_p50_ms: percentile(&answers, 0.5),
        answer_p99_ms: percentile(&answers, 0.99),
        mix,
    })
}

/// `riverbank bench risk`.
pub async fn risk(cfg: &Config, o: &Options) -> anyhow::Result<()> {
    let m = print_machine();
    let name_key = cfg.risk.name_key.expose().as_bytes();
    let w = workload(name_key, o.users, o.counterparties, o.screenings, CLOCK_MS)?;
    let (n, sanctioned, denied_country) = (w.screenings.len(), w.sanctioned, w.denied_country);
    println!(
        "workload: {} users ({TENANTS} tenants), {} counterparties, {SANCTIONS_ENTRIES}-entry sanctions list, EUR/GBP/JPY→USD rates; {n} screening requests over {} days ({} to a listed name or id, {} to a sanctioned country)",
        o.users,
        o.counterparties,
        SPAN_MS / 86_400_000,
        sanctioned,
        denied_country
    );

    let (apply_median, apply_runs, apply_mix) = apply_alone(&w, true)?;
    println!("(1) apply alone:               median {apply_median:>9.0} decisions/s over {APPLY_RUNS} runs, one core");
    println!("    decision mix: {}", apply_mix.line());
    let (unlisted_median, unlisted_runs, _) = apply_alone(&w, false)?;
    println!("    without the sanctions list: median {unlisted_median:>9.0} decisions/s (what matching {SANCTIONS_ENTRIES} entries costs)");
    drop(w);

    let b = on_broker(cfg, o).await?;
    println!("(2) risk on the broker:        {:>9.0} decisions/s landed on risk.decisions (router, checkpoint after every batch; steady state over {:.2} s)", b.risk_per_s, b.risk_steady_s);
    println!("    routed passthrough ceiling: {:>9.0} inputs/s (router + loop, no state; steady state over {:.2} s)", b.passthrough_per_s, b.passthrough_steady_s);
    println!("    ratio:                      {:>9.2}", b.risk_per_s / b.passthrough_per_s);
    println!(
        "    decision mix on the broker: {} ({})",
        b.mix.line(),
        if b.mix == apply_mix { "identical to (1)" } else { "DIFFERS from (1)" }
    );

    let l = latency(cfg, o).await?;
    println!(
        "(3) POST /v1/transfers 202 → risk.decision_recorded landed, offered {:.0}/s for {} s ({} requests, {} accepted, refused {:?}):",
        l.offered_per_s, o.seconds, l.sent, l.accepted, l.refused
    );
    println!("    p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; screened {} of {} accepted ({:.2}%); ingest answer p50 {:.1} ms, p99 {:.1} ms",
        l.p50_ms, l.p99_ms, l.max_ms, l.screened, l.accepted, l.screened as f64 / l.accepted.max(1) as f64 * 100.0, l.answer_p50_ms, l.answer_p99_ms);
    println!("    decision mix (warm-up included): {}", l.mix.line());

    let report = json!({
        "machine": m,
        "command": "riverbank --config deploy/local/riverbank.toml bench risk",
        "workload": {
            "users": o.users, "tenants": TENANTS, "counterparties": o.counterparties,
            "sanctions_entries": SANCTIONS_ENTRIES, "screenings": n,
            "span_days": SPAN_MS / 86_400_000,
            "to_listed_name_or_id": sanctioned, "to_sanctioned_country": denied_country,
        },
        "apply_alone": {
            "decisions_per_s_median": apply_median, "runs_decisions_per_s": apply_runs,
            "mix": apply_mix.to_json(),
            "without_list_decisions_per_s_median": unlisted_median,
            "without_list_runs_decisions_per_s": unlisted_runs,
        },
        "broker": {
            "risk_decisions_per_s": b.risk_per_s, "risk_steady_s": b.risk_steady_s,
            "routed_passthrough_per_s": b.passthrough_per_s, "passthrough_steady_s": b.passthrough_steady_s,
            "ratio": b.risk_per_s / b.passthrough_per_s,
            "mix": b.mix.to_json(), "mix_identical_to_apply": b.mix == apply_mix,
        },
        "latency": {
            "offered_per_s": l.offered_per_s, "seconds": o.seconds, "sent": l.sent, "accepted": l.accepted,
            "refused": l.refused, "screened": l.screened,
            "screened_share": l.screened as f64 / l.accepted.max(1) as f64,
            "accepted_to_decision_ms": {"p50": l.p50_ms, "p99": l.p99_ms, "max": l.max_ms},
            "ingest_answer_ms": {"p50": l.answer_p50_ms, "p99": l.answer_p99_ms},
            "mix_warmup_included": l.mix.to_json(),
        },
    });
    write_report(&o.json, &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated workload is deterministic, every input applies, every screening request is
    /// decided once, every outcome and rule kind occurs, and exactly the requests to a listed name or id
    /// are blocked for sanctions.
    #[test]
    fn the_workload_reaches_every_rule_and_blocks_exactly_the_listed_payees() {
        let key = b"bench-test-name-key";
        let w = workload(key, 400, 100, 5_000, CLOCK_MS).unwrap();
        assert_eq!(w.screenings.len(), 5_000);
        assert!(w.sanctioned > 0 && w.denied_country > 0);
        let again = workload(key, 400, 100, 5_000, CLOCK_MS).unwrap();
        assert_eq!(again.setup, w.setup);
        assert_eq!(again.screenings, w.screenings);

        let topics = Topics::new("t.");
        let p = RiskProcessor::new(topics.clone());
        let mut state = RiskState::new();
        let (outputs, poisoned) = apply_all(&p, &mut state, w.setup.clone());
        assert_eq!((outputs.len(), poisoned), (0, 0));
        assert_eq!(state.users.len(), 400);
        assert_eq!(state.lists.len(), 1);
        let (outputs, poisoned) = apply_all(&p, &mut state, w.screenings.clone());
        assert_eq!(poisoned, 0);
        let mix = mix_of(&outputs, &topics.risk_decisions(Environment::Live));
        assert_eq!((mix.decisions, mix.rejected), (5_000, 0));
        assert_eq!(mix.approve + mix.review + mix.block, 5_000);
        assert!(mix.approve > mix.review + mix.block && mix.review > 0 && mix.block > 0, "{mix:?}");
        assert_eq!(mix.fired.get("sanctions").copied(), Some(w.sanctioned as u64));
        assert_eq!(mix.fired.get("jurisdiction").copied(), Some(w.denied_country as u64));
        for kind in ["tier_limit", "blocked_user", "threshold", "velocity", "ctr"] {
            assert!(mix.fired.contains_key(kind), "{kind} never fired: {mix:?}");
        }
    }
}
