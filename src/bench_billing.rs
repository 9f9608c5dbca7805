//! `riverbank bench billing`: figures for the billing processor, printed and written as JSON, never
//! asserted.
//!
//! 1. `BillingProcessor::apply` alone on one core over a generated workload ([`workload`]), driven as
//!    the engine drives a partition ([`Alone`]): the fee configs first (untimed); then, timed, the
//!    transfers' status changes (most completing, some failing, cancelled or left unfinished, a few
//!    delivered twice or completing in the month before) and the ledger's answers to the fee bookings
//!    they cause. The median of 5 runs (inputs/s and fees/s) and the mix of outcomes.
//! 2. On the broker: the real processor with its router and checkpoints (`process::run`, a fresh topic
//!    prefix). The fee configs go to `billing.commands` and the setup ends once the router has copied
//!    them and every partition of the log has a tick. Then the status changes go to the status topic
//!    and, once the router has copied them, the answers to `ledger.bookings` (a ledger answers only
//!    what was asked). Measured as records landing on `billing.events` in steady state, and read back
//!    for the mix. Then `bench transfers`' passthrough behind a router shaped like billing's (the same
//!    routed topics, ticks) over the same records, as the ceiling of router + loop.
//!
//! Billing goes by calendar months, so the workload is laid out from the time the bench starts (both
//! phases use it): completions over the days before it in its month (at least the last hour), and 2 %
//! completing in the month before, which are adjustments on this month's invoice when that month has
//! closed (`billing.lateness_ms` after its end) and lines of its own draft invoice otherwise. Which one
//! depends on the day the bench runs; the mix says it.
//!
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;
use riverbank_processors::billing::{BillingProcessor, BillingSettings, Period};
use riverbank_runtime::{kafka, CancellationToken, Config};
use riverbank_schemas::billing::{BillingInputRejected, FeeCharged, FeeStatus, InvoiceRecorded, TierPricing};
use riverbank_schemas::commands::{command_types, FeeConfigUpserted, FeeTier};
use riverbank_schemas::ledger::BookingRecorded;
use riverbank_schemas::processor::{Processor, Spec};
use riverbank_schemas::transfers::{TransferStatus, TransferStatusChanged};
use riverbank_schemas::{derived_id, Currency, Environment, Money, RawEnvelope, Topics, TransferKind};
use serde_json::json;

use crate::bench::{
    self, at, currency, drain, drain_fed, ensure_processor_topics, fresh_config, log_ticked, median,
    outcomes_on, outcomes_read, print_against_ceiling, print_machine, produce_to, reason_code,
    router_caught_up, tenant, ticked, units_drawn, write_report, Alone, LogItem, Outcomes, RoutedPassthrough,
    Stream,
};
use crate::bench_fx::ledger_answers;
use crate::workload::Lcg;

/// Tenants the transfers are spread over (inputs are keyed by tenant: a log partition holds whole tenants).
const TENANTS: usize = 16;
/// Runs of (1); the median is reported.
const APPLY_RUNS: usize = 5;
/// Apply alone: a tick every this many records, advancing the clock by [`TICK_STEP_MS`].
const TICK_EVERY: usize = 500;
const TICK_STEP_MS: i64 = 100;
/// The completions spread over at most this span (ms) before the bench starts, within its month (and
/// over at least [`SPAN_MIN_MS`]).
const SPAN_MAX_MS: i64 = 10 * DAY_MS;
const SPAN_MIN_MS: i64 = 3_600_000;
/// The last completion is this long (ms) before the bench starts.
const SPAN_END_BEFORE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// A status change follows the previous one of its transfer within this many transfers of the stream.
const FOLLOW_MAX: u64 = 6;
/// Final statuses, per mille of transfers: completed, failed, cancelled (the rest stay PROCESSING).
const COMPLETED_PER_MILLE: u64 = 880;
const FAILED_PER_MILLE: u64 = 70;
const CANCELLED_PER_MILLE: u64 = 30;
/// Completions delivered twice (a redelivery: charged once), per mille of completions.
const TWICE_PER_MILLE: u64 = 10;
/// Completions in the month before (late), per mille of completions.
const LATE_PER_MILLE: u64 = 20;
/// Kinds with a fee config (internal transfers have none: their fees are waived).
const PRICED_KINDS: [TransferKind; 3] =
    [TransferKind::Deposit, TransferKind::Payout, TransferKind::Withdrawal];
const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];

/// What the inputs' ids derive from (with their parts).
const ID: &str = "bench-billing";

/// `riverbank bench billing` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Transfers (each 2-3 status changes: INITIATED, PROCESSING, then mostly COMPLETED).
    #[arg(long, default_value_t = 100_000)]
    pub transfers: usize,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench-billing.json")]
    pub json: PathBuf,
}

/// The generated workload, in log order per phase.
pub struct Workload {
    /// The clock the workload is laid out from (ms): the time the bench started.
    pub t0_ms: i64,
    /// Fee configs: flat, volume-tiered and graduated, one shape per tenant; some with a second version.
    pub configs: Vec<RawEnvelope>,
    /// `transfer.status_changed`, lifecycles interleaved (per transfer in order).
    pub statuses: Vec<RawEnvelope>,
    /// The ledger's answers to every fee booking the status changes cause, after them.
    pub answers: Vec<RawEnvelope>,
    /// Completions among `statuses` (redeliveries not counted), and of those in the month before.
    pub completed: usize,
    pub late: usize,
    /// The completions' span (ms).
    pub span: (i64, i64),
}

/// `major` units of `c` (JPY amounts scaled to about the same worth).
fn major(c: Currency, units: i64) -> Money {
    if c.precision() == 0 {
        Money::new(units * 150, c)
    } else {
        Money::new(units * 10i64.pow(u32::from(c.precision())), c)
    }
}

/// `hundredths` of a unit of `c` (JPY scaled as in [`major`]).
fn cents(c: Currency, hundredths: i64) -> Money {
    if c.precision() == 0 {
        Money::new(hundredths * 150 / 100, c)
    } else {
        Money::new(hundredths * 10i64.pow(u32::from(c.precision())) / 100, c)
    }
}

/// A tenant's fee config for one kind and currency: tenant % 3 = 0 flat (fixed + bps, min, max), 1
/// volume-tiered, 2 graduated; the last tenant's deposits are free (zero: waived).
fn config(t: usize, kind: TransferKind, c: Currency, version: u32, from_ms: i64) -> FeeConfigUpserted {
    let tier = |from: i64, bps| FeeTier { monthly_volume_from: major(c, from), bps };
    let (fixed, bps, min, max, tiers, pricing) = match t % 3 {
        _ if t == TENANTS - 1 && kind == TransferKind::Deposit => {
            (cents(c, 0), 0, None, None, vec![], TierPricing::Volume)
        }
        0 => (cents(c, 25), 20, Some(cents(c, 50)), Some(major(c, 25)), vec![], TierPricing::Volume),
        1 => (
            cents(c, 0),
            30,
            Some(cents(c, 10)),
            None,
            vec![tier(50_000, 20), tier(200_000, 10)],
            TierPricing::Volume,
        ),
        _ => (
            cents(c, 10),
            35,
            None,
            Some(major(c, 50)),
            vec![tier(50_000, 25), tier(200_000, 15), tier(500_000, 5)],
            TierPricing::Graduated,
        ),
    };
    // A second version charges 5 bps more.
    let bps = bps + if version > 1 && bps > 0 { 5 } else { 0 };
    FeeConfigUpserted {
        transfer_kind: kind,
        fixed,
        bps,
        min,
        max,
        tiers,
        pricing,
        effective_from: Some(at(from_ms)),
        changed_by: "user:bench-billing-admin".to_owned(),
    }
}

/// An amount: 70 % up to 200, 20 % up to 1,000, 8 % up to 5,000, 2 % up to 50,000 (units), in USD
/// (55 %), EUR (25 %), GBP (12 %) or JPY (8 %, ×150).
fn amount(rng: &mut Lcg) -> anyhow::Result<Money> {
    let units = units_drawn(rng);
    let c = currency(match rng.below(100) {
        0..55 => "USD",
        55..80 => "EUR",
        80..92 => "GBP",
        _ => "JPY",
    })?;
    let m = major(c, units);
    Ok(if c.precision() == 0 { m } else { Money::new(m.amount_minor + rng.below(100) as i64, c) })
}

/// The completions' span for a bench starting at `t0_ms`: the days before it in its month, at most
/// [`SPAN_MAX_MS`], at least [`SPAN_MIN_MS`].
fn span(t0_ms: i64) -> anyhow::Result<(i64, i64)> {
    let month = Period::of_ms(t0_ms).context("the clock is outside billing's years")?;
    let end = t0_ms - SPAN_END_BEFORE_MS;
    let start = month.start_ms().max(end - SPAN_MAX_MS).min(end - SPAN_MIN_MS);
    Ok((start, end))
}

/// The setup's records: a tick (the clock), then the fee configs.
fn setup_items(w: &Workload) -> Vec<LogItem> {
    let mut items = vec![LogItem::Tick(w.t0_ms)];
    items.extend(w.configs.iter().cloned().map(LogItem::Routed));
    items
}

/// `inputs` as the log holds them after the setup: routed, a tick every [`TICK_EVERY`] records.
fn main_items<'a>(w: &Workload, inputs: impl Iterator<Item = &'a RawEnvelope>) -> Vec<LogItem> {
    ticked(inputs, |_| false, w.t0_ms, TICK_EVERY, TICK_STEP_MS)
}

/// The deterministic workload of (1) and (2), laid out from the clock `t0_ms`, with the ledger's
/// answers computed by applying the status changes.
pub fn workload(s: &BillingSettings, transfers_n: usize, t0_ms: i64) -> anyhow::Result<Workload> {
    anyhow::ensure!(transfers_n > 0, "needs transfers");
    let mut rng = Lcg(0xb111_2024);
    let (start, end) = span(t0_ms)?;
    let this = Period::of_ms(t0_ms).context("the clock is outside billing's years")?;
    let before = this.back(1).context("no month before")?;

    // Configs in force from a day before the month before (so late completions are priced too); a
    // second version of every fourth tenant's payouts from the middle of the span.
    let from = before.start_ms() - DAY_MS;
    let mut configs = Vec::new();
    for t in 0..TENANTS {
        for kind in PRICED_KINDS {
            for code in CURRENCIES {
                let c = currency(code)?;
                let parts = [tenant(t), kind.as_str().to_owned(), code.to_owned()];
                // Version `v` in force from `from_ms`.
                let version = |v: u32, from_ms: i64| {
                    let ids = ["config", &parts[0], &parts[1], &parts[2], &v.to_string()];
                    let p = config(t, kind, c, v, from_ms);
                    bench::envelope(ID, &ids, command_types::FEE_CONFIG_UPSERTED, &parts[0], from, p)
                };
                configs.push(version(1, from)?);
                if t % 4 == 1 && kind == TransferKind::Payout {
                    configs.push(version(2, start + (end - start) / 2)?);
                }
            }
        }
    }

    // Lifecycles: INITIATED, PROCESSING, then the final status a few transfers later.
    let step = ((end - start) / transfers_n as i64).max(1);
    let mut st = Stream::default();
    let (mut completed, mut late) = (0usize, 0usize);
    for i in 0..transfers_n {
        st.release(i);
        let t = rng.below(TENANTS as u64) as usize;
        let tn = tenant(t);
        let kind = match rng.below(100) {
            0..35 => TransferKind::Deposit,
            35..70 => TransferKind::Payout,
            70..90 => TransferKind::Withdrawal,
            _ => TransferKind::Internal,
        };
        let amount = amount(&mut rng)?;
        let r = rng.below(1_000);
        let is_late = r < COMPLETED_PER_MILLE && rng.below(1_000) < LATE_PER_MILLE;
        let done_ms = if is_late {
            before.start_ms() + rng.below((before.end_ms() - before.start_ms()) as u64) as i64
        } else {
            start + step * i as i64
        };
        let id = format!("tr-{i:07}");
        let change = |previous: Option<TransferStatus>, status, version: u32| TransferStatusChanged {
            transfer_id: id.clone(),
            kind,
            amount,
            previous,
            status,
            version,
            reason: (status == TransferStatus::Failed).then(|| "provider_declined".to_owned()),
            cause_event_id: derived_id(&["bench-billing-cause", &id, &version.to_string()]),
        };
        let i_s = i.to_string();
        let e = |v: u32, status, previous, at_ms| {
            bench::envelope(
                ID,
                &["status", &i_s, &v.to_string()],
                TransferStatusChanged::EVENT_TYPE,
                &tn,
                at_ms,
                change(previous, status, v),
            )
        };
        st.out.push(e(1, TransferStatus::Initiated, None, done_ms - 2_000)?);
        let due = i + 1 + rng.below(FOLLOW_MAX) as usize;
        st.later(due, e(2, TransferStatus::Processing, Some(TransferStatus::Initiated), done_ms - 1_000)?);
        let last = match r {
            _ if r < COMPLETED_PER_MILLE => Some(TransferStatus::Completed),
            _ if r < COMPLETED_PER_MILLE + FAILED_PER_MILLE => Some(TransferStatus::Failed),
            _ if r < COMPLETED_PER_MILLE + FAILED_PER_MILLE + CANCELLED_PER_MILLE => {
                Some(TransferStatus::Cancelled)
            }
            _ => None,
        };
        if let Some(status) = last {
            let final_due = due + 1 + rng.below(FOLLOW_MAX) as usize;
            let f = e(3, status, Some(TransferStatus::Processing), done_ms)?;
            if status == TransferStatus::Completed {
                completed += 1;
                late += usize::from(is_late);
                if rng.below(1_000) < TWICE_PER_MILLE {
                    st.later(final_due + 1 + rng.below(FOLLOW_MAX) as usize, f.clone());
                }
            }
            st.later(final_due, f);
        }
    }
    let out = st.finish();

    // The ledger's answers: apply configs and status changes, answer each booking requested.
    let mut w =
        Workload { t0_ms, configs, statuses: out, answers: Vec::new(), completed, late, span: (start, end) };
    let topics = Topics::new("bench.");
    let p = BillingProcessor::new(topics.clone(), *s);
    let mut alone = Alone::<BillingProcessor>::new();
    let (_, poisoned) = alone.apply(&p, setup_items(&w));
    anyhow::ensure!(poisoned == 0, "{poisoned} fee configs were dead-lettered");
    let (outputs, poisoned) = alone.apply(&p, main_items(&w, w.statuses.iter()));
    anyhow::ensure!(poisoned == 0, "{poisoned} status changes were dead-lettered");
    w.answers = ledger_answers(&outputs, &topics.transfer_inputs(Environment::Live), &mut rng, 0)?;
    Ok(w)
}

/// One record of `billing.events` counted by what it says.
fn count(mix: &mut Outcomes, payload: &[u8]) {
    let Ok(e) = serde_json::from_slice::<RawEnvelope>(payload) else {
        mix.add("not an envelope");
        return;
    };
    let label = match e.event_type.as_str() {
        FeeCharged::EVENT_TYPE => match serde_json::from_value::<FeeCharged>(e.payload) {
            Ok(f) => match f.status {
                FeeStatus::Booking => match f.clamped.as_deref() {
                    Some(c) => format!("fee booking (clamped to {c})"),
                    None => "fee booking".to_owned(),
                },
                FeeStatus::Waived if f.config_version.is_none() => "fee waived (no config)".to_owned(),
                FeeStatus::Waived => "fee waived (zero)".to_owned(),
                FeeStatus::Booked if f.adjustment => "fee booked (adjustment)".to_owned(),
                FeeStatus::Booked => "fee booked".to_owned(),
                FeeStatus::Refused => format!("fee refused: {}", reason_code(f.reason.as_deref())),
            },
            Err(_) => "fee (undecodable)".to_owned(),
        },
        InvoiceRecorded::EVENT_TYPE => match serde_json::from_value::<InvoiceRecorded>(e.payload) {
            Ok(i) => format!("invoice {}", i.status.as_str()),
            Err(_) => "invoice (undecodable)".to_owned(),
        },
        BillingInputRejected::EVENT_TYPE => match serde_json::from_value::<BillingInputRejected>(e.payload) {
            Ok(r) => format!("input rejected: {}", reason_code(Some(&r.reason))),
            Err(_) => "input rejected (undecodable)".to_owned(),
        },
        other => other.to_owned(),
    };
    mix.add(label);
}

/// Fees charged (first records of a fee: booking or waived) in a mix.
fn fees_in(mix: &Outcomes) -> u64 {
    mix.0
        .iter()
        .filter(|(k, _)| k.starts_with("fee booking") || k.starts_with("fee waived"))
        .map(|(_, n)| n)
        .sum()
}

/// Figures of (1).
struct Apply {
    inputs_per_s: f64,
    runs_inputs_per_s: Vec<f64>,
    fees_per_s: f64,
    runs_fees_per_s: Vec<f64>,
    mix: Outcomes,
    bookings: usize,
}

/// (1): inputs/s and fees/s of `apply` on one core, median of [`APPLY_RUNS`]; the mix of the first run
/// and the bookings it requested.
fn apply_alone(w: &Workload, s: &BillingSettings) -> anyhow::Result<Apply> {
    let topics = Topics::new("bench.");
    let p = BillingProcessor::new(topics.clone(), *s);
    let (events, bookings) =
        (topics.billing_events(Environment::Live), topics.transfer_inputs(Environment::Live));
    let n = w.statuses.len() + w.answers.len();
    let (mut rates, mut fee_rates, mut mix, mut booked) = (Vec::new(), Vec::new(), Outcomes::default(), 0);
    for run in 0..APPLY_RUNS {
        let mut alone = Alone::<BillingProcessor>::new();
        let (setup_out, poisoned) = alone.apply(&p, setup_items(w));
        anyhow::ensure!(poisoned == 0, "{poisoned} fee configs were dead-lettered");
        let items = main_items(w, w.statuses.iter().chain(&w.answers));
        let t0 = Instant::now();
        let (out, poisoned) = alone.apply(&p, items);
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(poisoned == 0, "{poisoned} inputs were dead-lettered");
        let m = outcomes_on(setup_out.iter().chain(&out), &events, count);
        rates.push(n as f64 / secs);
        fee_rates.push(fees_in(&m) as f64 / secs);
        if run == 0 {
            mix = m;
            booked = out.iter().filter(|o| o.topic == bookings).count();
        }
    }
    Ok(Apply {
        inputs_per_s: median(&rates),
        runs_inputs_per_s: rates,
        fees_per_s: median(&fee_rates),
        runs_fees_per_s: fee_rates,
        mix,
        bookings: booked,
    })
}

/// What the routed passthrough reads: billing's routed topics, with ticks.
fn billing_like(topics: &Topics, env: Environment) -> Spec {
    BillingProcessor::new(topics.clone(), BillingSettings::default()).spec(topics, env)
}

/// Figures of (2).
struct Broker {
    /// Records landed on `billing.events` per second, steady state.
    events_per_s: f64,
    steady_s: f64,
    /// The same in records of billing's log (ticks not counted), and in fees.
    inputs_per_s: f64,
    fees_per_s: f64,
    passthrough_per_s: f64,
    passthrough_steady_s: f64,
    mix: Outcomes,
}

/// (2): the real processor with its router and checkpoints, then the routed passthrough.
async fn on_broker(base: &Config, w: &Workload, expected: &Outcomes) -> anyhow::Result<Broker> {
    let cfg = fresh_config(base, "benchbilling");
    let env = Environment::Live;
    let topics = kafka::topics(&cfg.kafka);
    // The processor as registered (`[billing]` of the config).
    let billing = crate::registry::billing(&cfg, topics.clone());
    ensure_processor_topics(&cfg, &billing, &topics, env).await?;
    let source = |e: &RawEnvelope| {
        if e.event_type == TransferStatusChanged::EVENT_TYPE {
            topics.transfer_status(env)
        } else if e.event_type == BookingRecorded::EVENT_TYPE {
            topics.ledger_bookings(env)
        } else {
            topics.billing_commands(env)
        }
    };

    // Setup: the configs, copied into the log, and a clock in every partition.
    produce_to(&cfg, &w.configs, source).await?;
    let stop = CancellationToken::new();
    let (c, st) = (cfg.clone(), stop.clone());
    let task = tokio::spawn(async move { riverbank_runtime::process::run(&c, billing, st).await });
    let setup = async {
        router_caught_up(&cfg, "billing", &[topics.billing_commands(env)]).await?;
        log_ticked(&cfg, &topics.log(env, "billing")).await
    }
    .await;
    stop.cancel();
    task.await??;
    setup?;
    println!(
        "    setup: {} fee configs copied into the billing log, every partition with a clock",
        w.configs.len()
    );

    // The status changes now; the answers once the router has copied them.
    produce_to(&cfg, &w.statuses, source).await?;
    let feed = async {
        router_caught_up(&cfg, "billing", &[topics.transfer_status(env)]).await?;
        produce_to(&cfg, &w.answers, source).await
    };
    let events = topics.billing_events(env);
    let total = expected.total() as i64;
    let billing = crate::registry::billing(&cfg, topics.clone());
    let (measured, steady_s) = drain_fed(&cfg, billing, &events, 0, total, feed).await?;
    let events_per_s = measured as f64 / steady_s;
    let log_records = w.statuses.len() + w.answers.len();
    let inputs_per_s = events_per_s * log_records as f64 / total.max(1) as f64;
    let fees_per_s = events_per_s * fees_in(expected) as f64 / total.max(1) as f64;

    let passthrough_topic = format!("{}live.bench.passthrough", cfg.kafka.topic_prefix);
    let copies = (w.configs.len() + w.statuses.len() + w.answers.len()) as i64;
    let ceiling = RoutedPassthrough { output: passthrough_topic.clone(), like: billing_like };
    let (p_share, passthrough_steady_s) = drain(&cfg, ceiling, &passthrough_topic, copies).await?;

    let mix = outcomes_read(&cfg, &events, total as usize * 2 + 1, count).await?;
    Ok(Broker {
        events_per_s,
        steady_s,
        inputs_per_s,
        fees_per_s,
        passthrough_per_s: copies as f64 * p_share / passthrough_steady_s,
        passthrough_steady_s,
        mix,
    })
}

/// `riverbank bench billing`.
pub async fn billing(cfg: &Config, o: &Options) -> anyhow::Result<()> {
    let m = print_machine();
    let s = *crate::registry::billing(cfg, Topics::new("bench.")).settings();
    let w = workload(&s, o.transfers, Utc::now().timestamp_millis())?;
    let configs = w.configs.len();
    println!(
        "workload: {configs} fee configs ({TENANTS} tenants × deposit, payout, withdrawal × USD, EUR, GBP, JPY: flat, volume-tiered or graduated by tenant; one tenant's deposits free; every fourth tenant's payouts with a second version mid-span); {} transfers ({} status changes: {} completing, {} per mille failed, {} cancelled, the rest unfinished; {} per mille of completions delivered twice), completions from {} to {} and {} in the month before; {} ledger answers",
        o.transfers,
        w.statuses.len(),
        w.completed,
        FAILED_PER_MILLE,
        CANCELLED_PER_MILLE,
        TWICE_PER_MILLE,
        at(w.span.0).to_rfc3339(),
        at(w.span.1).to_rfc3339(),
        w.late,
        w.answers.len()
    );
    let a = apply_alone(&w, &s)?;
    let n = w.statuses.len() + w.answers.len();
    println!("(1) apply alone:               median {:>9.0} inputs/s = {:>9.0} fees/s over {APPLY_RUNS} runs of {n} inputs, one core ({} bookings requested)", a.inputs_per_s, a.fees_per_s, a.bookings);
    println!("    outcomes on billing.events:");
    for l in a.mix.lines() {
        println!("      {l}");
    }

    let b = on_broker(cfg, &w, &a.mix).await?;
    println!("(2) billing on the broker:     {:>9.0} records/s landed on billing.events = {:>9.0} inputs/s = {:>9.0} fees/s (router, checkpoint after every batch; steady state over {:.2} s)", b.events_per_s, b.inputs_per_s, b.fees_per_s, b.steady_s);
    let diff =
        print_against_ceiling(b.inputs_per_s, b.passthrough_per_s, b.passthrough_steady_s, &a.mix, &b.mix);

    let report = json!({
        "machine": m,
        "command": "riverbank --config deploy/local/riverbank.toml bench billing",
        "settings": { "lateness_ms": s.lateness_ms, "rounding": s.rounding.as_str() },
        "workload": {
            "tenants": TENANTS, "fee_configs": configs, "transfers": o.transfers,
            "status_changes": w.statuses.len(), "completed": w.completed, "completed_month_before": w.late,
            "completions_from": at(w.span.0).to_rfc3339(), "completions_to": at(w.span.1).to_rfc3339(),
            "ledger_answers": w.answers.len(),
        },
        "apply_alone": {
            "inputs_per_s_median": a.inputs_per_s, "runs_inputs_per_s": a.runs_inputs_per_s,
            "fees_per_s_median": a.fees_per_s, "runs_fees_per_s": a.runs_fees_per_s, "inputs": n,
            "bookings_requested": a.bookings, "outcomes": a.mix.to_json(),
        },
        "broker": {
            "billing_events_per_s": b.events_per_s, "billing_inputs_per_s": b.inputs_per_s,
            "fees_per_s": b.fees_per_s, "steady_s": b.steady_s,
            "routed_passthrough_per_s": b.passthrough_per_s, "passthrough_steady_s": b.passthrough_steady_s,
            "ratio": b.inputs_per_s / b.passthrough_per_s,
            "outcomes": b.mix.to_json(), "outcomes_identical_to_apply": diff.is_empty(),
        },
    });
    write_report(&o.json, &report)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    /// The outcomes of one untimed run of (1) over `w`.
    fn outcomes_of(w: &Workload, s: &BillingSettings) -> Outcomes {
        let topics = Topics::new("bench.");
        let p = BillingProcessor::new(topics.clone(), *s);
        let events = topics.billing_events(Environment::Live);
        let mut alone = Alone::<BillingProcessor>::new();
        let (mut out, _) = alone.apply(&p, setup_items(w));
        out.extend(alone.apply(&p, main_items(w, w.statuses.iter().chain(&w.answers))).0);
        outcomes_on(out.iter(), &events, count)
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    /// The generated workload is deterministic, every input applies, every completion is charged
    /// once (redeliveries charge nothing), every fee asked for is booked and counted on an invoice,
    /// and the fee shapes, waivers and clamps all occur. In the middle of a month the month before
    /// has closed: its late completions are adjustments.
    #[test]
    fn every_completion_is_charged_once_and_every_fee_booked() {
        let s = BillingSettings::default();
        let t0 = ms("2026-12-15T12:00:00Z");
        let w = workload(&s, 4_000, t0).unwrap();
        let again = workload(&s, 4_000, t0).unwrap();
        assert_eq!((&again.configs, &again.statuses, &again.answers), (&w.configs, &w.statuses, &w.answers));
        assert_eq!(w.span, (ms("2026-12-05T11:59:00Z"), ms("2026-12-15T11:59:00Z")));

        let mix = outcomes_of(&w, &s);
        assert_eq!(fees_in(&mix), w.completed as u64, "{mix:?}");
        let booking: u64 = mix.0.iter().filter(|(k, _)| k.starts_with("fee booking")).map(|(_, n)| n).sum();
        assert_eq!(booking, w.answers.len() as u64);
        assert_eq!(mix.get("fee booked") + mix.get("fee booked (adjustment)"), booking);
        assert!(w.late > 0 && mix.get("fee booked (adjustment)") > 0, "{mix:?}");
        for label in
            ["fee waived (no config)", "fee waived (zero)", "fee booking (clamped to min)", "invoice draft"]
        {
            assert!(mix.get(label) > 0, "{label} never happened: {mix:?}");
        }
        assert!(mix.0.keys().all(|l| l.starts_with("fee ") || l == "invoice draft"), "{mix:?}");
    }

    /// In the first hour of a month the completions reach back into the month before, which is still
    /// open: its fees go on its own draft, none is an adjustment.
    #[test]
    fn early_in_a_month_the_month_before_is_still_open() {
        let s = BillingSettings::default();
        let w = workload(&s, 2_000, ms("2026-12-01T00:30:00Z")).unwrap();
        assert_eq!(w.span, (ms("2026-11-30T23:29:00Z"), ms("2026-12-01T00:29:00Z")));
        let mix = outcomes_of(&w, &s);
        assert_eq!(mix.get("fee booked (adjustment)"), 0, "{mix:?}");
        assert_eq!(mix.get("fee booked"), w.answers.len() as u64);
    }
}
