//! Roles of tenant API keys: what a key may do at the edge (commands) and on the read API.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads only; sends no command.
    Viewer,
    /// Day-to-day money movement: create and cancel transfers, FX quotes and conversions.
    Operator,
    /// Everything an operator does, plus approvals, fee configs, KYC admin actions and rates.
    Admin,
    /// A rates feed: may only publish FX rates.
    RatesPublisher,
    /// Decides transfers that risk scoring held for manual review (never one they requested).
    ComplianceOfficer,
    /// Reads and exports the audit trail and every read model; sends no command.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::RatesPublisher => "rates_publisher",
            Role::ComplianceOfficer => "compliance_officer",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Viewer,
            Role::Operator,
            Role::Admin,
            Role::RatesPublisher,
            Role::ComplianceOfficer,
            Role::Auditor,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}
