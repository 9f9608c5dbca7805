// Table tests spell their rows out as tuples.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use riverbank_schemas::billing::period_of;
use riverbank_schemas::state::{Encoded, State as _};
use serde_json::json;

use super::*;
use crate::test_harness::Harness;

const T: &str = "tenant-a";
const T2: &str = "tenant-b";

fn cur(code: &str) -> Currency {
    Currency::from_code(code).expect("a currency")
}

fn usd(minor: i64) -> Money {
    Money::new(minor, cur("USD"))
}

/// Milliseconds of an RFC 3339 time.
fn ms(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text).expect("a time").timestamp_millis()
}

/// One decoded output, with the tenant it is keyed by.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Fee(FeeCharged),
    Invoice(InvoiceRecorded),
    Rejected(BillingInputRejected),
    Booking(BookingRequested),
}

impl Out {
    fn fee(&self) -> &FeeCharged {
        match self {
            Out::Fee(f) => f,
            other => panic!("expected a fee, got {other:?}"),
        }
    }
    fn invoice(&self) -> &InvoiceRecorded {
        match self {
            Out::Invoice(i) => i,
            other => panic!("expected an invoice, got {other:?}"),
        }
    }
    fn reason(&self) -> &str {
        match self {
            Out::Rejected(r) => &r.reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    fn booking(&self) -> &BookingRequested {
        match self {
            Out::Booking(b) => b,
            other => panic!("expected a booking request, got {other:?}"),
        }
    }
}

fn decode_out(e: &Emit) -> (String, Out) {
    let env: RawEnvelope = serde_json::from_slice(&e.payload).expect("an envelope");
    assert_eq!(env.event_id, e.event_id);
    assert_eq!(env.tenant_id, e.key, "keyed by tenant");
    let p = env.payload;
    let out = match env.event_type.as_str() {
        FeeCharged::EVENT_TYPE => Out::Fee(serde_json::from_value(p).expect("a fee")),
        InvoiceRecorded::EVENT_TYPE => Out::Invoice(serde_json::from_value(p).expect("an invoice")),
        BillingInputRejected::EVENT_TYPE => Out::Rejected(serde_json::from_value(p).expect("a rejection")),
        BookingRequested::EVENT_TYPE => {
            assert!(e.topic.ends_with("transfers.inputs"), "{}", e.topic);
            Out::Booking(serde_json::from_value(p).expect("a booking"))
        }
        other => panic!("unexpected output {other}"),
    };
    if !matches!(out, Out::Booking(_)) {
        assert!(e.topic.ends_with("billing.events"), "{}", e.topic);
    }
    (env.tenant_id, out)
}

/// A processor, its state and the partition clock (ticks).
type H = Harness<BillingProcessor>;

impl H {
    fn new() -> Self {
        Self::with(BillingSettings::default())
    }
    fn with(settings: BillingSettings) -> Self {
        Harness::of(BillingProcessor::new(Topics::new(""), settings), "live.billing.inputs", "billing-test")
    }
    fn send(&mut self, e: RawEnvelope) -> Vec<Out> {
        self.send_raw(e).iter().map(|e| decode_out(e).1).collect()
    }
    fn one(&mut self, e: RawEnvelope) -> Out {
        let out = self.send(e);
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].clone()
    }
    fn tick(&mut self, now_ms: i64) -> Vec<Out> {
        self.tick_raw(now_ms).iter().map(|e| decode_out(e).1).collect()
    }
    fn config_in(&mut self, tenant: &str, at_ms: i64, c: serde_json::Value) -> RawEnvelope {
        self.envelope(tenant, command_types::FEE_CONFIG_UPSERTED, at_ms, c)
    }
    /// A config that must be accepted (emits nothing).
    fn config(&mut self, tenant: &str, at_ms: i64, c: serde_json::Value) {
        let e = self.config_in(tenant, at_ms, c);
        let out = self.send(e);
        assert!(out.is_empty(), "{out:?}");
    }
    fn status_in(
        &mut self,
        tenant: &str,
        id: &str,
        kind: &str,
        amount: Money,
        status: &str,
        at_ms: i64,
    ) -> RawEnvelope {
        let p = json!({"transfer_id": id, "kind": kind, "amount": amount, "status": status, "version": 6,
                       "cause_event_id": derived_id(&["cause", id]).to_string()});
        self.envelope(tenant, TransferStatusChanged::EVENT_TYPE, at_ms, p)
    }
    fn complete(&mut self, tenant: &str, id: &str, kind: &str, amount: Money, at_ms: i64) -> Vec<Out> {
        let e = self.status_in(tenant, id, kind, amount, "COMPLETED", at_ms);
        self.send(e)
    }
    /// The ledger's answer to a booking request.
    fn answer_in(
        &mut self,
        tenant: &str,
        b: &BookingRequested,
        booked: bool,
        reason: Option<&str>,
    ) -> RawEnvelope {
        let r = BookingRecorded {
            booking_id: b.booking_id.clone(),
            purpose: b.purpose,
            reference: b.reference.clone(),
            outcome: if booked { BookingOutcome::Booked } else { BookingOutcome::Refused },
            reason: reason.map(str::to_owned),
            legs: b.legs.clone(),
        };
        let at = self.now_ms;
        self.envelope(tenant, BookingRecorded::EVENT_TYPE, at, serde_json::to_value(r).expect("json"))
    }
    fn answer(&mut self, tenant: &str, b: &BookingRequested, booked: bool) -> Vec<Out> {
        let e = self.answer_in(tenant, b, booked, (!booked).then_some("insufficient funds"));
        self.send(e)
    }
    fn plan(&mut self, tenant: &str, at_ms: i64, plan: &str, fee: Money, from: Option<&str>) -> Vec<Out> {
        let mut p = json!({"plan": plan, "fee": fee, "changed_by": "ops-1"});
        if let Some(f) = from {
            p["effective_from"] = f.into();
        }
        let e = self.envelope(tenant, command_types::BILLING_PLAN_SET, at_ms, p);
        self.send(e)
    }
    /// Complete a transfer whose fee is booked, and book it: the fee record and the invoice emitted.
    fn charged(
        &mut self,
        tenant: &str,
        id: &str,
        kind: &str,
        amount: Money,
        at_ms: i64,
    ) -> (FeeCharged, InvoiceRecorded) {
        let out = self.complete(tenant, id, kind, amount, at_ms);
        assert_eq!(out.len(), 2, "{out:?}");
        let b = out[1].booking().clone();
        let out = self.answer(tenant, &b, true);
        assert_eq!(out.len(), 2, "{out:?}");
        (out[0].fee().clone(), out[1].invoice().clone())
    }
}

fn flat(fixed: i64, bps: u32, min: Option<i64>, max: Option<i64>) -> ConfigVersion {
    ConfigVersion {
        from_ms: 0,
        event_id: Uuid::nil(),
        fixed: usd(fixed),
        bps,
        min: min.map(usd),
        max: max.map(usd),
        tiers: Vec::new(),
        pricing: TierPricing::Volume,
    }
}

fn tiered(pricing: TierPricing) -> ConfigVersion {
    // 1.00 % to 1,000.00 of monthly volume, 0.50 % from 1,000.00, 0.20 % from 5,000.00.
    ConfigVersion { tiers: vec![(100_000, 50), (500_000, 20)], pricing, ..flat(0, 100, None, None) }
}

// ---------------------------------------------------------------------------------------------------
// Pricing at its boundaries
// ---------------------------------------------------------------------------------------------------

#[test]
fn flat_fees_clamp_to_min_and_max_at_their_edges() {
    // fixed 0.30 + 1.00 %, within [1.00, 10.00]: (amount, fee, clamped)
    let cfg = flat(30, 100, Some(100), Some(1000));
    let table: &[(i64, i64, Option<&str>)] = &[
        (1, 100, Some("min")),       // 0.30 + 0.01 c → 0.30 → 1.00
        (6_999, 100, None),          // 0.30 + 69.99 c rounds to 1.00: at min, unchanged
        (7_000, 100, None),          // 0.30 + 0.70 = 1.00: at min, unchanged
        (7_100, 101, None),          // 0.30 + 0.71
        (97_000, 1000, None),        // 0.30 + 9.70 = 10.00: at max, unchanged
        (97_100, 1000, Some("max")), // 0.30 + 9.71 → 10.00
        (AMOUNT_MINOR_MAX, 1000, Some("max")),
    ];
    for &(amount, fee, clamped) in table {
        let p = price(&cfg, amount, 0, RoundingMode::HalfEven).expect("priced");
        assert_eq!((p.fee, p.clamped), (fee, clamped), "amount {amount}: {p:?}");
        assert_eq!(p.parts, vec![(amount, 100)]);
    }
    // Without min and max nothing clamps; zero stays zero.
    let p = price(&flat(0, 1, None, None), 1, 0, RoundingMode::HalfUp).expect("priced");
    assert_eq!((p.fee, p.clamped, p.exact.as_str()), (0, None, "0.0001"));
    assert!(price(&cfg, 0, 0, RoundingMode::HalfEven).is_err(), "a zero amount is not priced");
}

#[test]
fn volume_tiers_apply_from_the_volume_reached_inclusive() {
    let cfg = tiered(TierPricing::Volume);
    // (volume before, amount, bps applied to all of it)
    let table: &[(i64, i64, u32)] = &[
        (0, 99_999, 100),       // reaches 999.99: base
        (0, 100_000, 50),       // reaches exactly 1,000.00: the tier (inclusive)
        (99_999, 1, 50),        // the one minor unit that reaches it
        (99_998, 1, 100),       // one short
        (0, 499_999, 50),       // reaches 4,999.99
        (400_000, 100_000, 20), // reaches exactly 5,000.00
        (1_000_000, 1, 20),     // far above
    ];
    for &(before, amount, bps) in table {
        let p = price(&cfg, amount, before, RoundingMode::HalfEven).expect("priced");
        assert_eq!(p.parts, vec![(amount, bps)], "before {before}, amount {amount}");
        let exact = i128::from(amount) * i128::from(bps);
        assert_eq!(i128::from(p.fee), div_round(exact, 10_000, RoundingMode::HalfEven).expect("fits"));
    }
}

#[test]
fn graduated_tiers_split_the_amount_with_lower_edges_inclusive() {
    let cfg = tiered(TierPricing::Graduated);
    // (volume before, amount, parts)
    let table: &[(i64, i64, Vec<(i64, u32)>)] = &[
        (0, 100_000, vec![(100_000, 100)]), // ends exactly at 1,000.00: nothing in the tier
        (0, 100_001, vec![(100_000, 100), (1, 50)]), // one unit past it
        (100_000, 1, vec![(1, 50)]),        // starts exactly at it: all in the tier
        (99_999, 2, vec![(1, 100), (1, 50)]), // straddles it
        (50_000, 500_000, vec![(50_000, 100), (400_000, 50), (50_000, 20)]), // across both tiers
        (600_000, 10, vec![(10, 20)]),
    ];
    for (before, amount, parts) in table {
        let p = price(&cfg, *amount, *before, RoundingMode::HalfEven).expect("priced");
        assert_eq!(&p.parts, parts, "before {before}, amount {amount}");
        assert_eq!(p.parts.iter().map(|x| x.0).sum::<i64>(), *amount, "the parts cover the amount");
    }
    // 500.00 at 1 % and 2,100.00 at 0.5 % = 5.00 + 10.50, with 0.30 fixed: 15.80.
    let with_fixed = ConfigVersion { fixed: usd(30), ..cfg };
    let p = price(&with_fixed, 260_000, 50_000, RoundingMode::HalfEven).expect("priced");
    assert_eq!(p.parts, vec![(50_000, 100), (210_000, 50)]);
    assert_eq!((p.fee, p.exact.as_str()), (1580, "1580"));
}

#[test]
fn rounding_half_way_cases_per_mode_at_each_currency_precision() {
    // 0.50 % of each amount; (currency, amount in minor units, half-even fee, half-up fee)
    let table: &[(&str, i64, i64, i64)] = &[
        ("USD", 100, 0, 1),      // 1.00 USD → 0.5 cent
        ("USD", 300, 2, 2),      // 1.5 cents
        ("USD", 500, 2, 3),      // 2.5 cents
        ("USD", 12_345, 62, 62), // 61.725 cents: not half-way
        ("JPY", 900, 4, 5),      // ¥900 → ¥4.5
        ("JPY", 1_100, 6, 6),    // ¥5.5
        ("JPY", 12_345, 62, 62), // ¥61.725
        ("KWD", 900, 4, 5),      // 0.900 KWD → 4.5 fils
        ("KWD", 1_100, 6, 6),    // 5.5 fils
        ("KWD", 12_345, 62, 62), // 61.725 fils
    ];
    for (mode, pick) in [(RoundingMode::HalfEven, 0usize), (RoundingMode::HalfUp, 1)] {
        let mut h = H::with(BillingSettings { rounding: mode, ..BillingSettings::default() });
        let t0 = ms("2026-05-01T00:00:00Z");
        for code in ["USD", "JPY", "KWD"] {
            h.config(T, t0, json!({"transfer_kind": "payout", "fixed": Money::zero(cur(code)), "bps": 50, "changed_by": "x"}));
        }
        for (i, &(code, amount, even, up)) in table.iter().enumerate() {
            let want = [even, up][pick];
            let out = h.complete(T, &format!("tr_{i}"), "payout", Money::new(amount, cur(code)), t0 + 1000);
            let f = out[0].fee();
            assert_eq!(f.fee, Money::new(want, cur(code)), "{code} {amount} {mode:?}");
            assert_eq!(f.rounding, mode);
            let status = if want == 0 { FeeStatus::Waived } else { FeeStatus::Booking };
            assert_eq!((f.status, out.len()), (status, if want == 0 { 1 } else { 2 }), "{out:?}");
            assert_eq!(f.exact, exact_decimal(i128::from(amount) * 50, 4));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    let eur = |m: i64| Money::new(m, cur("EUR"));
    let base = || json!({"transfer_kind": "payout", "fixed": usd(10), "bps": 50, "changed_by": "ops-1"});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base();
        c[k] = v;
        c
    };
    let tier = |from: Money, bps: u32| json!({"monthly_volume_from": from, "bps": bps});
    let too_many: Vec<serde_json::Value> = (1..=17).map(|i| tier(usd(i * 100), 10)).collect();
    let table: Vec<(serde_json::Value, &str)> = vec![
        (with("min", json!(eur(1))), "min is in EUR, the fixed fee in USD"),
        (with("max", json!(eur(1))), "max is in EUR"),
        (with("tiers", json!([tier(eur(100), 10)])), "tier 0 monthly_volume_from is in EUR"),
        (with("fixed", json!(usd(-1))), "fixed must be 0-"),
        (with("fixed", json!(usd(AMOUNT_MINOR_MAX + 1))), "fixed must be 0-"),
        (with("bps", json!(10_001)), "bps must be at most 10000"),
        (
            {
                let mut c = with("min", json!(usd(500)));
                c["max"] = json!(usd(499));
                c
            },
            "min 5.00 USD is above max 4.99 USD",
        ),
        (with("tiers", json!([tier(usd(500), 10), tier(usd(500), 5)])), "strictly ascending: tier 1"),
        (with("tiers", json!([tier(usd(500), 10), tier(usd(400), 5)])), "strictly ascending"),
        (with("tiers", json!([tier(usd(0), 10)])), "tier 0 starts at zero"),
        (with("tiers", json!([tier(usd(100), 10_001)])), "tier 0 bps must be at most 10000"),
        (with("tiers", json!(too_many)), "at most 16 tiers, got 17"),
        (with("effective_from", json!("1969-12-31T23:59:59Z")), "effective_from must be in the years"),
    ];
    let mut h = H::new();
    for (c, reason) in table {
        let e = h.config_in(T, ms("2026-05-01T00:00:00Z"), c.clone());
        let out = h.one(e);
        assert!(out.reason().contains(reason), "{c}: {}", out.reason());
    }
    assert!(h.s.configs.is_empty(), "a refusal changes nothing");
    // Sixteen tiers, equal min and max, 100 %: accepted.
    let sixteen: Vec<serde_json::Value> = (1..=16).map(|i| tier(usd(i * 100), 10_000)).collect();
    let mut ok = with("tiers", json!(sixteen));
    ok["min"] = json!(usd(7));
    ok["max"] = json!(usd(7));
    ok["bps"] = json!(10_000);
    h.config(T, ms("2026-05-01T00:00:00Z"), ok);
    assert_eq!(h.s.configs.len(), 1);
}

#[test]
fn the_version_in_force_at_the_completion_time_prices_the_fee() {
    let mut h = H::new();
    let may = ms("2026-05-01T00:00:00Z");
    // v1 from its command time (May 1); v2 from June 1, sent earlier; v3 also from June 1, later (wins).
    h.config(T, may, json!({"transfer_kind": "payout", "fixed": usd(10), "bps": 0, "changed_by": "x"}));
    h.config(
        T,
        may - 10_000,
        json!({"transfer_kind": "payout", "fixed": usd(20), "bps": 0,
        "effective_from": "2026-06-01T00:00:00Z", "changed_by": "x"}),
    );
    h.config(
        T,
        may + 10_000,
        json!({"transfer_kind": "payout", "fixed": usd(30), "bps": 0,
        "effective_from": "2026-06-01T00:00:00Z", "changed_by": "x"}),
    );
    // (completion time, fee): before v1 no config; each version from its time, inclusive.
    let table: &[(&str, i64)] = &[
        ("2026-04-30T23:59:59.999Z", 0),
        ("2026-05-01T00:00:00Z", 10),
        ("2026-05-31T23:59:59.999Z", 10),
        ("2026-06-01T00:00:00Z", 30),
    ];
    for (i, &(at, fee)) in table.iter().enumerate() {
        let out = h.complete(T, &format!("tr_{i}"), "payout", usd(1000), ms(at));
        let f = out[0].fee();
        assert_eq!(f.fee, usd(fee), "{at}");
        if fee == 0 {
            assert_eq!((f.status, f.config_version.as_deref()), (FeeStatus::Waived, None));
            assert_eq!(f.reason.as_deref(), Some("no payout USD fee config in force"));
            assert!(f.booking_id.is_none());
        } else {
            assert!(
                f.config_version.as_deref().is_some_and(|v| v.ends_with(&h_event_id_suffix(fee))),
                "{f:?}"
            );
        }
    }
    // The same upsert again changes nothing.
    let versions = h.s.configs[config_key(T, TransferKind::Payout, cur("USD")).as_str()].versions.len();
    assert_eq!(versions, 3);

    fn h_event_id_suffix(fee: i64) -> String {
        // The versions were the test's envelopes 1 (10), 2 (20) and 3 (30).
        let n = match fee {
            10 => 1,
            20 => 2,
            _ => 3,
        };
        derived_id(&["billing-test", &n.to_string()]).to_string()
    }
}

#[test]
fn a_redelivered_upsert_is_applied_once_and_versions_are_bounded() {
    let mut h = H::new();
    let t0 = ms("2026-01-01T00:00:00Z");
    let c = json!({"transfer_kind": "deposit", "fixed": usd(5), "bps": 0, "changed_by": "x"});
    let e = h.config_in(T, t0, c);
    assert!(h.send(e.clone()).is_empty());
    assert!(h.send(e).is_empty());
    let key = config_key(T, TransferKind::Deposit, cur("USD"));
    assert_eq!(h.s.configs[key.as_str()].versions.len(), 1);
    for i in 1..=FEE_CONFIG_VERSIONS_MAX as i64 {
        h.config(
            T,
            t0 + i * DAY_MS,
            json!({"transfer_kind": "deposit", "fixed": usd(5 + i), "bps": 0, "changed_by": "x"}),
        );
    }
    let hist = &h.s.configs[key.as_str()];
    assert_eq!((hist.versions.len(), hist.forgotten), (FEE_CONFIG_VERSIONS_MAX, true));
    // The first version was forgotten: a transfer it would have priced is refused, not waived.
    let out = h.complete(T, "tr_old", "deposit", usd(100), t0 + 1000);
    assert!(out[0].reason().contains("before every deposit USD fee config version remembered"), "{out:?}");
    let out = h.complete(T, "tr_new", "deposit", usd(100), t0 + 40 * DAY_MS);
    assert_eq!(out[0].fee().fee, usd(5 + FEE_CONFIG_VERSIONS_MAX as i64));
}

// ---------------------------------------------------------------------------------------------------
// Fees and the saga
// ---------------------------------------------------------------------------------------------------

fn payout_config(h: &mut H, tenant: &str) {
    let c = json!({"transfer_kind": "payout", "fixed": usd(25), "bps": 50, "min": usd(100), "max": usd(2500),
                   "changed_by": "ops-1"});
    h.config(tenant, ms("2026-01-01T00:00:00Z"), c);
}

#[test]
fn only_a_completed_transfer_is_charged_and_only_once() {
    let mut h = H::new();
    payout_config(&mut h, T);
    let t = ms("2026-05-03T12:00:00Z");
    for status in
        ["INITIATED", "PENDING", "PROCESSING", "CONFIRMING", "FAILED", "CANCELLED", "REJECTED", "BLOCKED"]
    {
        let e = h.status_in(T, "tr_1", "payout", usd(100_000), status, t);
        assert!(h.send(e).is_empty(), "{status} emits nothing");
    }
    let out = h.complete(T, "tr_1", "payout", usd(100_000), t);
    let (f, b) = (out[0].fee(), out[1].booking());
    assert_eq!((f.fee, f.status, f.version, f.period.as_str()), (usd(525), FeeStatus::Booking, 1, "2026-05"));
    assert_eq!(f.monthly_volume_before, usd(0));
    assert_eq!(f.parts, vec![FeePart { amount: usd(100_000), bps: 50 }]);
    assert_eq!((f.exact.as_str(), f.clamped.as_deref()), ("525", None));
    assert_eq!(b.booking_id, fee_booking_id(T, "tr_1"));
    assert_eq!(f.booking_id.as_deref(), Some(b.booking_id.as_str()));
    assert_eq!(
        (b.purpose, b.reference.as_str(), b.requested_by.as_str()),
        (BookingPurpose::Fee, "tr_1", "billing")
    );
    assert_eq!(
        b.legs,
        vec![
            BookingLeg { account: "billing:receivable".into(), amount: usd(-525) },
            BookingLeg { account: "billing:fees".into(), amount: usd(525) },
        ]
    );
    assert_eq!(riverbank_schemas::ledger::unbalanced_currency(&b.legs), None);
    // Completed again (another event id, a later time): charged once; the volume counted once.
    let out = h.complete(T, "tr_1", "payout", usd(100_000), t + 1000);
    assert!(out.is_empty(), "{out:?}");
    let out = h.complete(T, "tr_2", "payout", usd(1000), t + 2000);
    assert_eq!(out[0].fee().monthly_volume_before, usd(100_000));
    assert_eq!(out[0].fee().clamped.as_deref(), Some("min"));
    // Another tenant's transfer of the same id is its own.
    let out = h.complete(T2, "tr_1", "payout", usd(100_000), t);
    assert_eq!(out[0].fee().status, FeeStatus::Waived, "tenant-b has no config");
}

#[test]
fn bad_completions_are_refused_and_change_nothing() {
    let mut h = H::new();
    payout_config(&mut h, T);
    let t = ms("2026-05-03T12:00:00Z");
    let long = "x".repeat(TRANSFER_ID_BYTES_MAX + 1);
    let table: Vec<(String, Money, i64, &str)> = vec![
        (long, usd(100), t, "transfer_id must be 1-128 bytes"),
        (String::new(), usd(100), t, "transfer_id must be 1-128 bytes"),
        ("tr\u{0}nul".into(), usd(100), t, "without control characters"),
        ("tr_neg".into(), usd(-1), t, "transfer amount must be positive"),
        ("tr_zero".into(), usd(0), t, "transfer amount must be positive"),
        (
            "tr_old".into(),
            usd(100),
            ms("1969-12-31T00:00:00Z"),
            "completion time must be in the years 1970-9999",
        ),
    ];
    for (id, amount, at, reason) in table {
        let e = h.status_in(T, &id, "payout", amount, "COMPLETED", at);
        let out = h.one(e);
        assert!(out.reason().contains(reason), "{id}: {out:?}");
    }
    assert!(h.s.charges.is_empty() && h.s.volumes.is_empty());
    // A volume that would overflow.
    let out = h.complete(T, "tr_big", "payout", usd(i64::MAX), t);
    assert_eq!(out.len(), 2, "{out:?}");
    let out = h.complete(T, "tr_more", "payout", usd(1), t);
    assert!(out[0].reason().contains("volume of payout USD would overflow"), "{out:?}");
}

#[test]
fn booked_fees_count_on_the_invoice_and_refused_ones_say_why() {
    let mut h = H::new();
    payout_config(&mut h, T);
    let t = ms("2026-05-03T12:00:00Z");
    let (f, inv) = h.charged(T, "tr_1", "payout", usd(100_000), t);
    assert_eq!(
        (f.status, f.version, f.invoice_id.as_deref(), f.adjustment),
        (FeeStatus::Booked, 2, Some("inv_2026-05"), false)
    );
    assert_eq!((inv.invoice_id.as_str(), inv.status, inv.version), ("inv_2026-05", InvoiceStatus::Draft, 1));
    assert_eq!(inv.period_start, DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z").expect("t"));
    assert_eq!(inv.period_end, DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").expect("t"));
    assert_eq!(inv.closes_at, DateTime::parse_from_rfc3339("2026-06-02T00:00:00Z").expect("t"));
    assert_eq!(inv.lines.len(), 1);
    let l = &inv.lines[0];
    assert_eq!(
        (l.line_id.as_str(), l.kind, l.count, l.amount),
        ("usage/payout/USD", LineKind::Usage, 1, usd(525))
    );
    assert_eq!(inv.totals, vec![usd(525)]);
    let (_, inv) = h.charged(T, "tr_2", "payout", usd(200_000), t + 1000);
    assert_eq!((inv.version, inv.lines[0].count, inv.lines[0].amount), (2, 2, usd(525 + 1025)));

    // Refused: the ledger's reason; nothing on the invoice; a second answer is ignored.
    let out = h.complete(T, "tr_3", "payout", usd(100_000), t + 2000);
    let b = out[1].booking().clone();
    let out = h.answer(T, &b, false);
    let f = out[0].fee();
    assert_eq!(
        (out.len(), f.status, f.version, f.reason.as_deref()),
        (1, FeeStatus::Refused, 2, Some("insufficient funds"))
    );
    assert!(f.invoice_id.is_none());
    assert!(h.answer(T, &b, true).is_empty(), "answered already");
    assert!(h.answer(T, &b, false).is_empty(), "answered already");

    // Booked legs other than those requested: refused, the fee still waits.
    let out = h.complete(T, "tr_4", "payout", usd(100_000), t + 3000);
    let b = out[1].booking().clone();
    let mut other = b.clone();
    other.legs[0].amount = usd(-1);
    other.legs[1].amount = usd(1);
    let out = h.answer(T, &other, true);
    assert!(out[0].reason().contains("booked other legs than the fee of transfer tr_4 requested"), "{out:?}");
    let mut wrong_id = b.clone();
    wrong_id.booking_id = "bk_other".into();
    let out = h.answer(T, &wrong_id, true);
    assert!(out[0].reason().contains("is not the one requested"), "{out:?}");
    let out = h.answer(T, &b, true);
    assert_eq!(out[1].invoice().lines[0].count, 3);

    // An answer for nothing billing asked; FX's answers are not billing's.
    let mut unknown = b.clone();
    unknown.reference = "tr_unknown".into();
    let out = h.answer(T, &unknown, true);
    assert!(out[0].reason().contains("no fee of transfer tr_unknown awaits booking"), "{out:?}");
    let mut fx = b;
    fx.purpose = BookingPurpose::FxConversion;
    assert!(h.answer(T, &fx, true).is_empty());
}

// ---------------------------------------------------------------------------------------------------
// Invoices, periods, adjustments
// ---------------------------------------------------------------------------------------------------

#[test]
fn an_invoice_finalizes_at_period_end_plus_lateness_and_leaves_the_state() {
    let mut h = H::new();
    payout_config(&mut h, T);
    h.charged(T, "tr_1", "payout", usd(100_000), ms("2026-05-31T23:59:59.999Z"));
    let key = invoice_key(T, "2026-05");
    assert!(h.s.invoices.contains_key(&key));
    // Period end + 1 day − 1 ms: still open.
    assert!(h.tick(ms("2026-06-01T23:59:59.999Z")).is_empty());
    let out = h.tick(ms("2026-06-02T00:00:00Z"));
    assert_eq!(out.len(), 1, "{out:?}");
    let inv = out[0].invoice();
    assert_eq!((inv.status, inv.version, inv.totals.clone()), (InvoiceStatus::Finalized, 2, vec![usd(525)]));
    assert!(!h.s.invoices.contains_key(&key), "finalized invoices leave the state");
    assert!(h.tick(ms("2026-07-01T00:00:00Z")).is_empty(), "finalized once");
    // The month's volumes stay for late completions, then go.
    assert_eq!(h.s.volumes.len(), 1);
    h.tick(ms("2026-06-02T00:00:00Z") + VOLUMES_KEPT_AFTER_CLOSE_MS);
    assert!(h.s.volumes.is_empty());
    let out = h.complete(T, "tr_late", "payout", usd(100), ms("2026-05-20T00:00:00Z"));
    assert!(
        out[0].reason().contains("completed in 2026-05, whose invoice closed at 2026-06-02T00:00:00.000Z"),
        "{out:?}"
    );
}

#[test]
fn a_fee_booked_after_its_month_closed_is_an_adjustment_naming_its_transfer() {
    let mut h = H::with(BillingSettings { lateness_ms: 3_600_000, ..BillingSettings::default() });
    payout_config(&mut h, T);
    h.config(
        T,
        ms("2026-01-01T00:00:00Z"),
        json!({"transfer_kind": "deposit", "fixed": usd(10), "bps": 0, "changed_by": "x"}),
    );
    h.charged(T, "tr_may", "payout", usd(100_000), ms("2026-05-20T00:00:00Z"));
    // Completed on May 31, its booking request out before the close, answered after it.
    let out = h.complete(T, "tr_1", "payout", usd(30_000), ms("2026-05-31T23:00:00Z"));
    let b1 = out[1].booking().clone();
    let out = h.tick(ms("2026-06-01T01:00:00Z"));
    assert_eq!(out[0].invoice().status, InvoiceStatus::Finalized);
    let out = h.answer(T, &b1, true);
    let (f, inv) = (out[0].fee(), out[1].invoice());
    assert_eq!(
        (f.period.as_str(), f.invoice_id.as_deref(), f.adjustment),
        ("2026-05", Some("inv_2026-06"), true)
    );
    assert_eq!((inv.period.as_str(), inv.version, inv.status), ("2026-06", 1, InvoiceStatus::Draft));
    let l = &inv.lines[0];
    assert_eq!(
        (
            l.line_id.as_str(),
            l.kind,
            l.transfer_kind,
            l.source_period.as_deref(),
            l.sources.clone(),
            l.amount
        ),
        (
            "adjustment/2026-05/payout/USD",
            LineKind::Adjustment,
            Some(TransferKind::Payout),
            Some("2026-05"),
            vec!["tr_1".to_owned()],
            usd(175)
        )
    );
    // A late completion arriving after the close: the same line grows; another kind gets its own line.
    let out = h.complete(T, "tr_2", "payout", usd(40_000), ms("2026-05-31T23:30:00Z"));
    assert_eq!(out[0].fee().monthly_volume_before, usd(130_000), "May's volume is still known");
    let b2 = out[1].booking().clone();
    let out = h.answer(T, &b2, true);
    let inv = out[1].invoice();
    assert_eq!((inv.lines.len(), inv.lines[0].count, inv.lines[0].amount), (1, 2, usd(175 + 225)));
    assert_eq!(inv.lines[0].sources, ["tr_1", "tr_2"]);
    let out = h.complete(T, "tr_3", "deposit", usd(100), ms("2026-05-10T00:00:00Z"));
    let b3 = out[1].booking().clone();
    let out = h.answer(T, &b3, true);
    let inv = out[1].invoice();
    assert_eq!(inv.lines[1].line_id, "adjustment/2026-05/deposit/USD");
    // A June fee on the same invoice is usage; the total is every line.
    let (_, inv) = h.charged(T, "tr_june", "payout", usd(100_000), ms("2026-06-05T00:00:00Z"));
    assert_eq!(
        inv.lines.iter().map(|l| l.line_id.as_str()).collect::<Vec<_>>(),
        ["adjustment/2026-05/payout/USD", "adjustment/2026-05/deposit/USD", "usage/payout/USD"]
    );
    assert_eq!(inv.totals, vec![usd(175 + 225 + 10 + 525)]);
}

#[test]
fn adjustment_lines_fold_into_their_currency_past_the_maximum() {
    let p = Period::new(2026, 6).expect("a period");
    let h = H::new();
    let mut inv = h.p.empty_invoice(p);
    let currencies: Vec<Currency> = Currency::all().collect();
    assert!(currencies.len() <= CURRENCIES_MAX);
    let mut n: u64 = 0;
    // Far more (source month, currency) groups than lines: each currency's total stays right.
    for month in 1..=12u32 {
        for year in [2020, 2021, 2022] {
            for c in &currencies {
                let period = Period::new(year, month).expect("a period").label();
                let counted = Counted {
                    fee: Money::new(3, *c),
                    kind: Some(TransferKind::Payout),
                    period: &period,
                    source: format!("tr_{n}"),
                    plan: "",
                    adjustment: true,
                };
                add_charge(&mut inv, &counted).expect("added");
                n += 1;
            }
        }
    }
    assert!(n > INVOICE_LINES_MAX as u64);
    assert!(inv.lines.len() <= INVOICE_LINES_MAX, "{} lines", inv.lines.len());
    let totals = checked_totals(&inv).expect("consistent");
    assert_eq!(totals.len(), currencies.len());
    for t in totals {
        assert_eq!(t.amount_minor, 3 * 36, "{t}");
    }
    assert!(inv.lines.iter().any(|l| l.description.ends_with("(and later adjustments folded in)")));
    assert_eq!(inv.lines.iter().map(|l| l.count).sum::<u64>(), n);
    // Usage lines still fit after the fold.
    for c in &currencies {
        for k in
            [TransferKind::Deposit, TransferKind::Withdrawal, TransferKind::Internal, TransferKind::Payout]
        {
            let counted = Counted {
                fee: Money::new(1, *c),
                kind: Some(k),
                period: "2026-06",
                source: "t".into(),
                plan: "",
                adjustment: false,
            };
            add_charge(&mut inv, &counted).expect("added");
        }
    }
    assert!(inv.lines.len() <= INVOICE_LINES_MAX, "{} lines", inv.lines.len());
    // An inconsistency is named.
    inv.counted[0].amount_minor += 1;
    assert!(checked_totals(&inv).unwrap_err().contains("is inconsistent: its lines total"));
}

// ---------------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------------

#[test]
fn a_plan_is_charged_once_per_month_and_opens_the_next_month() {
    let mut h = H::new();
    h.tick(ms("2026-04-25T00:00:00Z"));
    let out = h.plan(T, ms("2026-04-25T09:00:00Z"), "growth", usd(4900), Some("2026-05-01T00:00:00Z"));
    let b = out[0].booking().clone();
    assert_eq!((out.len(), b.purpose, b.reference.as_str()), (1, BookingPurpose::Plan, "2026-05"));
    assert_eq!(b.booking_id, plan_booking_id(T, "2026-05"));
    let out = h.answer(T, &b, true);
    let inv = out[0].invoice();
    assert_eq!((out.len(), inv.period.as_str()), (1, "2026-05"));
    let l = &inv.lines[0];
    assert_eq!(
        (l.line_id.as_str(), l.kind, l.transfer_kind, l.amount),
        ("plan/growth", LineKind::Plan, None, usd(4900))
    );
    // A plan change within May is not charged again for May.
    let out = h.plan(T, ms("2026-05-10T00:00:00Z"), "scale", usd(9900), None);
    assert!(out.is_empty(), "{out:?}");
    // May closes: June opens and is charged the plan in force at its start (scale).
    let out = h.tick(ms("2026-06-02T00:00:00Z"));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].invoice().status, InvoiceStatus::Finalized);
    let b = out[1].booking().clone();
    assert_eq!((b.reference.as_str(), b.legs[1].amount), ("2026-06", usd(9900)));
    // Refused: said, and June's invoice has no line for it.
    let out = h.answer(T, &b, false);
    assert!(
        out[0].reason().contains("the ledger refused the plan charge for 2026-06: insufficient funds"),
        "{out:?}"
    );
    // The plan ends (fee 0) from July: June's close opens nothing.
    assert!(h.plan(T, ms("2026-06-10T00:00:00Z"), "none", usd(0), Some("2026-07-01T00:00:00Z")).is_empty());
    let out = h.tick(ms("2026-07-02T00:00:00Z"));
    assert!(out.is_empty(), "June had no lines, July no plan: {out:?}");
    assert!(h.s.invoices.is_empty());
}

#[test]
fn a_plan_booked_after_its_month_closed_is_an_adjustment_and_backfill_is_bounded() {
    let mut h = H::new();
    h.tick(ms("2026-05-02T00:00:00Z"));
    let out = h.plan(T, ms("2026-05-02T00:00:00Z"), "growth", usd(4900), None);
    let b = out[0].booking().clone();
    // No ticks for 20 months: May closes, then June … the next opened is 12 months before the clock.
    let out = h.tick(ms("2028-01-15T00:00:00Z"));
    let refs: Vec<&str> = out.iter().map(|o| o.booking().reference.as_str()).collect();
    assert_eq!(refs.first(), Some(&"2027-01"), "{refs:?}");
    assert_eq!(refs.last(), Some(&"2028-01"), "{refs:?}");
    assert_eq!(refs.len(), 13);
    assert_eq!(h.s.invoices.len(), 1, "only the clock's month is still open");
    let out = h.answer(T, &b, true);
    let l = &out[0].invoice().lines[0];
    assert_eq!(
        (out[0].invoice().period.as_str(), l.line_id.as_str()),
        ("2028-01", "adjustment/2026-05/plan/USD")
    );
    assert_eq!(l.sources, ["plan:growth"]);
}

#[test]
fn invalid_plans_are_refused() {
    let mut h = H::new();
    let t = ms("2026-05-02T00:00:00Z");
    for (name, fee, reason) in [
        ("", usd(100), "plan must be 1-64"),
        ("bad\nname", usd(100), "plan must be 1-64"),
        ("growth", usd(-1), "fee must be 0-"),
    ] {
        let out = h.plan(T, t, name, fee, None);
        assert!(out[0].reason().contains(reason), "{out:?}");
    }
    let out = h.plan(T, t, "growth", usd(100), Some("1960-01-01T00:00:00Z"));
    assert!(out[0].reason().contains("effective_from must be in the years"), "{out:?}");
    assert!(h.s.plans.is_empty() && h.s.invoices.is_empty());
}

// ---------------------------------------------------------------------------------------------------
// Bounds and state
// ---------------------------------------------------------------------------------------------------

#[test]
fn remembered_fees_are_forgotten_oldest_first_in_an_order_a_restore_keeps() {
    let mut h = H::with(BillingSettings { fees_remembered_max: 3, ..BillingSettings::default() });
    payout_config(&mut h, T);
    let t = ms("2026-05-03T12:00:00Z");
    let mut bookings = Vec::new();
    for i in 0..3 {
        let out = h.complete(T, &format!("tr_{i}"), "payout", usd(100_000), t + i);
        bookings.push(out[1].booking().clone());
    }
    // Restore from a snapshot: the order is rebuilt from the state.
    let snap: Vec<(String, Encoded)> =
        h.s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
    h.s = BillingState::restore(&snap).expect("restores");
    assert_eq!(h.s.charge_order(), [&fee_key(T, "tr_0"), &fee_key(T, "tr_1"), &fee_key(T, "tr_2")]);
    h.complete(T, "tr_3", "payout", usd(100_000), t + 3);
    assert_eq!(h.s.charge_order(), [&fee_key(T, "tr_1"), &fee_key(T, "tr_2"), &fee_key(T, "tr_3")]);
    // tr_0's answer: forgotten, so refused with the reason; tr_1's counts.
    let out = h.answer(T, &bookings[0], true);
    assert!(out[0].reason().contains("forgotten past billing.fees_remembered_max"), "{out:?}");
    assert_eq!(h.answer(T, &bookings[1], true).len(), 2);
}

#[test]
fn open_invoices_past_the_maximum_are_refused_before_anything_is_booked() {
    let mut h = H::with(BillingSettings { open_invoices_max: 1, ..BillingSettings::default() });
    payout_config(&mut h, T);
    payout_config(&mut h, T2);
    let t = ms("2026-05-03T12:00:00Z");
    h.charged(T, "tr_1", "payout", usd(100_000), t);
    let out = h.complete(T2, "tr_1", "payout", usd(100_000), t);
    assert!(out[0].reason().contains("already holds 1 open invoices (billing.open_invoices_max)"), "{out:?}");
    assert!(!h.s.charges.contains_key(&fee_key(T2, "tr_1")), "refused: not remembered, not booked");
    // A fee waived needs no invoice; a fee for the open invoice still books.
    let out = h.complete(T2, "tr_2", "internal", usd(100_000), t);
    assert_eq!(out[0].fee().status, FeeStatus::Waived);
    assert_eq!(h.complete(T, "tr_2", "payout", usd(100_000), t).len(), 2);
    let out = h.plan(T2, t, "growth", usd(100), None);
    assert!(out[0].reason().contains("open_invoices_max"), "{out:?}");
}

#[test]
fn periods_are_calendar_months_utc() {
    let table: &[(&str, &str, &str, &str)] = &[
        ("2026-05-31T23:59:59.999Z", "2026-05", "2026-05-01T00:00:00Z", "2026-06-01T00:00:00Z"),
        ("2026-12-01T00:00:00Z", "2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("2028-02-29T12:00:00Z", "2028-02", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        ("1970-01-01T00:00:00Z", "1970-01", "1970-01-01T00:00:00Z", "1970-02-01T00:00:00Z"),
    ];
    for &(t, label, start, end) in table {
        let p = Period::of_ms(ms(t)).expect("a period");
        assert_eq!(p.label(), label);
        assert_eq!(label, period_of(DateTime::parse_from_rfc3339(t).expect("t").with_timezone(&Utc)));
        assert_eq!((p.start_ms(), p.end_ms()), (ms(start), ms(end)), "{t}");
        assert_eq!(Period::parse(label), Some(p));
    }
    assert_eq!(Period::new(9999, 12).and_then(Period::next), None);
    assert_eq!(Period::new(2026, 1).and_then(|p| p.back(1)).map(Period::label).as_deref(), Some("2025-12"));
    assert_eq!(Period::of_ms(-1), None);
    assert_eq!(Period::of_ms(i64::MAX), None);
    for bad in ["2026-13", "2026-00", "26-05", "2026-5", "20a6-05", "10000-01"] {
        assert_eq!(Period::parse(bad), None, "{bad}");
    }
    assert!(Currency::all().count() <= CURRENCIES_MAX);
    const _: () = assert!(
        ADJUSTMENT_LINES_NEW_MAX + TRANSFER_KINDS * CURRENCIES_MAX + 1 + CURRENCIES_MAX <= INVOICE_LINES_MAX
    );
}

// ---------------------------------------------------------------------------------------------------
// The examples, as the conformance suite delivers them
// ---------------------------------------------------------------------------------------------------

/// The examples with a tick at each one's time and a far one at the end (as tests/registry.rs does).
fn run_examples(h: &mut H, examples: &[RawEnvelope]) -> Vec<(usize, String, Out)> {
    let mut out = Vec::new();
    let mut last = 0;
    for (i, e) in examples.iter().enumerate() {
        let at = h.at();
        match h.p.apply(&mut h.s, &at, e.clone()) {
            Verdict::Emit(emits) => out.extend(emits.iter().map(|x| {
                let (t, o) = decode_out(x);
                (i, t, o)
            })),
            Verdict::Poison(_) => {}
        }
        last = last.max(e.occurred_at.timestamp_millis());
        out.extend(h.tick_raw(e.occurred_at.timestamp_millis()).iter().map(|x| {
            let (t, o) = decode_out(x);
            (i, t, o)
        }));
    }
    out.extend(h.tick_raw(last + 90 * DAY_MS).iter().map(|x| {
        let (t, o) = decode_out(x);
        (examples.len(), t, o)
    }));
    out
}

#[test]
fn the_examples_tell_the_month_they_describe() {
    let examples = examples(Environment::Live);
    let mut h = H::new();
    let out = run_examples(&mut h, &examples);
    let rejected: Vec<&str> = out
        .iter()
        .filter_map(|(_, _, o)| match o {
            Out::Rejected(r) => Some(r.reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 5, "{rejected:#?}");
    assert!(rejected[0].contains("min 5.00 USD is above max 1.00 USD"));
    assert!(rejected[1].contains("tier 1 monthly_volume_from is in EUR"));
    assert!(rejected[2].contains("no fee of transfer tr_nope awaits"));
    assert!(rejected[3].contains("transfer amount must be positive"));
    assert!(rejected[4].contains("plan must be 1-64"));
    // Final fee records per transfer.
    let mut fees: BTreeMap<(String, String), FeeCharged> = BTreeMap::new();
    for (_, t, o) in &out {
        if let Out::Fee(f) = o {
            fees.insert((t.clone(), f.transfer_id.clone()), f.clone());
        }
    }
    let fee = |t: &str, id: &str| fees[&(t.to_owned(), id.to_owned())].clone();
    let want: &[(&str, &str, Money, FeeStatus)] = &[
        (T, "tr_p1", usd(525), FeeStatus::Booked),
        (T, "tr_d1", usd(2400), FeeStatus::Booked),
        (T, "tr_d2", usd(800), FeeStatus::Refused),
        (T, "tr_w1", Money::new(2300, cur("EUR")), FeeStatus::Booked),
        (T, "tr_i1", usd(0), FeeStatus::Waived),
        (T, "tr_p4", usd(100), FeeStatus::Booked),
        (T2, "tb_p1", Money::new(31, cur("KWD")), FeeStatus::Booked),
        (T, "tr_p6", usd(930), FeeStatus::Booked),
        (T, "tr_p5", usd(175), FeeStatus::Booked),
    ];
    assert_eq!(fees.len(), want.len(), "{:?}", fees.keys());
    for &(t, id, amount, status) in want {
        let f = fee(t, id);
        assert_eq!((f.fee, f.status), (amount, status), "{id}");
    }
    assert_eq!(fee(T, "tr_d2").monthly_volume_before, usd(800_000));
    assert_eq!(fee(T, "tr_w1").parts.len(), 2);
    assert_eq!(fee(T, "tr_p4").clamped.as_deref(), Some("min"));
    assert!(fee(T, "tr_p5").adjustment);
    // The last version of each invoice.
    let mut invoices: BTreeMap<(String, String), InvoiceRecorded> = BTreeMap::new();
    for (_, t, o) in &out {
        if let Out::Invoice(i) = o {
            invoices.insert((t.clone(), i.invoice_id.clone()), i.clone());
        }
    }
    let may = &invoices[&(T.to_owned(), "inv_2026-05".to_owned())];
    assert_eq!(may.status, InvoiceStatus::Finalized);
    assert_eq!(may.totals, vec![Money::new(2300, cur("EUR")), usd(4900 + 525 + 2400 + 100)]);
    let june = &invoices[&(T.to_owned(), "inv_2026-06".to_owned())];
    assert_eq!(june.status, InvoiceStatus::Finalized);
    let ids: Vec<&str> = june.lines.iter().map(|l| l.line_id.as_str()).collect();
    assert_eq!(ids, ["usage/payout/USD", "plan/growth", "adjustment/2026-05/payout/USD"]);
    assert_eq!(june.lines[2].sources, ["tr_p5"]);
    assert_eq!(invoices[&(T2.to_owned(), "inv_2026-05".to_owned())].totals, vec![Money::new(31, cur("KWD"))]);
    // The final tick closes June and charges the plan for July to September (no answers for those).
    let plans: Vec<&str> = out
        .iter()
        .filter_map(|(i, _, o)| match o {
            Out::Booking(b) if b.purpose == BookingPurpose::Plan && *i == examples.len() => {
                Some(b.reference.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(plans, ["2026-07", "2026-08", "2026-09"]);
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

fn config_strategy() -> impl Strategy<Value = ConfigVersion> {
    let tiers = proptest::collection::btree_set(1i64..10_000_000, 0..6);
    (
        0i64..5_000,
        0u32..=BPS_MAX,
        proptest::option::of(0i64..3_000),
        proptest::option::of(0i64..100_000),
        tiers,
        any::<bool>(),
    )
        .prop_flat_map(|(fixed, bps, min, max, tiers, graduated)| {
            let n = tiers.len();
            (Just((fixed, bps, min, max, tiers, graduated)), proptest::collection::vec(0u32..=BPS_MAX, n))
        })
        .prop_map(|((fixed, bps, min, max, tiers, graduated), tier_bps)| {
            let (min, max) = match (min, max) {
                (Some(a), Some(b)) if a > b => (Some(b), Some(a)),
                other => other,
            };
            ConfigVersion {
                tiers: tiers.into_iter().zip(tier_bps).collect(),
                pricing: if graduated { TierPricing::Graduated } else { TierPricing::Volume },
                ..flat(fixed, bps, min, max)
            }
        })
}

proptest! {
    /// A fee always lies within [min, max], its parts cover the amount, and without a clamp it is
    /// within half a minor unit of the exact value.
    #[test]
    fn a_fee_lies_within_min_and_max(
        cfg in config_strategy(),
        amount in 1i64..=AMOUNT_MINOR_MAX,
        before in 0i64..=AMOUNT_MINOR_MAX,
        up in any::<bool>(),
    ) {
        let mode = if up { RoundingMode::HalfUp } else { RoundingMode::HalfEven };
        let p = price(&cfg, amount, before, mode).expect("amounts within the maximum price");
        if let Some(min) = cfg.min {
            prop_assert!(p.fee >= min.amount_minor, "{p:?} below {min}");
        }
        if let Some(max) = cfg.max {
            prop_assert!(p.fee <= max.amount_minor, "{p:?} above {max}");
        }
        prop_assert_eq!(p.parts.iter().map(|x| i128::from(x.0)).sum::<i128>(), i128::from(amount));
        if p.clamped.is_none() {
            let exact: i128 = i128::from(cfg.fixed.amount_minor) * 10_000
                + p.parts.iter().map(|(a, b)| i128::from(*a) * i128::from(*b)).sum::<i128>();
            prop_assert!((i128::from(p.fee) * 10_000 - exact).abs() * 2 <= 10_000, "{p:?}");
        }
    }
}

/// One step of a generated stream.
#[derive(Debug, Clone)]
enum Step {
    /// A transfer reaches a status: (tenant, kind, currency, amount, completion day offset, status).
    Status { tenant: usize, kind: usize, currency: usize, amount: i64, day: i64, status: usize, id: u8 },
    /// The ledger answers the pending booking at `index` (booked or refused), maybe twice.
    Answer { index: usize, booked: bool, twice: bool },
    /// The clock moves on by this many hours.
    Tick(i64),
    /// A plan for a tenant from a day offset (fee 0 ends it).
    Plan { tenant: usize, day: i64, fee: i64 },
    /// A checkpoint and restore (changes nothing).
    Restore,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..2, 0usize..4, 0usize..2, 1i64..5_000_000, 0i64..120, 0usize..4, any::<u8>())
            .prop_map(|(tenant, kind, currency, amount, day, status, id)| Step::Status { tenant, kind, currency, amount, day, status, id }),
        6 => (any::<usize>(), proptest::bool::weighted(0.8), proptest::bool::weighted(0.1))
            .prop_map(|(index, booked, twice)| Step::Answer { index, booked, twice }),
        3 => (1i64..24 * 20).prop_map(Step::Tick),
        1 => (0usize..2, 0i64..120, prop_oneof![3 => 100i64..10_000, 1 => Just(0i64)])
            .prop_map(|(tenant, day, fee)| Step::Plan { tenant, day, fee }),
        1 => Just(Step::Restore),
    ]
}

/// A run over a generated stream: every output, the ledger's booked legs, and what stayed pending.
struct Run {
    emits: Vec<Emit>,
    /// Σ of the `billing:fees` legs of every fee booking the ledger booked, per currency.
    fee_legs: BTreeMap<Currency, i64>,
    /// The same for plan bookings.
    plan_legs: BTreeMap<Currency, i64>,
}

fn simulate(steps: &[Step], restore: bool) -> Run {
    let mut h = H::with(BillingSettings { lateness_ms: 6 * 3_600_000, ..BillingSettings::default() });
    let tenants = [T, T2];
    let kinds = ["deposit", "withdrawal", "internal", "payout"];
    let currencies = [cur("USD"), cur("JPY")];
    let start = ms("2026-03-01T00:00:00Z");
    h.tick_raw(start);
    let mut emits = Vec::new();
    // Configs: every shape, for both tenants and currencies (internal has none: waived).
    for t in tenants {
        for c in currencies {
            let m = |x: i64| Money::new(x, c);
            let tier = |from: i64, bps: u32| json!({"monthly_volume_from": m(from), "bps": bps});
            let configs = [
                json!({"transfer_kind": "payout", "fixed": m(25), "bps": 50, "min": m(100), "max": m(2500), "changed_by": "x"}),
                json!({"transfer_kind": "deposit", "fixed": m(0), "bps": 30, "tiers": [tier(1_000_000, 20), tier(5_000_000, 10)],
                       "pricing": "volume", "changed_by": "x"}),
                json!({"transfer_kind": "withdrawal", "fixed": m(50), "bps": 40, "tiers": [tier(500_000, 25), tier(2_000_000, 10)],
                       "pricing": "graduated", "changed_by": "x"}),
                json!({"transfer_kind": "payout", "fixed": m(30), "bps": 45, "effective_from": "2026-04-15T00:00:00Z", "changed_by": "x"}),
            ];
            for c in configs {
                let e = h.config_in(t, start, c);
                emits.extend(h.send_raw(e));
            }
        }
    }
    let mut pending: Vec<(String, BookingRequested)> = Vec::new();
    let (mut fee_legs, mut plan_legs): (BTreeMap<Currency, i64>, BTreeMap<Currency, i64>) =
        Default::default();
    let mut book = |b: &BookingRequested| {
        let legs = if b.purpose == BookingPurpose::Plan { &mut plan_legs } else { &mut fee_legs };
        *legs.entry(b.legs[1].amount.currency).or_default() += b.legs[1].amount.amount_minor;
    };
    let take = |emits: &mut Vec<Emit>, new: Vec<Emit>, pending: &mut Vec<(String, BookingRequested)>| {
        for e in &new {
            if let (t, Out::Booking(b)) = decode_out(e) {
                pending.push((t, b));
            }
        }
        emits.extend(new);
    };
    let statuses = ["COMPLETED", "COMPLETED", "FAILED", "CANCELLED"];
    for s in steps {
        match s {
            Step::Status { tenant, kind, currency, amount, day, status, id } => {
                let e = h.status_in(
                    tenants[*tenant],
                    &format!("tr_{id}"),
                    kinds[*kind],
                    Money::new(*amount, currencies[*currency]),
                    statuses[*status],
                    start + day * DAY_MS,
                );
                let new = h.send_raw(e);
                take(&mut emits, new, &mut pending);
            }
            Step::Answer { index, booked, twice } => {
                if pending.is_empty() {
                    continue;
                }
                let (t, b) = pending.remove(index % pending.len());
                if *booked {
                    book(&b);
                }
                let e = h.answer_in(&t, &b, *booked, (!booked).then_some("insufficient funds"));
                let copies = if *twice { 2 } else { 1 };
                for _ in 0..copies {
                    let new = h.send_raw(e.clone());
                    take(&mut emits, new, &mut pending);
                }
            }
            Step::Tick(hours) => {
                let new = h.tick_raw(h.now_ms + hours * 3_600_000);
                take(&mut emits, new, &mut pending);
            }
            Step::Plan { tenant, day, fee } => {
                let from = DateTime::from_timestamp_millis(start + day * DAY_MS).expect("t").to_rfc3339();
                let p = json!({"plan": "basic", "fee": usd(*fee), "effective_from": from, "changed_by": "x"});
                let at = h.now_ms;
                let e = h.envelope(tenants[*tenant], command_types::BILLING_PLAN_SET, at, p);
                let new = h.send_raw(e);
                take(&mut emits, new, &mut pending);
            }
            Step::Restore if restore => {
                let snap: Vec<(String, Encoded)> =
                    h.s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
                h.s = BillingState::restore(&snap).expect("restores");
            }
            Step::Restore => {}
        }
    }
    // Settle: book everything still pending, and close every month (the plans' next months included).
    for _ in 0..4 {
        while let Some((t, b)) = pending.pop() {
            book(&b);
            let e = h.answer_in(&t, &b, true, None);
            let new = h.send_raw(e);
            take(&mut emits, new, &mut pending);
        }
        let new = h.tick_raw(h.now_ms + 40 * DAY_MS);
        take(&mut emits, new, &mut pending);
    }
    Run { emits, fee_legs, plan_legs }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Σ invoice lines (each invoice's last version) = Σ fees and plan charges booked = Σ fee legs of
    /// the bookings the ledger booked; each invoice's totals are its lines; every fee lies in its
    /// config's bounds and nothing is refused but late completions.
    #[test]
    fn invoice_lines_fees_and_fee_legs_agree(steps in proptest::collection::vec(step(), 0..80)) {
        let run = simulate(&steps, false);
        let mut invoices: BTreeMap<(String, String), InvoiceRecorded> = BTreeMap::new();
        let mut fees: BTreeMap<(String, String), FeeCharged> = BTreeMap::new();
        let mut plan_months = std::collections::BTreeSet::new();
        for e in &run.emits {
            match decode_out(e) {
                (t, Out::Invoice(i)) => {
                    let key = (t, i.invoice_id.clone());
                    if let Some(prev) = invoices.get(&key) {
                        prop_assert!(i.version > prev.version, "versions grow: {prev:?} then {i:?}");
                        prop_assert_eq!(prev.status, InvoiceStatus::Draft, "nothing after finalized");
                    }
                    let mut sums: BTreeMap<Currency, i64> = BTreeMap::new();
                    for l in &i.lines {
                        *sums.entry(l.amount.currency).or_default() += l.amount.amount_minor;
                    }
                    let totals: Vec<Money> = sums.into_iter().map(|(c, a)| Money::new(a, c)).collect();
                    prop_assert_eq!(&i.totals, &totals);
                    invoices.insert(key, i);
                }
                (t, Out::Fee(f)) => {
                    prop_assert!(f.fee.amount_minor >= 0);
                    fees.insert((t, f.transfer_id.clone()), f);
                }
                (t, Out::Booking(b)) if b.purpose == BookingPurpose::Plan => {
                    prop_assert!(plan_months.insert((t, b.reference.clone())), "a plan month charged twice");
                }
                (_, Out::Rejected(r)) => prop_assert!(
                    r.reason.contains("monthly volumes (and so fees) are kept only")
                        || r.reason.contains("the ledger refused the plan charge"),
                    "{}", r.reason
                ),
                _ => {}
            }
        }
        let nonzero = |mut m: BTreeMap<Currency, i64>| {
            m.retain(|_, v| *v != 0);
            m
        };
        let (mut lines, mut plan_lines): (BTreeMap<Currency, i64>, BTreeMap<Currency, i64>) = Default::default();
        for i in invoices.values() {
            for l in &i.lines {
                *lines.entry(l.amount.currency).or_default() += l.amount.amount_minor;
                if l.transfer_kind.is_none() {
                    *plan_lines.entry(l.amount.currency).or_default() += l.amount.amount_minor;
                }
            }
        }
        let mut fees_booked: BTreeMap<Currency, i64> = BTreeMap::new();
        for f in fees.values().filter(|f| f.status == FeeStatus::Booked) {
            *fees_booked.entry(f.fee.currency).or_default() += f.fee.amount_minor;
        }
        let mut legs = run.fee_legs.clone();
        for (c, a) in &run.plan_legs {
            *legs.entry(*c).or_default() += a;
        }
        prop_assert_eq!(nonzero(lines), nonzero(legs), "Σ invoice lines = Σ fee and plan legs booked");
        prop_assert_eq!(nonzero(fees_booked), nonzero(run.fee_legs.clone()), "Σ fees booked = Σ fee legs booked");
        prop_assert_eq!(nonzero(plan_lines), nonzero(run.plan_legs.clone()), "Σ plan lines = Σ plan legs booked");
    }

    /// The same stream gives the same bytes, with or without checkpoint restores along the way.
    #[test]
    fn replay_is_identical(steps in proptest::collection::vec(step(), 0..60)) {
        let a = simulate(&steps, false);
        let b = simulate(&steps, false);
        let c = simulate(&steps, true);
        prop_assert_eq!(&a.emits, &b.emits);
        prop_assert_eq!(&a.emits, &c.emits);
    }
}
