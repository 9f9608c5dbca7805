//! What verifying a signature can fail with, and the timestamp checks every timestamped scheme shares.
//! A leaf: [`crate::schemes`] and [`crate::standard_webhooks`] both use it.

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("{0} must be 1-256 printable ASCII characters")]
    BadId(&'static str),
    #[error("timestamp must be unix seconds")]
    BadTimestamp,
    #[error("timestamp is {0} s away from now; at most {1} s allowed")]
    OutsideTolerance(i64, i64),
    #[error("digest algorithm not accepted (HMAC_SHA256_HEX or HMAC_SHA512_HEX)")]
    UnsupportedAlgorithm,
    #[error("no signature matches")]
    NoMatch,
}

impl VerifyError {
    /// Whether the request is malformed (400) rather than unauthentic (401).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            VerifyError::MissingHeader(_)
                | VerifyError::Malformed(_)
                | VerifyError::BadId(_)
                | VerifyError::BadTimestamp
        )
    }
}

/// Unix seconds as sent in a header: 1–12 ASCII digits.
pub fn unix_seconds(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    text.parse().map_err(|_| VerifyError::BadTimestamp)
}

/// `timestamp` must be at most `tolerance_s` away from `now`, either way.
pub fn within_tolerance(timestamp: i64, now: i64, tolerance_s: i64) -> Result<(), VerifyError> {
    let skew = now.saturating_sub(timestamp).saturating_abs();
    if skew > tolerance_s {
        return Err(VerifyError::OutsideTolerance(skew, tolerance_s));
    }
    Ok(())
}
