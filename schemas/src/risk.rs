//! Risk scoring's contract: how counterparty names are matched without travelling in clear.
//!
//! **Name matching.** A name is normalized, then reduced to keyed digests (HMAC-SHA256 under the
//! deployment's name key, first 16 bytes, hex). The edge does this to a transfer's counterparty name, and
//! `riverbank risk lists publish` does it to every sanctions entry and alias, with the same key; the risk
//! processor compares digests only. Normalization:
//! - Unicode NFKD, combining marks dropped (`José` → `jose`, `Müller` → `muller`), lower case;
//! - every character that is not a letter or digit separates tokens (`O'Brien` → `o brien`,
//!   `AL-QAIDA` → `al qaida`);
//! - tokens sorted, so token order does not matter (`Smith, John` = `John Smith`).
//!
//! A name yields the digest of its full normalized form and, when it has three tokens or more, of each
//! form with one token left out (a middle name or a patronymic the list does not have still matches).
//! Aliases are list entries of their own. Not covered: transliteration between scripts, spelling
//! variants and typos (fuzzy matching needs the clear name; the list side can add such variants as
//! aliases).
use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Event type of [`RiskReviewDecided`].
pub const RISK_REVIEW_DECIDED: &str = "risk.review_decided";

/// `risk.review_decided`: a compliance officer's decision on a transfer held for manual review
/// (`POST /v1/risk/reviews/{transfer_id}/decision`, role `compliance_officer`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskReviewDecided {
    pub transfer_id: String,
    pub decision: crate::commands::ReviewDecision,
    pub reason: String,
    /// The officer (pseudonymous actor id); never the transfer's requester (maker–checker).
    pub actor: String,
}

/// Tokens of a name kept at most (longer names are cut; no real name needs more).
pub const NAME_TOKENS_MAX: usize = 12;

/// The normalized tokens of `name`, sorted.
pub fn name_tokens(name: &str) -> Vec<String> {
    let folded: String =
        name.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
    let mut tokens: Vec<String> = folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .take(NAME_TOKENS_MAX)
        .map(str::to_owned)
        .collect();
    tokens.sort();
    tokens
}

fn digest(key: &[u8], tokens: &[&String]) -> String {
    let joined = tokens.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" ");
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(joined.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The digest of a name's full normalized form (what a list entry is matched by); `None` for a name
/// with no letters or digits.
pub fn name_key(key: &[u8], name: &str) -> Option<String> {
    let tokens = name_tokens(name);
    (!tokens.is_empty()).then(|| digest(key, &tokens.iter().collect::<Vec<_>>()))
}

/// The digests a counterparty name is screened with: its full form and, with three tokens or more,
/// each form with one token left out. Sorted, without repeats.
pub fn name_keys(key: &[u8], name: &str) -> Vec<String> {
    let tokens = name_tokens(name);
    if tokens.is_empty() {
        return Vec::new();
    }
    let mut keys = vec![digest(key, &tokens.iter().collect::<Vec<_>>())];
    if tokens.len() >= 3 {
        for skip in 0..tokens.len() {
            let rest: Vec<&String> =
                tokens.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, t)| t).collect();
            keys.push(digest(key, &rest));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"test-key";

    #[test]
    fn case_accents_punctuation_and_order_do_not_matter() {
        let k = name_key(K, "John Smith").expect("a name");
        for same in ["john smith", "SMITH, John", "Jöhn  Smíth", "smith-john", " John\tSmith. "] {
            assert_eq!(name_key(K, same).as_deref(), Some(k.as_str()), "{same}");
        }
        assert_ne!(name_key(K, "Jon Smith"), Some(k.clone()));
        assert_eq!(name_tokens("José Müller-Lüdenscheidt"), ["jose", "ludenscheidt", "muller"]);
        assert_eq!(name_key(K, " .,- "), None);
    }

    #[test]
    fn a_middle_name_still_matches_and_keys_depend_on_the_key() {
        let entry = name_key(K, "John Smith").expect("a name");
        assert!(name_keys(K, "John Michael Smith").contains(&entry));
        assert!(!name_keys(K, "John Smith").is_empty());
        assert!(!name_keys(b"other", "John Michael Smith").contains(&entry));
        assert_eq!(name_keys(K, "John Michael Smith").len(), 4);
    }
}
