// Table tests spell their rows out as tuples.
#![allow(clippy::type_complexity)]

use proptest::prelude::*;
use riverbank_schemas::processor::Via;
use riverbank_schemas::state::{Encoded, State as _};
use serde_json::json;

use super::*;

const T: &str = "tenant-a";
const T2: &str = "tenant-b";

fn cur(code: &str) -> Currency {
    Currency::from_code(code).expect("a known currency")
}

fn m(minor: i64, code: &str) -> Money {
    Money::new(minor, cur(code))
}

/// 2026-11-22T07:00:00Z.
const T0_MS: i64 = 1_795_330_800_000;

/// One decoded output.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Quote(QuoteRecorded),
    Conversion(ConversionRecorded),
    Rejected(FxInputRejected),
    Booking(BookingRequested),
    Rates(FxRatesPublished),
}

impl Out {
    fn quote(&self) -> &QuoteRecorded {
        match self {
            Out::Quote(q) => q,
            o => panic!("expected a quote, got {o:?}"),
        }
    }
    fn conversion(&self) -> &ConversionRecorded {
        match self {
            Out::Conversion(c) => c,
            o => panic!("expected a conversion, got {o:?}"),
        }
    }
    fn rejected(&self) -> &FxInputRejected {
        match self {
            Out::Rejected(r) => r,
            o => panic!("expected a rejection, got {o:?}"),
        }
    }
    fn booking(&self) -> &BookingRequested {
        match self {
            Out::Booking(b) => b,
            o => panic!("expected a booking request, got {o:?}"),
        }
    }
}

fn decode_out(e: &Emit) -> Out {
    let env: RawEnvelope = serde_json::from_slice(&e.payload).expect("an envelope");
    assert_eq!(env.event_id, e.event_id);
    assert_eq!(env.tenant_id, e.key, "keyed by tenant");
    assert_eq!(env.source, SOURCE);
    let topics = Topics::new("");
    let on = |topic: String| assert_eq!(e.topic, topic, "{} goes to {topic}", env.event_type);
    let p = env.payload;
    match env.event_type.as_str() {
        QuoteRecorded::EVENT_TYPE => {
            on(topics.fx_events(Environment::Live));
            Out::Quote(serde_json::from_value(p).expect("a quote"))
        }
        ConversionRecorded::EVENT_TYPE => {
            on(topics.fx_events(Environment::Live));
            Out::Conversion(serde_json::from_value(p).expect("a conversion"))
        }
        FxInputRejected::EVENT_TYPE => {
            on(topics.fx_events(Environment::Live));
            Out::Rejected(serde_json::from_value(p).expect("a rejection"))
        }
        BookingRequested::EVENT_TYPE => {
            on(topics.transfer_inputs(Environment::Live));
            Out::Booking(serde_json::from_value(p).expect("a booking"))
        }
        it::RATES_PUBLISHED => {
            on(topics.fx_rates(Environment::Live));
            Out::Rates(serde_json::from_value(p).expect("rates"))
        }
        other => panic!("unexpected output {other}"),
    }
}

/// A processor, its state and the partition clock (ticks).
struct H {
    p: FxProcessor,
    s: FxState,
    seq: u64,
    now_ms: i64,
    offset: i64,
    /// The id of the last input made.
    last: Uuid,
}

impl H {
    fn new() -> Self {
        Self::with(FxSettings::default())
    }
    fn with(settings: FxSettings) -> Self {
        let mut h = H {
            p: FxProcessor::new(Topics::new(""), settings),
            s: FxState::new(),
            seq: 0,
            now_ms: 0,
            offset: 0,
            last: Uuid::nil(),
        };
        h.tick(T0_MS);
        h
    }
    fn at(&mut self, via: Via<'static>) -> InputRef<'static> {
        self.offset += 1;
        InputRef {
            topic: "live.fx.inputs",
            partition: 0,
            offset: self.offset,
            environment: Environment::Live,
            now_ms: self.now_ms,
            via,
        }
    }
    fn envelope(&mut self, tenant: &str, event_type: &str, payload: serde_json::Value) -> RawEnvelope {
        self.seq += 1;
        let id = derived_id(&["fx-test", &self.seq.to_string()]);
        self.last = id;
        let at = DateTime::from_timestamp_millis(self.now_ms.max(0)).expect("a time");
        Envelope::new(id, event_type, tenant, Environment::Live, at, "test", payload)
    }
    fn send_via(&mut self, e: RawEnvelope, via: Via<'static>) -> Vec<Out> {
        let at = self.at(via);
        match self.p.apply(&mut self.s, &at, e) {
            Verdict::Emit(out) => out.iter().map(decode_out).collect(),
            Verdict::Poison(reason) => panic!("poison: {reason}"),
        }
    }
    fn send(&mut self, e: RawEnvelope) -> Vec<Out> {
        self.send_via(e, Via::Log)
    }
    fn one(&mut self, e: RawEnvelope) -> Out {
        let out = self.send(e);
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].clone()
    }
    /// Publish rates observed `age_ms` before the clock.
    fn rates(&mut self, age_ms: i64, rates: &[(&str, &str, i64)]) -> Vec<Out> {
        let as_of = DateTime::from_timestamp_millis(self.now_ms - age_ms).expect("a time");
        let rates: Vec<_> =
            rates.iter().map(|(b, q, r)| json!({"base": b, "quote": q, "rate_e9": r})).collect();
        let e = self.envelope(
            "tenant-rates",
            it::RATES_PUBLISHED,
            json!({"as_of": as_of, "rates": rates, "published_by": "rates-desk"}),
        );
        self.send_via(e, Via::Broadcast { topic: "live.fx.rates", partition: 0, offset: 41 })
    }
    fn quote_in(&mut self, tenant: &str, id: &str, sell: &str, buy: &str, fixed: Money) -> RawEnvelope {
        let mut p =
            json!({"quote_id": id, "sell_currency": sell, "buy_currency": buy, "requested_by": "user:maker"});
        p[if fixed.currency == cur(sell) { "sell_amount" } else { "buy_amount" }] = json!(fixed);
        self.envelope(tenant, it::QUOTE_REQUESTED, p)
    }
    fn quote(&mut self, id: &str, sell: &str, buy: &str, fixed: Money) -> QuoteRecorded {
        let e = self.quote_in(T, id, sell, buy, fixed);
        self.one(e).quote().clone()
    }
    fn convert_in(&mut self, tenant: &str, id: &str, quote: &str, by: &str) -> RawEnvelope {
        let p = json!({"conversion_id": id, "quote_id": quote, "source_account": "acct_1",
                       "destination_account": "acct_2", "requested_by": by});
        self.envelope(tenant, it::CONVERSION_REQUESTED, p)
    }
    fn convert(&mut self, id: &str, quote: &str) -> Vec<Out> {
        let e = self.convert_in(T, id, quote, "user:maker");
        self.send(e)
    }
    fn decide(&mut self, id: &str, decision: &str, actor: &str) -> Vec<Out> {
        let p = json!({"conversion_id": id, "decision": decision, "actor": actor, "reason": "checked"});
        let e = self.envelope(T, it::CONVERSION_DECIDED, p);
        self.send(e)
    }
    fn answer(&mut self, conv: &str, outcome: &str, reason: Option<&str>) -> Vec<Out> {
        let p = json!({"booking_id": booking_id(T, conv), "purpose": "fx_conversion", "reference": conv,
                       "outcome": outcome, "reason": reason, "legs": []});
        let e = self.envelope(T, BookingRecorded::EVENT_TYPE, p);
        self.send(e)
    }
    /// Move the partition clock to `now_ms` and fire the timers due, as the runtime does on a tick.
    fn tick(&mut self, now_ms: i64) -> Vec<Out> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        while let Some(t) = self.s.timers.pop_due(self.now_ms) {
            let at = self.at(Via::Log);
            match self.p.on_timer(&mut self.s, &at, t) {
                Verdict::Emit(e) => out.extend(e.iter().map(decode_out)),
                Verdict::Poison(r) => panic!("timer poisoned: {r}"),
            }
        }
        out
    }
    fn advance(&mut self, ms: i64) -> Vec<Out> {
        self.tick(self.now_ms + ms)
    }
}

fn code(reason: Option<&str>) -> &str {
    reason.and_then(|r| r.split_once(':')).map_or("", |(c, _)| c)
}

const EUR_USD: (&str, &str, i64) = ("EUR", "USD", 1_084_500_000);
const USD_JPY: (&str, &str, i64) = ("USD", "JPY", 151_230_000_000);

// ---------------------------------------------------------------------------------------------------
// Quotes
// ---------------------------------------------------------------------------------------------------

#[test]
fn quotes_direct_inverse_and_through_the_pivot() {
    let mut h = H::new();
    h.rates(1_000, &[EUR_USD, USD_JPY]);
    let publication = h.last.to_string();
    // (id, sell, buy, fixed, mid_e9, rate_e9, sell, buy, rates used, inverted, pivot)
    let cases: &[(&str, &str, &str, Money, i64, i64, Money, Money, usize, bool, Option<&str>)] = &[
        // 1,000.00 EUR at 1.0845 less 50 bps = 1.0790775: B* = 1079.0775 → 1079.08.
        (
            "q1",
            "EUR",
            "USD",
            m(100_000, "EUR"),
            1_084_500_000,
            1_079_077_500,
            m(100_000, "EUR"),
            m(107_908, "USD"),
            1,
            false,
            None,
        ),
        // JPY per USD inverted: 10^18 / 151.23e9 = 6,612,444.62 → 6,612,445; less 50 bps → 6,579,383.
        // Buying 500.00 USD: S* = 75,994.968 JPY → 75,995.
        (
            "q2",
            "JPY",
            "USD",
            m(50_000, "USD"),
            6_612_445,
            6_579_383,
            m(75_995, "JPY"),
            m(50_000, "USD"),
            1,
            true,
            None,
        ),
        // EUR → JPY through USD: 1.0845 × 151.23 = 164.008935; less 50 bps → 163.188890325 (exact).
        (
            "q3",
            "EUR",
            "JPY",
            m(2_500_000, "JPY"),
            164_008_935_000,
            163_188_890_325,
            m(1_531_967, "EUR"),
            m(2_500_000, "JPY"),
            2,
            false,
            Some("USD"),
        ),
        // JPY → EUR: the inverse cross.
        (
            "q4",
            "USD",
            "EUR",
            m(100, "USD"),
            922_083_910,
            917_473_490,
            m(100, "USD"),
            m(92, "EUR"),
            1,
            true,
            None,
        ),
    ];
    for (id, sell, buy, fixed, mid, rate, s, b, n, inverted, pivot) in cases {
        let q = h.quote(id, sell, buy, *fixed);
        assert_eq!(q.status, QuoteStatus::Issued, "{id}: {:?}", q.reason);
        assert_eq!((q.mid_e9, q.rate_e9), (Some(*mid), Some(*rate)), "{id}");
        assert_eq!((q.sell, q.buy), (Some(*s), Some(*b)), "{id}");
        assert_eq!(q.rates.len(), *n, "{id}");
        assert_eq!(q.rates[0].inverted, *inverted, "{id}");
        assert_eq!(q.pivot, pivot.map(cur), "{id}");
        assert_eq!(q.fixed, if fixed.currency == cur(sell) { "sell" } else { "buy" }, "{id}");
        assert_eq!(q.markup_bps, 50);
        assert_eq!(q.version, 1);
        assert_eq!(q.rates[0].source, "rates-desk");
        assert_eq!(q.rates[0].version, publication, "the publication it came with");
        let ttl = FxSettings::default().quote_ttl_ms;
        assert_eq!(q.expires_at.map(|t| t.timestamp_millis()), Some(h.now_ms + ttl), "{id}");
        assert_eq!(q.rate_as_of.map(|t| t.timestamp_millis()), Some(h.now_ms - 1_000), "{id}");
    }
}

#[test]
fn quote_refusals_name_their_reason() {
    let mut s = FxSettings::default();
    s.tenants.insert(T.into(), FxTenantSettings { markup_bps: Some(0), otc_thresholds: None });
    // (setup: rate age ms, rates; request; expected code)
    let cases: &[(i64, &[(&str, &str, i64)], (&str, &str, Money), &str)] = &[
        (0, &[EUR_USD], ("KWD", "BRL", m(1_000, "KWD")), "unknown_pair"),
        // No cross when one side is the pivot itself.
        (0, &[EUR_USD], ("USD", "BRL", m(1_000, "USD")), "unknown_pair"),
        (300_001, &[EUR_USD], ("EUR", "USD", m(1_000, "EUR")), "stale_rate"),
        (300_000, &[EUR_USD], ("EUR", "USD", m(1_000, "EUR")), ""),
        // 1 KRW is 0.07 US cents: nothing to buy.
        (0, &[("USD", "KRW", 1_380_000_000_000)], ("KRW", "USD", m(1, "KRW")), "amount_too_small"),
        // 10^15 USD cents at 1 BTC per USD is more BTC minor units than fit.
        (0, &[("USD", "BTC", 1_000_000_000)], ("USD", "BTC", m(AMOUNT_MINOR_MAX, "USD")), "amount_too_large"),
    ];
    for (i, (age, rates, (sell, buy, fixed), want)) in cases.iter().enumerate() {
        let mut h = H::with(s.clone());
        h.rates(*age, rates);
        let q = h.quote(&format!("q{i}"), sell, buy, *fixed);
        let got = code(q.reason.as_deref());
        assert_eq!(got, *want, "case {i}: {:?}", q.reason);
        let status = if want.is_empty() { QuoteStatus::Issued } else { QuoteStatus::Refused };
        assert_eq!(q.status, status, "case {i}");
        assert_eq!(q.expires_at.is_some(), want.is_empty(), "case {i}");
    }
    // Through the pivot, the older leg decides.
    let mut h = H::with(s.clone());
    h.rates(300_001, &[("GBP", "USD", 1_271_000_000)]);
    h.rates(0, &[EUR_USD]);
    let q = h.quote("q-cross", "GBP", "EUR", m(1_000, "GBP"));
    assert_eq!((code(q.reason.as_deref()), q.rates.len()), ("stale_rate", 2), "{q:?}");
    // Before the first tick there is no clock to quote against.
    let mut h = H::with(s);
    h.now_ms = 0;
    h.rates(-T0_MS, &[EUR_USD]);
    let q = h.quote("q-early", "EUR", "USD", m(1_000, "EUR"));
    assert_eq!(code(q.reason.as_deref()), "no_clock", "{q:?}");
}

#[test]
fn invalid_and_repeated_quote_requests_are_input_rejections() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    let bad: &[(serde_json::Value, &str)] = &[
        (
            json!({"quote_id": "q/1", "sell_currency": "EUR", "buy_currency": "USD", "sell_amount": m(1, "EUR"), "requested_by": "u"}),
            "quote_id",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "EUR", "sell_amount": m(1, "EUR"), "requested_by": "u"}),
            "both EUR",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "USD", "requested_by": "u"}),
            "exactly one",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "USD", "sell_amount": m(1, "EUR"), "buy_amount": m(1, "USD"), "requested_by": "u"}),
            "exactly one",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "USD", "sell_amount": m(1, "USD"), "requested_by": "u"}),
            "is in USD, not EUR",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "USD", "sell_amount": m(0, "EUR"), "requested_by": "u"}),
            "minor units",
        ),
        (
            json!({"quote_id": "q1", "sell_currency": "EUR", "buy_currency": "USD", "sell_amount": m(AMOUNT_MINOR_MAX + 1, "EUR"), "requested_by": "u"}),
            "minor units",
        ),
    ];
    for (p, want) in bad {
        let e = h.envelope(T, it::QUOTE_REQUESTED, p.clone());
        let r = h.one(e);
        let r = r.rejected();
        assert!(r.reason.starts_with("invalid_request: ") && r.reason.contains(want), "{}", r.reason);
    }
    // The id was not taken by the refused requests.
    let e = h.quote_in(T, "q1", "EUR", "USD", m(1_000, "EUR"));
    assert_eq!(h.one(e.clone()).quote().status, QuoteStatus::Issued);
    assert!(h.send(e).is_empty(), "the same event again: silence");
    let again = h.quote_in(T, "q1", "EUR", "USD", m(2_000, "EUR"));
    let r = h.one(again);
    assert!(r.rejected().reason.starts_with("duplicate_id: quote id q1"), "{r:?}");
    // Another tenant's q1 is its own.
    let other = h.quote_in(T2, "q1", "EUR", "USD", m(1_000, "EUR"));
    assert_eq!(h.one(other).quote().status, QuoteStatus::Issued);
}

#[test]
fn quotes_expire_by_timer_unless_used() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    let q = h.quote("q1", "EUR", "USD", m(1_000, "EUR"));
    h.quote("q2", "EUR", "USD", m(1_000, "EUR"));
    assert_eq!(h.convert("c2", "q2").len(), 3);
    let ttl = FxSettings::default().quote_ttl_ms;
    assert!(h.advance(ttl - 1).is_empty(), "not yet");
    let out = h.advance(1);
    assert_eq!(out.len(), 1, "only the unused quote expires: {out:?}");
    let e = out[0].quote();
    assert_eq!((e.quote_id.as_str(), e.status, e.version), ("q1", QuoteStatus::Expired, 2));
    assert_eq!(e.expires_at, q.expires_at);
    let out = h.convert("c1", "q1");
    let c = out[0].conversion();
    assert_eq!(c.status, ConversionStatus::Rejected);
    assert!(
        c.reason.as_deref().is_some_and(|r| r.starts_with("quote_expired: quote q1 expired at")),
        "{c:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------------

#[test]
fn a_conversion_books_its_legs_and_completes_on_the_ledgers_answer() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    h.quote("q1", "EUR", "USD", m(100_000, "EUR"));
    let out = h.convert("c1", "q1");
    assert_eq!(out.len(), 3, "{out:?}");
    let c = out[0].conversion();
    assert_eq!((c.status, c.version, c.otc), (ConversionStatus::Booking, 1, false));
    let a = c.amounts.as_ref().expect("amounts");
    assert_eq!(
        (a.sell, a.buy, a.mid_value, a.fee, a.residue),
        (m(100_000, "EUR"), m(107_908, "USD"), m(108_450, "USD"), m(542, "USD"), m(0, "USD"))
    );
    assert_eq!(
        (a.mid_value_exact.as_str(), a.buy_exact.as_str(), a.fee_exact.as_str()),
        ("108450", "107907.75", "542.25")
    );
    let q = out[1].quote();
    assert_eq!((q.status, q.version, q.conversion_id.as_deref()), (QuoteStatus::Used, 2, Some("c1")));
    let b = out[2].booking();
    assert_eq!(b.booking_id, booking_id(T, "c1"));
    assert_eq!((b.purpose, b.reference.as_str()), (BookingPurpose::FxConversion, "c1"));
    let legs: Vec<(&str, Money)> = b.legs.iter().map(|l| (l.account.as_str(), l.amount)).collect();
    assert_eq!(
        legs,
        [
            ("acct_1", m(-100_000, "EUR")),
            (FX_DESK_ACCOUNT, m(100_000, "EUR")),
            (FX_DESK_ACCOUNT, m(-108_450, "USD")),
            ("acct_2", m(107_908, "USD")),
            (FX_FEES_ACCOUNT, m(542, "USD")),
        ],
        "the zero residue leg is left out"
    );
    assert_eq!(unbalanced_currency(&b.legs), None);
    let out = h.answer("c1", "booked", None);
    let c = out[0].conversion();
    assert_eq!((c.status, c.version), (ConversionStatus::Completed, 2));
    // The quote executes once.
    let again = h.convert("c9", "q1");
    assert!(again[0]
        .conversion()
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("quote_used: quote q1 was used by c1")));
}

#[test]
fn a_residue_leg_carries_the_rounding() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    // 0.06 EUR: B* = 6.474465 → 6, M* = 6.507 → 7, F* = 0.032535 → 0, so R = 1 cent.
    h.quote("q1", "EUR", "USD", m(6, "EUR"));
    let out = h.convert("c1", "q1");
    let a = out[0].conversion().amounts.clone().expect("amounts");
    assert_eq!((a.buy, a.mid_value, a.fee, a.residue), (m(6, "USD"), m(7, "USD"), m(0, "USD"), m(1, "USD")));
    assert_eq!(
        (a.mid_value_exact.as_str(), a.buy_exact.as_str(), a.fee_exact.as_str()),
        ("6.507", "6.474465", "0.032535")
    );
    let accounts: Vec<&str> = out[2].booking().legs.iter().map(|l| l.account.as_str()).collect();
    assert_eq!(accounts, ["acct_1", FX_DESK_ACCOUNT, FX_DESK_ACCOUNT, "acct_2", FX_RESIDUE_ACCOUNT]);
}

#[test]
fn conversion_refusals_name_their_reason() {
    let mut h = H::new();
    h.rates(290_000, &[EUR_USD]);
    h.quote("q-live", "EUR", "USD", m(1_000, "EUR"));
    h.quote("q-refused", "KWD", "BRL", m(1_000, "KWD"));
    let e = h.quote_in(T2, "q-other", "EUR", "USD", m(1_000, "EUR"));
    h.one(e);
    let refused = |h: &mut H, e: RawEnvelope| {
        let out = h.send(e);
        assert_eq!(out.len(), 1, "{out:?}");
        let c = out[0].conversion().clone();
        assert_eq!(c.status, ConversionStatus::Rejected);
        code(c.reason.as_deref()).to_owned()
    };
    let e = h.convert_in(T, "c1", "q-none", "u");
    assert_eq!(refused(&mut h, e), "unknown_quote");
    let e = h.convert_in(T, "c2", "q-other", "u");
    assert_eq!(refused(&mut h, e), "unknown_quote", "another tenant's quote is unknown");
    let e = h.convert_in(T, "c3", "q-refused", "u");
    assert_eq!(refused(&mut h, e), "quote_refused");
    let p = json!({"conversion_id": "c4", "quote_id": "q-live", "source_account": "fx:desk", "requested_by": "u"});
    let e = h.envelope(T, it::CONVERSION_REQUESTED, p);
    assert_eq!(refused(&mut h, e), "invalid_account");
    let p = json!({"conversion_id": "c5", "quote_id": "q-live", "source_account": "acct_1",
                   "destination_account": "billing:fees", "requested_by": "u"});
    let e = h.envelope(T, it::CONVERSION_REQUESTED, p);
    assert_eq!(refused(&mut h, e), "invalid_account");
    // 290 s old at the quote, 301 s old now: stale, though the quote is still live.
    h.advance(11_000);
    let e = h.convert_in(T, "c6", "q-live", "u");
    assert_eq!(refused(&mut h, e), "stale_rate");
    // A conversion id is used once, refused or not; the same event again is silence.
    let e = h.convert_in(T, "c6", "q-live", "u");
    let r = h.one(e.clone());
    assert!(r.rejected().reason.starts_with("duplicate_id: conversion id c6"), "{r:?}");
    assert!(h.send(e).is_empty());
    let bad = h.convert_in(T, "c 7", "q-live", "u");
    assert!(h.one(bad).rejected().reason.starts_with("invalid_request: conversion_id"));
}

#[test]
fn otc_conversions_wait_for_a_second_person() {
    let mut s = FxSettings::default();
    s.tenants
        .insert(T2.into(), FxTenantSettings { markup_bps: None, otc_thresholds: Some(vec![m(100, "EUR")]) });
    let mut h = H::with(s);
    h.rates(0, &[EUR_USD]);
    // Exactly at the threshold: no approval needed; above it: pending.
    h.quote("q-at", "EUR", "USD", m(10_000_000, "EUR"));
    assert_eq!(h.convert("c-at", "q-at")[0].conversion().status, ConversionStatus::Booking);
    h.quote("q1", "EUR", "USD", m(10_000_001, "EUR"));
    let out = h.convert("c1", "q1");
    assert_eq!(out.len(), 1);
    let c = out[0].conversion();
    assert_eq!((c.status, c.otc, c.amounts.is_none()), (ConversionStatus::PendingApproval, true, true));
    // The held quote is not for another conversion.
    let other = h.convert("c2", "q1");
    assert!(other[0]
        .conversion()
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("quote_used: quote q1 is held by conversion c1")));
    // The requester may not approve; an unknown conversion is named.
    let r = h.decide("c1", "approved", "user:maker");
    assert!(r[0].rejected().reason.starts_with("self_approval: "), "{r:?}");
    let r = h.decide("c-none", "approved", "user:checker");
    assert!(r[0].rejected().reason.starts_with("unknown_conversion: "), "{r:?}");
    let out = h.decide("c1", "approved", "user:checker");
    assert_eq!(out.len(), 3, "{out:?}");
    let c = out[0].conversion();
    assert_eq!(
        (c.status, c.version, c.decided_by.as_deref()),
        (ConversionStatus::Booking, 2, Some("user:checker"))
    );
    assert_eq!(out[1].quote().status, QuoteStatus::Used);
    assert_eq!(out[2].booking().legs.len(), 5);
    let r = h.decide("c1", "approved", "user:checker-2");
    assert!(r[0].rejected().reason.starts_with("not_pending: conversion c1 is booking"), "{r:?}");
    // Another tenant's own threshold: 1.01 EUR is above its 1.00 EUR.
    let e = h.quote_in(T2, "qb", "EUR", "USD", m(101, "EUR"));
    h.one(e);
    let e = h.convert_in(T2, "cb", "qb", "user:maker");
    assert_eq!(h.one(e).conversion().status, ConversionStatus::PendingApproval);
}

#[test]
fn an_otc_rejection_releases_the_quote_and_an_expiry_rejects_a_pending_conversion() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    h.quote("q1", "EUR", "USD", m(20_000_000, "EUR"));
    h.convert("c1", "q1");
    let out = h.decide("c1", "rejected", "user:checker");
    let c = out[0].conversion();
    assert_eq!(c.status, ConversionStatus::Rejected);
    assert_eq!(c.reason.as_deref(), Some("otc_rejected: rejected by user:checker: checked"));
    // Released: another conversion may take it (and waits in turn).
    let out = h.convert("c2", "q1");
    assert_eq!(out[0].conversion().status, ConversionStatus::PendingApproval);
    let out = h.advance(FxSettings::default().quote_ttl_ms);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].quote().status, QuoteStatus::Expired);
    let c = out[1].conversion();
    assert_eq!((c.conversion_id.as_str(), c.status, c.version), ("c2", ConversionStatus::Rejected, 2));
    assert!(
        c.reason.as_deref().is_some_and(|r| r.starts_with("quote_expired: quote q1 expired at")),
        "{c:?}"
    );
    let r = h.decide("c2", "approved", "user:checker");
    assert!(r[0].rejected().reason.starts_with("not_pending: conversion c2 is rejected"));
}

#[test]
fn ledger_answers_complete_or_reject_once() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD]);
    h.quote("q1", "EUR", "USD", m(1_000, "EUR"));
    h.convert("c1", "q1");
    let out = h.answer("c1", "refused", Some("insufficient_funds: acct_1 holds 5.00 EUR"));
    let c = out[0].conversion();
    assert_eq!(
        (c.status, c.reason.as_deref()),
        (ConversionStatus::Rejected, Some("insufficient_funds: acct_1 holds 5.00 EUR"))
    );
    let r = h.answer("c1", "booked", None);
    assert!(
        r[0].rejected().reason.starts_with("booking_answered: conversion c1 is already rejected"),
        "{r:?}"
    );
    let r = h.answer("c-none", "booked", None);
    assert!(r[0].rejected().reason.starts_with("unknown_booking: "), "{r:?}");
    // A wrong booking id for a known conversion is unknown too.
    let p = json!({"booking_id": "b-other", "purpose": "fx_conversion", "reference": "c1", "outcome": "booked", "legs": []});
    let e = h.envelope(T, BookingRecorded::EVENT_TYPE, p);
    assert!(h.one(e).rejected().reason.starts_with("unknown_booking: "));
    // Billing's answers share the topic: not FX's business.
    let p =
        json!({"booking_id": "b-fee", "purpose": "fee", "reference": "t1", "outcome": "booked", "legs": []});
    let e = h.envelope(T, BookingRecorded::EVENT_TYPE, p);
    assert!(h.send(e).is_empty());
    // A refusal without a reason still says who refused.
    h.quote("q2", "EUR", "USD", m(1_000, "EUR"));
    h.convert("c2", "q2");
    let p = json!({"booking_id": booking_id(T, "c2"), "purpose": "fx_conversion", "reference": "c2", "outcome": "refused", "legs": []});
    let e = h.envelope(T, BookingRecorded::EVENT_TYPE, p);
    let out = h.send(e.clone());
    assert_eq!(code(out[0].conversion().reason.as_deref()), "ledger_refused");
    assert!(h.send(e).is_empty(), "the same answer again: silence");
}

// ---------------------------------------------------------------------------------------------------
// Rates and webhooks
// ---------------------------------------------------------------------------------------------------

#[test]
fn rates_keep_the_latest_by_as_of_with_source_and_version() {
    let mut h = H::new();
    h.rates(10_000, &[EUR_USD]);
    assert!(h.rates(20_000, &[("EUR", "USD", 1_000_000_000)]).is_empty(), "older: ignored, silently");
    assert!(h.rates(10_000, &[("EUR", "USD", 1_000_000_000)]).is_empty(), "equal: the one held stays");
    assert_eq!(h.s.rates["EUR/USD"].rate_e9, 1_084_500_000);
    let e = h.envelope(
        "rates",
        it::RATES_PUBLISHED,
        json!({"as_of": DateTime::from_timestamp_millis(h.now_ms).expect("t"),
        "rates": [{"base": "EUR", "quote": "USD", "rate_e9": 1_090_000_000}], "published_by": "desk-2"}),
    );
    assert!(h.send_via(e, Via::Routed { topic: "live.fx.commands", partition: 3, offset: 7 }).is_empty());
    let (r, version) = (&h.s.rates["EUR/USD"], h.last.to_string());
    assert_eq!(
        (r.rate_e9, r.source.as_str(), r.version.as_str()),
        (1_090_000_000, "desk-2", version.as_str())
    );
    // Too far ahead of the clock, or not a rate: not applied, and said so.
    let r = h.rates(-RATE_AHEAD_MAX_MS - 1, &[("EUR", "USD", 2_000_000_000)]);
    assert!(r[0].rejected().reason.starts_with("invalid_rate: not applied: as_of"), "{r:?}");
    let r = h.rates(0, &[("EUR", "EUR", 1_000_000_000), ("GBP", "USD", -5), ("CHF", "USD", 1_130_000_000)]);
    assert!(
        r[0].rejected().reason.contains("EUR/EUR") && r[0].rejected().reason.contains("GBP/USD"),
        "{r:?}"
    );
    assert!(h.s.rates.contains_key("CHF/USD") && !h.s.rates.contains_key("GBP/USD"));
    assert_eq!(h.s.rates["EUR/USD"].rate_e9, 1_090_000_000);
}

fn rate_webhook(h: &mut H, id: &str, event_type: &str, fields: &[(&str, &str)]) -> RawEnvelope {
    let fields: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let p = json!({"provider": "ratewire", "provider_event_id": id, "event_type": event_type,
                   "body_bytes": 200, "fields": fields, "body": null});
    h.envelope(T, WebhookReceived::EVENT_TYPE, p)
}

#[test]
fn a_rates_webhook_is_republished_not_applied() {
    let mut h = H::new();
    let ok = [("base", "EUR"), ("quote", "USD"), ("rate", "1.0845"), ("as_of", "2026-11-22T07:30:00Z")];
    let e = rate_webhook(&mut h, "rw_1", RATES_WEBHOOK_TYPE, &ok);
    let out = h.send(e);
    assert_eq!(out.len(), 1);
    let Out::Rates(p) = &out[0] else { panic!("expected rates: {out:?}") };
    assert_eq!(p.published_by, "provider:ratewire");
    assert_eq!(p.rates, vec![FxRate { base: cur("EUR"), quote: cur("USD"), rate_e9: 1_084_500_000 }]);
    assert_eq!(p.as_of.to_rfc3339(), "2026-11-22T07:30:00+00:00");
    assert!(h.s.rates.is_empty(), "applied only when it comes back on fx.rates");
    // The provider's redelivery (a new envelope, the same provider event): nothing.
    let again = rate_webhook(&mut h, "rw_1", RATES_WEBHOOK_TYPE, &ok);
    assert!(h.send(again).is_empty());
    // Other deliveries are not FX's.
    let other = rate_webhook(&mut h, "dep_1", "deposit.completed", &[("reference", "r")]);
    assert!(h.send(other).is_empty());
    let bad: &[(&[(&str, &str)], &str)] = &[
        (&[("quote", "USD"), ("rate", "1"), ("as_of", "2026-11-22T07:30:00Z")], "field 'base' is missing"),
        (
            &[("base", "XYZ"), ("quote", "USD"), ("rate", "1"), ("as_of", "2026-11-22T07:30:00Z")],
            "'base' is not a known currency",
        ),
        (&[("base", "USD"), ("quote", "USD"), ("rate", "1"), ("as_of", "2026-11-22T07:30:00Z")], "both USD"),
        (
            &[("base", "EUR"), ("quote", "USD"), ("rate", "1.0e3"), ("as_of", "2026-11-22T07:30:00Z")],
            "'rate' is not",
        ),
        (
            &[("base", "EUR"), ("quote", "USD"), ("rate", "0"), ("as_of", "2026-11-22T07:30:00Z")],
            "'rate' is not",
        ),
        (&[("base", "EUR"), ("quote", "USD"), ("rate", "1.1"), ("as_of", "yesterday")], "RFC 3339"),
    ];
    for (i, (fields, want)) in bad.iter().enumerate() {
        let e = rate_webhook(&mut h, &format!("rw_bad_{i}"), RATES_WEBHOOK_TYPE, fields);
        let r = h.one(e);
        let r = r.rejected();
        assert!(
            r.reason.starts_with("invalid_rate: ratewire delivery") && r.reason.contains(want),
            "{}",
            r.reason
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Bounds and state
// ---------------------------------------------------------------------------------------------------

#[test]
fn final_entries_are_forgotten_after_retention_and_their_ids_stay_used() {
    let s = FxSettings { entries_max: 2, ..FxSettings::default() };
    let retention = s.final_retention_ms;
    let mut h = H::with(s);
    h.rates(0, &[EUR_USD]);
    h.quote("q1", "EUR", "USD", m(1_000, "EUR"));
    h.convert("c1", "q1");
    let e = h.quote_in(T, "q2", "EUR", "USD", m(1_000, "EUR"));
    assert!(h.one(e).rejected().reason.starts_with("capacity: 2 quotes"), "full");
    h.answer("c1", "booked", None);
    h.advance(retention - 1);
    assert_eq!((h.s.quotes.len(), h.s.conversions.len()), (1, 1));
    h.advance(1);
    assert_eq!((h.s.quotes.len(), h.s.conversions.len()), (0, 0), "both forgotten");
    assert!(h.s.timers.is_empty());
    let e = h.quote_in(T, "q1", "EUR", "USD", m(1_000, "EUR"));
    assert!(h.one(e).rejected().reason.starts_with("duplicate_id: quote id q1"));
    h.rates(0, &[EUR_USD]);
    assert_eq!(h.quote("q3", "EUR", "USD", m(1_000, "EUR")).status, QuoteStatus::Issued, "room again");
    // Remembered ids and inputs are bounded: REMEMBERED_PER_ENTRY × entries_max.
    assert!(h.s.seen.len() <= REMEMBERED_PER_ENTRY * 2 && h.s.seen.len() == h.s.seen_order.len());
}

#[test]
fn a_checkpoint_restores_the_same_state() {
    let mut h = H::new();
    h.rates(0, &[EUR_USD, USD_JPY]);
    h.quote("q1", "EUR", "JPY", m(1_000, "EUR"));
    h.quote("q2", "EUR", "USD", m(20_000_000, "EUR"));
    h.convert("c2", "q2");
    let snap: Vec<(String, Encoded)> =
        h.s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
    let mut r = FxState::restore(&snap).expect("restores");
    assert_eq!(r, h.s);
    assert!(r.take_changes().is_empty());
}

#[test]
fn the_examples_cover_every_rule() {
    let settings = FxSettings::default();
    let p = FxProcessor::new(Topics::new(""), settings.clone());
    let mut s = FxState::new();
    let (mut now, mut poison) = (0i64, 0);
    let (mut reasons, mut statuses, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = |out: Vec<Emit>| {
        for e in &out {
            match decode_out(e) {
                Out::Quote(q) => {
                    statuses.push(format!("quote {} {}", q.quote_id, q.status.as_str()));
                    reasons.extend(q.reason);
                }
                Out::Conversion(c) => {
                    statuses.push(format!("conversion {} {}", c.conversion_id, c.status.as_str()));
                    reasons.extend(c.reason);
                }
                Out::Rejected(r) => reasons.push(r.reason),
                Out::Booking(b) => kinds.push(format!("booking {}", b.reference)),
                Out::Rates(r) => kinds.push(format!("rates {}", r.published_by)),
            }
        }
    };
    let examples = p.examples(Environment::Live);
    for (i, e) in examples.iter().enumerate() {
        let at = InputRef { now_ms: now, ..InputRef::log("live.fx.inputs", 0, i as i64, Environment::Live) };
        match p.apply(&mut s, &at, e.clone()) {
            Verdict::Emit(out) => seen(out),
            Verdict::Poison(_) => poison += 1,
        }
        now = now.max(e.occurred_at.timestamp_millis());
        while let Some(t) = s.timers.pop_due(now) {
            let at =
                InputRef { now_ms: now, ..InputRef::log("live.fx.inputs", 0, i as i64, Environment::Live) };
            if let Verdict::Emit(out) = p.on_timer(&mut s, &at, t) {
                seen(out);
            }
        }
    }
    let codes: std::collections::BTreeSet<&str> = reasons.iter().map(|r| code(Some(r))).collect();
    for want in [
        "no_clock",
        "unknown_pair",
        "stale_rate",
        "quote_expired",
        "unknown_quote",
        "duplicate_id",
        "self_approval",
        "not_pending",
        "otc_rejected",
        "insufficient_funds",
        "booking_answered",
        "unknown_booking",
        "invalid_rate",
    ] {
        assert!(codes.contains(want), "no example gives {want}: {codes:?}");
    }
    for want in [
        "conversion c-1 completed",
        "conversion c-2 rejected",
        "conversion c-otc pending_approval",
        "conversion c-otc completed",
        "conversion c-otc3 rejected",
        "quote q-3 expired",
        "quote q-2 used",
        "quote q-btc issued",
        "quote q-gbp issued",
        "conversion c-5 rejected",
    ] {
        assert!(statuses.iter().any(|s| s == want), "no example gives {want}: {statuses:?}");
    }
    assert!(kinds.contains(&"rates provider:ratewire".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"booking c-otc".to_owned()), "{kinds:?}");
    assert_eq!(poison, 2, "the junk payloads are dead-lettered");
}

// ---------------------------------------------------------------------------------------------------
// Rounding
// ---------------------------------------------------------------------------------------------------

#[test]
fn half_way_cases_round_per_mode_at_each_precision() {
    use RoundingMode::{HalfEven as E, HalfUp as U};
    // (sell amount, sell, buy, rate_e9, half_even, half_up): one US cent (or one sell minor unit) at a
    // rate that lands exactly half-way between two minor units of the buy currency.
    let cases: &[(i64, &str, &str, i64, i128, i128)] = &[
        // JPY (0 places): 0.5, 1.5, 2.5 yen.
        (1, "USD", "JPY", 50_000_000_000, 0, 1),
        (1, "USD", "JPY", 150_000_000_000, 2, 2),
        (1, "USD", "JPY", 250_000_000_000, 2, 3),
        // USD (2 places): 0.005, 0.015 USD from one euro cent.
        (1, "EUR", "USD", 500_000_000, 0, 1),
        (1, "EUR", "USD", 1_500_000_000, 2, 2),
        (3, "EUR", "USD", 500_000_000, 2, 2),
        // KWD (3 places): 0.5 and 2.5 fils.
        (1, "USD", "KWD", 50_000_000, 0, 1),
        (1, "USD", "KWD", 250_000_000, 2, 3),
        // BTC (8 places): 0.5 and 3.5 satoshi.
        (1, "USD", "BTC", 500, 0, 1),
        (1, "USD", "BTC", 3_500, 4, 4),
        // Not half-way: nearest either way.
        (1, "USD", "BTC", 2_600, 3, 3),
        (1, "USD", "KWD", 240_000_000, 2, 2),
    ];
    for (amount, sell, buy, rate, even, up) in cases {
        let (s, b) = (cur(sell), cur(buy));
        assert_eq!(convert(*amount, *rate, s, b, E), Some(*even), "{amount} {sell}→{buy} @{rate} half_even");
        assert_eq!(convert(*amount, *rate, s, b, U), Some(*up), "{amount} {sell}→{buy} @{rate} half_up");
    }
    // Buying a fixed amount: the sell side rounds the same way (1 yen at 200 yen per dollar is 0.5 cent).
    assert_eq!(sell_for(1, 200_000_000_000, cur("USD"), cur("JPY"), E), Some(0));
    assert_eq!(sell_for(1, 200_000_000_000, cur("USD"), cur("JPY"), U), Some(1));
    assert_eq!(sell_for(3, 200_000_000_000, cur("USD"), cur("JPY"), E), Some(2));
    // The customer's rate: 5e-9 less 50% is 2.5e-9.
    assert_eq!((customer_rate_e9(5, 5_000, E), customer_rate_e9(5, 5_000, U)), (Some(2), Some(3)));
    assert_eq!(customer_rate_e9(1, 5_000, E), None, "rounds to nothing");
    assert_eq!(customer_rate_e9(1_000, 10_000, E), None, "a markup of everything");
    // An inverse: 1 / 400,000,000 = 2.5e-9.
    let mut rates = Table::new("r");
    rates.insert(
        "USD/EUR".to_owned(),
        Rate { rate_e9: 400_000_000_000_000_000, as_of_ms: 0, source: "s".into(), version: "v".into() },
    );
    let mid = |mode| find_mid(&rates, cur("EUR"), cur("USD"), cur("USD"), mode).map(|m| m.mid_e9);
    assert_eq!((mid(E), mid(U)), (Some(2), Some(3)));
    // A cross: 1.5e-9 × 1 through the pivot rounds the product once.
    let mut rates = Table::new("r");
    for (k, r) in [("GBP/USD", 3), ("USD/CHF", 500_000_000)] {
        rates.insert(k.to_owned(), Rate { rate_e9: r, as_of_ms: 0, source: "s".into(), version: "v".into() });
    }
    let mid = |mode| find_mid(&rates, cur("GBP"), cur("CHF"), cur("USD"), mode).map(|m| m.mid_e9);
    assert_eq!((mid(E), mid(U)), (Some(2), Some(2)), "1.5e-9 → 2 either way");
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

/// A recorded exact decimal as a numerator over 10^scale.
fn scaled(text: &str, scale: u32) -> i128 {
    let (neg, digits) = text.strip_prefix('-').map_or((false, text), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(frac.len() <= scale as usize, "{text} has more than {scale} places");
    let padded = format!("{int}{frac:0<width$}", width = scale as usize);
    let v: i128 = padded.parse().expect("digits");
    if neg {
        -v
    } else {
        v
    }
}

fn currency_strategy() -> impl Strategy<Value = Currency> {
    prop::sample::select(vec!["JPY", "USD", "KWD", "BTC", "EUR", "USDC"]).prop_map(cur)
}

proptest! {
    /// Selling a fixed amount: B + F + R = M; |B − B*| ≤ ½ minor unit; R is exactly the rounding
    /// (M − M*) − (B − B*) − (F − F*); the legs sum to zero per currency.
    #[test]
    fn a_conversion_conserves_value(
        s in 1i64..1_000_000_000_000,
        mid in 1_000i64..1_000_000_000_000,
        markup in 0u32..2_000,
        sell in currency_strategy(),
        buy in currency_strategy(),
        fixed_sell in any::<bool>(),
        up in any::<bool>(),
    ) {
        prop_assume!(sell != buy);
        let mode = if up { RoundingMode::HalfUp } else { RoundingMode::HalfEven };
        let Some(rate) = customer_rate_e9(mid, markup, mode) else { return Ok(()) };
        let (sold, bought) = if fixed_sell {
            let Some(b) = convert(s, rate, sell, buy, mode) else { return Ok(()) };
            (s, i64::try_from(b).unwrap_or(0))
        } else {
            let Some(x) = sell_for(s, rate, sell, buy, mode) else { return Ok(()) };
            (i64::try_from(x).unwrap_or(0), s)
        };
        if sold <= 0 || bought <= 0 {
            return Ok(());
        }
        let Ok(a) = conversion_amounts(Money::new(sold, sell), Money::new(bought, buy), mid, rate, mode) else {
            return Ok(());
        };
        let (mm, b, f, r) = (a.mid_value.amount_minor, a.buy.amount_minor, a.fee.amount_minor, a.residue.amount_minor);
        prop_assert_eq!(i128::from(b) + i128::from(f) + i128::from(r), i128::from(mm));
        let scale = exact_scale(sell);
        let den = pow10(scale).expect("fits");
        let (m_x, b_x, f_x) = (scaled(&a.mid_value_exact, scale), scaled(&a.buy_exact, scale), scaled(&a.fee_exact, scale));
        prop_assert_eq!(m_x, value_num(sold, mid, buy).expect("fits"));
        prop_assert_eq!(b_x, value_num(sold, rate, buy).expect("fits"));
        prop_assert_eq!(f_x, m_x - b_x);
        let off = |v: i64, exact: i128| i128::from(v) * den - exact;
        prop_assert_eq!(i128::from(r) * den, off(mm, m_x) - off(b, b_x) - off(f, f_x));
        prop_assert!(2 * off(mm, m_x).abs() <= den && 2 * off(f, f_x).abs() <= den);
        if fixed_sell {
            prop_assert!(2 * off(b, b_x).abs() <= den, "B within half a minor unit of B*");
        }
        prop_assert!(f >= 0, "the markup never works for the customer");
        let legs = booking_legs(&a, "acct_1", "acct_2");
        prop_assert_eq!(unbalanced_currency(&legs), None);
        prop_assert!(legs.iter().all(|l| l.amount.amount_minor != 0));
    }

    /// Over random streams of rates, quotes, conversions, decisions, answers and ticks: every booking
    /// balances, every completed conversion conserves value, a replay gives the same bytes, and the
    /// state restored from a checkpoint mid-way carries on identically.
    #[test]
    fn random_streams_balance_and_replay_identically(
        ops in prop::collection::vec((0u8..7, 0usize..4, 1i64..50_000_000, 0i64..40_000), 1..60),
        cut in 0usize..60,
    ) {
        let run = |cut: Option<usize>| -> Vec<Emit> {
            let p = FxProcessor::new(Topics::new(""), FxSettings::default());
            let mut s = FxState::new();
            let mut now = T0_MS;
            let mut emitted = Vec::new();
            let pairs = [("EUR", "USD"), ("USD", "JPY"), ("GBP", "JPY"), ("BTC", "USD")];
            for (i, (kind, n, amount, dt)) in ops.iter().enumerate() {
                if cut == Some(i) {
                    let snap: Vec<(String, Encoded)> = s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
                    s = FxState::restore(&snap).expect("restores");
                }
                let id = derived_id(&["fx-prop", &i.to_string()]);
                let at_time = DateTime::from_timestamp_millis(now).expect("t");
                let (sell, buy) = pairs[*n];
                let payload = match kind {
                    0 => json!({"as_of": DateTime::from_timestamp_millis(now - dt).expect("t"), "published_by": "d",
                                "rates": [{"base": sell, "quote": buy, "rate_e9": amount * 100}]}),
                    1 => json!({"quote_id": format!("q{n}{}", i % 3), "sell_currency": sell, "buy_currency": buy,
                                "sell_amount": m(*amount, sell), "requested_by": "u1"}),
                    2 => json!({"conversion_id": format!("c{i}"), "quote_id": format!("q{n}{}", (i + 1) % 3),
                                "source_account": "a", "requested_by": "u1"}),
                    3 => json!({"conversion_id": format!("c{}", i.saturating_sub(*n)), "decision": if dt % 2 == 0 { "approved" } else { "rejected" },
                                "actor": if dt % 3 == 0 { "u1" } else { "u2" }}),
                    4 => json!({"booking_id": booking_id(T, &format!("c{}", i.saturating_sub(*n))), "purpose": "fx_conversion",
                                "reference": format!("c{}", i.saturating_sub(*n)), "outcome": if dt % 2 == 0 { "booked" } else { "refused" },
                                "reason": "insufficient_funds: x", "legs": []}),
                    _ => json!(null),
                };
                let event_type = [it::RATES_PUBLISHED, it::QUOTE_REQUESTED, it::CONVERSION_REQUESTED,
                    it::CONVERSION_DECIDED, BookingRecorded::EVENT_TYPE][usize::from(*kind).min(4)];
                if *kind >= 5 {
                    now += dt;
                    while let Some(t) = s.timers.pop_due(now) {
                        let at = InputRef { now_ms: now, ..InputRef::log("live.fx.inputs", 0, i as i64, Environment::Live) };
                        if let Verdict::Emit(out) = p.on_timer(&mut s, &at, t) { emitted.extend(out); }
                    }
                    continue;
                }
                let e = Envelope::new(id, event_type, T, Environment::Live, at_time, "test", payload);
                let at = InputRef { now_ms: now, ..InputRef::log("live.fx.inputs", 0, i as i64, Environment::Live) };
                match p.apply(&mut s, &at, e) {
                    Verdict::Emit(out) => emitted.extend(out),
                    Verdict::Poison(r) => panic!("poison: {r}"),
                }
            }
            emitted
        };
        let out = run(None);
        prop_assert_eq!(&out, &run(None));
        prop_assert_eq!(&out, &run(Some(cut)));
        let mut ids = std::collections::BTreeSet::new();
        for e in &out {
            prop_assert!(ids.insert(e.event_id), "ids are unique");
            match decode_out(e) {
                Out::Booking(b) => prop_assert_eq!(unbalanced_currency(&b.legs), None),
                Out::Conversion(c) => {
                    if let Some(a) = c.amounts {
                        prop_assert_eq!(a.buy.amount_minor + a.fee.amount_minor + a.residue.amount_minor, a.mid_value.amount_minor);
                    }
                }
                _ => {}
            }
        }
    }
}
