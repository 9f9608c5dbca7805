//! `volume.window_closed`: the worked example of the processor runtime (processors/src/volume.rs).
//! Per tenant and minute of event time: completed transfer volume by currency and refused inputs, and
//! the versions of the FX rates (a broadcast input) that were current when the window closed.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Money;

/// One closed window of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeWindowClosed {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Completed transfer volume per currency (sorted by currency).
    pub completed: Vec<Money>,
    pub completed_count: u64,
    /// Inputs the transfers processor refused in the window.
    pub rejected_count: u64,
    /// For each currency of `completed` with a published rate to the report currency: the rate and
    /// the position (`topic/partition/offset`) of the publication it came from.
    pub rates_used: Vec<RateUsed>,
    /// Inputs that arrived after the window had closed: this is a correction on top of an earlier
    /// close of the same window (sum them), never a silent change.
    pub late: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateUsed {
    pub base: String,
    pub quote: String,
    pub rate_e9: i64,
    pub version: String,
}

impl VolumeWindowClosed {
    pub const EVENT_TYPE: &'static str = "volume.window_closed";
    pub const SCHEMA_VERSION: u16 = 1;
}
