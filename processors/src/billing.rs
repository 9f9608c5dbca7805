//! Billing: a fee for every completed transfer, booked through the ledger, and monthly invoices that
//! are a view over the fee legs booked (schemas/src/billing.rs states the contract).
//!
//! - **Inputs** (its router copies them into `{env}.billing.inputs`, keyed by tenant):
//!   `billing.fee_config_upserted` and `billing.plan_set` (`{env}.billing.commands`),
//!   `transfer.status_changed` (`{env}.transactions.update.status`) and the ledger's answers,
//!   `ledger.booking_recorded` (`{env}.ledger.bookings`; FX's answers are not billing's and emit
//!   nothing). Ticks move the partition clock (`InputRef::now_ms`), which closes periods.
//! - **Fee configs** per (tenant, transfer kind, currency) are versioned: a version takes effect at
//!   its `effective_from` (default: the command's time); of two versions with the same time the later
//!   upsert wins. A transfer is priced by the version in force at its completion time (the status
//!   event's `occurred_at`); a transfer completing before the first version pays nothing (`waived`).
//!   Validation refuses (with `billing.input_rejected` and the reason): fixed, min, max and tier
//!   thresholds in different currencies, a negative amount or one past `AMOUNT_MINOR_MAX`, min above
//!   max, bps above [`BPS_MAX`], tiers not strictly ascending, a tier from zero, more than
//!   [`FEE_TIERS_MAX`] tiers.
//! - **Fees.** Only a COMPLETED status yields a fee, once per transfer (remembered by transfer id);
//!   FAILED and CANCELLED yield none and every other status is not final: all of those emit nothing.
//!   Fee = fixed + Σ part × bps / 10,000. `V` is the month's volume of that (tenant, kind, currency)
//!   before the transfer (UTC calendar month of the completion time), `A` its amount:
//!   - no tiers: one part, all of `A` at the config's bps;
//!   - `volume`: the tier the month's volume *reaches*, `V + A`, prices all of `A`; a tier applies
//!     from its `monthly_volume_from` **inclusive** (`V + A` exactly at a threshold is in that tier);
//!   - `graduated`: `A` fills the volume range `[V, V + A)`; the slice inside `[from_i, from_i+1)` is
//!     priced at tier i's bps (the config's bps below the first tier), lower edge **inclusive**,
//!     upper edge exclusive, so a transfer ending exactly at a threshold has nothing in that tier.
//!
//!   The percentage part is rounded once to a minor unit (`billing.rounding`: half-even or half-up,
//!   see schemas/src/rounding.rs), added to fixed, then clamped to [min, max]. Zero (or no config) is
//!   `waived`: recorded, nothing booked.
//! - **Money: a saga.** A fee is a `ledger.booking_requested` to `transfers.inputs`:
//!   `billing:receivable` −fee, `billing:fees` +fee, booking id
//!   `derived_id(["billing-fee", tenant, transfer])`. `billing.fee_charged` says `booking` (version 1),
//!   then `booked` or `refused` with the ledger's reason (version 2). Only a `booked` answer whose
//!   legs are the ones requested counts on an invoice.
//! - **Plans** (`billing.plan_set`): per tenant, versioned like configs; a fee of zero ends a plan.
//!   The plan charged for a month is the one in force at the month's start, or else the first one
//!   starting within it; it is charged once per (tenant, month) when that month's invoice opens
//!   (booking id `derived_id(["billing-plan", tenant, period])`); booked, it is a `plan` line.
//! - **Invoices** per (tenant, month), `inv_{YYYY-MM}`: opened by the first charge counted on it, by a
//!   plan set for it, or (tenant with a plan) when the month before finalizes, so plan lines appear
//!   without activity. `draft` while open; a timer finalizes it at period end + `lateness_ms` on the
//!   partition clock, and it then leaves the state. A charge booked once its own month closed (closes_at
//!   ≤ the clock) is an `adjustment` line on the invoice of the clock's month, grouped per (source
//!   month, kind, currency) and naming up to [`ADJUSTMENT_SOURCES_NAMED_MAX`] transfers. Every input or
//!   timer that changes an invoice emits it whole (`billing.invoice_recorded`, version +1); one without
//!   lines is never emitted. Invoice totals per currency = Σ lines = Σ fee legs booked on it, checked
//!   before each emission: a difference is a bug, so a `debug_assert` plus a refusal, never silent.
//! - **Bounds.** Remembered charges ([`BillingSettings::fees_remembered_max`], the oldest forgotten
//!   first; an answer for a forgotten one is refused with the reason), open invoices
//!   ([`BillingSettings::open_invoices_max`]: a fee or plan that would open one more is refused before
//!   anything is booked; answers to bookings already requested always land), config and plan versions,
//!   monthly volumes (kept until [`VOLUMES_KEPT_AFTER_CLOSE_MS`] after a month closes: a completion
//!   older than that is refused, as its tier could no longer be known), lines per invoice (past
//!   [`ADJUSTMENT_LINES_NEW_MAX`] adjustment lines, further ones fold into the invoice's last adjustment
//!   line of their currency). After a clock jump (no ticks for more than a year), plans are charged for
//!   the last [`PLAN_BACKFILL_PERIODS_MAX`] months only.
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use riverbank_schemas::billing::{
    invoice_id, BillingInputRejected, BillingPlanSet, FeeCharged, FeePart, FeeStatus, InvoiceLine,
    InvoiceRecorded, InvoiceStatus, LineKind, TierPricing, ADJUSTMENT_SOURCES_NAMED_MAX, FEE_TIERS_MAX,
    INVOICE_LINES_MAX, PLAN_NAME_BYTES_MAX,
};
use riverbank_schemas::commands::{command_types, FeeConfigUpserted};
use riverbank_schemas::ledger::{
    BookingLeg, BookingOutcome, BookingPurpose, BookingRecorded, BookingRequested, BILLING_FEES_ACCOUNT,
    BILLING_RECEIVABLE_ACCOUNT,
};
use riverbank_schemas::money::AMOUNT_MINOR_MAX;
use riverbank_schemas::processor::{derived_emit, Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::rounding::{div_round, exact_decimal, RoundingMode};
use riverbank_schemas::state::{Cell, Table, Timer, Timers};
use riverbank_schemas::transfers::{TransferStatus, TransferStatusChanged};
use riverbank_schemas::{
    derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics, TransferKind,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;
/// Basis points in one whole.
pub const BPS_PER_UNIT: i128 = 10_000;
/// The highest bps a config or tier may charge (100 %).
pub const BPS_MAX: u32 = 10_000;
/// Versions kept per fee config (tenant, kind, currency); past it the oldest is forgotten, and a
/// transfer completing before every remembered version is refused (its price is no longer known).
pub const FEE_CONFIG_VERSIONS_MAX: usize = 32;
/// Fee configs (tenant, kind, currency) per partition at most; an upsert adding one more is refused.
pub const FEE_CONFIGS_MAX: usize = 100_000;
/// Plan versions kept per tenant (the oldest is forgotten first).
pub const PLAN_VERSIONS_MAX: usize = 32;
/// Tenants with plans per partition at most; a plan set adding one more is refused.
pub const PLANS_MAX: usize = 100_000;
/// Monthly volumes (month, tenant, kind, currency) per partition at most; a completion that needs one
/// more is refused.
pub const VOLUME_ROWS_MAX: usize = 1_000_000;
/// A month's volumes are kept this long (ms of partition clock) after its invoice closes; a completion
/// in that month arriving later is refused (its tier could no longer be known).
pub const VOLUMES_KEPT_AFTER_CLOSE_MS: i64 = 62 * DAY_MS;
/// After a finalization, the next month opened for a plan is at most this many months before the
/// clock's month (a clock that jumped further charges plans for these months only).
pub const PLAN_BACKFILL_PERIODS_MAX: i64 = 12;
/// Longest transfer id, in bytes (as the transfers processor's).
pub const TRANSFER_ID_BYTES_MAX: usize = 128;
/// Years a period may be in (`YYYY-MM` has four digits).
pub const YEAR_MIN: i32 = 1970;
pub const YEAR_MAX: i32 = 9999;
/// Transfer kinds (usage lines per currency on one invoice at most).
pub const TRANSFER_KINDS: usize = 4;
/// New adjustment lines per invoice at most: the rest of [`INVOICE_LINES_MAX`] is kept for usage lines
/// (kinds × currencies), one plan line, and one folding adjustment line per currency.
pub const ADJUSTMENT_LINES_NEW_MAX: usize =
    INVOICE_LINES_MAX - TRANSFER_KINDS * CURRENCIES_MAX - 1 - CURRENCIES_MAX;
/// Currencies riverbank knows at most (a test checks `Currency::all()` fits).
pub const CURRENCIES_MAX: usize = 24;
/// Where this processor's outputs say they come from, and who asks the ledger.
pub const SOURCE: &str = "riverbank.billing";
pub const REQUESTED_BY: &str = "billing";
const NAME: &str = "billing";

/// Settings from config (`[billing]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingSettings {
    /// A month's invoice is finalized this long (ms of partition clock) after the month ends.
    pub lateness_ms: i64,
    /// How the percentage part of a fee is rounded to a minor unit.
    pub rounding: RoundingMode,
    /// Charges (transfers' fees and plan months) remembered per partition; the oldest is forgotten first.
    pub fees_remembered_max: usize,
    /// Open (draft) invoices per partition at most.
    pub open_invoices_max: usize,
}

impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            lateness_ms: DAY_MS,
            rounding: RoundingMode::HalfEven,
            fees_remembered_max: 2_000_000,
            open_invoices_max: 100_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BillingProcessor {
    topics: Topics,
    settings: BillingSettings,
}

impl BillingProcessor {
    pub fn new(topics: Topics, settings: BillingSettings) -> Self {
        BillingProcessor { topics, settings }
    }

    pub fn settings(&self) -> &BillingSettings {
        &self.settings
    }
}

// ---------------------------------------------------------------------------------------------------
// Periods
// ---------------------------------------------------------------------------------------------------

/// A calendar month (UTC) in years [`YEAR_MIN`]–[`YEAR_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    /// year × 12 + month − 1.
    index: i64,
}

impl Period {
    pub fn new(year: i32, month: u32) -> Option<Period> {
        let ok = (YEAR_MIN..=YEAR_MAX).contains(&year) && (1..=12).contains(&month);
        ok.then(|| Period { index: i64::from(year) * 12 + i64::from(month) - 1 })
    }
    fn from_index(index: i64) -> Option<Period> {
        let year = i32::try_from(index.div_euclid(12)).ok()?;
        let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
        Period::new(year, month)
    }
    /// The month of an instant (ms since the epoch).
    pub fn of_ms(ms: i64) -> Option<Period> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        Period::new(t.year(), t.month())
    }
    /// `YYYY-MM`.
    pub fn parse(label: &str) -> Option<Period> {
        let (y, m) = label.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Period::new(y.parse().ok()?, m.parse().ok()?)
    }
    pub fn year(self) -> i32 {
        i32::try_from(self.index.div_euclid(12)).unwrap_or(YEAR_MAX)
    }
    pub fn month(self) -> u32 {
        u32::try_from(self.index.rem_euclid(12)).unwrap_or(0) + 1
    }
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year(), self.month())
    }
    pub fn next(self) -> Option<Period> {
        Period::from_index(self.index + 1)
    }
    /// `n` months earlier.
    pub fn back(self, n: i64) -> Option<Period> {
        Period::from_index(self.index - n)
    }
    /// Start of the month (ms).
    pub fn start_ms(self) -> i64 {
        month_start_ms(self.index)
    }
    /// Start of the next month (ms): the period is `[start, end)`.
    pub fn end_ms(self) -> i64 {
        month_start_ms(self.index + 1)
    }
}

/// Midnight UTC on the first of the month `index` (valid for every [`Period`] and the month after).
fn month_start_ms(index: i64) -> i64 {
    let (Ok(year), Ok(month)) = (i32::try_from(index.div_euclid(12)), u32::try_from(index.rem_euclid(12)))
    else {
        return i64::MAX;
    };
    NaiveDate::from_ymd_opt(year, month + 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(i64::MAX, |t| t.and_utc().timestamp_millis())
}

fn time_of(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn rfc3339(ms: i64) -> String {
    time_of(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------

/// One version of a fee config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    /// Effective from (ms, event time).
    pub from_ms: i64,
    /// The upsert's event id.
    pub event_id: Uuid,
    pub fixed: Money,
    pub bps: u32,
    pub min: Option<Money>,
    pub max: Option<Money>,
    /// (monthly volume from, bps), strictly ascending.
    pub tiers: Vec<(i64, u32)>,
    pub pricing: TierPricing,
}

impl ConfigVersion {
    /// `{effective_from}/{event id}`, as `billing.fee_charged` names it.
    pub fn name(&self) -> String {
        format!("{}/{}", rfc3339(self.from_ms), self.event_id)
    }
}

/// The versions of one fee config, by effective time (ties in arrival order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigHistory {
    pub versions: Vec<ConfigVersion>,
    /// Whether older versions were forgotten past [`FEE_CONFIG_VERSIONS_MAX`].
    pub forgotten: bool,
}

/// One version of a tenant's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanVersion {
    pub from_ms: i64,
    pub event_id: Uuid,
    pub plan: String,
    /// Zero: no plan from `from_ms` on.
    pub fee: Money,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanHistory {
    pub versions: Vec<PlanVersion>,
    pub forgotten: bool,
}

impl PlanHistory {
    /// The plan charged for `p`: in force at its start (fee above zero), else the first starting in it.
    pub fn for_period(&self, p: Period) -> Option<&PlanVersion> {
        let (start, end) = (p.start_ms(), p.end_ms());
        let at_start = self.versions.iter().rev().find(|v| v.from_ms <= start);
        if let Some(v) = at_start.filter(|v| v.fee.amount_minor > 0) {
            return Some(v);
        }
        self.versions.iter().find(|v| v.from_ms > start && v.from_ms < end && v.fee.amount_minor > 0)
    }
    /// Whether a plan is in force at `ms` or starts after it.
    pub fn any_from(&self, ms: i64) -> bool {
        let at = self.versions.iter().rev().find(|v| v.from_ms <= ms);
        at.is_some_and(|v| v.fee.amount_minor > 0)
            || self.versions.iter().any(|v| v.from_ms > ms && v.fee.amount_minor > 0)
    }
}

/// A transfer's fee or a plan month, remembered so it is charged once and its answer applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Position in the order charges are forgotten (from `BillingState::seq`).
    pub seq: u64,
    pub status: FeeStatus,
    pub booking_id: String,
    pub fee: Money,
    /// The transfer's kind (`None`: a plan).
    pub kind: Option<TransferKind>,
    /// `YYYY-MM` the charge belongs to.
    pub period: String,
    /// The plan's name (plans only).
    pub plan: String,
    /// The `billing.fee_charged` (JSON) while its booking is open (fees only).
    pub record: String,
}

/// One invoice line as the state keeps it (the wire type skips absent fields, which the binary state
/// encoding cannot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub line_id: String,
    pub kind: LineKind,
    pub transfer_kind: Option<TransferKind>,
    pub description: String,
    pub count: u64,
    pub amount: Money,
    pub source_period: Option<String>,
    pub sources: Vec<String>,
}

impl From<&Line> for InvoiceLine {
    fn from(l: &Line) -> Self {
        InvoiceLine {
            line_id: l.line_id.clone(),
            kind: l.kind,
            transfer_kind: l.transfer_kind,
            description: l.description.clone(),
            count: l.count,
            amount: l.amount,
            source_period: l.source_period.clone(),
            sources: l.sources.clone(),
        }
    }
}

/// A draft invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInvoice {
    pub period: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub closes_at_ms: i64,
    /// Of the last `billing.invoice_recorded` (0: not emitted yet).
    pub version: u32,
    pub lines: Vec<Line>,
    /// Σ of the `billing:fees` legs booked onto it, per currency (kept apart from the lines, to check them).
    pub counted: Vec<Money>,
    /// Whether its month's plan was charged.
    pub plan_charged: bool,
}

/// Per-partition state. Checkpoint keys: `c/{tenant}/{kind}/{currency}` (fee configs), `p/{tenant}`
/// (plans), `v/{period}/{tenant}/{kind}/{currency}` (monthly volumes), `f/f/{tenant}/{transfer}` and
/// `f/p/{tenant}/{period}` (charges), `i/{tenant}/{period}` (open invoices), `seq`, timers
/// `tm/close/{tenant}/{period}` and `tm/vol/{period}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingState {
    pub configs: Table<ConfigHistory>,
    pub plans: Table<PlanHistory>,
    pub volumes: Table<i64>,
    pub charges: Table<Charge>,
    pub invoices: Table<OpenInvoice>,
    /// The last `Charge::seq` given.
    pub seq: Cell<u64>,
    pub timers: Timers,
    /// Charges by `seq` (derived; rebuilt on restore).
    order: BTreeMap<u64, String>,
}

riverbank_schemas::state_tables!(
    BillingState { configs, plans, volumes, charges, invoices, seq },
    timers = timers,
    after_restore = rebuild_order
);

impl Default for BillingState {
    fn default() -> Self {
        Self::new()
    }
}

impl BillingState {
    pub fn new() -> Self {
        BillingState {
            configs: Table::new("c"),
            plans: Table::new("p"),
            volumes: Table::new("v"),
            charges: Table::new("f"),
            invoices: Table::new("i"),
            seq: Cell::new("seq"),
            timers: Timers::new("tm"),
            order: BTreeMap::new(),
        }
    }

    fn rebuild_order(&mut self) -> Result<(), String> {
        self.order = self.charges.iter().map(|(k, c)| (c.seq, k.clone())).collect();
        Ok(())
    }

    /// Remember a charge, forgetting the oldest past `max`.
    fn remember(&mut self, key: String, mut charge: Charge, max: usize) {
        let seq = self.seq.get().saturating_add(1);
        self.seq.set(seq);
        charge.seq = seq;
        if let Some(old) = self.charges.insert(key.clone(), charge) {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, key);
        while self.charges.len() > max.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.charges.remove(&oldest);
        }
    }

    /// Keys of the charges in the order they are forgotten (tests).
    pub fn charge_order(&self) -> Vec<&String> {
        self.order.values().collect()
    }
}

pub fn config_key(tenant: &str, kind: TransferKind, currency: Currency) -> String {
    format!("{tenant}/{}/{currency}", kind.as_str())
}

pub fn volume_key(period: &str, tenant: &str, kind: TransferKind, currency: Currency) -> String {
    format!("{period}/{tenant}/{}/{currency}", kind.as_str())
}

pub fn fee_key(tenant: &str, transfer: &str) -> String {
    format!("f/{tenant}/{transfer}")
}

pub fn plan_key(tenant: &str, period: &str) -> String {
    format!("p/{tenant}/{period}")
}

pub fn invoice_key(tenant: &str, period: &str) -> String {
    format!("{tenant}/{period}")
}

/// The booking id of a transfer's fee.
pub fn fee_booking_id(tenant: &str, transfer: &str) -> String {
    derived_id(&["billing-fee", tenant, transfer]).to_string()
}

/// The booking id of a tenant's plan for one month.
pub fn plan_booking_id(tenant: &str, period: &str) -> String {
    derived_id(&["billing-plan", tenant, period]).to_string()
}

/// The legs of a fee or plan charge: the tenant owes it, the fee account earns it.
pub fn fee_legs(fee: Money) -> Vec<BookingLeg> {
    vec![
        BookingLeg {
            account: BILLING_RECEIVABLE_ACCOUNT.to_owned(),
            amount: Money::new(fee.amount_minor.saturating_neg(), fee.currency),
        },
        BookingLeg { account: BILLING_FEES_ACCOUNT.to_owned(), amount: fee },
    ]
}

// ---------------------------------------------------------------------------------------------------
// Pricing
// ---------------------------------------------------------------------------------------------------

/// A fee as priced, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// Minor units, after rounding and clamping.
    pub fee: i64,
    /// (amount, bps) slices of the transfer's amount.
    pub parts: Vec<(i64, u32)>,
    /// fixed + Σ parts, exact, in minor units.
    pub exact: String,
    /// `min` or `max` when the clamp changed the fee.
    pub clamped: Option<&'static str>,
}

/// Price `amount` (minor units, > 0) with `cfg` when the month's volume before it is `before`.
pub fn price(cfg: &ConfigVersion, amount: i64, before: i64, mode: RoundingMode) -> Result<Priced, String> {
    if amount <= 0 || before < 0 {
        return Err(format!("amount {amount} and monthly volume {before} must be positive"));
    }
    let overflow = || "the fee computation overflows".to_owned();
    let (a, v) = (i128::from(amount), i128::from(before));
    let reached = v.checked_add(a).ok_or_else(overflow)?;
    let parts: Vec<(i64, u32)> = match cfg.pricing {
        _ if cfg.tiers.is_empty() => vec![(amount, cfg.bps)],
        TierPricing::Volume => {
            let tier = cfg.tiers.iter().rev().find(|(from, _)| i128::from(*from) <= reached);
            vec![(amount, tier.map_or(cfg.bps, |t| t.1))]
        }
        TierPricing::Graduated => {
            // Regions [lower, upper) of the month's volume with their bps.
            let mut lowers: Vec<(i128, u32)> = vec![(0, cfg.bps)];
            lowers.extend(cfg.tiers.iter().map(|(from, bps)| (i128::from(*from), *bps)));
            let mut parts = Vec::new();
            for (i, (lower, bps)) in lowers.iter().enumerate() {
                let upper = lowers.get(i + 1).map_or(i128::MAX, |n| n.0);
                let slice = upper.min(reached) - (*lower).max(v);
                if slice > 0 {
                    parts.push((i64::try_from(slice).map_err(|_| overflow())?, *bps));
                }
            }
            parts
        }
    };
    let mut pct_exact: i128 = 0;
    for (slice, bps) in &parts {
        let p = i128::from(*slice).checked_mul(i128::from(*bps)).ok_or_else(overflow)?;
        pct_exact = pct_exact.checked_add(p).ok_or_else(overflow)?;
    }
    let fixed = i128::from(cfg.fixed.amount_minor);
    let pct = div_round(pct_exact, BPS_PER_UNIT, mode).ok_or_else(overflow)?;
    let exact_num =
        fixed.checked_mul(BPS_PER_UNIT).and_then(|f| f.checked_add(pct_exact)).ok_or_else(overflow)?;
    let mut fee = fixed.checked_add(pct).ok_or_else(overflow)?;
    let mut clamped = None;
    if let Some(min) = cfg.min.filter(|m| fee < i128::from(m.amount_minor)) {
        fee = i128::from(min.amount_minor);
        clamped = Some("min");
    }
    if let Some(max) = cfg.max.filter(|m| fee > i128::from(m.amount_minor)) {
        fee = i128::from(max.amount_minor);
        clamped = Some("max");
    }
    let fee = i64::try_from(fee).map_err(|_| overflow())?;
    Ok(Priced { fee, parts, exact: exact_decimal(exact_num, 4), clamped })
}

/// A fee config as the state keeps it, or why it is refused.
pub fn validate_config(c: &FeeConfigUpserted, from_ms: i64, event_id: Uuid) -> Result<ConfigVersion, String> {
    let currency = c.fixed.currency;
    let amount_ok = |what: &str, m: &Money| -> Result<(), String> {
        if m.currency != currency {
            return Err(format!(
                "{what} is in {}, the fixed fee in {currency}: one currency per config",
                m.currency
            ));
        }
        if m.amount_minor < 0 || m.amount_minor > AMOUNT_MINOR_MAX {
            return Err(format!("{what} must be 0-{AMOUNT_MINOR_MAX} minor units, got {}", m.amount_minor));
        }
        Ok(())
    };
    amount_ok("fixed", &c.fixed)?;
    if c.bps > BPS_MAX {
        return Err(format!("bps must be at most {BPS_MAX}, got {}", c.bps));
    }
    if let Some(m) = &c.min {
        amount_ok("min", m)?;
    }
    if let Some(m) = &c.max {
        amount_ok("max", m)?;
    }
    if let (Some(min), Some(max)) = (c.min, c.max) {
        if min.amount_minor > max.amount_minor {
            return Err(format!("min {min} is above max {max}"));
        }
    }
    if c.tiers.len() > FEE_TIERS_MAX {
        return Err(format!("at most {FEE_TIERS_MAX} tiers, got {}", c.tiers.len()));
    }
    let mut tiers = Vec::with_capacity(c.tiers.len());
    for (i, t) in c.tiers.iter().enumerate() {
        amount_ok(&format!("tier {i} monthly_volume_from"), &t.monthly_volume_from)?;
        let from = t.monthly_volume_from.amount_minor;
        if from == 0 {
            return Err(format!("tier {i} starts at zero: set the config's bps instead"));
        }
        if t.bps > BPS_MAX {
            return Err(format!("tier {i} bps must be at most {BPS_MAX}, got {}", t.bps));
        }
        if let Some((prev, _)) = tiers.last() {
            if from <= *prev {
                return Err(format!(
                    "tiers must be strictly ascending: tier {i} starts at {from}, not above {prev}"
                ));
            }
        }
        tiers.push((from, t.bps));
    }
    Ok(ConfigVersion {
        from_ms,
        event_id,
        fixed: c.fixed,
        bps: c.bps,
        min: c.min,
        max: c.max,
        tiers,
        pricing: c.pricing,
    })
}

/// A plan name: 1–[`PLAN_NAME_BYTES_MAX`] of ASCII letters, digits, ' ', '_', '-', '.'.
fn check_plan_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= PLAN_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("plan must be 1-{PLAN_NAME_BYTES_MAX} of ASCII letters, digits, ' ', '_', '-', '.'"))
    }
}

// ---------------------------------------------------------------------------------------------------
// Invoices
// ---------------------------------------------------------------------------------------------------

/// Totals per currency of the lines, checked against the fee legs counted: equal, or the difference.
pub fn checked_totals(inv: &OpenInvoice) -> Result<Vec<Money>, String> {
    let mut lines: BTreeMap<Currency, i64> = BTreeMap::new();
    for l in &inv.lines {
        let sum = lines.entry(l.amount.currency).or_default();
        *sum = sum.checked_add(l.amount.amount_minor).ok_or("invoice total overflows")?;
    }
    let counted: BTreeMap<Currency, i64> = inv.counted.iter().map(|m| (m.currency, m.amount_minor)).collect();
    if lines != counted {
        let show = |m: &BTreeMap<Currency, i64>| {
            m.iter().map(|(c, a)| Money::new(*a, *c).to_string()).collect::<Vec<_>>().join(", ")
        };
        return Err(format!(
            "invoice {} is inconsistent: its lines total [{}] but the fee legs booked onto it total [{}]",
            invoice_id(&inv.period),
            show(&lines),
            show(&counted)
        ));
    }
    Ok(lines.into_iter().map(|(c, a)| Money::new(a, c)).collect())
}

/// What a booked charge adds to an invoice.
struct Counted<'a> {
    fee: Money,
    kind: Option<TransferKind>,
    /// The month the charge belongs to.
    period: &'a str,
    /// The transfer id (fees) or `plan:{name}` (plans).
    source: String,
    plan: &'a str,
    adjustment: bool,
}

/// Add a booked charge to `inv`: a line (new or grown) and the leg counted.
fn add_charge(inv: &mut OpenInvoice, c: &Counted<'_>) -> Result<(), String> {
    let cur = c.fee.currency;
    let kind_name = c.kind.map_or("plan", TransferKind::as_str);
    let (line_id, line_kind, description, source_period) = match (c.adjustment, c.kind) {
        (false, Some(k)) => (
            format!("usage/{}/{cur}", k.as_str()),
            LineKind::Usage,
            format!("{} fees ({cur})", k.as_str()),
            None,
        ),
        (false, None) => {
            (format!("plan/{}", c.plan), LineKind::Plan, format!("plan {} for {}", c.plan, c.period), None)
        }
        (true, _) => (
            format!("adjustment/{}/{kind_name}/{cur}", c.period),
            LineKind::Adjustment,
            format!("late {kind_name} charges of {} ({cur})", c.period),
            Some(c.period.to_owned()),
        ),
    };
    let adjustments = inv.lines.iter().filter(|l| l.kind == LineKind::Adjustment).count();
    let at = match inv.lines.iter().position(|l| l.line_id == line_id && l.amount.currency == cur) {
        Some(i) => i,
        None if line_kind == LineKind::Adjustment && adjustments >= ADJUSTMENT_LINES_NEW_MAX => {
            // Folded into the last adjustment line of the currency; one more line per currency at most.
            let last =
                inv.lines.iter().rposition(|l| l.kind == LineKind::Adjustment && l.amount.currency == cur);
            match last {
                Some(i) => {
                    let l = &mut inv.lines[i];
                    if !l.description.ends_with("(and later adjustments folded in)") {
                        l.description.push_str(" (and later adjustments folded in)");
                    }
                    i
                }
                None => new_line(inv, line_id, line_kind, c.kind, description, source_period, cur),
            }
        }
        None => new_line(inv, line_id, line_kind, c.kind, description, source_period, cur),
    };
    debug_assert!(inv.lines.len() <= INVOICE_LINES_MAX, "invoice lines past the maximum");
    let line = &mut inv.lines[at];
    line.amount =
        line.amount.checked_add(c.fee).map_err(|e| format!("invoice line {}: {e}", line.line_id))?;
    line.count = line.count.saturating_add(1);
    if c.adjustment && line.sources.len() < ADJUSTMENT_SOURCES_NAMED_MAX {
        line.sources.push(c.source.clone());
    }
    match inv.counted.iter_mut().find(|m| m.currency == cur) {
        Some(m) => *m = m.checked_add(c.fee).map_err(|e| format!("invoice total: {e}"))?,
        None => inv.counted.push(c.fee),
    }
    Ok(())
}

fn new_line(
    inv: &mut OpenInvoice,
    line_id: String,
    kind: LineKind,
    transfer_kind: Option<TransferKind>,
    description: String,
    source_period: Option<String>,
    currency: Currency,
) -> usize {
    inv.lines.push(Line {
        line_id,
        kind,
        transfer_kind,
        description,
        count: 0,
        amount: Money::zero(currency),
        source_period,
        sources: Vec::new(),
    });
    inv.lines.len() - 1
}

// ---------------------------------------------------------------------------------------------------
// The processor
// ---------------------------------------------------------------------------------------------------

/// What caused the outputs being built: an input, or a timer.
#[derive(Clone, Copy)]
enum Cause<'a> {
    Input(&'a RawEnvelope),
    Timer { key: &'a str, due_ms: i64 },
}

/// Outputs of one input or timer, in order, with ids derived from the cause and their position.
struct Out<'a> {
    cause: Cause<'a>,
    topics: &'a Topics,
    env: Environment,
    emits: Vec<Emit>,
}

impl Out<'_> {
    fn push<P: Serialize>(&mut self, tenant: &str, topic: String, event_type: &str, payload: P) {
        let index = self.emits.len();
        let emit = match self.cause {
            Cause::Input(input) => derived_emit(NAME, input, index, topic, event_type, payload),
            Cause::Timer { key, due_ms } => {
                let id = derived_id(&[NAME, key, &due_ms.to_string(), &index.to_string()]);
                let env = Envelope::new(id, event_type, tenant, self.env, time_of(due_ms), SOURCE, payload);
                Emit {
                    topic,
                    key: tenant.to_owned(),
                    event_id: id,
                    payload: serde_json::to_vec(&env).unwrap_or_default(),
                }
            }
        };
        self.emits.push(emit);
    }

    fn events(&mut self, tenant: &str, event_type: &str, payload: impl Serialize) {
        self.push(tenant, self.topics.billing_events(self.env), event_type, payload);
    }

    fn reject(&mut self, input: &RawEnvelope, r: Refusal) {
        let payload = BillingInputRejected {
            input_event_id: input.event_id,
            input_event_type: input.event_type.clone(),
            transfer_id: r.transfer_id,
            reason: r.reason,
        };
        self.events(&input.tenant_id, BillingInputRejected::EVENT_TYPE, payload);
    }

    fn book(&mut self, tenant: &str, b: BookingRequested) {
        self.push(tenant, self.topics.transfer_inputs(self.env), BookingRequested::EVENT_TYPE, b);
    }

    fn invoice(&mut self, tenant: &str, inv: &OpenInvoice, status: InvoiceStatus, totals: Vec<Money>) {
        let payload = InvoiceRecorded {
            invoice_id: invoice_id(&inv.period),
            period: inv.period.clone(),
            period_start: time_of(inv.start_ms),
            period_end: time_of(inv.end_ms),
            closes_at: time_of(inv.closes_at_ms),
            status,
            version: inv.version,
            lines: inv.lines.iter().map(InvoiceLine::from).collect(),
            totals,
        };
        self.events(tenant, InvoiceRecorded::EVENT_TYPE, payload);
    }
}

/// An input refused: the transfer it named and why.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    transfer_id: Option<String>,
    reason: String,
}

impl Refusal {
    fn new(transfer_id: Option<&str>, reason: impl Into<String>) -> Self {
        Refusal { transfer_id: transfer_id.map(str::to_owned), reason: reason.into() }
    }
}

use riverbank_schemas::processor::decode_v1 as decode;

impl Processor for BillingProcessor {
    type State = BillingState;

    fn name(&self) -> &'static str {
        NAME
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            log: topics.log(env, NAME),
            routed: vec![
                topics.billing_commands(env),
                topics.transfer_status(env),
                topics.ledger_bookings(env),
            ],
            broadcast: vec![],
            ticks: true,
            outputs: vec![
                Output::new(topics.transfer_inputs(env), &[BookingRequested::EVENT_TYPE]),
                Output::new(
                    topics.billing_events(env),
                    &[FeeCharged::EVENT_TYPE, InvoiceRecorded::EVENT_TYPE, BillingInputRejected::EVENT_TYPE],
                ),
            ],
            stateful: true,
        }
    }

    fn apply(&self, state: &mut BillingState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let mut out =
            Out { cause: Cause::Input(&input), topics: &self.topics, env: at.environment, emits: Vec::new() };
        let result = match input.event_type.as_str() {
            command_types::FEE_CONFIG_UPSERTED => decode(&input).map(|c| self.config(state, &input, c)),
            command_types::BILLING_PLAN_SET => {
                decode(&input).map(|p| self.plan(state, at, &mut out, &input, p))
            }
            TransferStatusChanged::EVENT_TYPE => {
                decode(&input).map(|s| self.status(state, at, &mut out, &input, s))
            }
            BookingRecorded::EVENT_TYPE => {
                decode(&input).map(|b| self.answer(state, at, &mut out, &input, b))
            }
            other => Err(format!("billing has no rule for {other}")),
        };
        match result {
            Ok(Ok(())) => Verdict::Emit(out.emits),
            Ok(Err(refusal)) => {
                // A refusal changes nothing: outputs are only ever pushed once nothing can refuse.
                debug_assert!(out.emits.is_empty(), "outputs pushed before a refusal");
                out.emits.clear();
                out.reject(&input, refusal);
                Verdict::Emit(out.emits)
            }
            Err(reason) => Verdict::Poison(reason),
        }
    }

    fn on_timer(&self, state: &mut BillingState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        if let Some(label) = timer.key.strip_prefix("vol/") {
            let prefix = format!("{label}/");
            let keys: Vec<String> = state.volumes.range_prefix(&prefix).map(|(k, _)| k.clone()).collect();
            for k in keys {
                state.volumes.remove(&k);
            }
            return Verdict::Emit(Vec::new());
        }
        let Some((tenant, label)) = timer.key.strip_prefix("close/").and_then(|r| r.rsplit_once('/')) else {
            return Verdict::Emit(Vec::new());
        };
        let mut out = Out {
            cause: Cause::Timer { key: &timer.key, due_ms: timer.due_ms },
            topics: &self.topics,
            env: at.environment,
            emits: Vec::new(),
        };
        match self.close(state, at, &mut out, tenant, label) {
            Ok(()) => Verdict::Emit(out.emits),
            Err(reason) => Verdict::Poison(reason),
        }
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(env)
    }
}

impl BillingProcessor {
    fn closes_at(&self, p: Period) -> i64 {
        p.end_ms().saturating_add(self.settings.lateness_ms.max(0))
    }

    fn empty_invoice(&self, p: Period) -> OpenInvoice {
        OpenInvoice {
            period: p.label(),
            start_ms: p.start_ms(),
            end_ms: p.end_ms(),
            closes_at_ms: self.closes_at(p),
            version: 0,
            lines: Vec::new(),
            counted: Vec::new(),
            plan_charged: false,
        }
    }

    /// The invoice a charge of month `own` booked now goes on: its own while that month is open,
    /// else (an adjustment) the clock's month's.
    fn placement(&self, own: Period, now_ms: i64) -> Result<(Period, bool), String> {
        if self.closes_at(own) > now_ms {
            return Ok((own, false));
        }
        let now = Period::of_ms(now_ms)
            .ok_or("the partition clock is outside the years billing has periods for")?;
        Ok((now, true))
    }

    /// Whether one more open invoice is refused (`target` is not open and the partition is full).
    fn full(&self, state: &BillingState, tenant: &str, target: Period) -> Option<String> {
        let open = state.invoices.contains_key(&invoice_key(tenant, &target.label()));
        (!open && state.invoices.len() >= self.settings.open_invoices_max).then(|| {
            format!(
                "this partition already holds {} open invoices (billing.open_invoices_max): invoice {} cannot open",
                self.settings.open_invoices_max,
                invoice_id(&target.label())
            )
        })
    }

    /// Store `inv` as the open invoice of (tenant, p), with its closing timer, and charge the month's
    /// plan if one is due.
    fn open(
        &self,
        state: &mut BillingState,
        out: &mut Out<'_>,
        tenant: &str,
        p: Period,
        mut inv: OpenInvoice,
    ) {
        let label = p.label();
        state.timers.schedule(&format!("close/{tenant}/{label}"), inv.closes_at_ms, "");
        self.charge_plan(state, out, tenant, p, &mut inv);
        state.invoices.insert(invoice_key(tenant, &label), inv);
    }

    /// Ask the ledger for (tenant, p)'s plan fee if a plan is due and not yet charged.
    fn charge_plan(
        &self,
        state: &mut BillingState,
        out: &mut Out<'_>,
        tenant: &str,
        p: Period,
        inv: &mut OpenInvoice,
    ) {
        let label = p.label();
        let key = plan_key(tenant, &label);
        if inv.plan_charged || state.charges.contains_key(&key) {
            return;
        }
        let Some(v) = state.plans.get(tenant).and_then(|h| h.for_period(p)).cloned() else { return };
        inv.plan_charged = true;
        let booking_id = plan_booking_id(tenant, &label);
        let charge = Charge {
            seq: 0,
            status: FeeStatus::Booking,
            booking_id: booking_id.clone(),
            fee: v.fee,
            kind: None,
            period: label.clone(),
            plan: v.plan.clone(),
            record: String::new(),
        };
        state.remember(key, charge, self.settings.fees_remembered_max);
        out.book(
            tenant,
            BookingRequested {
                booking_id,
                purpose: BookingPurpose::Plan,
                reference: label,
                legs: fee_legs(v.fee),
                requested_by: REQUESTED_BY.to_owned(),
            },
        );
    }

    /// `billing.fee_config_upserted`: a new version (a redelivered one changes nothing). Emits nothing
    /// unless refused.
    fn config(
        &self,
        state: &mut BillingState,
        input: &RawEnvelope,
        c: FeeConfigUpserted,
    ) -> Result<(), Refusal> {
        let refuse = |reason: String| Refusal::new(None, reason);
        let from = c.effective_from.unwrap_or(input.occurred_at);
        if Period::of_ms(from.timestamp_millis()).is_none() {
            return Err(refuse(format!("effective_from must be in the years {YEAR_MIN}-{YEAR_MAX}")));
        }
        let version = validate_config(&c, from.timestamp_millis(), input.event_id).map_err(refuse)?;
        let key = config_key(&input.tenant_id, c.transfer_kind, c.fixed.currency);
        let history = state.configs.get(&key);
        if history.is_some_and(|h| h.versions.iter().any(|v| v.event_id == input.event_id)) {
            return Ok(()); // applied already
        }
        if history.is_none() && state.configs.len() >= FEE_CONFIGS_MAX {
            return Err(refuse(format!("this partition already holds {FEE_CONFIGS_MAX} fee configs")));
        }
        state.configs.upsert(&key, |h| {
            let at = h.versions.iter().position(|v| v.from_ms > version.from_ms).unwrap_or(h.versions.len());
            h.versions.insert(at, version);
            while h.versions.len() > FEE_CONFIG_VERSIONS_MAX {
                h.versions.remove(0);
                h.forgotten = true;
            }
        });
        Ok(())
    }

    /// `billing.plan_set`: a new plan version; the month it takes effect in (or, backdated into a
    /// closed month, the clock's month) opens and is charged if a plan is due for it.
    fn plan(
        &self,
        state: &mut BillingState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        input: &RawEnvelope,
        p: BillingPlanSet,
    ) -> Result<(), Refusal> {
        let refuse = |reason: String| Refusal::new(None, reason);
        let tenant = input.tenant_id.as_str();
        check_plan_name(&p.plan).map_err(refuse)?;
        if p.fee.amount_minor < 0 || p.fee.amount_minor > AMOUNT_MINOR_MAX {
            return Err(refuse(format!(
                "fee must be 0-{AMOUNT_MINOR_MAX} minor units, got {}",
                p.fee.amount_minor
            )));
        }
        let from_ms = p.effective_from.unwrap_or(input.occurred_at).timestamp_millis();
        let Some(effective) = Period::of_ms(from_ms) else {
            return Err(refuse(format!("effective_from must be in the years {YEAR_MIN}-{YEAR_MAX}")));
        };
        let history = state.plans.get(tenant);
        if history.is_some_and(|h| h.versions.iter().any(|v| v.event_id == input.event_id)) {
            return Ok(()); // applied already
        }
        if history.is_none() && state.plans.len() >= PLANS_MAX {
            return Err(refuse(format!("this partition already holds {PLANS_MAX} tenants' plans")));
        }
        let (target, _) = self.placement(effective, at.now_ms).map_err(refuse)?;
        if let Some(reason) = self.full(state, tenant, target) {
            return Err(refuse(reason));
        }
        let version = PlanVersion { from_ms, event_id: input.event_id, plan: p.plan, fee: p.fee };
        state.plans.upsert(tenant, |h| {
            let at = h.versions.iter().position(|v| v.from_ms > from_ms).unwrap_or(h.versions.len());
            h.versions.insert(at, version);
            while h.versions.len() > PLAN_VERSIONS_MAX {
                h.versions.remove(0);
                h.forgotten = true;
            }
        });
        let key = invoice_key(tenant, &target.label());
        match state.invoices.get(&key).cloned() {
            Some(mut inv) => {
                self.charge_plan(state, out, tenant, target, &mut inv);
                state.invoices.insert(key, inv);
            }
            // A month opens for a plan from it on (an ended plan opens nothing).
            None if state.plans.get(tenant).is_some_and(|h| h.any_from(target.start_ms())) => {
                self.open(state, out, tenant, target, self.empty_invoice(target))
            }
            None => {}
        }
        Ok(())
    }

    /// `transfer.status_changed`: a COMPLETED transfer's fee (once per transfer).
    fn status(
        &self,
        state: &mut BillingState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        input: &RawEnvelope,
        s: TransferStatusChanged,
    ) -> Result<(), Refusal> {
        // FAILED and CANCELLED yield no fee; other statuses are not final.
        if s.status != TransferStatus::Completed {
            return Ok(());
        }
        let tenant = input.tenant_id.as_str();
        let id = s.transfer_id.as_str();
        let refuse = |reason: String| Refusal::new(Some(id), reason);
        if id.is_empty() || id.len() > TRANSFER_ID_BYTES_MAX || id.chars().any(char::is_control) {
            return Err(refuse(format!(
                "transfer_id must be 1-{TRANSFER_ID_BYTES_MAX} bytes without control characters"
            )));
        }
        let key = fee_key(tenant, id);
        if state.charges.contains_key(&key) {
            return Ok(()); // charged once per transfer
        }
        let (amount, currency) = (s.amount.amount_minor, s.amount.currency);
        if amount <= 0 {
            return Err(refuse(format!("transfer amount must be positive, got {}", s.amount)));
        }
        let completed_ms = input.occurred_at.timestamp_millis();
        let Some(period) = Period::of_ms(completed_ms) else {
            return Err(refuse(format!("completion time must be in the years {YEAR_MIN}-{YEAR_MAX}")));
        };
        let label = period.label();
        let closes_ms = self.closes_at(period);
        if at.now_ms >= closes_ms.saturating_add(VOLUMES_KEPT_AFTER_CLOSE_MS) {
            return Err(refuse(format!(
                "completed in {label}, whose invoice closed at {}: monthly volumes (and so fees) are kept \
                 only {} days after a month closes",
                rfc3339(closes_ms),
                VOLUMES_KEPT_AFTER_CLOSE_MS / DAY_MS
            )));
        }
        let vkey = volume_key(&label, tenant, s.kind, currency);
        let before = state.volumes.get(&vkey).copied();
        if before.is_none() && state.volumes.len() >= VOLUME_ROWS_MAX {
            return Err(refuse(format!("this partition already holds {VOLUME_ROWS_MAX} monthly volumes")));
        }
        let before = before.unwrap_or(0);
        let Some(after) = before.checked_add(amount) else {
            return Err(refuse(format!(
                "the {label} volume of {} {currency} would overflow",
                s.kind.as_str()
            )));
        };
        let history = state.configs.get(&config_key(tenant, s.kind, currency));
        let cfg = history.and_then(|h| h.versions.iter().rev().find(|v| v.from_ms <= completed_ms));
        if cfg.is_none() && history.is_some_and(|h| h.forgotten) {
            return Err(refuse(format!(
                "completed at {}, before every {} {currency} fee config version remembered (at most \
                 {FEE_CONFIG_VERSIONS_MAX} are kept)",
                rfc3339(completed_ms),
                s.kind.as_str()
            )));
        }
        let mode = self.settings.rounding;
        let priced = match cfg {
            Some(c) => price(c, amount, before, mode).map_err(refuse)?,
            None => Priced { fee: 0, parts: Vec::new(), exact: "0".into(), clamped: None },
        };
        let fee = Money::new(priced.fee, currency);
        let booking = priced.fee > 0;
        if booking {
            let (target, _) = self.placement(period, at.now_ms).map_err(refuse)?;
            if let Some(reason) = self.full(state, tenant, target) {
                return Err(refuse(reason));
            }
        }
        // Nothing refuses from here on.
        state.volumes.insert(vkey, after);
        state.timers.schedule(
            &format!("vol/{label}"),
            closes_ms.saturating_add(VOLUMES_KEPT_AFTER_CLOSE_MS),
            "",
        );
        let booking_id = booking.then(|| fee_booking_id(tenant, id));
        let record = FeeCharged {
            transfer_id: id.to_owned(),
            transfer_kind: s.kind,
            transfer_amount: s.amount,
            completed_at: input.occurred_at,
            period: label.clone(),
            fee,
            status: if booking { FeeStatus::Booking } else { FeeStatus::Waived },
            version: 1,
            config_version: cfg.map(ConfigVersion::name),
            pricing: cfg.map(|c| c.pricing).unwrap_or_default(),
            monthly_volume_before: Money::new(before, currency),
            fixed: Money::new(cfg.map_or(0, |c| c.fixed.amount_minor), currency),
            parts: priced
                .parts
                .iter()
                .map(|(a, bps)| FeePart { amount: Money::new(*a, currency), bps: *bps })
                .collect(),
            exact: priced.exact,
            clamped: priced.clamped.map(str::to_owned),
            rounding: mode,
            booking_id: booking_id.clone(),
            invoice_id: None,
            adjustment: false,
            reason: cfg.is_none().then(|| format!("no {} {currency} fee config in force", s.kind.as_str())),
        };
        let charge = Charge {
            seq: 0,
            status: record.status,
            booking_id: booking_id.clone().unwrap_or_default(),
            fee,
            kind: Some(s.kind),
            period: label,
            plan: String::new(),
            record: if booking { serde_json::to_string(&record).unwrap_or_default() } else { String::new() },
        };
        state.remember(key, charge, self.settings.fees_remembered_max);
        out.events(tenant, FeeCharged::EVENT_TYPE, &record);
        if let Some(booking_id) = booking_id {
            out.book(
                tenant,
                BookingRequested {
                    booking_id,
                    purpose: BookingPurpose::Fee,
                    reference: id.to_owned(),
                    legs: fee_legs(fee),
                    requested_by: REQUESTED_BY.to_owned(),
                },
            );
        }
        Ok(())
    }

    /// `ledger.booking_recorded` for a fee or plan charge: count it (booked) or record the refusal.
    fn answer(
        &self,
        state: &mut BillingState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        input: &RawEnvelope,
        b: BookingRecorded,
    ) -> Result<(), Refusal> {
        let tenant = input.tenant_id.as_str();
        let (key, transfer) = match b.purpose {
            BookingPurpose::FxConversion => return Ok(()), // FX's, not billing's
            BookingPurpose::Fee => (fee_key(tenant, &b.reference), Some(b.reference.as_str())),
            BookingPurpose::Plan => (plan_key(tenant, &b.reference), None),
        };
        let refuse = |reason: String| Refusal::new(transfer, reason);
        let what = match b.purpose {
            BookingPurpose::Plan => format!("plan charge for {}", b.reference),
            _ => format!("fee of transfer {}", b.reference),
        };
        let Some(charge) = state.charges.get(&key).cloned() else {
            return Err(refuse(format!(
                "no {what} awaits booking {} (never requested here, or forgotten past \
                 billing.fees_remembered_max)",
                b.booking_id
            )));
        };
        if charge.booking_id != b.booking_id {
            return Err(refuse(format!("booking {} is not the one requested for the {what}", b.booking_id)));
        }
        if charge.status != FeeStatus::Booking {
            return Ok(()); // answered already
        }
        let record = match charge.kind {
            Some(_) => Some(
                serde_json::from_str::<FeeCharged>(&charge.record)
                    .map_err(|e| refuse(format!("the {what} cannot be read back from the state: {e}")))?,
            ),
            None => None,
        };
        let mut settled = charge.clone();
        settled.record = String::new();
        if b.outcome == BookingOutcome::Refused {
            settled.status = FeeStatus::Refused;
            state.charges.insert(key, settled);
            let reason = b.reason.unwrap_or_else(|| "refused by the ledger without a reason".to_owned());
            match record {
                Some(mut r) => {
                    r.status = FeeStatus::Refused;
                    r.version = 2;
                    r.reason = Some(reason);
                    out.events(tenant, FeeCharged::EVENT_TYPE, &r);
                }
                // A plan month has no fee record: the refusal is said here.
                None => {
                    out.reject(input, Refusal::new(None, format!("the ledger refused the {what}: {reason}")))
                }
            }
            return Ok(());
        }
        if b.legs != fee_legs(charge.fee) {
            return Err(refuse(format!(
                "the ledger booked other legs than the {what} requested ({} from {BILLING_RECEIVABLE_ACCOUNT} to \
                 {BILLING_FEES_ACCOUNT}): not counted",
                charge.fee
            )));
        }
        let own = Period::parse(&charge.period).ok_or_else(|| refuse(format!("the {what} has no period")))?;
        let (target, adjustment) = self.placement(own, at.now_ms).map_err(refuse)?;
        let ikey = invoice_key(tenant, &target.label());
        let existing = state.invoices.get(&ikey).cloned();
        let opening = existing.is_none();
        let mut inv = existing.unwrap_or_else(|| self.empty_invoice(target));
        let counted = Counted {
            fee: charge.fee,
            kind: charge.kind,
            period: &charge.period,
            source: transfer.map_or_else(|| format!("plan:{}", charge.plan), str::to_owned),
            plan: &charge.plan,
            adjustment,
        };
        add_charge(&mut inv, &counted).map_err(refuse)?;
        inv.version =
            inv.version.checked_add(1).ok_or_else(|| refuse("the invoice has no more versions".into()))?;
        let totals = match checked_totals(&inv) {
            Ok(t) => t,
            Err(e) => {
                debug_assert!(false, "{e}");
                return Err(refuse(e));
            }
        };
        // Nothing refuses from here on.
        settled.status = FeeStatus::Booked;
        state.charges.insert(key, settled);
        if let Some(mut r) = record {
            r.status = FeeStatus::Booked;
            r.version = 2;
            r.invoice_id = Some(invoice_id(&inv.period));
            r.adjustment = adjustment;
            out.events(tenant, FeeCharged::EVENT_TYPE, &r);
        }
        out.invoice(tenant, &inv, InvoiceStatus::Draft, totals);
        if opening {
            self.open(state, out, tenant, target, inv);
        } else {
            state.invoices.insert(ikey, inv);
        }
        Ok(())
    }

    /// A period's closing timer: finalize its invoice (emitted if it has lines) and drop it; a tenant
    /// with a plan gets the next month opened.
    fn close(
        &self,
        state: &mut BillingState,
        at: &InputRef<'_>,
        out: &mut Out<'_>,
        tenant: &str,
        label: &str,
    ) -> Result<(), String> {
        let key = invoice_key(tenant, label);
        let (Some(period), Some(mut inv)) = (Period::parse(label), state.invoices.get(&key).cloned()) else {
            return Ok(());
        };
        if !inv.lines.is_empty() {
            inv.version = inv.version.checked_add(1).ok_or("the invoice has no more versions")?;
            let totals = match checked_totals(&inv) {
                Ok(t) => t,
                Err(e) => {
                    debug_assert!(false, "{e}");
                    return Err(e);
                }
            };
            out.invoice(tenant, &inv, InvoiceStatus::Finalized, totals);
        }
        state.invoices.remove(&key);
        let Some(now) = Period::of_ms(at.now_ms) else { return Ok(()) };
        let next = match (period.next(), now.back(PLAN_BACKFILL_PERIODS_MAX)) {
            (Some(n), Some(floor)) => Some(n.max(floor)),
            (n, _) => n,
        };
        let Some(next) = next else { return Ok(()) };
        let has_plan = state.plans.get(tenant).is_some_and(|h| h.any_from(next.start_ms()));
        if has_plan && !state.invoices.contains_key(&invoice_key(tenant, &next.label())) {
            self.open(state, out, tenant, next, self.empty_invoice(next));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------------

/// Inputs for the conformance suite: a month (May 2026) across its boundary for `tenant-a`. Fee
/// configs (flat payout with min/max, volume-tiered deposits, graduated withdrawals in EUR, a later
/// payout version from June 1, two refused ones), a plan from May, completed transfers of each kind
/// (one clamped to the minimum, one with no config: waived), a FAILED, a CANCELLED and a PROCESSING
/// status, a duplicate completion, the ledger's answers (booked, one refused), June's first transfer
/// (its tick finalizes May and opens June for the plan), a late May completion booked in June (an
/// adjustment), an FX answer (not billing's), an unknown booking, a `tenant-b` fee in KWD, and junk.
pub fn examples(env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let at =
        |text: &str| DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).unwrap_or_default();
    let (Ok(usd_c), Ok(eur_c), Ok(kwd_c)) =
        (Currency::from_code("USD"), Currency::from_code("EUR"), Currency::from_code("KWD"))
    else {
        return Vec::new();
    };
    let usd = |minor: i64| json!(Money::new(minor, usd_c));
    let eur = |minor: i64| json!(Money::new(minor, eur_c));
    let kwd = |minor: i64| json!(Money::new(minor, kwd_c));
    let config = |v: serde_json::Value| (command_types::FEE_CONFIG_UPSERTED, v);
    let status = |id: &str, kind: &str, amount: serde_json::Value, status: &str, version: u32| {
        let cause = derived_id(&["billing-example-cause", id]).to_string();
        (
            TransferStatusChanged::EVENT_TYPE,
            json!({"transfer_id": id, "kind": kind, "amount": amount, "previous": "CONFIRMING",
                   "status": status, "version": version, "cause_event_id": cause}),
        )
    };
    let answer = |tenant: &str, id: &str, fee: Money, outcome: &str, reason: Option<&str>| {
        let mut v = json!({"booking_id": fee_booking_id(tenant, id), "purpose": "fee", "reference": id,
                           "outcome": outcome, "legs": fee_legs(fee)});
        if let Some(r) = reason {
            v["reason"] = r.into();
        }
        (BookingRecorded::EVENT_TYPE, v)
    };
    let plan_answer = |tenant: &str, period: &str, fee: Money| {
        (
            BookingRecorded::EVENT_TYPE,
            json!({"booking_id": plan_booking_id(tenant, period), "purpose": "plan", "reference": period,
                   "outcome": "booked", "legs": fee_legs(fee)}),
        )
    };
    let (usd_m, eur_m, kwd_m) =
        (|m: i64| Money::new(m, usd_c), |m: i64| Money::new(m, eur_c), |m: i64| Money::new(m, kwd_c));
    let plan_fee = usd_m(4900);
    let (a, b) = ("tenant-a", "tenant-b");
    // (time, tenant, (event type, payload))
    let steps: Vec<(&str, &str, (&str, serde_json::Value))> = vec![
        // Payout, flat: 0.25 + 0.50 %, at least 1.00, at most 25.00.
        (
            "2026-04-20T10:00:00Z",
            a,
            config(json!({"transfer_kind": "payout", "fixed": usd(25), "bps": 50,
            "min": usd(100), "max": usd(2500), "changed_by": "ops-1"})),
        ),
        // Deposit, volume tiers: 0.30 %, 0.20 % once the month reaches 10,000.00, 0.10 % from 50,000.00.
        (
            "2026-04-20T10:01:00Z",
            a,
            config(json!({"transfer_kind": "deposit", "fixed": usd(0), "bps": 30,
            "max": usd(10_000), "tiers": [{"monthly_volume_from": usd(1_000_000), "bps": 20},
            {"monthly_volume_from": usd(5_000_000), "bps": 10}], "pricing": "volume", "changed_by": "ops-1"})),
        ),
        // Withdrawal in EUR, graduated: 0.50 + 0.40 % to 5,000.00, 0.25 % to 20,000.00, 0.10 % above.
        (
            "2026-04-20T10:02:00Z",
            a,
            config(json!({"transfer_kind": "withdrawal", "fixed": eur(50), "bps": 40,
            "min": eur(50), "tiers": [{"monthly_volume_from": eur(500_000), "bps": 25},
            {"monthly_volume_from": eur(2_000_000), "bps": 10}], "pricing": "graduated", "changed_by": "ops-1"})),
        ),
        // A later payout version, from June 1: 0.30 + 0.45 %, 1.00 to 20.00.
        (
            "2026-04-20T10:03:00Z",
            a,
            config(json!({"transfer_kind": "payout", "fixed": usd(30), "bps": 45,
            "min": usd(100), "max": usd(2000), "effective_from": "2026-06-01T00:00:00Z", "changed_by": "ops-1"})),
        ),
        // Refused: min above max; tiers not ascending and in another currency.
        (
            "2026-04-20T10:04:00Z",
            a,
            config(json!({"transfer_kind": "internal", "fixed": usd(0), "bps": 10,
            "min": usd(500), "max": usd(100), "changed_by": "ops-1"})),
        ),
        (
            "2026-04-20T10:05:00Z",
            a,
            config(json!({"transfer_kind": "internal", "fixed": usd(0), "bps": 10,
            "tiers": [{"monthly_volume_from": usd(5000), "bps": 5}, {"monthly_volume_from": eur(1000), "bps": 2}],
            "changed_by": "ops-1"})),
        ),
        // tenant-b: payouts in KWD, 0.25 % (three decimals).
        (
            "2026-04-20T10:06:00Z",
            b,
            config(json!({"transfer_kind": "payout", "fixed": kwd(0), "bps": 25,
            "changed_by": "ops-2"})),
        ),
        // The growth plan from May: May's invoice opens and the plan is charged.
        (
            "2026-04-25T09:00:00Z",
            a,
            (
                command_types::BILLING_PLAN_SET,
                json!({"plan": "growth", "fee": usd(4900),
            "effective_from": "2026-05-01T00:00:00Z", "changed_by": "ops-1"}),
            ),
        ),
        ("2026-04-25T09:00:01Z", a, plan_answer(a, "2026-05", plan_fee)),
        // 1,000.00 USD payout: 0.25 + 5.00 = 5.25.
        ("2026-05-03T12:00:00Z", a, status("tr_p1", "payout", usd(100_000), "COMPLETED", 6)),
        ("2026-05-03T12:00:01Z", a, answer(a, "tr_p1", usd_m(525), "booked", None)),
        // 8,000.00 USD deposit reaches 8,000.00: 0.30 % = 24.00.
        ("2026-05-05T08:00:00Z", a, status("tr_d1", "deposit", usd(800_000), "COMPLETED", 5)),
        ("2026-05-05T08:00:01Z", a, answer(a, "tr_d1", usd_m(2400), "booked", None)),
        // 4,000.00 more reaches 12,000.00: 0.20 % on all of it = 8.00; the ledger refuses it.
        ("2026-05-10T08:00:00Z", a, status("tr_d2", "deposit", usd(400_000), "COMPLETED", 5)),
        (
            "2026-05-10T08:00:01Z",
            a,
            answer(a, "tr_d2", usd_m(800), "refused", Some("amount would overflow account billing:fees")),
        ),
        // 6,000.00 EUR withdrawal: 0.50 + 20.00 (5,000.00 at 0.40 %) + 2.50 (1,000.00 at 0.25 %) = 23.00.
        ("2026-05-12T15:00:00Z", a, status("tr_w1", "withdrawal", eur(600_000), "COMPLETED", 7)),
        ("2026-05-12T15:00:01Z", a, answer(a, "tr_w1", eur_m(2300), "booked", None)),
        // No internal config: waived.
        ("2026-05-15T10:00:00Z", a, status("tr_i1", "internal", usd(10_000), "COMPLETED", 4)),
        // No fee for these.
        ("2026-05-16T10:00:00Z", a, status("tr_p2", "payout", usd(30_000), "FAILED", 6)),
        ("2026-05-16T11:00:00Z", a, status("tr_p3", "payout", usd(30_000), "CANCELLED", 3)),
        ("2026-05-18T10:00:00Z", a, status("tr_p7", "payout", usd(30_000), "PROCESSING", 5)),
        // The transfers processor emits tr_p1's completion again (after a crash): charged once.
        ("2026-05-19T10:00:00Z", a, status("tr_p1", "payout", usd(100_000), "COMPLETED", 6)),
        // 50.00 USD payout: 0.25 + 0.25 = 0.50, clamped to the 1.00 minimum.
        ("2026-05-20T10:00:00Z", a, status("tr_p4", "payout", usd(5000), "COMPLETED", 6)),
        ("2026-05-20T10:00:01Z", a, answer(a, "tr_p4", usd_m(100), "booked", None)),
        // tenant-b: 12.345 KWD payout: 0.25 % = 30.8625 fils, rounded half-even to 31 fils.
        ("2026-05-21T10:00:00Z", b, status("tb_p1", "payout", kwd(12_345), "COMPLETED", 6)),
        ("2026-05-21T10:00:01Z", b, answer(b, "tb_p1", kwd_m(31), "booked", None)),
        // June 3: 2,000.00 USD payout priced with June's version: 0.30 + 9.00 = 9.30. Its tick closes May
        // (period end + 1 day) and opens June, charging the plan.
        ("2026-06-03T09:00:00Z", a, status("tr_p6", "payout", usd(200_000), "COMPLETED", 6)),
        ("2026-06-03T09:00:01Z", a, answer(a, "tr_p6", usd_m(930), "booked", None)),
        ("2026-06-03T09:00:02Z", a, plan_answer(a, "2026-06", plan_fee)),
        // Late: a payout that completed on May 31 arrives now, priced with May's version (0.25 + 1.50),
        // booked after May closed: an adjustment on June's invoice naming it.
        ("2026-05-31T23:30:00Z", a, status("tr_p5", "payout", usd(30_000), "COMPLETED", 6)),
        ("2026-05-31T23:30:01Z", a, answer(a, "tr_p5", usd_m(175), "booked", None)),
        // FX's answer (not billing's); an answer nobody asked for.
        (
            "2026-06-04T10:00:00Z",
            a,
            (
                BookingRecorded::EVENT_TYPE,
                json!({"booking_id": "fx-conv-1",
            "purpose": "fx_conversion", "reference": "conv_1", "outcome": "booked", "legs": []}),
            ),
        ),
        ("2026-06-04T10:01:00Z", a, answer(a, "tr_nope", usd_m(100), "booked", None)),
        // Junk: a negative amount, a plan name too long, fields nobody knows, no rule.
        ("2026-06-04T10:02:00Z", a, status("tr_bad", "payout", usd(-5), "COMPLETED", 6)),
        (
            "2026-06-04T10:03:00Z",
            a,
            (
                command_types::BILLING_PLAN_SET,
                json!({"plan": "x".repeat(80),
            "fee": usd(100), "changed_by": "ops-1"}),
            ),
        ),
        (
            "2026-06-04T10:04:00Z",
            a,
            config(json!({"transfer_kind": "payout", "fixed": usd(1), "bps": 1,
            "surprise": true, "changed_by": "ops-1"})),
        ),
        ("2026-06-04T10:05:00Z", a, ("billing.unheard_of", json!({}))),
    ];
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (time, tenant, (event_type, payload)))| {
            let id = derived_id(&["billing-example", &i.to_string()]);
            let source = if event_type.starts_with("billing.") { "api" } else { "riverbank" };
            Envelope::new(id, event_type, tenant, env, at(time), source, payload)
        })
        .collect()
}

#[cfg(test)]
#[path = "billing_tests.rs"]
mod tests;
