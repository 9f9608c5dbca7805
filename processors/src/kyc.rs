//! KYC lifecycle: per (tenant, user) a user status, a KYC status, a tier 0–3 and an expiry, driven by KYC
//! vendors' results, admin decisions and time (schemas/src/kyc.rs states the contract).
//!
//! - **Inputs** (its router copies them into `{env}.kyc.inputs`, keyed by tenant): provider webhooks
//!   (`{env}.ingest.webhooks`; those whose mapped type is `kyc.*` are KYC results, the rest are not this
//!   processor's business and emit nothing) and admin commands (`{env}.kyc.commands`: freeze, unfreeze,
//!   close, manual review decision). Vendor results are read from `WebhookReceived.fields` (the router
//!   drops bodies): `user_id`, `case_id`, `tier`, `reason`.
//! - **Cases.** Each vendor case has a status (`pending`, `in_review`, `approved`, `rejected`) and the
//!   vendor time (`occurred_at`) of its last change. A result older than that is late and refused, so a
//!   late "needs review" never overtakes an approval. Moves: pending → in_review | approved | rejected;
//!   in_review → approved | rejected; approved → rejected (the vendor revokes); rejected → approved (a
//!   vendor's manual approval after an automatic decline); a tier reached on an approved case raises its
//!   tier. A new verification is a new case. A manual review decision applies only to a case in review.
//! - **The user.** The latest approval (a case approved, a tier reached, a manual approval) is the
//!   user's *grant*: KYC `approved` at its tier until `approval_valid` after its time, when a timer makes
//!   it `expired` (a `user.kyc.expiring` reminder comes `expiry_reminder` before). While a grant holds,
//!   other cases in review or rejected do not change the user's KYC; a rejection of the granting case
//!   revokes it (tier 0). A `pending` user becomes `active` with a grant; an active user whose grant
//!   expires or is revoked is `suspended` until the next one. Freeze (not closed, not frozen), unfreeze
//!   (only frozen; back to what the KYC gives) and close (final) are admin decisions with their actor.
//!   A closed user takes no more inputs.
//! - **Exactly one output per applied input**: a `user.*` event with the user's full state and a version
//!   one above the last (ids derived from the input), or `kyc.input_rejected` with the reason. A
//!   duplicate input (the same vendor event, or the same command) is recognised and emits nothing.
//!
//! State is bounded: users per partition, cases and history entries per user, remembered inputs (see
//! the constants and [`KycLimits`]).
use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use riverbank_schemas::commands::{
    command_types, KycReviewDecided, KycUserAction, KycUserActionRequested, ReviewDecision,
};
use riverbank_schemas::kyc::{
    event_types as et, fields, input_types as it, KycInputRejected, KycStatus, UserKycChanged, UserStatus,
    TIER_MAX,
};
use riverbank_schemas::processor::{Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::state::{remember_bounded, Cell, Table, Timer, Timers};
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics, WebhookReceived};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;
/// History entries kept per user (the oldest is dropped first; the stores keep all of them).
pub const HISTORY_ENTRIES_PER_USER_MAX: usize = 50;
/// Cases kept per user; past it the oldest case that does not hold the user's grant is forgotten (a
/// later result for it counts as a new case).
pub const CASES_PER_USER_MAX: usize = 20;
/// Longest user or case id, in bytes (as the edge's `check_id`).
pub const ID_BYTES_MAX: usize = 64;
/// Longest provider name, in bytes.
pub const PROVIDER_BYTES_MAX: usize = 64;
/// Longest reason or actor kept, in bytes (longer ones are cut at a character boundary).
pub const TEXT_BYTES_MAX: usize = 500;
/// Where this processor's outputs say they come from.
pub const SOURCE: &str = "riverbank.kyc";

/// Limits and periods from config (`[kyc]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KycLimits {
    /// An approval is valid this long (ms of event time from the approval's time).
    pub approval_valid_ms: i64,
    /// The `user.kyc.expiring` reminder comes this long (ms) before the expiry.
    pub expiry_reminder_ms: i64,
    /// Users per partition at most; an input that would add one more is refused with the reason.
    pub users_max: usize,
    /// Inputs remembered per partition for deduplication (the oldest is forgotten first).
    pub inputs_remembered_max: usize,
}

impl Default for KycLimits {
    fn default() -> Self {
        KycLimits {
            approval_valid_ms: 365 * DAY_MS,
            expiry_reminder_ms: 30 * DAY_MS,
            users_max: 1_000_000,
            inputs_remembered_max: 1_000_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KycProcessor {
    topics: Topics,
    limits: KycLimits,
}

impl KycProcessor {
    pub fn new(topics: Topics, limits: KycLimits) -> Self {
        KycProcessor { topics, limits }
    }
}

/// The approval a user's KYC status rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub case_id: String,
    /// Event time of the approval (ms).
    pub at_ms: i64,
    pub expires_at_ms: i64,
    /// The input that approved (expiry and reminder events name it as their cause).
    pub event_id: Uuid,
}

/// One `user.*` event, as the user's state remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub event_type: String,
    pub event_id: Uuid,
    pub at_ms: i64,
    pub user_status: UserStatus,
    pub kyc_status: KycStatus,
    pub tier: u8,
    pub case_id: Option<String>,
    pub case_status: Option<KycStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user_status: UserStatus,
    pub kyc_status: KycStatus,
    pub tier: u8,
    pub grant: Option<Grant>,
    /// Whether the user was ever approved (an unfrozen user without a grant is then `suspended`).
    pub ever_verified: bool,
    /// Of the last `user.*` event (0: none yet).
    pub version: u64,
    /// This user's cases, oldest first (at most [`CASES_PER_USER_MAX`]).
    pub cases: VecDeque<String>,
    /// The last [`HISTORY_ENTRIES_PER_USER_MAX`] events.
    pub history: VecDeque<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub user_id: String,
    pub provider: String,
    /// `pending`, `in_review`, `approved` or `rejected`.
    pub status: KycStatus,
    /// The tier its approval granted (0 before one).
    pub tier: u8,
    /// Vendor time (ms) of its last change (or of a manual decision, if later).
    pub last_at_ms: i64,
}

/// Per-partition state. Checkpoint keys: `u/{tenant}/{user}`, `c/{tenant}/{case}`, `s/{tenant}/{input}`
/// (remembered inputs → their sequence), `o/{sequence:020}` (remembered inputs in order), `seq`, timers
/// `tm/expire/{tenant}/{user}` and `tm/remind/{tenant}/{user}`.
#[derive(Debug, Clone, PartialEq)]
pub struct KycState {
    pub users: Table<User>,
    pub cases: Table<Case>,
    pub seen: Table<u64>,
    pub seen_order: Table<String>,
    pub seen_seq: Cell<u64>,
    pub timers: Timers,
}

impl KycState {
    pub fn new() -> Self {
        KycState {
            users: Table::new("u"),
            cases: Table::new("c"),
            seen: Table::new("s"),
            seen_order: Table::new("o"),
            seen_seq: Cell::new("seq"),
            timers: Timers::new("tm"),
        }
    }
}

impl Default for KycState {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(KycState { users, cases, seen, seen_order, seen_seq }, timers = timers);

pub fn user_key(tenant: &str, user: &str) -> String {
    format!("{tenant}/{user}")
}

pub fn case_key(tenant: &str, case: &str) -> String {
    format!("{tenant}/{case}")
}

/// An input that cannot be applied: the reason, and the user and case it named.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    user_id: Option<String>,
    case_id: Option<String>,
    reason: String,
}

impl Refusal {
    fn new(user_id: Option<&str>, case_id: Option<&str>, reason: impl Into<String>) -> Self {
        Refusal {
            user_id: user_id.map(str::to_owned),
            case_id: case_id.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// A user changed by one input, before it is stored and emitted.
struct Change {
    user_id: String,
    user: User,
    event_type: &'static str,
    /// The case it concerns: (id, new state).
    case: Option<(String, Case)>,
    reason: Option<String>,
    actor: Option<String>,
}

/// The inputs this processor applies.
enum Input {
    Vendor(WebhookReceived),
    Action(KycUserActionRequested),
    Review(KycReviewDecided),
}

use riverbank_schemas::processor::decode_v1 as decode;

/// A user or case id: 1–64 of ASCII letters, digits, `_`, `-`, `.`, `:` (as the edge checks them).
fn check_id(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= ID_BYTES_MAX
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!("{field} must be 1-{ID_BYTES_MAX} of ASCII letters, digits, '_', '-', '.', ':'"))
    }
}

/// A tier field: `0`–`3`.
fn parse_tier(v: &str) -> Result<u8, String> {
    match v.trim().parse::<u8>() {
        Ok(t) if t <= TIER_MAX => Ok(t),
        _ => Err(format!("tier must be 0-{TIER_MAX}, got {:?}", v.chars().take(16).collect::<String>())),
    }
}

/// Text as the state and the events keep it: control characters become spaces, cut to
/// [`TEXT_BYTES_MAX`] at a character boundary.
fn clean_text(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(TEXT_BYTES_MAX));
    for c in v.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > TEXT_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

fn time_of(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Whether a case may move from `prev` to `next` (`raise`: a tier reached, which on an approved case must
/// raise its tier to `tier`).
fn case_move(prev: Option<(KycStatus, u8)>, next: KycStatus, tier: u8, raise: bool) -> Result<(), String> {
    use KycStatus::*;
    match (prev, next) {
        (None, _) => Ok(()),
        (Some((Approved, t)), Approved) if raise => {
            if tier > t {
                Ok(())
            } else {
                Err(format!("tier {tier} is not above tier {t} the case already reached"))
            }
        }
        (Some((p, _)), n) if p == n => Err(format!("the case is already {}", p.as_str())),
        (Some((Pending, _)), InReview | Approved | Rejected)
        | (Some((InReview, _)), Approved | Rejected)
        | (Some((Approved, _)), Rejected)
        | (Some((Rejected, _)), Approved) => Ok(()),
        (Some((p, _)), n) => Err(format!(
            "a case that is {} does not become {} (a new verification is a new case)",
            p.as_str(),
            n.as_str()
        )),
    }
}

/// What unfreezing gives: the status the user's KYC state stands for.
fn status_from_kyc(u: &User) -> UserStatus {
    if u.kyc_status == KycStatus::Approved {
        UserStatus::Active
    } else if u.ever_verified {
        UserStatus::Suspended
    } else {
        UserStatus::Pending
    }
}

impl Processor for KycProcessor {
    type State = KycState;

    fn name(&self) -> &'static str {
        "kyc"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            log: topics.log(env, "kyc"),
            routed: vec![topics.ingest_webhooks(env), topics.kyc_commands(env)],
            broadcast: vec![],
            ticks: true,
            outputs: vec![Output::new(topics.kyc_events(env), &et::ALL)],
            stateful: true,
        }
    }

    fn apply(&self, state: &mut KycState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let decoded = match input.event_type.as_str() {
            WebhookReceived::EVENT_TYPE => decode::<WebhookReceived>(&input).map(Input::Vendor),
            command_types::KYC_USER_ACTION_REQUESTED => decode(&input).map(Input::Action),
            command_types::KYC_REVIEW_DECIDED => decode(&input).map(Input::Review),
            other => Err(format!("kyc has no rule for {other}")),
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(reason) => return Verdict::Poison(reason),
        };
        let seen = match &decoded {
            // Other providers' and other types' webhooks (deposits, chain events) are not KYC inputs.
            Input::Vendor(w) if !w.event_type.as_deref().is_some_and(|t| t.starts_with("kyc.")) => {
                return Verdict::Emit(Vec::new())
            }
            // A vendor's redelivery is recognised by its own event id, whatever id it arrived under.
            Input::Vendor(w) => derived_id(&["kyc-input", &w.provider, &w.provider_event_id]),
            _ => input.event_id,
        };
        let seen_key = format!("{}/{seen}", input.tenant_id);
        if state.seen.contains_key(&seen_key) {
            return Verdict::Emit(Vec::new());
        }
        self.remember(state, seen_key);
        let result = match decoded {
            Input::Vendor(w) => self.vendor(state, &input, &w),
            Input::Action(a) => self.action(state, &input, a),
            Input::Review(r) => self.review(state, &input, r),
        };
        let emit = match result.and_then(|c| self.commit(state, at, &input, c)) {
            Ok(emit) => emit,
            Err(refusal) => self.rejection(at.environment, &input, refusal),
        };
        Verdict::Emit(vec![emit])
    }

    fn on_timer(&self, state: &mut KycState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        Verdict::Emit(self.timer(state, at, &timer).into_iter().collect())
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(env)
    }
}

impl KycProcessor {
    /// Remember an input for deduplication, forgetting the oldest past the limit.
    fn remember(&self, state: &mut KycState, key: String) {
        let max = self.limits.inputs_remembered_max;
        remember_bounded(&mut state.seen, &mut state.seen_order, &mut state.seen_seq, key, max);
    }

    /// The user at `key`, or a new one if the partition has room.
    fn user_or_new(
        &self,
        state: &KycState,
        key: &str,
        refuse: impl Fn(String) -> Refusal,
    ) -> Result<User, Refusal> {
        match state.users.get(key) {
            Some(u) => Ok(u.clone()),
            None if state.users.len() >= self.limits.users_max => Err(refuse(format!(
                "this partition already holds {} users (kyc.users_per_partition_max)",
                self.limits.users_max
            ))),
            None => Ok(User::default()),
        }
    }

    /// A vendor's result for a case.
    fn vendor(&self, state: &KycState, input: &RawEnvelope, w: &WebhookReceived) -> Result<Change, Refusal> {
        let kind = w.event_type.as_deref().unwrap_or_default();
        let field = |name: &str| w.fields.get(name).map(String::as_str);
        let (user_id, case_id) = (field(fields::USER_ID), field(fields::CASE_ID));
        let refuse = |reason: String| Refusal::new(user_id, case_id, reason);
        let (next, raise) = match kind {
            it::CASE_SUBMITTED => (KycStatus::Pending, false),
            it::CASE_NEEDS_REVIEW => (KycStatus::InReview, false),
            it::CASE_APPROVED => (KycStatus::Approved, false),
            it::TIER_REACHED => (KycStatus::Approved, true),
            it::CASE_REJECTED => (KycStatus::Rejected, false),
            other => return Err(refuse(format!("kyc has no rule for the vendor result {other}"))),
        };
        let provider = &w.provider;
        let Some(user_id) = user_id else {
            return Err(refuse(format!("{provider} {kind} names no user (field {})", fields::USER_ID)));
        };
        let Some(case_id) = case_id else {
            return Err(refuse(format!("{provider} {kind} names no case (field {})", fields::CASE_ID)));
        };
        check_id(fields::USER_ID, user_id).map_err(refuse)?;
        check_id(fields::CASE_ID, case_id).map_err(refuse)?;
        if provider.is_empty() || provider.len() > PROVIDER_BYTES_MAX {
            return Err(refuse(format!("provider name must be 1-{PROVIDER_BYTES_MAX} bytes")));
        }
        let tier = match (next, field(fields::TIER)) {
            (KycStatus::Approved, None) => {
                return Err(refuse(format!("{provider} {kind} states no tier (field {})", fields::TIER)))
            }
            (KycStatus::Approved, Some(t)) => match parse_tier(t).map_err(refuse)? {
                0 => return Err(refuse(format!("an approval grants tier 1-{TIER_MAX}, not 0"))),
                t => t,
            },
            _ => 0,
        };
        let tenant = &input.tenant_id;
        let mut user = self.user_or_new(state, &user_key(tenant, user_id), refuse)?;
        if user.user_status == UserStatus::Closed {
            return Err(refuse("the user is closed: KYC results are no longer applied".to_owned()));
        }
        let at_ms = input.occurred_at.timestamp_millis();
        let prev = state.cases.get(&case_key(tenant, case_id));
        if let Some(c) = prev {
            if c.user_id != user_id {
                return Err(refuse(format!("case {case_id} belongs to another user")));
            }
            if &c.provider != provider {
                return Err(refuse(format!("case {case_id} is {}'s, not {provider}'s", c.provider)));
            }
            if at_ms < c.last_at_ms {
                return Err(refuse(format!(
                    "late: case {case_id} became {} at {}, after this {kind} of {}",
                    c.status.as_str(),
                    time_of(c.last_at_ms).map(|t| t.to_rfc3339()).unwrap_or_default(),
                    input.occurred_at.to_rfc3339()
                )));
            }
        }
        case_move(prev.map(|c| (c.status, c.tier)), next, tier, raise).map_err(refuse)?;
        let mut case = prev.cloned().unwrap_or(Case {
            user_id: user_id.to_owned(),
            provider: provider.clone(),
            status: next,
            tier: 0,
            last_at_ms: at_ms,
        });
        case.status = next;
        case.last_at_ms = at_ms;
        if next == KycStatus::Approved {
            case.tier = tier;
        }
        let event_type = self.case_changed(&mut user, case_id, &case, at_ms, input.event_id);
        Ok(Change {
            user_id: user_id.to_owned(),
            user,
            event_type,
            case: Some((case_id.to_owned(), case)),
            reason: field(fields::REASON).map(clean_text),
            actor: None,
        })
    }

    /// A case moved: the user's KYC follows (see the module doc). Returns the event type.
    fn case_changed(
        &self,
        user: &mut User,
        case_id: &str,
        case: &Case,
        at_ms: i64,
        cause: Uuid,
    ) -> &'static str {
        match case.status {
            KycStatus::Approved => {
                let expires_at_ms = at_ms.saturating_add(self.limits.approval_valid_ms);
                user.grant =
                    Some(Grant { case_id: case_id.to_owned(), at_ms, expires_at_ms, event_id: cause });
                user.kyc_status = KycStatus::Approved;
                user.tier = case.tier;
                user.ever_verified = true;
                if matches!(user.user_status, UserStatus::Pending | UserStatus::Suspended) {
                    user.user_status = UserStatus::Active;
                }
                et::USER_VERIFIED
            }
            KycStatus::Rejected if user.grant.as_ref().is_some_and(|g| g.case_id == case_id) => {
                user.grant = None;
                user.kyc_status = KycStatus::Rejected;
                user.tier = 0;
                if user.user_status == UserStatus::Active {
                    user.user_status = UserStatus::Suspended;
                }
                et::USER_KYC_UPDATED
            }
            // Another case's approval still holds.
            _ if user.grant.is_some() => et::USER_KYC_UPDATED,
            status => {
                user.kyc_status = status;
                et::USER_KYC_UPDATED
            }
        }
    }

    /// An admin's freeze, unfreeze or close.
    fn action(
        &self,
        state: &KycState,
        input: &RawEnvelope,
        a: KycUserActionRequested,
    ) -> Result<Change, Refusal> {
        let refuse = |reason: String| Refusal::new(Some(&a.user_id), None, reason);
        check_id(fields::USER_ID, &a.user_id).map_err(refuse)?;
        let key = user_key(&input.tenant_id, &a.user_id);
        let mut user = match a.action {
            KycUserAction::Unfreeze => state.users.get(&key).cloned().ok_or_else(|| {
                refuse(format!("unknown user {}: only a frozen user is unfrozen", a.user_id))
            })?,
            // A user may be frozen or closed before any KYC result arrives.
            KycUserAction::Freeze | KycUserAction::Close => self.user_or_new(state, &key, refuse)?,
        };
        let now = user.user_status;
        let event_type = match (a.action, now) {
            (_, UserStatus::Closed) => return Err(refuse("the user is closed: it stays closed".to_owned())),
            (KycUserAction::Freeze, UserStatus::Frozen) => {
                return Err(refuse("the user is already frozen".to_owned()))
            }
            (KycUserAction::Freeze, _) => {
                user.user_status = UserStatus::Frozen;
                et::USER_FROZEN
            }
            (KycUserAction::Unfreeze, UserStatus::Frozen) => {
                user.user_status = status_from_kyc(&user);
                et::USER_UNFROZEN
            }
            (KycUserAction::Unfreeze, other) => {
                return Err(refuse(format!("only a frozen user is unfrozen; the user is {}", other.as_str())))
            }
            (KycUserAction::Close, _) => {
                user.user_status = UserStatus::Closed;
                et::USER_CLOSED
            }
        };
        Ok(Change {
            user_id: a.user_id.clone(),
            user,
            event_type,
            case: None,
            reason: Some(clean_text(&a.reason)),
            actor: Some(clean_text(&a.actor)),
        })
    }

    /// A compliance decision on a case a vendor sent to manual review.
    fn review(&self, state: &KycState, input: &RawEnvelope, r: KycReviewDecided) -> Result<Change, Refusal> {
        let case_id = r.case_id.as_str();
        check_id(fields::CASE_ID, case_id).map_err(|e| Refusal::new(None, Some(case_id), e))?;
        let tenant = &input.tenant_id;
        let Some(mut case) = state.cases.get(&case_key(tenant, case_id)).cloned() else {
            return Err(Refusal::new(None, Some(case_id), format!("unknown case {case_id}")));
        };
        let user_id = case.user_id.clone();
        let refuse = |reason: String| Refusal::new(Some(&user_id), Some(case_id), reason);
        if case.status != KycStatus::InReview {
            return Err(refuse(format!(
                "a manual decision applies only to a case in review; case {case_id} is {}",
                case.status.as_str()
            )));
        }
        let Some(mut user) = state.users.get(&user_key(tenant, &user_id)).cloned() else {
            return Err(refuse(format!("the user of case {case_id} is no longer known")));
        };
        if user.user_status == UserStatus::Closed {
            return Err(refuse("the user is closed: KYC decisions are no longer applied".to_owned()));
        }
        match (r.decision, r.tier) {
            (ReviewDecision::Approved, Some(t)) if (1..=TIER_MAX).contains(&t) => {
                case.status = KycStatus::Approved;
                case.tier = t;
            }
            (ReviewDecision::Approved, t) => {
                return Err(refuse(format!("an approval grants tier 1-{TIER_MAX}, got {t:?}")));
            }
            (ReviewDecision::Rejected, _) => case.status = KycStatus::Rejected,
        }
        let at_ms = input.occurred_at.timestamp_millis().max(case.last_at_ms);
        case.last_at_ms = at_ms;
        let event_type = self.case_changed(&mut user, case_id, &case, at_ms, input.event_id);
        Ok(Change {
            user_id,
            user,
            event_type,
            case: Some((case_id.to_owned(), case)),
            reason: r.reason.as_deref().map(clean_text),
            actor: Some(clean_text(&r.actor)),
        })
    }

    /// Store a change (user, case, timers) and make its event: version one above the last.
    fn commit(
        &self,
        state: &mut KycState,
        at: &InputRef<'_>,
        input: &RawEnvelope,
        c: Change,
    ) -> Result<Emit, Refusal> {
        let Change { user_id, mut user, event_type, case, reason, actor } = c;
        let tenant = input.tenant_id.clone();
        let ukey = user_key(&tenant, &user_id);
        let before = state.users.get(&ukey);
        let (was_closed, old_grant) = (
            before.is_some_and(|u| u.user_status == UserStatus::Closed),
            before.and_then(|u| u.grant.clone()),
        );
        let case_id = case.as_ref().map(|(id, _)| id.clone());
        let refuse = |reason: &str| Refusal::new(Some(&user_id), case_id.as_deref(), reason);
        debug_assert!(!was_closed, "a closed user reached commit");
        if was_closed {
            return Err(refuse("the user is closed: it stays closed"));
        }
        let Some(version) = user.version.checked_add(1) else {
            return Err(refuse("the user has reached the most versions it can record"));
        };
        user.version = version;
        let case_status = case.as_ref().map(|(_, c)| c.status);
        let provider = case.as_ref().map(|(_, c)| c.provider.clone());
        if let Some((id, case)) = case {
            if !user.cases.contains(&id) {
                user.cases.push_back(id.clone());
            }
            while user.cases.len() > CASES_PER_USER_MAX {
                let grant_case = user.grant.as_ref().map(|g| g.case_id.as_str());
                let Some(i) = user.cases.iter().position(|k| Some(k.as_str()) != grant_case) else { break };
                if let Some(old) = user.cases.remove(i) {
                    state.cases.remove(&case_key(&tenant, &old));
                }
            }
            state.cases.insert(case_key(&tenant, &id), case);
        }
        if user.grant != old_grant {
            self.schedule(state, &tenant, &user_id, user.grant.as_ref());
        }
        let event_id = derived_id(&["kyc", &input.event_id.to_string(), "0"]);
        let payload = UserKycChanged {
            user_id: user_id.clone(),
            user_status: user.user_status,
            kyc_status: user.kyc_status,
            tier: user.tier,
            kyc_expires_at: user.grant.as_ref().and_then(|g| time_of(g.expires_at_ms)),
            version,
            case_id,
            case_status,
            provider,
            reason,
            actor,
            cause_event_id: input.event_id,
        };
        let mut env = Envelope::derived(input, event_id, event_type, 1, SOURCE, payload);
        env.user_id = Some(user_id);
        Ok(self.record(state, at.environment, ukey, user, env))
    }

    /// Keep `user` (with a history entry for `env`) and make the record of `env`.
    fn record(
        &self,
        state: &mut KycState,
        environment: Environment,
        ukey: String,
        mut user: User,
        env: Envelope<UserKycChanged>,
    ) -> Emit {
        let p = &env.payload;
        user.history.push_back(HistoryEntry {
            version: p.version,
            event_type: env.event_type.clone(),
            event_id: env.event_id,
            at_ms: env.occurred_at.timestamp_millis(),
            user_status: p.user_status,
            kyc_status: p.kyc_status,
            tier: p.tier,
            case_id: p.case_id.clone(),
            case_status: p.case_status,
        });
        while user.history.len() > HISTORY_ENTRIES_PER_USER_MAX {
            user.history.pop_front();
        }
        state.users.insert(ukey, user);
        let topic = self.topics.kyc_events(environment);
        Emit {
            topic,
            key: env.tenant_id.clone(),
            event_id: env.event_id,
            payload: serde_json::to_vec(&env).unwrap_or_default(),
        }
    }

    /// Set (or, with no grant, cancel) a user's expiry and reminder timers.
    fn schedule(&self, state: &mut KycState, tenant: &str, user_id: &str, grant: Option<&Grant>) {
        let (expire, remind) = (format!("expire/{tenant}/{user_id}"), format!("remind/{tenant}/{user_id}"));
        match grant {
            Some(g) => {
                let data = g.expires_at_ms.to_string();
                state.timers.schedule(&expire, g.expires_at_ms, data.clone());
                let remind_at = g.expires_at_ms.saturating_sub(self.limits.expiry_reminder_ms);
                state.timers.schedule(&remind, remind_at, data);
            }
            None => {
                state.timers.cancel(&expire);
                state.timers.cancel(&remind);
            }
        }
    }

    /// An expiry or reminder timer came due: the event, if the grant it was set for still holds.
    fn timer(&self, state: &mut KycState, at: &InputRef<'_>, timer: &Timer) -> Option<Emit> {
        let (kind, rest) = timer.key.split_once('/')?;
        let (tenant, user_id) = rest.split_once('/')?;
        let ukey = user_key(tenant, user_id);
        let mut user = state.users.get(&ukey)?.clone();
        let grant = user.grant.clone()?;
        if grant.expires_at_ms.to_string() != timer.data || user.kyc_status != KycStatus::Approved {
            return None; // set for an earlier grant
        }
        let version = user.version.checked_add(1)?;
        let (event_type, reason, occurred_ms) = match kind {
            "expire" => {
                user.grant = None;
                user.kyc_status = KycStatus::Expired;
                if user.user_status == UserStatus::Active {
                    user.user_status = UserStatus::Suspended;
                }
                (et::USER_KYC_UPDATED, "approval expired", grant.expires_at_ms)
            }
            // No reminder for a closed user, nor once the expiry itself is due.
            "remind" if user.user_status != UserStatus::Closed && at.now_ms < grant.expires_at_ms => {
                (et::USER_KYC_EXPIRING, "approval expiring", timer.due_ms)
            }
            _ => return None,
        };
        user.version = version;
        let event_id = derived_id(&["kyc", kind, tenant, user_id, &grant.event_id.to_string()]);
        let occurred_at = time_of(occurred_ms).unwrap_or_default();
        let payload = UserKycChanged {
            user_id: user_id.to_owned(),
            user_status: user.user_status,
            kyc_status: user.kyc_status,
            tier: user.tier,
            kyc_expires_at: user.grant.as_ref().and_then(|g| time_of(g.expires_at_ms)),
            version,
            case_id: Some(grant.case_id.clone()),
            case_status: None,
            provider: None,
            reason: Some(reason.to_owned()),
            actor: None,
            cause_event_id: grant.event_id,
        };
        let mut env =
            Envelope::new(event_id, event_type, tenant, at.environment, occurred_at, SOURCE, payload);
        env.ingested_at = time_of(at.now_ms).unwrap_or_default();
        env.user_id = Some(user_id.to_owned());
        Some(self.record(state, at.environment, ukey, user, env))
    }

    fn rejection(&self, environment: Environment, input: &RawEnvelope, r: Refusal) -> Emit {
        let payload = KycInputRejected {
            input_event_id: input.event_id,
            input_event_type: input.event_type.clone(),
            user_id: r.user_id,
            case_id: r.case_id,
            reason: r.reason,
            at: Some(input.occurred_at),
        };
        let event_id = derived_id(&["kyc", &input.event_id.to_string(), "0"]);
        let env = Envelope::derived(input, event_id, et::KYC_INPUT_REJECTED, 1, SOURCE, payload);
        Emit {
            topic: self.topics.kyc_events(environment),
            key: input.tenant_id.clone(),
            event_id,
            payload: serde_json::to_vec(&env).unwrap_or_default(),
        }
    }
}

/// Inputs for the conformance suite, covering every kind: idcheck and kycflow results of each type
/// (approved, in review, rejected, tier reached, submitted), an old approval whose reminder and expiry
/// fire on later ticks, a webhook that is no KYC input, freeze, unfreeze, close and a manual review
/// decision, refusals (a late result, a result without a user or a tier, a closed user, an unknown case,
/// an unfreeze of a user who is not frozen) and inputs that do not decode or have no rule.
pub fn examples(env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let t0 = DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    let webhook = |provider: &str, id: &str, event_type: &str, fields: &[(&str, &str)]| {
        let fields: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        (
            WebhookReceived::EVENT_TYPE,
            json!({"provider": provider, "provider_event_id": id, "event_type": event_type,
                   "body_bytes": 300, "fields": fields, "body": null}),
        )
    };
    let action = |user: &str, action: &str| {
        (
            command_types::KYC_USER_ACTION_REQUESTED,
            json!({"user_id": user, "action": action, "reason": "compliance_hold", "actor": "admin-1"}),
        )
    };
    let (u1, u2, u3, old) = ("usr_8f3a1c", "usr_5e2a11", "usr_0aa9f2", "usr_old");
    // (seconds after t0, tenant, input)
    let steps: Vec<(i64, &str, (&str, serde_json::Value))> = vec![
        // An approval 400 days ago: its reminder fires at the next tick (50 days ago), its expiry after.
        (
            -400 * 86_400,
            "tenant-a",
            webhook(
                "idcheck",
                "corr-old",
                it::CASE_APPROVED,
                &[("user_id", old), ("case_id", "appl-old"), ("tier", "1")],
            ),
        ),
        (
            -50 * 86_400,
            "tenant-a",
            webhook("idcheck", "corr-sub", it::CASE_SUBMITTED, &[("user_id", u2), ("case_id", "appl-2")]),
        ),
        (
            0,
            "tenant-a",
            webhook(
                "idcheck",
                "corr-1",
                it::CASE_APPROVED,
                &[("user_id", u1), ("case_id", "appl-1"), ("tier", "1"), ("level", "basic-kyc-level")],
            ),
        ),
        (
            10,
            "tenant-a",
            webhook(
                "idcheck",
                "corr-2",
                it::TIER_REACHED,
                &[("user_id", u1), ("case_id", "appl-1"), ("tier", "2")],
            ),
        ),
        // Late: an "on hold" the vendor sent before the approval it would overtake.
        (
            -5,
            "tenant-a",
            webhook("idcheck", "corr-3", it::CASE_NEEDS_REVIEW, &[("user_id", u1), ("case_id", "appl-1")]),
        ),
        (
            30,
            "tenant-a",
            webhook(
                "kycflow",
                "sha256:aa",
                it::CASE_NEEDS_REVIEW,
                &[
                    ("user_id", u3),
                    ("case_id", "kf_txn_77c0de31"),
                    ("tier", "0"),
                    ("reason", "face_match_low"),
                ],
            ),
        ),
        (
            40,
            "tenant-a",
            (
                command_types::KYC_REVIEW_DECIDED,
                json!({"case_id": "kf_txn_77c0de31", "decision": "approved", "tier": 2, "actor": "officer-1"}),
            ),
        ),
        (
            50,
            "tenant-a",
            (
                command_types::KYC_REVIEW_DECIDED,
                json!({"case_id": "kf_txn_77c0de31", "decision": "rejected", "actor": "officer-1"}),
            ),
        ),
        (
            60,
            "tenant-a",
            (
                command_types::KYC_REVIEW_DECIDED,
                json!({"case_id": "nope", "decision": "rejected", "actor": "officer-1"}),
            ),
        ),
        (
            70,
            "tenant-a",
            webhook(
                "idcheck",
                "corr-rej",
                it::CASE_REJECTED,
                &[("user_id", u2), ("case_id", "appl-2"), ("reason", "FINAL")],
            ),
        ),
        (
            80,
            "tenant-b",
            webhook(
                "kycflow",
                "sha256:cc",
                it::CASE_APPROVED,
                &[("user_id", u2), ("case_id", "kf_txn_4f1a9c2e"), ("tier", "1")],
            ),
        ),
        (
            90,
            "tenant-b",
            webhook(
                "kycflow",
                "sha256:dd",
                it::TIER_REACHED,
                &[("user_id", u2), ("case_id", "kf_txn_4f1a9c2e"), ("tier", "3")],
            ),
        ),
        (100, "tenant-a", action(u1, "freeze")),
        (110, "tenant-a", action(u1, "freeze")),
        (120, "tenant-a", action(u1, "unfreeze")),
        (130, "tenant-a", action(u3, "unfreeze")),
        (140, "tenant-a", action(u1, "close")),
        (
            150,
            "tenant-a",
            webhook(
                "idcheck",
                "corr-4",
                it::CASE_REJECTED,
                &[("user_id", u1), ("case_id", "appl-1"), ("reason", "FINAL")],
            ),
        ),
        (160, "tenant-a", action(u1, "unfreeze")),
        (
            170,
            "tenant-a",
            webhook("idcheck", "corr-5", it::CASE_APPROVED, &[("case_id", "appl-9"), ("tier", "1")]),
        ),
        (
            180,
            "tenant-a",
            webhook("kycflow", "sha256:ee", it::CASE_APPROVED, &[("user_id", u3), ("case_id", "kf_txn_1")]),
        ),
        (
            190,
            "tenant-a",
            webhook("acmepay", "evt_dep_1", "deposit.completed", &[("transfer_reference", "t1")]),
        ),
        (
            200,
            "tenant-a",
            webhook("idcheck", "corr-6", "kyc.applicant_reset", &[("user_id", u3), ("case_id", "appl-3")]),
        ),
        (
            210,
            "tenant-a",
            (command_types::KYC_USER_ACTION_REQUESTED, json!({"user_id": u1, "action": "delete"})),
        ),
        (220, "tenant-a", ("kyc.unheard_of", json!({}))),
    ];
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (secs, tenant, (event_type, payload)))| {
            let at = t0 + chrono::Duration::seconds(secs);
            let id = derived_id(&["kyc-example", &i.to_string()]);
            let source = match payload.get("provider").and_then(|p| p.as_str()) {
                Some(provider) if event_type == WebhookReceived::EVENT_TYPE => provider.to_owned(),
                _ => "api".to_owned(),
            };
            Envelope::new(id, event_type, tenant, env, at, &source, payload)
        })
        .collect()
}

#[cfg(test)]
#[path = "kyc_tests.rs"]
mod tests;
