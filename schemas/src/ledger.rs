//! Bookings: how other domains move money through the ledger (ARCHITECTURE.md, "Money between
//! processors"). FX and billing emit a `ledger.booking_requested` into `transfers.inputs` (keyed by
//! tenant, id derived from their own input); the transfers processor, the one place balances change,
//! applies its legs all-or-nothing as one posting (phase `post`, `transfer_id` = the booking id) and
//! answers with one `ledger.booking_recorded` on `ledger.bookings` (booked or refused, with the reason),
//! which the requester routes back into its log (a saga: it records what it asked for and reacts to the
//! answer).
//!
//! Platform accounts. Names starting with [`PLATFORM_ACCOUNT_PREFIXES`] belong to the platform: a
//! tenant's transfer may not name them, and only bookings write them. [`OVERDRAFT_PLATFORM_ACCOUNTS`]
//! may go below zero (the FX desk's position, rounding residue, and what tenants owe for fees).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Money;

/// The FX desk: takes the sold currency, pays the bought one (at the mid rate). May go negative.
pub const FX_DESK_ACCOUNT: &str = "fx:desk";
/// FX markup revenue (the spread between mid and the customer's rate), in the bought currency.
pub const FX_FEES_ACCOUNT: &str = "fx:fees";
/// FX rounding residue: every minor unit that rounding moves. May go negative.
pub const FX_RESIDUE_ACCOUNT: &str = "fx:residue";
/// What a tenant owes the platform for fees and plans (invoiced). May go negative.
pub const BILLING_RECEIVABLE_ACCOUNT: &str = "billing:receivable";
/// A tenant's fee account: every fee and plan charge is credited here; an invoice is a view over it.
pub const BILLING_FEES_ACCOUNT: &str = "billing:fees";

/// Account name prefixes reserved for the platform.
pub const PLATFORM_ACCOUNT_PREFIXES: [&str; 2] = ["fx:", "billing:"];
/// Platform accounts allowed below zero.
pub const OVERDRAFT_PLATFORM_ACCOUNTS: [&str; 3] =
    [FX_DESK_ACCOUNT, FX_RESIDUE_ACCOUNT, BILLING_RECEIVABLE_ACCOUNT];
/// Most legs in one booking.
pub const BOOKING_LEGS_MAX: usize = 8;
/// Longest booking id, in bytes.
pub const BOOKING_ID_BYTES_MAX: usize = 128;

/// Whether `account` is one of the platform's (a tenant's transfer may not name it).
pub fn is_platform_account(account: &str) -> bool {
    PLATFORM_ACCOUNT_PREFIXES.iter().any(|p| account.starts_with(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BookingPurpose {
    /// An FX conversion: sell, buy, markup fee and residue legs.
    FxConversion,
    /// The fee for one completed transfer.
    Fee,
    /// A subscription plan's fee for one period.
    Plan,
}

impl BookingPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            BookingPurpose::FxConversion => "fx_conversion",
            BookingPurpose::Fee => "fee",
            BookingPurpose::Plan => "plan",
        }
    }
}

/// One leg: `amount.amount_minor` is signed (negative debits the account, positive credits it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingLeg {
    pub account: String,
    pub amount: Money,
}

/// `ledger.booking_requested` (a transfers input): post these legs at once, all or nothing. Per
/// currency the legs sum to zero; a debit of a tenant account needs that much available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingRequested {
    pub booking_id: String,
    pub purpose: BookingPurpose,
    /// What it books: the conversion id, the charged transfer's id, the plan period.
    pub reference: String,
    pub legs: Vec<BookingLeg>,
    /// The processor (and, through it, the actor) asking.
    pub requested_by: String,
}

impl BookingRequested {
    pub const EVENT_TYPE: &'static str = "ledger.booking_requested";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BookingOutcome {
    Booked,
    Refused,
}

/// `ledger.booking_recorded` (on `ledger.bookings`, keyed by tenant): what became of a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingRecorded {
    pub booking_id: String,
    pub purpose: BookingPurpose,
    pub reference: String,
    pub outcome: BookingOutcome,
    /// Why it was refused (insufficient funds, an invalid leg, an overflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub legs: Vec<BookingLeg>,
}

impl BookingRecorded {
    pub const EVENT_TYPE: &'static str = "ledger.booking_recorded";
}

/// Legs that sum to zero in every currency, or the first currency that does not.
pub fn unbalanced_currency(legs: &[BookingLeg]) -> Option<crate::Currency> {
    let mut sums: std::collections::BTreeMap<crate::Currency, i128> = Default::default();
    for l in legs {
        *sums.entry(l.amount.currency).or_default() += i128::from(l.amount.amount_minor);
    }
    sums.into_iter().find(|(_, s)| *s != 0).map(|(c, _)| c)
}
