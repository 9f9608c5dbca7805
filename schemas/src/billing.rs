//! The billing processor's contract (processors/src/billing.rs): fee configs, fees, plans, invoices.
//!
//! **Inputs** (all keyed by tenant, routed into `{env}.billing.inputs`): `billing.fee_config_upserted`
//! and `billing.plan_set` from `{env}.billing.commands`; `transfer.status_changed` from the status
//! topic (only COMPLETED matters); `ledger.booking_recorded` (purpose `fee` or `plan`) from
//! `{env}.ledger.bookings`. Time: the partition's ticks close periods.
//!
//! **Fee configs** per (tenant, transfer kind, currency) are versioned: each upsert takes effect at its
//! `effective_from` (default: the command's time) and the config in force at a transfer's completion
//! time (its status event's `occurred_at`) prices it. Fee = fixed + amount × bps / 10,000, where with
//! tiers the bps depend on the tenant's volume of that kind and currency in the calendar month (UTC)
//! before this transfer: `volume` pricing applies the tier the month's volume reaches (including this
//! transfer) to the whole amount; `graduated` pricing splits the amount across tiers at each tier's
//! bps. The percentage part is rounded once (the configured mode, at the currency's precision), then the
//! fee is clamped to [min, max]. A fee of zero (or no config) is `waived`: recorded, nothing booked.
//!
//! **Money.** A fee is booked as `billing:receivable` −fee, `billing:fees` +fee (booking id derived
//! from the tenant and transfer, so a replay or redelivery charges once; the ledger refuses a booking
//! id twice). A plan's fee is booked the same way once per period. An invoice counts a fee or plan
//! charge only once the ledger answered `booked`: an invoice is a view over fee legs.
//!
//! **Invoices** per (tenant, calendar month UTC), id `inv_{YYYY-MM}`: `draft` while open, `finalized`
//! when the partition's clock passes period end + `billing.lateness_ms` (a timer). Lines: `usage` per
//! (transfer kind, currency) with count and sum; `plan`; `adjustment` for fees whose transfer completed
//! in an already finalized period (grouped per source period, kind and currency, naming them). Invoice
//! totals per currency = Σ lines = Σ fee legs booked for it (asserted here and in `riverbank reconcile`).
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rounding::RoundingMode;
use crate::{Money, TransferKind};

/// Most tiers in one fee config.
pub const FEE_TIERS_MAX: usize = 16;
/// Most lines on one invoice (adjustments beyond it are folded into the last adjustment line).
pub const INVOICE_LINES_MAX: usize = 256;
/// Transfer ids an adjustment line names (the count covers the rest).
pub const ADJUSTMENT_SOURCES_NAMED_MAX: usize = 20;
/// Longest plan name, in bytes.
pub const PLAN_NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TierPricing {
    /// The tier the month's volume reaches applies to the whole amount.
    #[default]
    Volume,
    /// Each part of the amount is priced at the tier its slice of the month's volume falls in.
    Graduated,
}

impl TierPricing {
    pub fn as_str(self) -> &'static str {
        match self {
            TierPricing::Volume => "volume",
            TierPricing::Graduated => "graduated",
        }
    }
}

/// `billing.plan_set` (command, `POST /v1/billing/plan`): the tenant's subscription plan from a time
/// on; a fee of zero ends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingPlanSet {
    pub plan: String,
    /// Charged once per calendar month the plan is in force at the month's start (or starts in).
    pub fee: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<DateTime<Utc>>,
    pub changed_by: String,
}

impl BillingPlanSet {
    pub const EVENT_TYPE: &'static str = "billing.plan_set";
}

/// One slice of a fee's percentage part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeePart {
    /// The part of the transfer's amount priced at `bps`.
    pub amount: Money,
    pub bps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeeStatus {
    /// Sent to the ledger.
    Booking,
    /// Posted: counted on `invoice_id`.
    Booked,
    /// The ledger refused it (the reason says why).
    Refused,
    /// Zero, or no config: nothing booked.
    Waived,
}

impl FeeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FeeStatus::Booking => "booking",
            FeeStatus::Booked => "booked",
            FeeStatus::Refused => "refused",
            FeeStatus::Waived => "waived",
        }
    }
}

/// `billing.fee_charged` (on `billing.events`): one transfer's fee, how it was computed, and where it
/// went (version +1 per change: booking → booked or refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeeCharged {
    pub transfer_id: String,
    pub transfer_kind: TransferKind,
    pub transfer_amount: Money,
    /// The transfer's completion time (event time): picks the config and the period.
    pub completed_at: DateTime<Utc>,
    /// `YYYY-MM` of `completed_at`.
    pub period: String,
    pub fee: Money,
    pub status: FeeStatus,
    pub version: u32,
    /// The config that priced it: `{effective_from}/{event id of its upsert}`; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    pub pricing: TierPricing,
    /// The month's volume of this kind and currency before this transfer.
    pub monthly_volume_before: Money,
    pub fixed: Money,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<FeePart>,
    /// fixed + Σ parts, exact, in minor units (decimal text), before rounding and clamping.
    pub exact: String,
    /// `min` or `max` when the clamp changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped: Option<String>,
    pub rounding: RoundingMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<String>,
    /// The invoice it is counted on (once booked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// Counted as an adjustment on a later invoice (its own period had closed).
    pub adjustment: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FeeCharged {
    pub const EVENT_TYPE: &'static str = "billing.fee_charged";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Usage,
    Plan,
    Adjustment,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Plan => "plan",
            LineKind::Adjustment => "adjustment",
        }
    }
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceLine {
    /// Stable within the invoice: `usage/{kind}/{currency}`, `plan/{plan}`, `adjustment/{period}/{kind}/{currency}`.
    pub line_id: String,
    pub kind: LineKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_kind: Option<TransferKind>,
    pub description: String,
    /// Fees (or plan charges) counted.
    pub count: u64,
    pub amount: Money,
    /// An adjustment's source period (`YYYY-MM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_period: Option<String>,
    /// An adjustment's transfers (at most [`ADJUSTMENT_SOURCES_NAMED_MAX`] named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Finalized,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized => "finalized",
        }
    }
}

/// `billing.invoice_recorded` (on `billing.events`): the whole invoice after each change (version +1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRecorded {
    pub invoice_id: String,
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Period end + `billing.lateness_ms`: when the partition's clock finalizes it.
    pub closes_at: DateTime<Utc>,
    pub status: InvoiceStatus,
    pub version: u32,
    pub lines: Vec<InvoiceLine>,
    /// Per currency: Σ lines of that currency.
    pub totals: Vec<Money>,
}

impl InvoiceRecorded {
    pub const EVENT_TYPE: &'static str = "billing.invoice_recorded";
}

/// `billing.input_rejected` (on `billing.events`): an input that changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingInputRejected {
    pub input_event_id: Uuid,
    pub input_event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    pub reason: String,
}

impl BillingInputRejected {
    pub const EVENT_TYPE: &'static str = "billing.input_rejected";
}

/// `YYYY-MM` of an instant (UTC).
pub fn period_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// The invoice id of a period.
pub fn invoice_id(period: &str) -> String {
    format!("inv_{period}")
}
