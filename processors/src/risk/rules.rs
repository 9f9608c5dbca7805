//! The rules: one pure function from a rule set and the facts about a transfer to a scored, explained
//! decision. The live processor, shadow mode and `riverbank risk backtest` all call [`evaluate`]: there
//! is no second implementation of any rule.
use riverbank_schemas::risk::{
    normalize_id, ListPublished, RateApplied, RuleHit, Rules, VelocitySubject, REJECT_ABOVE_SCORE,
    REVIEW_FROM_SCORE, TIER_ROLLING_WINDOW_MS,
};
use riverbank_schemas::transfers::{RiskOutcome, ScreeningRequested};
use riverbank_schemas::{Currency, Money};
use serde::{Deserialize, Serialize};

use super::velocity::{History, WindowSum};

/// Sanctions entries recorded per decision at most.
pub const MATCHES_RECORDED_MAX: usize = 5;

/// What risk knows of a user, from the KYC processor's `user.*` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRisk {
    pub user_status: String,
    pub kyc_status: String,
    pub tier: u8,
    pub version: u64,
}

impl UserRisk {
    /// The tier a user may use: their tier while their KYC is approved, else 0.
    pub fn effective_tier(&self) -> u8 {
        if self.kyc_status == "approved" {
            self.tier
        } else {
            0
        }
    }

    pub fn blocked(&self) -> bool {
        matches!(self.user_status.as_str(), "frozen" | "suspended" | "closed")
    }
}

/// Everything the rules read about one transfer.
pub struct Facts<'a> {
    pub tenant: &'a str,
    pub request: &'a ScreeningRequested,
    /// The screening request's event time.
    pub at_ms: i64,
    /// `None`: the transfer names a user risk has no KYC record of (or names none).
    pub user: Option<&'a UserRisk>,
    /// The amount in the report currency, and the rate used (absent when no rate was seen).
    pub amount_report: Option<i64>,
    pub rate: Option<RateApplied>,
    pub user_history: Option<&'a History>,
    pub counterparty_history: Option<&'a History>,
    /// Published lists, by name.
    pub lists: &'a [&'a ListPublished],
}

/// A scored decision and the rules that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: RiskOutcome,
    pub score: u32,
    pub hits: Vec<RuleHit>,
    pub ctr: bool,
}

fn hit(rule: &str, kind: &str, score: u32, features: &[(&str, String)]) -> RuleHit {
    RuleHit {
        rule: rule.to_owned(),
        kind: kind.to_owned(),
        score,
        features: features.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
    }
}

fn major(minor: i128, currency: Currency) -> String {
    match i64::try_from(minor) {
        Ok(m) => Money::new(m, currency).to_major_string(),
        Err(_) => format!("{minor} minor units"),
    }
}

/// The counterparty's velocity key: its id, else its first name digest.
pub fn counterparty_key(r: &ScreeningRequested) -> Option<String> {
    let c = r.counterparty.as_ref()?;
    c.id.as_deref().map(normalize_id).or_else(|| c.name_keys.first().cloned())
}

/// Score a transfer. Deterministic: the same rules and facts give the same evaluation.
pub fn evaluate(rules: &Rules, f: &Facts<'_>) -> Evaluation {
    let cur = rules.report_currency;
    let mut hits = Vec::new();
    let mut unpriced = false;
    let r = f.request;
    let amount = f.amount_report;

    // Users: who may move money at all.
    match (&r.user_id, f.user) {
        (None, _) => hits.push(hit("missing_user", "missing_user", rules.missing_user_score, &[])),
        (Some(_), Some(u)) if u.blocked() => hits.push(hit(
            "blocked_user",
            "blocked_user",
            rules.blocked_user_score,
            &[("user_status", u.user_status.clone())],
        )),
        _ => {}
    }
    if r.user_id.is_some() {
        let tier = f.user.map_or(0, UserRisk::effective_tier);
        let kyc = f.user.map_or("not_started".to_owned(), |u| u.kyc_status.clone());
        if let Some(limit) = rules.tier_limits.iter().find(|l| l.tier == tier) {
            match amount {
                None => unpriced = true,
                Some(a) => {
                    let day =
                        f.user_history.map(|h| h.window(f.at_ms, TIER_ROLLING_WINDOW_MS)).unwrap_or_default();
                    let rolling = day.sum + i128::from(a);
                    let over_single = a > limit.single_max_minor;
                    let over_rolling = rolling > i128::from(limit.rolling_24h_max_minor);
                    if over_single || over_rolling {
                        hits.push(hit(
                            &format!("tier_{tier}_limit"),
                            "tier_limit",
                            rules.tier_limit_score,
                            &[
                                ("tier", tier.to_string()),
                                ("kyc_status", kyc),
                                ("amount", major(i128::from(a), cur)),
                                ("single_max", major(i128::from(limit.single_max_minor), cur)),
                                ("rolling_24h", major(rolling, cur)),
                                ("rolling_24h_max", major(i128::from(limit.rolling_24h_max_minor), cur)),
                            ],
                        ));
                    }
                }
            }
        }
    }

    // Sanctions and blacklists: names by digest, ids exactly.
    let mut matched = Vec::new();
    if let Some(c) = &r.counterparty {
        let id = c.id.as_deref().map(normalize_id);
        for list in f.lists {
            for e in &list.entries {
                let by_name = e.name_keys.iter().any(|k| c.name_keys.contains(k));
                let by_id = id.as_ref().is_some_and(|i| e.ids.contains(i));
                if by_name || by_id {
                    matched.push((
                        list.list.clone(),
                        list.version.clone(),
                        e.id.clone(),
                        if by_id { "id" } else { "name" },
                    ));
                }
            }
        }
    }
    let sanctioned = !matched.is_empty();
    if sanctioned {
        let shown: Vec<String> = matched
            .iter()
            .take(MATCHES_RECORDED_MAX)
            .map(|(list, version, entry, by)| format!("{list}:{entry} by {by} ({version})"))
            .collect();
        let features = [("matches", matched.len().to_string()), ("entries", shown.join(", "))];
        hits.push(hit("sanctions", "sanctions", rules.sanctions_score, &features));
    }

    // Jurisdictions.
    let country = r.counterparty.as_ref().and_then(|c| c.country.clone());
    for j in
        rules.jurisdiction.iter().filter(|j| j.tenants.is_empty() || j.tenants.iter().any(|t| t == f.tenant))
    {
        let denied = country.as_ref().is_some_and(|c| j.deny.contains(c));
        let not_allowed = !j.allow.is_empty() && !country.as_ref().is_some_and(|c| j.allow.contains(c));
        if denied || not_allowed {
            let why = if denied { "denied" } else { "not in the allow list" };
            hits.push(hit(
                &j.id,
                "jurisdiction",
                j.score,
                &[("country", country.clone().unwrap_or_else(|| "unknown".into())), ("why", why.into())],
            ));
        }
    }

    // Amounts: single thresholds and the currency transaction report.
    let mut ctr = false;
    for t in rules.threshold.iter().filter(|t| t.kinds.is_empty() || t.kinds.contains(&r.kind)) {
        match amount {
            None => unpriced = true,
            Some(a) if a > t.amount_over_minor => hits.push(hit(
                &t.id,
                "threshold",
                t.score,
                &[
                    ("amount", major(i128::from(a), cur)),
                    ("over", major(i128::from(t.amount_over_minor), cur)),
                ],
            )),
            Some(_) => {}
        }
    }
    if let Some(c) = &rules.ctr {
        match amount {
            None => unpriced = true,
            Some(a) if a > c.amount_over_minor => {
                ctr = true;
                hits.push(hit(
                    "ctr",
                    "ctr",
                    c.score,
                    &[
                        ("amount", major(i128::from(a), cur)),
                        ("over", major(i128::from(c.amount_over_minor), cur)),
                    ],
                ));
            }
            Some(_) => {}
        }
    }

    // Velocity, this transfer included.
    for v in &rules.velocity {
        let history = match v.subject {
            VelocitySubject::User if r.user_id.is_some() => f.user_history,
            VelocitySubject::Counterparty if counterparty_key(r).is_some() => f.counterparty_history,
            _ => continue,
        };
        let mut w: WindowSum = history.map(|h| h.window(f.at_ms, v.window_ms)).unwrap_or_default();
        w.count += 1;
        match amount {
            Some(a) => w.sum += i128::from(a),
            None => w.unpriced = true,
        }
        let over_count = v.count_over.is_some_and(|c| w.count > u64::from(c));
        let over_sum = v.sum_over_minor.is_some_and(|s| w.sum > i128::from(s));
        if v.sum_over_minor.is_some() && w.unpriced {
            unpriced = true;
        }
        if over_count || over_sum {
            let mut features = vec![
                ("subject", v.subject.as_str().to_owned()),
                ("window_s", (v.window_ms / 1000).to_string()),
                ("count", w.count.to_string()),
                ("sum", major(w.sum, cur)),
            ];
            if let Some(c) = v.count_over {
                features.push(("count_over", c.to_string()));
            }
            if let Some(s) = v.sum_over_minor {
                features.push(("sum_over", major(i128::from(s), cur)));
            }
            if history.is_some_and(|h| h.truncated) {
                features.push(("history", "truncated: sums are lower bounds".to_owned()));
            }
            hits.push(hit(&v.id, "velocity", v.score, &features));
        }
    }

    if unpriced {
        hits.push(hit(
            "no_rate",
            "no_rate",
            rules.no_rate_score,
            &[("currency", r.amount.currency.to_string()), ("report_currency", cur.to_string())],
        ));
    }
    let score = hits.iter().fold(0u32, |s, h| s.saturating_add(h.score));
    let decision = if sanctioned || score > REJECT_ABOVE_SCORE {
        RiskOutcome::Block
    } else if score >= REVIEW_FROM_SCORE {
        RiskOutcome::Review
    } else {
        RiskOutcome::Approve
    };
    Evaluation { decision, score, hits, ctr }
}

/// A rate as risk keeps it: 1 `base` = `rate_e9` / 10^9 `quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub rate_e9: i64,
    pub version: String,
}

/// `amount` in `to`, with the latest rate (direct `from/to`, else the inverse of `to/from`), rounded
/// half up at `to`'s precision. `None` when there is no rate or the result does not fit.
/// `rates` looks a pair up by `"{base}/{quote}"`.
pub fn convert(
    amount: Money,
    to: Currency,
    rates: impl Fn(&str) -> Option<Rate>,
) -> Option<(i64, Option<RateApplied>)> {
    if amount.currency == to {
        return Some((amount.amount_minor, None));
    }
    let (pf, pt) = (i128::from(amount.currency.precision()), i128::from(to.precision()));
    let pow = |p: i128| 10i128.checked_pow(u32::try_from(p).ok()?);
    let a = i128::from(amount.amount_minor);
    let direct = rates(&format!("{}/{}", amount.currency, to));
    let (num, den, applied) = if let Some(r) = direct {
        let num = a.checked_mul(i128::from(r.rate_e9))?.checked_mul(pow(pt)?)?;
        let den = 1_000_000_000i128.checked_mul(pow(pf)?)?;
        (
            num,
            den,
            RateApplied { base: amount.currency, quote: to, rate_e9: r.rate_e9, version: r.version.clone() },
        )
    } else {
        let r = rates(&format!("{}/{}", to, amount.currency))?;
        let num = a.checked_mul(1_000_000_000)?.checked_mul(pow(pt)?)?;
        let den = i128::from(r.rate_e9).checked_mul(pow(pf)?)?;
        (
            num,
            den,
            RateApplied { base: to, quote: amount.currency, rate_e9: r.rate_e9, version: r.version.clone() },
        )
    };
    if den <= 0 {
        return None;
    }
    let rounded = num.checked_add(den / 2)? / den;
    Some((i64::try_from(rounded).ok()?, Some(applied)))
}
