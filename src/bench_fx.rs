//! `riverbank bench fx`: figures for the FX processor, printed and written as JSON, never asserted.
//!
//! 1. `FxProcessor::apply` alone on one core over a generated workload ([`workload`]), driven as the
//!    engine drives a partition ([`Alone`]: ticks move the clock and fire timers). The rates and the
//!    quotes left to expire first (untimed), the clock past their TTL; then, timed, the requests
//!    (quotes fixed sell and fixed buy, conversions, OTC decisions, rates republished) and the ledger's
//!    answers to the bookings they cause. The median of 5 runs, and the mix of outcomes.
//! 2. On the broker: the real processor with its router and checkpoints (`process::run`, a fresh topic
//!    prefix). The rates go to `fx.rates`; once every partition of the log has a tick (a clock), the
//!    quotes to expire go to `fx.commands`, and the setup ends when they are issued and expired. Then
//!    the requests go to `fx.commands` and `fx.rates`, and once the router has copied them, the answers
//!    to `ledger.bookings` (a ledger answers only what was asked, so an answer never precedes its
//!    request in the log). Measured as records landing on `fx.events` in steady state, and read back for
//!    the mix. Then `bench transfers`' passthrough behind a router shaped like FX's (the same routed
//!    and broadcast topics, ticks) over the same records, as the ceiling of router + loop.
//!
//! The workload makes every outcome independent of how fast the clock runs: every issued quote of the
//! requests is converted a few records later (so no quote of theirs expires while measured), every
//! OTC conversion is decided a few records after it, the rates never go stale while the run lasts
//! (except one pair published stale on purpose), and the quotes converted after they expired are the
//! setup's, whose expiry the setup waits for. So the mix on the broker can be compared with (1)'s.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use riverbank_processors::fx::{FxProcessor, FxSettings};
use riverbank_runtime::produce::Emit;
use riverbank_runtime::{kafka, CancellationToken, Config};
use riverbank_schemas::commands::{
    command_types, FxConversionRequested, FxQuoteRequested, FxRate, FxRatesPublished, ReviewDecision,
};
use riverbank_schemas::fx::{
    ConversionRecorded, ConversionStatus, FxConversionDecided, FxInputRejected, QuoteRecorded, QuoteStatus,
};
use riverbank_schemas::ledger::{BookingOutcome, BookingRecorded, BookingRequested};
use riverbank_schemas::processor::{Processor, Spec};
use riverbank_schemas::{derived_id, Envelope, Environment, Money, RawEnvelope, Topics};
use serde_json::json;

use crate::bench::{
    self, at, currency, drain, drain_fed, ensure_processor_topics, fresh_config, log_ticked, median,
    outcomes_on, outcomes_read, print_against_ceiling, print_machine, produce_to, reason_code, records_on,
    router_caught_up, tenant, ticked, units_drawn, write_report, Alone, LogItem, Outcomes, RoutedPassthrough,
    Stream, SOURCE,
};
use crate::workload::Lcg;

/// Tenants the requests are spread over (inputs are keyed by tenant: a log partition holds whole tenants).
const TENANTS: usize = 16;
/// Event clock of the apply-alone workload (ms).
const CLOCK_MS: i64 = 1_790_000_000_000;
/// Runs of (1); the median is reported.
const APPLY_RUNS: usize = 5;
/// Records of the requests between two republications of the rates.
const RATES_EVERY: usize = 1_000;
/// `as_of` of the k-th republication: the first publication's + k × this (ms). Kept below
/// `RATE_AHEAD_MAX_MS` ahead of the clock over the whole run (checked by [`workload`]).
const RATE_STEP_MS: i64 = 500;
/// Apply alone: a tick every this many records, advancing the clock by [`TICK_STEP_MS`].
const TICK_EVERY: usize = 500;
const TICK_STEP_MS: i64 = 100;
/// One quote left to expire (in setup, converted later) per this many quotes of the requests.
const EXPIRING_PER: usize = 100;
/// A conversion follows its quote within this many quotes of the stream (an OTC decision follows its
/// conversion within as many).
const FOLLOW_MAX: u64 = 8;
/// Shares of the quotes, per mille: a pair with no rate, a pair resting on the stale rate, above the
/// OTC threshold.
const UNKNOWN_PAIR_PER_MILLE: u64 = 15;
const STALE_PAIR_PER_MILLE: u64 = 10;
const OTC_PER_MILLE: u64 = 10;
/// Shares of the issued quotes' conversions, per mille: submitted twice (the second finds the quote
/// used); and conversions naming a quote never asked for, per mille of quotes.
const TWICE_PER_MILLE: u64 = 20;
const UNKNOWN_QUOTE_PER_MILLE: u64 = 10;
/// OTC conversions a requester first tries to approve themselves, per mille (refused: maker-checker).
const SELF_APPROVAL_PER_MILLE: u64 = 100;
/// Bookings the ledger refuses (insufficient funds), per mille.
const LEDGER_REFUSED_PER_MILLE: u64 = 30;
/// How long the setup may take beyond the quotes' TTL.
const SETUP_WAIT: Duration = Duration::from_secs(120);
/// Tenant of rate publications (they are for every tenant).
const PLATFORM_TENANT: &str = "platform";
const TRADER: &str = "user:bench-trader";
const CHECKER: &str = "user:bench-checker";

/// What the inputs' ids derive from (with their parts).
const ID: &str = "bench-fx";

/// `riverbank bench fx` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Quote requests (each issued one is converted; 1 % more are left to expire in setup).
    #[arg(long, default_value_t = 100_000)]
    pub quotes: usize,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench-fx.json")]
    pub json: PathBuf,
}

/// Mid rates published (base, quote, rate × 10^9): USD is the configured pivot in every shipped
/// config; the crosses go through it.
const RATES: [(&str, &str, i64); 7] = [
    ("EUR", "USD", 1_084_500_000),
    ("GBP", "USD", 1_268_300_000),
    ("USD", "JPY", 149_250_000_000),
    ("USD", "CHF", 881_200_000),
    ("USD", "INR", 83_120_000_000),
    ("AUD", "USD", 657_100_000),
    ("USD", "CAD", 1_360_500_000),
];
/// Published once, older than `fx.rate_age_max_ms` (never republished): quotes on it are refused.
const STALE_RATE: (&str, &str, i64) = ("USD", "MXN", 17_050_000_000);
/// A currency with no rate at all.
const UNPRICED: &str = "BRL";
/// Pairs traded (sell, buy): a published pair or its inverse, then crosses through the pivot.
const PAIRS: [(&str, &str); 22] = [
    ("EUR", "USD"),
    ("USD", "EUR"),
    ("GBP", "USD"),
    ("USD", "GBP"),
    ("USD", "JPY"),
    ("JPY", "USD"),
    ("USD", "CHF"),
    ("CHF", "USD"),
    ("INR", "USD"),
    ("USD", "INR"),
    ("AUD", "USD"),
    ("USD", "CAD"),
    ("EUR", "GBP"),
    ("GBP", "EUR"),
    ("EUR", "JPY"),
    ("GBP", "JPY"),
    ("EUR", "CHF"),
    ("CHF", "EUR"),
    ("AUD", "JPY"),
    ("EUR", "INR"),
    ("CAD", "EUR"),
    ("GBP", "AUD"),
];
/// Sold above the OTC threshold (the shipped thresholds are in USD and EUR).
const OTC_PAIRS: [(&str, &str); 4] = [("USD", "EUR"), ("EUR", "USD"), ("USD", "JPY"), ("EUR", "GBP")];

/// The generated workload, in log order per phase.
pub struct Workload {
    /// The clock the workload is laid out from (ms): rates are published as of it.
    pub t0_ms: i64,
    /// The rates (fresh, and the stale pair), published first.
    pub rates: Vec<RawEnvelope>,
    /// Quotes issued in setup and left to expire (the requests convert them later).
    pub expiring: Vec<RawEnvelope>,
    /// Quote and conversion requests, OTC decisions and republished rates.
    pub requests: Vec<RawEnvelope>,
    /// The ledger's answers to every booking the requests cause, after them.
    pub answers: Vec<RawEnvelope>,
    /// Outputs of the setup on `fx.events` (quotes issued, then expired).
    pub setup_events: usize,
}

impl Workload {
    /// Rate publications among the requests.
    fn republications(&self) -> usize {
        self.requests.iter().filter(|e| e.event_type == command_types::FX_RATES_PUBLISHED).count()
    }
}

/// A publication of `rates` as of `as_of_ms`.
fn publication(name: &str, rates: Vec<FxRate>, as_of_ms: i64) -> anyhow::Result<RawEnvelope> {
    let p = FxRatesPublished { as_of: at(as_of_ms), rates, published_by: "bench-rates".to_owned() };
    bench::envelope(ID, &["rates", name], command_types::FX_RATES_PUBLISHED, PLATFORM_TENANT, as_of_ms, p)
}

/// The published rates, each moved by up to ±`jitter_bps` basis points.
fn rates_moved(rng: &mut Lcg, jitter_bps: i64) -> anyhow::Result<Vec<FxRate>> {
    RATES
        .iter()
        .map(|&(b, q, r)| {
            let bps =
                if jitter_bps == 0 { 0 } else { rng.below(2 * jitter_bps as u64 + 1) as i64 - jitter_bps };
            Ok(FxRate { base: currency(b)?, quote: currency(q)?, rate_e9: r + r / 10_000 * bps })
        })
        .collect()
}

/// Units of a currency worth about one USD (amounts are drawn in USD and scaled).
fn per_usd(code: &str) -> i64 {
    match code {
        "JPY" => 150,
        "INR" => 83,
        "MXN" => 17,
        "BRL" => 5,
        _ => 1,
    }
}

/// An amount of `code` worth `usd` major USD, with cents where the currency has them.
fn amount_of(rng: &mut Lcg, code: &str, usd: i64) -> anyhow::Result<Money> {
    let c = currency(code)?;
    let major = usd * per_usd(code);
    let minor = match c.precision() {
        0 => major,
        p => major * 10i64.pow(u32::from(p)) + rng.below(100) as i64,
    };
    Ok(Money::new(minor, c))
}

/// One quote request: `fixed_sell` fixes the sold amount, else the bought one.
fn quote_request(
    rng: &mut Lcg,
    id: &str,
    (sell, buy): (&str, &str),
    fixed_sell: bool,
    usd: i64,
) -> anyhow::Result<FxQuoteRequested> {
    let fixed = amount_of(rng, if fixed_sell { sell } else { buy }, usd)?;
    Ok(FxQuoteRequested {
        quote_id: id.to_owned(),
        sell_currency: currency(sell)?,
        buy_currency: currency(buy)?,
        sell_amount: fixed_sell.then_some(fixed),
        buy_amount: (!fixed_sell).then_some(fixed),
        requested_by: TRADER.to_owned(),
    })
}

fn conversion_request(conversion_id: &str, quote_id: &str, t: usize) -> FxConversionRequested {
    FxConversionRequested {
        conversion_id: conversion_id.to_owned(),
        quote_id: quote_id.to_owned(),
        source_account: format!("acct_treasury_{t:02}"),
        destination_account: None,
        requested_by: TRADER.to_owned(),
    }
}

/// The setup's records as the log holds them: a tick (the clock), the rates, the quotes to expire,
/// then the clock past their TTL.
fn setup_items(w: &Workload, s: &FxSettings) -> Vec<LogItem> {
    let mut items = vec![LogItem::Tick(w.t0_ms)];
    items.extend(w.rates.iter().cloned().map(LogItem::Broadcast));
    items.extend(w.expiring.iter().cloned().map(LogItem::Routed));
    items.push(LogItem::Tick(w.t0_ms + s.quote_ttl_ms + 1_000));
    items
}

/// `inputs` as the log holds them after the setup: rates broadcast, the rest routed, a tick every
/// [`TICK_EVERY`] records moving the clock by `tick_step_ms`.
fn main_items<'a>(
    w: &Workload,
    s: &FxSettings,
    inputs: impl Iterator<Item = &'a RawEnvelope>,
    tick_step_ms: i64,
) -> Vec<LogItem> {
    let is_rate = |e: &RawEnvelope| e.event_type == command_types::FX_RATES_PUBLISHED;
    ticked(inputs, is_rate, w.t0_ms + s.quote_ttl_ms + 1_000, TICK_EVERY, tick_step_ms)
}

/// The ledger's answer to each booking request among `outputs`: booked, or refused for funds
/// (`refused_per_mille` of them), as the transfers processor answers on `ledger.bookings`, keyed by
/// the requester's tenant. Shared with `bench billing`.
pub(crate) fn ledger_answers(
    outputs: &[Emit],
    requests_topic: &str,
    rng: &mut Lcg,
    refused_per_mille: u64,
) -> anyhow::Result<Vec<RawEnvelope>> {
    let mut answers = Vec::new();
    for o in outputs.iter().filter(|o| o.topic == requests_topic) {
        let e: RawEnvelope = serde_json::from_slice(&o.payload)?;
        if e.event_type != BookingRequested::EVENT_TYPE {
            continue;
        }
        let r: BookingRequested = serde_json::from_value(e.payload.clone())?;
        let refused = rng.below(1_000) < refused_per_mille;
        let debit = r.legs.iter().find(|l| l.amount.amount_minor < 0);
        let reason = refused.then(|| match debit {
            Some(l) => format!(
                "insufficient funds: less than {} {} available in {}",
                l.amount.checked_neg().unwrap_or(l.amount).to_major_string(),
                l.amount.currency,
                l.account
            ),
            None => "insufficient funds".to_owned(),
        });
        let answer = BookingRecorded {
            booking_id: r.booking_id.clone(),
            purpose: r.purpose,
            reference: r.reference,
            outcome: if refused { BookingOutcome::Refused } else { BookingOutcome::Booked },
            reason,
            legs: r.legs,
        };
        let id = derived_id(&["bench-ledger", &e.tenant_id, &r.booking_id]);
        let payload = serde_json::to_value(answer)?;
        let at = e.occurred_at;
        answers.push(Envelope::new(
            id,
            BookingRecorded::EVENT_TYPE,
            &e.tenant_id,
            Environment::Live,
            at,
            SOURCE,
            payload,
        ));
    }
    Ok(answers)
}

/// The deterministic workload of (1) and (2), laid out from the clock `t0_ms`, with the ledger's
/// answers computed by applying the requests.
pub fn workload(s: &FxSettings, quotes_n: usize, t0_ms: i64) -> anyhow::Result<Workload> {
    anyhow::ensure!(quotes_n > 0, "needs quotes");
    let mut rng = Lcg(0x0f0e_2024);
    let stale_as_of = t0_ms - s.rate_age_max_ms - 60_000;
    let (b, q, r) = STALE_RATE;
    let stale = FxRate { base: currency(b)?, quote: currency(q)?, rate_e9: r };
    let rates = vec![
        publication("0", rates_moved(&mut rng, 0)?, t0_ms)?,
        publication("stale", vec![stale], stale_as_of)?,
    ];

    // Quotes left to expire: fixed sell, on a published pair, spread over the tenants.
    let expiring_n = (quotes_n / EXPIRING_PER).max(1);
    let mut expiring = Vec::with_capacity(expiring_n);
    for i in 0..expiring_n {
        let t = i % TENANTS;
        let pair = PAIRS[rng.below(PAIRS.len() as u64) as usize];
        let usd = units_drawn(&mut rng);
        let req = quote_request(&mut rng, &format!("qx-{i:06}"), pair, true, usd)?;
        expiring.push(bench::envelope(
            ID,
            &["qx", &i.to_string()],
            command_types::FX_QUOTE_REQUESTED,
            &tenant(t),
            t0_ms,
            req,
        )?);
    }

    // The requests. Event times: the clock the records are expected at (informational; the
    // processor goes by its ticks).
    let at_ms = t0_ms + s.quote_ttl_ms + 1_000;
    // About two records per quote: the republications' as_of stay within 100 s of the first's.
    let republications = quotes_n * 3 / RATES_EVERY + 1;
    let rate_step = RATE_STEP_MS.min(100_000 / republications as i64).max(1);
    let mut st = Stream::default();
    let mut published = 0usize;
    let mut since_rates = 0usize;
    for k in 0..quotes_n {
        st.release(k);
        if st.out.len() >= since_rates + RATES_EVERY {
            since_rates = st.out.len();
            published += 1;
            let as_of = t0_ms + published as i64 * rate_step;
            st.out.push(publication(&published.to_string(), rates_moved(&mut rng, 5)?, as_of)?);
        }
        let t = rng.below(TENANTS as u64) as usize;
        let tn = tenant(t);
        let (qid, k_s) = (format!("q-{k:07}"), k.to_string());
        let r = rng.below(1_000);
        let usd = units_drawn(&mut rng);
        let fixed_sell = rng.below(100) < 60;
        let (req, priced, otc) = if r < UNKNOWN_PAIR_PER_MILLE {
            let pair = if rng.below(2) == 0 { ("USD", UNPRICED) } else { (UNPRICED, "EUR") };
            (quote_request(&mut rng, &qid, pair, fixed_sell, usd)?, false, false)
        } else if r < UNKNOWN_PAIR_PER_MILLE + STALE_PAIR_PER_MILLE {
            let pair = if rng.below(2) == 0 { ("USD", STALE_RATE.1) } else { (STALE_RATE.1, "EUR") };
            (quote_request(&mut rng, &qid, pair, fixed_sell, usd)?, false, false)
        } else if r < UNKNOWN_PAIR_PER_MILLE + STALE_PAIR_PER_MILLE + OTC_PER_MILLE {
            let pair = OTC_PAIRS[rng.below(OTC_PAIRS.len() as u64) as usize];
            let usd = 150_000 + rng.below(750_000) as i64;
            (quote_request(&mut rng, &qid, pair, true, usd)?, true, true)
        } else {
            let pair = PAIRS[rng.below(PAIRS.len() as u64) as usize];
            (quote_request(&mut rng, &qid, pair, fixed_sell, usd)?, true, false)
        };
        st.out.push(bench::envelope(ID, &["q", &k_s], command_types::FX_QUOTE_REQUESTED, &tn, at_ms, req)?);
        if priced {
            let due = k + 1 + rng.below(FOLLOW_MAX) as usize;
            let cid = format!("c-{k:07}");
            let conv = conversion_request(&cid, &qid, t);
            st.later(
                due,
                bench::envelope(ID, &["c", &k_s], command_types::FX_CONVERSION_REQUESTED, &tn, at_ms, conv)?,
            );
            if otc {
                let mut decide_at = due + 1 + rng.below(FOLLOW_MAX) as usize;
                let decision = |actor: &str| FxConversionDecided {
                    conversion_id: cid.clone(),
                    decision: ReviewDecision::Approved,
                    actor: actor.to_owned(),
                    reason: None,
                };
                if rng.below(1_000) < SELF_APPROVAL_PER_MILLE {
                    let d = bench::envelope(
                        ID,
                        &["self", &k_s],
                        command_types::FX_CONVERSION_DECIDED,
                        &tn,
                        at_ms,
                        decision(TRADER),
                    )?;
                    st.later(decide_at, d);
                    decide_at += 1;
                }
                let d = bench::envelope(
                    ID,
                    &["d", &k_s],
                    command_types::FX_CONVERSION_DECIDED,
                    &tn,
                    at_ms,
                    decision(CHECKER),
                )?;
                st.later(decide_at, d);
            } else if rng.below(1_000) < TWICE_PER_MILLE {
                let again = conversion_request(&format!("c-{k:07}-again"), &qid, t);
                let e = bench::envelope(
                    ID,
                    &["again", &k_s],
                    command_types::FX_CONVERSION_REQUESTED,
                    &tn,
                    at_ms,
                    again,
                )?;
                st.later(due + 1 + rng.below(FOLLOW_MAX) as usize, e);
            }
        }
        if rng.below(1_000) < UNKNOWN_QUOTE_PER_MILLE {
            let conv = conversion_request(&format!("c-{k:07}-unknown"), &format!("q-none-{k:07}"), t);
            st.out.push(bench::envelope(
                ID,
                &["unknown", &k_s],
                command_types::FX_CONVERSION_REQUESTED,
                &tn,
                at_ms,
                conv,
            )?);
        }
        if k % EXPIRING_PER == EXPIRING_PER / 2 && k / EXPIRING_PER < expiring_n {
            let i = k / EXPIRING_PER;
            let conv = conversion_request(&format!("cx-{i:06}"), &format!("qx-{i:06}"), i % TENANTS);
            let e = bench::envelope(
                ID,
                &["cx", &i.to_string()],
                command_types::FX_CONVERSION_REQUESTED,
                &tenant(i % TENANTS),
                at_ms,
                conv,
            )?;
            st.out.push(e);
        }
    }
    let requests = st.finish();
    anyhow::ensure!(
        published as i64 * rate_step < riverbank_processors::fx::RATE_AHEAD_MAX_MS / 2,
        "{published} republications would run the rates ahead of the clock"
    );

    // The ledger's answers: apply setup and requests, answer each booking requested.
    let p = FxProcessor::new(Topics::new("bench."), s.clone());
    let mut w = Workload { t0_ms, rates, expiring, requests, answers: Vec::new(), setup_events: 0 };
    let mut alone = Alone::<FxProcessor>::new();
    let (setup_out, poisoned) = alone.apply(&p, setup_items(&w, s));
    anyhow::ensure!(poisoned == 0, "{poisoned} setup inputs were dead-lettered");
    let events = Topics::new("bench.").fx_events(Environment::Live);
    w.setup_events = setup_out.iter().filter(|o| o.topic == events).count();
    let (out, poisoned) = alone.apply(&p, main_items(&w, s, w.requests.iter(), TICK_STEP_MS));
    anyhow::ensure!(poisoned == 0, "{poisoned} requests were dead-lettered");
    let requests_topic = Topics::new("bench.").transfer_inputs(Environment::Live);
    w.answers = ledger_answers(&out, &requests_topic, &mut rng, LEDGER_REFUSED_PER_MILLE)?;
    Ok(w)
}

/// One record of `fx.events` counted by what it says.
fn count(mix: &mut Outcomes, payload: &[u8]) {
    let Ok(e) = serde_json::from_slice::<RawEnvelope>(payload) else {
        mix.add("not an envelope");
        return;
    };
    let label = match e.event_type.as_str() {
        QuoteRecorded::EVENT_TYPE => match serde_json::from_value::<QuoteRecorded>(e.payload) {
            Ok(q) if q.status == QuoteStatus::Issued => format!("quote issued (fixed {})", q.fixed),
            Ok(q) if q.status == QuoteStatus::Refused => {
                format!("quote refused: {}", reason_code(q.reason.as_deref()))
            }
            Ok(q) => format!("quote {}", q.status.as_str()),
            Err(_) => "quote (undecodable)".to_owned(),
        },
        ConversionRecorded::EVENT_TYPE => match serde_json::from_value::<ConversionRecorded>(e.payload) {
            Ok(c) if c.status == ConversionStatus::Rejected => {
                format!("conversion rejected: {}", reason_code(c.reason.as_deref()))
            }
            Ok(c) => format!("conversion {}", c.status.as_str()),
            Err(_) => "conversion (undecodable)".to_owned(),
        },
        FxInputRejected::EVENT_TYPE => match serde_json::from_value::<FxInputRejected>(e.payload) {
            Ok(r) => format!("input rejected: {}", reason_code(Some(&r.reason))),
            Err(_) => "input rejected (undecodable)".to_owned(),
        },
        other => other.to_owned(),
    };
    mix.add(label);
}

/// (1): inputs/s of `apply` on one core, median of [`APPLY_RUNS`]; the mix of the first run (setup
/// included) and the bookings it requested.
fn apply_alone(w: &Workload, s: &FxSettings) -> anyhow::Result<(f64, Vec<f64>, Outcomes, usize)> {
    let topics = Topics::new("bench.");
    let p = FxProcessor::new(topics.clone(), s.clone());
    let (events, bookings) = (topics.fx_events(Environment::Live), topics.transfer_inputs(Environment::Live));
    let n = w.requests.len() + w.answers.len();
    let (mut rates, mut mix, mut booked) = (Vec::new(), Outcomes::default(), 0);
    for run in 0..APPLY_RUNS {
        let mut alone = Alone::<FxProcessor>::new();
        let (setup_out, poisoned) = alone.apply(&p, setup_items(w, s));
        anyhow::ensure!(poisoned == 0, "{poisoned} setup inputs were dead-lettered");
        let items = main_items(w, s, w.requests.iter().chain(&w.answers), TICK_STEP_MS);
        let t0 = Instant::now();
        let (out, poisoned) = alone.apply(&p, items);
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(poisoned == 0, "{poisoned} inputs were dead-lettered");
        rates.push(n as f64 / secs);
        if run == 0 {
            mix = outcomes_on(setup_out.iter().chain(&out), &events, count);
            booked = out.iter().filter(|o| o.topic == bookings).count();
        }
    }
    Ok((median(&rates), rates, mix, booked))
}

/// What the routed passthrough reads: FX's routed and broadcast topics, with ticks.
fn fx_like(topics: &Topics, env: Environment) -> Spec {
    FxProcessor::new(topics.clone(), FxSettings::default()).spec(topics, env)
}

/// Figures of (2).
struct Broker {
    /// Records landed on `fx.events` per second, steady state.
    events_per_s: f64,
    steady_s: f64,
    /// The same in records of FX's log (rates once per partition, ticks not counted).
    inputs_per_s: f64,
    passthrough_per_s: f64,
    passthrough_steady_s: f64,
    mix: Outcomes,
    setup_s: f64,
}

/// (2): the real processor with its router and checkpoints, then the routed passthrough.
async fn on_broker(base: &Config, o: &Options, s: &FxSettings) -> anyhow::Result<Broker> {
    let cfg = fresh_config(base, "benchfx");
    let env = Environment::Live;
    let topics = kafka::topics(&cfg.kafka);
    // The clock of the broker is the router's ticks (wall time): the workload is laid out from now.
    let w = workload(s, o.quotes, Utc::now().timestamp_millis())?;
    // The processor as registered (`[fx]` of the config).
    let fx = crate::registry::fx(&cfg, topics.clone());
    ensure_processor_topics(&cfg, &fx, &topics, env).await?;
    let source = |e: &RawEnvelope| {
        if e.event_type == command_types::FX_RATES_PUBLISHED {
            topics.fx_rates(env)
        } else if e.event_type == BookingRecorded::EVENT_TYPE {
            topics.ledger_bookings(env)
        } else {
            topics.fx_commands(env)
        }
    };

    // Setup: the rates; once every partition has a clock, the quotes to expire; until they expired.
    let started = Instant::now();
    produce_to(&cfg, &w.rates, source).await?;
    let stop = CancellationToken::new();
    let (c, st) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, fx, st).await });
    let events = topics.fx_events(env);
    let setup = async {
        router_caught_up(&cfg, "fx", &[topics.fx_rates(env)]).await?;
        log_ticked(&cfg, &topics.log(env, "fx")).await?;
        produce_to(&cfg, &w.expiring, source).await?;
        let deadline = Instant::now() + Duration::from_millis(s.quote_ttl_ms.max(0) as u64) + SETUP_WAIT;
        loop {
            let n = records_on(&cfg, &events).await?;
            if n >= w.setup_events as i64 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "setup: {n} of {} quote events landed",
                w.setup_events
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    stop.cancel();
    task.await??;
    setup?;
    let setup_s = started.elapsed().as_secs_f64();
    println!(
        "    setup: {} rate publications and {} quotes issued and expired in {setup_s:.1} s (the quotes' TTL is {} ms)",
        w.rates.len(),
        w.expiring.len(),
        s.quote_ttl_ms
    );

    // The requests now; the answers once the router has copied them.
    produce_to(&cfg, &w.requests, source).await?;
    let feed = async {
        router_caught_up(&cfg, "fx", &[topics.fx_commands(env), topics.fx_rates(env)]).await?;
        produce_to(&cfg, &w.answers, source).await
    };
    // Every record the setup and the requests put on fx.events, as apply alone counts them.
    let expected = outcomes_of(&w, s, TICK_STEP_MS).total() as i64;
    let baseline = w.setup_events as i64;
    let fx = crate::registry::fx(&cfg, topics.clone());
    let (measured, steady_s) = drain_fed(&cfg, fx, &events, baseline, expected, feed).await?;
    let events_per_s = measured as f64 / steady_s;
    let partitions = cfg.kafka.topic_partitions.max(1) as usize;
    let republished = w.republications();
    let log_records = (w.requests.len() - republished) + republished * partitions + w.answers.len();
    let inputs_per_s = events_per_s * log_records as f64 / (expected - baseline).max(1) as f64;

    let passthrough_topic = format!("{}live.bench.passthrough", cfg.kafka.topic_prefix);
    let copies = (w.expiring.len() + w.requests.len() - republished + w.answers.len())
        + (w.rates.len() + republished) * partitions;
    let ceiling = RoutedPassthrough { output: passthrough_topic.clone(), like: fx_like };
    let (p_share, passthrough_steady_s) = drain(&cfg, ceiling, &passthrough_topic, copies as i64).await?;

    let mix = outcomes_read(&cfg, &events, expected as usize * 2 + 1, count).await?;
    Ok(Broker {
        events_per_s,
        steady_s,
        inputs_per_s,
        passthrough_per_s: copies as f64 * p_share / passthrough_steady_s,
        passthrough_steady_s,
        mix,
        setup_s,
    })
}

/// The outcomes of one untimed run of (1) over `w` (setup included), ticks moving the clock by
/// `tick_step_ms`.
fn outcomes_of(w: &Workload, s: &FxSettings, tick_step_ms: i64) -> Outcomes {
    let topics = Topics::new("bench.");
    let p = FxProcessor::new(topics.clone(), s.clone());
    let events = topics.fx_events(Environment::Live);
    let mut alone = Alone::<FxProcessor>::new();
    let (mut out, _) = alone.apply(&p, setup_items(w, s));
    out.extend(alone.apply(&p, main_items(w, s, w.requests.iter().chain(&w.answers), tick_step_ms)).0);
    outcomes_on(out.iter(), &events, count)
}

/// `riverbank bench fx`.
pub async fn fx(cfg: &Config, o: &Options) -> anyhow::Result<()> {
    let m = print_machine();
    let s = crate::registry::fx(cfg, Topics::new("bench.")).settings().clone();
    let w = workload(&s, o.quotes, CLOCK_MS)?;
    let (republished, answers) = (w.republications(), w.answers.len());
    println!(
        "workload: {} quote requests over {TENANTS} tenants (fixed sell 60 %, fixed buy 40 %; 7 published pairs, their inverses and crosses through {}; {} per mille to a pair with no rate, {} to the stale pair, {} above the OTC threshold), each issued quote converted, {} quotes left to expire and converted later; {} records of requests (rates republished {republished} times), {} ledger answers ({} per mille refused)",
        o.quotes,
        s.pivot,
        UNKNOWN_PAIR_PER_MILLE,
        STALE_PAIR_PER_MILLE,
        OTC_PER_MILLE,
        w.expiring.len(),
        w.requests.len(),
        w.answers.len(),
        LEDGER_REFUSED_PER_MILLE
    );
    let (apply_median, apply_runs, apply_mix, booked) = apply_alone(&w, &s)?;
    let n = w.requests.len() + w.answers.len();
    println!("(1) apply alone:               median {apply_median:>9.0} inputs/s over {APPLY_RUNS} runs of {n} inputs, one core ({booked} bookings requested)");
    println!("    outcomes on fx.events (setup included):");
    for l in apply_mix.lines() {
        println!("      {l}");
    }
    drop(w);

    let b = on_broker(cfg, o, &s).await?;
    println!("(2) fx on the broker:          {:>9.0} records/s landed on fx.events = {:>9.0} inputs/s (router, checkpoint after every batch; steady state over {:.2} s)", b.events_per_s, b.inputs_per_s, b.steady_s);
    let diff = print_against_ceiling(
        b.inputs_per_s,
        b.passthrough_per_s,
        b.passthrough_steady_s,
        &apply_mix,
        &b.mix,
    );

    let report = json!({
        "machine": m,
        "command": "riverbank --config deploy/local/riverbank.toml bench fx",
        "settings": {
            "quote_ttl_ms": s.quote_ttl_ms, "rate_age_max_ms": s.rate_age_max_ms, "pivot": s.pivot.to_string(),
            "markup_bps_default": s.markup_bps_default, "rounding": s.rounding.as_str(),
        },
        "workload": {
            "quotes": o.quotes, "tenants": TENANTS, "expiring_quotes": (o.quotes / EXPIRING_PER).max(1),
            "request_records": n - answers, "rate_republications": republished, "ledger_answers": answers,
            "answers_refused_per_mille": LEDGER_REFUSED_PER_MILLE,
            "unknown_pair_per_mille": UNKNOWN_PAIR_PER_MILLE, "stale_pair_per_mille": STALE_PAIR_PER_MILLE,
            "otc_per_mille": OTC_PER_MILLE, "rates_every_records": RATES_EVERY,
        },
        "apply_alone": {
            "inputs_per_s_median": apply_median, "runs_inputs_per_s": apply_runs, "inputs": n,
            "bookings_requested": booked, "outcomes": apply_mix.to_json(),
        },
        "broker": {
            "setup_s": b.setup_s,
            "fx_events_per_s": b.events_per_s, "fx_inputs_per_s": b.inputs_per_s, "steady_s": b.steady_s,
            "routed_passthrough_per_s": b.passthrough_per_s, "passthrough_steady_s": b.passthrough_steady_s,
            "ratio": b.inputs_per_s / b.passthrough_per_s,
            "outcomes": b.mix.to_json(), "outcomes_identical_to_apply": diff.is_empty(),
        },
    });
    write_report(&o.json, &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated workload is deterministic, every input applies, each outcome it is built for
    /// occurs (as often as it says where it says), no quote of the requests expires, and the
    /// outcomes are the same whether the clock runs slowly or twenty times faster.
    #[test]
    fn the_workload_reaches_every_outcome_whatever_the_clock_speed() {
        let s = FxSettings::default();
        let w = workload(&s, 3_000, CLOCK_MS).unwrap();
        let again = workload(&s, 3_000, CLOCK_MS).unwrap();
        assert_eq!((&again.rates, &again.expiring), (&w.rates, &w.expiring));
        assert_eq!((&again.requests, &again.answers), (&w.requests, &w.answers));

        let mix = outcomes_of(&w, &s, TICK_STEP_MS);
        assert_eq!(mix, outcomes_of(&w, &s, 20 * TICK_STEP_MS), "the clock's speed changed outcomes");
        let expiring = w.expiring.len() as u64;
        assert_eq!(
            (mix.get("quote expired"), mix.get("conversion rejected: quote_expired")),
            (expiring, expiring)
        );
        let issued = mix.get("quote issued (fixed sell)") + mix.get("quote issued (fixed buy)");
        assert_eq!(mix.get("quote used") + expiring, issued, "a quote of the requests expired: {mix:?}");
        let answers = w.answers.len() as u64;
        assert_eq!(mix.get("conversion booking"), answers);
        let refused = mix.get("conversion rejected: insufficient funds");
        assert_eq!(mix.get("conversion completed") + refused, answers);
        for label in [
            "quote issued (fixed buy)",
            "quote refused: unknown_pair",
            "quote refused: stale_rate",
            "conversion pending_approval",
            "conversion rejected: unknown_quote",
            "conversion rejected: quote_used",
            "conversion rejected: insufficient funds",
            "input rejected: self_approval",
        ] {
            assert!(mix.get(label) > 0, "{label} never happened: {mix:?}");
        }
        let labels = mix.0.keys().filter(|l| !l.starts_with("quote") && !l.starts_with("conversion"));
        assert_eq!(labels.collect::<Vec<_>>(), ["input rejected: self_approval"], "{mix:?}");
    }
}
