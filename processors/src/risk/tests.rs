use super::*;
use proptest::prelude::*;
use riverbank_schemas::processor::Via;
use riverbank_schemas::risk::{name_keys, RuleHit};
use riverbank_schemas::transfers::Counterparty;
use riverbank_schemas::{Currency, Money, TransferKind};

const KEY: &[u8] = b"test-name-key-0123456789";

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::from_code("USD").expect("USD"))
}

fn request(id: &str, user: Option<&str>, amount: Money) -> ScreeningRequested {
    ScreeningRequested {
        transfer_id: id.into(),
        kind: TransferKind::Payout,
        amount,
        requested_by: "user:maker".into(),
        user_id: user.map(str::to_owned),
        source_account: "acct_1".into(),
        destination_account: "external".into(),
        counterparty: None,
        version: 4,
        needs_approval: false,
    }
}

fn approved(tier: u8) -> UserRisk {
    UserRisk { user_status: "active".into(), kyc_status: "approved".into(), tier, version: 1 }
}

/// Evaluate the built-in rules on one request with the given facts.
fn eval(
    r: &ScreeningRequested,
    user: Option<&UserRisk>,
    lists: &[&ListPublished],
    history: Option<&History>,
) -> rules::Evaluation {
    let rules = parse_rules(DEFAULT_RULES_TOML).expect("valid");
    let amount = (r.amount.currency == rules.report_currency).then_some(r.amount.amount_minor);
    let facts = Facts {
        tenant: "t",
        request: r,
        at_ms: 1_000_000_000,
        user,
        amount_report: amount,
        rate: None,
        user_history: history,
        counterparty_history: history,
        lists,
    };
    rules::evaluate(&rules, &facts)
}

fn fired(e: &rules::Evaluation) -> Vec<&str> {
    e.hits.iter().map(|h| h.rule.as_str()).collect()
}

fn hit<'a>(e: &'a rules::Evaluation, rule: &str) -> &'a RuleHit {
    e.hits.iter().find(|h| h.rule == rule).unwrap_or_else(|| panic!("{rule} did not fire: {:?}", e.hits))
}

#[test]
fn the_built_in_rule_set_is_valid() {
    let r = parse_rules(DEFAULT_RULES_TOML).expect("valid");
    assert!(r.version.starts_with("rs_") && r.version_matches());
    let mut changed = r.clone();
    changed.threshold[0].score += 1;
    assert!(!changed.version_matches(), "content changes the version");
    assert_ne!(changed.sealed().version, r.version);
}

#[test]
fn rule_files_are_validated_with_errors_naming_the_rule() {
    let base = "name = \"x\"\nreport_currency = \"USD\"\ntier_limit_score = 100\nblocked_user_score = 100\nsanctions_score = 95\nno_rate_score = 30\n";
    assert!(parse_rules(base).is_ok());
    for (extra, needle) in [
        ("[[threshold]]\nid = \"a\"\namount_over = \"1.001\"\nscore = 1\n", "threshold a: amount_over"),
        ("[[velocity]]\nid = \"v\"\nsubject = \"user\"\nwindow_s = 99999999\ncount_over = 1\nscore = 1\n", "velocity v: window_s"),
        ("[[velocity]]\nid = \"v\"\nsubject = \"user\"\nwindow_s = 60\nscore = 1\n", "needs count_over or sum_over"),
        ("[[threshold]]\nid = \"a\"\namount_over = \"1\"\nscore = 101\n", "above 100"),
        ("[[threshold]]\nid = \"a\"\namount_over = \"1\"\nscore = 1\n[[threshold]]\nid = \"a\"\namount_over = \"2\"\nscore = 1\n", "used twice"),
        ("[[jurisdiction]]\nid = \"j\"\ndeny = [\"germany\"]\nscore = 1\n", "ISO 3166"),
        ("[[tier_limits]]\ntier = 4\nsingle_max = \"1\"\nrolling_24h_max = \"1\"\n", "tier 4"),
        ("surprise = 1\n", "unknown field"),
    ] {
        let e = parse_rules(&format!("{base}{extra}")).expect_err(extra);
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let low = base.replace("sanctions_score = 95", "sanctions_score = 80");
    assert!(parse_rules(&low).expect_err("low").contains("sanctions_score"));
}

#[test]
fn thresholds_and_the_currency_transaction_report() {
    let small = eval(&request("a", None, usd(100_000)), None, &[], None);
    assert_eq!(small.decision, RiskOutcome::Approve, "{:?}", small.hits);
    assert_eq!(fired(&small), ["missing_user"]);
    let large = eval(&request("b", None, usd(150_000)), None, &[], None);
    assert_eq!((large.decision, large.score), (RiskOutcome::Review, 35));
    assert_eq!(hit(&large, "large-single").features["amount"], "1500.00");
    assert!(!large.ctr);
    let ctr = eval(&request("c", None, usd(1_000_001)), None, &[], None);
    assert!(ctr.ctr && ctr.decision == RiskOutcome::Review, "{:?}", ctr);
    assert_eq!(hit(&ctr, "ctr").features["over"], "10000.00");
}

#[test]
fn kyc_tiers_limit_what_a_user_moves_and_tier_0_moves_nothing() {
    let unknown = eval(&request("a", Some("u1"), usd(100)), None, &[], None);
    assert_eq!(unknown.decision, RiskOutcome::Block);
    assert_eq!(hit(&unknown, "tier_0_limit").features["kyc_status"], "not_started");
    let t1 = approved(1);
    assert_eq!(
        eval(&request("b", Some("u1"), usd(10_000)), Some(&t1), &[], None).decision,
        RiskOutcome::Approve
    );
    let over = eval(&request("c", Some("u1"), usd(250_000)), Some(&t1), &[], None);
    assert_eq!(over.decision, RiskOutcome::Block);
    assert_eq!(hit(&over, "tier_1_limit").features["single_max"], "2000.00");
    // Rolling 24 h: 4,500 already moved + 600 > 5,000.
    let mut h = History::default();
    h.insert(Seen { at_ms: 1_000_000_000 - 3_600_000, amount: Some(450_000) });
    let rolling = eval(&request("d", Some("u1"), usd(60_000)), Some(&t1), &[], Some(&h));
    assert_eq!(hit(&rolling, "tier_1_limit").features["rolling_24h"], "5100.00");
    // An expired KYC leaves tier 0.
    let expired = UserRisk { kyc_status: "expired".into(), ..approved(3) };
    assert_eq!(
        eval(&request("e", Some("u1"), usd(100)), Some(&expired), &[], None).decision,
        RiskOutcome::Block
    );
}

#[test]
fn frozen_suspended_and_closed_users_are_blocked() {
    for status in ["frozen", "suspended", "closed"] {
        let u = UserRisk { user_status: status.into(), ..approved(3) };
        let e = eval(&request("a", Some("u1"), usd(100)), Some(&u), &[], None);
        assert_eq!(e.decision, RiskOutcome::Block, "{status}");
        assert_eq!(hit(&e, "blocked_user").features["user_status"], status);
    }
}

#[test]
fn sanctions_match_by_normalized_name_and_by_id_and_reject_at_once() {
    let list = parse_list(
        "list = \"sdn\"\n[[entries]]\nid = \"SDN-1\"\nnames = [\"Ivan Petrov\", \"Ivan Petroff\"]\nids = [\"0xAbC\"]\n",
        KEY,
        "compliance",
    )
    .expect("valid list");
    let with = |name: Option<&str>, id: Option<&str>| {
        let mut r = request("a", None, usd(100));
        r.counterparty = Some(Counterparty {
            id: id.map(str::to_owned),
            country: None,
            name_keys: name.map(|n| name_keys(KEY, n)).unwrap_or_default(),
        });
        eval(&r, None, &[&list], None)
    };
    for name in ["Ivan Petrov", "PETROV, Ivan", "Iván  Petróv", "Ivan Sergeyevich Petrov", "ivan petroff"] {
        let e = with(Some(name), None);
        assert_eq!(e.decision, RiskOutcome::Block, "{name}");
        assert!(hit(&e, "sanctions").features["entries"].contains("sdn:SDN-1 by name"), "{name}");
    }
    assert_eq!(with(Some("Ivana Petrova"), None).decision, RiskOutcome::Approve);
    let by_id = with(None, Some(" 0xabc"));
    assert!(hit(&by_id, "sanctions").features["entries"].contains("by id"));
    // A list digested under another key never matches (the key is part of the deployment).
    let other = parse_list(
        "list = \"sdn\"\n[[entries]]\nid = \"S\"\nnames = [\"Ivan Petrov\"]\n",
        b"another-key-0123456",
        "c",
    )
    .expect("valid");
    let mut r = request("a", None, usd(100));
    r.counterparty =
        Some(Counterparty { name_keys: name_keys(KEY, "Ivan Petrov"), ..Counterparty::default() });
    assert_eq!(eval(&r, None, &[&other], None).decision, RiskOutcome::Approve);
}

#[test]
fn jurisdictions_deny_and_allow_per_tenant() {
    let mut r = request("a", None, usd(100));
    r.counterparty = Some(Counterparty { country: Some("KP".into()), ..Counterparty::default() });
    let e = eval(&r, None, &[], None);
    assert_eq!(e.decision, RiskOutcome::Block);
    assert_eq!(hit(&e, "comprehensively-sanctioned-countries").features["country"], "KP");
    let mut rules = parse_rules(DEFAULT_RULES_TOML).expect("valid");
    rules.jurisdiction.push(riverbank_schemas::risk::JurisdictionRule {
        id: "eu-only".into(),
        tenants: vec!["t".into()],
        deny: vec![],
        allow: vec!["DE".into(), "FR".into()],
        score: 40,
    });
    r.counterparty = Some(Counterparty { country: Some("US".into()), ..Counterparty::default() });
    let facts = Facts {
        tenant: "t",
        request: &r,
        at_ms: 0,
        user: None,
        amount_report: Some(100),
        rate: None,
        user_history: None,
        counterparty_history: None,
        lists: &[],
    };
    assert_eq!(rules::evaluate(&rules, &facts).decision, RiskOutcome::Review);
    let other_tenant = Facts { tenant: "u", ..facts };
    assert_eq!(rules::evaluate(&rules, &other_tenant).decision, RiskOutcome::Approve);
}

#[test]
fn velocity_counts_and_sums_per_user_over_sliding_windows() {
    let t1 = approved(3);
    let mut h = History::default();
    for i in 0..10 {
        h.insert(Seen { at_ms: 1_000_000_000 - 60_000 * i, amount: Some(100) });
    }
    let e = eval(&request("a", Some("u1"), usd(100)), Some(&t1), &[], Some(&h));
    let v = hit(&e, "user-count-1h");
    assert_eq!((v.features["count"].as_str(), v.features["count_over"].as_str()), ("11", "10"));
    // An hour later the window holds only this transfer.
    let mut later = request("b", Some("u1"), usd(100));
    later.version = 5;
    let rules = parse_rules(DEFAULT_RULES_TOML).expect("valid");
    let facts = Facts {
        tenant: "t",
        request: &later,
        at_ms: 1_000_000_000 + 3_600_000,
        user: Some(&t1),
        amount_report: Some(100),
        rate: None,
        user_history: Some(&h),
        counterparty_history: None,
        lists: &[],
    };
    assert!(!rules::evaluate(&rules, &facts).hits.iter().any(|h| h.rule == "user-count-1h"));
}

#[test]
fn amounts_convert_with_the_latest_rate_and_without_one_go_to_review() {
    let eur = Money::new(150_000, Currency::from_code("EUR").expect("EUR"));
    let usd_c = Currency::from_code("USD").expect("USD");
    let rate =
        |pair: &str| (pair == "EUR/USD").then(|| Rate { rate_e9: 1_100_000_000, version: "v1".into() });
    let (a, applied) = rules::convert(eur, usd_c, rate).expect("converts");
    assert_eq!(a, 165_000);
    assert_eq!(applied.expect("a rate").version, "v1");
    // The inverse pair, and precision: 1,000 JPY at 150 JPY per USD = 6.67 USD (half up).
    let jpy = Money::new(1_000, Currency::from_code("JPY").expect("JPY"));
    let inverse =
        |pair: &str| (pair == "USD/JPY").then(|| Rate { rate_e9: 150_000_000_000, version: "v2".into() });
    assert_eq!(rules::convert(jpy, usd_c, inverse).expect("converts").0, 667);
    assert!(rules::convert(jpy, usd_c, |_| None).is_none());
    let e = eval(&request("a", None, jpy), None, &[], None);
    assert_eq!((e.decision, fired(&e).contains(&"no_rate")), (RiskOutcome::Review, true));
}

// ---------------------------------------------------------------------------------------------------
// The processor: screening, review, duplicates, shadow.
// ---------------------------------------------------------------------------------------------------

fn input(id: &str, tenant: &str, event_type: &str, payload: serde_json::Value, secs: i64) -> RawEnvelope {
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000 + secs, 0).expect("time");
    Envelope::new(derived_id(&["risk-test", id]), event_type, tenant, Environment::Live, at, "test", payload)
}

fn screening(id: &str, r: &ScreeningRequested, secs: i64) -> RawEnvelope {
    input(id, "acme", ScreeningRequested::EVENT_TYPE, serde_json::to_value(r).expect("json"), secs)
}

fn run(p: &RiskProcessor, s: &mut RiskState, e: RawEnvelope) -> Vec<(String, serde_json::Value)> {
    let at = InputRef {
        topic: "live.risk.inputs",
        partition: 0,
        offset: 0,
        environment: Environment::Live,
        now_ms: 0,
        via: Via::Log,
    };
    match p.apply(s, &at, e) {
        Verdict::Emit(emits) => emits
            .into_iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
                (v["event_type"].as_str().unwrap_or_default().to_owned(), v["payload"].clone())
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn decisions(out: &[(String, serde_json::Value)]) -> Vec<String> {
    out.iter()
        .filter(|(t, _)| t == input_types::RISK_DECIDED)
        .map(|(_, p)| p["decision"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_review_is_decided_by_an_officer_who_is_not_the_requester_once() {
    let p = RiskProcessor::new(Topics::new(""));
    let mut s = RiskState::new();
    let out = run(&p, &mut s, screening("s1", &request("t1", None, usd(150_000)), 0));
    assert_eq!(decisions(&out), ["review"]);
    let record = &out.iter().find(|(t, _)| t == et::DECISION_RECORDED).expect("recorded").1;
    assert_eq!(record["hits"][1]["rule"], "large-single");
    assert_eq!(record["rule_set_version"], p.default_rules().version.as_str());
    let decide = |id: &str, actor: &str, decision: &str| {
        input(
            id,
            "acme",
            RISK_REVIEW_DECIDED,
            serde_json::json!({"transfer_id": "t1", "decision": decision, "reason": "checked", "actor": actor}),
            60,
        )
    };
    let same = run(&p, &mut s, decide("d0", "user:maker", "approved"));
    assert_eq!(same[0].0, et::INPUT_REJECTED);
    assert!(same[0].1["reason"].as_str().unwrap_or_default().contains("maker-checker"));
    let ok = run(&p, &mut s, decide("d1", "user:officer", "approved"));
    assert_eq!(decisions(&ok), ["approve"]);
    let decided = &ok[0].1;
    assert_eq!(decided["reviewed_by"], "user:officer");
    assert!(
        run(&p, &mut s, decide("d1", "user:officer", "approved")).is_empty(),
        "the same decision again: nothing"
    );
    let late = run(&p, &mut s, decide("d2", "user:officer2", "rejected"));
    assert_eq!(late[0].0, et::INPUT_REJECTED, "a second decision is refused");
}

#[test]
fn duplicates_are_recognised_and_a_retry_is_screened_again() {
    let p = RiskProcessor::new(Topics::new(""));
    let mut s = RiskState::new();
    let r = request("t1", None, usd(100));
    assert_eq!(decisions(&run(&p, &mut s, screening("s1", &r, 0))), ["approve"]);
    assert!(run(&p, &mut s, screening("s1", &r, 0)).is_empty());
    assert!(run(&p, &mut s, screening("s1-copy", &r, 0)).is_empty(), "same transfer version: a replay");
    let retry = ScreeningRequested { version: 8, ..r };
    assert_eq!(decisions(&run(&p, &mut s, screening("s2", &retry, 10))), ["approve"]);
}

#[test]
fn kyc_events_apply_in_version_order_and_decide_the_tier() {
    let p = RiskProcessor::new(Topics::new(""));
    let mut s = RiskState::new();
    let user = |v: u64, kyc: &str, status: &str| serde_json::json!({"user_id": "u1", "user_status": status, "kyc_status": kyc, "tier": 1, "version": v});
    run(&p, &mut s, input("k2", "acme", "user.verified", user(2, "approved", "active"), 0));
    run(&p, &mut s, input("k1", "acme", "user.kyc.updated", user(1, "pending", "pending"), 0));
    assert_eq!(
        decisions(&run(&p, &mut s, screening("s1", &request("t1", Some("u1"), usd(100)), 1))),
        ["approve"]
    );
    run(&p, &mut s, input("k3", "acme", "user.kyc.expiring", user(3, "expired", "active"), 2));
    assert_eq!(
        decisions(&run(&p, &mut s, screening("s2", &request("t2", Some("u1"), usd(100)), 3))),
        ["block"]
    );
}

#[test]
fn a_shadow_rule_set_is_recorded_beside_the_live_one_and_never_acted_on() {
    let p = RiskProcessor::new(Topics::new(""));
    let mut s = RiskState::new();
    let mut candidate = p.default_rules().clone();
    candidate.name = "strict".into();
    candidate.threshold[0].amount_over_minor = 50;
    let candidate = candidate.sealed();
    let publish = serde_json::json!({"rules": candidate, "shadow": true, "published_by": "c"});
    assert!(run(&p, &mut s, input("pub", "x", et::RULES_PUBLISHED, publish, 0)).is_empty());
    let out = run(&p, &mut s, screening("s1", &request("t1", None, usd(100)), 1));
    assert_eq!(decisions(&out), ["approve"], "the live rules act");
    let recorded: Vec<&serde_json::Value> =
        out.iter().filter(|(t, _)| t == et::DECISION_RECORDED).map(|(_, p)| p).collect();
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        (recorded[1]["shadow"].as_bool(), recorded[1]["decision"].as_str()),
        (Some(true), Some("review"))
    );
    // A tampered publication (content that does not hash to its version) is refused.
    let mut tampered = candidate.clone();
    tampered.threshold[0].score = 0;
    let bad = serde_json::json!({"rules": tampered, "shadow": false, "published_by": "c"});
    assert_eq!(run(&p, &mut s, input("bad", "x", et::RULES_PUBLISHED, bad, 2))[0].0, et::INPUT_REJECTED);
}

proptest! {
    /// 100% coverage: every distinct screening request gets exactly one live decision back to
    /// transfers and one live decision record, whatever the amounts, users and order.
    #[test]
    fn every_screening_request_is_decided_exactly_once(
        reqs in proptest::collection::vec((0u8..20, 1i64..5_000_000, proptest::option::of(0u8..3), 1u32..4), 1..60),
    ) {
        let p = RiskProcessor::new(Topics::new(""));
        let mut s = RiskState::new();
        let mut distinct = std::collections::BTreeSet::new();
        let mut decided = 0usize;
        for (i, (t, minor, user, version)) in reqs.iter().enumerate() {
            let mut r = request(&format!("t{t}"), user.map(|u| format!("u{u}")).as_deref(), usd(*minor));
            r.version = *version;
            let fresh = s.screened.get(&format!("acme/t{t}")).is_none_or(|x| x.version < *version);
            let out = run(&p, &mut s, screening(&format!("s{i}"), &r, i as i64));
            let n = decisions(&out).len();
            prop_assert_eq!(n, usize::from(fresh));
            if fresh {
                distinct.insert((t, version));
                decided += 1;
            }
        }
        prop_assert!(decided >= distinct.len());
    }
}
