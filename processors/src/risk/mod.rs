//! Risk scoring: every transfer that reaches COMPLIANCE_CHECK is screened against a rule set that is
//! data, and the decision goes back to the transfers processor.
//!
//! Inputs, brought together in the log `{env}.risk.inputs` by its router:
//! - routed (by tenant): `transfer.screening_requested` (transfers), the KYC processor's `user.*`
//!   events (status, KYC status, tier), and `risk.review_decided` commands (compliance officers);
//! - broadcast (every partition): rule sets and sanctions lists (`risk.reference`, published by
//!   `riverbank risk rules publish` / `risk lists publish`) and FX rates (`fx.rates_published`);
//! - ticks: timers forget screened transfers and idle velocity histories.
//!
//! Outputs: `risk.decided` to `transfers.inputs` (approve, review, block; a review's later decision by an
//! officer), and on `risk.decisions` a `risk.decision_recorded` for every decision, live or shadow, with
//! every rule that fired, its score and the feature values it saw, the rule-set version, the rate and
//! list versions used.
//!
//! Until a rule set is published, the built-in one (`deploy/risk/rules.toml`) decides.
pub mod rules;
pub mod velocity;

use riverbank_schemas::commands::{command_types, FxRatesPublished, ReviewDecision};
use riverbank_schemas::processor::{derived_emit, Emit, InputRef, Output, Processor, Spec, Verdict, Via};
use riverbank_schemas::risk::{
    event_types as et, DecisionRecorded, ListFile, ListPublished, RiskInputRejected, RiskReviewDecided,
    RuleSetFile, Rules, RulesPublished, RISK_REVIEW_DECIDED, VELOCITY_WINDOW_MS_MAX,
};
use riverbank_schemas::state::{Cell, Table, Timer, Timers};
use riverbank_schemas::transfers::{input_types, RiskDecided, RiskOutcome, ScreeningRequested};
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use rules::{counterparty_key, evaluate, Facts, Rate, UserRisk};
use velocity::{History, Seen};

/// The built-in rule set.
pub const DEFAULT_RULES_TOML: &str = include_str!("../../../deploy/risk/rules.toml");
/// Screened transfers remembered per partition (so an upstream replay's duplicate is recognised): the
/// earliest screened is forgotten first. Remembering by count, not time, keeps a backlog replayed after
/// a long outage from being taken for duplicates.
pub const SCREENED_MAX: usize = 1_000_000;
/// Transfers waiting for a compliance officer per partition at most: past it, a transfer the rules
/// send to review is blocked instead, with that reason (fail closed).
pub const OPEN_REVIEWS_MAX: usize = 100_000;
/// Users known per partition at most (past it, `user.*` events are dead-lettered with the reason).
pub const USERS_MAX: usize = 5_000_000;
/// Published lists kept at most.
pub const LISTS_MAX: usize = 32;
/// Currency pairs kept at most.
pub const RATES_MAX: usize = 10_000;

/// Parse and validate a rule set file (TOML).
pub fn parse_rules(text: &str) -> Result<Rules, String> {
    let file: RuleSetFile = toml::from_str(text).map_err(|e| format!("rule set: {e}"))?;
    file.compile().map_err(|e| format!("rule set: {e}"))
}

/// Parse, validate and digest a sanctions / blacklist file (TOML) with the deployment's name key.
pub fn parse_list(text: &str, name_key: &[u8], published_by: &str) -> Result<ListPublished, String> {
    let file: ListFile = toml::from_str(text).map_err(|e| format!("list: {e}"))?;
    file.compile(name_key, published_by).map_err(|e| format!("list: {e}"))
}

#[derive(Debug, Clone)]
pub struct RiskProcessor {
    topics: Topics,
    default_rules: Rules,
    /// Backtests: this rule set decides every transfer, whatever was published; no shadow runs.
    forced: Option<Rules>,
}

impl RiskProcessor {
    pub fn new(topics: Topics) -> Self {
        let default_rules =
            parse_rules(DEFAULT_RULES_TOML).expect("the built-in rule set is valid (a unit test checks it)");
        RiskProcessor { topics, default_rules, forced: None }
    }

    /// A processor for backtests (`riverbank risk backtest`): `rules` decide every transfer, in place of
    /// the rule sets the log publishes; the rest of the log (users, rates, lists, reviews) applies as live.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.forced = Some(rules);
        self
    }

    pub fn default_rules(&self) -> &Rules {
        &self.default_rules
    }
}

/// A screened transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Screened {
    /// The transfer version screened last (a retry screens again under a higher one).
    pub version: u32,
    /// Position in screening order (from `RiskState::seq`): the lowest is forgotten first.
    pub seq: u64,
    /// The review decision applied (its input id), once an officer decided.
    pub decided_by_input: Option<Uuid>,
}

/// A transfer waiting for a compliance officer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenReview {
    pub requested_by: String,
    /// The live decision (a `DecisionRecorded`, as JSON: the wire type skips absent fields, which the
    /// binary state encoding cannot).
    pub record_json: String,
}

/// Per-partition state. Checkpoint keys: `live`, `shadow`, `seq`, `l/{list}`, `r/{base}/{quote}`,
/// `u/{tenant}/{user}`, `h/{tenant}/{u|c}/{subject}`, `s/{tenant}/{transfer}`, `v/{tenant}/{transfer}`
/// (open reviews), timers `tm/…`.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskState {
    /// The published live rule set (`None`: the built-in one).
    pub live: Cell<Option<Rules>>,
    /// A candidate rule set run beside the live one.
    pub shadow: Cell<Option<Rules>>,
    pub lists: Table<ListPublished>,
    pub rates: Table<Rate>,
    pub users: Table<UserRisk>,
    pub histories: Table<History>,
    pub screened: Table<Screened>,
    pub reviews: Table<OpenReview>,
    /// The last `Screened::seq` given.
    pub seq: Cell<u64>,
    pub timers: Timers,
    /// Screened transfers by `seq` (derived; rebuilt on restore).
    order: std::collections::BTreeMap<u64, String>,
}

riverbank_schemas::state_tables!(
    RiskState { live, shadow, seq, lists, rates, users, histories, screened, reviews },
    timers = timers,
    after_restore = rebuild_order
);

impl Default for RiskState {
    fn default() -> Self {
        Self::new()
    }
}

impl RiskState {
    pub fn new() -> Self {
        RiskState {
            live: Cell::new("live"),
            shadow: Cell::new("shadow"),
            lists: Table::new("l"),
            rates: Table::new("r"),
            users: Table::new("u"),
            histories: Table::new("h"),
            screened: Table::new("s"),
            reviews: Table::new("v"),
            seq: Cell::new("seq"),
            timers: Timers::new("tm"),
            order: Default::default(),
        }
    }

    fn rebuild_order(&mut self) -> Result<(), String> {
        self.order = self.screened.iter().map(|(k, s)| (s.seq, k.clone())).collect();
        Ok(())
    }

    /// Remember `key` as screened at `version`, forgetting the earliest screened past [`SCREENED_MAX`].
    fn remember(&mut self, key: &str, version: u32) {
        let seq = self.seq.get().saturating_add(1);
        self.seq.set(seq);
        if let Some(old) = self.screened.get(key) {
            self.order.remove(&old.seq);
        }
        self.screened.insert(key.to_owned(), Screened { version, seq, decided_by_input: None });
        self.order.insert(seq, key.to_owned());
        while self.screened.len() > SCREENED_MAX {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.screened.remove(&oldest);
        }
    }
}

use riverbank_schemas::processor::decode_v1 as decode;

/// What risk reads of a KYC `user.*` event (the KYC processor's `UserKycChanged`).
#[derive(Debug, Deserialize)]
struct UserView {
    user_id: String,
    user_status: String,
    kyc_status: String,
    tier: u8,
    version: u64,
}

/// Outputs of one input, in order, with ids derived from the input's id and position.
struct Out<'a> {
    input: &'a RawEnvelope,
    topics: &'a Topics,
    env: Environment,
    emits: Vec<Emit>,
}

impl Out<'_> {
    fn push<P: Serialize>(&mut self, topic: String, event_type: &str, payload: P) {
        let e = derived_emit("risk", self.input, self.emits.len(), topic, event_type, payload);
        self.emits.push(e);
    }

    fn reject(&mut self, transfer_id: Option<&str>, reason: impl Into<String>) {
        let r = RiskInputRejected {
            input_event_id: self.input.event_id,
            input_event_type: self.input.event_type.clone(),
            transfer_id: transfer_id.map(str::to_owned),
            reason: reason.into(),
        };
        self.push(self.topics.risk_decisions(self.env), et::INPUT_REJECTED, r);
    }

    fn decided(&mut self, record: &DecisionRecorded) {
        let reasons =
            record.hits.iter().filter(|h| h.score > 0).map(|h| format!("{} +{}", h.rule, h.score)).collect();
        let d = RiskDecided {
            transfer_id: record.transfer_id.clone(),
            decision: record.decision,
            score: record.score,
            reasons,
            rule_set_version: record.rule_set_version.clone(),
            reviewed_by: record.reviewed_by.clone(),
        };
        self.push(self.topics.transfer_inputs(self.env), input_types::RISK_DECIDED, d);
    }
}

fn user_key(tenant: &str, user: &str) -> String {
    format!("{tenant}/{user}")
}

fn history_key(tenant: &str, subject: char, id: &str) -> String {
    format!("{tenant}/{subject}/{id}")
}

impl Processor for RiskProcessor {
    type State = RiskState;

    fn name(&self) -> &'static str {
        "risk"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            log: topics.log(env, "risk"),
            routed: vec![topics.transfer_screening(env), topics.kyc_events(env), topics.risk_commands(env)],
            broadcast: vec![topics.risk_reference(env), topics.fx_rates(env)],
            ticks: true,
            outputs: vec![
                Output::new(topics.transfer_inputs(env), &[input_types::RISK_DECIDED]),
                Output::new(topics.risk_decisions(env), &[et::DECISION_RECORDED, et::INPUT_REJECTED]),
            ],
            stateful: true,
        }
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(env)
    }

    fn apply(&self, state: &mut RiskState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let mut out = Out { input: &input, topics: &self.topics, env: at.environment, emits: Vec::new() };
        let result = match (input.event_type.as_str(), at.via) {
            (ScreeningRequested::EVENT_TYPE, _) => {
                decode(&input).and_then(|r: ScreeningRequested| self.screen(state, &mut out, r))
            }
            (RISK_REVIEW_DECIDED, _) => {
                decode(&input).and_then(|d: RiskReviewDecided| review(state, &mut out, d))
            }
            (et::RULES_PUBLISHED, _) => {
                decode(&input).map(|p: RulesPublished| rules_published(state, &mut out, p))
            }
            (et::LIST_PUBLISHED, _) => {
                decode(&input).map(|p: ListPublished| list_published(state, &mut out, p))
            }
            (command_types::FX_RATES_PUBLISHED, _) => {
                decode(&input).and_then(|p: FxRatesPublished| rates_published(state, &input, p))
            }
            // Other FX commands share the broadcast topic; other KYC events carry no user state.
            (_, Via::Broadcast { .. }) => Ok(()),
            (t, _) if t.starts_with("user.") => decode(&input).and_then(|u: UserView| user(state, &input, u)),
            ("kyc.input_rejected", _) => Ok(()),
            (other, _) => Err(format!("risk has no rule for {other}")),
        };
        match result {
            Ok(()) => Verdict::Emit(out.emits),
            Err(reason) => Verdict::Poison(reason),
        }
    }

    fn on_timer(&self, state: &mut RiskState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        if let Some(key) = timer.key.strip_prefix("h/") {
            let horizon = at.now_ms.saturating_sub(VELOCITY_WINDOW_MS_MAX);
            let newest = state.histories.get_mut(key).map(|h| {
                h.prune(horizon);
                h.newest_ms()
            });
            match newest {
                Some(None) => {
                    state.histories.remove(key);
                }
                Some(Some(n)) => state.timers.schedule(
                    &timer.key,
                    n.saturating_add(VELOCITY_WINDOW_MS_MAX).saturating_add(1),
                    "",
                ),
                None => {}
            }
        }
        Verdict::Emit(Vec::new())
    }
}

impl RiskProcessor {
    fn screen(&self, state: &mut RiskState, out: &mut Out<'_>, r: ScreeningRequested) -> Result<(), String> {
        let tenant = out.input.tenant_id.clone();
        let key = format!("{tenant}/{}", r.transfer_id);
        if state.screened.get(&key).is_some_and(|s| s.version >= r.version) {
            return Ok(()); // a duplicate (an upstream replay): already decided
        }
        let at_ms = out.input.occurred_at.timestamp_millis();
        let live = match &self.forced {
            Some(r) => r.clone(),
            None => state.live.get().clone().unwrap_or_else(|| self.default_rules.clone()),
        };
        let mut record = decide(state, &tenant, &r, at_ms, &live, out.input, false);
        if record.decision == RiskOutcome::Review && state.reviews.len() >= OPEN_REVIEWS_MAX {
            record.decision = RiskOutcome::Block;
            record.hits.push(riverbank_schemas::risk::RuleHit {
                rule: "review_queue_full".into(),
                kind: "review_queue_full".into(),
                score: 0,
                features: [("open_reviews_max".to_owned(), OPEN_REVIEWS_MAX.to_string())].into(),
            });
        }
        out.decided(&record);
        out.push(out.topics.risk_decisions(out.env), et::DECISION_RECORDED, &record);
        if let Some(shadow) = state.shadow.get().clone().filter(|_| self.forced.is_none()) {
            let shadowed = decide(state, &tenant, &r, at_ms, &shadow, out.input, true);
            out.push(out.topics.risk_decisions(out.env), et::DECISION_RECORDED, &shadowed);
        }
        // What was not blocked counts towards the velocity of its user and counterparty.
        if record.decision != RiskOutcome::Block {
            let seen = Seen { at_ms, amount: record.amount_report_minor };
            let subjects = [
                r.user_id.as_ref().map(|u| history_key(&tenant, 'u', u)),
                counterparty_key(&r).map(|c| history_key(&tenant, 'c', &c)),
            ];
            for hk in subjects.into_iter().flatten() {
                let newest = state.histories.upsert(&hk, |h| {
                    h.insert(seen);
                    h.newest_ms().unwrap_or(at_ms)
                });
                let due = newest.saturating_add(VELOCITY_WINDOW_MS_MAX).saturating_add(1);
                state.timers.schedule(&format!("h/{hk}"), due, "");
            }
        }
        if record.decision == RiskOutcome::Review {
            let record_json = serde_json::to_string(&record).map_err(|e| format!("decision record: {e}"))?;
            state
                .reviews
                .insert(key.clone(), OpenReview { requested_by: r.requested_by.clone(), record_json });
        } else {
            // A retry screened again no longer waits on the earlier review.
            state.reviews.remove(&key);
        }
        state.remember(&key, r.version);
        Ok(())
    }
}

/// Evaluate `rules` on a screening request against the state as it is.
fn decide(
    state: &RiskState,
    tenant: &str,
    r: &ScreeningRequested,
    at_ms: i64,
    rules: &Rules,
    input: &RawEnvelope,
    shadow: bool,
) -> DecisionRecorded {
    let converted = rules::convert(r.amount, rules.report_currency, |pair| state.rates.get(pair).cloned());
    let (amount_report, rate) = match converted {
        Some((a, rate)) => (Some(a), rate),
        None => (None, None),
    };
    let user = r.user_id.as_ref().and_then(|u| state.users.get(&user_key(tenant, u)));
    let user_history = r.user_id.as_ref().and_then(|u| state.histories.get(&history_key(tenant, 'u', u)));
    let counterparty_history =
        counterparty_key(r).and_then(|c| state.histories.get(&history_key(tenant, 'c', &c)));
    let lists: Vec<&ListPublished> = state.lists.values().collect();
    let facts = Facts {
        tenant,
        request: r,
        at_ms,
        user,
        amount_report,
        rate: rate.clone(),
        user_history,
        counterparty_history,
        lists: &lists,
    };
    let e = evaluate(rules, &facts);
    DecisionRecorded {
        transfer_id: r.transfer_id.clone(),
        transfer_version: r.version,
        kind: r.kind,
        amount: r.amount,
        user_id: r.user_id.clone(),
        requested_by: r.requested_by.clone(),
        decision: e.decision,
        score: e.score,
        hits: e.hits,
        rule_set: rules.name.clone(),
        rule_set_version: rules.version.clone(),
        amount_report_minor: amount_report,
        report_currency: rules.report_currency,
        rate,
        lists: lists.iter().map(|l| (l.list.clone(), l.version.clone())).collect(),
        ctr: e.ctr,
        shadow,
        reviewed_by: None,
        review_reason: None,
        screened_at: input.occurred_at,
    }
}

/// A compliance officer's decision on a transfer held for review.
fn review(state: &mut RiskState, out: &mut Out<'_>, d: RiskReviewDecided) -> Result<(), String> {
    let key = format!("{}/{}", out.input.tenant_id, d.transfer_id);
    let id = out.input.event_id;
    if state.screened.get(&key).is_some_and(|s| s.decided_by_input == Some(id)) {
        return Ok(()); // this decision again: already applied
    }
    let Some(open) = state.reviews.get(&key) else {
        out.reject(
            Some(&d.transfer_id),
            "transfer is not awaiting a risk review (decided already, or never held)",
        );
        return Ok(());
    };
    if d.actor == open.requested_by {
        out.reject(Some(&d.transfer_id), "the reviewer must not be the requester (maker-checker)");
        return Ok(());
    }
    let mut record: DecisionRecorded =
        serde_json::from_str(&open.record_json).map_err(|e| format!("open review of {key}: {e}"))?;
    record.decision = match d.decision {
        ReviewDecision::Approved => RiskOutcome::Approve,
        ReviewDecision::Rejected => RiskOutcome::Block,
    };
    record.reviewed_by = Some(d.actor.clone());
    record.review_reason = Some(d.reason.clone());
    out.decided(&record);
    out.push(out.topics.risk_decisions(out.env), et::DECISION_RECORDED, &record);
    state.reviews.remove(&key);
    if state.screened.contains_key(&key) {
        state.screened.upsert(&key, |s| s.decided_by_input = Some(id));
    }
    Ok(())
}

fn rules_published(state: &mut RiskState, out: &mut Out<'_>, p: RulesPublished) {
    if !p.rules.version_matches() {
        out.reject(None, format!("rule set {} does not hash to its version: not applied", p.rules.version));
        return;
    }
    if p.shadow {
        state.shadow.set(Some(p.rules));
    } else {
        state.live.set(Some(p.rules));
    }
}

fn list_published(state: &mut RiskState, out: &mut Out<'_>, p: ListPublished) {
    if !state.lists.contains_key(&p.list) && state.lists.len() >= LISTS_MAX {
        out.reject(
            None,
            format!("list {} not applied: {LISTS_MAX} lists are kept at most (LISTS_MAX)", p.list),
        );
        return;
    }
    state.lists.insert(p.list.clone(), p);
}

fn rates_published(state: &mut RiskState, input: &RawEnvelope, p: FxRatesPublished) -> Result<(), String> {
    for r in p.rates {
        let pair = format!("{}/{}", r.base, r.quote);
        if !state.rates.contains_key(&pair) && state.rates.len() >= RATES_MAX {
            return Err(format!("{RATES_MAX} currency pairs kept at most (RATES_MAX)"));
        }
        state.rates.insert(pair, Rate { rate_e9: r.rate_e9, version: input.event_id.to_string() });
    }
    Ok(())
}

fn user(state: &mut RiskState, input: &RawEnvelope, u: UserView) -> Result<(), String> {
    let key = user_key(&input.tenant_id, &u.user_id);
    match state.users.get(&key) {
        Some(known) if known.version >= u.version => return Ok(()), // older or the same: already known
        None if state.users.len() >= USERS_MAX => {
            return Err(format!("{USERS_MAX} users known in this partition (USERS_MAX)"))
        }
        _ => {}
    }
    let v =
        UserRisk { user_status: u.user_status, kyc_status: u.kyc_status, tier: u.tier, version: u.version };
    state.users.insert(key, v);
    Ok(())
}

/// Inputs for the conformance suite: every input kind, in an order that exercises each rule.
pub fn examples(env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let screening = |id: &str,
                     user: Option<&str>,
                     minor: i64,
                     cur: &str,
                     cp: serde_json::Value,
                     version: u32| {
        json!({"transfer_id": id, "kind": "payout", "amount": {"amount_minor": minor, "currency": cur},
            "requested_by": "user:maker", "user_id": user, "source_account": "acct_1", "destination_account": "external",
            "counterparty": cp, "version": version, "needs_approval": false})
    };
    let user = |id: &str, status: &str, kyc: &str, tier: u8, version: u64| {
        json!({"user_id": id, "user_status": status, "kyc_status": kyc, "tier": tier, "version": version,
            "cause_event_id": Uuid::nil()})
    };
    let default = parse_rules(DEFAULT_RULES_TOML).ok();
    let shadow = default.clone().map(|mut r| {
        r.name = "candidate".into();
        r.threshold.iter_mut().for_each(|t| t.amount_over_minor = 50_000);
        r.sealed()
    });
    let list = parse_list(
        "list = \"sanctions-example\"\n[[entries]]\nid = \"E1\"\nnames = [\"Ivan Petrov\"]\nids = [\"0xBAD\"]\n",
        b"example-name-key",
        "compliance",
    )
    .ok();
    let sanctioned_name = riverbank_schemas::risk::name_keys(b"example-name-key", "Petrov, Ivan");
    let steps: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "tenant-a",
            "fx.rates_published",
            json!({"as_of": "2026-09-21T00:00:00Z", "rates": [{"base": "EUR", "quote": "USD", "rate_e9": 1_084_500_000}], "published_by": "rates-desk"}),
        ),
        ("tenant-a", "user.verified", user("u1", "active", "approved", 1, 2)),
        ("tenant-a", "user.kyc.updated", user("u1", "pending", "pending", 0, 1)),
        (
            "tenant-a",
            ScreeningRequested::EVENT_TYPE,
            screening("t1", Some("u1"), 10_000, "USD", json!({"id": "payee-1", "country": "DE"}), 4),
        ),
        (
            "tenant-a",
            ScreeningRequested::EVENT_TYPE,
            screening("t2", Some("u1"), 150_000, "EUR", json!({"id": "payee-2"}), 4),
        ),
        (
            "tenant-a",
            RISK_REVIEW_DECIDED,
            json!({"transfer_id": "t2", "decision": "approved", "reason": "documents checked", "actor": "user:officer"}),
        ),
        (
            "tenant-a",
            RISK_REVIEW_DECIDED,
            json!({"transfer_id": "t1", "decision": "rejected", "reason": "late", "actor": "user:officer"}),
        ),
        ("tenant-a", ScreeningRequested::EVENT_TYPE, screening("t3", Some("u2"), 500, "JPY", json!(null), 4)),
        (
            "tenant-a",
            ScreeningRequested::EVENT_TYPE,
            screening("t4", None, 500, "USD", json!({"country": "KP"}), 4),
        ),
        ("tenant-x", et::LIST_PUBLISHED, serde_json::to_value(&list).unwrap_or_default()),
        (
            "tenant-x",
            et::RULES_PUBLISHED,
            json!({"rules": shadow, "shadow": true, "published_by": "compliance"}),
        ),
        (
            "tenant-b",
            ScreeningRequested::EVENT_TYPE,
            screening("t5", None, 700, "USD", json!({"name_keys": sanctioned_name}), 4),
        ),
        (
            "tenant-b",
            ScreeningRequested::EVENT_TYPE,
            screening("t6", None, 700, "USD", json!({"id": "0xbad "}), 4),
        ),
        ("tenant-a", "user.frozen", user("u1", "frozen", "approved", 1, 3)),
        (
            "tenant-a",
            ScreeningRequested::EVENT_TYPE,
            screening("t1", Some("u1"), 10_000, "USD", json!({"id": "payee-1"}), 9),
        ),
        (
            "tenant-x",
            et::RULES_PUBLISHED,
            json!({"rules": default, "shadow": false, "published_by": "compliance"}),
        ),
        ("tenant-a", ScreeningRequested::EVENT_TYPE, json!({"transfer_id": 7})),
        ("tenant-a", "risk.unheard_of", json!({})),
    ];
    let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (tenant, event_type, payload))| {
            let at = t0 + chrono::Duration::seconds(30 * i as i64);
            let id = derived_id(&["risk-example", &i.to_string()]);
            Envelope::new(id, event_type, tenant, env, at, "riverbank.transfers", payload)
        })
        .collect()
}

#[cfg(test)]
mod tests;
