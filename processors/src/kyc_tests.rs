// Table tests spell their rows out as tuples.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use riverbank_schemas::state::{Encoded, State as _};
use KycStatus as K;
use UserStatus as U;

use super::*;
use crate::test_harness::Harness;

const T: &str = "tenant-a";

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_790_000_000, 0).expect("a time")
}

fn ms(days: i64) -> i64 {
    t0().timestamp_millis() + days * DAY_MS
}

/// One decoded output.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    User(String, UserKycChanged),
    Rejected(KycInputRejected),
}

impl Out {
    fn user(&self) -> &UserKycChanged {
        match self {
            Out::User(_, u) => u,
            Out::Rejected(r) => panic!("expected a user event, got a rejection: {r:?}"),
        }
    }
    fn kind(&self) -> &str {
        match self {
            Out::User(t, _) => t,
            Out::Rejected(_) => et::KYC_INPUT_REJECTED,
        }
    }
    fn reason(&self) -> &str {
        match self {
            Out::Rejected(r) => &r.reason,
            Out::User(t, u) => panic!("expected a rejection, got {t} {u:?}"),
        }
    }
}

fn decode_out(e: &Emit) -> Out {
    let env: RawEnvelope = serde_json::from_slice(&e.payload).expect("an envelope");
    assert_eq!(env.event_id, e.event_id);
    assert_eq!(env.tenant_id, e.key, "keyed by tenant");
    if env.event_type == et::KYC_INPUT_REJECTED {
        Out::Rejected(serde_json::from_value(env.payload).expect("a rejection"))
    } else {
        assert!(et::USER.contains(&env.event_type.as_str()), "{}", env.event_type);
        let u: UserKycChanged = serde_json::from_value(env.payload).expect("a user event");
        assert_eq!(env.user_id.as_deref(), Some(u.user_id.as_str()));
        Out::User(env.event_type, u)
    }
}

/// A processor, its state and the partition clock (ticks).
type H = Harness<KycProcessor>;

impl H {
    fn new() -> Self {
        Self::with(KycLimits::default())
    }
    fn with(limits: KycLimits) -> Self {
        Harness::of(KycProcessor::new(Topics::new(""), limits), "live.kyc.inputs", "kyc-test")
    }
    fn send(&mut self, e: RawEnvelope) -> Vec<Out> {
        self.send_raw(e).iter().map(decode_out).collect()
    }
    fn one(&mut self, e: RawEnvelope) -> Out {
        let out = self.send(e);
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].clone()
    }
    /// A vendor result (`provider_event_id` from the sequence).
    fn vendor_in(&mut self, tenant: &str, kind: &str, at_ms: i64, f: &[(&str, &str)]) -> RawEnvelope {
        let id = format!("pe-{}", self.seq + 1);
        webhook_env(self, tenant, "idcheck", &id, kind, at_ms, f)
    }
    fn vendor(&mut self, kind: &str, at_ms: i64, f: &[(&str, &str)]) -> Out {
        let e = self.vendor_in(T, kind, at_ms, f);
        self.one(e)
    }
    fn action(&mut self, user: &str, action: &str, at_ms: i64) -> Out {
        let p = serde_json::json!({"user_id": user, "action": action, "reason": "ops_request", "actor": "admin-1"});
        let e = self.envelope(T, command_types::KYC_USER_ACTION_REQUESTED, at_ms, p);
        self.one(e)
    }
    fn review(&mut self, case: &str, decision: &str, tier: Option<u8>, at_ms: i64) -> Out {
        let mut p = serde_json::json!({"case_id": case, "decision": decision, "actor": "officer-1"});
        if let Some(t) = tier {
            p["tier"] = t.into();
        }
        let e = self.envelope(T, command_types::KYC_REVIEW_DECIDED, at_ms, p);
        self.one(e)
    }
    /// Move the partition clock to `now_ms` and fire the timers due, as the runtime does on a tick.
    fn tick(&mut self, now_ms: i64) -> Vec<Out> {
        self.tick_raw(now_ms).iter().map(decode_out).collect()
    }
    fn user(&self, user: &str) -> &User {
        &self.s.users[user_key(T, user).as_str()]
    }
}

fn webhook_env(
    h: &mut H,
    tenant: &str,
    provider: &str,
    provider_event_id: &str,
    kind: &str,
    at_ms: i64,
    f: &[(&str, &str)],
) -> RawEnvelope {
    let fields: BTreeMap<String, String> =
        f.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    // As JSON, as the router delivers it (fields other components add stay absent).
    let w = serde_json::json!({
        "provider": provider, "provider_event_id": provider_event_id, "event_type": kind,
        "body_bytes": 100, "fields": fields, "body": null,
    });
    h.envelope(tenant, WebhookReceived::EVENT_TYPE, at_ms, w)
}

fn f<'a>(user: &'a str, case: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("user_id", user), ("case_id", case)]
}

fn ft<'a>(user: &'a str, case: &'a str, tier: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("user_id", user), ("case_id", case), ("tier", tier)]
}

/// (event type, user status, KYC status, tier) of a user event.
fn state_of(o: &Out) -> (&str, U, K, u8) {
    let u = o.user();
    (o.kind(), u.user_status, u.kyc_status, u.tier)
}

#[test]
fn case_moves_follow_the_table() {
    use KycStatus::*;
    // (previous case status, next, raise, expected)
    let table: &[(Option<KycStatus>, KycStatus, bool, bool)] = &[
        (None, Pending, false, true),
        (None, InReview, false, true),
        (None, Approved, false, true),
        (None, Rejected, false, true),
        (Some(Pending), Pending, false, false),
        (Some(Pending), InReview, false, true),
        (Some(Pending), Approved, false, true),
        (Some(Pending), Rejected, false, true),
        (Some(InReview), Pending, false, false),
        (Some(InReview), InReview, false, false),
        (Some(InReview), Approved, false, true),
        (Some(InReview), Rejected, false, true),
        (Some(Approved), Pending, false, false),
        (Some(Approved), InReview, false, false),
        (Some(Approved), Approved, false, false),
        (Some(Approved), Rejected, false, true),
        (Some(Rejected), Pending, false, false),
        (Some(Rejected), InReview, false, false),
        (Some(Rejected), Rejected, false, false),
        (Some(Rejected), Approved, false, true),
        (Some(Rejected), Approved, true, true),
        (Some(InReview), Approved, true, true),
    ];
    for &(prev, next, raise, ok) in table {
        let got = case_move(prev.map(|p| (p, 1)), next, 1, raise);
        assert_eq!(got.is_ok(), ok, "{prev:?} → {next:?} (raise {raise}): {got:?}");
    }
    // A tier reached on an approved case must raise its tier.
    assert!(case_move(Some((Approved, 1)), Approved, 2, true).is_ok());
    assert!(case_move(Some((Approved, 2)), Approved, 2, true).unwrap_err().contains("not above"));
    assert!(case_move(Some((Approved, 3)), Approved, 1, true).is_err());
}

#[test]
fn a_vendor_lifecycle_moves_user_and_kyc_status_and_tier() {
    let mut h = H::new();
    let u = "usr_1";
    let steps: Vec<(&str, i64, Vec<(&str, &str)>, (&str, U, K, u8))> = vec![
        (it::CASE_SUBMITTED, 0, f(u, "c1"), (et::USER_KYC_UPDATED, U::Pending, K::Pending, 0)),
        (it::CASE_NEEDS_REVIEW, 1, f(u, "c1"), (et::USER_KYC_UPDATED, U::Pending, K::InReview, 0)),
        (it::CASE_APPROVED, 2, ft(u, "c1", "1"), (et::USER_VERIFIED, U::Active, K::Approved, 1)),
        (it::TIER_REACHED, 3, ft(u, "c1", "2"), (et::USER_VERIFIED, U::Active, K::Approved, 2)),
        // A second case (an upgrade) in review and rejected: the first approval still holds.
        (it::CASE_NEEDS_REVIEW, 4, f(u, "c2"), (et::USER_KYC_UPDATED, U::Active, K::Approved, 2)),
        (it::CASE_REJECTED, 5, f(u, "c2"), (et::USER_KYC_UPDATED, U::Active, K::Approved, 2)),
        // The vendor revokes the granting case: suspended, tier 0.
        (it::CASE_REJECTED, 6, f(u, "c1"), (et::USER_KYC_UPDATED, U::Suspended, K::Rejected, 0)),
        // A vendor's manual approval after the decline: active again.
        (it::CASE_APPROVED, 7, ft(u, "c2", "3"), (et::USER_VERIFIED, U::Active, K::Approved, 3)),
    ];
    for (i, (kind, secs, fields, want)) in steps.into_iter().enumerate() {
        let o = h.vendor(kind, ms(0) + secs * 1000, &fields);
        assert_eq!(state_of(&o), want, "step {i}: {kind} {o:?}");
        assert_eq!(o.user().version, i as u64 + 1, "step {i}");
        assert_eq!(
            o.user().case_id.as_deref(),
            fields.iter().find(|(k, _)| *k == "case_id").map(|(_, v)| *v)
        );
        assert_eq!(o.user().provider.as_deref(), Some("idcheck"));
    }
    let user = h.user(u);
    assert_eq!(user.cases, ["c1", "c2"]);
    assert_eq!(user.history.len(), 8);
    assert_eq!(h.s.cases[case_key(T, "c1").as_str()].status, K::Rejected);
    assert_eq!(h.s.cases[case_key(T, "c2").as_str()].tier, 3);
}

#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let mut h = H::new();
    let u = "usr_1";
    h.vendor(it::CASE_APPROVED, ms(0), &ft(u, "c1", "1"));
    let before = h.s.users.clone();
    let cases: Vec<(&str, i64, Vec<(&str, &str)>, &str)> = vec![
        // A late "on hold" (vendor time before the approval) never overtakes it.
        (it::CASE_NEEDS_REVIEW, ms(0) - 1000, f(u, "c1"), "late"),
        (it::CASE_SUBMITTED, ms(0) - 1, f(u, "c1"), "late"),
        // Not late, but an approved case does not go back to review.
        (it::CASE_NEEDS_REVIEW, ms(0) + 1000, f(u, "c1"), "does not become in_review"),
        (it::CASE_APPROVED, ms(0) + 1000, ft(u, "c1", "1"), "already approved"),
        (it::TIER_REACHED, ms(0) + 1000, ft(u, "c1", "1"), "not above"),
        (it::CASE_APPROVED, ms(0), vec![("case_id", "c9"), ("tier", "1")], "names no user"),
        (it::CASE_APPROVED, ms(0), vec![("user_id", u), ("tier", "1")], "names no case"),
        (it::CASE_APPROVED, ms(0), f(u, "c9"), "states no tier"),
        (it::CASE_APPROVED, ms(0), ft(u, "c9", "0"), "tier 1-3"),
        (it::CASE_APPROVED, ms(0), ft(u, "c9", "4"), "tier must be 0-3"),
        (it::CASE_APPROVED, ms(0), ft(u, "c9", "x"), "tier must be 0-3"),
        (it::CASE_APPROVED, ms(0), ft("usr/1", "c9", "1"), "user_id must be"),
        (it::CASE_APPROVED, ms(0), ft(u, "", "1"), "case_id must be"),
        (it::CASE_APPROVED, ms(0) + 1000, ft("usr_2", "c1", "1"), "belongs to another user"),
        ("kyc.applicant_reset", ms(0), f(u, "c1"), "no rule"),
    ];
    for (kind, at, fields, want) in cases {
        let o = h.vendor(kind, at, &fields);
        assert!(o.reason().contains(want), "{kind} {fields:?}: {o:?} (want {want:?})");
        let Out::Rejected(r) = &o else { unreachable!() };
        assert_eq!(r.input_event_type, WebhookReceived::EVENT_TYPE);
    }
    assert_eq!(h.s.users, before, "refusals leave the users as they were");
    // Another vendor cannot change idcheck's case.
    let e = webhook_env(&mut h, T, "kycflow", "sha256:1", it::CASE_REJECTED, ms(1), &f(u, "c1"));
    assert!(h.one(e).reason().contains("idcheck's"));
}

#[test]
fn webhooks_that_are_no_kyc_results_emit_nothing_and_keep_nothing() {
    let mut h = H::new();
    let e = webhook_env(
        &mut h,
        T,
        "acmepay",
        "evt_1",
        "deposit.completed",
        ms(0),
        &[("transfer_reference", "t1")],
    );
    assert!(h.send(e).is_empty());
    let mut none = webhook_env(&mut h, T, "chainwatch", "evt_2", "x", ms(0), &[]);
    none.payload["event_type"] = serde_json::Value::Null;
    assert!(h.send(none).is_empty());
    assert_eq!(h.s, KycState::new(), "not even remembered");
}

#[test]
fn inputs_that_do_not_decode_or_have_no_rule_are_dead_lettered() {
    let mut h = H::new();
    let at = h.at();
    for (t, p) in [
        (command_types::KYC_USER_ACTION_REQUESTED, serde_json::json!({"user_id": "u", "action": "delete"})),
        (command_types::KYC_REVIEW_DECIDED, serde_json::json!({"case_id": 1})),
        (WebhookReceived::EVENT_TYPE, serde_json::json!({"provider": 5})),
        ("kyc.unheard_of", serde_json::json!({})),
    ] {
        let e = h.envelope(T, t, ms(0), p);
        assert!(matches!(h.p.apply(&mut h.s, &at, e), Verdict::Poison(_)), "{t}");
    }
    let mut v2 = h.envelope(T, command_types::KYC_REVIEW_DECIDED, ms(0), serde_json::json!({}));
    v2.schema_version = 2;
    let Verdict::Poison(r) = h.p.apply(&mut h.s, &at, v2) else { panic!("v2 is poison") };
    assert!(r.contains("v2"), "{r}");
}

#[test]
fn admin_actions_follow_the_table_and_a_closed_user_stays_closed() {
    let mut h = H::new();
    let u = "usr_1";
    // Unknown user: unfreeze refused; freeze creates it.
    assert!(h.action(u, "unfreeze", ms(0)).reason().contains("unknown user"));
    let steps: Vec<(&str, Result<(&str, U), &str>)> = vec![
        ("freeze", Ok((et::USER_FROZEN, U::Pending))),
        ("freeze", Err("already frozen")),
        ("unfreeze", Ok((et::USER_UNFROZEN, U::Pending))),
        ("unfreeze", Err("only a frozen user")),
    ];
    let mut expected_status = U::Frozen;
    for (action, want) in steps {
        let o = h.action(u, action, ms(0));
        match want {
            Ok((kind, after_unfreeze)) => {
                assert_eq!(o.kind(), kind, "{action}: {o:?}");
                if action == "unfreeze" {
                    expected_status = after_unfreeze;
                }
                assert_eq!(o.user().user_status, expected_status, "{action}");
                assert_eq!(o.user().actor.as_deref(), Some("admin-1"));
                assert_eq!(o.user().reason.as_deref(), Some("ops_request"));
            }
            Err(reason) => assert!(o.reason().contains(reason), "{action}: {o:?}"),
        }
    }
    // An approved user, frozen, stays frozen through KYC changes and unfreezes to active.
    h.vendor(it::CASE_APPROVED, ms(0), &ft(u, "c1", "2"));
    assert_eq!(h.action(u, "freeze", ms(0)).user().user_status, U::Frozen);
    let o = h.vendor(it::TIER_REACHED, ms(1), &ft(u, "c1", "3"));
    assert_eq!(state_of(&o), (et::USER_VERIFIED, U::Frozen, K::Approved, 3));
    assert_eq!(h.action(u, "unfreeze", ms(1)).user().user_status, U::Active);
    // Close: final.
    let o = h.action(u, "close", ms(2));
    assert_eq!(
        (o.kind(), o.user().user_status, o.user().kyc_status),
        (et::USER_CLOSED, U::Closed, K::Approved)
    );
    let version = o.user().version;
    assert!(h.action(u, "close", ms(2)).reason().contains("closed"));
    assert!(h.action(u, "freeze", ms(2)).reason().contains("closed"));
    assert!(h.action(u, "unfreeze", ms(2)).reason().contains("closed"));
    assert!(h.vendor(it::CASE_APPROVED, ms(3), &ft(u, "c7", "1")).reason().contains("closed"));
    assert!(h.vendor(it::CASE_REJECTED, ms(3), &f(u, "c1")).reason().contains("closed"));
    assert_eq!(h.user(u).user_status, U::Closed);
    assert_eq!(h.user(u).version, version);
    // Closing a user no KYC result named yet is an admin decision too.
    assert_eq!(h.action("usr_new", "close", ms(3)).user().user_status, U::Closed);
}

#[test]
fn unfreeze_gives_back_what_the_kyc_state_says() {
    let mut h = H::new();
    // Was active, approval revoked while frozen: suspended.
    h.vendor(it::CASE_APPROVED, ms(0), &ft("a", "ca", "1"));
    h.action("a", "freeze", ms(0));
    let o = h.vendor(it::CASE_REJECTED, ms(1), &f("a", "ca"));
    assert_eq!(state_of(&o), (et::USER_KYC_UPDATED, U::Frozen, K::Rejected, 0));
    assert_eq!(h.action("a", "unfreeze", ms(1)).user().user_status, U::Suspended);
    // Never verified: pending.
    h.vendor(it::CASE_NEEDS_REVIEW, ms(0), &f("b", "cb"));
    h.action("b", "freeze", ms(0));
    assert_eq!(h.action("b", "unfreeze", ms(0)).user().user_status, U::Pending);
}

#[test]
fn a_manual_decision_applies_only_to_a_case_in_review() {
    let mut h = H::new();
    let u = "usr_3";
    assert!(h.review("nope", "approved", Some(1), ms(0)).reason().contains("unknown case"));
    h.vendor(it::CASE_SUBMITTED, ms(0), &f(u, "c1"));
    assert!(h.review("c1", "approved", Some(1), ms(0)).reason().contains("is pending"));
    h.vendor(it::CASE_NEEDS_REVIEW, ms(1), &f(u, "c1"));
    assert!(h.review("c1", "approved", None, ms(1)).reason().contains("tier 1-3"));
    assert!(h.review("c1", "approved", Some(0), ms(1)).reason().contains("tier 1-3"));
    assert!(h.review("c1", "approved", Some(4), ms(1)).reason().contains("tier 1-3"));
    let o = h.review("c1", "approved", Some(2), ms(2));
    assert_eq!(state_of(&o), (et::USER_VERIFIED, U::Active, K::Approved, 2));
    assert_eq!(o.user().actor.as_deref(), Some("officer-1"));
    assert_eq!(o.user().case_status, Some(K::Approved));
    // Decided: no second decision, and the vendor's older "on hold" is late.
    assert!(h.review("c1", "rejected", None, ms(3)).reason().contains("is approved"));
    assert!(h.vendor(it::CASE_NEEDS_REVIEW, ms(1) + 1, &f(u, "c1")).reason().contains("late"));
    // A rejection in review.
    h.vendor(it::CASE_NEEDS_REVIEW, ms(4), &f("usr_4", "c4"));
    let o = h.review("c4", "rejected", None, ms(5));
    assert_eq!(state_of(&o), (et::USER_KYC_UPDATED, U::Pending, K::Rejected, 0));
    assert_eq!(o.user().case_status, Some(K::Rejected));
    // A decision timed before the vendor's last change still counts from that change.
    h.vendor(it::CASE_NEEDS_REVIEW, ms(10), &f("usr_5", "c5"));
    h.review("c5", "approved", Some(1), ms(9));
    assert_eq!(h.s.cases[case_key(T, "c5").as_str()].last_at_ms, ms(10));
}

#[test]
fn an_approval_expires_with_a_reminder_before() {
    let mut h = H::new();
    let (valid, remind) = (KycLimits::default().approval_valid_ms, KycLimits::default().expiry_reminder_ms);
    let u = "usr_1";
    let approved_at = ms(0);
    let o = h.vendor(it::CASE_APPROVED, approved_at, &ft(u, "c1", "1"));
    assert_eq!(o.user().kyc_expires_at, DateTime::from_timestamp_millis(approved_at + valid));
    let cause = o.user().cause_event_id;
    assert!(h.tick(approved_at + valid - remind - 1).is_empty(), "not before the reminder is due");
    let out = h.tick(approved_at + valid - remind);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(state_of(&out[0]), (et::USER_KYC_EXPIRING, U::Active, K::Approved, 1));
    assert_eq!(out[0].user().version, 2);
    assert_eq!(out[0].user().cause_event_id, cause);
    assert!(h.tick(approved_at + valid - 1).is_empty());
    let out = h.tick(approved_at + valid);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(state_of(&out[0]), (et::USER_KYC_UPDATED, U::Suspended, K::Expired, 1));
    assert_eq!(out[0].user().usable_tier(), 0, "an expired tier is not usable");
    assert_eq!(out[0].user().kyc_expires_at, None);
    assert_eq!(out[0].user().reason.as_deref(), Some("approval expired"));
    assert!(h.tick(approved_at + 2 * valid).is_empty(), "once");
    assert!(h.s.timers.is_empty());
    // A new approval: active again, with new timers.
    let o = h.vendor(it::CASE_APPROVED, ms(400), &ft(u, "c2", "2"));
    assert_eq!(state_of(&o), (et::USER_VERIFIED, U::Active, K::Approved, 2));
    assert_eq!(h.s.timers.len(), 2);
}

#[test]
fn a_renewed_approval_moves_the_expiry_and_a_revoked_one_cancels_it() {
    let mut h = H::new();
    let valid = KycLimits::default().approval_valid_ms;
    h.vendor(it::CASE_APPROVED, ms(0), &ft("a", "c1", "1"));
    // Renewed 100 days later (a tier reached): the first expiry never fires.
    h.vendor(it::TIER_REACHED, ms(100), &ft("a", "c1", "2"));
    let reminder_and_nothing = h.tick(ms(0) + valid);
    assert!(
        reminder_and_nothing.iter().all(|o| o.kind() == et::USER_KYC_EXPIRING),
        "{reminder_and_nothing:?}"
    );
    assert_eq!(h.user("a").kyc_status, K::Approved);
    let out = h.tick(ms(100) + valid);
    assert_eq!(out.iter().filter(|o| o.kind() == et::USER_KYC_UPDATED).count(), 1, "{out:?}");
    // Revoked: no timers left.
    h.vendor(it::CASE_APPROVED, ms(500), &ft("b", "c2", "1"));
    h.vendor(it::CASE_REJECTED, ms(501), &f("b", "c2"));
    assert!(h.tick(ms(500) + 2 * valid).is_empty());
}

#[test]
fn frozen_and_closed_users_expire_in_place_and_closed_ones_get_no_reminder() {
    let mut h = H::new();
    let valid = KycLimits::default().approval_valid_ms;
    h.vendor(it::CASE_APPROVED, ms(0), &ft("f", "c1", "1"));
    h.vendor(it::CASE_APPROVED, ms(0), &ft("c", "c2", "1"));
    h.action("f", "freeze", ms(0));
    h.action("c", "close", ms(0));
    let out = h.tick(ms(0) + valid);
    let kinds: Vec<(&str, &str, U, K)> = out
        .iter()
        .map(|o| (o.kind(), o.user().user_id.as_str(), o.user().user_status, o.user().kyc_status))
        .collect();
    assert_eq!(
        kinds,
        [
            (et::USER_KYC_UPDATED, "c", U::Closed, K::Expired),
            (et::USER_KYC_UPDATED, "f", U::Frozen, K::Expired),
        ],
        "the frozen user's reminder was due at the same tick as its expiry, so it is skipped"
    );
    let mut h = H::new();
    h.vendor(it::CASE_APPROVED, ms(0), &ft("f", "c1", "1"));
    h.action("f", "freeze", ms(0));
    let out = h.tick(ms(340));
    assert_eq!(state_of(&out[0]), (et::USER_KYC_EXPIRING, U::Frozen, K::Approved, 1));
}

#[test]
fn duplicates_are_applied_once() {
    let mut h = H::new();
    let first = webhook_env(&mut h, T, "kycflow", "sha256:ab", it::CASE_APPROVED, ms(0), &ft("u", "c", "1"));
    assert_eq!(h.send(first.clone()).len(), 1);
    assert!(h.send(first.clone()).is_empty(), "the same event again");
    // The vendor's redelivery under another envelope id (the same provider event id).
    let mut again = first.clone();
    again.event_id = derived_id(&["another"]);
    assert!(h.send(again).is_empty());
    // The same provider event id from another tenant is that tenant's own.
    let other =
        webhook_env(&mut h, "tenant-b", "kycflow", "sha256:ab", it::CASE_APPROVED, ms(0), &ft("u", "c", "1"));
    assert_eq!(h.send(other).len(), 1);
    // Commands by envelope id; a refused one is not refused twice.
    let p = serde_json::json!({"user_id": "u", "action": "unfreeze", "reason": "r", "actor": "a"});
    let cmd = h.envelope(T, command_types::KYC_USER_ACTION_REQUESTED, ms(0), p);
    assert_eq!(h.send(cmd.clone())[0].kind(), et::KYC_INPUT_REJECTED);
    assert!(h.send(cmd).is_empty());
    assert_eq!(h.user("u").version, 1);
}

#[test]
fn remembered_inputs_users_cases_and_history_are_bounded() {
    let limits = KycLimits { inputs_remembered_max: 3, users_max: 2, ..KycLimits::default() };
    let mut h = H::with(limits);
    let first = webhook_env(&mut h, T, "idcheck", "e0", it::CASE_SUBMITTED, ms(0), &f("u1", "c0"));
    h.send(first.clone());
    for i in 1..4 {
        let e = webhook_env(
            &mut h,
            T,
            "idcheck",
            &format!("e{i}"),
            it::CASE_NEEDS_REVIEW,
            ms(i),
            &f("u1", &format!("c{i}")),
        );
        h.send(e);
    }
    assert_eq!((h.s.seen.len(), h.s.seen_order.len()), (3, 3));
    // The oldest was forgotten: it applies again (and is refused: its case is pending already).
    assert!(h.one(first).reason().contains("already pending"));
    // A third user does not fit.
    h.vendor(it::CASE_SUBMITTED, ms(0), &f("u2", "d0"));
    assert!(h.vendor(it::CASE_SUBMITTED, ms(0), &f("u3", "e0")).reason().contains("users_per_partition_max"));
    assert!(h.action("u3", "freeze", ms(0)).reason().contains("users_per_partition_max"));

    let mut h = H::new();
    h.vendor(it::CASE_APPROVED, ms(0), &ft("u", "grant", "1"));
    for i in 0..(CASES_PER_USER_MAX + 5) {
        h.vendor(it::CASE_SUBMITTED, ms(0) + i as i64, &f("u", &format!("k{i}")));
    }
    let u = h.user("u");
    assert_eq!(u.cases.len(), CASES_PER_USER_MAX);
    assert_eq!(u.cases.front().map(String::as_str), Some("grant"), "the granting case is kept");
    assert!(!h.s.cases.contains_key(&case_key(T, "k0")), "the oldest other case is forgotten");
    assert!(h.s.cases.contains_key(&case_key(T, &format!("k{}", CASES_PER_USER_MAX + 4))));
    assert_eq!(h.s.cases.len(), CASES_PER_USER_MAX);
    for _ in 0..HISTORY_ENTRIES_PER_USER_MAX {
        h.action("u", "freeze", ms(1));
        h.action("u", "unfreeze", ms(1));
    }
    let u = h.user("u");
    assert_eq!(u.history.len(), HISTORY_ENTRIES_PER_USER_MAX);
    assert_eq!(u.history.back().map(|e| e.version), Some(u.version));
}

#[test]
fn texts_are_cleaned_and_cut() {
    let long = "é".repeat(TEXT_BYTES_MAX);
    let cut = clean_text(&long);
    assert!(cut.len() <= TEXT_BYTES_MAX && cut.len() > TEXT_BYTES_MAX - 2);
    assert_eq!(clean_text("a\0b\nc"), "a b c");
}

#[test]
fn examples_cover_every_input_kind_and_emit_each_event_type() {
    let p = KycProcessor::new(Topics::new(""), KycLimits::default());
    let mut s = KycState::new();
    let mut kinds = std::collections::BTreeSet::new();
    let mut poisoned = 0;
    let mut now_ms = 0;
    for e in examples(Environment::Live) {
        let mut at = InputRef::log("live.kyc.inputs", 0, 0, Environment::Live);
        at.now_ms = now_ms;
        match p.apply(&mut s, &at, e.clone()) {
            Verdict::Emit(out) => kinds.extend(out.iter().map(|o| decode_out(o).kind().to_owned())),
            Verdict::Poison(_) => poisoned += 1,
        }
        now_ms = now_ms.max(e.occurred_at.timestamp_millis());
        at.now_ms = now_ms;
        while let Some(t) = s.timers.pop_due(now_ms) {
            if let Verdict::Emit(out) = p.on_timer(&mut s, &at, t) {
                kinds.extend(out.iter().map(|o| decode_out(o).kind().to_owned()));
            }
        }
    }
    let all: std::collections::BTreeSet<String> = et::ALL.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(kinds, all);
    assert_eq!(poisoned, 2, "a garbled command and an unknown type");
}

#[test]
fn a_restored_state_continues_identically() {
    let mut h = H::new();
    h.vendor(it::CASE_APPROVED, ms(0), &ft("a", "c1", "1"));
    h.action("a", "freeze", ms(0));
    h.vendor(it::CASE_NEEDS_REVIEW, ms(0), &f("b", "c2"));
    let snap: Vec<(String, Encoded)> =
        h.s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
    let restored = KycState::restore(&snap).expect("restores");
    assert_eq!(restored, h.s);
    let mut g = h.with_state(restored);
    let valid = KycLimits::default().approval_valid_ms;
    for x in [&mut h, &mut g] {
        x.review("c2", "approved", Some(3), ms(1));
        x.action("a", "unfreeze", ms(1));
    }
    assert_eq!(h.tick(ms(1) + valid), g.tick(ms(1) + valid));
    assert_eq!(h.s, g.s);
}

// ---------------------------------------------------------------------------------------------------
// Properties over random input sequences
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Vendor { kind: usize, user: usize, case: usize, tier: usize, secs: i64, dup: bool },
    Action { user: usize, action: usize },
    Review { case: usize, approve: bool, tier: u8 },
    Tick { days: i64 },
}

const USERS: [&str; 3] = ["u0", "u1", "u2"];
const CASES: [&str; 4] = ["c0", "c1", "c2", "c3"];
const KINDS: [&str; 6] = [
    it::CASE_SUBMITTED,
    it::CASE_NEEDS_REVIEW,
    it::CASE_APPROVED,
    it::CASE_REJECTED,
    it::TIER_REACHED,
    "kyc.other",
];
const TIERS: [Option<&str>; 5] = [None, Some("0"), Some("1"), Some("2"), Some("3")];
const ACTIONS: [&str; 3] = ["freeze", "unfreeze", "close"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KINDS.len(), 0..USERS.len(), 0..CASES.len(), 0..TIERS.len(), -100i64..100_000, any::<bool>())
            .prop_map(|(kind, user, case, tier, secs, dup)| Op::Vendor { kind, user, case, tier, secs, dup }),
        2 => (0..USERS.len(), 0..ACTIONS.len()).prop_map(|(user, action)| Op::Action { user, action }),
        1 => (0..CASES.len(), any::<bool>(), 0u8..5).prop_map(|(case, approve, tier)| Op::Review { case, approve, tier }),
        1 => (0i64..200).prop_map(|days| Op::Tick { days }),
    ]
}

/// Run `ops` (restoring from a snapshot after op `cut`, if given); every output, in order.
fn run(ops: &[Op], cut: Option<usize>, limits: KycLimits) -> Vec<Emit> {
    let mut h = H::with(limits);
    let mut out = Vec::new();
    let mut clock_days = 0;
    for (i, op) in ops.iter().enumerate() {
        let at = h.at();
        let emitted = match op {
            Op::Vendor { kind, user, case, tier, secs, dup } => {
                let mut fields = f(USERS[*user], CASES[*case]);
                if let Some(t) = TIERS[*tier] {
                    fields.push(("tier", t));
                }
                let peid = if *dup { "same".to_owned() } else { format!("pe-{i}") };
                let at_ms = ms(clock_days) + secs * 1000;
                let e = webhook_env(&mut h, T, "idcheck", &peid, KINDS[*kind], at_ms, &fields);
                vec![h.p.apply(&mut h.s, &at, e)]
            }
            Op::Action { user, action } => {
                let p = serde_json::json!({"user_id": USERS[*user], "action": ACTIONS[*action], "reason": "r", "actor": "a"});
                let e = h.envelope(T, command_types::KYC_USER_ACTION_REQUESTED, ms(clock_days), p);
                vec![h.p.apply(&mut h.s, &at, e)]
            }
            Op::Review { case, approve, tier } => {
                let decision = if *approve { "approved" } else { "rejected" };
                let p = serde_json::json!({"case_id": CASES[*case], "decision": decision, "tier": tier, "actor": "o"});
                let e = h.envelope(T, command_types::KYC_REVIEW_DECIDED, ms(clock_days), p);
                vec![h.p.apply(&mut h.s, &at, e)]
            }
            Op::Tick { days } => {
                clock_days += days;
                h.now_ms = h.now_ms.max(ms(clock_days));
                let mut v = Vec::new();
                while let Some(t) = h.s.timers.pop_due(h.now_ms) {
                    let at = h.at();
                    v.push(h.p.on_timer(&mut h.s, &at, t));
                }
                v
            }
        };
        for v in emitted {
            match v {
                Verdict::Emit(e) => out.extend(e),
                Verdict::Poison(r) => panic!("well-formed input dead-lettered: {r}"),
            }
        }
        if cut == Some(i) {
            let snap: Vec<(String, Encoded)> =
                h.s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
            h.s = KycState::restore(&snap).expect("restores");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_replay_identically_versions_rise_and_closed_stays_closed(
        ops in proptest::collection::vec(op(), 1..60),
        cut in 0usize..60,
    ) {
        let limits = KycLimits { inputs_remembered_max: 8, ..KycLimits::default() };
        let out = run(&ops, None, limits);
        prop_assert_eq!(&out, &run(&ops, None, limits), "a replay differs");
        prop_assert_eq!(&out, &run(&ops, Some(cut), limits), "a restore after op {} differs", cut);
        let mut ids = std::collections::BTreeSet::new();
        let mut last: BTreeMap<String, UserKycChanged> = BTreeMap::new();
        for e in &out {
            prop_assert!(ids.insert(e.event_id), "an event id repeats");
            if let Out::User(kind, u) = decode_out(e) {
                if let Some(prev) = last.get(&u.user_id) {
                    prop_assert_eq!(u.version, prev.version + 1, "versions rise by one per event");
                    prop_assert!(prev.user_status != U::Closed || u.user_status == U::Closed, "closed stays closed");
                } else {
                    prop_assert_eq!(u.version, 1);
                }
                prop_assert!(u.tier <= TIER_MAX);
                prop_assert_eq!(u.kyc_expires_at.is_some(), u.kyc_status == K::Approved, "{} {:?}", kind, u);
                if u.kyc_status == K::Approved {
                    prop_assert!(u.tier >= 1, "an approval has a tier");
                }
                if u.user_status == U::Active {
                    prop_assert_eq!(u.kyc_status, K::Approved, "only an approved user is active");
                }
                last.insert(u.user_id.clone(), u);
            }
        }
    }
}
