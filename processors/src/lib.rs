//! Stream processors: pure state machines run by `riverbank_runtime::process`.
//! No I/O, no clock reads, no randomness: time comes from events, ids are derived from inputs.
#![forbid(unsafe_code)]

pub mod audit;
pub mod billing;
pub mod fx;
pub mod kyc;
pub mod risk;
pub mod transfers;
pub mod volume;

#[cfg(test)]
mod test_harness;

pub use audit::AuditProcessor;
pub use billing::{BillingProcessor, BillingSettings};
pub use fx::{FxProcessor, FxSettings};
pub use kyc::{KycLimits, KycProcessor};
pub use risk::RiskProcessor;
pub use transfers::{ReuseLimits, TransfersLimits, TransfersProcessor};
pub use volume::VolumeProcessor;
