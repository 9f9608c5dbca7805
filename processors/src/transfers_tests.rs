use std::collections::{BTreeSet, HashMap};

use chrono::TimeZone;
use proptest::prelude::*;
use riverbank_schemas::transfers::TransferStatus as S;

use super::*;
use riverbank_schemas::state::{Encoded, State as _};

/// A state's snapshot as a restore reads it.
fn entries(s: &TransfersState) -> Vec<(String, Encoded)> {
    s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect()
}

/// The same entries as a checkpoint written before bincode held them (JSON values).
fn json_entries(s: &TransfersState) -> Vec<(String, serde_json::Value)> {
    fn json<V: serde::de::DeserializeOwned + Serialize>(b: &[u8]) -> serde_json::Value {
        serde_json::to_value(bincode_decode::<V>(b)).expect("json")
    }
    s.snapshot()
        .into_iter()
        .map(|(k, v)| {
            let j = match k.split('/').next() {
                Some("t") => json::<Transfer>(&v),
                Some("a") => json::<Account>(&v),
                Some("p") => json::<Policy>(&v),
                Some("x") => json::<Tombstone>(&v),
                Some("r") => json::<String>(&v),
                Some("b") => json::<BookingMemo>(&v),
                Some("clock") => json::<i64>(&v),
                _ => json::<u64>(&v),
            };
            (k, j)
        })
        .collect()
}

fn bincode_decode<V: serde::de::DeserializeOwned>(b: &[u8]) -> V {
    Encoded::Bin(b.to_vec()).decode().expect("decodes")
}

fn restore(e: Vec<(String, Encoded)>) -> Result<TransfersState, String> {
    TransfersState::restore(&e)
}

const TENANT: &str = "tenant-a";

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::from_code("USD").expect("USD"))
}

struct H {
    p: TransfersProcessor,
    state: TransfersState,
    seq: u64,
}

/// Decoded outputs of one input.
#[derive(Debug, Clone, PartialEq)]
struct Outs(Vec<Emit>);

impl Outs {
    fn of<P: serde::de::DeserializeOwned>(&self, event_type: &str) -> Vec<P> {
        self.0
            .iter()
            .filter_map(|e| serde_json::from_slice::<RawEnvelope>(&e.payload).ok())
            .filter(|e| e.event_type == event_type)
            .map(|e| serde_json::from_value(e.payload).expect("decodes"))
            .collect()
    }
    fn statuses(&self) -> Vec<S> {
        self.of::<TransferStatusChanged>(TransferStatusChanged::EVENT_TYPE)
            .into_iter()
            .map(|s| s.status)
            .collect()
    }
    fn rejections(&self) -> Vec<String> {
        self.of::<InputRejected>(InputRejected::EVENT_TYPE).into_iter().map(|r| r.reason).collect()
    }
}

fn envelope(seq: u64, event_type: &str, payload: serde_json::Value) -> RawEnvelope {
    let t = chrono::Utc.timestamp_opt(1_790_000_000 + seq as i64, 0).single().expect("time");
    Envelope {
        event_id: derived_id(&["test-input", &seq.to_string()]),
        event_type: event_type.to_owned(),
        schema_version: 1,
        tenant_id: TENANT.to_owned(),
        environment: Environment::Live,
        occurred_at: t,
        ingested_at: t,
        idempotency_key: None,
        source: "api".to_owned(),
        user_id: None,
        customer_id: None,
        session_id: None,
        trace_id: None,
        payload,
    }
}

impl H {
    fn new() -> H {
        H {
            p: TransfersProcessor::new(Topics::new(""), TransfersLimits::default()),
            state: TransfersState::default(),
            seq: 0,
        }
    }

    fn apply_envelope(&mut self, e: RawEnvelope) -> Outs {
        let at = InputRef::log("live.transfers.inputs", 0, 0, Environment::Live);
        match self.p.apply(&mut self.state, &at, e) {
            Verdict::Emit(out) => Outs(out),
            Verdict::Poison(r) => panic!("poison: {r}"),
        }
    }

    fn send(&mut self, event_type: &str, payload: serde_json::Value) -> Outs {
        self.seq += 1;
        let e = envelope(self.seq, event_type, payload);
        self.apply_envelope(e)
    }

    /// Like `send`, with `occurred_at` moved by `shift_ms` (a skewed ingest clock, or ties).
    fn send_shifted(&mut self, shift_ms: i64, event_type: &str, payload: serde_json::Value) -> Outs {
        self.seq += 1;
        let mut e = envelope(self.seq, event_type, payload);
        e.occurred_at += chrono::Duration::milliseconds(shift_ms);
        self.apply_envelope(e)
    }

    fn request(&mut self, id: &str, kind: &str, amount: i64, src: Option<&str>, dst: Option<&str>) -> Outs {
        self.request_in(id, kind, amount, "USD", src, dst)
    }
    fn request_in(
        &mut self,
        id: &str,
        kind: &str,
        amount: i64,
        currency: &str,
        src: Option<&str>,
        dst: Option<&str>,
    ) -> Outs {
        let mut p = serde_json::json!({"transfer_id": id, "kind": kind, "amount": {"amount_minor": amount, "currency": currency}, "requested_by": "maker"});
        if let Some(s) = src {
            p["source_account"] = s.into();
        }
        if let Some(d) = dst {
            p["destination_account"] = d.into();
        }
        self.send(it::REQUESTED, p)
    }
    fn risk(&mut self, id: &str, decision: &str) -> Outs {
        self.send(it::RISK_DECIDED, serde_json::json!({"transfer_id": id, "decision": decision, "score": 10, "reasons": ["velocity"], "rule_set_version": "r1"}))
    }
    fn provider(&mut self, id: &str, status: &str) -> Outs {
        self.send(it::PROVIDER_STATUS, serde_json::json!({"transfer_id": id, "status": status}))
    }
    fn action(&mut self, event_type: &str, id: &str, actor: &str) -> Outs {
        self.send(event_type, serde_json::json!({"transfer_id": id, "actor": actor}))
    }
    fn status_of(&self, id: &str) -> S {
        self.state.transfers[&transfer_key(TENANT, id)].status
    }
    fn account(&self, account: &str) -> Account {
        self.state.accounts.get(&account_key(TENANT, account, usd(1).currency)).cloned().unwrap_or_default()
    }
    fn deposit_completed(&mut self, id: &str, to: &str, amount: i64) {
        self.request(id, "deposit", amount, None, Some(to));
        self.risk(id, "approve");
        self.provider(id, "completed");
        assert_eq!(self.status_of(id), S::Completed);
    }
}

#[test]
fn state_machine_edges_are_exactly_the_domain_ones() {
    use S::*;
    let all = S::ALL;
    let legal = [
        (Initiated, Validating),
        (Validating, Pending),
        (Validating, Rejected),
        (Pending, ComplianceCheck),
        (ComplianceCheck, Approved),
        (ComplianceCheck, Blocked),
        (Approved, Processing),
        (Processing, Confirming),
        (Processing, Failed),
        (Confirming, Completed),
        (Confirming, Failed),
        (Failed, Pending),
        (Blocked, Cancelled),
        (Rejected, Cancelled),
    ];
    for a in all {
        for b in all {
            assert_eq!(a.can_move_to(b), legal.contains(&(a, b)), "{a:?} → {b:?}");
        }
        if a.is_final() {
            assert!(all.iter().all(|&b| !a.can_move_to(b)), "{a:?} is final");
        }
    }
}

#[test]
fn deposit_happy_path_holds_then_posts() {
    let mut h = H::new();
    let o = h.request("t1", "deposit", 5_000, None, Some("acct_1"));
    assert_eq!(o.statuses(), vec![S::Initiated, S::Validating, S::Pending, S::ComplianceCheck]);
    assert_eq!(
        h.account("acct_1"),
        Account { posted: 0, pending_debit: 0, pending_credit: 5_000, version: 1 }
    );
    assert_eq!(h.risk("t1", "approve").statuses(), vec![S::Approved]);
    assert_eq!(h.provider("t1", "processing").statuses(), vec![S::Processing]);
    assert_eq!(h.provider("t1", "confirming").statuses(), vec![S::Confirming]);
    let o = h.provider("t1", "completed");
    assert_eq!(o.statuses(), vec![S::Completed]);
    let legs = o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE);
    assert_eq!(legs.len(), 2);
    assert_eq!(legs.iter().map(|l| l.amount_minor).sum::<i64>(), 0, "postings sum to zero");
    assert!(legs.iter().all(|l| l.phase == PostingPhase::Post && l.posting_id == legs[0].posting_id));
    assert_eq!(h.account("acct_1").posted, 5_000);
    assert_eq!(h.account(EXTERNAL_ACCOUNT).posted, -5_000);
    assert_eq!(h.state.posted_sums()["USD"], 0);
    let versions: Vec<u32> = h.state.transfers.values().map(|t| t.version).collect();
    assert_eq!(versions, vec![8]);
}

#[test]
fn transition_table() {
    // (name, steps after a funded account exists, expected final status, expected rejection substring)
    type Step = fn(&mut H) -> Outs;
    let cases: Vec<(&str, Vec<Step>, S, Option<&str>)> = vec![
        (
            "withdrawal without funds is rejected",
            vec![|h| h.request("w", "withdrawal", 999_999, Some("acct_1"), None)],
            S::Rejected,
            None,
        ),
        (
            "rejected can be cancelled",
            vec![|h| h.request("w", "withdrawal", 999_999, Some("acct_1"), None), |h| {
                h.action(it::CANCEL_REQUESTED, "w", "maker")
            }],
            S::Cancelled,
            None,
        ),
        (
            "risk block blocks",
            vec![|h| h.request("w", "withdrawal", 100, Some("acct_1"), None), |h| h.risk("w", "block")],
            S::Blocked,
            None,
        ),
        (
            "blocked can be cancelled",
            vec![
                |h| h.request("w", "withdrawal", 100, Some("acct_1"), None),
                |h| h.risk("w", "block"),
                |h| h.action(it::CANCEL_REQUESTED, "w", "maker"),
            ],
            S::Cancelled,
            None,
        ),
        (
            "processing fails",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.risk("w", "approve"),
                |h| h.provider("w", "processing"),
                |h| h.provider("w", "failed"),
            ],
            S::Failed,
            None,
        ),
        (
            "confirming fails",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.risk("w", "approve"),
                |h| h.provider("w", "confirming"),
                |h| h.provider("w", "failed"),
            ],
            S::Failed,
            None,
        ),
        (
            "failed retries to compliance",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.risk("w", "approve"),
                |h| h.provider("w", "failed"),
                |h| h.action(it::RETRY_REQUESTED, "w", "maker"),
            ],
            S::ComplianceCheck,
            None,
        ),
        (
            "review needs a human",
            vec![|h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_2")), |h| {
                h.risk("w", "review")
            }],
            S::ComplianceCheck,
            None,
        ),
        (
            "review then checker approves",
            vec![
                |h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_2")),
                |h| h.risk("w", "review"),
                |h| h.action(it::APPROVED, "w", "checker"),
            ],
            S::Approved,
            None,
        ),
        (
            "checker rejects",
            vec![|h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_2")), |h| {
                h.action(it::APPROVAL_REJECTED, "w", "checker")
            }],
            S::Blocked,
            None,
        ),
        (
            "maker cannot approve",
            vec![
                |h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_2")),
                |h| h.risk("w", "review"),
                |h| h.action(it::APPROVED, "w", "maker"),
            ],
            S::ComplianceCheck,
            Some("maker-checker"),
        ),
        (
            "cannot cancel in flight",
            vec![|h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_2")), |h| {
                h.action(it::CANCEL_REQUESTED, "w", "maker")
            }],
            S::ComplianceCheck,
            Some("only BLOCKED or REJECTED"),
        ),
        (
            "callback before approval waits for it",
            vec![|h| h.request("w", "payout", 100, Some("acct_1"), None), |h| h.provider("w", "processing")],
            S::ComplianceCheck,
            None,
        ),
        (
            "callback before approval applies at approval",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.provider("w", "processing"),
                |h| h.risk("w", "approve"),
            ],
            S::Processing,
            None,
        ),
        (
            "callback before a block is rejected by it",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.provider("w", "completed"),
                |h| h.risk("w", "block"),
            ],
            S::Blocked,
            Some("callback Completed refused: transfer is Blocked"),
        ),
        (
            "callback after a block",
            vec![|h| h.request("w", "payout", 100, Some("acct_1"), None), |h| h.risk("w", "block"), |h| {
                h.provider("w", "completed")
            }],
            S::Blocked,
            Some("refused: transfer is Blocked"),
        ),
        (
            "stale callback never moves back",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.risk("w", "approve"),
                |h| h.provider("w", "confirming"),
                |h| h.provider("w", "processing"),
            ],
            S::Confirming,
            Some("stale"),
        ),
        (
            "late callback after completion",
            vec![
                |h| h.request("w", "payout", 100, Some("acct_1"), None),
                |h| h.risk("w", "approve"),
                |h| h.provider("w", "completed"),
                |h| h.provider("w", "failed"),
            ],
            S::Completed,
            Some("stale"),
        ),
        (
            "retry only when failed",
            vec![|h| h.request("w", "payout", 100, Some("acct_1"), None), |h| {
                h.action(it::RETRY_REQUESTED, "w", "maker")
            }],
            S::ComplianceCheck,
            Some("only FAILED"),
        ),
        (
            "risk after approval is refused",
            vec![|h| h.request("w", "payout", 100, Some("acct_1"), None), |h| h.risk("w", "approve"), |h| {
                h.risk("w", "block")
            }],
            S::Approved,
            Some("needs COMPLIANCE_CHECK"),
        ),
        (
            "same account both sides",
            vec![|h| h.request("w", "internal", 100, Some("acct_1"), Some("acct_1"))],
            S::Rejected,
            None,
        ),
        ("zero amount", vec![|h| h.request("w", "deposit", 0, None, Some("acct_1"))], S::Rejected, None),
        (
            "transfer id reused",
            vec![|h| h.request("w", "deposit", 10, None, Some("acct_1")), |h| {
                h.request("w", "deposit", 20, None, Some("acct_1"))
            }],
            S::ComplianceCheck,
            Some("already used"),
        ),
    ];
    for (name, steps, want, rejection) in cases {
        let mut h = H::new();
        h.deposit_completed("funding", "acct_1", 10_000);
        let mut last = Outs(Vec::new());
        let mut rejections = Vec::new();
        for step in steps {
            last = step(&mut h);
            rejections.extend(last.rejections());
        }
        assert_eq!(h.status_of("w"), want, "{name}");
        match rejection {
            Some(text) => assert!(rejections.iter().any(|r| r.contains(text)), "{name}: {rejections:?}"),
            None => assert!(rejections.is_empty(), "{name}: unexpected {rejections:?}"),
        }
        let _ = last;
        assert_eq!(h.state.posted_sums()["USD"], 0, "{name}: money conserved");
        let acct = h.account("acct_1");
        assert!(acct.available().is_some_and(|a| a >= 0), "{name}: {acct:?}");
    }
}

#[test]
fn approvals_above_the_threshold_need_a_different_actor() {
    let mut h = H::new();
    h.send(
        it::POLICY_SET,
        serde_json::json!({"approval_thresholds": [{"amount_minor": 1_000, "currency": "USD"}]}),
    );
    h.deposit_completed("small", "acct_1", 900);
    h.request("big", "deposit", 5_000, None, Some("acct_1"));
    assert!(h.risk("big", "approve").statuses().is_empty(), "waits for a checker");
    assert_eq!(h.status_of("big"), S::ComplianceCheck);
    assert!(h.action(it::APPROVED, "big", "maker").rejections()[0].contains("maker-checker"));
    assert_eq!(h.action(it::APPROVED, "big", "checker").statuses(), vec![S::Approved]);
}

#[test]
fn holds_are_released_when_blocked_and_reserved_again_on_retry() {
    let mut h = H::new();
    h.deposit_completed("f", "acct_1", 1_000);
    h.request("p", "payout", 800, Some("acct_1"), None);
    assert_eq!(h.account("acct_1").available(), Some(200));
    h.request("q", "payout", 300, Some("acct_1"), None);
    assert_eq!(h.status_of("q"), S::Rejected, "hold makes the second one fail");
    h.risk("p", "approve");
    h.provider("p", "failed");
    assert_eq!(h.account("acct_1").available(), Some(1_000), "released");
    h.action(it::RETRY_REQUESTED, "p", "maker");
    assert_eq!(h.account("acct_1").available(), Some(200), "held again");
    h.risk("p", "block");
    assert_eq!(
        h.account("acct_1"),
        Account { posted: 1_000, pending_debit: 0, pending_credit: 0, version: 6 }
    );
}

#[test]
fn duplicates_emit_nothing_and_unknown_transfers_are_refused() {
    let mut h = H::new();
    h.seq += 1;
    let req = envelope(
        h.seq,
        it::REQUESTED,
        serde_json::json!({"transfer_id": "d", "kind": "deposit", "amount": {"amount_minor": 5, "currency": "USD"}, "destination_account": "acct_9", "requested_by": "m"}),
    );
    assert_eq!(h.apply_envelope(req.clone()).statuses().len(), 4);
    assert!(h.apply_envelope(req).0.is_empty(), "duplicate request");
    h.seq += 1;
    let risk = envelope(
        h.seq,
        it::RISK_DECIDED,
        serde_json::json!({"transfer_id": "d", "decision": "approve", "score": 1, "reasons": [], "rule_set_version": "r1"}),
    );
    assert_eq!(h.apply_envelope(risk.clone()).statuses(), vec![S::Approved]);
    assert!(h.apply_envelope(risk).0.is_empty(), "duplicate decision");
    assert!(h.provider("nope", "completed").rejections()[0].contains("unknown transfer"));
}

#[test]
fn malformed_inputs_are_poison() {
    let mut h = H::new();
    let at = InputRef::log("x", 0, 0, Environment::Live);
    let bad = envelope(1, it::REQUESTED, serde_json::json!({"transfer_id": 5}));
    assert!(matches!(h.p.apply(&mut h.state, &at, bad), Verdict::Poison(r) if r.contains("schema")));
    let unknown = envelope(2, "transfer.teleported", serde_json::json!({}));
    assert!(matches!(h.p.apply(&mut h.state, &at, unknown), Verdict::Poison(_)));
    let mut v2 = envelope(3, it::RISK_DECIDED, serde_json::json!({}));
    v2.schema_version = 2;
    assert!(matches!(h.p.apply(&mut h.state, &at, v2), Verdict::Poison(r) if r.contains("v2")));
}

#[test]
fn final_transfers_are_forgotten_after_retention() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 10_000, final_retained_max: 100 },
    );
    h.deposit_completed("old", "acct_1", 10);
    assert!(h.state.transfers.contains_key(&transfer_key(TENANT, "old")));
    h.seq += 20; // event time moves on 20 s
    h.request("new", "deposit", 10, None, Some("acct_1"));
    assert!(!h.state.transfers.contains_key(&transfer_key(TENANT, "old")));
    assert_eq!(h.account("acct_1").posted, 10, "balances stay");
}

// ---- properties over random sequences ----

#[derive(Debug, Clone)]
enum Op {
    Request {
        id: u8,
        kind: u8,
        amount: i64,
        a: u8,
        b: u8,
    },
    Risk {
        id: u8,
        outcome: u8,
    },
    Decide {
        id: u8,
        approve: bool,
        by_maker: bool,
    },
    Cancel(u8),
    Retry(u8),
    Provider {
        id: u8,
        status: u8,
    },
    /// A provider webhook for reference `ref_{id}` (status 0..5: received, processing, confirming,
    /// completed, failed), with an amount that may disagree, or creating a deposit.
    Webhook {
        id: u8,
        status: u8,
        amount: Option<i64>,
        creates: bool,
    },
    Policy {
        threshold: i64,
        overdraft: u8,
    },
    Duplicate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    op_with(1i64..5_000)
}

/// Amounts anywhere in 1..=i64::MAX, often near the top, so sums and holds overflow i64.
fn huge_amount() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![
        1i64..5_000,
        (i64::MAX - 5_000)..=i64::MAX,
        i64::MAX / 2 - 5..i64::MAX / 2 + 5,
        1i64..=i64::MAX
    ]
}

fn op_with(amount: impl Strategy<Value = i64> + Clone + 'static) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..4, amount, 0u8..4, 0u8..4).prop_map(|(id, kind, amount, a, b)| Op::Request { id, kind, amount, a, b }),
        3 => (0u8..6, 0u8..3).prop_map(|(id, outcome)| Op::Risk { id, outcome }),
        2 => (0u8..6, any::<bool>(), any::<bool>()).prop_map(|(id, approve, by_maker)| Op::Decide { id, approve, by_maker }),
        1 => (0u8..6).prop_map(Op::Cancel),
        1 => (0u8..6).prop_map(Op::Retry),
        4 => (0u8..6, 0u8..4).prop_map(|(id, status)| Op::Provider { id, status }),
        3 => (0u8..6, 0u8..5, proptest::option::weighted(0.3, 1i64..5_000), proptest::bool::weighted(0.2))
            .prop_map(|(id, status, amount, creates)| Op::Webhook { id, status, amount, creates }),
        1 => (1i64..3_000, 0u8..5).prop_map(|(threshold, overdraft)| Op::Policy { threshold, overdraft }),
        2 => (0usize..64).prop_map(Op::Duplicate),
    ]
}

fn inputs_for(ops: &[Op]) -> Vec<RawEnvelope> {
    let mut out: Vec<RawEnvelope> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        let seq = i as u64 + 1;
        let id = |n: &u8| format!("t{n}");
        let acct = |n: &u8| format!("acct_{n}");
        let e = match o {
            Op::Request { id: n, kind, amount, a, b } => {
                let kind = ["deposit", "withdrawal", "internal", "payout"][*kind as usize];
                envelope(
                    seq,
                    it::REQUESTED,
                    serde_json::json!({"transfer_id": id(n), "kind": kind, "amount": {"amount_minor": amount, "currency": "USD"}, "source_account": acct(a), "destination_account": acct(b), "requested_by": "maker",
                        "external_ref": {"provider": "acmepay", "reference": format!("ref_{n}")}}),
                )
            }
            Op::Risk { id: n, outcome } => {
                let decision = ["approve", "review", "block"][*outcome as usize];
                envelope(
                    seq,
                    it::RISK_DECIDED,
                    serde_json::json!({"transfer_id": id(n), "decision": decision, "score": 1, "reasons": [], "rule_set_version": "r"}),
                )
            }
            Op::Decide { id: n, approve, by_maker } => envelope(
                seq,
                if *approve { it::APPROVED } else { it::APPROVAL_REJECTED },
                serde_json::json!({"transfer_id": id(n), "actor": if *by_maker { "maker" } else { "checker" }}),
            ),
            Op::Cancel(n) => envelope(
                seq,
                it::CANCEL_REQUESTED,
                serde_json::json!({"transfer_id": id(n), "actor": "maker"}),
            ),
            Op::Retry(n) => envelope(
                seq,
                it::RETRY_REQUESTED,
                serde_json::json!({"transfer_id": id(n), "actor": "maker"}),
            ),
            Op::Provider { id: n, status } => {
                let status = ["processing", "confirming", "completed", "failed"][*status as usize];
                envelope(
                    seq,
                    it::PROVIDER_STATUS,
                    serde_json::json!({"transfer_id": id(n), "status": status}),
                )
            }
            Op::Webhook { id: n, status, amount, creates } => {
                let status =
                    ["received", "processing", "confirming", "completed", "failed"][*status as usize];
                let mut c = serde_json::json!({"status": status, "reference": format!("ref_{n}")});
                if let Some(a) = amount {
                    c["amount"] = serde_json::to_value(usd(*a)).expect("money");
                }
                if *creates {
                    c = created(&format!("ref_{n}"), amount.unwrap_or(100), &acct(n));
                }
                webhook_envelope(seq, "deposit.x", Some(c))
            }
            Op::Policy { threshold, overdraft } => {
                let overdraft: Vec<String> = if *overdraft < 4 { vec![acct(overdraft)] } else { vec![] };
                envelope(
                    seq,
                    it::POLICY_SET,
                    serde_json::json!({"approval_thresholds": [{"amount_minor": threshold, "currency": "USD"}], "overdraft_accounts": overdraft}),
                )
            }
            Op::Duplicate(k) if !out.is_empty() => out[k % out.len()].clone(),
            Op::Duplicate(_) => continue,
        };
        out.push(e);
    }
    out
}

fn run(inputs: &[RawEnvelope]) -> (Vec<Outs>, TransfersState) {
    run_with(H::new().p, inputs)
}

fn run_with(p: TransfersProcessor, inputs: &[RawEnvelope]) -> (Vec<Outs>, TransfersState) {
    let mut h = H { p, state: TransfersState::default(), seq: 0 };
    let outs = inputs.iter().map(|e| h.apply_envelope(e.clone())).collect();
    (outs, h.state)
}

/// Limits small enough that random sequences (one input per second) forget transfers by time and by
/// count, and drop tombstones.
fn tight() -> TransfersProcessor {
    TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 5_000, final_retained_max: 2 },
    )
    .with_reuse_limits(ReuseLimits {
        id_reuse_refused_ms: 20_000,
        tombstones_retained_max: 3,
        clock_step_max_ms: 60_000,
    })
}

/// `ever_overdraft`: accounts that were allowed to overdraw at some point (a later policy change does not
/// undo a negative balance it allowed).
fn check_invariants(state: &TransfersState, ever_overdraft: &BTreeSet<String>) -> Result<(), TestCaseError> {
    // Sums in i128: with amounts near i64::MAX the sums themselves would overflow i64.
    for (currency, sum) in wide_posted_sums(state) {
        prop_assert_eq!(sum, 0, "posted balances sum to zero in {}", currency);
    }
    let debit: i128 = state.accounts.values().map(|a| i128::from(a.pending_debit)).sum();
    let credit: i128 = state.accounts.values().map(|a| i128::from(a.pending_credit)).sum();
    prop_assert_eq!(debit, credit, "every hold has two sides");
    for (k, a) in state.accounts.iter() {
        let account = k.split('/').nth(1).unwrap_or_default();
        let allowed = account == EXTERNAL_ACCOUNT || ever_overdraft.contains(account);
        let available = i128::from(a.posted) - i128::from(a.pending_debit);
        prop_assert!(allowed || available >= 0, "{} went negative: {:?}", k, a);
        prop_assert!(a.pending_debit >= 0 && a.pending_credit >= 0, "{} pending went negative: {:?}", k, a);
    }
    let held: i128 = state
        .transfers
        .values()
        .filter(|t| t.status.holds_funds())
        .map(|t| i128::from(t.amount.amount_minor))
        .sum();
    prop_assert_eq!(held, debit, "holds equal the amounts of transfers in flight");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn money_is_conserved_and_finals_happen_once(ops in proptest::collection::vec(op(), 1..80)) {
        let inputs = inputs_for(&ops);
        let mut h = H::new();
        let mut finals: HashMap<String, u32> = HashMap::new();
        let mut ever_overdraft = BTreeSet::new();
        for e in &inputs {
            let o = h.apply_envelope(e.clone());
            for p in h.state.policies.values() {
                ever_overdraft.extend(p.overdraft_accounts.iter().cloned());
            }
            for s in o.of::<TransferStatusChanged>(TransferStatusChanged::EVENT_TYPE) {
                if s.status.is_final() {
                    *finals.entry(s.transfer_id.clone()).or_default() += 1;
                }
            }
            for legs in o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).chunks(2) {
                prop_assert_eq!(legs.iter().map(|l| l.amount_minor).sum::<i64>(), 0);
            }
            check_invariants(&h.state, &ever_overdraft)?;
        }
        prop_assert!(finals.values().all(|&n| n == 1), "{:?}", finals);
    }

    #[test]
    fn amounts_up_to_i64_max_never_panic_wrap_or_unbalance(ops in proptest::collection::vec(op_with(huge_amount()), 1..80)) {
        let inputs = inputs_for(&ops);
        let mut h = H::new();
        let mut ever_overdraft = BTreeSet::new();
        for e in &inputs {
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.apply_envelope(e.clone())));
            let o = match applied {
                Ok(o) => o,
                Err(_) => return Err(TestCaseError::fail(format!("apply panicked on {} {}", e.event_type, e.payload))),
            };
            for p in h.state.policies.values() {
                ever_overdraft.extend(p.overdraft_accounts.iter().cloned());
            }
            for legs in o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).chunks(2) {
                prop_assert_eq!(legs.iter().map(|l| i128::from(l.amount_minor)).sum::<i128>(), 0);
            }
            for b in o.of::<BalanceChanged>(BalanceChanged::EVENT_TYPE) {
                prop_assert!(b.pending_debit_minor >= 0 && b.pending_credit_minor >= 0, "{:?}", b);
                prop_assert_eq!(
                    i128::from(b.available_minor),
                    i128::from(b.posted_minor) - i128::from(b.pending_debit_minor),
                    "available is exact, never wrapped"
                );
            }
            check_invariants(&h.state, &ever_overdraft)?;
            prop_assert_eq!(h.state.posted_sums(), wide_posted_sums(&h.state));
        }
    }

    #[test]
    fn with_tight_limits_restore_anywhere_continues_identically(ops in proptest::collection::vec(op(), 2..80), cut in 0usize..80) {
        let inputs = inputs_for(&ops);
        let cut = cut % inputs.len().max(1);
        let (whole, end) = run_with(tight(), &inputs);
        let mut h = H { p: tight(), state: TransfersState::default(), seq: 0 };
        let mut kv: BTreeMap<String, Encoded> = BTreeMap::new();
        for e in &inputs[..cut] {
            h.apply_envelope(e.clone());
            for (k, v) in h.state.take_changes() {
                match v { Some(v) => { kv.insert(k, Encoded::Bin(v)); } None => { kv.remove(&k); } }
            }
        }
        let from_deltas = restore(kv.into_iter().collect()).map_err(TestCaseError::fail)?;
        let from_snapshot = restore(entries(&h.state)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(entries(&from_deltas), entries(&h.state));
        for state in [from_deltas, from_snapshot] {
            let mut h2 = H { p: tight(), state, seq: 0 };
            for (i, e) in inputs.iter().enumerate().skip(cut) {
                prop_assert_eq!(&h2.apply_envelope(e.clone()), &whole[i]);
            }
            prop_assert_eq!(entries(&h2.state), entries(&end));
        }
        prop_assert!(end.tombstones.len() <= 3 && end.transfers.values().filter(|t| t.status.is_final()).count() <= 2);
    }

    #[test]
    fn same_inputs_same_outputs_and_duplicates_change_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let inputs = inputs_for(&ops);
        let (a, sa) = run(&inputs);
        let (b, sb) = run(&inputs);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(entries(&sa), entries(&sb));
        // Feeding every input twice in a row: the second copy never emits anything.
        let doubled: Vec<RawEnvelope> = inputs.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
        let (d, sd) = run(&doubled);
        let firsts: Vec<Outs> = d.iter().step_by(2).cloned().collect();
        prop_assert_eq!(&firsts, &a);
        for (i, o) in d.iter().enumerate().skip(1).step_by(2) {
            prop_assert!(o.0.iter().all(|e| a[i / 2].0.contains(e)), "second copy emitted something new");
        }
        prop_assert_eq!(entries(&sd), entries(&sa));
    }

    #[test]
    fn checkpoint_and_restore_anywhere_continues_identically(ops in proptest::collection::vec(op(), 2..60), cut in 0usize..60) {
        let inputs = inputs_for(&ops);
        let cut = cut % inputs.len().max(1);
        let (whole, _) = run(&inputs);
        // Run to `cut` keeping a snapshot at the start and deltas after each input, then restore
        // from snapshot + deltas and continue.
        let mut h = H::new();
        let mut kv: BTreeMap<String, Encoded> = entries(&h.state).into_iter().collect();
        for e in &inputs[..cut] {
            h.apply_envelope(e.clone());
            for (k, v) in h.state.take_changes() {
                match v { Some(v) => { kv.insert(k, Encoded::Bin(v)); } None => { kv.remove(&k); } }
            }
        }
        let restored = restore(kv.into_iter().collect()).map_err(TestCaseError::fail)?;
        let mut fresh = restore(entries(&h.state)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(entries(&restored), entries(&fresh));
        let mut h2 = H { p: h.p.clone(), state: restored, seq: 0 };
        for (i, e) in inputs.iter().enumerate().skip(cut) {
            prop_assert_eq!(&h2.apply_envelope(e.clone()), &whole[i]);
        }
        let _ = fresh.take_changes();
    }
}

// ---- overflow: checked ledger arithmetic (review finding 4) ----

/// Posted balances summed per currency in i128, so the sum itself cannot overflow.
fn wide_posted_sums(state: &TransfersState) -> BTreeMap<String, i128> {
    let mut sums = BTreeMap::new();
    for (k, a) in state.accounts.iter() {
        let currency = k.rsplit('/').next().unwrap_or_default().to_owned();
        *sums.entry(currency).or_insert(0i128) += i128::from(a.posted);
    }
    sums
}

fn jpy_account(h: &H, account: &str) -> Account {
    let jpy = Currency::from_code("JPY").expect("JPY");
    h.state.accounts.get(&account_key(TENANT, account, jpy)).cloned().unwrap_or_default()
}

#[test]
fn review_scenario_overflow_is_rejected_not_wrapped_or_panicking() {
    // Deposit i64::MAX JPY into A (completed); deposit i64::MAX into X (left pending); internal A→X of 1.
    let mut h = H::new();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.request_in("d1", "deposit", i64::MAX, "JPY", None, Some("acct_a"));
        h.risk("d1", "approve");
        h.provider("d1", "completed");
        let d2 = h.request_in("d2", "deposit", i64::MAX, "JPY", None, Some("acct_x"));
        let i1 = h.request_in("i1", "internal", 1, "JPY", Some("acct_a"), Some("acct_x"));
        (d2, i1)
    }));
    let (d2, i1) = run.expect("no panic on input-reachable overflow");
    assert_eq!(h.status_of("d1"), S::Completed);
    // The second deposit would make external's available -2·MAX: refused at hold time, with the reason.
    assert_eq!(h.status_of("d2"), S::Rejected);
    let reasons: Vec<String> = d2
        .of::<TransferStatusChanged>(TransferStatusChanged::EVENT_TYPE)
        .into_iter()
        .filter_map(|s| s.reason)
        .collect();
    assert!(reasons.iter().any(|r| r.contains("overflow") && r.contains("external")), "{reasons:?}");
    assert!(d2.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty(), "no legs for a refused hold");
    // The internal transfer then holds normally.
    assert_eq!(i1.statuses().last(), Some(&S::ComplianceCheck));
    assert_eq!(h.status_of("i1"), S::ComplianceCheck);
    let a = jpy_account(&h, "acct_a");
    assert_eq!((a.posted, a.pending_debit), (i64::MAX, 1));
    assert_eq!(wide_posted_sums(&h.state)["JPY"], 0);
    for a in h.state.accounts.values() {
        assert!(a.pending_debit >= 0 && a.pending_credit >= 0, "{a:?}");
    }
}

#[test]
fn destination_overflow_is_rejected_at_hold_and_leaves_state_untouched() {
    let mut h = H::new();
    h.send(it::POLICY_SET, serde_json::json!({"overdraft_accounts": ["acct_b"]}));
    h.request_in("fund", "deposit", 1, "JPY", None, Some("acct_a"));
    h.risk("fund", "approve");
    h.provider("fund", "completed");
    // acct_b may overdraw: it holds i64::MAX for acct_x, whose pending credit is then i64::MAX.
    h.request_in("big", "internal", i64::MAX, "JPY", Some("acct_b"), Some("acct_x"));
    assert_eq!(h.status_of("big"), S::ComplianceCheck);
    let before = h.state.accounts.clone();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.request_in("one", "internal", 1, "JPY", Some("acct_a"), Some("acct_x"))
    }));
    let o = run.expect("no panic");
    assert_eq!(h.status_of("one"), S::Rejected);
    let reasons: Vec<String> = o
        .of::<TransferStatusChanged>(TransferStatusChanged::EVENT_TYPE)
        .into_iter()
        .filter_map(|s| s.reason)
        .collect();
    assert!(reasons.iter().any(|r| r.contains("overflow") && r.contains("acct_x")), "{reasons:?}");
    assert_eq!(h.state.accounts, before, "a refused hold changes neither leg");
    assert!(o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty());
    assert!(o.of::<BalanceChanged>(BalanceChanged::EVENT_TYPE).is_empty());
}

#[test]
fn overflow_at_posting_time_is_an_input_rejection_and_all_or_nothing() {
    // A checkpoint written before holds were checked may hold balances that a later posting overflows:
    // acct_x already has posted near i64::MAX and a pending credit of 5 from before.
    let mut h = H::new();
    h.request("d", "deposit", 5, None, Some("acct_x"));
    h.risk("d", "approve");
    let key = account_key(TENANT, "acct_x", usd(1).currency);
    h.state.accounts.get_mut(&key).expect("acct_x").posted = i64::MAX - 2;
    let before = h.state.accounts.clone();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.provider("d", "completed")));
    let o = run.expect("no panic");
    assert!(o.rejections().iter().any(|r| r.contains("overflow") && r.contains("acct_x")), "{:?}", o.0);
    assert!(o.statuses().is_empty(), "no status moves when the posting cannot be made");
    assert!(o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty());
    assert_eq!(h.state.accounts, before, "neither leg posted");
    assert_eq!(h.status_of("d"), S::Approved);
}

// ---- transfer-id reuse after eviction, and the event clock (review finding 8) ----

const DAY_MS: i64 = 24 * 3600 * 1000;

#[test]
fn reused_transfer_id_after_a_far_future_input_is_rejected() {
    let mut h = H::new();
    h.deposit_completed("T", "acct_1", 100);
    let version = h.state.transfers[&transfer_key(TENANT, "T")].version;
    // One input stamped 8 days ahead (a skewed ingest host), past the 7-day final retention.
    h.send_shifted(8 * DAY_MS, it::POLICY_SET, serde_json::json!({}));
    let o = h.request("T", "deposit", 999, None, Some("acct_1"));
    assert!(o.statuses().is_empty(), "no new status events for T: {:?}", o.statuses());
    assert!(o.rejections().iter().any(|r| r.contains("already used")), "{:?}", o.rejections());
    assert!(o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty());
    if let Some(t) = h.state.transfers.get(&transfer_key(TENANT, "T")) {
        assert_eq!(
            (t.status, t.version, t.amount),
            (S::Completed, version, usd(100)),
            "the old T is untouched"
        );
    }
    assert_eq!(h.account("acct_1").pending_credit, 0, "nothing held for the refused reuse");
}

#[test]
fn one_far_future_input_does_not_evict_every_final_transfer() {
    let mut h = H::new();
    for id in ["f1", "f2", "f3"] {
        h.deposit_completed(id, "acct_1", 10);
    }
    h.send_shifted(8 * DAY_MS, it::POLICY_SET, serde_json::json!({}));
    for id in ["f1", "f2", "f3"] {
        assert!(
            h.state.transfers.contains_key(&transfer_key(TENANT, id)),
            "{id} was evicted by one skewed input"
        );
    }
    // Late duplicates for them are still recognised as such (a stale callback, not an unknown transfer).
    assert!(h.provider("f1", "completed").rejections()[0].contains("stale"));
}

#[test]
fn a_transfer_id_evicted_by_time_is_still_refused() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 10_000, final_retained_max: 100 },
    );
    h.deposit_completed("old", "acct_1", 10);
    h.seq += 20; // event time moves on 20 s: "old" is forgotten
    h.request("new", "deposit", 10, None, Some("acct_1"));
    assert!(!h.state.transfers.contains_key(&transfer_key(TENANT, "old")));
    let o = h.request("old", "deposit", 10, None, Some("acct_1"));
    assert!(o.statuses().is_empty(), "{:?}", o.statuses());
    assert!(o.rejections().iter().any(|r| r.contains("already used")), "{:?}", o.rejections());
    // A late callback for it says it is gone, not that it never existed.
    let late = h.provider("old", "completed").rejections();
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].contains("no longer retained"), "{late:?}");
}

#[test]
fn a_transfer_id_evicted_by_count_is_still_refused() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 7 * DAY_MS, final_retained_max: 1 },
    );
    h.deposit_completed("first", "acct_1", 10);
    h.deposit_completed("second", "acct_1", 10);
    assert!(!h.state.transfers.contains_key(&transfer_key(TENANT, "first")), "count cap evicts");
    let o = h.request("first", "deposit", 10, None, Some("acct_1"));
    assert!(o.statuses().is_empty(), "{:?}", o.statuses());
    assert!(o.rejections().iter().any(|r| r.contains("already used")), "{:?}", o.rejections());
}

// ---- count-based eviction is replay-deterministic (review finding 13) ----

#[test]
fn count_eviction_with_tied_final_times_is_the_same_after_restore() {
    let limits = TransfersLimits { final_retention_ms: 7 * DAY_MS, final_retained_max: 2 };
    let mut live = H::new();
    live.p = TransfersProcessor::new(Topics::new(""), limits);
    for id in ["t_b", "t_a"] {
        live.request(id, "deposit", 10, None, Some("acct_1"));
        live.risk(id, "approve");
    }
    // Both complete at the same event time (a tie on the clock): t_b becomes final first, but sorts
    // after t_a by key.
    let tie = 1_790_000_000_000 + 1_000 * (live.seq as i64 + 1);
    for id in ["t_b", "t_a"] {
        live.seq += 1;
        let mut e = envelope(
            live.seq,
            it::PROVIDER_STATUS,
            serde_json::json!({"transfer_id": id, "status": "completed"}),
        );
        e.occurred_at = chrono::Utc.timestamp_millis_opt(tie).single().expect("time");
        live.apply_envelope(e);
    }
    let _ = live.state.take_changes();
    let restored = restore(entries(&live.state)).expect("restores");
    assert_eq!(entries(&restored), entries(&live.state));
    let mut again = H { p: live.p.clone(), state: restored, seq: live.seq };
    // The same inputs to both: a third final passes the cap of 2, then late callbacks for both.
    let follow: Vec<(&str, serde_json::Value)> = vec![
        (
            it::REQUESTED,
            serde_json::json!({"transfer_id": "t_c", "kind": "deposit", "amount": {"amount_minor": 10, "currency": "USD"}, "destination_account": "acct_1", "requested_by": "maker"}),
        ),
        (
            it::RISK_DECIDED,
            serde_json::json!({"transfer_id": "t_c", "decision": "approve", "score": 1, "reasons": [], "rule_set_version": "r"}),
        ),
        (it::PROVIDER_STATUS, serde_json::json!({"transfer_id": "t_c", "status": "completed"})),
        (it::PROVIDER_STATUS, serde_json::json!({"transfer_id": "t_a", "status": "failed"})),
        (it::PROVIDER_STATUS, serde_json::json!({"transfer_id": "t_b", "status": "failed"})),
    ];
    for (event_type, payload) in follow {
        let a = live.send(event_type, payload.clone());
        let b = again.send(event_type, payload);
        assert_eq!(a, b, "{event_type}: live and restored instances answer alike");
    }
    assert_eq!(entries(&live.state), entries(&again.state));
    assert_eq!(live.state.take_changes(), again.state.take_changes());
}

#[test]
fn tombstones_bound_the_refusal_window_by_time_and_count() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 10_000, final_retained_max: 100 },
    )
    .with_reuse_limits(ReuseLimits {
        id_reuse_refused_ms: 60_000,
        tombstones_retained_max: 2,
        clock_step_max_ms: 60_000,
    });
    h.deposit_completed("a", "acct_1", 10);
    h.seq += 20;
    h.send(it::POLICY_SET, serde_json::json!({}));
    assert!(h.state.tombstones.contains_key(&tombstone_key(TENANT, "a")), "forgotten by time, tombstoned");
    assert!(
        h.request("a", "deposit", 10, None, Some("acct_1")).statuses().is_empty(),
        "refused within the window"
    );
    // 60 s of event clock after "a" became final, its tombstone goes, and the id is accepted again: the
    // documented end of the window.
    h.seq += 60;
    h.send(it::POLICY_SET, serde_json::json!({}));
    assert!(!h.state.tombstones.contains_key(&tombstone_key(TENANT, "a")));
    assert_eq!(h.request("a", "deposit", 10, None, Some("acct_1")).statuses()[0], S::Initiated);
    // By count: three more forgotten transfers keep only the newest two tombstones.
    for id in ["b", "c", "d"] {
        h.deposit_completed(id, "acct_1", 10);
    }
    h.seq += 20;
    h.send(it::POLICY_SET, serde_json::json!({}));
    let kept: Vec<&String> = h.state.tombstones.keys().collect();
    assert_eq!(kept, vec![&tombstone_key(TENANT, "c"), &tombstone_key(TENANT, "d")]);
    let snapshot = entries(&h.state);
    assert_eq!(
        snapshot.iter().filter(|(k, _)| k.starts_with("x/")).count(),
        2,
        "tombstones are checkpointed"
    );
    let back = restore(snapshot).expect("restores");
    assert_eq!(back.tombstones, h.state.tombstones);
}

#[test]
fn the_event_clock_moves_at_most_one_step_per_input() {
    let step = ReuseLimits::default().clock_step_max_ms;
    let mut h = H::new();
    h.send(it::POLICY_SET, serde_json::json!({}));
    let start = 1_790_000_001_000;
    assert_eq!(h.state.clock_ms(), start, "an empty state's clock is set outright");
    h.send_shifted(8 * DAY_MS, it::POLICY_SET, serde_json::json!({}));
    assert_eq!(h.state.clock_ms(), start + step, "one skewed input moves the clock one step");
    h.send_shifted(8 * DAY_MS, it::POLICY_SET, serde_json::json!({}));
    assert_eq!(h.state.clock_ms(), start + 2 * step);
    // Inputs behind the clock never move it back; ordinary inputs a second apart move it by a second.
    h.send(it::POLICY_SET, serde_json::json!({}));
    assert_eq!(h.state.clock_ms(), start + 2 * step);
}

#[test]
fn a_checkpoint_without_final_sequences_still_restores_in_the_old_order() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 7 * DAY_MS, final_retained_max: 2 },
    );
    h.deposit_completed("x1", "acct_1", 10);
    h.deposit_completed("x2", "acct_1", 10);
    // As written before `final_seq` existed: no counter entry, no sequence in the transfers.
    let old: Vec<(String, Encoded)> = json_entries(&h.state)
        .into_iter()
        .filter(|(k, _)| k != "final_seq")
        .map(|(k, mut v)| {
            if let Some(o) = v.as_object_mut() {
                o.remove("final_seq");
            }
            (k, Encoded::Json(v))
        })
        .collect();
    let mut again = H { p: h.p.clone(), state: restore(old).expect("restores"), seq: h.seq };
    assert_eq!(again.state.final_seq_last(), 0);
    again.deposit_completed("x3", "acct_1", 10);
    assert_eq!(again.state.transfers[&transfer_key(TENANT, "x3")].final_seq, Some(1));
    assert!(
        !again.state.transfers.contains_key(&transfer_key(TENANT, "x1")),
        "the oldest is forgotten first"
    );
    assert!(again.state.transfers.contains_key(&transfer_key(TENANT, "x2")));
}

// ---- provider callbacks (webhooks routed from ingest) ----

/// A `webhook.received` as the router copies it (body null) carrying `callback` (or none).
fn webhook_envelope(seq: u64, event_type: &str, callback: Option<serde_json::Value>) -> RawEnvelope {
    let mut p = serde_json::json!({
        "provider": "acmepay", "provider_event_id": format!("evt_{seq}"), "event_type": event_type,
        "body_bytes": 120, "fields": {"reference": "r"}, "body": null,
    });
    if let Some(c) = callback {
        p["transfer_callback"] = c;
    }
    let mut e = envelope(seq, WebhookReceived::EVENT_TYPE, p);
    e.source = "acmepay".to_owned();
    e
}

fn cb(status: &str, kind: &str, reference: &str, minor: i64) -> serde_json::Value {
    serde_json::json!({"status": status, "kind": kind, "reference": reference, "amount": usd(minor)})
}

fn created(reference: &str, minor: i64, account: &str) -> serde_json::Value {
    let mut c = cb("received", "deposit", reference, minor);
    c["creates_deposit"] = true.into();
    c["destination_account"] = account.into();
    c["user_id"] = "usr_9".into();
    c
}

impl H {
    fn webhook(&mut self, event_type: &str, callback: serde_json::Value) -> Outs {
        self.seq += 1;
        let e = webhook_envelope(self.seq, event_type, Some(callback));
        self.apply_envelope(e)
    }
    fn request_ref(
        &mut self,
        id: &str,
        kind: &str,
        amount: i64,
        src: Option<&str>,
        dst: Option<&str>,
        r: &str,
    ) -> Outs {
        let mut p = serde_json::json!({"transfer_id": id, "kind": kind, "amount": usd(amount), "requested_by": "maker",
            "external_ref": {"provider": "acmepay", "reference": r}});
        if let Some(s) = src {
            p["source_account"] = s.into();
        }
        if let Some(d) = dst {
            p["destination_account"] = d.into();
        }
        self.send(it::REQUESTED, p)
    }
    fn parked(&self, id: &str) -> usize {
        self.transfer(id).parked.len()
    }
    fn transfer(&self, id: &str) -> &Transfer {
        &self.state.transfers[&transfer_key(TENANT, id)]
    }
}

#[test]
fn a_webhook_callback_finds_its_transfer_by_provider_reference() {
    let mut h = H::new();
    h.request_ref("d", "deposit", 2_500, None, Some("acct_1"), "dep_1");
    assert_eq!(h.state.refs[&ref_key(TENANT, "acmepay", "dep_1")], "d");
    h.risk("d", "approve");
    assert_eq!(
        h.webhook("deposit.processing", cb("processing", "deposit", "dep_1", 2_500)).statuses(),
        vec![S::Processing]
    );
    // `received` for a known, approved transfer: reference and amount agree; nothing moves.
    assert!(h.webhook("deposit.received", cb("received", "deposit", "dep_1", 2_500)).0.is_empty());
    let o = h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 2_500));
    assert_eq!(o.statuses(), vec![S::Confirming, S::Completed]);
    assert_eq!(o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).len(), 2);
    assert_eq!(h.account("acct_1").posted, 2_500);
    assert_eq!(h.state.posted_sums()["USD"], 0);
    // The provider redelivers (same event id): nothing; a later distinct `completed`: stale.
    h.seq -= 1;
    assert!(h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 2_500)).0.is_empty());
    let r = h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 2_500)).rejections();
    assert!(r[0].contains("stale callback Completed"), "{r:?}");
    assert_eq!(h.account("acct_1").posted, 2_500, "posted once");
}

#[test]
fn callbacks_that_cannot_apply_are_rejections_naming_why() {
    let mut h = H::new();
    h.deposit_completed("funding", "acct_1", 10_000);
    h.request_ref("d", "deposit", 2_500, None, Some("acct_1"), "dep_1");
    h.request_ref("p", "payout", 1_000, Some("acct_1"), None, "po_1");
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "deposit.completed",
            cb("completed", "deposit", "dep_404", 2_500),
            "acmepay callback deposit.completed: unknown reference acmepay/dep_404",
        ),
        // No creation declared: a received deposit for an unknown reference is refused too.
        ("deposit.received", cb("received", "deposit", "dep_405", 10), "unknown reference acmepay/dep_405"),
        (
            "deposit.completed",
            cb("completed", "deposit", "dep_1", 2_499),
            "states 24.99 USD, but transfer d is for 25.00 USD",
        ),
        (
            "deposit.completed",
            serde_json::json!({"status": "completed", "kind": "deposit", "reference": "dep_1", "amount": {"amount_minor": 2_500, "currency": "EUR"}}),
            "states 25.00 EUR, but transfer d is for 25.00 USD",
        ),
        (
            "deposit.completed",
            cb("completed", "deposit", "po_1", 1_000),
            "is about a deposit, but transfer p is a payout",
        ),
        (
            "deposit.completed",
            serde_json::json!({"status": "completed", "problems": ["amount: 'x' is not a decimal amount"]}),
            "acmepay callback deposit.completed cannot be resolved: amount: 'x' is not a decimal amount",
        ),
        ("deposit.completed", serde_json::json!({"status": "completed"}), "names no reference"),
    ];
    for (event_type, c, want) in cases {
        let o = h.webhook(event_type, c);
        assert!(o.statuses().is_empty(), "{want}: nothing moves");
        let r = o.of::<InputRejected>(InputRejected::EVENT_TYPE);
        assert_eq!(r.len(), 1, "{want}: {r:?}");
        assert!(r[0].reason.contains(want), "{} should contain {want}", r[0].reason);
        assert_eq!(r[0].input_event_type, WebhookReceived::EVENT_TYPE);
    }
    assert!(h.transfer("d").parked.is_empty() && h.transfer("p").parked.is_empty());
    // Illegal moves: a callback for a blocked payout, a late one for a cancelled payout.
    h.risk("p", "block");
    let r = h.webhook("payout.completed", cb("completed", "payout", "po_1", 1_000)).rejections();
    assert_eq!(r, vec!["callback Completed refused: transfer is Blocked"]);
    let r = h.webhook("payout.received", cb("received", "payout", "po_1", 1_000)).rejections();
    assert_eq!(r, vec!["acmepay callback payout.received refused: transfer is Blocked"]);
    h.action(it::CANCEL_REQUESTED, "p", "ops");
    let r = h.webhook("payout.failed", cb("failed", "payout", "po_1", 1_000)).rejections();
    assert_eq!(r, vec!["late callback Failed: transfer is CANCELLED"]);
}

#[test]
fn a_fast_providers_callbacks_wait_for_approval_and_apply_once_in_order() {
    let mut h = H::new();
    h.request_ref("d", "deposit", 700, None, Some("acct_1"), "dep_1");
    // Completed (and a processing that arrives after it) before screening ends: parked, nothing moves.
    let first = h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 700));
    assert!(first.0.is_empty(), "{first:?}");
    let completed_id = derived_id(&["test-input", &h.seq.to_string()]);
    assert!(h.webhook("deposit.processing", cb("processing", "deposit", "dep_1", 700)).0.is_empty());
    let processing_id = derived_id(&["test-input", &h.seq.to_string()]);
    // A redelivery of the parked `completed` is recognised and not parked twice.
    h.apply_envelope(webhook_envelope(
        h.seq - 1,
        "deposit.completed",
        Some(cb("completed", "deposit", "dep_1", 700)),
    ));
    assert_eq!(h.parked("d"), 2);
    assert_eq!(h.status_of("d"), S::ComplianceCheck);
    assert_eq!(h.account("acct_1").posted, 0);
    // Approval applies them in arrival order: completed walks to COMPLETED and posts; processing is stale.
    let o = h.risk("d", "approve");
    assert_eq!(o.statuses(), vec![S::Approved, S::Processing, S::Confirming, S::Completed]);
    let r = o.of::<InputRejected>(InputRejected::EVENT_TYPE);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].input_event_id, r[0].reason.as_str()),
        (processing_id, "stale callback Processing: transfer is already Completed")
    );
    assert_ne!(r[0].input_event_id, completed_id);
    assert_eq!(h.account("acct_1").posted, 700);
    assert_eq!(h.parked("d"), 0);
    // Nothing applies twice: a redelivery now, and the approval again.
    h.seq -= 1;
    let again = h.webhook("deposit.processing", cb("processing", "deposit", "dep_1", 700));
    assert!(again.0.is_empty(), "{again:?}");
    assert_eq!(h.account("acct_1").posted, 700);
}

#[test]
fn parked_callbacks_wait_for_a_human_approval_too_and_are_bounded() {
    let mut h = H::new();
    h.send(it::POLICY_SET, serde_json::json!({"approval_thresholds": [usd(100)]}));
    h.request_ref("big", "deposit", 5_000, None, Some("acct_1"), "dep_big");
    for _ in 0..PARKED_CALLBACKS_PER_TRANSFER_MAX {
        assert!(h.webhook("deposit.processing", cb("processing", "deposit", "dep_big", 5_000)).0.is_empty());
    }
    let r = h.webhook("deposit.completed", cb("completed", "deposit", "dep_big", 5_000)).rejections();
    assert_eq!(r, vec!["callback Completed refused: 8 callbacks already wait for the transfer's approval (ComplianceCheck)"]);
    assert!(h.risk("big", "approve").statuses().is_empty(), "waits for a checker; callbacks still parked");
    assert_eq!(h.parked("big"), PARKED_CALLBACKS_PER_TRANSFER_MAX);
    let o = h.action(it::APPROVED, "big", "checker");
    assert_eq!(o.statuses(), vec![S::Approved, S::Processing]);
    assert_eq!(
        o.rejections().len(),
        PARKED_CALLBACKS_PER_TRANSFER_MAX - 1,
        "the other processings are stale"
    );
}

#[test]
fn a_checker_rejection_rejects_the_parked_callbacks() {
    let mut h = H::new();
    h.request_ref("d", "deposit", 300, None, Some("acct_1"), "dep_1");
    h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 300));
    let parked_id = derived_id(&["test-input", &h.seq.to_string()]);
    let o = h.action(it::APPROVAL_REJECTED, "d", "checker");
    assert_eq!(o.statuses(), vec![S::Blocked]);
    let r = o.of::<InputRejected>(InputRejected::EVENT_TYPE);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].input_event_id, parked_id, "the rejection names the parked callback");
    assert_eq!(r[0].input_event_type, WebhookReceived::EVENT_TYPE);
    assert_eq!(r[0].reason, "callback Completed refused: transfer is Blocked");
    assert_eq!(h.state.posted_sums().get("USD").copied().unwrap_or(0), 0);
    assert_eq!(h.account("acct_1"), Account { posted: 0, pending_debit: 0, pending_credit: 0, version: 2 });
}

#[test]
fn a_provider_creates_a_deposit_for_a_reference_nobody_requested() {
    let mut h = H::new();
    let o = h.webhook("deposit.received", created("dep_new", 1_250, "acct_7"));
    assert_eq!(o.statuses(), vec![S::Initiated, S::Validating, S::Pending, S::ComplianceCheck]);
    let screening = o.of::<ScreeningRequested>(ScreeningRequested::EVENT_TYPE);
    assert_eq!(screening.len(), 1, "screened like any deposit");
    assert_eq!(screening[0].requested_by, "provider:acmepay");
    assert_eq!(screening[0].user_id.as_deref(), Some("usr_9"));
    let t = h.transfer("acmepay:dep_new").clone();
    assert_eq!((t.kind, t.amount, t.destination.as_str()), (TransferKind::Deposit, usd(1_250), "acct_7"));
    assert_eq!(t.external_ref, Some(ExternalRef { provider: "acmepay".into(), reference: "dep_new".into() }));
    // The same `received` again (a redelivery) and another one (a provider retry with a new id): the
    // reference is known now, so nothing is created twice.
    h.seq -= 1;
    assert!(h.webhook("deposit.received", created("dep_new", 1_250, "acct_7")).0.is_empty());
    assert!(h.webhook("deposit.received", created("dep_new", 1_250, "acct_7")).0.is_empty());
    assert_eq!(h.state.transfers.len(), 1);
    h.risk("acmepay:dep_new", "approve");
    assert_eq!(
        h.webhook("deposit.completed", cb("completed", "deposit", "dep_new", 1_250)).statuses(),
        vec![S::Processing, S::Confirming, S::Completed]
    );
    assert_eq!(h.account("acct_7").posted, 1_250);
    // A created deposit that cannot be valid is a REJECTED transfer, like a request.
    let o = h.webhook("deposit.received", created("dep_bad", 10, "external"));
    assert_eq!(o.statuses().last(), Some(&S::Rejected));
    // A derived id that an API transfer already has: refused, not merged.
    h.request("acmepay:dep_taken", "deposit", 10, None, Some("acct_1"));
    let r = h.webhook("deposit.received", created("dep_taken", 10, "acct_1")).rejections();
    assert_eq!(r, vec!["transfer id already used by another request"]);
}

#[test]
fn a_provider_reference_belongs_to_one_transfer_until_it_is_forgotten() {
    let mut h = H::new();
    h.p = TransfersProcessor::new(
        Topics::new(""),
        TransfersLimits { final_retention_ms: 10_000, final_retained_max: 100 },
    );
    h.request_ref("a", "deposit", 10, None, Some("acct_1"), "dep_1");
    let r = h.request_ref("b", "deposit", 10, None, Some("acct_1"), "dep_1").rejections();
    assert_eq!(r, vec!["provider reference acmepay/dep_1 already belongs to transfer a"]);
    assert!(!h.state.transfers.contains_key(&transfer_key(TENANT, "b")));
    h.risk("a", "approve");
    h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 10));
    h.seq += 20;
    h.request("other", "deposit", 10, None, Some("acct_1"));
    assert!(!h.state.transfers.contains_key(&transfer_key(TENANT, "a")), "forgotten");
    assert!(h.state.refs.is_empty(), "its reference with it");
    let r = h.webhook("deposit.completed", cb("completed", "deposit", "dep_1", 10)).rejections();
    assert!(r[0].contains("unknown reference acmepay/dep_1"), "{r:?}");
    // The reference is free again.
    assert_eq!(h.request_ref("c", "deposit", 10, None, Some("acct_1"), "dep_1").statuses().len(), 4);
    assert_eq!(h.state.refs[&ref_key(TENANT, "acmepay", "dep_1")], "c");
}

#[test]
fn webhooks_that_are_no_transfer_callback_emit_nothing() {
    let mut h = H::new();
    h.seq += 1;
    let kyc = webhook_envelope(h.seq, "kyc.case_approved", None);
    assert!(h.apply_envelope(kyc).0.is_empty());
    assert_eq!(h.state, TransfersState::default().tap_clock(h.state.clock_ms()));
    // A payload that is no webhook is poison (dead-lettered), like any undecodable input.
    let mut bad = envelope(99, WebhookReceived::EVENT_TYPE, serde_json::json!({"provider": 1}));
    bad.source = "acmepay".into();
    let at = InputRef::log("live.transfers.inputs", 0, 0, Environment::Live);
    assert!(matches!(h.p.apply(&mut h.state, &at, bad), Verdict::Poison(_)));
}

impl TransfersState {
    /// An empty state whose clock reads `ms` (tests compare states that only saw inputs without effect).
    fn tap_clock(mut self, ms: i64) -> Self {
        self.clock.set(ms);
        self
    }
}

#[test]
fn provider_transfer_ids_are_deterministic_and_bounded() {
    assert_eq!(provider_transfer_id("acmepay", "dep_01JD8R7Q1N4C"), "acmepay:dep_01JD8R7Q1N4C");
    let odd = provider_transfer_id("acmepay", "dep 1/2");
    assert!(odd.starts_with("acmepay:") && odd.len() == "acmepay:".len() + 36, "{odd}");
    assert_eq!(odd, provider_transfer_id("acmepay", "dep 1/2"));
    assert_ne!(odd, provider_transfer_id("acmepay", "dep 1/3"));
    let long = "x".repeat(256);
    assert!(provider_transfer_id("chainwatch", &long).len() <= TRANSFER_ID_BYTES_MAX);
    let fits = "y".repeat(TRANSFER_ID_BYTES_MAX - "acmepay:".len());
    assert_eq!(provider_transfer_id("acmepay", &fits).len(), TRANSFER_ID_BYTES_MAX);
    assert_ne!(provider_transfer_id("acmepay", &format!("{fits}y")), format!("acmepay:{fits}y"));
}

// ---- property: callbacks in any order, with duplicates ----

/// One transfer's life: created by the API (with a reference) or by the provider (`received`), a risk
/// decision, provider callbacks (status 0..4: processing, confirming, completed, failed; `bad`: an
/// amount that disagrees), and redeliveries.
#[derive(Debug, Clone)]
struct Life {
    by_provider: bool,
    amount: i64,
    approve: bool,
    callbacks: Vec<(u8, bool)>,
}

fn life() -> impl Strategy<Value = Life> {
    (
        any::<bool>(),
        1i64..10_000,
        any::<bool>(),
        proptest::collection::vec((0u8..4, proptest::bool::weighted(0.2)), 0..6),
    )
        .prop_map(|(by_provider, amount, approve, callbacks)| Life {
            by_provider,
            amount,
            approve,
            callbacks,
        })
}

/// Where a callback takes a transfer on APPROVED → PROCESSING → CONFIRMING → COMPLETED | FAILED.
fn rank(s: S) -> u8 {
    match s {
        S::Processing => 1,
        S::Confirming => 2,
        S::Completed | S::Failed => 3,
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the order of risk decisions and callbacks, and however often they are redelivered: a
    /// transfer posts at most once, money sums to zero, every distinct callback either moves the
    /// transfer or is rejected exactly once, and the end state is what applying the distinct callbacks
    /// in arrival order after the decision gives (parked ones apply exactly once, in order).
    #[test]
    fn callbacks_in_any_order_never_double_post_and_parked_ones_apply_once(
        lives in proptest::collection::vec(life(), 1..4),
        keys in proptest::collection::vec(any::<u16>(), 64),
        dups in proptest::collection::vec(any::<u16>(), 0..8),
    ) {
        let mut h = H::new();
        let statuses = ["processing", "confirming", "completed", "failed"];
        // Creation first (a callback before it is an unknown reference, covered elsewhere); then the
        // decision and the callbacks shuffled.
        let mut rest: Vec<(u16, RawEnvelope)> = Vec::new();
        let mut seq = 0u64;
        let mut callback_ids: Vec<Vec<(Uuid, u8, bool)>> = Vec::new();
        for (n, l) in lives.iter().enumerate() {
            let reference = format!("ref_{n}");
            seq += 1;
            let creation = if l.by_provider {
                webhook_envelope(seq, "deposit.received", Some(created(&reference, l.amount, "acct_1")))
            } else {
                envelope(seq, it::REQUESTED, serde_json::json!({"transfer_id": format!("t{n}"), "kind": "deposit",
                    "amount": usd(l.amount), "destination_account": "acct_1", "requested_by": "maker",
                    "external_ref": {"provider": "acmepay", "reference": reference}}))
            };
            h.apply_envelope(creation);
            let id = if l.by_provider { provider_transfer_id("acmepay", &reference) } else { format!("t{n}") };
            seq += 1;
            let decision = if l.approve { "approve" } else { "block" };
            rest.push((keys[rest.len() % keys.len()], envelope(seq, it::RISK_DECIDED, serde_json::json!({"transfer_id": id,
                "decision": decision, "score": 1, "reasons": [], "rule_set_version": "r1"}))));
            let mut ids = Vec::new();
            for &(status, bad) in &l.callbacks {
                seq += 1;
                let amount = if bad { l.amount + 1 } else { l.amount };
                let e = webhook_envelope(seq, "deposit.x", Some(cb(statuses[status as usize], "deposit", &reference, amount)));
                ids.push((e.event_id, status, bad));
                rest.push((keys[rest.len() % keys.len()], e));
            }
            callback_ids.push(ids);
        }
        rest.sort_by_key(|(k, _)| *k);
        let mut inputs: Vec<RawEnvelope> = rest.into_iter().map(|(_, e)| e).collect();
        for d in dups {
            if !inputs.is_empty() {
                let copy = inputs[usize::from(d) % inputs.len()].clone();
                let at = (usize::from(d) * 7) % (inputs.len() + 1);
                inputs.insert(at, copy);
            }
        }
        let mut posts: HashMap<String, usize> = HashMap::new();
        let mut rejected: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        let mut first_seen: Vec<Uuid> = Vec::new();
        for e in &inputs {
            if !first_seen.contains(&e.event_id) {
                first_seen.push(e.event_id);
            }
            let o = h.apply_envelope(e.clone());
            for l in o.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE) {
                if l.phase == PostingPhase::Post && l.amount_minor > 0 {
                    *posts.entry(l.transfer_id).or_default() += 1;
                }
            }
            for (raw, r) in o.0.iter().zip(0..) {
                let _ = r;
                let Ok(env) = serde_json::from_slice::<RawEnvelope>(&raw.payload) else { continue };
                if env.event_type == InputRejected::EVENT_TYPE {
                    let rej: InputRejected = serde_json::from_value(env.payload).expect("rejection");
                    rejected.entry(rej.input_event_id).or_default().insert(env.event_id);
                }
            }
            prop_assert_eq!(wide_posted_sums(&h.state).values().copied().find(|s| *s != 0), None, "money sums to zero");
        }
        prop_assert!(posts.values().all(|&n| n == 1), "posted at most once: {:?}", posts);
        for (n, l) in lives.iter().enumerate() {
            let id = if l.by_provider { provider_transfer_id("acmepay", &format!("ref_{n}")) } else { format!("t{n}") };
            let t = h.transfer(&id);
            prop_assert!(t.parked.is_empty(), "every transfer was decided: nothing left parked");
            // The model: distinct callbacks in arrival order; a disagreeing one is rejected on arrival;
            // with a block, every other one is rejected; with an approval, they walk forward.
            let mut order: Vec<&(Uuid, u8, bool)> = callback_ids[n].iter().collect();
            order.sort_by_key(|(cid, _, _)| first_seen.iter().position(|x| x == cid));
            let mut status = if l.approve { S::Approved } else { S::Blocked };
            let mut expect_rejected = BTreeSet::new();
            for &&(cid, s, bad) in &order {
                let target = [S::Processing, S::Confirming, S::Completed, S::Failed][s as usize];
                if bad || !l.approve || rank(target) <= rank(status) {
                    expect_rejected.insert(cid);
                } else {
                    status = target;
                }
            }
            prop_assert_eq!(t.status, status, "transfer {}: {:?}", id, order);
            prop_assert_eq!(posts.get(&id).copied().unwrap_or(0), usize::from(status == S::Completed));
            for &&(cid, _, _) in &order {
                let n_rejections = rejected.get(&cid).map_or(0, BTreeSet::len);
                prop_assert_eq!(n_rejections, usize::from(expect_rejected.contains(&cid)), "callback {} of {}", cid, id);
            }
        }
    }
}

fn leg(account: &str, minor: i64, ccy: &str) -> serde_json::Value {
    serde_json::json!({"account": account, "amount": {"amount_minor": minor, "currency": ccy}})
}

fn booking(id: &str, legs: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"booking_id": id, "purpose": "fx_conversion", "reference": id, "legs": legs, "requested_by": "fx"})
}

fn fund(h: &mut H, account: &str, minor: i64) {
    h.send(it::REQUESTED, serde_json::json!({"transfer_id": format!("fund-{account}"), "kind": "deposit", "amount": usd(minor), "destination_account": account, "requested_by": "m"}));
    h.send(it::RISK_DECIDED, serde_json::json!({"transfer_id": format!("fund-{account}"), "decision": "approve", "score": 0, "reasons": [], "rule_set_version": "r"}));
    h.send(
        it::PROVIDER_STATUS,
        serde_json::json!({"transfer_id": format!("fund-{account}"), "status": "completed"}),
    );
}

#[test]
fn a_booking_posts_every_leg_at_once_or_none() {
    let mut h = H::new();
    fund(&mut h, "acct_1", 1_000);
    let conversion = booking(
        "b1",
        vec![
            leg("acct_1", -1_000, "USD"),
            leg("fx:desk", 1_000, "USD"),
            leg("fx:desk", -921, "EUR"),
            leg("acct_1", 915, "EUR"),
            leg("fx:fees", 5, "EUR"),
            leg("fx:residue", 1, "EUR"),
        ],
    );
    let out = h.send(BookingRequested::EVENT_TYPE, conversion.clone());
    let recorded = out.of::<BookingRecorded>(BookingRecorded::EVENT_TYPE);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, BookingOutcome::Booked, "{:?}", recorded[0].reason);
    let postings = out.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE);
    assert_eq!(postings.len(), 6);
    assert!(postings.iter().all(|p| p.transfer_id == "b1" && p.phase == PostingPhase::Post));
    assert_eq!(postings.iter().map(|p| p.posting_id).collect::<BTreeSet<_>>().len(), 1, "one posting");
    assert!(h.state.posted_sums().values().all(|s| *s == 0), "{:?}", h.state.posted_sums());
    let usd_after =
        h.state.accounts.get(&account_key(TENANT, "acct_1", Currency::from_code("USD").expect("usd")));
    assert_eq!(usd_after.map(|a| a.posted), Some(0));

    // Redelivered: silence; the same id under another input: refused, nothing moves.
    let again = h.apply_envelope(envelope(h.seq, BookingRequested::EVENT_TYPE, conversion.clone()));
    assert!(again.0.is_empty(), "a redelivered booking is silent");
    let reuse = h.send(BookingRequested::EVENT_TYPE, conversion);
    assert_eq!(reuse.rejections().len(), 1);
    assert!(reuse.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty());

    // Insufficient funds in the second leg's account: refused, and the first leg did not move either.
    let before = h.state.clone();
    let short = h.send(
        BookingRequested::EVENT_TYPE,
        booking(
            "b2",
            vec![
                leg("fx:desk", -5, "EUR"),
                leg("acct_1", 5, "EUR"),
                leg("acct_1", -1, "USD"),
                leg("fx:desk", 1, "USD"),
            ],
        ),
    );
    let r = short.of::<BookingRecorded>(BookingRecorded::EVENT_TYPE);
    assert_eq!(r[0].outcome, BookingOutcome::Refused);
    assert!(
        r[0].reason.as_deref().unwrap_or_default().starts_with("insufficient funds"),
        "{:?}",
        r[0].reason
    );
    assert!(short.of::<LedgerPosting>(LedgerPosting::EVENT_TYPE).is_empty());
    assert_eq!(h.state.accounts.iter().collect::<Vec<_>>(), before.accounts.iter().collect::<Vec<_>>());
}

#[test]
fn bookings_refuse_broken_legs_and_tenants_cannot_name_platform_accounts() {
    let mut h = H::new();
    for (id, legs, why) in [
        ("u", vec![leg("fx:desk", -5, "USD"), leg("fx:fees", 4, "USD")], "do not sum to zero"),
        ("z", vec![leg("fx:desk", 0, "USD"), leg("fx:fees", 0, "USD")], "non-zero"),
        ("e", vec![leg("external", -5, "USD"), leg("fx:fees", 5, "USD")], "not a tenant account"),
        ("n", vec![], "1-8 legs"),
    ] {
        let out = h.send(BookingRequested::EVENT_TYPE, booking(id, legs));
        let r = out.of::<BookingRecorded>(BookingRecorded::EVENT_TYPE);
        assert_eq!(r[0].outcome, BookingOutcome::Refused, "{id}");
        assert!(r[0].reason.as_deref().unwrap_or_default().contains(why), "{id}: {:?}", r[0].reason);
    }
    // Platform accounts that may go negative do; a tenant account may not.
    let fee = h.send(
        BookingRequested::EVENT_TYPE,
        booking("f", vec![leg("billing:receivable", -7, "USD"), leg("billing:fees", 7, "USD")]),
    );
    assert_eq!(fee.of::<BookingRecorded>(BookingRecorded::EVENT_TYPE)[0].outcome, BookingOutcome::Booked);
    let out = h.send(it::REQUESTED, serde_json::json!({"transfer_id": "t", "kind": "internal", "amount": usd(1), "source_account": "billing:fees", "destination_account": "acct_1", "requested_by": "m"}));
    assert_eq!(out.statuses().last(), Some(&S::Rejected));
    // Restore keeps the booking ids (and their order).
    let restored = restore(entries(&h.state)).expect("restores");
    assert_eq!(restored, h.state);
}

#[test]
fn a_transfer_with_a_sparse_counterparty_restores_from_its_checkpoint_encoding() {
    use riverbank_schemas::state::encode;
    use riverbank_schemas::transfers::Counterparty;
    let t = |counterparty: Option<Counterparty>| Transfer {
        tenant_id: "tenant-a".into(),
        transfer_id: "po-1".into(),
        kind: TransferKind::Payout,
        amount: usd(500),
        source: "acct_1".into(),
        destination: "ext".into(),
        requested_by: "user:u1".into(),
        status: TransferStatus::Blocked,
        version: 3,
        risk: None,
        approved_by: None,
        needs_approval: false,
        applied_inputs: Default::default(),
        final_at_ms: Some(1),
        final_seq: Some(1),
        user_id: Some("u1".into()),
        counterparty,
        external_ref: None,
        parked: vec![],
    };
    let sparse = Counterparty { id: None, country: None, name_keys: vec![] };
    let full =
        Counterparty { id: Some("payee-9".into()), country: Some("DE".into()), name_keys: vec!["k".into()] };
    for c in [None, Some(sparse), Some(full.clone())] {
        let stored = t(c);
        let back: Transfer = Encoded::Bin(encode(&stored)).decode().expect("restores");
        assert_eq!(back, stored);
    }
    // Checkpoints written before (the derived encoding) read the same when every field is present.
    #[derive(serde::Serialize)]
    struct Now {
        #[serde(with = "super::stored_counterparty")]
        c: Option<Counterparty>,
    }
    assert_eq!(encode(&Some(full.clone())), encode(&Now { c: Some(full) }));
}
