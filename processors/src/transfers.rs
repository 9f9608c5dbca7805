//! Transfers: the state machine of DOMAIN.md and a double-entry ledger with two-phase holds.
//!
//! State is per input partition (inputs are keyed by tenant, so a partition holds whole tenants and every
//! balance check sees all it needs). Every output id is derived from the input id and the output's
//! position, and outputs depend only on state and input: replaying a partition gives identical events.
//!
//! Nothing an input can reach panics or wraps: every amount and balance operation is checked, and a
//! posting is planned for both legs before either is written, so a refused posting leaves the ledger as
//! it was. A posting that would overflow is a business answer: a REJECTED transfer at request time, an
//! `InputRejected` for later phases.
//!
//! **Provider callbacks.** Provider webhooks reach the log through the router (`{env}.ingest.webhooks`,
//! body dropped). One whose definition declares it a transfer callback carries a typed
//! `transfer_callback`, resolved at the edge (ingest-core `provider/callbacks.rs`): its status, kind,
//! reference and amount. The transfer is found by (tenant, provider, reference) in [`TransfersState::refs`],
//! filled from `external_ref` at request time and by deposits the provider creates (`received` for an
//! unknown reference, when the definition says so: transfer id [`provider_transfer_id`], requested by
//! `provider:{name}`). Unknown references, unresolved values, a kind or amount that disagrees with the
//! transfer and illegal moves are `transfer.input_rejected` with the reason. A callback (webhook or
//! `provider.transfer_status`) for a transfer still PENDING or COMPLIANCE_CHECK is *parked* on it
//! (at most [`PARKED_CALLBACKS_PER_TRANSFER_MAX`], in arrival order) and applied when it becomes
//! APPROVED, or rejected when it becomes BLOCKED: never lost. Webhooks that are no transfer callback
//! (KYC results, card authorisations) are not transfers' business and emit nothing.
use std::collections::{BTreeMap, VecDeque};

use riverbank_schemas::ledger::{
    is_platform_account, unbalanced_currency, BookingLeg, BookingOutcome, BookingRecorded, BookingRequested,
    BOOKING_ID_BYTES_MAX, BOOKING_LEGS_MAX, OVERDRAFT_PLATFORM_ACCOUNTS,
};
use riverbank_schemas::processor::{derived_emit, Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::state::{Cell, Table};
use riverbank_schemas::transfers::{
    input_types as it, BalanceChanged, CallbackStatus, Counterparty, ExternalRef, InputRejected,
    LedgerPosting, PostingPhase, ProviderStatus, ProviderTransferStatus, RiskDecided, RiskOutcome,
    ScreeningRequested, TransferAction, TransferCallback, TransferDecision, TransferKind, TransferPolicySet,
    TransferRequested, TransferStatus, TransferStatusChanged,
};
use riverbank_schemas::{
    derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics, WebhookReceived,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The tenant's outside world: deposits come from it, withdrawals and payouts go to it. May go negative.
pub const EXTERNAL_ACCOUNT: &str = "external";
/// Input ids remembered per transfer for deduplication.
pub const APPLIED_INPUTS_PER_TRANSFER_MAX: usize = 64;
/// Provider callbacks that may wait on one transfer for its approval (PENDING, COMPLIANCE_CHECK); one
/// more is rejected.
pub const PARKED_CALLBACKS_PER_TRANSFER_MAX: usize = 8;
/// Longest transfer id, in bytes.
pub const TRANSFER_ID_BYTES_MAX: usize = 128;

/// Limits of the processor's state, from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransfersLimits {
    /// Final transfers (COMPLETED, CANCELLED) are forgotten this long after they became final (event
    /// clock, see [`ReuseLimits::clock_step_max_ms`]); until then duplicates and late callbacks for them
    /// are recognised.
    pub final_retention_ms: i64,
    /// At most this many final transfers are kept per partition (the earliest to become final is
    /// forgotten first).
    pub final_retained_max: usize,
}

impl Default for TransfersLimits {
    fn default() -> Self {
        TransfersLimits { final_retention_ms: 7 * DAY_MS, final_retained_max: 1_000_000 }
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How long a forgotten transfer's id stays refused, and how fast the event clock that drives all
/// forgetting may move. Kept apart from [`TransfersLimits`] so existing struct literals still build;
/// [`TransfersProcessor::new`] uses the defaults, [`TransfersProcessor::with_reuse_limits`] sets them.
///
/// **Transfer-id reuse.** When a final transfer is forgotten (by time or by count), a *tombstone*
/// (`x/{tenant}/{transfer}` → when it became final, its final sequence) is kept, and a
/// `transfer.requested` with that id is refused ("transfer id already used"): no status event, so the
/// forward-only projection and its history never see versions restart at 1. The remaining window: a
/// tombstone is itself dropped once the event clock is `id_reuse_refused_ms` past the moment its transfer
/// became final, or when `tombstones_retained_max` newer tombstones exist in the partition, whichever
/// comes first. After that, a request reusing the id is accepted as a new transfer (versions from 1) and
/// the finding-8 symptom returns for it. With the defaults that is 30 days of event clock after the
/// transfer became final, or sooner in a partition that forgets more than 1 000 000 transfers within
/// those 30 days. Closing it for good needs a permanent record of ids outside this state (the edge, or a
/// generation in the projection's version).
///
/// **The event clock.** The processor's "now" is the highest `occurred_at` seen, but it moves forward by
/// at most `clock_step_max_ms` per input (the first input of an empty state sets it outright). One input
/// stamped far ahead (an ingest host whose clock jumped) therefore moves it by one step, not by the skew;
/// evicting everything takes `skew / clock_step_max_ms` such inputs. The price: a partition whose inputs
/// are further apart than one step has a clock that runs slow, so it remembers final transfers and
/// tombstones longer than the configured event time (memory stays bounded by the count limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseLimits {
    /// A forgotten transfer's id stays refused until the event clock is this far (ms) past the moment
    /// the transfer became final. Below `final_retention_ms` it only matters for transfers forgotten by
    /// count.
    pub id_reuse_refused_ms: i64,
    /// At most this many tombstones (forgotten transfer ids) per partition; the oldest is dropped first.
    pub tombstones_retained_max: usize,
    /// The event clock advances by at most this much (ms) per input.
    pub clock_step_max_ms: i64,
}

impl Default for ReuseLimits {
    fn default() -> Self {
        ReuseLimits {
            id_reuse_refused_ms: 30 * DAY_MS,
            tombstones_retained_max: 1_000_000,
            clock_step_max_ms: 60_000,
        }
    }
}

/// Status changes one input can make to one transfer (a request: INITIATED, VALIDATING, PENDING,
/// COMPLIANCE_CHECK). A transfer whose version is within this of `u32::MAX` takes no more inputs.
const STATUS_CHANGES_PER_INPUT_MAX: u32 = 4;

#[derive(Debug, Clone)]
pub struct TransfersProcessor {
    topics: Topics,
    limits: TransfersLimits,
    reuse: ReuseLimits,
}

impl TransfersProcessor {
    pub fn new(topics: Topics, limits: TransfersLimits) -> Self {
        TransfersProcessor { topics, limits, reuse: ReuseLimits::default() }
    }

    pub fn with_reuse_limits(mut self, reuse: ReuseLimits) -> Self {
        self.reuse = reuse;
        self
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
    /// Position among the partition's final transfers, in the order they became final (from
    /// `TransfersState::final_seq_last`). Restore orders finals by it, so count-based eviction forgets
    /// the same transfer live and after a restore even when several became final at the same clock.
    /// Absent in checkpoints written before it existed (those sort first, by time then key).
    #[serde(default)]
    pub final_seq: Option<u64>,
    /// The end user whose money moves (risk screens against their KYC and velocity).
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default, with = "stored_counterparty")]
    pub counterparty: Option<Counterparty>,
    /// The provider executing it and its reference (its callbacks find the transfer by it).
    #[serde(default)]
    pub external_ref: Option<ExternalRef>,
    /// Provider callbacks that arrived while the transfer waited for approval, in arrival order
    /// (at most [`PARKED_CALLBACKS_PER_TRANSFER_MAX`]); empty in every other status.
    #[serde(default)]
    pub parked: Vec<ParkedCallback>,
}

/// A counterparty as state stores it: every field, always. `Counterparty` leaves out absent fields
/// (`skip_serializing_if`) for JSON, which bincode cannot read back (a payout to a payee without an id
/// or a country made its partition unrestorable). The bytes equal the derived encoding whenever every
/// field is present, so checkpoints written before read the same.
mod stored_counterparty {
    use riverbank_schemas::transfers::Counterparty;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    type Fields = (Option<String>, Option<String>, Vec<String>);

    pub fn serialize<S: Serializer>(c: &Option<Counterparty>, s: S) -> Result<S::Ok, S::Error> {
        let fields: Option<Fields> =
            c.as_ref().map(|c| (c.id.clone(), c.country.clone(), c.name_keys.clone()));
        fields.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Counterparty>, D::Error> {
        let fields = Option::<Fields>::deserialize(d)?;
        Ok(fields.map(|(id, country, name_keys)| Counterparty { id, country, name_keys }))
    }
}

/// A provider callback waiting for its transfer's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedCallback {
    /// The callback's own input (its rejection, if it comes to that, names it).
    pub input_event_id: Uuid,
    pub input_event_type: String,
    pub status: ProviderTransferStatus,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub posted: i64,
    pub pending_debit: i64,
    pub pending_credit: i64,
    pub version: u64,
}

impl Account {
    /// `posted - pending_debit`, or `None` if that does not fit in an `i64`. Holds refuse to make it
    /// unrepresentable, so every stored account has one (unless a checkpoint predates the checks).
    pub fn available(&self) -> Option<i64> {
        self.posted.checked_sub(self.pending_debit)
    }
}

/// A forgotten final transfer: its id stays refused for reuse (see [`ReuseLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Event clock (ms) when the transfer became final.
    pub final_at_ms: i64,
    /// The transfer's `final_seq` (0 if it had none): tombstones are dropped in this order.
    pub final_seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub approval_thresholds: Vec<Money>,
    pub overdraft_accounts: Vec<String>,
    pub applied_inputs: VecDeque<Uuid>,
}

/// A booking id remembered (see [`TransfersState::bookings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingMemo {
    /// Position among the partition's bookings (from `TransfersState::booking_seq`): forgotten in order.
    pub seq: u64,
    /// The input that made it: the same input again is a redelivery (silence), another is a reuse.
    pub input: Uuid,
}

/// Per-partition state: tables that record their own changes for the checkpoints. Checkpoint keys:
/// `t/{tenant}/{transfer}`, `a/{tenant}/{account}/{currency}`, `p/{tenant}`, `x/{tenant}/{transfer}`
/// (tombstones), `r/{tenant}/{provider}/{reference}` (provider references), `clock`, `final_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransfersState {
    pub transfers: Table<Transfer>,
    pub accounts: Table<Account>,
    pub policies: Table<Policy>,
    /// Forgotten final transfers whose ids stay refused.
    pub tombstones: Table<Tombstone>,
    /// (tenant, provider, reference) → transfer id: how a provider callback finds its transfer. One
    /// entry per retained transfer with an `external_ref` at most; removed when the transfer is forgotten.
    pub refs: Table<String>,
    /// Booking ids seen (`b/{tenant}/{booking}`), booked or refused: a redelivered booking is applied
    /// once. The last `final_retained_max` are kept (by count, so a backlog replayed after an outage is
    /// still recognised); the requesters derive booking ids from their own inputs and remember what
    /// they asked for, so an id older than that is never sent again.
    pub bookings: Table<BookingMemo>,
    /// The last booking `seq` given (0: none yet). Only grows.
    pub booking_seq: Cell<u64>,
    /// The event clock (ms): the processor's only notion of "now" (see [`ReuseLimits`]).
    pub clock: Cell<i64>,
    /// The last `final_seq` given to a transfer (0: none yet). Only grows.
    pub final_seq: Cell<u64>,
    /// Final transfers in the order they became final (derived; rebuilt on restore by `final_seq`).
    finals: VecDeque<(i64, String)>,
    /// Tombstone keys in the order they were made (derived; rebuilt on restore by `final_seq`).
    tombstone_order: VecDeque<String>,
    /// Booking keys in `seq` order (derived; rebuilt on restore).
    booking_order: VecDeque<String>,
}

riverbank_schemas::state_tables!(
    TransfersState {
        transfers,
        accounts,
        policies,
        tombstones,
        refs,
        bookings,
        booking_seq,
        clock,
        final_seq
    },
    after_restore = rebuild_orders
);

impl Default for TransfersState {
    fn default() -> Self {
        Self::new()
    }
}

/// Key of a transfer in [`TransfersState::transfers`].
pub fn transfer_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// Key of an account in [`TransfersState::accounts`].
pub fn account_key(tenant: &str, account: &str, currency: Currency) -> String {
    format!("{tenant}/{account}/{currency}")
}

/// Key of a tombstone in [`TransfersState::tombstones`].
pub fn tombstone_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// Key of a provider reference in [`TransfersState::refs`] (tenants and provider names hold no `/`).
/// Key of a booking in [`TransfersState::bookings`].
pub fn booking_key(tenant: &str, booking: &str) -> String {
    format!("{tenant}/{booking}")
}

/// Key of a provider reference in [`TransfersState::refs`].
pub fn ref_key(tenant: &str, provider: &str, reference: &str) -> String {
    format!("{tenant}/{provider}/{reference}")
}

/// The id of a deposit a provider creates: `{provider}:{reference}` when the reference is made of
/// `A-Z a-z 0-9 _ - . :` and the id fits [`TRANSFER_ID_BYTES_MAX`], else `{provider}:{uuid}` with
/// the uuid derived from both. Deterministic, so a replay creates the same transfer.
pub fn provider_transfer_id(provider: &str, reference: &str) -> String {
    let plain = format!("{provider}:{reference}");
    let tidy = reference.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if tidy && !reference.is_empty() && plain.len() <= TRANSFER_ID_BYTES_MAX {
        plain
    } else {
        format!("{provider}:{}", derived_id(&["provider-transfer", provider, reference]))
    }
}

impl TransfersState {
    pub fn new() -> Self {
        TransfersState {
            transfers: Table::new("t"),
            accounts: Table::new("a"),
            policies: Table::new("p"),
            tombstones: Table::new("x"),
            refs: Table::new("r"),
            bookings: Table::new("b"),
            booking_seq: Cell::new("booking_seq"),
            clock: Cell::new("clock"),
            final_seq: Cell::new("final_seq"),
            finals: VecDeque::new(),
            tombstone_order: VecDeque::new(),
            booking_order: VecDeque::new(),
        }
    }

    pub fn clock_ms(&self) -> i64 {
        *self.clock.get()
    }

    pub fn final_seq_last(&self) -> u64 {
        *self.final_seq.get()
    }

    /// Rebuild the eviction orders after a restore.
    fn rebuild_orders(&mut self) -> Result<(), String> {
        // The order they became final: by `final_seq`, as live. Transfers from a checkpoint older than
        // `final_seq` have none: they became final before every numbered one and keep the old order.
        let mut finals: Vec<(Option<u64>, i64, String)> = self
            .transfers
            .iter()
            .filter_map(|(k, t)| t.final_at_ms.map(|at| (t.final_seq, at, k.clone())))
            .collect();
        finals.sort();
        let mut tombstones: Vec<(u64, i64, String)> =
            self.tombstones.iter().map(|(k, t)| (t.final_seq, t.final_at_ms, k.clone())).collect();
        tombstones.sort();
        // Never hand out a sequence number twice, even if the counter's entry is missing.
        let seq_max = finals.iter().filter_map(|f| f.0).chain(tombstones.iter().map(|t| t.0)).max();
        let last = self.final_seq_last().max(seq_max.unwrap_or(0));
        if last != self.final_seq_last() {
            self.final_seq.set(last);
        }
        self.finals = finals.into_iter().map(|(_, at, k)| (at, k)).collect();
        self.tombstone_order = tombstones.into_iter().map(|(_, _, k)| k).collect();
        let mut bookings: Vec<(u64, String)> =
            self.bookings.iter().map(|(k, m)| (m.seq, k.clone())).collect();
        bookings.sort();
        let booking_last = bookings.last().map_or(0, |b| b.0).max(*self.booking_seq.get());
        if booking_last != *self.booking_seq.get() {
            self.booking_seq.set(booking_last);
        }
        self.booking_order = bookings.into_iter().map(|(_, k)| k).collect();
        Ok(())
    }
}

impl TransfersState {
    /// Sum of posted balances per currency: always zero (money is only moved, never made). Summed in
    /// i128, which cannot overflow for fewer than 2^64 accounts.
    pub fn posted_sums(&self) -> BTreeMap<String, i128> {
        let mut sums = BTreeMap::new();
        for (k, a) in self.accounts.iter() {
            let currency = k.rsplit('/').next().unwrap_or_default().to_owned();
            *sums.entry(currency).or_insert(0) += i128::from(a.posted);
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
        let e = derived_emit("transfers", self.input, self.emits.len(), topic, event_type, payload);
        self.emits.push(e);
    }

    fn reject(&mut self, transfer_id: Option<&str>, reason: impl Into<String>) {
        let (id, event_type) = (self.input.event_id, self.input.event_type.clone());
        self.reject_input(id, event_type, transfer_id, reason);
    }

    /// Reject an earlier input (a parked callback) as part of this one's outputs.
    fn reject_input(
        &mut self,
        input_event_id: Uuid,
        input_event_type: String,
        transfer_id: Option<&str>,
        reason: impl Into<String>,
    ) {
        let r = InputRejected {
            input_event_id,
            input_event_type,
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

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            outputs: vec![
                Output::new(topics.transfer_status(env), &[TransferStatusChanged::EVENT_TYPE]),
                Output::new(topics.transfer_rejections(env), &[InputRejected::EVENT_TYPE]),
                Output::new(topics.ledger_postings(env), &[LedgerPosting::EVENT_TYPE]),
                Output::new(topics.balances(env), &[BalanceChanged::EVENT_TYPE]),
                Output::new(topics.transfer_screening(env), &[ScreeningRequested::EVENT_TYPE]),
                Output::new(topics.ledger_bookings(env), &[BookingRecorded::EVENT_TYPE]),
            ],
            // Provider webhooks: the ones their definition declares transfer callbacks move transfers.
            routed: vec![topics.ingest_webhooks(env)],
            ..Spec::reading(topics.transfer_inputs(env))
        }
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(env)
    }

    fn apply(&self, state: &mut TransfersState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let mut out = Out { input: &input, topics: &self.topics, env: at.environment, emits: Vec::new() };
        self.advance_clock(state, input.occurred_at.timestamp_millis());
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
            WebhookReceived::EVENT_TYPE => {
                decode(&input).map(|w: WebhookReceived| self.webhook(state, &mut out, w))
            }
            BookingRequested::EVENT_TYPE => {
                decode(&input).map(|b: BookingRequested| self.booking(state, &mut out, b))
            }
            other => Err(format!("transfers has no rule for {other}")),
        };
        if let Err(reason) = result {
            return Verdict::Poison(reason);
        }
        self.evict(state);
        Verdict::Emit(out.emits)
    }
}

use riverbank_schemas::processor::decode_v1 as decode;

impl TransfersProcessor {
    /// Move the event clock towards `occurred_ms`, by at most `clock_step_max_ms` (see [`ReuseLimits`]).
    /// An empty state's clock (0) is set outright, or it would never catch up with event time.
    fn advance_clock(&self, state: &mut TransfersState, occurred_ms: i64) {
        let clock = state.clock_ms();
        let next = if clock == 0 {
            occurred_ms
        } else {
            occurred_ms.min(clock.saturating_add(self.reuse.clock_step_max_ms.max(0)))
        };
        if next > clock {
            state.clock.set(next);
        }
    }

    /// Look up the transfer an input targets, deduplicating on the input's event id.
    /// `Ok(None)`: a duplicate, already applied: emit nothing.
    fn target<'s>(
        state: &'s mut TransfersState,
        out: &mut Out<'_>,
        transfer_id: &str,
    ) -> Result<Option<&'s mut Transfer>, ()> {
        let key = transfer_key(&out.input.tenant_id, transfer_id);
        match state.transfers.get(&key) {
            None if state.tombstones.contains_key(&tombstone_key(&out.input.tenant_id, transfer_id)) => {
                out.reject(Some(transfer_id), "transfer ended and is no longer retained");
                Err(())
            }
            None => {
                out.reject(Some(transfer_id), "unknown transfer");
                Err(())
            }
            Some(t) if t.applied_inputs.contains(&out.input.event_id) => Ok(None),
            Some(t) if t.version > u32::MAX - STATUS_CHANGES_PER_INPUT_MAX => {
                out.reject(Some(transfer_id), "transfer has reached the most status changes it can record");
                Err(())
            }
            Some(_) => {
                let Some(t) = state.transfers.get_mut(&key) else { return Err(()) };
                t.applied_inputs.push_back(out.input.event_id);
                if t.applied_inputs.len() > APPLIED_INPUTS_PER_TRANSFER_MAX {
                    t.applied_inputs.pop_front();
                }
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
        if state.tombstones.contains_key(&tombstone_key(&tenant, &r.transfer_id)) {
            // A duplicate of the original request lands here too once its transfer is forgotten: it is
            // answered with a rejection instead of silence, and never re-creates the transfer.
            out.reject(
                Some(&r.transfer_id),
                "transfer id already used by a transfer that ended; choose a new transfer_id",
            );
            return;
        }
        if r.transfer_id.is_empty() || r.transfer_id.len() > TRANSFER_ID_BYTES_MAX {
            out.reject(Some(&r.transfer_id), "transfer_id must be 1-128 characters");
            return;
        }
        let reference = r.external_ref.as_ref().map(|x| ref_key(&tenant, &x.provider, &x.reference));
        if let Some(other) = reference.as_ref().and_then(|k| state.refs.get(k)) {
            let x = r.external_ref.as_ref().map(|x| format!("{}/{}", x.provider, x.reference));
            out.reject(
                Some(&r.transfer_id),
                format!("provider reference {} already belongs to transfer {other}", x.unwrap_or_default()),
            );
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
            final_seq: None,
            user_id: r.user_id.clone(),
            counterparty: r.counterparty.clone(),
            external_ref: r.external_ref.clone(),
            parked: Vec::new(),
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
                (Some(s), Some(d)) => [s, d].into_iter().find_map(|a| {
                    if is_platform_account(a) {
                        Some(format!("account '{a}' is the platform's; a transfer may not name it"))
                    } else if *a != EXTERNAL_ACCOUNT && !valid_account(a) {
                        Some(format!("account '{a}' must be 1-64 of letters, digits, '_', '-', ':'"))
                    } else {
                        None
                    }
                }),
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
        if let Some(k) = reference {
            state.refs.insert(k, r.transfer_id.clone());
        }
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
                self.apply_parked(state, out, &mut t);
            }
        } else if let Err(reason) = self.release(state, out, &t) {
            out.reject(Some(&d.transfer_id), format!("rejection not applied: {reason}"));
        } else {
            let reason = d.reason.unwrap_or_else(|| "rejected by approver".to_owned());
            self.status(out, &mut t, TransferStatus::Blocked, Some(reason));
            Self::reject_parked(out, &mut t);
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
            let risk_before = t.risk;
            t.risk = Some(r.decision);
            match r.decision {
                RiskOutcome::Block => {
                    if let Err(reason) = self.release(state, out, &t) {
                        out.reject(Some(&r.transfer_id), format!("block not applied: {reason}"));
                        t.risk = risk_before;
                        self.store(state, t);
                        return;
                    }
                    let reason = format!(
                        "risk score {} (rules {}): {}",
                        r.score,
                        r.rule_set_version,
                        r.reasons.join(", ")
                    );
                    self.status(out, &mut t, TransferStatus::Blocked, Some(reason));
                    Self::reject_parked(out, &mut t);
                }
                RiskOutcome::Approve if !t.needs_approval || t.approved_by.is_some() => {
                    self.status(out, &mut t, TransferStatus::Approved, None);
                    self.apply_parked(state, out, &mut t);
                }
                RiskOutcome::Review if t.approved_by.is_some() => {
                    self.status(out, &mut t, TransferStatus::Approved, None);
                    self.apply_parked(state, out, &mut t);
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
        let Ok(Some(t)) = Self::target(state, out, &p.transfer_id) else { return };
        let mut t = t.clone();
        let cb = ParkedCallback {
            input_event_id: out.input.event_id,
            input_event_type: out.input.event_type.clone(),
            status: p.status,
            reason: p.reason,
        };
        self.callback(state, out, &mut t, cb);
        self.store(state, t);
    }

    /// A provider callback for `t`: parked while the transfer waits for approval, else applied.
    fn callback(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &mut Transfer, cb: ParkedCallback) {
        use TransferStatus as S;
        match t.status {
            S::Pending | S::ComplianceCheck if t.parked.len() >= PARKED_CALLBACKS_PER_TRANSFER_MAX => {
                out.reject_input(
                    cb.input_event_id,
                    cb.input_event_type,
                    Some(&t.transfer_id),
                    format!(
                        "callback {:?} refused: {PARKED_CALLBACKS_PER_TRANSFER_MAX} callbacks already wait for the transfer's approval ({:?})",
                        cb.status, t.status
                    ),
                );
            }
            // A fast provider (completed before screening ended): kept until the transfer is decided.
            S::Pending | S::ComplianceCheck => t.parked.push(cb),
            _ => self.move_by_callback(state, out, t, &cb),
        }
    }

    /// The transfer became APPROVED: apply the callbacks that waited for it, in arrival order.
    fn apply_parked(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &mut Transfer) {
        for cb in std::mem::take(&mut t.parked) {
            self.move_by_callback(state, out, t, &cb);
        }
    }

    /// The transfer became BLOCKED: the callbacks that waited for it are rejected, naming why.
    fn reject_parked(out: &mut Out<'_>, t: &mut Transfer) {
        for cb in std::mem::take(&mut t.parked) {
            out.reject_input(
                cb.input_event_id,
                cb.input_event_type,
                Some(&t.transfer_id),
                format!("callback {:?} refused: transfer is {:?}", cb.status, t.status),
            );
        }
    }

    /// Move `t` as a callback says, along legal edges only; anything else rejects the callback's input.
    fn move_by_callback(
        &self,
        state: &mut TransfersState,
        out: &mut Out<'_>,
        t: &mut Transfer,
        cb: &ParkedCallback,
    ) {
        use TransferStatus as S;
        let id = t.transfer_id.clone();
        let reject = |out: &mut Out<'_>, reason: String| {
            out.reject_input(cb.input_event_id, cb.input_event_type.clone(), Some(&id), reason)
        };
        // Where the callback says the transfer is, on the execution path APPROVED → … → final.
        let rank = |s: S| match s {
            S::Approved => Some(0),
            S::Processing => Some(1),
            S::Confirming => Some(2),
            S::Completed | S::Failed => Some(3),
            _ => None,
        };
        let target = match cb.status {
            ProviderTransferStatus::Processing => S::Processing,
            ProviderTransferStatus::Confirming => S::Confirming,
            ProviderTransferStatus::Completed => S::Completed,
            ProviderTransferStatus::Failed => S::Failed,
        };
        match rank(t.status) {
            None if matches!(t.status, S::Cancelled) => {
                reject(out, format!("late callback {:?}: transfer is CANCELLED", cb.status));
            }
            None => reject(out, format!("callback {:?} refused: transfer is {:?}", cb.status, t.status)),
            Some(current) if rank(target).is_some_and(|r| r <= current) => {
                reject(out, format!("stale callback {:?}: transfer is already {:?}", cb.status, t.status));
            }
            Some(_) => {
                // The ledger change the target makes (post on COMPLETED, release on FAILED), planned before
                // any status moves: if it cannot be made, the callback is refused and nothing changes.
                let phase = match target {
                    S::Completed => Some(PostingPhase::Post),
                    S::Failed if t.status.holds_funds() => Some(PostingPhase::Release),
                    _ => None,
                };
                let mut ledger =
                    match phase.map(|phase| Self::plan(state, t, phase).map(|legs| (phase, legs))) {
                        Some(Err(reason)) => {
                            reject(out, format!("callback {:?} not applied: {reason}", cb.status));
                            return;
                        }
                        Some(Ok(planned)) => Some(planned),
                        None => None,
                    };
                // Walk forward along legal edges, so late-arriving intermediate callbacks are not needed.
                let path: &[S] = match target {
                    S::Failed => &[S::Processing, S::Failed],
                    _ => &[S::Processing, S::Confirming, S::Completed],
                };
                for &next in path {
                    if !t.status.can_move_to(next) {
                        continue;
                    }
                    if next == target {
                        if let Some((phase, legs)) = ledger.take() {
                            Self::commit(state, out, t, phase, legs);
                        }
                    }
                    let reason = if next == target { cb.reason.clone() } else { None };
                    self.status(out, t, next, reason);
                    if next == target {
                        break;
                    }
                }
            }
        }
    }

    /// A provider webhook. Only one its definition declares a transfer callback concerns transfers.
    fn webhook(&self, state: &mut TransfersState, out: &mut Out<'_>, w: WebhookReceived) {
        let Some(cb) = w.transfer_callback else { return };
        let label = format!(
            "{} callback {}",
            w.provider,
            w.event_type.as_deref().or(w.provider_event_type.as_deref()).unwrap_or("?")
        );
        if !cb.problems.is_empty() {
            out.reject(None, format!("{label} cannot be resolved: {}", cb.problems.join("; ")));
            return;
        }
        let Some(reference) = cb.reference.clone() else {
            out.reject(None, format!("{label} names no reference"));
            return;
        };
        let tenant = out.input.tenant_id.clone();
        let Some(transfer_id) = state.refs.get(&ref_key(&tenant, &w.provider, &reference)).cloned() else {
            if cb.status == CallbackStatus::Received && cb.creates_deposit {
                self.create_deposit(state, out, &w.provider, reference, &cb, &label);
            } else {
                out.reject(None, format!("{label}: unknown reference {}/{reference}", w.provider));
            }
            return;
        };
        let Ok(Some(t)) = Self::target(state, out, &transfer_id) else { return };
        let mut t = t.clone();
        if let Some(reason) = disagreement(&label, &cb, &t) {
            out.reject(Some(&transfer_id), reason);
        } else if let Some(status) = cb.status.moves_to() {
            let parked = ParkedCallback {
                input_event_id: out.input.event_id,
                input_event_type: out.input.event_type.clone(),
                status,
                reason: cb.reason.clone(),
            };
            self.callback(state, out, &mut t, parked);
        } else if matches!(
            t.status,
            TransferStatus::Blocked | TransferStatus::Rejected | TransferStatus::Cancelled
        ) {
            // The provider has money or an order for a transfer that will not happen: say so.
            out.reject(Some(&transfer_id), format!("{label} refused: transfer is {:?}", t.status));
        }
        // Otherwise `received` for a known transfer: its reference and amount agree; nothing moves.
        self.store(state, t);
    }

    /// A `received` callback the definition lets create a deposit, for a reference nobody requested:
    /// the same path as `transfer.requested` (validation, hold, screening), requested by the provider.
    fn create_deposit(
        &self,
        state: &mut TransfersState,
        out: &mut Out<'_>,
        provider: &str,
        reference: String,
        cb: &TransferCallback,
        label: &str,
    ) {
        let transfer_id = provider_transfer_id(provider, &reference);
        let (Some(amount), Some(destination)) = (cb.amount, cb.destination_account.clone()) else {
            out.reject(
                Some(&transfer_id),
                format!("{label} creates a deposit but names no amount or destination account"),
            );
            return;
        };
        let r = TransferRequested {
            transfer_id,
            kind: TransferKind::Deposit,
            amount,
            source_account: None,
            destination_account: Some(destination),
            requested_by: format!("provider:{provider}"),
            user_id: cb.user_id.clone(),
            counterparty: None,
            external_ref: Some(ExternalRef { provider: provider.to_owned(), reference }),
        };
        self.request(state, out, r);
    }

    fn policy(&self, state: &mut TransfersState, out: &mut Out<'_>, p: TransferPolicySet) {
        let tenant = out.input.tenant_id.clone();
        if state.policies.get(&tenant).is_some_and(|p| p.applied_inputs.contains(&out.input.event_id)) {
            return;
        }
        if let Some(bad) = p.overdraft_accounts.iter().find(|a| !valid_account(a)) {
            out.reject(None, format!("overdraft account '{bad}' is not a valid account id"));
            return;
        }
        let input = out.input.event_id;
        state.policies.upsert(&tenant, |policy| {
            policy.approval_thresholds = p.approval_thresholds;
            policy.overdraft_accounts = p.overdraft_accounts;
            policy.applied_inputs.push_back(input);
            if policy.applied_inputs.len() > APPLIED_INPUTS_PER_TRANSFER_MAX {
                policy.applied_inputs.pop_front();
            }
        });
    }

    fn store(&self, state: &mut TransfersState, t: Transfer) {
        debug_assert!(
            t.parked.is_empty()
                || matches!(t.status, TransferStatus::Pending | TransferStatus::ComplianceCheck),
            "callbacks parked on a {:?} transfer would never apply",
            t.status
        );
        let key = transfer_key(&t.tenant_id, &t.transfer_id);
        if t.status.is_final() && t.final_at_ms.is_none() {
            let mut t = t;
            // 2^64 finals cannot happen; saturating keeps even that from wrapping to an earlier position.
            let seq = state.final_seq_last().saturating_add(1);
            state.final_seq.set(seq);
            t.final_at_ms = Some(state.clock_ms());
            t.final_seq = Some(seq);
            state.finals.push_back((state.clock_ms(), key.clone()));
            state.transfers.insert(key, t);
        } else {
            state.transfers.insert(key, t);
        }
    }

    /// Forget final transfers past retention (event clock) or past the count limit, leaving a tombstone
    /// for each; then drop tombstones past their own limits (see [`ReuseLimits`]).
    fn evict(&self, state: &mut TransfersState) {
        while let Some((at, key)) = state.finals.front().cloned() {
            let expired = state.clock_ms().saturating_sub(at) > self.limits.final_retention_ms;
            if !expired && state.finals.len() <= self.limits.final_retained_max {
                break;
            }
            state.finals.pop_front();
            if let Some(t) = state.transfers.remove(&key) {
                if let Some(x) = &t.external_ref {
                    let k = ref_key(&t.tenant_id, &x.provider, &x.reference);
                    if state.refs.get(&k) == Some(&t.transfer_id) {
                        state.refs.remove(&k);
                    }
                }
                let tomb = tombstone_key(&t.tenant_id, &t.transfer_id);
                let stone = Tombstone {
                    final_at_ms: t.final_at_ms.unwrap_or(at),
                    final_seq: t.final_seq.unwrap_or(0),
                };
                state.tombstones.insert(tomb.clone(), stone);
                state.tombstone_order.push_back(tomb);
            }
        }
        while let Some(tomb) = state.tombstone_order.front().cloned() {
            if let Some(stone) = state.tombstones.get(&tomb) {
                let expired =
                    state.clock_ms().saturating_sub(stone.final_at_ms) > self.reuse.id_reuse_refused_ms;
                if !expired && state.tombstones.len() <= self.reuse.tombstones_retained_max {
                    break;
                }
            }
            state.tombstone_order.pop_front();
            state.tombstones.remove(&tomb);
        }
    }

    /// Move `t` to `next` and emit the change. Every caller moves along an edge it checked; an illegal
    /// edge is a bug, refused (with an `InputRejected`) rather than emitted, never a panic.
    fn status(&self, out: &mut Out<'_>, t: &mut Transfer, next: TransferStatus, reason: Option<String>) {
        let previous = (t.version > 0).then_some(t.status);
        if let Some(prev) = previous {
            let legal = prev.can_move_to(next) && !prev.is_final();
            debug_assert!(legal, "illegal transition {prev:?} → {next:?} reached the ledger");
            if !legal {
                out.reject(Some(&t.transfer_id), format!("illegal transition {prev:?} → {next:?} refused"));
                return;
            }
        }
        // `target` refuses inputs to a transfer within STATUS_CHANGES_PER_INPUT_MAX of the limit.
        let Some(version) = t.version.checked_add(1) else {
            out.reject(Some(&t.transfer_id), "transfer has reached the most status changes it can record");
            return;
        };
        t.status = next;
        t.version = version;
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
        if next == TransferStatus::ComplianceCheck {
            // Every transfer that reaches COMPLIANCE_CHECK asks risk scoring, with what its rules read.
            let screening = ScreeningRequested {
                transfer_id: t.transfer_id.clone(),
                kind: t.kind,
                amount: t.amount,
                requested_by: t.requested_by.clone(),
                user_id: t.user_id.clone(),
                source_account: t.source.clone(),
                destination_account: t.destination.clone(),
                counterparty: t.counterparty.clone(),
                version: t.version,
                needs_approval: t.needs_approval,
            };
            out.push(out.topics.transfer_screening(out.env), ScreeningRequested::EVENT_TYPE, screening);
        }
    }

    /// A booking (`ledger.booking_requested`, from FX or billing): every leg posted at once, or none.
    /// Answered with one `ledger.booking_recorded` (booked, or refused with the reason); a redelivered
    /// booking (same input) is silent, another input under a known booking id is refused.
    fn booking(&self, state: &mut TransfersState, out: &mut Out<'_>, b: BookingRequested) {
        let tenant = out.input.tenant_id.clone();
        let key = booking_key(&tenant, &b.booking_id);
        if let Some(memo) = state.bookings.get(&key) {
            if memo.input != out.input.event_id {
                out.reject(Some(&b.booking_id), "booking id already used by another booking request");
            }
            return;
        }
        let outcome = if b.booking_id.is_empty() || b.booking_id.len() > BOOKING_ID_BYTES_MAX {
            Err(format!("booking_id must be 1-{BOOKING_ID_BYTES_MAX} bytes"))
        } else {
            Self::plan_booking(state, &tenant, &b.legs)
        };
        let seq = state.booking_seq.get().saturating_add(1);
        state.booking_seq.set(seq);
        state.bookings.insert(key.clone(), BookingMemo { seq, input: out.input.event_id });
        state.booking_order.push_back(key);
        while state.booking_order.len() > self.limits.final_retained_max {
            if let Some(old) = state.booking_order.pop_front() {
                state.bookings.remove(&old);
            }
        }
        let reason = match outcome {
            Ok(legs) => {
                let posting_id =
                    derived_id(&["posting", &out.input.event_id.to_string(), &out.emits.len().to_string()]);
                for (leg, after, available) in legs {
                    let currency = leg.amount.currency;
                    let balance = BalanceChanged {
                        account: leg.account.clone(),
                        currency,
                        posted_minor: after.posted,
                        pending_debit_minor: after.pending_debit,
                        pending_credit_minor: after.pending_credit,
                        available_minor: available,
                        version: after.version,
                    };
                    state.accounts.insert(account_key(&tenant, &leg.account, currency), after);
                    let posting = LedgerPosting {
                        posting_id,
                        transfer_id: b.booking_id.clone(),
                        phase: PostingPhase::Post,
                        account: leg.account,
                        amount_minor: leg.amount.amount_minor,
                        currency,
                    };
                    out.push(out.topics.ledger_postings(out.env), LedgerPosting::EVENT_TYPE, posting);
                    out.push(out.topics.balances(out.env), BalanceChanged::EVENT_TYPE, balance);
                }
                None
            }
            Err(reason) => Some(reason),
        };
        let recorded = BookingRecorded {
            booking_id: b.booking_id,
            purpose: b.purpose,
            reference: b.reference,
            outcome: if reason.is_none() { BookingOutcome::Booked } else { BookingOutcome::Refused },
            reason,
            legs: b.legs,
        };
        out.push(out.topics.ledger_bookings(out.env), BookingRecorded::EVENT_TYPE, recorded);
    }

    /// A booking's legs with each account's balances after it, computed with checked arithmetic and not
    /// yet written; an error names the first rule broken (nothing is changed).
    fn plan_booking(
        state: &TransfersState,
        tenant: &str,
        legs: &[BookingLeg],
    ) -> Result<Vec<(BookingLeg, Account, i64)>, String> {
        if legs.is_empty() || legs.len() > BOOKING_LEGS_MAX {
            return Err(format!("a booking has 1-{BOOKING_LEGS_MAX} legs, this one {}", legs.len()));
        }
        if let Some(c) = unbalanced_currency(legs) {
            return Err(format!("legs in {c} do not sum to zero"));
        }
        let mut working: BTreeMap<String, Account> = BTreeMap::new();
        let mut planned = Vec::with_capacity(legs.len());
        for leg in legs {
            let (account, amount) = (&leg.account, leg.amount);
            if amount.amount_minor == 0 || !amount.within_max() {
                return Err(format!(
                    "leg of {account}: amount {amount} must be non-zero and within the maximum"
                ));
            }
            let platform = is_platform_account(account);
            if !platform && (account.as_str() == EXTERNAL_ACCOUNT || !valid_account(account)) {
                return Err(format!("leg account '{account}' is not a tenant account"));
            }
            let key = account_key(tenant, account, amount.currency);
            let before = match working.get(&key) {
                Some(a) => a.clone(),
                None => state.accounts.get(&key).cloned().unwrap_or_default(),
            };
            let overflow = || format!("amount {amount} would overflow account {account}");
            let mut after = before.clone();
            after.posted = before.posted.checked_add(amount.amount_minor).ok_or_else(overflow)?;
            // Room to post everything held for it, as a hold keeps.
            after.posted.checked_add(after.pending_credit).ok_or_else(overflow)?;
            let available = after.available().ok_or_else(overflow)?;
            after.version = before.version.checked_add(1).ok_or_else(overflow)?;
            let may_go_negative = OVERDRAFT_PLATFORM_ACCOUNTS.contains(&account.as_str())
                || (!platform && Self::overdraft_allowed(state, tenant, account));
            if amount.amount_minor < 0 && available < 0 && !may_go_negative {
                let had = before.available().unwrap_or(0);
                return Err(format!(
                    "insufficient funds: {} available in {account}, {} requested",
                    Money::new(had, amount.currency),
                    Money::new(-amount.amount_minor, amount.currency)
                ));
            }
            working.insert(key, after.clone());
            planned.push((leg.clone(), after, available));
        }
        Ok(planned)
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
        let available = src.available().ok_or_else(|| overflow_reason(t, &t.source))?;
        if !Self::overdraft_allowed(state, &t.tenant_id, &t.source) && available < amount {
            return Err(format!(
                "insufficient funds: {} available, {} requested",
                Money::new(available, t.amount.currency),
                t.amount
            ));
        }
        let legs = Self::plan(state, t, PostingPhase::Hold)?;
        Self::commit(state, out, t, PostingPhase::Hold, legs);
        Ok(())
    }

    /// Give a hold back, if the transfer holds one.
    fn release(&self, state: &mut TransfersState, out: &mut Out<'_>, t: &Transfer) -> Result<(), String> {
        if t.status.holds_funds() {
            let legs = Self::plan(state, t, PostingPhase::Release)?;
            Self::commit(state, out, t, PostingPhase::Release, legs);
        }
        Ok(())
    }

    /// Both legs of one posting, computed with checked arithmetic from the current balances and not yet
    /// written: `[source, destination]`. An error leaves the state as it was.
    ///
    /// A hold also refuses to make either account's `posted - pending_debit` or `posted + pending_credit`
    /// unrepresentable; with that kept, releasing and posting a hold cannot overflow (each only moves
    /// amounts already inside those bounds), so the checks there only catch older checkpoints.
    fn plan(state: &TransfersState, t: &Transfer, phase: PostingPhase) -> Result<[Leg; 2], String> {
        let amount = t.amount.amount_minor;
        if amount <= 0 {
            return Err(format!("amount {} is not positive", t.amount));
        }
        let currency = t.amount.currency;
        let src_key = account_key(&t.tenant_id, &t.source, currency);
        let dst_key = account_key(&t.tenant_id, &t.destination, currency);
        if src_key == dst_key {
            return Err("source and destination must differ".to_owned());
        }
        let leg = |key: String, account: &String, debit: bool| -> Result<Leg, String> {
            let before = state.accounts.get(&key).cloned().unwrap_or_default();
            match leg_after(&before, phase, debit, amount) {
                Ok((after, available)) => Ok(Leg {
                    key,
                    account: account.clone(),
                    signed: if debit { -amount } else { amount },
                    after,
                    available,
                }),
                Err(LegError::Overflow) => Err(overflow_reason(t, account)),
                Err(LegError::NegativePending) => {
                    debug_assert!(
                        false,
                        "{phase:?} of {} would make {key}'s pending negative",
                        t.transfer_id
                    );
                    Err(format!(
                        "ledger inconsistent: pending balance of account {account} would go negative"
                    ))
                }
            }
        };
        Ok([leg(src_key, &t.source, true)?, leg(dst_key, &t.destination, false)?])
    }

    /// Write a planned posting and emit its legs and the two balances (ids as ever: from the input and
    /// the position of the posting among this input's outputs).
    fn commit(
        state: &mut TransfersState,
        out: &mut Out<'_>,
        t: &Transfer,
        phase: PostingPhase,
        legs: [Leg; 2],
    ) {
        debug_assert_eq!(legs[0].signed.checked_add(legs[1].signed), Some(0), "a posting's legs sum to zero");
        let currency = t.amount.currency;
        let posting_id =
            derived_id(&["posting", &out.input.event_id.to_string(), &out.emits.len().to_string()]);
        for leg in legs {
            let balance = BalanceChanged {
                account: leg.account.clone(),
                currency,
                posted_minor: leg.after.posted,
                pending_debit_minor: leg.after.pending_debit,
                pending_credit_minor: leg.after.pending_credit,
                available_minor: leg.available,
                version: leg.after.version,
            };
            state.accounts.insert(leg.key, leg.after);
            let posting = LedgerPosting {
                posting_id,
                transfer_id: t.transfer_id.clone(),
                phase,
                account: leg.account,
                amount_minor: leg.signed,
                currency,
            };
            out.push(out.topics.ledger_postings(out.env), LedgerPosting::EVENT_TYPE, posting);
            out.push(out.topics.balances(out.env), BalanceChanged::EVENT_TYPE, balance);
        }
    }
}

/// A day of a small tenant's life, for the conformance suite: a policy, deposits approved and
/// completed, an internal transfer, one blocked by risk then cancelled, a failed payout retried, an
/// approval by a second person, refusals (insufficient funds, maker-checker, unknown transfer), a
/// payload that does not decode and an input type transfers has no rule for. Provider webhooks (as the
/// router copies them, body null): a deposit requested with a provider reference whose `completed`
/// arrives before screening ends (parked, applied at approval), one the provider creates
/// (`received`), a payout callback for a blocked payout (parked, then rejected), an unknown reference,
/// an amount that disagrees, an unresolved callback, and a KYC webhook that is none of transfers'
/// business. Bookings: an FX conversion's six legs booked, its id reused, one refused for
/// insufficient funds, one whose legs do not sum to zero, a fee booked, a leg on `external` refused, and
/// a transfer naming a platform account.
pub fn examples(env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let usd = |minor: i64| json!({"amount_minor": minor, "currency": "USD"});
    let request = |id: &str, kind: &str, minor: i64, src: Option<&str>, dst: Option<&str>| {
        let mut p = json!({"transfer_id": id, "kind": kind, "amount": usd(minor), "requested_by": "maker"});
        if let Some(s) = src {
            p["source_account"] = s.into();
        }
        if let Some(d) = dst {
            p["destination_account"] = d.into();
        }
        (it::REQUESTED, p)
    };
    let risk = |id: &str, decision: &str| {
        (
            it::RISK_DECIDED,
            json!({"transfer_id": id, "decision": decision, "score": 40, "reasons": ["velocity"], "rule_set_version": "r1"}),
        )
    };
    let provider =
        |id: &str, status: &str| (it::PROVIDER_STATUS, json!({"transfer_id": id, "status": status}));
    let action = |t: &'static str, id: &str, actor: &str| (t, json!({"transfer_id": id, "actor": actor}));
    let with_ref = |(t, mut p): (&'static str, serde_json::Value), reference: &str| {
        p["external_ref"] = json!({"provider": "acmepay", "reference": reference});
        (t, p)
    };
    let webhook = |event_type: &str, callback: serde_json::Value| {
        let mut p = json!({
            "provider": "acmepay", "provider_event_id": format!("evt_{event_type}_{}", callback["reference"]),
            "event_type": event_type, "body_bytes": 200, "body": null,
        });
        if !callback.is_null() {
            p["transfer_callback"] = callback;
        }
        (WebhookReceived::EVENT_TYPE, p)
    };
    let booking = |id: &str, purpose: &str, legs: &[(&str, i64, &str)]| {
        let legs: Vec<serde_json::Value> = legs
            .iter()
            .map(|(account, minor, ccy)| json!({"account": account, "amount": {"amount_minor": minor, "currency": ccy}}))
            .collect();
        (
            BookingRequested::EVENT_TYPE,
            json!({"booking_id": id, "purpose": purpose, "reference": id, "legs": legs, "requested_by": "fx"}),
        )
    };
    let callback = |status: &str, kind: &str, reference: &str, minor: i64| json!({"status": status, "kind": kind, "reference": reference, "amount": usd(minor)});
    let steps: Vec<(&str, serde_json::Value)> = vec![
        (it::POLICY_SET, json!({"approval_thresholds": [usd(50_000)], "overdraft_accounts": []})),
        request("d1", "deposit", 10_000, None, Some("acct_1")),
        risk("d1", "approve"),
        provider("d1", "processing"),
        provider("d1", "completed"),
        request("i1", "internal", 2_500, Some("acct_1"), Some("acct_2")),
        risk("i1", "approve"),
        provider("i1", "completed"),
        request("w1", "withdrawal", 1_000_000, Some("acct_2"), None),
        request("p1", "payout", 1_000, Some("acct_1"), None),
        risk("p1", "block"),
        action(it::CANCEL_REQUESTED, "p1", "ops"),
        request("p2", "payout", 1_500, Some("acct_1"), None),
        risk("p2", "approve"),
        provider("p2", "failed"),
        action(it::RETRY_REQUESTED, "p2", "ops"),
        risk("p2", "review"),
        action(it::APPROVED, "p2", "maker"),
        action(it::APPROVED, "p2", "checker"),
        provider("p2", "completed"),
        provider("zz", "completed"),
        with_ref(request("d2", "deposit", 3_000, None, Some("acct_1")), "dep_a"),
        webhook("deposit.completed", callback("completed", "deposit", "dep_a", 3_000)),
        risk("d2", "approve"),
        webhook("deposit.received", {
            let mut c = callback("received", "deposit", "dep_b", 700);
            c["creates_deposit"] = true.into();
            c["destination_account"] = "acct_2".into();
            c["user_id"] = "usr_1".into();
            c
        }),
        risk("acmepay:dep_b", "approve"),
        webhook("deposit.completed", callback("completed", "deposit", "dep_b", 700)),
        with_ref(request("p3", "payout", 500, Some("acct_1"), None), "po_a"),
        webhook("payout.processing", callback("processing", "payout", "po_a", 500)),
        risk("p3", "block"),
        webhook("deposit.completed", callback("completed", "deposit", "dep_zz", 100)),
        webhook("deposit.failed", callback("failed", "deposit", "dep_a", 9_999)),
        webhook("deposit.completed", json!({"status": "completed", "problems": ["reference is missing"]})),
        webhook("kyc.case_approved", serde_json::Value::Null),
        (it::REQUESTED, json!({"transfer_id": 5})),
        ("transfer.unheard_of", json!({})),
        booking(
            "fx1",
            "fx_conversion",
            &[
                ("acct_1", -1_000, "USD"),
                ("fx:desk", 1_000, "USD"),
                ("fx:desk", -920, "EUR"),
                ("acct_1", 915, "EUR"),
                ("fx:fees", 4, "EUR"),
                ("fx:residue", 1, "EUR"),
            ],
        ),
        booking("fx1", "fx_conversion", &[("acct_1", -1, "USD"), ("fx:desk", 1, "USD")]),
        booking("fx2", "fx_conversion", &[("acct_2", -900_000_000, "USD"), ("fx:desk", 900_000_000, "USD")]),
        booking("fx3", "fx_conversion", &[("acct_1", -10, "USD"), ("fx:desk", 9, "USD")]),
        booking("fee1", "fee", &[("billing:receivable", -50, "USD"), ("billing:fees", 50, "USD")]),
        booking("fee2", "fee", &[("external", -50, "USD"), ("billing:fees", 50, "USD")]),
        request("i2", "internal", 100, Some("acct_1"), Some("fx:desk")),
    ];
    let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (event_type, payload))| {
            let at = t0 + chrono::Duration::seconds(i as i64);
            let id = derived_id(&["transfers-example", &i.to_string()]);
            let source = if event_type == WebhookReceived::EVENT_TYPE { "acmepay" } else { "api" };
            Envelope::new(id, event_type, "tenant-a", env, at, source, payload)
        })
        .collect()
}

/// Why a callback cannot be about `t`: another kind of transfer, or another amount or currency.
fn disagreement(label: &str, cb: &TransferCallback, t: &Transfer) -> Option<String> {
    if let Some(kind) = cb.kind.filter(|k| *k != t.kind) {
        return Some(format!(
            "{label} is about a {}, but transfer {} is a {}",
            kind.as_str(),
            t.transfer_id,
            t.kind.as_str()
        ));
    }
    match cb.amount {
        Some(amount) if amount != t.amount => {
            Some(format!("{label} states {amount}, but transfer {} is for {}", t.transfer_id, t.amount))
        }
        _ => None,
    }
}

fn overflow_reason(t: &Transfer, account: &str) -> String {
    format!("amount {} would overflow account {account}", t.amount)
}

/// One leg of a planned posting: the account's balances after it.
struct Leg {
    key: String,
    account: String,
    /// Signed: negative debits the account, positive credits it.
    signed: i64,
    after: Account,
    /// `after.available()`, known to fit.
    available: i64,
}

enum LegError {
    Overflow,
    /// Only with an inconsistent state: a release or post of more than is pending.
    NegativePending,
}

/// An account after one leg (`debit`: the source side), and its available balance; checked throughout.
fn leg_after(a: &Account, phase: PostingPhase, debit: bool, amount: i64) -> Result<(Account, i64), LegError> {
    use LegError::Overflow;
    let mut n = a.clone();
    match (phase, debit) {
        (PostingPhase::Hold, true) => {
            n.pending_debit = a.pending_debit.checked_add(amount).ok_or(Overflow)?
        }
        (PostingPhase::Hold, false) => {
            n.pending_credit = a.pending_credit.checked_add(amount).ok_or(Overflow)?;
            // Room to post everything held for this account: the later post cannot overflow.
            n.posted.checked_add(n.pending_credit).ok_or(Overflow)?;
        }
        (PostingPhase::Release, true) => {
            n.pending_debit = a.pending_debit.checked_sub(amount).ok_or(Overflow)?
        }
        (PostingPhase::Release, false) => {
            n.pending_credit = a.pending_credit.checked_sub(amount).ok_or(Overflow)?
        }
        (PostingPhase::Post, true) => {
            n.pending_debit = a.pending_debit.checked_sub(amount).ok_or(Overflow)?;
            n.posted = a.posted.checked_sub(amount).ok_or(Overflow)?;
        }
        (PostingPhase::Post, false) => {
            n.pending_credit = a.pending_credit.checked_sub(amount).ok_or(Overflow)?;
            n.posted = a.posted.checked_add(amount).ok_or(Overflow)?;
        }
    }
    if n.pending_debit < 0 || n.pending_credit < 0 {
        return Err(LegError::NegativePending);
    }
    let available = n.available().ok_or(Overflow)?;
    n.version = a.version.checked_add(1).ok_or(Overflow)?;
    Ok((n, available))
}

#[cfg(test)]
#[path = "transfers_tests.rs"]
mod tests;
