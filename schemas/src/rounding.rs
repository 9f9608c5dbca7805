//! Rounding of exact money values to a currency's minor unit, and exact decimals for the record.
//!
//! FX and billing compute exact values as a ratio of integers (`i128`, checked) and round once, at the
//! target currency's precision, with a configured [`RoundingMode`]. The rule, written down:
//! - `half_even` (default, "banker's rounding"): to the nearest minor unit; a value exactly half-way
//!   goes to the even neighbour (2.5 → 2, 3.5 → 4, −2.5 → −2);
//! - `half_up`: to the nearest minor unit; exactly half-way goes away from zero (2.5 → 3, −2.5 → −3), as
//!   EU regulation 1103/97 prescribes for euro conversions.
//!
//! Nothing here uses floating point.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    #[default]
    HalfEven,
    HalfUp,
}

impl RoundingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfEven => "half_even",
            RoundingMode::HalfUp => "half_up",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "half_even" => Some(RoundingMode::HalfEven),
            "half_up" => Some(RoundingMode::HalfUp),
            _ => None,
        }
    }
}

/// `num / den` rounded to an integer with `mode`. `None` for a zero denominator or an overflow.
pub fn div_round(num: i128, den: i128, mode: RoundingMode) -> Option<i128> {
    if den == 0 {
        return None;
    }
    let (num, den) = if den < 0 { (num.checked_neg()?, den.checked_neg()?) } else { (num, den) };
    // Floor division, remainder in [0, den).
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    let twice = r.checked_mul(2)?;
    let up = match twice.cmp(&den) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => match mode {
            RoundingMode::HalfEven => q.rem_euclid(2) == 1,
            // Away from zero: the floor of a negative half is already away from zero.
            RoundingMode::HalfUp => q >= 0,
        },
    };
    if up {
        q.checked_add(1)
    } else {
        Some(q)
    }
}

/// `10^exp` as an `i128`, or `None` when it does not fit.
pub fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

/// The exact decimal `num / 10^scale` as text ("-12.0345"), trailing zeros of the fraction dropped.
pub fn exact_decimal(num: i128, scale: u32) -> String {
    let sign = if num < 0 { "-" } else { "" };
    let abs = num.unsigned_abs();
    let Some(div) = 10u128.checked_pow(scale) else { return format!("{sign}{abs}e-{scale}") };
    let int = abs / div;
    let frac = abs % div;
    if scale == 0 || frac == 0 {
        return format!("{sign}{int}");
    }
    let text = format!("{frac:0width$}", width = scale as usize);
    format!("{sign}{int}.{}", text.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn half_way_cases() {
        use RoundingMode::*;
        // (num, den, half_even, half_up)
        let cases: [(i128, i128, i128, i128); 12] = [
            (25, 10, 2, 3),
            (35, 10, 4, 4),
            (-25, 10, -2, -3),
            (-35, 10, -4, -4),
            (5, 10, 0, 1),
            (-5, 10, 0, -1),
            (15, 10, 2, 2),
            (24, 10, 2, 2),
            (26, 10, 3, 3),
            (-26, 10, -3, -3),
            (1, 3, 0, 0),
            (2, 3, 1, 1),
        ];
        for (n, d, even, up) in cases {
            assert_eq!(div_round(n, d, HalfEven), Some(even), "{n}/{d} half_even");
            assert_eq!(div_round(n, d, HalfUp), Some(up), "{n}/{d} half_up");
            assert_eq!(div_round(-n, -d, HalfEven), Some(even), "{n}/{d} negative denominator");
        }
        assert_eq!(div_round(1, 0, HalfEven), None);
    }

    #[test]
    fn exact_decimals() {
        assert_eq!(exact_decimal(120345, 4), "12.0345");
        assert_eq!(exact_decimal(-5, 1), "-0.5");
        assert_eq!(exact_decimal(1200, 2), "12");
        assert_eq!(exact_decimal(7, 0), "7");
        assert_eq!(RoundingMode::parse("half_up"), Some(RoundingMode::HalfUp));
        assert_eq!(RoundingMode::parse("up"), None);
    }

    proptest! {
        /// The rounded value is within half a unit of the exact one, and exact values stay exact.
        #[test]
        fn within_half_a_unit(n in -1_000_000_000_000i128..1_000_000_000_000, d in 1i128..1_000_000, up in any::<bool>()) {
            let mode = if up { RoundingMode::HalfUp } else { RoundingMode::HalfEven };
            let r = div_round(n, d, mode).expect("fits");
            let err = (r * d - n).abs() * 2;
            prop_assert!(err <= d);
            prop_assert_eq!(div_round(n * d, d, mode), Some(n));
        }
    }
}
