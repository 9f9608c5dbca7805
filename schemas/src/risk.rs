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
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Event type of [`RiskReviewDecided`].
pub const RISK_REVIEW_DECIDED: &str = "risk.review_decided";

/// `risk.review_decided`: a compliance officer's decision on a transfer held for manual review
/// (`POST /v1/risk/reviews/{transfer_id}/decision`, role `compliance_officer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

// ---------------------------------------------------------------------------------------------------
// Rule sets and lists: files validated at load, published as reference inputs.
// ---------------------------------------------------------------------------------------------------

/// Decision bands (DOMAIN.md): a combined score below this approves.
pub const REVIEW_FROM_SCORE: u32 = 30;
/// A combined score above this rejects (blocks); 30–70 goes to manual review.
pub const REJECT_ABOVE_SCORE: u32 = 70;
/// A sanctions rule scores at least this and rejects at once, whatever else fired.
pub const SANCTIONS_SCORE_MIN: u32 = 90;
/// Longest velocity window a rule may declare: 31 days (bounds the history kept per user).
pub const VELOCITY_WINDOW_MS_MAX: i64 = 31 * 24 * 3600 * 1000;
/// Rules of each kind per rule set at most.
pub const RULES_PER_KIND_MAX: usize = 64;
/// Entries per published list at most (a publication is one message).
pub const LIST_ENTRIES_MAX: usize = 5_000;
/// Names (aliases included) and ids per list entry at most.
pub const NAMES_PER_ENTRY_MAX: usize = 16;
/// The rolling window of tier limits: 24 hours.
pub const TIER_ROLLING_WINDOW_MS: i64 = 24 * 3600 * 1000;

pub mod event_types {
    /// A rule set (live or shadow) published to every partition (`risk.reference`).
    pub const RULES_PUBLISHED: &str = "risk.rules_published";
    /// A sanctions / blacklist list published to every partition (`risk.reference`).
    pub const LIST_PUBLISHED: &str = "risk.list_published";
    /// An explained decision (live, manual review or shadow) on `risk.decisions`.
    pub const DECISION_RECORDED: &str = "risk.decision_recorded";
    /// An input risk could not apply, with the reason, on `risk.decisions`.
    pub const INPUT_REJECTED: &str = "risk.input_rejected";
}

/// Whose history a velocity rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VelocitySubject {
    /// The transfer's end user (`user_id`).
    User,
    /// The counterparty (its id, else its first name digest).
    Counterparty,
}

impl VelocitySubject {
    pub fn as_str(self) -> &'static str {
        match self {
            VelocitySubject::User => "user",
            VelocitySubject::Counterparty => "counterparty",
        }
    }
}

/// A rule set as written in its file (amounts in major units of `report_currency`, as text).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetFile {
    pub name: String,
    /// Every amount of the file is in this currency; transfers in others are converted with the
    /// latest rate seen on the rates input.
    pub report_currency: String,
    #[serde(default)]
    pub velocity: Vec<VelocityFile>,
    #[serde(default)]
    pub threshold: Vec<ThresholdFile>,
    #[serde(default)]
    pub ctr: Option<CtrFile>,
    #[serde(default)]
    pub tier_limits: Vec<TierLimitFile>,
    /// Score of a tier-limit breach (tier 0, or above the tier's single or 24 h limit).
    pub tier_limit_score: u32,
    /// Score of a user who is frozen, suspended or closed.
    pub blocked_user_score: u32,
    /// Score of a transfer that names no end user (tenant treasury movements, provider deposits).
    #[serde(default)]
    pub missing_user_score: u32,
    /// Score of a sanctions / blacklist hit (at least 90: it rejects at once).
    pub sanctions_score: u32,
    /// Score when an amount rule cannot compare because no rate to the report currency was seen.
    pub no_rate_score: u32,
    #[serde(default)]
    pub jurisdiction: Vec<JurisdictionFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityFile {
    pub id: String,
    pub subject: VelocitySubject,
    pub window_s: u64,
    /// Fires when the window holds more transfers than this (this one included).
    #[serde(default)]
    pub count_over: Option<u32>,
    /// Fires when the window's sum (this one included) is above this amount.
    #[serde(default)]
    pub sum_over: Option<String>,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdFile {
    pub id: String,
    pub amount_over: String,
    /// Transfer kinds it applies to; empty: all.
    #[serde(default)]
    pub kinds: Vec<crate::TransferKind>,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtrFile {
    pub amount_over: String,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimitFile {
    pub tier: u8,
    pub single_max: String,
    pub rolling_24h_max: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JurisdictionFile {
    pub id: String,
    /// Tenants it applies to; empty: every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Counterparty countries refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// When not empty, the only counterparty countries allowed (a missing country fires too).
    #[serde(default)]
    pub allow: Vec<String>,
    pub score: u32,
}

/// A validated rule set: amounts in minor units of `report_currency`. This is what is published,
/// kept in the processor's state and recorded by version with every decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub name: String,
    /// `rs_` + the first 16 hex digits of SHA-256 over the canonical JSON of this struct with an
    /// empty version.
    pub version: String,
    pub report_currency: crate::Currency,
    pub velocity: Vec<VelocityRule>,
    pub threshold: Vec<ThresholdRule>,
    pub ctr: Option<CtrRule>,
    pub tier_limits: Vec<TierLimit>,
    pub tier_limit_score: u32,
    pub blocked_user_score: u32,
    pub missing_user_score: u32,
    pub sanctions_score: u32,
    pub no_rate_score: u32,
    pub jurisdiction: Vec<JurisdictionRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityRule {
    pub id: String,
    pub subject: VelocitySubject,
    pub window_ms: i64,
    pub count_over: Option<u32>,
    pub sum_over_minor: Option<i64>,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    pub id: String,
    pub amount_over_minor: i64,
    pub kinds: Vec<crate::TransferKind>,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CtrRule {
    pub amount_over_minor: i64,
    pub score: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierLimit {
    pub tier: u8,
    pub single_max_minor: i64,
    pub rolling_24h_max_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JurisdictionRule {
    pub id: String,
    pub tenants: Vec<String>,
    pub deny: Vec<String>,
    pub allow: Vec<String>,
    pub score: u32,
}

fn version_of<T: Serialize>(prefix: &str, value: &T) -> String {
    use sha2::Digest as _;
    let canonical = serde_json::to_vec(value).unwrap_or_default();
    format!("{prefix}{}", &hex::encode(sha2::Sha256::digest(&canonical))[..16])
}

fn rule_id(kind: &str, id: &str, seen: &mut std::collections::BTreeSet<String>) -> Result<String, String> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(format!("{kind} rule id '{id}' must be 1-64 of letters, digits, '_', '-', '.'"));
    }
    if !seen.insert(id.to_owned()) {
        return Err(format!("rule id '{id}' is used twice"));
    }
    Ok(id.to_owned())
}

fn country(field: &str, c: &str) -> Result<String, String> {
    if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(c.to_owned())
    } else {
        Err(format!("{field}: '{c}' is not an ISO 3166-1 alpha-2 code like \"DE\""))
    }
}

impl RuleSetFile {
    /// Validate and compile: every amount parsed at the report currency's precision, ids unique,
    /// windows within [`VELOCITY_WINDOW_MS_MAX`], scores within 0–100, sanctions ≥ 90. Errors name the
    /// rule and field.
    pub fn compile(&self) -> Result<Rules, String> {
        let cur = crate::Currency::from_code(&self.report_currency)
            .map_err(|_| format!("report_currency: '{}' is not a known currency", self.report_currency))?;
        let amount = |field: &str, text: &str| -> Result<i64, String> {
            let m = crate::Money::parse_major(text, cur).map_err(|e| format!("{field}: '{text}': {e}"))?;
            if m.amount_minor < 0 || !m.within_max() {
                return Err(format!("{field}: '{text}' must be between 0 and the amount cap"));
            }
            Ok(m.amount_minor)
        };
        let score = |field: &str, s: u32| -> Result<u32, String> {
            if s > 100 {
                return Err(format!("{field}: score {s} is above 100"));
            }
            Ok(s)
        };
        if self.name.is_empty() || self.name.len() > 100 {
            return Err("name must be 1-100 bytes".into());
        }
        for (kind, n) in [
            ("velocity", self.velocity.len()),
            ("threshold", self.threshold.len()),
            ("tier_limits", self.tier_limits.len()),
            ("jurisdiction", self.jurisdiction.len()),
        ] {
            if n > RULES_PER_KIND_MAX {
                return Err(format!("{kind}: {n} rules, at most {RULES_PER_KIND_MAX}"));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut velocity = Vec::new();
        for v in &self.velocity {
            let id = rule_id("velocity", &v.id, &mut ids)?;
            let window_ms =
                i64::try_from(v.window_s).ok().and_then(|s| s.checked_mul(1000)).unwrap_or(i64::MAX);
            if !(1..=VELOCITY_WINDOW_MS_MAX).contains(&window_ms) {
                return Err(format!("velocity {id}: window_s must be 1..={}", VELOCITY_WINDOW_MS_MAX / 1000));
            }
            if v.count_over.is_none() && v.sum_over.is_none() {
                return Err(format!("velocity {id}: needs count_over or sum_over"));
            }
            let sum_over_minor =
                v.sum_over.as_deref().map(|t| amount(&format!("velocity {id}: sum_over"), t)).transpose()?;
            velocity.push(VelocityRule {
                id: id.clone(),
                subject: v.subject,
                window_ms,
                count_over: v.count_over,
                sum_over_minor,
                score: score(&format!("velocity {id}"), v.score)?,
            });
        }
        let mut threshold = Vec::new();
        for t in &self.threshold {
            let id = rule_id("threshold", &t.id, &mut ids)?;
            threshold.push(ThresholdRule {
                amount_over_minor: amount(&format!("threshold {id}: amount_over"), &t.amount_over)?,
                kinds: t.kinds.clone(),
                score: score(&format!("threshold {id}"), t.score)?,
                id,
            });
        }
        let ctr = match &self.ctr {
            Some(c) => Some(CtrRule {
                amount_over_minor: amount("ctr: amount_over", &c.amount_over)?,
                score: score("ctr", c.score)?,
            }),
            None => None,
        };
        let mut tier_limits = Vec::new();
        let mut tiers = std::collections::BTreeSet::new();
        for t in &self.tier_limits {
            if t.tier > 3 || !tiers.insert(t.tier) {
                return Err(format!("tier_limits: tier {} must be 0-3 and appear once", t.tier));
            }
            tier_limits.push(TierLimit {
                tier: t.tier,
                single_max_minor: amount(&format!("tier {}: single_max", t.tier), &t.single_max)?,
                rolling_24h_max_minor: amount(
                    &format!("tier {}: rolling_24h_max", t.tier),
                    &t.rolling_24h_max,
                )?,
            });
        }
        let mut jurisdiction = Vec::new();
        for j in &self.jurisdiction {
            let id = rule_id("jurisdiction", &j.id, &mut ids)?;
            if j.deny.is_empty() && j.allow.is_empty() {
                return Err(format!("jurisdiction {id}: needs deny or allow"));
            }
            let deny = j
                .deny
                .iter()
                .map(|c| country(&format!("jurisdiction {id}: deny"), c))
                .collect::<Result<_, _>>()?;
            let allow = j
                .allow
                .iter()
                .map(|c| country(&format!("jurisdiction {id}: allow"), c))
                .collect::<Result<_, _>>()?;
            jurisdiction.push(JurisdictionRule {
                tenants: j.tenants.clone(),
                deny,
                allow,
                score: score(&format!("jurisdiction {id}"), j.score)?,
                id,
            });
        }
        if !(SANCTIONS_SCORE_MIN..=100).contains(&self.sanctions_score) {
            return Err(format!("sanctions_score must be {SANCTIONS_SCORE_MIN}-100 (a hit rejects at once)"));
        }
        let rules = Rules {
            name: self.name.clone(),
            version: String::new(),
            report_currency: cur,
            velocity,
            threshold,
            ctr,
            tier_limits,
            tier_limit_score: score("tier_limit_score", self.tier_limit_score)?,
            blocked_user_score: score("blocked_user_score", self.blocked_user_score)?,
            missing_user_score: score("missing_user_score", self.missing_user_score)?,
            sanctions_score: self.sanctions_score,
            no_rate_score: score("no_rate_score", self.no_rate_score)?,
            jurisdiction,
        };
        Ok(rules.sealed())
    }
}

impl Rules {
    /// This rule set with `version` set to the hash of its content (the content with an empty version).
    pub fn sealed(mut self) -> Rules {
        self.version = String::new();
        self.version = version_of("rs_", &self);
        self
    }

    /// Whether `version` is what this rule set's content hashes to (a published rule set is checked).
    pub fn version_matches(&self) -> bool {
        self.clone().sealed().version == self.version
    }
}

/// `risk.rules_published`: a rule set for every partition; `shadow` runs it beside the live one
/// (its decisions are recorded, never acted on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesPublished {
    pub rules: Rules,
    #[serde(default)]
    pub shadow: bool,
    pub published_by: String,
}

/// A sanctions / blacklist file: entries with names (aliases included) and ids, in clear (public
/// lists); publishing turns the names into digests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFile {
    pub list: String,
    pub entries: Vec<ListFileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFileEntry {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    /// Identifiers matched exactly after trimming and lower-casing (wallet addresses, account ids).
    #[serde(default)]
    pub ids: Vec<String>,
}

/// A published list: names as digests under the deployment's name key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListPublished {
    pub list: String,
    /// `ls_` + 16 hex digits of SHA-256 over the canonical JSON of the entries.
    pub version: String,
    pub entries: Vec<ListEntry>,
    pub published_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    pub id: String,
    pub name_keys: Vec<String>,
    pub ids: Vec<String>,
}

/// How an identifier is compared: trimmed and lower-cased.
pub fn normalize_id(id: &str) -> String {
    id.trim().to_lowercase()
}

impl ListFile {
    /// Validate and digest the names with `name_key`.
    pub fn compile(&self, key: &[u8], published_by: &str) -> Result<ListPublished, String> {
        if self.list.is_empty()
            || self.list.len() > 64
            || !self.list.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err("list must be 1-64 of letters, digits, '_', '-', '.'".into());
        }
        if self.entries.len() > LIST_ENTRIES_MAX {
            return Err(format!("{} entries, at most {LIST_ENTRIES_MAX} per list", self.entries.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        for e in &self.entries {
            if e.id.is_empty() || e.id.len() > 64 || !seen.insert(e.id.clone()) {
                return Err(format!("entry id '{}' must be 1-64 bytes and unique", e.id));
            }
            if e.names.len() + e.ids.len() == 0
                || e.names.len() > NAMES_PER_ENTRY_MAX
                || e.ids.len() > NAMES_PER_ENTRY_MAX
            {
                return Err(format!("entry {}: needs 1-{NAMES_PER_ENTRY_MAX} names or ids", e.id));
            }
            let mut name_keys = Vec::new();
            for n in &e.names {
                name_keys.push(
                    name_key(key, n)
                        .ok_or_else(|| format!("entry {}: name '{n}' has no letters or digits", e.id))?,
                );
            }
            name_keys.sort();
            name_keys.dedup();
            let mut ids: Vec<String> =
                e.ids.iter().map(|i| normalize_id(i)).filter(|i| !i.is_empty()).collect();
            ids.sort();
            ids.dedup();
            entries.push(ListEntry { id: e.id.clone(), name_keys, ids });
        }
        let version = version_of("ls_", &(&self.list, &entries));
        Ok(ListPublished { list: self.list.clone(), version, entries, published_by: published_by.to_owned() })
    }
}

/// One rule that fired: its score and the feature values it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleHit {
    pub rule: String,
    /// velocity | threshold | ctr | tier_limit | blocked_user | missing_user | sanctions | jurisdiction | no_rate
    pub kind: String,
    pub score: u32,
    pub features: std::collections::BTreeMap<String, String>,
}

/// The rate an amount was converted to the report currency with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateApplied {
    pub base: crate::Currency,
    pub quote: crate::Currency,
    pub rate_e9: i64,
    /// The rates publication it came from (its event id).
    pub version: String,
}

/// `risk.decision_recorded`: a decision and everything it was based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecorded {
    pub transfer_id: String,
    /// The transfer's version when screened (a retry is screened again under a new one).
    pub transfer_version: u32,
    pub kind: crate::TransferKind,
    pub amount: crate::Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub requested_by: String,
    pub decision: crate::transfers::RiskOutcome,
    pub score: u32,
    pub hits: Vec<RuleHit>,
    pub rule_set: String,
    pub rule_set_version: String,
    /// The amount in the rule set's report currency (absent when no rate was seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_report_minor: Option<i64>,
    pub report_currency: crate::Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateApplied>,
    /// Versions of the lists matched against, by list name.
    pub lists: std::collections::BTreeMap<String, String>,
    /// The amount is over the currency-transaction-report threshold.
    pub ctr: bool,
    /// A shadow rule set's decision: recorded, never acted on.
    pub shadow: bool,
    /// Set on a manual review's decision: the officer and their reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_reason: Option<String>,
    /// The screening request's event time.
    pub screened_at: chrono::DateTime<chrono::Utc>,
}

/// `risk.input_rejected`: an input risk scoring did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskInputRejected {
    pub input_event_id: uuid::Uuid,
    pub input_event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    pub reason: String,
}
