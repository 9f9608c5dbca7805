//! The KYC lifecycle's contract: what the KYC processor (processors/src/kyc.rs) reads and what it emits
//! on `{env}.kyc.events` (keyed by tenant). Risk scoring reads these events; the sinks project them.
//!
//! **Inputs.** KYC vendor results arrive as `webhook.received` whose mapped `event_type` is one of
//! [`input_types`], with the values the provider definition extracts at the edge in `fields` (see
//! [`fields`]); admin commands are `kyc.user_action_requested` and `kyc.review_decided`
//! (crate::commands). Time is the partition's ticks (expiry and its reminder).
//!
//! **States.** Per (tenant, user): a [`UserStatus`], a [`KycStatus`], a tier 0–3 (DOMAIN.md: 1 after
//! PAN + selfie, 2 after Aadhaar/address, 3 full + bank) and when the approval expires. A user is
//! `pending` until a KYC approval makes it `active`; an active user whose approval expires or is revoked
//! is `suspended` until a new approval; `frozen` and `closed` are admin decisions (unfreeze restores what
//! the KYC state gives; closed is final). An expired KYC keeps the tier it had reached, but the tier is
//! usable only while the KYC is approved: read [`UserKycChanged::usable_tier`].
//!
//! No personal data anywhere here: user and case ids are the vendors' pseudonymous ids; reasons are the
//! vendors' codes, the processor's words, or an admin's reason as the command gave it.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The highest KYC tier (maximum limits).
pub const TIER_MAX: u8 = 3;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Known, never verified.
    #[default]
    Pending,
    /// Verified (KYC approved).
    Active,
    /// Was active; its approval expired or was revoked. A new approval makes it active again.
    Suspended,
    /// An admin froze it: cannot move money. Only unfreeze leaves it.
    Frozen,
    /// An admin closed it. Final.
    Closed,
}

impl UserStatus {
    pub const ALL: [UserStatus; 5] = [
        UserStatus::Pending,
        UserStatus::Active,
        UserStatus::Suspended,
        UserStatus::Frozen,
        UserStatus::Closed,
    ];

    /// The wire name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Pending => "pending",
            UserStatus::Active => "active",
            UserStatus::Suspended => "suspended",
            UserStatus::Frozen => "frozen",
            UserStatus::Closed => "closed",
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KycStatus {
    #[default]
    NotStarted,
    /// A case was submitted to a vendor.
    Pending,
    /// A vendor sent the case to manual review.
    InReview,
    Approved,
    Rejected,
    /// The approval's validity ran out (`kyc.approval_valid_days`).
    Expired,
}

impl KycStatus {
    pub const ALL: [KycStatus; 6] = [
        KycStatus::NotStarted,
        KycStatus::Pending,
        KycStatus::InReview,
        KycStatus::Approved,
        KycStatus::Rejected,
        KycStatus::Expired,
    ];

    /// The wire name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            KycStatus::NotStarted => "not_started",
            KycStatus::Pending => "pending",
            KycStatus::InReview => "in_review",
            KycStatus::Approved => "approved",
            KycStatus::Rejected => "rejected",
            KycStatus::Expired => "expired",
        }
    }
}

/// Payload of every `user.*` event: the user's full state after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserKycChanged {
    /// Pseudonymous user id (the vendors' external user id; the one transfers carry).
    pub user_id: String,
    pub user_status: UserStatus,
    pub kyc_status: KycStatus,
    /// The tier reached, 0–3; usable only while `kyc_status` is `approved` ([`Self::usable_tier`]).
    pub tier: u8,
    /// When the current approval expires (absent unless `kyc_status` is `approved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kyc_expires_at: Option<DateTime<Utc>>,
    /// +1 per event of this user (every `user.*` event, reminders included), from 1: a projection
    /// applies only a higher version than it holds.
    pub version: u64,
    /// The vendor case the change concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// That case's status after the change (`pending`, `in_review`, `approved` or `rejected`). A user's
    /// KYC can stay approved while a newer case of theirs is in review or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_status: Option<KycStatus>,
    /// The KYC vendor (provider name) of the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Why: the vendor's reason code, the admin's reason, or the processor's (`approval expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who decided, for admin decisions (freeze, unfreeze, close, manual review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The input that caused it (for expiry and its reminder: the input that granted the approval).
    pub cause_event_id: Uuid,
}

impl UserKycChanged {
    /// The tier this user may act with: the tier reached while the KYC is approved, else 0 (a user with
    /// no, a pending, a rejected or an expired KYC is view-only). Frozen and closed users are blocked
    /// whatever their tier.
    pub fn usable_tier(&self) -> u8 {
        if self.kyc_status == KycStatus::Approved {
            self.tier
        } else {
            0
        }
    }
}

/// `kyc.input_rejected`: an input the KYC processor could not apply, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KycInputRejected {
    pub input_event_id: Uuid,
    pub input_event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// Event types on `{env}.kyc.events`.
pub mod event_types {
    /// A KYC change that is no approval: a case submitted, in review or rejected, an approval revoked
    /// or expired.
    pub const USER_KYC_UPDATED: &str = "user.kyc.updated";
    /// A KYC approval (a case approved, a tier reached, a manual approval).
    pub const USER_VERIFIED: &str = "user.verified";
    pub const USER_FROZEN: &str = "user.frozen";
    pub const USER_UNFROZEN: &str = "user.unfrozen";
    pub const USER_CLOSED: &str = "user.closed";
    /// The approval expires in `kyc.expiry_reminder_days` (the state is unchanged).
    pub const USER_KYC_EXPIRING: &str = "user.kyc.expiring";
    /// [`super::KycInputRejected`].
    pub const KYC_INPUT_REJECTED: &str = "kyc.input_rejected";

    /// The event types whose payload is [`super::UserKycChanged`].
    pub const USER: [&str; 6] =
        [USER_KYC_UPDATED, USER_VERIFIED, USER_FROZEN, USER_UNFROZEN, USER_CLOSED, USER_KYC_EXPIRING];
    /// Every event type on the topic.
    pub const ALL: [&str; 7] = [
        USER_KYC_UPDATED,
        USER_VERIFIED,
        USER_FROZEN,
        USER_UNFROZEN,
        USER_CLOSED,
        USER_KYC_EXPIRING,
        KYC_INPUT_REJECTED,
    ];
}

/// The riverbank event types KYC vendors' webhooks map to (`[event.types]` of a provider definition).
/// Any other `kyc.*` type is refused with a reason; webhooks of other types are not KYC inputs.
pub mod input_types {
    /// A verification was submitted to the vendor.
    pub const CASE_SUBMITTED: &str = "kyc.case_submitted";
    pub const CASE_NEEDS_REVIEW: &str = "kyc.case_needs_review";
    /// Needs the `tier` field.
    pub const CASE_APPROVED: &str = "kyc.case_approved";
    pub const CASE_REJECTED: &str = "kyc.case_rejected";
    /// The case is approved at the `tier` field's tier (an upgrade when it already was).
    pub const TIER_REACHED: &str = "kyc.tier_reached";
}

/// Names of the `WebhookReceived.fields` a KYC vendor's definition extracts (`[fields]`).
pub mod fields {
    /// Required.
    pub const USER_ID: &str = "user_id";
    /// Required: the vendor's case (applicant, transaction) id.
    pub const CASE_ID: &str = "case_id";
    /// `0`–`3`; required for approvals.
    pub const TIER: &str = "tier";
    /// The vendor's reason code, if any.
    pub const REASON: &str = "reason";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for s in UserStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("serializes"), s.as_str());
        }
        for s in KycStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("serializes"), s.as_str());
        }
    }

    #[test]
    fn only_an_approved_kyc_has_a_usable_tier() {
        let mut u = UserKycChanged {
            user_id: "u1".into(),
            user_status: UserStatus::Active,
            kyc_status: KycStatus::Approved,
            tier: 2,
            kyc_expires_at: None,
            version: 1,
            case_id: None,
            case_status: None,
            provider: None,
            reason: None,
            actor: None,
            cause_event_id: Uuid::nil(),
        };
        assert_eq!(u.usable_tier(), 2);
        for s in KycStatus::ALL.into_iter().filter(|s| *s != KycStatus::Approved) {
            u.kyc_status = s;
            assert_eq!(u.usable_tier(), 0, "{s:?}");
        }
    }
}
