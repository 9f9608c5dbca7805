//! The FX and billing read side on the real stack, as risk_read.rs drove the risk sinks: the outputs the
//! FX and billing processors and the ledger write (rates on `fx.rates`, quotes, conversions and refusals
//! on `fx.events`, booking answers on `ledger.bookings` with their postings and balances, fees, invoices
//! and refusals on `billing.events`) are produced onto the broker, the real sinks land them in Postgres
//! and ClickHouse, and the real API process reads them with tenant keys: every endpoint's 200, 404, 400
//! (naming the parameter) and 403, pages, forward-only versions (an older version arriving late changes
//! nothing), an invoice's lines replaced by a newer version's, the analytics with `complete_through`,
//! and `riverbank reconcile` clean, then naming a corrupted invoice line.
//!
//! The sinks run in this process over the registry's topics plus the four above, so the test does not
//! depend on the FX and billing processors being registered (once they are, the sets are the same).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use riverbank_runtime::{CancellationToken, Config};
use riverbank_schemas::billing::{
    BillingInputRejected, FeeCharged, FeePart, FeeStatus, InvoiceLine, InvoiceRecorded, InvoiceStatus,
    LineKind, TierPricing,
};
use riverbank_schemas::commands::{command_types, FxRate, FxRatesPublished};
use riverbank_schemas::fx::{
    ConversionAmounts, ConversionRecorded, ConversionStatus, FxInputRejected, QuoteRecorded, QuoteStatus,
    RateUsed,
};
use riverbank_schemas::ledger::{BookingLeg, BookingOutcome, BookingPurpose, BookingRecorded};
use riverbank_schemas::processor::Emit;
use riverbank_schemas::rounding::RoundingMode;
use riverbank_schemas::transfers::{BalanceChanged, LedgerPosting, PostingPhase};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, Topics, TransferKind};
use serde_json::Value;

use crate::harness::Pipeline;

const TENANT: &str = "acme";
/// Rates are platform reference data: published under another tenant, read with any tenant's key.
const PUBLISHER: &str = "feeds";
const ENV: Environment = Environment::Live;
/// How long anything asynchronous (the sinks landing a batch) may take to show.
const WAIT: Duration = Duration::from_secs(90);

fn cur(code: &str) -> Currency {
    Currency::from_code(code).expect("a known currency")
}

fn usd(minor: i64) -> Money {
    Money::new(minor, cur("USD"))
}

fn eur(minor: i64) -> Money {
    Money::new(minor, cur("EUR"))
}

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).single().expect("a valid time")
}

/// The processors' outputs, as they write them: an envelope per event, keyed by tenant.
struct Outputs {
    topics: Topics,
    emits: Vec<Emit>,
    /// Posted balance and version per (account, currency): what the ledger's `balance.changed` say.
    ledger: BTreeMap<(String, Currency), (i64, u64)>,
}

impl Outputs {
    fn new(topics: &Topics) -> Self {
        Outputs { topics: topics.clone(), emits: Vec::new(), ledger: BTreeMap::new() }
    }

    fn event<P: serde::Serialize>(&mut self, topic: String, tenant: &str, event_type: &str, tag: &str, p: P) {
        let id = derived_id(&["e2e-fx-billing-read", tag]);
        let envelope = Envelope::new(id, event_type, tenant, ENV, Utc::now(), "e2e", p);
        let payload = serde_json::to_vec(&envelope).expect("an envelope serializes");
        self.emits.push(Emit { topic, key: tenant.to_owned(), event_id: id, payload });
    }

    fn fx(&mut self, event_type: &str, tag: &str, p: impl serde::Serialize) {
        let topic = self.topics.fx_events(ENV);
        self.event(topic, TENANT, event_type, tag, p);
    }

    fn billing(&mut self, event_type: &str, tag: &str, p: impl serde::Serialize) {
        let topic = self.topics.billing_events(ENV);
        self.event(topic, TENANT, event_type, tag, p);
    }

    fn rates(&mut self, tag: &str, as_of: DateTime<Utc>, rates: &[(&str, &str, i64)]) {
        let rates =
            rates.iter().map(|(b, q, r)| FxRate { base: cur(b), quote: cur(q), rate_e9: *r }).collect();
        let p = FxRatesPublished { as_of, rates, published_by: "key:feed-1".into() };
        let topic = self.topics.fx_rates(ENV);
        self.event(topic, PUBLISHER, command_types::FX_RATES_PUBLISHED, tag, p);
    }

    /// The ledger's answer to a booking: when booked, its legs posted as one posting (and the balances
    /// after each), then `ledger.booking_recorded`.
    fn booking(
        &mut self,
        purpose: BookingPurpose,
        id: &str,
        reference: &str,
        legs: &[(&str, Money)],
        refused: Option<&str>,
    ) {
        let legs: Vec<BookingLeg> =
            legs.iter().map(|(a, m)| BookingLeg { account: (*a).to_owned(), amount: *m }).collect();
        if refused.is_none() {
            let posting_id = derived_id(&["e2e-fx-billing-read", "posting", id]);
            for (i, l) in legs.iter().enumerate() {
                let entry = self.ledger.entry((l.account.clone(), l.amount.currency)).or_default();
                entry.0 += l.amount.amount_minor;
                entry.1 += 1;
                let (posted, version) = *entry;
                let posting = LedgerPosting {
                    posting_id,
                    transfer_id: id.to_owned(),
                    phase: PostingPhase::Post,
                    account: l.account.clone(),
                    amount_minor: l.amount.amount_minor,
                    currency: l.amount.currency,
                };
                let balance = BalanceChanged {
                    account: l.account.clone(),
                    currency: l.amount.currency,
                    posted_minor: posted,
                    pending_debit_minor: 0,
                    pending_credit_minor: 0,
                    available_minor: posted,
                    version,
                };
                let (postings, balances) = (self.topics.ledger_postings(ENV), self.topics.balances(ENV));
                self.event(postings, TENANT, LedgerPosting::EVENT_TYPE, &format!("leg {id} {i}"), posting);
                self.event(
                    balances,
                    TENANT,
                    BalanceChanged::EVENT_TYPE,
                    &format!("balance {id} {i}"),
                    balance,
                );
            }
        }
        let recorded = BookingRecorded {
            booking_id: id.to_owned(),
            purpose,
            reference: reference.to_owned(),
            outcome: if refused.is_some() { BookingOutcome::Refused } else { BookingOutcome::Booked },
            reason: refused.map(str::to_owned),
            legs,
        };
        let topic = self.topics.ledger_bookings(ENV);
        self.event(topic, TENANT, BookingRecorded::EVENT_TYPE, &format!("booking {id}"), recorded);
    }

    /// A fee's booking: `billing:receivable` −fee, `billing:fees` +fee.
    fn fee_booking(&mut self, transfer: &str, fee: Money) {
        let id = format!("billing-fee/{TENANT}/{transfer}");
        let legs =
            [("billing:receivable", Money::new(-fee.amount_minor, fee.currency)), ("billing:fees", fee)];
        self.booking(BookingPurpose::Fee, &id, transfer, &legs, None);
    }

    async fn send(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let producer = riverbank_runtime::kafka::producer(&cfg.kafka)?;
        let emits = std::mem::take(&mut self.emits);
        riverbank_runtime::produce::produce_all(&producer, &emits, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)
    }
}

fn quote(status: QuoteStatus, version: u32) -> QuoteRecorded {
    QuoteRecorded {
        quote_id: "q1".into(),
        status,
        version,
        sell_currency: cur("EUR"),
        buy_currency: cur("USD"),
        sell: Some(eur(10_000)),
        buy: Some(usd(10_870)),
        fixed: "sell".into(),
        mid_e9: Some(1_092_560_000),
        rate_e9: Some(1_087_030_000),
        markup_bps: 50,
        rates: vec![RateUsed {
            base: cur("EUR"),
            quote: cur("USD"),
            rate_e9: 1_092_560_000,
            inverted: false,
            source: "key:feed-1".into(),
            as_of: at(2026, 11, 20, 11),
            version: "live.fx.inputs/0/2".into(),
        }],
        pivot: None,
        rate_as_of: Some(at(2026, 11, 20, 11)),
        expires_at: Some(at(2026, 11, 20, 12)),
        rounding: RoundingMode::HalfEven,
        requested_by: "user:treasurer-1".into(),
        reason: None,
        conversion_id: (status == QuoteStatus::Used).then(|| "c1".to_owned()),
    }
}

/// c1: 100.00 EUR sold at mid 1.09256 (M* = 109.256 USD... in minor units 10925.6) and 1.08703 after
/// markup (B* = 10870.3): M = 10926, B = 10870, F = 55, R = M − B − F = 1.
fn c1_amounts() -> ConversionAmounts {
    ConversionAmounts {
        sell: eur(10_000),
        buy: usd(10_870),
        mid_value: usd(10_926),
        fee: usd(55),
        residue: usd(1),
        mid_value_exact: "10925.6".into(),
        buy_exact: "10870.3".into(),
        fee_exact: "55.3".into(),
    }
}

fn conversion(id: &str, status: ConversionStatus, version: u32) -> ConversionRecorded {
    ConversionRecorded {
        conversion_id: id.into(),
        quote_id: "q1".into(),
        status,
        version,
        account: "acct_1".into(),
        destination: "acct_1".into(),
        amounts: Some(c1_amounts()),
        mid_e9: Some(1_092_560_000),
        rate_e9: Some(1_087_030_000),
        rounding: RoundingMode::HalfEven,
        booking_id: Some(format!("fx-booking/{TENANT}/{id}")),
        otc: false,
        requested_by: "user:treasurer-1".into(),
        decided_by: None,
        reason: None,
    }
}

struct Fee {
    transfer: &'static str,
    kind: TransferKind,
    amount: Money,
    completed_at: DateTime<Utc>,
    fee: Money,
    invoice: Option<&'static str>,
    adjustment: bool,
}

fn fee_charged(f: &Fee, status: FeeStatus, version: u32) -> FeeCharged {
    let booked = status == FeeStatus::Booked;
    FeeCharged {
        transfer_id: f.transfer.into(),
        transfer_kind: f.kind,
        transfer_amount: f.amount,
        completed_at: f.completed_at,
        period: f.completed_at.format("%Y-%m").to_string(),
        fee: f.fee,
        status,
        version,
        config_version: (f.fee.amount_minor > 0).then(|| "2026-10-01T00:00:00Z/cfg-1".to_owned()),
        pricing: TierPricing::Volume,
        monthly_volume_before: Money::new(0, f.amount.currency),
        fixed: Money::new(0, f.fee.currency),
        parts: vec![FeePart { amount: f.amount, bps: 150 }],
        exact: f.fee.amount_minor.to_string(),
        clamped: None,
        rounding: RoundingMode::HalfEven,
        booking_id: (f.fee.amount_minor > 0).then(|| format!("billing-fee/{TENANT}/{}", f.transfer)),
        invoice_id: if booked { f.invoice.map(str::to_owned) } else { None },
        adjustment: booked && f.adjustment,
        reason: None,
    }
}

fn line(
    id: &str,
    kind: LineKind,
    transfer_kind: Option<TransferKind>,
    count: u64,
    amount: Money,
) -> InvoiceLine {
    let adjustment = kind == LineKind::Adjustment;
    InvoiceLine {
        line_id: id.into(),
        kind,
        transfer_kind,
        description: id.replace('/', " "),
        count,
        amount,
        source_period: adjustment.then(|| "2026-10".to_owned()),
        sources: if adjustment { vec!["t-5".to_owned()] } else { vec![] },
    }
}

fn invoice(period: &str, status: InvoiceStatus, version: u32, lines: Vec<InvoiceLine>) -> InvoiceRecorded {
    let (y, m) = period.split_once('-').expect("YYYY-MM");
    let (y, m): (i32, u32) = (y.parse().expect("year"), m.parse().expect("month"));
    let start = at(y, m, 1, 0);
    let end = if m == 12 { at(y + 1, 1, 1, 0) } else { at(y, m + 1, 1, 0) };
    let mut totals: BTreeMap<&str, (Currency, i64)> = BTreeMap::new();
    for l in &lines {
        totals.entry(l.amount.currency.code()).or_insert((l.amount.currency, 0)).1 += l.amount.amount_minor;
    }
    InvoiceRecorded {
        invoice_id: format!("inv_{period}"),
        period: period.into(),
        period_start: start,
        period_end: end,
        closes_at: end + chrono::Duration::hours(1),
        status,
        version,
        lines,
        totals: totals.into_values().map(|(c, m)| Money::new(m, c)).collect(),
    }
}

struct Answer {
    status: u16,
    json: Value,
}

async fn get(p: &Pipeline, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = p.http.get(format!("{}{path}{sep}tenant_id={TENANT}", p.api_url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok(Answer { status, json: resp.json().await.unwrap_or(Value::Null) })
}

/// GET `path` with `token` until `done` holds for a 200 answer, at most [`WAIT`].
async fn until(
    p: &Pipeline,
    path: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = get(p, path, Some(token)).await?;
        if a.status == 200 && done(&a.json) {
            return Ok(a.json);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{path}: not within {WAIT:?}; last answer {} {}; logs in {}",
            a.status,
            a.json,
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Expect `status` and, for errors, the error code (and the parameter named, for 400s).
async fn expect(
    p: &Pipeline,
    path: &str,
    token: Option<&str>,
    status: u16,
    code: &str,
    field: Option<&str>,
) -> anyhow::Result<()> {
    let a = get(p, path, token).await?;
    anyhow::ensure!(a.status == status && a.json["error"]["code"] == code, "{path}: {} {}", a.status, a.json);
    if let Some(f) = field {
        anyhow::ensure!(a.json["error"]["field"] == f, "{path}: names {} not {f}", a.json["error"]["field"]);
    }
    Ok(())
}

async fn create_key(p: &Pipeline, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

fn ids(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list].as_array().into_iter().flatten().filter_map(|x| x[field].as_str().map(str::to_owned)).collect()
}

fn minor(v: &Value) -> i64 {
    v["amount_minor"].as_i64().unwrap_or(i64::MIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fx_and_billing_reads_serve_what_the_sinks_landed() -> anyhow::Result<()> {
    let mut p = Pipeline::start_with("fx_billing_read", &[], &[], "").await?;
    p.spawn_env("api", &["api"], &[("RIVERBANK__API__REQUIRE_API_KEY", "true".to_owned())])?;
    let api = p.api_url.clone();
    p.wait_healthy(&api).await?;
    let cfg = Config::load(Some(&p.config))?;
    let topics = Topics::new(p.topic_prefix.clone());

    // The real sinks, reading the registry's topics and the FX, ledger-booking and billing outputs.
    let mut inputs = riverbank::registry::sink_inputs(&cfg);
    inputs.extend([
        topics.fx_rates(ENV),
        topics.fx_events(ENV),
        topics.ledger_bookings(ENV),
        topics.billing_events(ENV),
    ]);
    inputs.sort();
    inputs.dedup();
    let stop = CancellationToken::new();
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    let pg_sink = tokio::spawn({
        let (c, i, s) = (cfg.clone(), inputs.clone(), stop.clone());
        let store = riverbank_sinks::postgres::PostgresSink::new(pool);
        async move { riverbank_runtime::sink::run(&c, store, i, s).await }
    });
    let ch_sink = tokio::spawn({
        let (c, i, s) = (cfg.clone(), inputs.clone(), stop.clone());
        let store = riverbank_sinks::clickhouse::ClickHouseSink::new(
            &cfg.clickhouse,
            riverbank_runtime::keystore::pseudonym_key(&cfg.keys)?,
        );
        async move { riverbank_runtime::sink::run(&c, store, i, s).await }
    });

    let viewer = create_key(&p, TENANT, "viewer").await?;
    let stranger = create_key(&p, "globex", "viewer").await?;
    let feed = create_key(&p, TENANT, "rates_publisher").await?;
    let v = viewer.as_str();

    // Rates: EUR/USD published twice (the later as_of wins) and once more late with an older as_of.
    let mut out = Outputs::new(&topics);
    out.rates(
        "rates 1",
        at(2026, 11, 20, 10),
        &[("EUR", "USD", 1_080_000_000), ("GBP", "USD", 1_270_000_000), ("USD", "JPY", 150_500_000_000)],
    );
    out.rates("rates 2", at(2026, 11, 20, 11), &[("EUR", "USD", 1_092_560_000)]);
    out.rates("rates 0", at(2026, 11, 20, 9), &[("EUR", "USD", 1_050_000_000)]);

    // Quotes: q1 used by c1 (its older version arrives after it), q2 refused.
    out.fx(QuoteRecorded::EVENT_TYPE, "q1 v2", quote(QuoteStatus::Used, 2));
    out.fx(QuoteRecorded::EVENT_TYPE, "q1 v1", quote(QuoteStatus::Issued, 1));
    let mut q2 = quote(QuoteStatus::Refused, 1);
    (q2.quote_id, q2.buy, q2.mid_e9, q2.rate_e9, q2.rates) = ("q2".into(), None, None, None, vec![]);
    (q2.buy_currency, q2.rate_as_of, q2.expires_at) = (cur("CHF"), None, None);
    q2.reason = Some("unknown_pair: no rate for EUR/CHF".into());
    out.fx(QuoteRecorded::EVENT_TYPE, "q2", &q2);

    // Conversions: c1 completed with its booking posted; c2 refused before pricing; c3 waiting for an
    // OTC approval; c4 refused by the ledger.
    out.fx(ConversionRecorded::EVENT_TYPE, "c1 v1", conversion("c1", ConversionStatus::Booking, 1));
    let c1_legs = [
        ("acct_1", eur(-10_000)),
        ("fx:desk", eur(10_000)),
        ("fx:desk", usd(-10_926)),
        ("acct_1", usd(10_870)),
        ("fx:fees", usd(55)),
        ("fx:residue", usd(1)),
    ];
    out.booking(BookingPurpose::FxConversion, "fx-booking/acme/c1", "c1", &c1_legs, None);
    out.fx(ConversionRecorded::EVENT_TYPE, "c1 v2", conversion("c1", ConversionStatus::Completed, 2));
    let mut c2 = conversion("c2", ConversionStatus::Rejected, 1);
    (c2.amounts, c2.booking_id, c2.reason) = (None, None, Some("quote_expired".into()));
    out.fx(ConversionRecorded::EVENT_TYPE, "c2", &c2);
    let mut c3 = conversion("c3", ConversionStatus::PendingApproval, 1);
    (c3.booking_id, c3.otc) = (None, true);
    out.fx(ConversionRecorded::EVENT_TYPE, "c3", &c3);
    out.fx(ConversionRecorded::EVENT_TYPE, "c4 v1", conversion("c4", ConversionStatus::Booking, 1));
    let refused = "insufficient funds: 0.00 EUR available in acct_2, 100.00 EUR requested";
    let mut c4_legs = c1_legs;
    c4_legs[0].0 = "acct_2";
    out.booking(BookingPurpose::FxConversion, "fx-booking/acme/c4", "c4", &c4_legs, Some(refused));
    let mut c4 = conversion("c4", ConversionStatus::Rejected, 2);
    c4.reason = Some(refused.into());
    out.fx(ConversionRecorded::EVENT_TYPE, "c4 v2", &c4);
    let fx_marker = FxInputRejected {
        input_event_id: derived_id(&["e2e-fx-billing-read", "c9"]),
        input_event_type: "fx.conversion_requested".into(),
        quote_id: Some("q9".into()),
        conversion_id: Some("c9".into()),
        reason: "unknown_quote".into(),
    };
    out.fx(FxInputRejected::EVENT_TYPE, "fx marker", &fx_marker);

    // Fees: October's t-0; November's t-1..t-4 (t-1's older version late, t-3 waived); t-5 completed in
    // October after it closed, counted on November's invoice as an adjustment.
    let fees = [
        Fee {
            transfer: "t-0",
            kind: TransferKind::Deposit,
            amount: usd(5_000),
            completed_at: at(2026, 10, 15, 12),
            fee: usd(50),
            invoice: Some("inv_2026-10"),
            adjustment: false,
        },
        Fee {
            transfer: "t-1",
            kind: TransferKind::Payout,
            amount: usd(10_000),
            completed_at: at(2026, 11, 3, 12),
            fee: usd(150),
            invoice: Some("inv_2026-11"),
            adjustment: false,
        },
        Fee {
            transfer: "t-2",
            kind: TransferKind::Payout,
            amount: usd(20_000),
            completed_at: at(2026, 11, 4, 10),
            fee: usd(250),
            invoice: Some("inv_2026-11"),
            adjustment: false,
        },
        Fee {
            transfer: "t-3",
            kind: TransferKind::Deposit,
            amount: usd(100),
            completed_at: at(2026, 11, 4, 11),
            fee: usd(0),
            invoice: None,
            adjustment: false,
        },
        Fee {
            transfer: "t-4",
            kind: TransferKind::Payout,
            amount: eur(10_000),
            completed_at: at(2026, 11, 5, 12),
            fee: eur(100),
            invoice: Some("inv_2026-11"),
            adjustment: false,
        },
        Fee {
            transfer: "t-5",
            kind: TransferKind::Payout,
            amount: usd(30_000),
            completed_at: at(2026, 10, 31, 23),
            fee: usd(300),
            invoice: Some("inv_2026-11"),
            adjustment: true,
        },
    ];
    for f in &fees {
        let t = f.transfer;
        if f.fee.amount_minor == 0 {
            out.billing(FeeCharged::EVENT_TYPE, &format!("{t} v1"), fee_charged(f, FeeStatus::Waived, 1));
            continue;
        }
        let booked = fee_charged(f, FeeStatus::Booked, 2);
        if t == "t-1" {
            out.fee_booking(t, f.fee);
            out.billing(FeeCharged::EVENT_TYPE, &format!("{t} v2"), &booked);
            out.billing(FeeCharged::EVENT_TYPE, &format!("{t} v1"), fee_charged(f, FeeStatus::Booking, 1));
        } else {
            out.billing(FeeCharged::EVENT_TYPE, &format!("{t} v1"), fee_charged(f, FeeStatus::Booking, 1));
            out.fee_booking(t, f.fee);
            out.billing(FeeCharged::EVENT_TYPE, &format!("{t} v2"), &booked);
        }
    }
    out.booking(
        BookingPurpose::Plan,
        "billing-plan/acme/2026-11",
        "2026-11",
        &[("billing:receivable", usd(-1_000)), ("billing:fees", usd(1_000))],
        None,
    );
    let october = vec![line("usage/deposit/USD", LineKind::Usage, Some(TransferKind::Deposit), 1, usd(50))];
    out.billing(
        InvoiceRecorded::EVENT_TYPE,
        "oct v1",
        invoice("2026-10", InvoiceStatus::Draft, 1, october.clone()),
    );
    out.billing(
        InvoiceRecorded::EVENT_TYPE,
        "oct v2",
        invoice("2026-10", InvoiceStatus::Finalized, 2, october),
    );
    let nov_v1 = invoice(
        "2026-11",
        InvoiceStatus::Draft,
        1,
        vec![line("usage/payout/USD", LineKind::Usage, Some(TransferKind::Payout), 1, usd(150))],
    );
    out.billing(InvoiceRecorded::EVENT_TYPE, "nov v1", &nov_v1);
    let billing_marker = |tag: &str| BillingInputRejected {
        input_event_id: derived_id(&["e2e-fx-billing-read", tag]),
        input_event_type: "billing.fee_config_upserted".into(),
        transfer_id: None,
        reason: format!("min above max ({tag})"),
    };
    out.billing(BillingInputRejected::EVENT_TYPE, "marker 1", billing_marker("marker 1"));
    out.send(&cfg).await?;

    // Everything of the first send has landed in Postgres once the markers have (each topic is keyed by
    // tenant: one partition, landed in order).
    let pg = p.pg().await?;
    let landed = |table: &'static str, reason: String| {
        let pg = pg.clone();
        async move {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE reason = $1"))
                .bind(reason)
                .fetch_one(&pg)
                .await?;
            anyhow::Ok(n == 1)
        }
    };
    let deadline = Instant::now() + WAIT;
    while !(landed("fx_rejections", "unknown_quote".into()).await?
        && landed("billing_rejections", billing_marker("marker 1").reason).await?)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first outputs did not land; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Invoice lines: version 1's single line, before version 2 replaces it.
    let inv = until(&p, "/v1/invoices/inv_2026-11", v, |j| j["version"] == 1).await?;
    anyhow::ensure!(
        ids(&inv, "lines", "line_id") == ["usage/payout/USD"] && inv["lines"][0]["count"] == 1,
        "{inv}"
    );
    let nov_lines = vec![
        line("usage/payout/USD", LineKind::Usage, Some(TransferKind::Payout), 2, usd(400)),
        line("usage/payout/EUR", LineKind::Usage, Some(TransferKind::Payout), 1, eur(100)),
        line("plan/basic", LineKind::Plan, None, 1, usd(1_000)),
        line("adjustment/2026-10/payout/USD", LineKind::Adjustment, Some(TransferKind::Payout), 1, usd(300)),
    ];
    out.billing(
        InvoiceRecorded::EVENT_TYPE,
        "nov v2",
        invoice("2026-11", InvoiceStatus::Draft, 2, nov_lines),
    );
    // A late copy of version 1 (another event id, as a replay of older output would be).
    out.billing(InvoiceRecorded::EVENT_TYPE, "nov v1 late", &nov_v1);
    out.billing(BillingInputRejected::EVENT_TYPE, "marker 2", billing_marker("marker 2"));
    out.send(&cfg).await?;
    while !landed("billing_rejections", billing_marker("marker 2").reason).await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the second outputs did not land; logs in {}",
            p.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let inv = get(&p, "/v1/invoices/inv_2026-11", Some(v)).await?.json;
    anyhow::ensure!(
        inv["version"] == 2
            && inv["status"] == "draft"
            && ids(&inv, "lines", "line_id")
                == ["usage/payout/USD", "usage/payout/EUR", "plan/basic", "adjustment/2026-10/payout/USD"]
            && inv["lines"][0]["count"] == 2
            && minor(&inv["lines"][0]["amount"]) == 400
            && inv["lines"][1]["amount"] == serde_json::json!({"amount_minor": 100, "currency": "EUR"})
            && inv["lines"][3]["source_period"] == "2026-10"
            && inv["lines"][3]["sources"] == serde_json::json!(["t-5"])
            && inv["totals"]
                == serde_json::json!([{"amount_minor": 100, "currency": "EUR"}, {"amount_minor": 1700, "currency": "USD"}])
            && inv["line_count"] == 4,
        "{inv}"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoice_lines WHERE tenant_id = $1 AND invoice_id = 'inv_2026-11' AND invoice_version = 2",
    )
    .bind(TENANT)
    .fetch_one(&pg)
    .await?;
    anyhow::ensure!(stored == 4, "invoice_lines hold {stored} lines of version 2");
    expect(&p, "/v1/invoices/inv_2099-01", Some(v), 404, "not_found", None).await?;
    expect(&p, "/v1/invoices/inv%20x", Some(v), 400, "invalid_id", Some("invoice_id")).await?;

    // Invoice list: by period, and a page at a time.
    let list = get(&p, "/v1/invoices?period=2026-11", Some(v)).await?.json;
    anyhow::ensure!(
        ids(&list, "invoices", "invoice_id") == ["inv_2026-11"] && list["next_cursor"].is_null(),
        "{list}"
    );
    anyhow::ensure!(
        list["invoices"][0].get("lines").is_none() && list["invoices"][0]["line_count"] == 4,
        "{list}"
    );
    let mut seen = Vec::new();
    let mut path = "/v1/invoices?limit=1".to_owned();
    for _ in 0..3 {
        let page = get(&p, &path, Some(v)).await?.json;
        seen.extend(ids(&page, "invoices", "invoice_id"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/invoices?limit=1&after={c}"),
            None => break,
        }
    }
    anyhow::ensure!(seen == ["inv_2026-10", "inv_2026-11"], "pages: {seen:?}");
    let oct = get(&p, "/v1/invoices/inv_2026-10", Some(v)).await?.json;
    anyhow::ensure!(oct["status"] == "finalized" && oct["version"] == 2, "{oct}");
    expect(&p, "/v1/invoices?period=2026-13", Some(v), 400, "invalid_period", Some("period")).await?;
    expect(&p, "/v1/invoices?after=garbage", Some(v), 400, "invalid_cursor", Some("after")).await?;
    expect(&p, "/v1/invoices?limit=0", Some(v), 400, "invalid_limit", Some("limit")).await?;

    // Rates: the latest per pair, whoever published them; pages of two.
    let rates = get(&p, "/v1/fx/rates?limit=2", Some(v)).await?.json;
    anyhow::ensure!(
        ids(&rates, "rates", "base") == ["EUR", "GBP"]
            && rates["rates"][0]["rate_e9"] == 1_092_560_000
            && rates["rates"][0]["rate"] == "1.09256"
            && rates["rates"][0]["as_of"] == "2026-11-20T11:00:00Z"
            && rates["next_cursor"] == "GBP/USD",
        "{rates}"
    );
    let rest = get(&p, "/v1/fx/rates?limit=2&after=GBP/USD", Some(v)).await?.json;
    anyhow::ensure!(
        ids(&rest, "rates", "quote") == ["JPY"]
            && rest["rates"][0]["rate"] == "150.5"
            && rest["next_cursor"].is_null(),
        "{rest}"
    );
    expect(&p, "/v1/fx/rates?after=EUR", Some(v), 400, "invalid_cursor", Some("after")).await?;

    // Quotes: forward-only (the late version 1 did not overwrite version 2).
    let q = get(&p, "/v1/fx/quotes/q1", Some(v)).await?.json;
    anyhow::ensure!(
        q["status"] == "used"
            && q["version"] == 2
            && q["conversion_id"] == "c1"
            && q["sell"] == serde_json::json!({"amount_minor": 10000, "currency": "EUR"})
            && q["mid_rate"] == "1.09256"
            && q["rate"] == "1.08703"
            && q["rates"][0]["source"] == "key:feed-1",
        "{q}"
    );
    let q2 = get(&p, "/v1/fx/quotes/q2", Some(v)).await?.json;
    anyhow::ensure!(q2["status"] == "refused" && q2["buy"].is_null() && q2["reason"] == q2_reason(), "{q2}");
    expect(&p, "/v1/fx/quotes/q-unknown", Some(v), 404, "not_found", None).await?;
    let long = "q".repeat(129);
    expect(&p, &format!("/v1/fx/quotes/{long}"), Some(v), 400, "invalid_id", Some("quote_id")).await?;

    // Conversions: amounts as booked, the ledger's answer beside them.
    let c = get(&p, "/v1/fx/conversions/c1", Some(v)).await?.json;
    let a = &c["amounts"];
    anyhow::ensure!(
        c["status"] == "completed"
            && c["version"] == 2
            && minor(&a["sell"]) == 10_000
            && a["sell"]["currency"] == "EUR"
            && (minor(&a["buy"]), minor(&a["mid_value"]), minor(&a["fee"]), minor(&a["residue"]))
                == (10_870, 10_926, 55, 1)
            && a["buy"]["currency"] == "USD"
            && a["mid_value_exact"] == "10925.6"
            && c["booking"]
                == serde_json::json!({"booking_id": "fx-booking/acme/c1", "outcome": "booked", "reason": null}),
        "{c}"
    );
    let c4 = get(&p, "/v1/fx/conversions/c4", Some(v)).await?.json;
    anyhow::ensure!(
        c4["status"] == "rejected"
            && c4["booking"]["outcome"] == "refused"
            && c4["booking"]["reason"] == refused,
        "{c4}"
    );
    let c2 = get(&p, "/v1/fx/conversions/c2", Some(v)).await?.json;
    anyhow::ensure!(
        c2["amounts"].is_null() && c2["booking"].is_null() && c2["reason"] == "quote_expired",
        "{c2}"
    );
    let c3 = get(&p, "/v1/fx/conversions/c3", Some(v)).await?.json;
    anyhow::ensure!(c3["status"] == "pending_approval" && c3["otc"] == true, "{c3}");
    expect(&p, "/v1/fx/conversions/c-unknown", Some(v), 404, "not_found", None).await?;
    expect(&p, "/v1/fx/conversions/c%201", Some(v), 400, "invalid_id", Some("conversion_id")).await?;

    // Fees: one transfer's (forward-only), and pages of a month's in completion order.
    let f = get(&p, "/v1/fees?transfer_id=t-1", Some(v)).await?.json;
    let f1 = &f["fees"][0];
    anyhow::ensure!(
        f["fees"].as_array().map(Vec::len) == Some(1)
            && f1["status"] == "booked"
            && f1["version"] == 2
            && minor(&f1["fee"]) == 150
            && f1["invoice_id"] == "inv_2026-11"
            && f1["booking_id"] == "billing-fee/acme/t-1"
            && f1["parts"][0]["bps"] == 150
            && f1["period"] == "2026-11",
        "{f}"
    );
    let f5 = get(&p, "/v1/fees?transfer_id=t-5", Some(v)).await?.json;
    anyhow::ensure!(f5["fees"][0]["adjustment"] == true && f5["fees"][0]["period"] == "2026-10", "{f5}");
    let mut seen = Vec::new();
    let mut path = "/v1/fees?period=2026-11&limit=2".to_owned();
    for _ in 0..4 {
        let page = get(&p, &path, Some(v)).await?.json;
        seen.extend(ids(&page, "fees", "transfer_id"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/fees?period=2026-11&limit=2&after={c}"),
            None => break,
        }
    }
    anyhow::ensure!(seen == ["t-1", "t-2", "t-3", "t-4"], "pages: {seen:?}");
    let on_invoice = get(&p, "/v1/fees?invoice_id=inv_2026-11", Some(v)).await?.json;
    anyhow::ensure!(ids(&on_invoice, "fees", "transfer_id") == ["t-5", "t-1", "t-2", "t-4"], "{on_invoice}");
    expect(&p, "/v1/fees?transfer_id=t-9", Some(v), 404, "not_found", None).await?;
    expect(&p, "/v1/fees?transfer_id=t%201", Some(v), 400, "invalid_id", Some("transfer_id")).await?;
    expect(&p, "/v1/fees?period=11-2026", Some(v), 400, "invalid_period", Some("period")).await?;
    expect(&p, "/v1/fees?after=1_t%201", Some(v), 400, "invalid_cursor", Some("after")).await?;
    expect(&p, "/v1/fees?colour=red", Some(v), 400, "invalid_query", None).await?;

    // Analytics from ClickHouse: booked fees per day, kind and currency; completed conversions per pair.
    let revenue_path = "/v1/analytics/fee-revenue?from=2026-10-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    let revenue = until(&p, revenue_path, v, |j| j["days"].as_array().is_some_and(|d| d.len() == 5)).await?;
    let days: Vec<(String, String, String, i64, i64)> = revenue["days"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (
                s("day"),
                s("kind"),
                s("currency"),
                d["fees"].as_i64().unwrap_or(-1),
                d["fee_minor"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: Vec<(String, String, String, i64, i64)> = [
        ("2026-10-15", "deposit", "USD", 1, 50),
        ("2026-10-31", "payout", "USD", 1, 300),
        ("2026-11-03", "payout", "USD", 1, 150),
        ("2026-11-04", "payout", "USD", 1, 250),
        ("2026-11-05", "payout", "EUR", 1, 100),
    ]
    .iter()
    .map(|(d, k, c, n, m)| ((*d).to_owned(), (*k).to_owned(), (*c).to_owned(), *n, *m))
    .collect();
    anyhow::ensure!(days == want, "{revenue}");
    anyhow::ensure!(revenue.get("complete_through").is_some() && revenue["truncated"] == false, "{revenue}");
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    let volume_path = format!(
        "/v1/analytics/fx-volume?from={}&to={}",
        (now - hour).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + hour).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let volume = until(&p, &volume_path, v, |j| j["pairs"].as_array().is_some_and(|d| !d.is_empty())).await?;
    anyhow::ensure!(
        volume["pairs"]
            == serde_json::json!([{"pair": "EUR/USD", "sell_currency": "EUR", "buy_currency": "USD",
                                  "conversions": 1, "sold_minor": 10000, "bought_minor": 10870}])
            && volume.get("complete_through").is_some(),
        "{volume}"
    );
    expect(
        &p,
        "/v1/analytics/fee-revenue?to=2026-12-01T00:00:00Z",
        Some(v),
        400,
        "invalid_time",
        Some("from"),
    )
    .await?;
    expect(
        &p,
        "/v1/analytics/fx-volume?from=2025-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        Some(v),
        400,
        "invalid_time",
        Some("to"),
    )
    .await?;

    // Every read is its tenant's: another tenant's key, a rates feed's key, no key.
    for path in [
        "/v1/fx/quotes/q1",
        "/v1/fx/conversions/c1",
        "/v1/fx/rates",
        "/v1/invoices",
        "/v1/invoices/inv_2026-11",
        "/v1/fees?transfer_id=t-1",
        revenue_path,
        volume_path.as_str(),
    ] {
        expect(&p, path, Some(&stranger), 403, "wrong_tenant", None).await?;
        expect(&p, path, Some(&feed), 403, "forbidden_role", None).await?;
        expect(&p, path, None, 401, "missing_api_key", None).await?;
    }

    // Rejections are kept in Postgres with their reasons.
    anyhow::ensure!(landed("fx_rejections", "unknown_quote".into()).await?, "fx_rejections");
    let bookings: Vec<(String, String)> = sqlx::query_as(
        "SELECT booking_id, outcome FROM ledger_bookings WHERE tenant_id = $1 ORDER BY booking_id",
    )
    .bind(TENANT)
    .fetch_all(&pg)
    .await?;
    anyhow::ensure!(
        bookings.len() == 8 && bookings.iter().filter(|b| b.1 == "refused").count() == 1,
        "{bookings:?}"
    );

    // Both stores agree, the invoices are their lines and their fee legs, c1's booking is posted.
    p.assert_reconciled().await;

    // A corrupted invoice line is named: totals, fee legs and its own fees all disagree with it.
    sqlx::query(
        "UPDATE invoice_lines SET amount_minor = amount_minor + 1
         WHERE tenant_id = $1 AND invoice_id = 'inv_2026-11' AND line_id = 'usage/payout/USD'",
    )
    .bind(TENANT)
    .execute(&pg)
    .await?;
    pg.close().await;
    let report = p.reconcile(Duration::ZERO).await?;
    let off: Vec<String> =
        report.discrepancies().iter().map(|r| format!("{} {}", r.check.as_str(), r.scope)).collect();
    anyhow::ensure!(
        off == [
            "invoice_totals acme/live",
            "invoice_totals acme/live/invoice inv_2026-11 USD",
            "invoice_legs acme/live",
            "invoice_legs acme/live/invoice inv_2026-11 USD",
            "invoice_usage_lines acme/live",
            "invoice_usage_lines acme/live/invoice inv_2026-11 line usage/payout/USD",
        ],
        "{}",
        report.diff_table()
    );

    stop.cancel();
    pg_sink.await??;
    ch_sink.await??;
    p.finish().await
}

fn q2_reason() -> &'static str {
    "unknown_pair: no rate for EUR/CHF"
}
