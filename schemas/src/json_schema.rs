//! JSON Schema files generated from the types. `schemas/json/*.json` are checked in and a test keeps
//! them equal to what the types generate (regenerate with `RIVERBANK_BLESS=1 cargo test -p riverbank-schemas`).
use crate::commands::{
    FeeConfigUpserted, FxConversionRequested, FxQuoteRequested, FxRatesPublished, KycReviewDecided,
    KycUserActionRequested,
};
use crate::kyc::{KycInputRejected, UserKycChanged};
use crate::transfers::{
    BalanceChanged, InputRejected, LedgerPosting, ProviderStatus, RiskDecided, ScreeningRequested,
    TransferAction, TransferDecision, TransferPolicySet, TransferRequested, TransferStatusChanged,
};
use crate::volume::VolumeWindowClosed;
use crate::{AuditRecord, DeadLetter, Envelope, Money, WebhookReceived};

/// (file name, pretty JSON) for every published schema.
pub fn generated() -> Vec<(&'static str, String)> {
    fn render<T: schemars::JsonSchema>() -> String {
        let schema = schemars::schema_for!(T);
        let mut text =
            serde_json::to_string_pretty(&schema).unwrap_or_else(|e| panic!("schema serializes: {e}"));
        text.push('\n');
        text
    }
    vec![
        ("envelope.webhook_received.v1.json", render::<Envelope<WebhookReceived>>()),
        ("envelope.audit_recorded.v2.json", render::<Envelope<AuditRecord>>()),
        ("envelope.audit_checkpoint_signed.v1.json", render::<Envelope<crate::AuditCheckpoint>>()),
        ("envelope.audit_action_taken.v1.json", render::<Envelope<crate::AuditAction>>()),
        ("dead_letter.v1.json", render::<DeadLetter>()),
        ("money.json", render::<Money>()),
        ("envelope.transfer_requested.v1.json", render::<Envelope<TransferRequested>>()),
        ("envelope.transfer_decision.v1.json", render::<Envelope<TransferDecision>>()),
        ("envelope.transfer_action.v1.json", render::<Envelope<TransferAction>>()),
        ("envelope.provider_transfer_status.v1.json", render::<Envelope<ProviderStatus>>()),
        ("envelope.risk_decided.v1.json", render::<Envelope<RiskDecided>>()),
        ("envelope.transfer_policy_set.v1.json", render::<Envelope<TransferPolicySet>>()),
        ("envelope.transfer_status_changed.v1.json", render::<Envelope<TransferStatusChanged>>()),
        ("envelope.ledger_posting.v1.json", render::<Envelope<LedgerPosting>>()),
        ("envelope.balance_changed.v1.json", render::<Envelope<BalanceChanged>>()),
        ("envelope.transfer_input_rejected.v1.json", render::<Envelope<InputRejected>>()),
        ("envelope.fx_quote_requested.v1.json", render::<Envelope<FxQuoteRequested>>()),
        ("envelope.fx_conversion_requested.v1.json", render::<Envelope<FxConversionRequested>>()),
        ("envelope.fx_rates_published.v1.json", render::<Envelope<FxRatesPublished>>()),
        ("envelope.fee_config_upserted.v1.json", render::<Envelope<FeeConfigUpserted>>()),
        ("envelope.kyc_user_action_requested.v1.json", render::<Envelope<KycUserActionRequested>>()),
        ("envelope.kyc_review_decided.v1.json", render::<Envelope<KycReviewDecided>>()),
        ("envelope.volume_window_closed.v1.json", render::<Envelope<VolumeWindowClosed>>()),
        ("envelope.transfer_screening_requested.v1.json", render::<Envelope<ScreeningRequested>>()),
        ("envelope.risk_review_decided.v1.json", render::<Envelope<crate::risk::RiskReviewDecided>>()),
        ("envelope.risk_decision_recorded.v1.json", render::<Envelope<crate::risk::DecisionRecorded>>()),
        ("envelope.risk_input_rejected.v1.json", render::<Envelope<crate::risk::RiskInputRejected>>()),
        ("envelope.user_kyc_updated.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.user_verified.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.user_frozen.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.user_unfrozen.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.user_closed.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.user_kyc_expiring.v1.json", render::<Envelope<UserKycChanged>>()),
        ("envelope.kyc_input_rejected.v1.json", render::<Envelope<KycInputRejected>>()),
        ("envelope.fx_conversion_decided.v1.json", render::<Envelope<crate::fx::FxConversionDecided>>()),
        ("envelope.fx_quote_recorded.v1.json", render::<Envelope<crate::fx::QuoteRecorded>>()),
        ("envelope.fx_conversion_recorded.v1.json", render::<Envelope<crate::fx::ConversionRecorded>>()),
        ("envelope.fx_input_rejected.v1.json", render::<Envelope<crate::fx::FxInputRejected>>()),
        ("envelope.billing_plan_set.v1.json", render::<Envelope<crate::billing::BillingPlanSet>>()),
        ("envelope.billing_fee_charged.v1.json", render::<Envelope<crate::billing::FeeCharged>>()),
        ("envelope.billing_invoice_recorded.v1.json", render::<Envelope<crate::billing::InvoiceRecorded>>()),
        (
            "envelope.billing_input_rejected.v1.json",
            render::<Envelope<crate::billing::BillingInputRejected>>(),
        ),
        ("envelope.ledger_booking_requested.v1.json", render::<Envelope<crate::ledger::BookingRequested>>()),
        ("envelope.ledger_booking_recorded.v1.json", render::<Envelope<crate::ledger::BookingRecorded>>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn checked_in_schemas_equal_generated() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let bless = std::env::var_os("RIVERBANK_BLESS").is_some();
        for (name, text) in generated() {
            let path = dir.join(name);
            if bless {
                std::fs::write(&path, &text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} differs from the generated schema; run RIVERBANK_BLESS=1 cargo test -p riverbank-schemas",
                path.display()
            );
        }
    }
}
