//! Command payloads tenants send through the API (transfer commands reuse [`crate::transfers`]), and the
//! fixed-point rate type FX uses. Amounts are [`Money`]; rates are integers scaled by 10^9. No floats.
//! Every amount a command carries (a transfer's, a quote's sell or buy amount, a fee's fixed, min, max
//! and tier thresholds) is at most [`crate::money::AMOUNT_MINOR_MAX`] minor units: the edge refuses more.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Currency, Money, TransferKind};

/// Decimal places a rate may have: rates are stored as `rate_e9` (rate × 10^9).
pub const RATE_DECIMALS: u32 = 9;

/// Parse a positive decimal rate ("1.0845") into units of 10^-9. At most 9 decimal places, no sign, no
/// exponent; zero is refused.
pub fn parse_rate_e9(text: &str) -> Option<i64> {
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (text, ""),
    };
    if int_part.is_empty()
        || int_part.len() > 9
        || frac_part.len() > RATE_DECIMALS as usize
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: i64 = int_part.parse().ok()?;
    let mut frac: i64 = if frac_part.is_empty() { 0 } else { frac_part.parse().ok()? };
    for _ in frac_part.len()..RATE_DECIMALS as usize {
        frac *= 10;
    }
    let v = int.checked_mul(1_000_000_000)?.checked_add(frac)?;
    (v > 0).then_some(v)
}

/// `fx.quote_requested`: a tenant asks for a quote; exactly one of the amounts is fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxQuoteRequested {
    pub quote_id: String,
    pub sell_currency: Currency,
    pub buy_currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sell_amount: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buy_amount: Option<Money>,
    pub requested_by: String,
}

/// `fx.conversion_requested`: execute a conversion against a quote (only a live one will execute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxConversionRequested {
    pub conversion_id: String,
    pub quote_id: String,
    /// The tenant account sold from.
    pub source_account: String,
    /// The tenant account credited (default: `source_account`; balances are per currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_account: Option<String>,
    pub requested_by: String,
}

/// One mid rate: 1 `base` = `rate_e9` / 10^9 `quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxRate {
    pub base: Currency,
    pub quote: Currency,
    pub rate_e9: i64,
}

/// `fx.rates_published`: a rates provider publishes mid rates observed at `as_of`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxRatesPublished {
    pub as_of: DateTime<Utc>,
    pub rates: Vec<FxRate>,
    pub published_by: String,
}

/// A volume tier: from this monthly volume (inclusive) on, `bps` applies instead of the base rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeeTier {
    pub monthly_volume_from: Money,
    pub bps: u32,
}

/// `billing.fee_config_upserted`: the fee for one transfer kind: fixed + basis points, clamped to
/// [min, max], optionally tiered by monthly volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeeConfigUpserted {
    pub transfer_kind: TransferKind,
    pub fixed: Money,
    pub bps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Money>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<FeeTier>,
    /// How tiers price an amount (`volume`: the reached tier for all of it; `graduated`: per slice).
    #[serde(default)]
    pub pricing: crate::billing::TierPricing,
    /// When this version takes effect (default: the command's time). Transfers completing at or after
    /// it (event time) are priced with it until a later version takes effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<DateTime<Utc>>,
    pub changed_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KycUserAction {
    Freeze,
    Unfreeze,
    Close,
}

impl KycUserAction {
    pub fn as_str(self) -> &'static str {
        match self {
            KycUserAction::Freeze => "freeze",
            KycUserAction::Unfreeze => "unfreeze",
            KycUserAction::Close => "close",
        }
    }
}

/// `kyc.user_action_requested`: an admin freezes, unfreezes or closes a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KycUserActionRequested {
    /// Pseudonymous user id.
    pub user_id: String,
    pub action: KycUserAction,
    pub reason: String,
    pub actor: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    Approved,
    Rejected,
}

/// `kyc.review_decided`: the manual decision on a case a vendor sent to review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KycReviewDecided {
    pub case_id: String,
    pub decision: ReviewDecision,
    /// KYC tier granted (0–3), with an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub actor: String,
}

/// Event types of the commands above.
pub mod command_types {
    pub const FX_QUOTE_REQUESTED: &str = "fx.quote_requested";
    pub const FX_CONVERSION_REQUESTED: &str = "fx.conversion_requested";
    pub const FX_RATES_PUBLISHED: &str = "fx.rates_published";
    pub const FEE_CONFIG_UPSERTED: &str = "billing.fee_config_upserted";
    pub const FX_CONVERSION_DECIDED: &str = "fx.conversion_decided";
    pub const BILLING_PLAN_SET: &str = "billing.plan_set";
    pub const KYC_USER_ACTION_REQUESTED: &str = "kyc.user_action_requested";
    pub const KYC_REVIEW_DECIDED: &str = "kyc.review_decided";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_exactly() {
        assert_eq!(parse_rate_e9("1.0845"), Some(1_084_500_000));
        assert_eq!(parse_rate_e9("83"), Some(83_000_000_000));
        assert_eq!(parse_rate_e9("0.000000001"), Some(1));
        for bad in ["0", "0.0", "-1", "1.", ".5", "1e3", "1.0000000001", "NaN", "", "1234567890.1"] {
            assert_eq!(parse_rate_e9(bad), None, "{bad}");
        }
    }
}
