//! What a reader without the right to decrypt sees instead of a field: enough to recognise a value
//! ("the account ending 4321"), never enough to recover it.
//!
//! | class | shown |
//! |---|---|
//! | `pii.national_id`, `pii.phone`, `financial.bank_account`, `financial.card_token` | `***` + last 4 letters or digits, when the value has at least [`LAST4_MIN_CHARS`]; else `***` |
//! | `pii.name` | initials: `A. L.` |
//! | `pii.dob` | year of birth only: `1985-**-**` |
//! | `pii.email` | first character of the local part and the domain: `a***@example.com` |
//! | `pii.address`, `pii.document`, `pii.ip` | `***` |
use crate::keys::DataClass;

/// What every masked value falls back to.
pub const MASKED: &str = "***";
/// Fewest letters and digits a value needs before its last 4 are shown (so at least half stays hidden).
pub const LAST4_MIN_CHARS: usize = 8;
/// Most initials shown for a name.
pub const INITIALS_MAX: usize = 4;

/// The masked form of `clear`, a value of `class`.
pub fn mask(class: DataClass, clear: &str) -> String {
    let masked = match class {
        DataClass::PII_NATIONAL_ID
        | DataClass::PII_PHONE
        | DataClass::FINANCIAL_BANK_ACCOUNT
        | DataClass::FINANCIAL_CARD_TOKEN => last4(clear),
        DataClass::PII_NAME => initials(clear),
        DataClass::PII_DOB => year_of_birth(clear),
        DataClass::PII_EMAIL => email(clear),
        _ => None,
    };
    masked.unwrap_or_else(|| MASKED.to_string())
}

fn last4(clear: &str) -> Option<String> {
    let chars: Vec<char> = clear.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    (chars.len() >= LAST4_MIN_CHARS).then(|| {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{MASKED}{tail}")
    })
}

fn initials(clear: &str) -> Option<String> {
    let initials: Vec<String> = clear
        .split_whitespace()
        .filter_map(|w| w.chars().find(|c| c.is_alphabetic()))
        .take(INITIALS_MAX)
        .map(|c| format!("{}.", c.to_uppercase()))
        .collect();
    (!initials.is_empty()).then(|| initials.join(" "))
}

fn year_of_birth(clear: &str) -> Option<String> {
    let t = clear.trim();
    let year = t.get(..4).filter(|y| y.bytes().all(|b| b.is_ascii_digit()))?;
    let rest = &t[4..];
    (rest.is_empty() || rest.starts_with('-')).then(|| format!("{year}-**-**"))
}

fn email(clear: &str) -> Option<String> {
    let (local, domain) = clear.trim().rsplit_once('@')?;
    let first = local.chars().next()?;
    (!domain.is_empty()).then(|| format!("{first}{MASKED}@{domain}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn masks_by_class() {
        let cases = [
            (DataClass::PII_NATIONAL_ID, "123-45-6789", "***6789"),
            (DataClass::PII_NATIONAL_ID, "ABCDE1234F", "***234F"),
            (DataClass::PII_NATIONAL_ID, "1234", "***"),
            (DataClass::PII_PHONE, "+44 20 7946 0958", "***0958"),
            (DataClass::FINANCIAL_BANK_ACCOUNT, "GB29 NWBK 6016 1331 9268 19", "***6819"),
            (DataClass::FINANCIAL_CARD_TOKEN, "tok_abcdef1234", "***1234"),
            (DataClass::PII_NAME, "Ada  King Lovelace", "A. K. L."),
            (DataClass::PII_NAME, "élodie durand", "É. D."),
            (DataClass::PII_NAME, "  ", "***"),
            (DataClass::PII_DOB, "1985-03-04", "1985-**-**"),
            (DataClass::PII_DOB, "1985", "1985-**-**"),
            (DataClass::PII_DOB, "04/03/1985", "***"),
            (DataClass::PII_EMAIL, "ada@example.com", "a***@example.com"),
            (DataClass::PII_EMAIL, "@example.com", "***"),
            (DataClass::PII_EMAIL, "ada", "***"),
            (DataClass::PII_ADDRESS, "1 Main St", "***"),
            (DataClass::PII_DOCUMENT, "doc_123456789", "***"),
            (DataClass::PII_IP, "203.0.113.9", "***"),
        ];
        for (class, clear, want) in cases {
            assert_eq!(mask(class, clear), want, "{class} {clear:?}");
        }
    }

    proptest! {
        /// A masked value never shows more than 4 letters or digits of an identifier, and never the whole
        /// value of one with at least 8 of them.
        #[test]
        fn prop_identifiers_show_at_most_last4(clear in "[A-Za-z0-9 -]{0,40}") {
            for class in [DataClass::PII_NATIONAL_ID, DataClass::FINANCIAL_BANK_ACCOUNT, DataClass::PII_PHONE] {
                let m = mask(class, &clear);
                prop_assert!(m.chars().filter(|c| c.is_ascii_alphanumeric()).count() <= 4);
                prop_assert!(m.starts_with(MASKED));
            }
            for class in [DataClass::PII_ADDRESS, DataClass::PII_DOCUMENT, DataClass::PII_IP] {
                prop_assert_eq!(mask(class, &clear), MASKED);
            }
        }
    }
}
