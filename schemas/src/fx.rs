//! The FX processor's contract (processors/src/fx.rs): what it reads and what it emits.
//!
//! **Inputs.** Rates are reference data: `fx.rates_published` (crate::commands::FxRatesPublished) on
//! `{env}.fx.rates`, broadcast to every partition of the FX log (and of risk's). `POST /v1/fx/rates`
//! writes there; a rates provider's signed webhook (mapped type [`RATES_WEBHOOK_TYPE`], its `fields`
//! [`rate_fields`]) is routed to the FX processor, which republishes it as `fx.rates_published` on
//! `fx.rates` (`published_by` = `provider:{name}`), so every partition sees it at one point of its own
//! history. Tenants' `fx.quote_requested`, `fx.conversion_requested` and `fx.conversion_decided` (OTC
//! approvals) come from `{env}.fx.commands`; the ledger's answers (`ledger.booking_recorded`, purpose
//! `fx_conversion`) from `{env}.ledger.bookings`; all keyed by tenant. Time is the partition's ticks.
//!
//! **Rates.** Per pair the latest rate (by `as_of`; an older one is ignored) with its source, time and
//! version (the publication's event id). A pair (A, B) is quoted from, in this order: a direct rate
//! A/B; the inverse of B/A; a cross through the configured pivot (A/P × P/B, each leg direct or inverse).
//! A rate whose `as_of` is more than `fx.rate_age_max_ms` behind the partition's clock is stale.
//!
//! **Quotes.** `mid_e9` = B per 1 A (×10^9); the customer's rate `rate_e9` = mid × (10,000 −
//! markup_bps) / 10,000, rounded to 10^-9 with the configured mode (the markup always works against
//! the customer). Exactly one of sell or buy amount is fixed; the other is computed at its currency's
//! precision. A quote lives `fx.quote_ttl_ms` (a timer expires it) and executes once.
//!
//! **Conversions** execute against a live quote of the same tenant whose rate is not stale; otherwise a
//! rejection names why (`quote_expired`, `quote_used`, `unknown_quote`, `stale_rate`, ...). Above the
//! tenant's OTC threshold (in the sell currency) a conversion waits for an approval by someone other
//! than the requester (`fx.conversion_decided`), which must come while the quote is live. Executing
//! books, all or nothing, with S sold, B bought, M = the mid value of S in B:
//! - sell currency: `account` −S, `fx:desk` +S;
//! - buy currency: `fx:desk` −M, `destination` +B, `fx:fees` +F (the markup's value), `fx:residue` +R
//!   with R = M − B − F.
//!
//! M, B and F are each rounded once from exact values (recorded as exact decimals of minor units), so R
//! is exactly the rounding: R = (M − M*) − (B − B*) − (F − F*), where B* = S × rate. The ledger may still
//! refuse it (insufficient funds): the conversion is then `rejected` with the ledger's reason.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commands::ReviewDecision;
use crate::rounding::RoundingMode;
use crate::{Currency, Money};

/// Mapped `event_type` of a rates provider's webhook.
pub const RATES_WEBHOOK_TYPE: &str = "fx.rate";

/// The `fields` a rates provider's definition must extract.
pub mod rate_fields {
    /// Base currency code (1 base = rate quote).
    pub const BASE: &str = "base";
    /// Quote currency code.
    pub const QUOTE: &str = "quote";
    /// Decimal rate, at most 9 decimal places.
    pub const RATE: &str = "rate";
    /// RFC 3339 time the provider observed the rate.
    pub const AS_OF: &str = "as_of";
}

/// Most rates in one publication (the edge refuses more).
pub const RATES_PER_PUBLICATION_MAX: usize = 500;
/// Longest quote or conversion id, in bytes.
pub const FX_ID_BYTES_MAX: usize = 128;

/// `fx.conversion_decided` (command, `POST /v1/fx/conversions/{id}/approve|reject`): the OTC approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxConversionDecided {
    pub conversion_id: String,
    pub decision: ReviewDecision,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A rate a quote is based on: the pair as published, its source, time and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateUsed {
    pub base: Currency,
    pub quote: Currency,
    pub rate_e9: i64,
    /// Used as its inverse (the pair was published the other way round).
    pub inverted: bool,
    /// Who published it (`published_by`: a rates publisher's actor, or `provider:{name}`).
    pub source: String,
    pub as_of: DateTime<Utc>,
    /// The publication it came with: the `fx.rates_published` event id (a log position would move when
    /// a publication is re-emitted upstream).
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStatus {
    /// Live until `expires_at`.
    Issued,
    /// Not issued: the reason says why (unknown pair, stale rate, amounts).
    Refused,
    /// Its TTL passed before a conversion used it.
    Expired,
    /// A conversion executed (or is executing) against it.
    Used,
}

impl QuoteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QuoteStatus::Issued => "issued",
            QuoteStatus::Refused => "refused",
            QuoteStatus::Expired => "expired",
            QuoteStatus::Used => "used",
        }
    }
}

/// `fx.quote_recorded` (on `fx.events`): a quote's state after each change (version +1 per change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRecorded {
    pub quote_id: String,
    pub status: QuoteStatus,
    pub version: u32,
    pub sell_currency: Currency,
    pub buy_currency: Currency,
    /// The amount sold (fixed by the request, or computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sell: Option<Money>,
    /// The amount bought (fixed by the request, or computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buy: Option<Money>,
    /// Which side the request fixed: `sell` or `buy`.
    pub fixed: String,
    /// Mid rate: buy units per sell unit, ×10^9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_e9: Option<i64>,
    /// The customer's rate after markup, ×10^9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_e9: Option<i64>,
    pub markup_bps: u32,
    /// The rates it rests on (one, or two through the pivot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<RateUsed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<Currency>,
    /// The oldest `as_of` among `rates` (staleness is judged by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_as_of: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub rounding: RoundingMode,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The conversion that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<String>,
}

impl QuoteRecorded {
    pub const EVENT_TYPE: &'static str = "fx.quote_recorded";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversionStatus {
    /// Above the OTC threshold: waits for a second person's approval.
    PendingApproval,
    /// Sent to the ledger; waits for its answer.
    Booking,
    /// Booked: the legs are posted.
    Completed,
    /// Refused (the reason says why), before or by the ledger.
    Rejected,
}

impl ConversionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionStatus::PendingApproval => "pending_approval",
            ConversionStatus::Booking => "booking",
            ConversionStatus::Completed => "completed",
            ConversionStatus::Rejected => "rejected",
        }
    }
    pub fn is_final(self) -> bool {
        matches!(self, ConversionStatus::Completed | ConversionStatus::Rejected)
    }
}

/// How a conversion's amounts came out of rounding: exact values in minor units of the buy currency
/// (decimal text, never rounded) beside the booked ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionAmounts {
    pub sell: Money,
    /// B: credited to the destination.
    pub buy: Money,
    /// M: paid by the FX desk (the mid value of `sell`).
    pub mid_value: Money,
    /// F: the markup's value, to `fx:fees`.
    pub fee: Money,
    /// R = M − B − F, to `fx:residue`.
    pub residue: Money,
    /// M* = S × mid, exact, in buy minor units.
    pub mid_value_exact: String,
    /// B* = S × rate, exact, in buy minor units.
    pub buy_exact: String,
    /// F* = M* − B*, exact, in buy minor units.
    pub fee_exact: String,
}

/// `fx.conversion_recorded` (on `fx.events`): a conversion's state after each change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionRecorded {
    pub conversion_id: String,
    pub quote_id: String,
    pub status: ConversionStatus,
    pub version: u32,
    /// Tenant account sold from.
    pub account: String,
    /// Tenant account credited (may be `account`: balances are per currency).
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amounts: Option<ConversionAmounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_e9: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_e9: Option<i64>,
    pub rounding: RoundingMode,
    /// The ledger booking (its id is the posting's `transfer_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<String>,
    /// Needed a second person's approval (above the OTC threshold).
    pub otc: bool,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ConversionRecorded {
    pub const EVENT_TYPE: &'static str = "fx.conversion_recorded";
}

/// `fx.input_rejected` (on `fx.events`): an input that changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxInputRejected {
    pub input_event_id: Uuid,
    pub input_event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<String>,
    pub reason: String,
}

impl FxInputRejected {
    pub const EVENT_TYPE: &'static str = "fx.input_rejected";
}

/// Input (command) event types the FX processor reads besides rates and bookings.
pub mod input_types {
    pub const QUOTE_REQUESTED: &str = crate::commands::command_types::FX_QUOTE_REQUESTED;
    pub const CONVERSION_REQUESTED: &str = crate::commands::command_types::FX_CONVERSION_REQUESTED;
    pub const CONVERSION_DECIDED: &str = crate::commands::command_types::FX_CONVERSION_DECIDED;
    pub const RATES_PUBLISHED: &str = crate::commands::command_types::FX_RATES_PUBLISHED;
}

/// `fx.rates_published` payload again, for the processor's republication of a provider's rate.
pub use crate::commands::{FxRate, FxRatesPublished};
