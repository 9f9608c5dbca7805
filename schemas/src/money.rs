//! Money: an integer count of minor units and a currency with a known precision. No floats, ever.
use schemars::JsonSchema;

/// The largest amount riverbank accepts from outside, in minor units: 10^15 (ten trillion USD or EUR,
/// one quadrillion JPY, ten million BTC). The edge refuses any larger amount in a command (422, rule
/// `max`), so one input can never come near `i64::MAX` (about 9.2 × 10^18): some 9 000 maximal
/// amounts fit in one `i64` sum. Downstream arithmetic is still checked; this cap keeps a single
/// request from reaching the overflow by itself.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency '{0}'")]
    UnknownCurrency(String),
    #[error("currency mismatch: {0} and {1}")]
    CurrencyMismatch(&'static str, &'static str),
    #[error("amount overflows 64-bit minor units")]
    Overflow,
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("'{0}' is not a decimal amount")]
    Malformed(String),
    #[error("{code} has {precision} decimal places; '{text}' has more")]
    TooPrecise { code: &'static str, precision: u8, text: String },
}

/// ISO-4217 codes and the tokens we settle in, with their minor-unit precision.
/// Extend this table to add a currency; nothing else needs to change.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NGN", 2),
    ("SGD", 2),
    ("USD", 2),
    ("BTC", 8),
    ("USDC", 6),
    ("USDT", 6),
];

/// A currency we know the precision of. Construct with `Currency::from_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    /// Index into `CURRENCIES`.
    index: u8,
}

impl Currency {
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .iter()
            .position(|(c, _)| *c == code)
            .and_then(|i| u8::try_from(i).ok())
            .map(|index| Currency { index })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))
    }
    pub fn code(self) -> &'static str {
        CURRENCIES[usize::from(self.index)].0
    }
    /// Number of decimal places in one major unit (USD 2, JPY 0, BHD 3, USDC 6).
    pub fn precision(self) -> u8 {
        CURRENCIES[usize::from(self.index)].1
    }
    pub fn all() -> impl Iterator<Item = Currency> {
        (0..CURRENCIES.len()).filter_map(|i| u8::try_from(i).ok()).map(|index| Currency { index })
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> String {
        "Currency".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            enum_values: Some(CURRENCIES.iter().map(|(c, _)| serde_json::Value::from(*c)).collect()),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some(
                    "ISO-4217 code or settlement token; precision is fixed per code.".to_owned(),
                ),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::from_code(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money in minor units. Arithmetic is checked and refuses to mix currencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Minor units of `currency` (cents, satoshi). Amounts clients send are at most
    /// 1000000000000000 (10^15, `AMOUNT_MINOR_MAX`); larger ones are refused at the edge.
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money { amount_minor, currency }
    }

    /// A strictly positive amount, as every transfer amount must be.
    pub fn positive(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount_minor <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Money { amount_minor, currency })
    }

    /// Whether the amount's magnitude is at most [`AMOUNT_MINOR_MAX`].
    pub fn within_max(self) -> bool {
        self.amount_minor.unsigned_abs() <= AMOUNT_MINOR_MAX.unsigned_abs()
    }

    pub fn zero(currency: Currency) -> Self {
        Money { amount_minor: 0, currency }
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency.code(), other.currency.code()));
        }
        Ok(())
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self.amount_minor.checked_add(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self.amount_minor.checked_sub(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let amount_minor = self.amount_minor.checked_neg().ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    /// Parse a decimal string in major units ("12.34" USD → 1234 minor). Rejects more decimal places
    /// than the currency has, signs other than a leading '-', exponents and anything not a digit.
    pub fn parse_major(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        let malformed = || MoneyError::Malformed(text.to_owned());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) if !f.is_empty() => (i, f),
            Some(_) => return Err(malformed()),
            None => (digits, ""),
        };
        if int_part.is_empty()
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let precision = usize::from(currency.precision());
        if frac_part.len() > precision {
            return Err(MoneyError::TooPrecise {
                code: currency.code(),
                precision: currency.precision(),
                text: text.to_owned(),
            });
        }
        let scale = 10i64.checked_pow(u32::from(currency.precision())).ok_or(MoneyError::Overflow)?;
        let int: i64 = int_part.parse().map_err(|_| MoneyError::Overflow)?;
        let mut frac: i64 =
            if frac_part.is_empty() { 0 } else { frac_part.parse().map_err(|_| malformed())? };
        for _ in frac_part.len()..precision {
            frac = frac.checked_mul(10).ok_or(MoneyError::Overflow)?;
        }
        let minor = int.checked_mul(scale).and_then(|v| v.checked_add(frac)).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor: if negative { -minor } else { minor }, currency })
    }

    /// The amount in major units as an exact decimal string ("12.34", "-0.001", "500").
    pub fn to_major_string(self) -> String {
        let precision = u32::from(self.currency.precision());
        let abs = self.amount_minor.unsigned_abs();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        if precision == 0 {
            return format!("{sign}{abs}");
        }
        let scale = 10u64.pow(precision);
        format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = precision as usize)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.to_major_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(code: &str) -> Currency {
        Currency::from_code(code).expect("known currency")
    }

    #[test]
    fn parses_and_prints_by_precision() {
        let cases = [
            ("12.34", "USD", 1234, "12.34"),
            ("12.3", "USD", 1230, "12.30"),
            ("12", "USD", 1200, "12.00"),
            ("500", "JPY", 500, "500"),
            ("1.001", "BHD", 1001, "1.001"),
            ("0.000001", "USDC", 1, "0.000001"),
            ("-0.05", "EUR", -5, "-0.05"),
        ];
        for (text, code, minor, printed) in cases {
            let m = Money::parse_major(text, c(code)).expect(text);
            assert_eq!(m.amount_minor, minor, "{text} {code}");
            assert_eq!(m.to_major_string(), printed);
        }
    }

    #[test]
    fn rejects_what_is_not_money() {
        for (text, code) in [
            ("1.234", "USD"),
            ("1.5", "JPY"),
            ("1e3", "USD"),
            ("", "USD"),
            (".5", "USD"),
            ("5.", "USD"),
            ("+5", "USD"),
            ("1,5", "EUR"),
            ("99999999999999999999", "USD"),
        ] {
            assert!(Money::parse_major(text, c(code)).is_err(), "{text} {code} accepted");
        }
        assert_eq!(Currency::from_code("XXX"), Err(MoneyError::UnknownCurrency("XXX".into())));
        assert_eq!(Money::positive(0, c("USD")), Err(MoneyError::NotPositive));
    }

    #[test]
    fn arithmetic_is_checked() {
        let usd = Money::new(i64::MAX, c("USD"));
        assert_eq!(usd.checked_add(Money::new(1, c("USD"))), Err(MoneyError::Overflow));
        assert!(matches!(
            Money::new(1, c("USD")).checked_add(Money::new(1, c("EUR"))),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert_eq!(Money::new(i64::MIN, c("USD")).checked_neg(), Err(MoneyError::Overflow));
    }

    #[test]
    fn the_amount_cap_is_ten_to_the_fifteen_minor_units_either_way() {
        assert_eq!(AMOUNT_MINOR_MAX, 10i64.pow(15));
        let usd = c("USD");
        for (minor, within) in [
            (AMOUNT_MINOR_MAX, true),
            (-AMOUNT_MINOR_MAX, true),
            (AMOUNT_MINOR_MAX + 1, false),
            (-AMOUNT_MINOR_MAX - 1, false),
            (i64::MAX, false),
            (i64::MIN, false),
            (0, true),
        ] {
            assert_eq!(Money::new(minor, usd).within_max(), within, "{minor}");
        }
        // The largest USD amount a client may send parses to exactly the cap.
        let m = Money::parse_major("10000000000000.00", usd).expect("parses");
        assert!(m.within_max() && m.amount_minor == AMOUNT_MINOR_MAX);
    }

    #[test]
    fn unknown_currency_fails_to_deserialize() {
        let err = serde_json::from_str::<Money>(r#"{"amount_minor":1,"currency":"ZZZ"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown currency"), "{err}");
    }

    proptest! {
        #[test]
        fn money_round_trips_through_json_and_text(minor in any::<i64>(), idx in 0usize..20) {
            let currency = Currency::all().nth(idx % CURRENCIES.len()).expect("index in range");
            let m = Money::new(minor, currency);
            let json = serde_json::to_string(&m).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<Money>(&json).expect("deserialize"), m);
            if minor != i64::MIN {
                prop_assert_eq!(Money::parse_major(&m.to_major_string(), currency).expect("parse"), m);
            }
        }

        #[test]
        fn add_then_sub_is_identity(a in -1_000_000_000_000i64..1_000_000_000_000, b in -1_000_000_000_000i64..1_000_000_000_000) {
            let usd = c("USD");
            let sum = Money::new(a, usd).checked_add(Money::new(b, usd)).expect("no overflow");
            prop_assert_eq!(sum.checked_sub(Money::new(b, usd)).expect("no overflow"), Money::new(a, usd));
        }
    }
}
