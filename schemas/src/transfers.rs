//! Transfer events: the commands and callbacks that drive a transfer, and what the transfers processor
//! emits. Every input goes to one per-environment topic (`{env}.transfers.inputs`, keyed by tenant) so a
//! partition is a single, totally ordered history: replays see inputs in the same order.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Money;

/// `INITIATED → VALIDATING → PENDING | REJECTED`; `PENDING → COMPLIANCE_CHECK → APPROVED | BLOCKED`;
/// `APPROVED → PROCESSING → CONFIRMING → COMPLETED | FAILED`; `PROCESSING → FAILED`; `FAILED → PENDING`;
/// `BLOCKED | REJECTED → CANCELLED`. `COMPLETED` and `CANCELLED` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransferStatus {
    Initiated,
    Validating,
    Pending,
    Rejected,
    ComplianceCheck,
    Approved,
    Blocked,
    Processing,
    Confirming,
    Completed,
    Failed,
    Cancelled,
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 12] = {
        use TransferStatus::*;
        [
            Initiated,
            Validating,
            Pending,
            Rejected,
            ComplianceCheck,
            Approved,
            Blocked,
            Processing,
            Confirming,
            Completed,
            Failed,
            Cancelled,
        ]
    };

    /// The wire name (as serialized), e.g. `COMPLIANCE_CHECK`.
    pub fn as_str(self) -> &'static str {
        use TransferStatus::*;
        match self {
            Initiated => "INITIATED",
            Validating => "VALIDATING",
            Pending => "PENDING",
            Rejected => "REJECTED",
            ComplianceCheck => "COMPLIANCE_CHECK",
            Approved => "APPROVED",
            Blocked => "BLOCKED",
            Processing => "PROCESSING",
            Confirming => "CONFIRMING",
            Completed => "COMPLETED",
            Failed => "FAILED",
            Cancelled => "CANCELLED",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, TransferStatus::Completed | TransferStatus::Cancelled)
    }

    /// Whether `self → next` is an edge of the state machine.
    pub fn can_move_to(self, next: TransferStatus) -> bool {
        use TransferStatus::*;
        matches!(
            (self, next),
            (Initiated, Validating)
                | (Validating, Pending)
                | (Validating, Rejected)
                | (Pending, ComplianceCheck)
                | (ComplianceCheck, Approved)
                | (ComplianceCheck, Blocked)
                | (Approved, Processing)
                | (Processing, Confirming)
                | (Processing, Failed)
                | (Confirming, Completed)
                | (Confirming, Failed)
                | (Failed, Pending)
                | (Blocked, Cancelled)
                | (Rejected, Cancelled)
        )
    }

    /// Whether funds are held (reserved) in this status.
    pub fn holds_funds(self) -> bool {
        use TransferStatus::*;
        matches!(self, Pending | ComplianceCheck | Approved | Processing | Confirming)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Money arrives from outside: external → destination.
    Deposit,
    /// Money leaves to the owner's own external account: source → external.
    Withdrawal,
    /// Between two accounts of the tenant.
    Internal,
    /// Money leaves to a third-party payee: source → external.
    Payout,
}

impl TransferKind {
    /// The wire name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Deposit => "deposit",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Internal => "internal",
            TransferKind::Payout => "payout",
        }
    }
}

/// `transfer.requested`: create a transfer. Accounts are tenant-scoped owner ids (`acct_…`); the
/// outside world is the tenant's `external` account, which is allowed to go negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequested {
    pub transfer_id: String,
    pub kind: TransferKind,
    pub amount: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_account: Option<String>,
    /// Pseudonymous actor id of the requester (maker).
    pub requested_by: String,
    /// The tenant's end user whose money moves (pseudonymous, as the KYC vendors know them): risk
    /// scoring screens the transfer against this user's KYC status, tier and velocity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The other party (payee, payer, wallet), for sanctions, jurisdiction and counterparty velocity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<Counterparty>,
    /// The provider executing the transfer and its reference for it: the provider's status callbacks
    /// find the transfer by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// The other party of a transfer. Its name never travels in clear: the edge turns it into
/// `name_keys` (keyed digests of its normalized forms, `risk::name_keys`), which sanctions lists are
/// matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counterparty {
    /// The counterparty's id at the tenant or provider (payee id, wallet address, account number token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// ISO 3166-1 alpha-2 country (upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Keyed digests of the normalized name (see `risk::name_keys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_keys: Vec<String>,
}

/// A provider's reference for a transfer it executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalRef {
    /// The provider definition's name (`acmepay`, `chainwatch`).
    pub provider: String,
    /// The provider's id for the transfer (a deposit id, a payout id, a transaction hash).
    pub reference: String,
}

/// `transfer.screening_requested`: a transfer reached COMPLIANCE_CHECK (on request, or again after a
/// retry) and waits for risk scoring. Carries everything the rules read, so risk needs no other copy
/// of the transfer. Emitted on `transfers.screening`, keyed by tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScreeningRequested {
    pub transfer_id: String,
    pub kind: TransferKind,
    pub amount: Money,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub source_account: String,
    pub destination_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<Counterparty>,
    /// The transfer's version when it entered COMPLIANCE_CHECK: a retry screens again under a new one.
    pub version: u32,
    /// Whether the tenant's policy also needs a human approval (maker–checker) for it.
    pub needs_approval: bool,
}

impl ScreeningRequested {
    pub const EVENT_TYPE: &'static str = "transfer.screening_requested";
}

/// A human decision on a transfer (maker–checker): `transfer.approved` / `transfer.approval_rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferDecision {
    pub transfer_id: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `transfer.cancel_requested` / `transfer.retry_requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferAction {
    pub transfer_id: String,
    pub actor: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderTransferStatus {
    Processing,
    Confirming,
    Completed,
    Failed,
}

/// `provider.transfer_status`: a provider's callback about a transfer it is executing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderStatus {
    pub transfer_id: String,
    pub status: ProviderTransferStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a provider's transfer status callback says (a provider definition's `[transfers.callbacks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    /// The provider has the transfer (a deposit arrived, a payout was accepted): no status move; may
    /// create a deposit for a reference riverbank does not know, when the definition says so.
    Received,
    Processing,
    Confirming,
    Completed,
    Failed,
}

impl CallbackStatus {
    /// The status it moves a transfer towards (`Received` moves nothing).
    pub fn moves_to(self) -> Option<ProviderTransferStatus> {
        match self {
            CallbackStatus::Received => None,
            CallbackStatus::Processing => Some(ProviderTransferStatus::Processing),
            CallbackStatus::Confirming => Some(ProviderTransferStatus::Confirming),
            CallbackStatus::Completed => Some(ProviderTransferStatus::Completed),
            CallbackStatus::Failed => Some(ProviderTransferStatus::Failed),
        }
    }
}

/// A provider webhook's meaning for a transfer (`WebhookReceived.transfer_callback`), resolved at the
/// edge from the provider definition's `[transfers]` declaration and `[fields]`: the transfers
/// processor needs no provider-specific code. Values the definition names that could not be resolved
/// (missing, unparsable, unknown currency) are listed in `problems`; the processor rejects such a
/// callback with them as the reason (`transfer.input_rejected`), so nothing signed is dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferCallback {
    pub status: CallbackStatus,
    /// The kind of transfer the callback is about, when the definition says (`deposit.*`: deposit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TransferKind>,
    /// A `received` callback for a reference riverbank does not know creates a deposit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creates_deposit: bool,
    /// The provider's reference for the transfer (its `ExternalRef.reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The amount the provider states, at the currency's precision (absent when the definition
    /// declares no amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    /// For a created deposit: the account credited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_account: Option<String>,
    /// For a created deposit: the end user (pseudonymous id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The provider's failure or status code, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why values the definition names could not be resolved; non-empty: the callback is rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskOutcome {
    Approve,
    Review,
    Block,
}

/// `risk.decided`: the screening result for a transfer (score and reasons kept for audit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskDecided {
    pub transfer_id: String,
    pub decision: RiskOutcome,
    pub score: u32,
    pub reasons: Vec<String>,
    pub rule_set_version: String,
    /// The compliance officer whose manual review made this decision (absent: the rules decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
}

/// `tenant.transfer_policy_set`: per-tenant rules the transfers processor enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferPolicySet {
    /// Amounts strictly above these (per currency) need an approval by someone other than the requester.
    #[serde(default)]
    pub approval_thresholds: Vec<Money>,
    /// Accounts allowed to go below zero (besides `external`).
    #[serde(default)]
    pub overdraft_accounts: Vec<String>,
}

/// Every input the transfers processor understands, by `event_type`.
pub mod input_types {
    pub const REQUESTED: &str = "transfer.requested";
    pub const APPROVED: &str = "transfer.approved";
    pub const APPROVAL_REJECTED: &str = "transfer.approval_rejected";
    pub const CANCEL_REQUESTED: &str = "transfer.cancel_requested";
    pub const RETRY_REQUESTED: &str = "transfer.retry_requested";
    pub const PROVIDER_STATUS: &str = "provider.transfer_status";
    pub const RISK_DECIDED: &str = "risk.decided";
    pub const POLICY_SET: &str = "tenant.transfer_policy_set";
}

/// `transfer.status_changed`: the single source of a transfer's status (topic `transactions.update.status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferStatusChanged {
    pub transfer_id: String,
    pub kind: TransferKind,
    pub amount: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<TransferStatus>,
    pub status: TransferStatus,
    /// Position in this transfer's history: 1 for INITIATED, +1 per change. Projections apply only
    /// higher versions, so a replayed or late event never moves a row backwards.
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The input that caused the change.
    pub cause_event_id: Uuid,
}

impl TransferStatusChanged {
    pub const EVENT_TYPE: &'static str = "transfer.status_changed";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostingPhase {
    /// Funds reserved: moves between `available` and the pending columns.
    Hold,
    /// Funds moved for good.
    Post,
    /// A hold given back.
    Release,
}

impl PostingPhase {
    /// The wire name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            PostingPhase::Hold => "hold",
            PostingPhase::Post => "post",
            PostingPhase::Release => "release",
        }
    }
}

/// One leg of a double-entry posting. The legs of one posting id sum to zero per currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerPosting {
    pub posting_id: Uuid,
    pub transfer_id: String,
    pub phase: PostingPhase,
    pub account: String,
    /// Signed: negative debits the account, positive credits it.
    pub amount_minor: i64,
    pub currency: crate::Currency,
}

impl LedgerPosting {
    pub const EVENT_TYPE: &'static str = "ledger.posting";
}

/// An account's balances after a change. `available = posted - pending_debit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceChanged {
    pub account: String,
    pub currency: crate::Currency,
    pub posted_minor: i64,
    pub pending_debit_minor: i64,
    pub pending_credit_minor: i64,
    pub available_minor: i64,
    /// +1 per change of this account; projections keep the highest.
    pub version: u64,
}

impl BalanceChanged {
    pub const EVENT_TYPE: &'static str = "balance.changed";
}

/// `transfer.input_rejected`: an input that was not applied, and why (illegal transition, unknown
/// transfer, insufficient funds at request time is a REJECTED status instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRejected {
    pub input_event_id: Uuid,
    pub input_event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

impl InputRejected {
    pub const EVENT_TYPE: &'static str = "transfer.input_rejected";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for s in TransferStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("serializes"), s.as_str());
        }
        for k in
            [TransferKind::Deposit, TransferKind::Withdrawal, TransferKind::Internal, TransferKind::Payout]
        {
            assert_eq!(serde_json::to_value(k).expect("serializes"), k.as_str());
        }
        for p in [PostingPhase::Hold, PostingPhase::Post, PostingPhase::Release] {
            assert_eq!(serde_json::to_value(p).expect("serializes"), p.as_str());
        }
    }
}
