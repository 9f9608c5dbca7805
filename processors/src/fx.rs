//! FX: rates, quotes with markup, conversions booked through the ledger, OTC approvals
//! (schemas/src/fx.rs states the contract; this is its one implementation).
//!
//! - **Inputs** (its router copies them into `{env}.fx.inputs`): `fx.rates_published` broadcast from
//!   `{env}.fx.rates` (every partition keeps every pair); tenants' `fx.quote_requested`,
//!   `fx.conversion_requested` and `fx.conversion_decided` routed from `{env}.fx.commands`; the ledger's
//!   `ledger.booking_recorded` routed from `{env}.ledger.bookings` (answers to other purposes, billing's,
//!   share the topic and emit nothing); provider webhooks routed from `{env}.ingest.webhooks`, of which
//!   only those mapped to [`RATES_WEBHOOK_TYPE`] matter. Time is the partition clock (ticks).
//! - **Rates.** Per published pair the latest by `as_of` (an equal or older one changes nothing, so a
//!   publication seen again is no change), with its source (`published_by`) and version: the event id
//!   of the publication, as risk records the rates it used. (Not the log position: a publication
//!   re-emitted upstream lands at a new offset and moves every later one, and a decision must not
//!   depend on where its inputs sat in the log.) A rate more than [`RATE_AHEAD_MAX_MS`] ahead of
//!   a set clock is not applied (it would shadow every later rate of its pair). A publication refused in
//!   part is answered by every partition it reaches, under one event id derived from it (the sinks keep
//!   one). A provider's webhook is not applied here: it is republished as one `fx.rates_published` on
//!   `fx.rates` (`published_by = provider:{name}`) and applied when that comes back, at one point of
//!   every partition's history.
//! - **Quotes.** Mid from a direct rate, its inverse, or a cross through the pivot (each leg direct or
//!   inverse; an inverse is 10^18 / rate rounded with the mode); the quote is refused, with the reason,
//!   before the partition has a clock (`no_clock`), without a rate (`unknown_pair`), on a stale rate
//!   (`stale_rate`), or when an amount overflows or rounds to nothing (`amount_too_large`,
//!   `amount_too_small`). An issued quote expires by a timer at `expires_at` unless a conversion used it.
//! - **Conversions** need a live quote of the same tenant whose rate is not stale now. Above the
//!   tenant's OTC threshold (sell currency, strictly above) a conversion waits, holding its quote, for
//!   `fx.conversion_decided` by someone other than its requester; if the quote expires first, the
//!   conversion is rejected. Executing sends one `ledger.booking_requested` (booking id
//!   `derived_id(["fx-booking", tenant, conversion_id])`) to `transfers.inputs`; the ledger's answer
//!   completes or rejects the conversion (with the ledger's reason).
//! - **Amounts** (see [`conversion_amounts`]): i128, checked, each amount rounded once with the quote's
//!   rounding mode at its currency's precision; exact values are recorded as decimals. The legs sum to
//!   zero per currency by construction, and that is checked before a booking is sent.
//! - **Answers.** Every applied input emits what changed (`fx.quote_recorded`, `fx.conversion_recorded`
//!   with versions +1, a booking request) or one `fx.input_rejected` with a reason that starts with a
//!   stable code (`invalid_request:`, `duplicate_id:`, `capacity:`, `unknown_conversion:`,
//!   `not_pending:`, `self_approval:`, `unknown_booking:`, `booking_answered:`, `invalid_rate:`). The same
//!   input again (same event id; for a webhook, the same provider event) emits nothing; a different
//!   request under a quote or conversion id already used is refused (`duplicate_id`).
//! - **Bounds.** At most `entries_max` quotes and conversions per partition (a request past it is
//!   refused); final ones are forgotten `final_retention_ms` after they became final (a timer); input
//!   ids and used quote/conversion ids are remembered up to [`REMEMBERED_PER_ENTRY`] × `entries_max`
//!   (oldest forgotten first), so duplicates are recognised after their entry is gone.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use riverbank_schemas::commands::ReviewDecision;
use riverbank_schemas::fx::{
    input_types as it, rate_fields, ConversionAmounts, ConversionRecorded, ConversionStatus,
    FxConversionDecided, FxInputRejected, FxRate, FxRatesPublished, QuoteRecorded, QuoteStatus, RateUsed,
    FX_ID_BYTES_MAX, RATES_WEBHOOK_TYPE,
};
use riverbank_schemas::ledger::{
    is_platform_account, unbalanced_currency, BookingLeg, BookingOutcome, BookingPurpose, BookingRecorded,
    BookingRequested, FX_DESK_ACCOUNT, FX_FEES_ACCOUNT, FX_RESIDUE_ACCOUNT,
};
use riverbank_schemas::money::AMOUNT_MINOR_MAX;
use riverbank_schemas::processor::{derived_emit, Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::rounding::{div_round, exact_decimal, pow10, RoundingMode};
use riverbank_schemas::state::{remember_bounded, Cell, Table, Timer, Timers};
use riverbank_schemas::{
    commands::{parse_rate_e9, FxConversionRequested, FxQuoteRequested},
    derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics, WebhookReceived,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where this processor's outputs say they come from.
pub const SOURCE: &str = "riverbank.fx";
/// Input ids and quote/conversion ids remembered per entry kept (`entries_max`): a quote or
/// conversion takes at most three inputs (request, decision, booking answer) and its own id.
pub const REMEMBERED_PER_ENTRY: usize = 4;
/// A rate whose `as_of` is further than this (ms) ahead of the partition clock is not applied.
pub const RATE_AHEAD_MAX_MS: i64 = 300_000;
/// The latest usable partition clock (ms): 2100-01-01T00:00:00Z, the end of the edge's event-time range.
pub const CLOCK_MS_MAX: i64 = 4_102_444_800_000;
/// Longest actor, account or reason text kept, in bytes (longer ones are cut at a character boundary).
pub const TEXT_BYTES_MAX: usize = 500;
/// Rate scale: rates are integers × 10^9.
const E9: i128 = 1_000_000_000;
/// Basis points in one.
const BPS_ONE: i128 = 10_000;

/// A tenant's own markup and OTC thresholds (`[fx.tenants.<tenant>]`); `None` takes the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FxTenantSettings {
    pub markup_bps: Option<u32>,
    /// Replaces the default list as a whole.
    pub otc_thresholds: Option<Vec<Money>>,
}

/// The FX processor's settings (config `[fx]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxSettings {
    /// A rate whose `as_of` is more than this (ms) behind the partition clock is stale.
    pub rate_age_max_ms: i64,
    /// A quote is live this long (ms of partition clock) after it is issued.
    pub quote_ttl_ms: i64,
    /// Cross rates go through this currency.
    pub pivot: Currency,
    pub rounding: RoundingMode,
    /// Markup on the mid rate (basis points, below 10,000) for tenants without their own.
    pub markup_bps_default: u32,
    /// Selling more than this (per sell currency) needs a second person's approval; a currency not
    /// listed has no threshold.
    pub otc_thresholds_default: Vec<Money>,
    pub tenants: BTreeMap<String, FxTenantSettings>,
    /// Quotes and conversions kept per partition at most.
    pub entries_max: usize,
    /// Final quotes and conversions are forgotten this long (ms of partition clock) after they became
    /// final.
    pub final_retention_ms: i64,
}

impl Default for FxSettings {
    /// The values of `runtime/config/default.toml`'s `[fx]`.
    fn default() -> Self {
        let currency = |code: &str| Currency::from_code(code).expect("the default currencies are known");
        FxSettings {
            rate_age_max_ms: 300_000,
            quote_ttl_ms: 30_000,
            pivot: currency("USD"),
            rounding: RoundingMode::HalfEven,
            markup_bps_default: 50,
            otc_thresholds_default: vec![
                Money::new(10_000_000, currency("USD")),
                Money::new(10_000_000, currency("EUR")),
                Money::new(1_000_000_000, currency("INR")),
            ],
            tenants: BTreeMap::new(),
            entries_max: 1_000_000,
            final_retention_ms: 86_400_000,
        }
    }
}

impl FxSettings {
    pub fn markup_bps(&self, tenant: &str) -> u32 {
        self.tenants.get(tenant).and_then(|t| t.markup_bps).unwrap_or(self.markup_bps_default)
    }

    /// The tenant's OTC threshold for selling `currency`, if it has one.
    pub fn otc_threshold(&self, tenant: &str, currency: Currency) -> Option<Money> {
        let list = self.tenants.get(tenant).and_then(|t| t.otc_thresholds.as_ref());
        list.unwrap_or(&self.otc_thresholds_default).iter().find(|m| m.currency == currency).copied()
    }

    fn remembered_max(&self) -> usize {
        self.entries_max.saturating_mul(REMEMBERED_PER_ENTRY).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct FxProcessor {
    topics: Topics,
    settings: FxSettings,
}

impl FxProcessor {
    pub fn new(topics: Topics, settings: FxSettings) -> Self {
        FxProcessor { topics, settings }
    }

    pub fn settings(&self) -> &FxSettings {
        &self.settings
    }
}

// ---------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------

/// The latest rate of one published pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub rate_e9: i64,
    pub as_of_ms: i64,
    pub source: String,
    /// The event id of the publication it came with.
    pub version: String,
}

/// A quote as the state keeps it (the fields of `QuoteRecorded`, none skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub status: QuoteStatus,
    pub version: u32,
    pub sell_currency: Currency,
    pub buy_currency: Currency,
    pub sell: Option<Money>,
    pub buy: Option<Money>,
    pub fixed_sell: bool,
    pub mid_e9: Option<i64>,
    pub rate_e9: Option<i64>,
    pub markup_bps: u32,
    pub rates: Vec<RateUsed>,
    pub pivot: Option<Currency>,
    pub rate_as_of_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub rounding: RoundingMode,
    pub requested_by: String,
    pub reason: Option<String>,
    /// The conversion that used it.
    pub conversion_id: Option<String>,
    /// A conversion waiting for an OTC approval holds it (no other conversion may use it).
    pub held_by: Option<String>,
    /// The input that asked for it (ids of events made without an input derive from it).
    pub cause: Uuid,
}

impl Quote {
    fn record(&self, quote_id: &str) -> QuoteRecorded {
        QuoteRecorded {
            quote_id: quote_id.to_owned(),
            status: self.status,
            version: self.version,
            sell_currency: self.sell_currency,
            buy_currency: self.buy_currency,
            sell: self.sell,
            buy: self.buy,
            fixed: if self.fixed_sell { "sell" } else { "buy" }.to_owned(),
            mid_e9: self.mid_e9,
            rate_e9: self.rate_e9,
            markup_bps: self.markup_bps,
            rates: self.rates.clone(),
            pivot: self.pivot,
            rate_as_of: self.rate_as_of_ms.and_then(time_of),
            expires_at: self.expires_at_ms.and_then(time_of),
            rounding: self.rounding,
            requested_by: self.requested_by.clone(),
            reason: self.reason.clone(),
            conversion_id: self.conversion_id.clone(),
        }
    }

    fn is_final(&self) -> bool {
        self.status != QuoteStatus::Issued
    }
}

/// A conversion as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    pub quote_id: String,
    pub status: ConversionStatus,
    pub version: u32,
    pub account: String,
    pub destination: String,
    pub amounts: Option<ConversionAmounts>,
    pub mid_e9: Option<i64>,
    pub rate_e9: Option<i64>,
    pub rounding: RoundingMode,
    pub booking_id: Option<String>,
    pub otc: bool,
    pub requested_by: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub cause: Uuid,
}

impl Conversion {
    fn record(&self, conversion_id: &str) -> ConversionRecorded {
        ConversionRecorded {
            conversion_id: conversion_id.to_owned(),
            quote_id: self.quote_id.clone(),
            status: self.status,
            version: self.version,
            account: self.account.clone(),
            destination: self.destination.clone(),
            amounts: self.amounts.clone(),
            mid_e9: self.mid_e9,
            rate_e9: self.rate_e9,
            rounding: self.rounding,
            booking_id: self.booking_id.clone(),
            otc: self.otc,
            requested_by: self.requested_by.clone(),
            decided_by: self.decided_by.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Per-partition state. Checkpoint keys: `r/{base}/{quote}` (rates), `q/{tenant}/{quote_id}`,
/// `c/{tenant}/{conversion_id}`, `s/{kind}/{tenant}/{id}` (remembered inputs and ids → their
/// sequence), `o/{sequence:020}` (remembered, in order), `seq`, timers `tm/expire/…`, `tm/forget_q/…`,
/// `tm/forget_c/…`.
#[derive(Debug, Clone, PartialEq)]
pub struct FxState {
    pub rates: Table<Rate>,
    pub quotes: Table<Quote>,
    pub conversions: Table<Conversion>,
    pub seen: Table<u64>,
    pub seen_order: Table<String>,
    pub seen_seq: Cell<u64>,
    pub timers: Timers,
}

impl FxState {
    pub fn new() -> Self {
        FxState {
            rates: Table::new("r"),
            quotes: Table::new("q"),
            conversions: Table::new("c"),
            seen: Table::new("s"),
            seen_order: Table::new("o"),
            seen_seq: Cell::new("seq"),
            timers: Timers::new("tm"),
        }
    }

    /// Remember `key`, forgetting the oldest past `max`.
    fn remember(&mut self, key: String, max: usize) {
        remember_bounded(&mut self.seen, &mut self.seen_order, &mut self.seen_seq, key, max);
    }
}

impl Default for FxState {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(
    FxState { rates, quotes, conversions, seen, seen_order, seen_seq },
    timers = timers
);

/// Key of a quote or conversion: `{tenant}/{id}` (ids hold no `/`).
pub fn entry_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// The booking id of a conversion.
pub fn booking_id(tenant: &str, conversion_id: &str) -> String {
    derived_id(&["fx-booking", tenant, conversion_id]).to_string()
}

fn pair_key(base: Currency, quote: Currency) -> String {
    format!("{base}/{quote}")
}

fn time_of(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn show_time(ms: i64) -> String {
    time_of(ms).map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A quote or conversion id: 1–128 of ASCII letters, digits, `_`, `-`, `.`, `:`.
fn check_id(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= FX_ID_BYTES_MAX
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!("{field} must be 1-{FX_ID_BYTES_MAX} of ASCII letters, digits, '_', '-', '.', ':'"))
    }
}

/// Text as the state and the events keep it: control characters become spaces, cut to
/// [`TEXT_BYTES_MAX`] at a character boundary.
fn clean_text(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(TEXT_BYTES_MAX));
    for c in v.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > TEXT_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// A tenant account a conversion names: present, at most [`TEXT_BYTES_MAX`] bytes, no control
/// characters, not a platform account.
fn check_account(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > TEXT_BYTES_MAX || v.chars().any(char::is_control) {
        return Err(format!(
            "invalid_account: {field} must be 1-{TEXT_BYTES_MAX} bytes without control characters"
        ));
    }
    if is_platform_account(v) {
        return Err(format!("invalid_account: {field} {v} is a platform account"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The arithmetic (pure, no floats)
// ---------------------------------------------------------------------------------------------------

/// A mid rate and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mid {
    /// Buy units per sell unit (major), × 10^9.
    pub mid_e9: i64,
    pub rates: Vec<RateUsed>,
    pub pivot: Option<Currency>,
    /// The oldest `as_of` among `rates` (ms).
    pub as_of_ms: i64,
}

/// `from`→`to` from one published rate: the pair itself, or its inverse.
fn leg(rates: &Table<Rate>, from: Currency, to: Currency, mode: RoundingMode) -> Option<(i64, RateUsed)> {
    let used = |base, quote, r: &Rate, inverted| RateUsed {
        base,
        quote,
        rate_e9: r.rate_e9,
        inverted,
        source: r.source.clone(),
        as_of: time_of(r.as_of_ms).unwrap_or_default(),
        version: r.version.clone(),
    };
    if let Some(r) = rates.get(&pair_key(from, to)).filter(|r| r.rate_e9 > 0) {
        return Some((r.rate_e9, used(from, to, r, false)));
    }
    let r = rates.get(&pair_key(to, from)).filter(|r| r.rate_e9 > 0)?;
    let inverse = div_round(E9 * E9, i128::from(r.rate_e9), mode)?;
    let inverse = i64::try_from(inverse).ok().filter(|v| *v > 0)?;
    Some((inverse, used(to, from, r, true)))
}

/// The mid rate for selling `sell` to buy `buy`: direct, inverse, else a cross through `pivot` (each
/// leg direct or inverse), in that order. `None`: no way to price the pair (or a cross that rounds to
/// nothing or overflows).
pub fn find_mid(
    rates: &Table<Rate>,
    sell: Currency,
    buy: Currency,
    pivot: Currency,
    mode: RoundingMode,
) -> Option<Mid> {
    let as_of = |r: &RateUsed| r.as_of.timestamp_millis();
    if let Some((mid_e9, r)) = leg(rates, sell, buy, mode) {
        let as_of_ms = as_of(&r);
        return Some(Mid { mid_e9, rates: vec![r], pivot: None, as_of_ms });
    }
    if sell == pivot || buy == pivot {
        return None;
    }
    let (a, ra) = leg(rates, sell, pivot, mode)?;
    let (b, rb) = leg(rates, pivot, buy, mode)?;
    let mid = div_round(i128::from(a).checked_mul(i128::from(b))?, E9, mode)?;
    let mid_e9 = i64::try_from(mid).ok().filter(|v| *v > 0)?;
    let as_of_ms = as_of(&ra).min(as_of(&rb));
    Some(Mid { mid_e9, rates: vec![ra, rb], pivot: Some(pivot), as_of_ms })
}

/// The customer's rate: `mid × (10,000 − markup) / 10,000`, rounded to 10^-9 with `mode`. `None`: a
/// markup of 10,000 bps or more, or a rate that rounds to nothing.
pub fn customer_rate_e9(mid_e9: i64, markup_bps: u32, mode: RoundingMode) -> Option<i64> {
    let keep = BPS_ONE.checked_sub(i128::from(markup_bps)).filter(|k| *k > 0)?;
    let rate = div_round(i128::from(mid_e9).checked_mul(keep)?, BPS_ONE, mode)?;
    i64::try_from(rate).ok().filter(|r| *r > 0)
}

/// The decimal scale of exact values of `sell` converted: they are numerators over
/// `10^(precision(sell) + 9)`, in minor units of the buy currency.
pub fn exact_scale(sell: Currency) -> u32 {
    u32::from(sell.precision()) + 9
}

/// `amount` (minor units of `sell`) at `rate_e9`, exactly, in minor units of `buy`, as a numerator
/// over `10^exact_scale(sell)`. `None` on overflow.
pub fn value_num(amount: i64, rate_e9: i64, buy: Currency) -> Option<i128> {
    i128::from(amount).checked_mul(i128::from(rate_e9))?.checked_mul(pow10(u32::from(buy.precision()))?)
}

/// `amount` of `sell` at `rate_e9`, rounded once to a minor unit of `buy`.
pub fn convert(amount: i64, rate_e9: i64, sell: Currency, buy: Currency, mode: RoundingMode) -> Option<i128> {
    div_round(value_num(amount, rate_e9, buy)?, pow10(exact_scale(sell))?, mode)
}

/// The amount of `sell` (minor units) that buys `buy_minor` of `buy` at `rate_e9`, rounded once.
pub fn sell_for(
    buy_minor: i64,
    rate_e9: i64,
    sell: Currency,
    buy: Currency,
    mode: RoundingMode,
) -> Option<i128> {
    let num = i128::from(buy_minor).checked_mul(pow10(exact_scale(sell))?)?;
    let den = i128::from(rate_e9).checked_mul(pow10(u32::from(buy.precision()))?)?;
    div_round(num, den, mode)
}

/// What rounding made of a conversion selling `sell` for `buy` (both from the quote) at `mid_e9` and
/// the customer's `rate_e9`: M = round(M*), F = round(F*), R = M − B − F, with M* = S × mid,
/// B* = S × rate, F* = M* − B* exact. B is the quote's (rounded from B* when the sell side was fixed,
/// the fixed amount otherwise), so R = (M − M*) − (B − B*) − (F − F*) exactly.
pub fn conversion_amounts(
    sell: Money,
    buy: Money,
    mid_e9: i64,
    rate_e9: i64,
    mode: RoundingMode,
) -> Result<ConversionAmounts, String> {
    let too_large =
        || format!("amount_too_large: selling {} {} overflows", sell.to_major_string(), sell.currency);
    let (s, b) = (sell.currency, buy.currency);
    let den = pow10(exact_scale(s)).ok_or_else(too_large)?;
    let m_exact = value_num(sell.amount_minor, mid_e9, b).ok_or_else(too_large)?;
    let b_exact = value_num(sell.amount_minor, rate_e9, b).ok_or_else(too_large)?;
    let f_exact = m_exact.checked_sub(b_exact).ok_or_else(too_large)?;
    let m = div_round(m_exact, den, mode).ok_or_else(too_large)?;
    let f = div_round(f_exact, den, mode).ok_or_else(too_large)?;
    let r =
        m.checked_sub(i128::from(buy.amount_minor)).and_then(|x| x.checked_sub(f)).ok_or_else(too_large)?;
    let minor =
        |v: i128| i64::try_from(v).ok().filter(|v| v.unsigned_abs() <= AMOUNT_MINOR_MAX.unsigned_abs());
    let (Some(m), Some(f), Some(r)) = (minor(m), minor(f), minor(r)) else { return Err(too_large()) };
    Ok(ConversionAmounts {
        sell,
        buy,
        mid_value: Money::new(m, b),
        fee: Money::new(f, b),
        residue: Money::new(r, b),
        mid_value_exact: exact_decimal(m_exact, exact_scale(s)),
        buy_exact: exact_decimal(b_exact, exact_scale(s)),
        fee_exact: exact_decimal(f_exact, exact_scale(s)),
    })
}

/// The booking's legs: sell currency `account` −S, `fx:desk` +S; buy currency `fx:desk` −M,
/// `destination` +B, `fx:fees` +F, `fx:residue` +R. Zero legs are left out (the ledger refuses them).
pub fn booking_legs(a: &ConversionAmounts, account: &str, destination: &str) -> Vec<BookingLeg> {
    let leg = |account: &str, amount_minor: i64, currency| BookingLeg {
        account: account.to_owned(),
        amount: Money::new(amount_minor, currency),
    };
    let (s, b) = (a.sell.currency, a.buy.currency);
    let neg = |v: i64| v.checked_neg().unwrap_or(i64::MAX);
    let legs = [
        leg(account, neg(a.sell.amount_minor), s),
        leg(FX_DESK_ACCOUNT, a.sell.amount_minor, s),
        leg(FX_DESK_ACCOUNT, neg(a.mid_value.amount_minor), b),
        leg(destination, a.buy.amount_minor, b),
        leg(FX_FEES_ACCOUNT, a.fee.amount_minor, b),
        leg(FX_RESIDUE_ACCOUNT, a.residue.amount_minor, b),
    ];
    legs.into_iter().filter(|l| l.amount.amount_minor != 0).collect()
}

// ---------------------------------------------------------------------------------------------------
// The processor
// ---------------------------------------------------------------------------------------------------

use riverbank_schemas::processor::decode_v1 as decode;

/// Outputs of one input, in order, with ids derived from the input's id and position.
struct Out<'a> {
    topics: &'a Topics,
    input: &'a RawEnvelope,
    env: Environment,
    emits: Vec<Emit>,
}

impl Out<'_> {
    fn push<P: Serialize>(&mut self, topic: String, event_type: &str, payload: P) {
        let e = derived_emit("fx", self.input, self.emits.len(), topic, event_type, payload);
        self.emits.push(e);
    }

    fn reject(&mut self, quote_id: Option<&str>, conversion_id: Option<&str>, reason: impl Into<String>) {
        let r = FxInputRejected {
            input_event_id: self.input.event_id,
            input_event_type: self.input.event_type.clone(),
            quote_id: quote_id.map(str::to_owned),
            conversion_id: conversion_id.map(str::to_owned),
            reason: reason.into(),
        };
        self.push(self.topics.fx_events(self.env), FxInputRejected::EVENT_TYPE, r);
    }

    fn quote(&mut self, id: &str, q: &Quote) {
        self.push(self.topics.fx_events(self.env), QuoteRecorded::EVENT_TYPE, q.record(id));
    }

    fn conversion(&mut self, id: &str, c: &Conversion) {
        self.push(self.topics.fx_events(self.env), ConversionRecorded::EVENT_TYPE, c.record(id));
    }
}

impl Processor for FxProcessor {
    type State = FxState;

    fn name(&self) -> &'static str {
        "fx"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            log: topics.log(env, "fx"),
            routed: vec![topics.fx_commands(env), topics.ledger_bookings(env), topics.ingest_webhooks(env)],
            broadcast: vec![topics.fx_rates(env)],
            ticks: true,
            outputs: vec![
                Output::new(
                    topics.fx_events(env),
                    &[QuoteRecorded::EVENT_TYPE, ConversionRecorded::EVENT_TYPE, FxInputRejected::EVENT_TYPE],
                ),
                Output::new(topics.fx_rates(env), &[it::RATES_PUBLISHED]),
                Output::new(topics.transfer_inputs(env), &[BookingRequested::EVENT_TYPE]),
            ],
            stateful: true,
        }
    }

    fn apply(&self, state: &mut FxState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let mut out = Out { topics: &self.topics, input: &input, env: at.environment, emits: Vec::new() };
        let result = match input.event_type.as_str() {
            it::RATES_PUBLISHED => decode(&input).map(|p| self.rates_published(state, at, &mut out, p)),
            WebhookReceived::EVENT_TYPE => decode(&input).map(|w| self.webhook(state, &mut out, w)),
            it::QUOTE_REQUESTED => decode(&input).map(|q| self.quote(state, at, &mut out, q)),
            it::CONVERSION_REQUESTED => decode(&input).map(|c| self.conversion(state, at, &mut out, c)),
            it::CONVERSION_DECIDED => decode(&input).map(|d| self.decided(state, at, &mut out, d)),
            BookingRecorded::EVENT_TYPE => decode(&input).map(|b| self.booking(state, at, &mut out, b)),
            other => Err(format!("fx has no rule for {other}")),
        };
        match result {
            Ok(()) => Verdict::Emit(out.emits),
            Err(reason) => Verdict::Poison(reason),
        }
    }

    fn on_timer(&self, state: &mut FxState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        Verdict::Emit(self.timer(state, at, &timer))
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(&self.settings, env)
    }
}

impl FxProcessor {
    /// Whether this input is new (and remember it); `false` for an input applied before.
    fn first_time(&self, state: &mut FxState, key: String) -> bool {
        if state.seen.contains_key(&key) {
            return false;
        }
        state.remember(key, self.settings.remembered_max());
        true
    }

    fn input_key(input: &RawEnvelope) -> String {
        format!("e/{}/{}", input.tenant_id, input.event_id)
    }

    fn capacity_left(&self, state: &FxState) -> bool {
        state.quotes.len().saturating_add(state.conversions.len()) < self.settings.entries_max
    }

    fn forget_later(&self, state: &mut FxState, kind: &str, key: &str, now_ms: i64) {
        let due = now_ms.saturating_add(self.settings.final_retention_ms.max(0));
        state.timers.schedule(&format!("{kind}/{key}"), due, "");
    }

    /// Apply a publication: per pair, only a rate newer than the one held.
    fn rates_published(
        &self,
        state: &mut FxState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        p: FxRatesPublished,
    ) {
        let version = out.input.event_id.to_string();
        let source = clean_text(&p.published_by);
        let as_of_ms = p.as_of.timestamp_millis();
        let mut problems = Vec::new();
        if at.now_ms > 0 && as_of_ms > at.now_ms.saturating_add(RATE_AHEAD_MAX_MS) {
            problems.push(format!(
                "as_of {} is more than {RATE_AHEAD_MAX_MS} ms ahead of the clock ({})",
                show_time(as_of_ms),
                show_time(at.now_ms)
            ));
        } else {
            for r in &p.rates {
                if r.base == r.quote || r.rate_e9 <= 0 {
                    problems.push(format!("{}/{} rate_e9 {} is not a rate", r.base, r.quote, r.rate_e9));
                    continue;
                }
                let key = pair_key(r.base, r.quote);
                if state.rates.get(&key).is_some_and(|held| held.as_of_ms >= as_of_ms) {
                    continue; // not newer than the rate held (or this very publication again)
                }
                let rate =
                    Rate { rate_e9: r.rate_e9, as_of_ms, source: source.clone(), version: version.clone() };
                state.rates.insert(key, rate);
            }
        }
        if !problems.is_empty() {
            out.reject(None, None, format!("invalid_rate: not applied: {}", problems.join("; ")));
        }
    }

    /// A rates provider's webhook: republished as `fx.rates_published` on `fx.rates`, never applied here.
    fn webhook(&self, state: &mut FxState, out: &mut Out<'_>, w: WebhookReceived) {
        if w.event_type.as_deref() != Some(RATES_WEBHOOK_TYPE) {
            return; // other providers' deliveries are not FX inputs
        }
        let seen = derived_id(&["fx-webhook", &w.provider, &w.provider_event_id]);
        if !self.first_time(state, format!("w/{}/{seen}", out.input.tenant_id)) {
            return;
        }
        let field = |name: &str| {
            w.fields.get(name).map(String::as_str).ok_or_else(|| format!("field '{name}' is missing"))
        };
        let parsed = (|| {
            let currency = |name: &str| {
                let v = field(name)?;
                Currency::from_code(v).map_err(|_| format!("field '{name}' is not a known currency"))
            };
            let (base, quote) = (currency(rate_fields::BASE)?, currency(rate_fields::QUOTE)?);
            if base == quote {
                return Err(format!("base and quote are both {base}"));
            }
            let rate_e9 = parse_rate_e9(field(rate_fields::RATE)?)
                .ok_or_else(|| "field 'rate' is not a positive decimal with at most 9 places".to_owned())?;
            let as_of = DateTime::parse_from_rfc3339(field(rate_fields::AS_OF)?)
                .map_err(|_| "field 'as_of' is not an RFC 3339 time".to_owned())?
                .with_timezone(&Utc);
            Ok((FxRate { base, quote, rate_e9 }, as_of))
        })();
        match parsed {
            Ok((rate, as_of)) => {
                let provider = clean_text(&w.provider);
                let p = FxRatesPublished {
                    as_of,
                    rates: vec![rate],
                    published_by: format!("provider:{provider}"),
                };
                out.push(out.topics.fx_rates(out.env), it::RATES_PUBLISHED, p);
            }
            Err(why) => {
                let (provider, event) = (clean_text(&w.provider), clean_text(&w.provider_event_id));
                out.reject(None, None, format!("invalid_rate: {provider} delivery {event}: {why}"));
            }
        }
    }

    fn quote(&self, state: &mut FxState, at: &InputRef<'_>, out: &mut Out<'_>, q: FxQuoteRequested) {
        if !self.first_time(state, Self::input_key(out.input)) {
            return;
        }
        let tenant = out.input.tenant_id.clone();
        if let Err(why) = check_id("quote_id", &q.quote_id) {
            out.reject(None, None, format!("invalid_request: {why}"));
            return;
        }
        let id = q.quote_id.as_str();
        let key = entry_key(&tenant, id);
        let id_key = format!("q/{key}");
        if state.quotes.contains_key(&key) || state.seen.contains_key(&id_key) {
            out.reject(Some(id), None, format!("duplicate_id: quote id {id} is already used"));
            return;
        }
        let fixed = match fixed_amount(&q) {
            Ok(f) => f,
            Err(why) => {
                out.reject(Some(id), None, format!("invalid_request: {why}"));
                return;
            }
        };
        if !self.capacity_left(state) {
            let max = self.settings.entries_max;
            out.reject(
                Some(id),
                None,
                format!("capacity: {max} quotes and conversions are kept per partition at most"),
            );
            return;
        }
        let mode = self.settings.rounding;
        let mut quote = Quote {
            status: QuoteStatus::Refused,
            version: 1,
            sell_currency: q.sell_currency,
            buy_currency: q.buy_currency,
            sell: q.sell_amount,
            buy: q.buy_amount,
            fixed_sell: q.sell_amount.is_some(),
            mid_e9: None,
            rate_e9: None,
            markup_bps: self.settings.markup_bps(&tenant),
            rates: Vec::new(),
            pivot: None,
            rate_as_of_ms: None,
            expires_at_ms: None,
            rounding: mode,
            requested_by: clean_text(&q.requested_by),
            reason: None,
            conversion_id: None,
            held_by: None,
            cause: out.input.event_id,
        };
        match self.price(state, at.now_ms, &mut quote, fixed) {
            Ok(expires_at_ms) => {
                quote.status = QuoteStatus::Issued;
                quote.expires_at_ms = Some(expires_at_ms);
                state.timers.schedule(&format!("expire/{key}"), expires_at_ms, "");
            }
            Err(reason) => {
                quote.reason = Some(reason);
                self.forget_later(state, "forget_q", &key, at.now_ms);
            }
        }
        state.remember(id_key, self.settings.remembered_max());
        out.quote(id, &quote);
        state.quotes.insert(key, quote);
    }

    /// Price a quote: fill in its mid, rate, rates and the computed amount. `Ok(expires_at_ms)`, or
    /// the refusal's reason.
    fn price(&self, state: &FxState, now_ms: i64, quote: &mut Quote, fixed: Money) -> Result<i64, String> {
        let (sell, buy) = (quote.sell_currency, quote.buy_currency);
        let mode = quote.rounding;
        if now_ms <= 0 || now_ms > CLOCK_MS_MAX {
            return Err("no_clock: the partition clock has no usable time yet (no tick); ask again".into());
        }
        let pivot = self.settings.pivot;
        let mid = find_mid(&state.rates, sell, buy, pivot, mode).ok_or_else(|| {
            format!("unknown_pair: no rate for {sell}/{buy}, its inverse, or a cross through {pivot}")
        })?;
        quote.mid_e9 = Some(mid.mid_e9);
        quote.rates = mid.rates.clone();
        quote.pivot = mid.pivot;
        quote.rate_as_of_ms = Some(mid.as_of_ms);
        let age_max = self.settings.rate_age_max_ms;
        if now_ms.saturating_sub(mid.as_of_ms) > age_max {
            return Err(format!(
                "stale_rate: the {sell}/{buy} rate is from {}, more than {age_max} ms before the clock ({})",
                show_time(mid.as_of_ms),
                show_time(now_ms)
            ));
        }
        let rate_e9 = customer_rate_e9(mid.mid_e9, quote.markup_bps, mode).ok_or_else(|| {
            format!(
                "rate_too_small: {sell}/{buy} after a markup of {} bps rounds to nothing",
                quote.markup_bps
            )
        })?;
        quote.rate_e9 = Some(rate_e9);
        let too_large = || {
            format!("amount_too_large: {} {} overflows at this rate", fixed.to_major_string(), fixed.currency)
        };
        let other = if quote.fixed_sell {
            convert(fixed.amount_minor, rate_e9, sell, buy, mode)
        } else {
            sell_for(fixed.amount_minor, rate_e9, sell, buy, mode)
        }
        .ok_or_else(too_large)?;
        let other_currency = if quote.fixed_sell { buy } else { sell };
        if other <= 0 {
            return Err(format!(
                "amount_too_small: {} {} is less than one minor unit of {other_currency} at this rate",
                fixed.to_major_string(),
                fixed.currency
            ));
        }
        let other = i64::try_from(other).ok().filter(|v| *v <= AMOUNT_MINOR_MAX).ok_or_else(too_large)?;
        let other = Money::new(other, other_currency);
        if quote.fixed_sell {
            quote.buy = Some(other);
        } else {
            quote.sell = Some(other);
        }
        let (s, b) = (quote.sell.unwrap_or(other), quote.buy.unwrap_or(other));
        // The conversion's amounts must be computable too: refuse now rather than at execution.
        conversion_amounts(s, b, mid.mid_e9, rate_e9, mode)?;
        now_ms
            .checked_add(self.settings.quote_ttl_ms.max(0))
            .ok_or_else(|| "no_clock: the clock is out of range".to_owned())
    }

    fn conversion(
        &self,
        state: &mut FxState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        c: FxConversionRequested,
    ) {
        if !self.first_time(state, Self::input_key(out.input)) {
            return;
        }
        let tenant = out.input.tenant_id.clone();
        let ids =
            check_id("conversion_id", &c.conversion_id).and_then(|()| check_id("quote_id", &c.quote_id));
        if let Err(why) = ids {
            out.reject(None, None, format!("invalid_request: {why}"));
            return;
        }
        let id = c.conversion_id.as_str();
        let key = entry_key(&tenant, id);
        let id_key = format!("c/{key}");
        if state.conversions.contains_key(&key) || state.seen.contains_key(&id_key) {
            out.reject(
                Some(&c.quote_id),
                Some(id),
                format!("duplicate_id: conversion id {id} is already used"),
            );
            return;
        }
        if !self.capacity_left(state) {
            let max = self.settings.entries_max;
            out.reject(
                Some(&c.quote_id),
                Some(id),
                format!("capacity: {max} quotes and conversions are kept per partition at most"),
            );
            return;
        }
        state.remember(id_key, self.settings.remembered_max());
        let destination = c.destination_account.clone().unwrap_or_else(|| c.source_account.clone());
        let qkey = entry_key(&tenant, &c.quote_id);
        let quote = state.quotes.get(&qkey);
        let mut conv = Conversion {
            quote_id: c.quote_id.clone(),
            status: ConversionStatus::Rejected,
            version: 1,
            account: clean_text(&c.source_account),
            destination: clean_text(&destination),
            amounts: None,
            mid_e9: quote.and_then(|q| q.mid_e9),
            rate_e9: quote.and_then(|q| q.rate_e9),
            rounding: quote.map_or(self.settings.rounding, |q| q.rounding),
            booking_id: None,
            otc: false,
            requested_by: clean_text(&c.requested_by),
            decided_by: None,
            reason: None,
            cause: out.input.event_id,
        };
        let checked = check_account("source_account", &c.source_account)
            .and_then(|()| check_account("destination_account", &destination))
            .and_then(|()| self.usable(quote, &c.quote_id, at.now_ms, None));
        let sell = match checked {
            Ok(sell) => sell,
            Err(reason) => {
                conv.reason = Some(reason);
                self.finish_conversion(state, out, at.now_ms, &key, conv);
                return;
            }
        };
        if self
            .settings
            .otc_threshold(&tenant, sell.currency)
            .is_some_and(|t| sell.amount_minor > t.amount_minor)
        {
            conv.otc = true;
            conv.status = ConversionStatus::PendingApproval;
            if let Some(q) = state.quotes.get_mut(&qkey) {
                q.held_by = Some(id.to_owned());
            }
            out.conversion(id, &conv);
            state.conversions.insert(key, conv);
            return;
        }
        self.execute(state, out, at.now_ms, &tenant, id, conv);
    }

    /// Whether `quote` can be executed now (by `holder`, a pending conversion holding it): its sold
    /// amount, or the reason it cannot.
    fn usable(
        &self,
        quote: Option<&Quote>,
        quote_id: &str,
        now_ms: i64,
        holder: Option<&str>,
    ) -> Result<Money, String> {
        let Some(q) = quote else {
            return Err(format!("unknown_quote: no quote {quote_id} of this tenant"));
        };
        match q.status {
            QuoteStatus::Refused => return Err(format!("quote_refused: quote {quote_id} was refused")),
            QuoteStatus::Used => {
                let by = q.conversion_id.as_deref().unwrap_or("another conversion");
                return Err(format!("quote_used: quote {quote_id} was used by {by}"));
            }
            QuoteStatus::Expired => {
                let at = q.expires_at_ms.map_or_else(String::new, |e| format!(" at {}", show_time(e)));
                return Err(format!("quote_expired: quote {quote_id} expired{at}"));
            }
            QuoteStatus::Issued => {}
        }
        if let Some(h) = q.held_by.as_deref().filter(|h| Some(*h) != holder) {
            return Err(format!(
                "quote_used: quote {quote_id} is held by conversion {h}, waiting for approval"
            ));
        }
        let expires = q.expires_at_ms.unwrap_or(i64::MIN);
        if now_ms >= expires {
            return Err(format!("quote_expired: quote {quote_id} expired at {}", show_time(expires)));
        }
        let as_of = q.rate_as_of_ms.unwrap_or(i64::MIN);
        let age_max = self.settings.rate_age_max_ms;
        if now_ms.saturating_sub(as_of) > age_max {
            return Err(format!(
                "stale_rate: quote {quote_id} rests on a rate from {}, more than {age_max} ms before the clock ({})",
                show_time(as_of),
                show_time(now_ms)
            ));
        }
        q.sell.ok_or_else(|| format!("quote_refused: quote {quote_id} has no amounts"))
    }

    /// Execute a conversion whose quote is usable: the quote is used, the booking requested.
    fn execute(
        &self,
        state: &mut FxState,
        out: &mut Out<'_>,
        now_ms: i64,
        tenant: &str,
        id: &str,
        mut conv: Conversion,
    ) {
        let key = entry_key(tenant, id);
        let qkey = entry_key(tenant, &conv.quote_id);
        let Some(mut quote) = state.quotes.get(&qkey).cloned() else {
            conv.reason = Some(format!("unknown_quote: no quote {} of this tenant", conv.quote_id));
            self.finish_conversion(state, out, now_ms, &key, conv);
            return;
        };
        let amounts = match (quote.sell, quote.buy, quote.mid_e9, quote.rate_e9) {
            (Some(s), Some(b), Some(mid), Some(rate)) => conversion_amounts(s, b, mid, rate, quote.rounding),
            _ => Err(format!("quote_refused: quote {} has no amounts", conv.quote_id)),
        };
        let amounts = match amounts {
            Ok(a) => a,
            Err(reason) => {
                conv.reason = Some(reason);
                self.finish_conversion(state, out, now_ms, &key, conv);
                return;
            }
        };
        let legs = booking_legs(&amounts, &conv.account, &conv.destination);
        // Asserted where produced: every currency sums to zero (R = M − B − F makes it so).
        if let Some(c) = unbalanced_currency(&legs) {
            debug_assert!(false, "conversion legs do not balance in {c}: {legs:?}");
            conv.reason = Some(format!("internal: the legs do not sum to zero in {c}; nothing booked"));
            self.finish_conversion(state, out, now_ms, &key, conv);
            return;
        }
        let booking = booking_id(tenant, id);
        conv.status = ConversionStatus::Booking;
        conv.amounts = Some(amounts);
        conv.mid_e9 = quote.mid_e9;
        conv.rate_e9 = quote.rate_e9;
        conv.rounding = quote.rounding;
        conv.booking_id = Some(booking.clone());
        quote.status = QuoteStatus::Used;
        quote.version = quote.version.saturating_add(1);
        quote.conversion_id = Some(id.to_owned());
        quote.held_by = None;
        state.timers.cancel(&format!("expire/{qkey}"));
        self.forget_later(state, "forget_q", &qkey, now_ms);
        out.conversion(id, &conv);
        out.quote(&conv.quote_id, &quote);
        let request = BookingRequested {
            booking_id: booking,
            purpose: BookingPurpose::FxConversion,
            reference: id.to_owned(),
            legs,
            requested_by: format!("{SOURCE}:{}", conv.requested_by),
        };
        out.push(out.topics.transfer_inputs(out.env), BookingRequested::EVENT_TYPE, request);
        state.quotes.insert(qkey, quote);
        state.conversions.insert(key, conv);
    }

    /// Store a conversion that became final (completed or rejected), emit it, and forget it later.
    fn finish_conversion(
        &self,
        state: &mut FxState,
        out: &mut Out<'_>,
        now_ms: i64,
        key: &str,
        conv: Conversion,
    ) {
        let id = key.rsplit_once('/').map_or(key, |(_, id)| id);
        out.conversion(id, &conv);
        self.forget_later(state, "forget_c", key, now_ms);
        state.conversions.insert(key.to_owned(), conv);
    }

    /// Release the quote a pending conversion held.
    fn release(state: &mut FxState, tenant: &str, conv: &Conversion, id: &str) {
        let qkey = entry_key(tenant, &conv.quote_id);
        if state.quotes.get(&qkey).is_some_and(|q| q.held_by.as_deref() == Some(id)) {
            if let Some(q) = state.quotes.get_mut(&qkey) {
                q.held_by = None;
            }
        }
    }

    /// An OTC approval or rejection.
    fn decided(&self, state: &mut FxState, at: &InputRef<'_>, out: &mut Out<'_>, d: FxConversionDecided) {
        if !self.first_time(state, Self::input_key(out.input)) {
            return;
        }
        let tenant = out.input.tenant_id.clone();
        let id = d.conversion_id.as_str();
        if let Err(why) = check_id("conversion_id", id) {
            out.reject(None, None, format!("invalid_request: {why}"));
            return;
        }
        let key = entry_key(&tenant, id);
        let Some(conv) = state.conversions.get(&key).cloned() else {
            out.reject(None, Some(id), format!("unknown_conversion: no conversion {id} of this tenant"));
            return;
        };
        let quote_id = conv.quote_id.clone();
        if conv.status != ConversionStatus::PendingApproval {
            let why = format!(
                "not_pending: conversion {id} is {}, not waiting for an approval",
                conv.status.as_str()
            );
            out.reject(Some(&quote_id), Some(id), why);
            return;
        }
        if clean_text(&d.actor) == conv.requested_by {
            let why = "self_approval: the approver must not be the requester (maker-checker)";
            out.reject(Some(&quote_id), Some(id), why);
            return;
        }
        let mut conv = conv;
        conv.version = conv.version.saturating_add(1);
        conv.decided_by = Some(clean_text(&d.actor));
        match d.decision {
            ReviewDecision::Rejected => {
                let why = d.reason.as_deref().map_or_else(String::new, |r| format!(": {}", clean_text(r)));
                conv.status = ConversionStatus::Rejected;
                conv.reason = Some(format!("otc_rejected: rejected by {}{why}", clean_text(&d.actor)));
                Self::release(state, &tenant, &conv, id);
                self.finish_conversion(state, out, at.now_ms, &key, conv);
            }
            ReviewDecision::Approved => {
                let quote = state.quotes.get(&entry_key(&tenant, &quote_id));
                match self.usable(quote, &quote_id, at.now_ms, Some(id)) {
                    Ok(_) => self.execute(state, out, at.now_ms, &tenant, id, conv),
                    Err(reason) => {
                        conv.status = ConversionStatus::Rejected;
                        conv.reason = Some(reason);
                        Self::release(state, &tenant, &conv, id);
                        self.finish_conversion(state, out, at.now_ms, &key, conv);
                    }
                }
            }
        }
    }

    /// The ledger's answer to a conversion's booking.
    fn booking(&self, state: &mut FxState, at: &InputRef<'_>, out: &mut Out<'_>, b: BookingRecorded) {
        if b.purpose != BookingPurpose::FxConversion {
            return; // billing's answers share the topic
        }
        if !self.first_time(state, Self::input_key(out.input)) {
            return;
        }
        let tenant = out.input.tenant_id.clone();
        let id = b.reference.as_str();
        let key = entry_key(&tenant, id);
        let conv =
            state.conversions.get(&key).filter(|c| c.booking_id.as_deref() == Some(b.booking_id.as_str()));
        let Some(conv) = conv.cloned() else {
            let why =
                format!("unknown_booking: no conversion {id} of this tenant awaits booking {}", b.booking_id);
            out.reject(None, Some(id), why);
            return;
        };
        if conv.status != ConversionStatus::Booking {
            let why = format!("booking_answered: conversion {id} is already {}", conv.status.as_str());
            out.reject(Some(&conv.quote_id), Some(id), why);
            return;
        }
        let mut conv = conv;
        conv.version = conv.version.saturating_add(1);
        match b.outcome {
            BookingOutcome::Booked => conv.status = ConversionStatus::Completed,
            BookingOutcome::Refused => {
                conv.status = ConversionStatus::Rejected;
                conv.reason = Some(match b.reason.as_deref() {
                    Some(r) if !r.trim().is_empty() => clean_text(r),
                    _ => "ledger_refused: the ledger refused the booking without a reason".to_owned(),
                });
            }
        }
        self.finish_conversion(state, out, at.now_ms, &key, conv);
    }

    /// A quote's expiry, or the end of a final entry's retention.
    fn timer(&self, state: &mut FxState, at: &InputRef<'_>, timer: &Timer) -> Vec<Emit> {
        let Some((kind, key)) = timer.key.split_once('/') else { return Vec::new() };
        match kind {
            "expire" => self.expire(state, at, key),
            "forget_q" => {
                if state.quotes.get(key).is_some_and(Quote::is_final) {
                    state.quotes.remove(key);
                }
                Vec::new()
            }
            "forget_c" => {
                if state.conversions.get(key).is_some_and(|c| c.status.is_final()) {
                    state.conversions.remove(key);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A quote's TTL passed: expired (unless used), and a conversion waiting on it rejected.
    fn expire(&self, state: &mut FxState, at: &InputRef<'_>, key: &str) -> Vec<Emit> {
        let Some((tenant, quote_id)) = key.rsplit_once('/') else { return Vec::new() };
        let Some(mut quote) = state.quotes.get(key).cloned() else { return Vec::new() };
        let expires = quote.expires_at_ms.unwrap_or(i64::MIN);
        if quote.status != QuoteStatus::Issued || at.now_ms < expires {
            return Vec::new();
        }
        let occurred = time_of(expires).unwrap_or_default();
        let ingested = time_of(at.now_ms).unwrap_or(occurred);
        let env = at.environment;
        let emit = |what: &str, cause: Uuid, event_type: &str, payload: serde_json::Value| {
            let event_id = derived_id(&["fx", what, &cause.to_string()]);
            let mut e = Envelope::new(event_id, event_type, tenant, env, occurred, SOURCE, payload);
            e.ingested_at = ingested;
            Emit {
                topic: self.topics.fx_events(env),
                key: tenant.to_owned(),
                event_id,
                payload: serde_json::to_vec(&e).unwrap_or_default(),
            }
        };
        let mut out = Vec::new();
        quote.status = QuoteStatus::Expired;
        quote.version = quote.version.saturating_add(1);
        let held_by = quote.held_by.take();
        let record = serde_json::to_value(quote.record(quote_id)).unwrap_or_default();
        out.push(emit("quote-expired", quote.cause, QuoteRecorded::EVENT_TYPE, record));
        if let Some(cid) = held_by {
            let ckey = entry_key(tenant, &cid);
            if let Some(mut conv) = state.conversions.get(&ckey).cloned() {
                if conv.status == ConversionStatus::PendingApproval {
                    conv.status = ConversionStatus::Rejected;
                    conv.version = conv.version.saturating_add(1);
                    conv.reason = Some(format!(
                        "quote_expired: quote {quote_id} expired at {} before conversion {cid} was approved",
                        show_time(expires)
                    ));
                    let record = serde_json::to_value(conv.record(&cid)).unwrap_or_default();
                    out.push(emit("conversion-expired", conv.cause, ConversionRecorded::EVENT_TYPE, record));
                    state.conversions.insert(ckey.clone(), conv);
                    self.forget_later(state, "forget_c", &ckey, at.now_ms);
                }
            }
        }
        state.quotes.insert(key.to_owned(), quote);
        self.forget_later(state, "forget_q", key, at.now_ms);
        out
    }
}

/// The fixed amount of a quote request: exactly one of sell or buy, in its own currency, positive and
/// at most [`AMOUNT_MINOR_MAX`]; the currencies distinct.
fn fixed_amount(q: &FxQuoteRequested) -> Result<Money, String> {
    if q.sell_currency == q.buy_currency {
        return Err(format!("sell_currency and buy_currency are both {}", q.sell_currency));
    }
    let (fixed, field, currency) = match (q.sell_amount, q.buy_amount) {
        (Some(s), None) => (s, "sell_amount", q.sell_currency),
        (None, Some(b)) => (b, "buy_amount", q.buy_currency),
        _ => return Err("give exactly one of sell_amount or buy_amount".into()),
    };
    if fixed.currency != currency {
        return Err(format!("{field} is in {}, not {currency}", fixed.currency));
    }
    if fixed.amount_minor <= 0 || fixed.amount_minor > AMOUNT_MINOR_MAX {
        return Err(format!("{field} must be 1-{AMOUNT_MINOR_MAX} minor units"));
    }
    Ok(fixed)
}

/// Inputs for the conformance suite: a realistic day. Rates (EUR/USD direct, USD/JPY to quote
/// JPY→USD by inverse and EUR→JPY through the pivot, a GBP/USD that goes stale), a ratewire webhook and a
/// delivery that is no rate, quotes fixed sell and fixed buy (and refused: unknown pair, stale rate, no
/// clock), conversions (executed, expired quote, stale rate, unknown quote, OTC pending then approved,
/// OTC self-approval refused, OTC rejected), booking answers (booked, refused for funds, billing's,
/// unknown), a quote id reused, and payloads that do not decode or have no rule. Times follow the
/// settings so each case holds whatever the TTL and rate age.
pub fn examples(settings: &FxSettings, env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let t0 = DateTime::<Utc>::from_timestamp(1_795_330_000, 0).unwrap_or_default();
    let ttl_s = settings.quote_ttl_ms.max(1000) / 1000;
    let age_s = settings.rate_age_max_ms.max(1000) / 1000;
    let time =
        |s: i64| (t0 + chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let rates = |as_of_s: i64, rates: serde_json::Value| {
        (it::RATES_PUBLISHED, json!({"as_of": time(as_of_s), "rates": rates, "published_by": "rates-desk"}))
    };
    let rate = |b: &str, q: &str, e9: i64| json!({"base": b, "quote": q, "rate_e9": e9});
    let money = |minor: i64, c: &str| json!({"amount_minor": minor, "currency": c});
    let quote = |id: &str, sell: &str, buy: &str, fixed: serde_json::Value, fixed_sell: bool| {
        let mut p = json!({"quote_id": id, "sell_currency": sell, "buy_currency": buy, "requested_by": "user:trader-1"});
        p[if fixed_sell { "sell_amount" } else { "buy_amount" }] = fixed;
        (it::QUOTE_REQUESTED, p)
    };
    let convert = |id: &str, quote: &str, by: &str| {
        (
            it::CONVERSION_REQUESTED,
            json!({"conversion_id": id, "quote_id": quote, "source_account": "acct_treasury",
                   "destination_account": "acct_ops", "requested_by": by}),
        )
    };
    let decide = |id: &str, decision: &str, actor: &str| {
        (
            it::CONVERSION_DECIDED,
            json!({"conversion_id": id, "decision": decision, "actor": actor, "reason": "desk limit checked"}),
        )
    };
    let answer = |tenant: &str, conv: &str, outcome: &str, reason: Option<&str>, purpose: &str| {
        (
            BookingRecorded::EVENT_TYPE,
            json!({"booking_id": booking_id(tenant, conv), "purpose": purpose, "reference": conv,
                   "outcome": outcome, "reason": reason, "legs": []}),
        )
    };
    let webhook = |id: &str, event_type: &str, fields: &[(&str, &str)]| {
        let fields: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        (
            WebhookReceived::EVENT_TYPE,
            json!({"provider": "ratewire", "provider_event_id": id, "event_type": event_type,
                   "body_bytes": 180, "fields": fields, "body": null}),
        )
    };
    let (a, b) = ("tenant-a", "tenant-b");
    let t = ttl_s;
    // The GBP/USD case: published young enough to quote at `q`, stale by the conversion half a TTL later.
    let q = 60 + 2 * t;
    let gbp_as_of = q - age_s + t / 3;
    // (seconds after t0, tenant, input); the clock an input sees is the time of the one before it.
    let steps: Vec<(i64, &str, (&str, serde_json::Value))> = vec![
        // Before the first tick: no clock, so no quote.
        (0, a, quote("q-early", "EUR", "USD", money(10_000, "EUR"), true)),
        (
            1,
            "rates",
            rates(
                1,
                json!([
                    rate("EUR", "USD", 1_084_500_000),
                    rate("USD", "JPY", 151_230_000_000),
                    rate("BTC", "USD", 97_250_120_000_000)
                ]),
            ),
        ),
        // An older EUR/USD changes nothing.
        (2, "rates", rates(-600, json!([rate("EUR", "USD", 1_000_000_000)]))),
        (
            3,
            a,
            webhook(
                "rw_evt_1",
                RATES_WEBHOOK_TYPE,
                &[("base", "USD"), ("quote", "CHF"), ("rate", "0.884"), ("as_of", &time(3))],
            ),
        ),
        (
            4,
            a,
            webhook(
                "rw_evt_2",
                RATES_WEBHOOK_TYPE,
                &[("base", "USD"), ("quote", "USD"), ("rate", "1"), ("as_of", &time(4))],
            ),
        ),
        (5, a, webhook("evt_dep_1", "deposit.completed", &[("reference", "dep_1")])),
        // Fixed sell, direct: executed and booked.
        (10, a, quote("q-1", "EUR", "USD", money(100_000, "EUR"), true)),
        (12, a, convert("c-1", "q-1", "user:trader-1")),
        (13, a, answer(a, "c-1", "booked", None, "fx_conversion")),
        // Fixed buy, by the inverse of USD/JPY: the ledger refuses (funds); a second answer is refused.
        (20, a, quote("q-2", "JPY", "USD", money(50_000, "USD"), false)),
        (21, a, convert("c-2", "q-2", "user:trader-1")),
        (
            22,
            a,
            answer(
                a,
                "c-2",
                "refused",
                Some("insufficient_funds: acct_treasury holds less than 75616 JPY"),
                "fx_conversion",
            ),
        ),
        (23, a, answer(a, "c-2", "booked", None, "fx_conversion")),
        // Through the pivot (EUR→USD→JPY); the quote expires before its conversion.
        (30, a, quote("q-3", "EUR", "JPY", money(2_500_000, "JPY"), false)),
        // Unknown pair (its tick expires q-3); unknown quote; a quote id reused for another request.
        (30 + t, a, quote("q-4", "KWD", "BRL", money(1_000, "KWD"), true)),
        (31 + t, a, convert("c-3", "q-3", "user:trader-1")),
        (32 + t, a, convert("c-4", "q-none", "user:trader-1")),
        (33 + t, a, quote("q-1", "USD", "EUR", money(100, "USD"), true)),
        // OTC: selling 150,000 EUR needs a second person: self-approval refused, then approved.
        (40 + t, b, quote("q-otc", "EUR", "USD", money(15_000_000, "EUR"), true)),
        (41 + t, b, convert("c-otc", "q-otc", "user:trader-2")),
        (42 + t, b, decide("c-otc", "approved", "user:trader-2")),
        (43 + t, b, decide("c-otc", "approved", "user:checker-1")),
        (44 + t, b, answer(b, "c-otc", "booked", None, "fx_conversion")),
        (45 + t, b, decide("c-otc", "approved", "user:checker-1")),
        // OTC rejected by the checker; another left pending until its quote expires; a BTC quote.
        (50 + t, b, quote("q-otc2", "USD", "EUR", money(20_000_000, "USD"), true)),
        (51 + t, b, convert("c-otc2", "q-otc2", "user:trader-2")),
        (52 + t, b, decide("c-otc2", "rejected", "user:checker-1")),
        (53 + t, b, quote("q-otc3", "EUR", "USD", money(12_000_000, "EUR"), true)),
        (54 + t, b, convert("c-otc3", "q-otc3", "user:trader-2")),
        (55 + t, b, quote("q-btc", "BTC", "USD", money(50_000_000, "BTC"), true)),
        // A rate fresh at the quote and stale at the conversion.
        (q - 1, "rates", rates(gbp_as_of, json!([rate("GBP", "USD", 1_271_000_000)]))),
        (q, a, quote("q-gbp", "GBP", "USD", money(10_000, "GBP"), true)),
        (q + t / 2, b, answer(b, "c-none", "booked", None, "fx_conversion")),
        (q + t / 2 + 1, b, answer(b, "fee-1", "booked", None, "fee")),
        (q + t / 2 + 2, a, convert("c-5", "q-gbp", "user:trader-1")),
        (q + t / 2 + 3, a, quote("q-5", "GBP", "USD", money(10_000, "GBP"), true)),
        // Junk.
        (q + t / 2 + 10, a, (it::QUOTE_REQUESTED, json!({"quote_id": 7}))),
        (q + t / 2 + 11, a, ("fx.unheard_of", json!({}))),
    ];
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (secs, tenant, (event_type, payload)))| {
            let at = t0 + chrono::Duration::seconds(secs);
            let id = derived_id(&["fx-example", &i.to_string()]);
            let (tenant, source) = match (tenant, event_type) {
                ("rates", _) => ("tenant-rates", "api"),
                (t, WebhookReceived::EVENT_TYPE) => (t, "ratewire"),
                (t, BookingRecorded::EVENT_TYPE) => (t, "riverbank.transfers"),
                (t, _) => (t, "api"),
            };
            Envelope::new(id, event_type, tenant, env, at, source, payload)
        })
        .collect()
}

#[cfg(test)]
#[path = "fx_tests.rs"]
mod tests;
