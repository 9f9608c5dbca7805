//! Transfers: the state machine of DOMAIN.md and a double-entry ledger with two-phase holds.
//!
//! State is per input partition (inputs are keyed by tenant, so a partition holds whole tenants and every
//! balance check sees all it needs). Every output id is derived from the input id and the output's
//! position, and outputs depend only on state and input: replaying a partition gives identical events.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use riverbank_schemas::processor::{Emit, InputRef, KvState, Processor, Verdict};
use riverbank_schemas::transfers::{
    input_types as it, BalanceChanged, InputRejected, LedgerPosting, PostingPhase, ProviderStatus,
    ProviderTransferStatus, RiskDecided, RiskOutcome, TransferAction, TransferDecision, TransferKind,
    TransferPolicySet, TransferRequested, TransferStatus, TransferStatusChanged,
};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The tenant's outside world: deposits come from it, withdrawals and payouts go to it. May go negative.
pub const EXTERNAL_ACCOUNT: &str = "external";
/// Input ids remembered per transfer for deduplication.
pub const APPLIED_INPUTS_PER_TRANSFER_MAX: usize = 64;

/// Limits of the processor's state, from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransfersLimits {
    /// Final transfers (COMPLETED, CANCELLED) are forgotten this long after they became final (event
    /// time); until then duplicates and late callbacks for them are recognised.
    pub final_retention_ms: i64,
    /// At most this many final transfers are kept per partition (oldest forgotten first).
    pub final_retained_max: usize,
}

impl Default for TransfersLimits {
    fn default() -> Self {
        TransfersLimits { final_retention_ms: 7 * 24 * 3600 * 1000, final_retained_max: 1_000_000 }
    }
}

#[derive(Debug, Clone)]
pub struct TransfersProcessor {
    topics: Topics,
    limits: TransfersLimits,
}

impl TransfersProcessor {
    pub fn new(topics: Topics, limits: TransfersLimits) -> Self {
        TransfersProcessor { topics, limits }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub tenant_id: String,
    pub transfer_id: String,
    pub kind: TransferKind,
    pub amount: Money,
    pub source: String,
    pub destination: String,
    pub requested_by: String,
    pub status: TransferStatus,
    pub version: u32,
    pub risk: Option<RiskOutcome>,
    pub approved_by: Option<String>,
    pub needs_approval: bool,
    pub applied_inputs: VecDeque<Uuid>,
    pub final_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub posted: i64,
    pub pending_debit: i64,
    pub pending_credit: i64,
    pub version: u64,
}

impl Account {
    pub fn available(&self) -> i64 {
        self.posted - self.pending_debit
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub approval_thresholds: Vec<Money>,
    pub overdraft_accounts: Vec<String>,
    pub applied_inputs: VecDeque<Uuid>,
}

/// Per-partition state. Keys: `t/{tenant}/{transfer}`, `a/{tenant}/{account}/{currency}`, `p/{tenant}`, `clock`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TransfersState {
    pub transfers: BTreeMap<String, Transfer>,
    pub accounts: BTreeMap<String, Account>,
    pub policies: BTreeMap<String, Policy>,
    /// Highest event time seen (ms): the processor's only notion of "now".
    pub clock_ms: i64,
    /// Final transfers in the order they became final (derived; rebuilt on restore).
    finals: VecDeque<(i64, String)>,
    dirty: BTreeSet<String>,
}

fn transfer_key(tenant: &str, id: &str) -> String {
    format!("t/{tenant}/{id}")
}

fn account_key(tenant: &str, account: &str, currency: Currency) -> String {
    format!("a/{tenant}/{account}/{currency}")
}

impl KvState for TransfersState {
    fn entries(&self) -> Vec<(String, serde_json::Value)> {
        let mut out =
            Vec::with_capacity(self.transfers.len() + self.accounts.len() + self.policies.len() + 1);
        out.extend(self.transfers.iter().map(|(k, v)| (k.clone(), to_value(v))));
        out.extend(self.accounts.iter().map(|(k, v)| (k.clone(), to_value(v))));
        out.extend(self.policies.iter().map(|(k, v)| (format!("p/{k}"), to_value(v))));
        out.push(("clock".to_owned(), serde_json::Value::from(self.clock_ms)));
        out
    }

    fn take_changes(&mut self) -> Vec<(String, Option<serde_json::Value>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|k| {
                let v = if let Some(rest) = k.strip_prefix("p/") {
                    self.policies.get(rest).map(to_value)
                } else if k == "clock" {
                    Some(serde_json::Value::from(self.clock_ms))
                } else if k.starts_with("t/") {
                    self.transfers.get(&k).map(to_value)
                } else {
                    self.accounts.get(&k).map(to_value)
                };
                (k, v)
            })
            .collect()
    }

    fn restore(entries: Vec<(String, serde_json::Value)>) -> Result<Self, String> {
        let mut s = TransfersState::default();
        for (k, v) in entries {
            let bad = |e: serde_json::Error| format!("checkpoint entry {k}: {e}");
            if let Some(rest) = k.strip_prefix("p/") {
                s.policies.insert(rest.to_owned(), serde_json::from_value(v).map_err(bad)?);
            } else if k == "clock" {
                s.clock_ms = v.as_i64().ok_or_else(|| "checkpoint clock is not an integer".to_owned())?;
            } else if k.starts_with("t/") {
                let t: Transfer = serde_json::from_value(v).map_err(bad)?;
                s.transfers.insert(k, t);
            } else if k.starts_with("a/") {
                let a: Account = serde_json::from_value(v).map_err(bad)?;
                s.accounts.insert(k, a);
            } else {
                return Err(format!("unknown checkpoint entry {k}"));
            }
        }
        let mut finals: Vec<(i64, String)> =
            s.transfers.iter().filter_map(|(k, t)| t.final_at_ms.map(|at| (at, k.clone()))).collect();
        finals.sort();
        s.finals = finals.into();
        Ok(s)
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    // Plain structs of strings and integers always serialize.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl TransfersState {
    /// Sum of posted balances per currency: always zero (money is only moved, never made).
    pub fn posted_sums(&self) -> BTreeMap<String, i64> {
        let mut sums = BTreeMap::new();
        for (k, a) in &self.accounts {
            let currency = k.rsplit('/').next().unwrap_or_default().to_owned();
            *sums.entry(currency).or_insert(0) += a.posted;
        }
        sums
    }
}

/// Outputs of one input, accumulated in order so their ids are `derived_id(input, index)`.
struct Out<'a> {
    input: &'a RawEnvelope,
    topics: &'a Topics,
    env: Environment,
    emits: Vec<Emit>,
}

impl Out<'_> {
    fn push<P: Serialize>(&mut self, topic: String, event_type: &str, payload: P) {
        let index = self.emits.len().to_string();
        let event_id = derived_id(&["transfers", &self.input.event_id.to_string(), &index]);
        let envelope = Envelope {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant_id: self.input.tenant_id.clone(),
            environment: self.input.environment,
            occurred_at: self.input.occurred_at,
            ingested_at: self.input.ingested_at,
            idempotency_key: None,
            source: "riverbank.transfers".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: self.input.trace_id.clone(),
            payload,
        };
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        self.emits.push(Emit { topic, key: self.input.tenant_id.clone(), event_id, payload });
    }

    fn reject(&mut self, transfer_id: Option<&str>, reason: impl Into<String>) {
        let r = InputRejected {
            input_event_id: self.input.event_id,
            input_event_type: self.input.event_type.clone(),
            transfer_id: transfer_id.map(str::to_owned),
            reason: reason.into(),
            at: Some(self.input.occurred_at),
        };
        self.push(self.topics.transfer_rejections(self.env), InputRejected::EVENT_TYPE, r);
    }
}

fn valid_account(a: &str) -> bool {
    (1..=64).contains(&a.len())
        && a != EXTERNAL_ACCOUNT
        && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}

impl Processor for TransfersProcessor {
    type State = TransfersState;

    fn name(&self) -> &'static str {
        "transfers"
    }

    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String> {
        vec![topics.transfer_inputs(env)]
    }

    fn apply(&self, state: &mut TransfersState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let mut out = Out { input: &input, topics: &self.topics, env: at.environment, emits: Vec::new() };
        let now_ms = input.occurred_at.timestamp_millis();
        if now_ms > state.clock_ms {
            state.clock_ms = now_ms;
            state.dirty.insert("clock".to_owned());
        }
        let result = match input.event_type.as_str() {
            it::REQUESTED => decode(&input).map(|r: TransferRequested| self.request(state, &mut out, r)),
            it::APPROVED => decode(&input).map(|d: TransferDecision| self.decide(state, &mut out, d, true)),
            it::APPROVAL_REJECTED => {
                decode(&input).map(|d: TransferDecision| self.decide(state, &mut out, d, false))
            }
            it::CANCEL_REQUESTED => decode(&input).map(|a: TransferAction| self.cancel(state, &mut out, a)),
            it::RETRY_REQUESTED => decode(&input).map(|a: TransferAction| self.retry(state, &mut out, a)),
            it::PROVIDER_STATUS => decode(&input).map(|p: ProviderStatus| self.provider(state, &mut out, p)),
            it::RISK_DECIDED => decode(&input).map(|r: RiskDecided| self.risk(state, &mut out, r)),
            it::POLICY_SET => decode(&input).map(|p: TransferPolicySet| self.policy(state, &mut out, p)),
            other => Err(format!("transfers has no rule for {other}")),
        };
        if let Err(reason) = result {
            return Verdict::Poison(reason);
        }
        self.evict(state);
        Verdict::Emit(out.emits)
    }
}

fn decode<P: serde::de::DeserializeOwned>(input: &RawEnvelope) -> Result<P, String> {
    if input.schema_version != 1 {
        return Err(format!("{} v{} is not understood (v1 only)", input.event_type, input.schema_version));
    }
    serde_json::from_value(input.payload.clone())
        .map_err(|e| format!("payload of {} does not match its schema: {e}", input.event_type))
}

impl TransfersProcessor {
    /// Look up the transfer an input targets, deduplicating on the input's event id.
    /// `Ok(None)`: a duplicate, already applied: emit nothing.
    fn target<'s>(
        state: &'s mut TransfersState,
        out: &mut Out<'_>,
        transfer_id: &str,
    ) -> Result<Option<&'s mut Transfer>, ()> {
        let key = transfer_key(&out.input.tenant_id, transfer_id);
        match state.transfers.get_mut(&key) {
            None => {
                out.reject(Some(transfer_id), "unknown transfer");
                Err(())
            }
            Some(t) if t.applied_inputs.contains(&out.input.event_id) => Ok(None),
            Some(t) => {
                t.applied_inputs.push_back(out.input.event_id);
                if t.applied_inputs.len() > APPLIED_INPUTS_PER_TRANSFER_MAX {
                    t.applied_inputs.pop_front();
                }
                state.dirty.insert(key);
                Ok(Some(t))
            }
        }
    }

    fn request(&self, state: &mut TransfersState, out: &mut Out<'_>, r: TransferRequested) {
        let tenant = out.input.tenant_id.clone();
        let key = transfer_key(&tenant, &r.transfer_id);
        if let Some(existing) = state.transfers.get(&key) {
            if !existing.applied_inputs.contains(&out.input.event_id) {
                out.reject(Some(&r.transfer_id), "transfer id already used by another request");
            }
            return;
        }
        if r.transfer_id.is_empty() || r.transfer_id.len() > 128 {
            out.reject(Some(&r.transfer_id), "transfer_id must be 1-128 characters");
            return;
        }
        let (source, destination) = match r.kind {
            TransferKind::Deposit => (Some(EXTERNAL_ACCOUNT.to_owned()), r.destination_account.clone()),
            TransferKind::Withdrawal | TransferKind::Payout => {
                (r.source_account.clone(), Some(EXTERNAL_ACCOUNT.to_owned()))
            }
            TransferKind::Internal => (r.source_account.clone(), r.destination_account.clone()),
        };
        let needs_approval = state
            .policies
            .get(&tenant)
            .and_then(|p| p.approval_thresholds.iter().find(|m| m.currency == r.amount.currency))
            .is_some_and(|limit| r.amount.amount_minor > limit.amount_minor);
        let mut t = Transfer {
            tenant_id: tenant.clone(),
            transfer_id: r.transfer_id.clone(),
            kind: r.kind,
            amount: r.amount,
            source: source.clone().unwrap_or_default(),
            destination: destination.clone().unwrap_or_default(),
            requested_by: r.requested_by.clone(),
            status: TransferStatus::Initiated,
            version: 0,
            risk: None,
            approved_by: None,
            needs_approval,
            applied_inputs: VecDeque::from([out.input.event_id]),
            final_at_ms: None,
        };
        self.status(out, &mut t, TransferStatus::Initiated, None);
        self.status(out, &mut t, TransferStatus::Validating, None);
        let invalid = if r.amount.amount_minor <= 0 {
            Some("amount must be greater than zero".to_owned())
        } else {
            match (&source, &destination) {
                (None, _) => Some(format!("{:?} needs source_account", r.kind).to_lowercase()),
                (_, None) => Some(format!("{:?} needs destination_account", r.kind).to_lowercase()),
                (Some(s), Some(d)) if s == d => Some("source and destination must differ".to_owned()),
                (Some(s), Some(d)) => [s, d]
                    .into_iter()
                    .find(|a| *a != EXTERNAL_ACCOUNT && !valid_account(a))
                    .map(|a| format!("account '{a}' must be 1-64 of letters, digits, '_', '-', ':'")),
            }
        };
        if let Some(reason) = invalid {
            self.status(out, &mut t, TransferStatus::Rejected, Some(reason));
        } else if let Err(reason) = self.hold(state, out, &t) {
            self.status(out, &mut t, TransferStatus::Rejected, Some(reason));
        } else {
            self.status(out, &mut t, TransferStatus::Pending, None);
            self.status(out, &mut t, TransferStatus::ComplianceCheck, None);
        }
        state.dirty.insert(key.clone());
        state.transfers.insert(key, t);
    }

    fn decide(&self, state: &mut TransfersState, out: &mut Out<'_>, d: TransferDecision, approve: bool) {
        let Ok(Some(t)) = Self::target(state, out, &d.transfer_id) else { return };
        let mut t = t.clone();
        if t.status != TransferStatus::ComplianceCheck {
            out.reject(
                Some(&d.transfer_id),
                format!("a decision needs COMPLIANCE_CHECK; transfer is {:?}", t.status),
            );
        } else if d.actor == t.requested_by {
            out.reject(Some(&d.transfer_id), "the approver must not be the requester (maker-checker)");
        } else if approve {
            t.approved_by = Some(d.actor);
            if t.risk.is_some() && t.risk != Some(RiskOutcome::Block) {
                self.status(out, &mut t, TransferStatus::Approved, None);
            }
        } else {
            self.release(state, out, &t);
            let reason = d.reason.unwrap_or_else(|| "rejected by approver".to_owned());
            self.status(out, &mut t, TransferStatus::Blocked, Some(reason));
        }
        self.store(state, t);
    }

    fn risk(&self, state: &mut TransfersState, out: &mut Out<'_>, r: RiskDecided) {
        let Ok(Some(t)) = Self::target(state, out, &r.transfer_id) else { return };
        let mut t = t.clone();
        if t.status != TransferStatus::ComplianceCheck {
            out.reject(
                Some(&r.transfer_id),
                format!("a risk decision needs COMPLIANCE_CHECK; transfer is {:?}", t.status),
            );
        } else {
            t.risk = Some(r.decision);
            match r.decision {
                RiskOutcome::Block => {
                    self.release(state, out, &t);
                    let reason = format!(
                        "risk score {} (rules {}): {}",
                        r.score,
                        r.rule_set_version,
                        r.reasons.join(", ")
                    );
                    self.status(out, &mut t, TransferStatus::Blocked, Some(reason));
                }
                RiskOutcome::Approve if !t.needs_approval || t.approved_by.is_some() => {
                    self.status(out, &mut t, TransferStatus::Approved, None);
                }
                RiskOutcome::Review if t.approved_by.is_some() => {
                    self.status(out, &mut t, TransferStatus::Approved, None);
                }
                // Waits for a human approval.
                RiskOutcome::Approve | RiskOutcome::Review => {}
            }
        }
        self.store(state, t);
    }

    fn cancel(&self, state: &mut TransfersState, out: &mut Out<'_>, a: TransferAction) {
        let Ok(Some(t)) = Self::target(state, out, &a.transfer_id) else { return };
        let mut t = t.clone();
        if t.status.can_move_to(TransferStatus::Cancelled) {
            self.status(out, &mut t, TransferStatus::Cancelled, None);
        } else {
            out.reject(
                Some(&a.transfer_id),
                format!("only BLOCKED or REJECTED transfers can be cancelled; transfer is {:?}", t.status),
            );
        }
        self.store(state, t);
    }

    fn retry(&self, state: &mut TransfersState, out: &mut Out<'_>, a: TransferAction) {
        let Ok(Some(t)) = Self::target(state, out, &a.transfer_id) else { return };
        let mut t = t.clone();
        if t.status != TransferStatus::Failed {
            out.reject(
                Some(&a.transfer_id),
                format!("only FAILED transfers can be retried; transfer is {:?}", t.status),
            );
        } else if let Err(reason) = self.hold(state, out, &t) {
            out.reject(Some(&a.transfer_id), format!("retry refused: {reason}"));
        } else {
            t.risk = None;
            t.approved_by = None;
            self.status(out, &mut t, TransferStatus::Pending, Some("retry".to_owned()));
            self.status(out, &mut t, TransferStatus::ComplianceCheck, None);
        }
        self.store(state, t);
    }

    fn provider(&self, state: &mut TransfersState, out: &mut Out<'_>, p: ProviderStatus) {
        use TransferStatus as S;
        let Ok(Some(t)) = Self::target(state, out, &p.transfer_id) else { return };
        let mut t = t.clone();
        // Where the callback says the transfer is, on the execution path APPROVED → … → final.
        let rank = |s: S| match s {
            S::Approved => Some(0),
            S::Processing => Some(1),
            S::Confirming => Some(2),
            S::Completed | S::Failed => Some(3),
            _ => None,
        };
        let target = match p.status {
            ProviderTransferStatus::Processing => S::Processing,
            ProviderTransferStatus::Confirming => S::Confirming,
            ProviderTransferStatus::Completed => S::Completed,
            ProviderTransferStatus::Failed => S::Failed,
        };
        match rank(t.status) {
            None if matches!(t.status, S::Cancelled) => {
                out.reject(
                    Some(&p.transfer_id),
                    format!("late callback {:?}: transfer is CANCELLED", p.status),
                );
            }
            None => out.reject(
                Some(&p.transfer_id),
                format!("callback {:?} before approval: transfer is {:?}", p.status, t.status),
            ),
            Some(current) if rank(target).is_some_and(|r| r <= current) => {
                out.reject(
                    Some(&p.transfer_id),
                    format!("stale callback {:?}: transfer is already {:?}", p.status, t.status),
                );
            }
            Some(_) => {
                // Walk forward along legal edges, so late-arriving intermediate callbacks are not needed.
                let path: &[S] = match target {
                    S::Failed => &[S::Processing, S::Failed],
                    _ => &[S::Processing, S::Confirming, S::Completed],
                };
                for &next in path {
                    if !t.status.can_move_to(next) {
                        continue;
                    }
                    if next == S::Completed {
                        self.post(state, out, &t);
                    }
                    if next == S::Failed {
                        self.release(state, out, &t);
                    }
                    let reason = if next == target { p.reason.clone() } else { None };
                    self.status(out, &mut t, next, reason);
                    if next == target {
                        break;
                    }
                }
            }
        }
        self.store(state, t);
    }

    fn policy(&self, state: &mut TransfersState, out: &mut Out<'_>, p: TransferPolicySet) {
        let tenant = out.input.tenant_id.clone();
        let policy = state.policies.entry(tenant.clone()).or_default();
        if policy.applied_inputs.contains(&out.input.event_id) {
            return;
        }
        if let Some(bad) = p.overdraft_accounts.iter().find(|a| !valid_account(a)) {
            out.reject(None, format!("overdraft account '{bad}' is not a valid account id"));
            return;
        }
        policy.approval_thresholds = p.approval_thresholds;
        policy.overdraft_accounts = p.overdraft_accounts;
        policy.applied_inputs.push_back(out.input.event_id);
        if policy.applied_inputs.len() > APPLIED_INPUTS_PER_TRANSFER_MAX {
            policy.applied_inputs.pop_front();
        }
        state.dirty.insert(format!("p/{tenant}"));
    }

    fn store(&self, state: &mut TransfersState, t: Transfer) {
        let key = transfer_key(&t.tenant_id, &t.transfer_id);
        if t.status.is_final() && t.final_at_ms.is_none() {
            let mut t = t;
            t.final_at_ms = Some(state.clock_ms);
            state.finals.push_back((state.clock_ms, key.clone()));
            state.transfers.insert(key.clone(), t);
        } else {
            state.transfers.insert(key.clone(), t);
        }
        state.dirty.insert(key);
    }

    /// Forget final transfers past retention (event time) or past the count limit.
    fn evict(&self, state: &mut TransfersState) {
        while let Some((at, key)) = state.finals.front().cloned() {
            let expired = state.clock_ms.saturating_sub(at) > self.limits.final_retention_ms;
            if !expired && state.finals.len() <= self.limits.final_retained_max {
                break;
            }
            state.finals.pop_front();
            state.transfers.remove(&key);
            state.dirty.insert(key);
        }
    }

    fn status(&self, out: &mut Out<'_>, t: &mut Transfer, next: TransferStatus, reason: Option<String>) {
        let previous = (t.version > 0).then_some(t.status);
        if let Some(prev) = previous {
            assert!(prev.can_move_to(next), "illegal transition {prev:?} → {next:?} reached the ledger");
            assert!(!prev.is_final(), "a final state is never left");
        }
        t.status = next;
        t.version += 1;
        let e = TransferStatusChanged {
            transfer_id: t.transfer_id.clone(),
            kind: t.kind,
            amount: t.amount,
            previous,
            status: next,
            version: t.version,
            reason,
            cause_event_id: out.input.event_id,
        };
        out.push(out.topics.transfer_status(out.env), TransferStatusChanged::EVENT_TYPE, e);
    }

    fn overdraft_allowed(state: &TransfersState, tenant: &str, account: &str) -> bool {
        account == EXTERNAL_ACCOUNT
            || state.policies.get(tenant).is_some_and(|p| p.overdraft_accounts.iter().any(|a| a == account))
    }

    /// Reserve the amount: source.pending_debit += amount, destination.pending_credit += amount.
    fn hold(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &Transfer) -> Result<(), String> {
        let amount = t.amount.amount_minor;
        let src_key = account_key(&t.tenant_id, &t.source, t.amount.currency);
        let src = state.accounts.get(&src_key).cloned().unwrap_or_default();
        let available = src.available();
        if !Self::overdraft_allowed(state, &t.tenant_id, &t.source) && available < amount {
            return Err(format!(
                "insufficient funds: {} available, {} requested",
                Money::new(available, t.amount.currency),
                t.amount
            ));
        }
        src.pending_debit.checked_add(amount).ok_or("pending debit overflows")?;
        self.move_funds(state, out, t, PostingPhase::Hold);
        Ok(())
    }

    fn release(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &Transfer) {
        if t.status.holds_funds() {
            self.move_funds(state, out, t, PostingPhase::Release);
        }
    }

    fn post(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &Transfer) {
        debug_assert!(t.status.holds_funds());
        self.move_funds(state, out, t, PostingPhase::Post);
    }

    /// Apply one two-legged posting and emit its legs and the two balances.
    fn move_funds(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &Transfer, phase: PostingPhase) {
        let amount = t.amount.amount_minor;
        let currency = t.amount.currency;
        let posting_id =
            derived_id(&["posting", &out.input.event_id.to_string(), &out.emits.len().to_string()]);
        for (account, signed) in [(&t.source, -amount), (&t.destination, amount)] {
            let key = account_key(&t.tenant_id, account, currency);
            let a = state.accounts.entry(key.clone()).or_default();
            match (phase, signed < 0) {
                (PostingPhase::Hold, true) => a.pending_debit += amount,
                (PostingPhase::Hold, false) => a.pending_credit += amount,
                (PostingPhase::Release, true) => a.pending_debit -= amount,
                (PostingPhase::Release, false) => a.pending_credit -= amount,
                (PostingPhase::Post, true) => {
                    a.pending_debit -= amount;
                    a.posted -= amount;
                }
                (PostingPhase::Post, false) => {
                    a.pending_credit -= amount;
                    a.posted += amount;
                }
            }
            assert!(a.pending_debit >= 0 && a.pending_credit >= 0, "pending columns never go negative");
            a.version += 1;
            let balance = BalanceChanged {
                account: account.clone(),
                currency,
                posted_minor: a.posted,
                pending_debit_minor: a.pending_debit,
                pending_credit_minor: a.pending_credit,
                available_minor: a.available(),
                version: a.version,
            };
            state.dirty.insert(key);
            let leg = LedgerPosting {
                posting_id,
                transfer_id: t.transfer_id.clone(),
                phase,
                account: account.clone(),
                amount_minor: signed,
                currency,
            };
            out.push(out.topics.ledger_postings(out.env), LedgerPosting::EVENT_TYPE, leg);
            out.push(out.topics.balances(out.env), BalanceChanged::EVENT_TYPE, balance);
        }
    }
}

#[cfg(test)]
#[path = "transfers_tests.rs"]
mod tests;
