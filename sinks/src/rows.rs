//! What the sinks write: one small mapping per event type. Adding a processor's output to the stores
//! means a variant here, a table in each store and a statement in each sink, not a new sink.
use chrono::{DateTime, Utc};
use riverbank_runtime::keystore::crypto::field;
use riverbank_schemas::billing::{BillingInputRejected, FeeCharged, FeeStatus, InvoiceRecorded};
use riverbank_schemas::commands::{command_types, FxRate, FxRatesPublished};
use riverbank_schemas::fx::{ConversionRecorded, ConversionStatus, FxInputRejected, QuoteRecorded};
use riverbank_schemas::kyc::{event_types as kyc_types, KycInputRejected, UserKycChanged, TIER_MAX};
use riverbank_schemas::ledger::{BookingOutcome, BookingRecorded};
use riverbank_schemas::risk::{event_types as risk_types, DecisionRecorded, RiskInputRejected};
use riverbank_schemas::transfers::{
    BalanceChanged, InputRejected, LedgerPosting, RiskOutcome, TransferStatusChanged,
};
use riverbank_schemas::{AuditCheckpoint, AuditRecord, Environment, RawEnvelope, WebhookReceived};
use uuid::Uuid;

/// Envelope facts every row keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub environment: Environment,
    pub occurred_at: DateTime<Utc>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Audit(Meta, Box<AuditRecord>),
    /// A signed audit checkpoint.
    AuditCheckpoint(Meta, AuditCheckpoint),
    Status(Meta, TransferStatusChanged),
    Posting(Meta, LedgerPosting),
    Balance(Meta, BalanceChanged),
    Rejection(Meta, InputRejected),
    /// A `risk.decision_recorded`, live or shadow (Postgres keeps live ones only).
    RiskDecision(Meta, Box<DecisionRecorded>),
    RiskRejection(Meta, RiskInputRejected),
    /// A `user.*` event (its type) of the KYC processor.
    User(Meta, &'static str, UserKycChanged),
    KycRejection(Meta, KycInputRejected),
    /// An `fx.rates_published`: its rates, one pair each (a pair named twice: the last one).
    FxRates(Meta, FxRatesPublished),
    Quote(Meta, Box<QuoteRecorded>),
    Conversion(Meta, Box<ConversionRecorded>),
    FxRejection(Meta, FxInputRejected),
    /// A `ledger.booking_recorded`: what became of an FX or billing booking.
    Booking(Meta, BookingRecorded),
    Fee(Meta, Box<FeeCharged>),
    Invoice(Meta, Box<InvoiceRecorded>),
    BillingRejection(Meta, BillingInputRejected),
    /// One sealed value of a `webhook.received` body (Postgres `personal_data`; nothing in ClickHouse).
    PersonalData(Meta, Box<PersonalValue>),
}

/// A sealed value found in a webhook body, with what opening it needs besides the data key: the
/// tenant and environment (the meta), the subject and class (from its key id), the JSON pointer it sits
/// at (the associated data's field) and the event id (its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalValue {
    pub subject: String,
    pub data_class: &'static str,
    /// The concrete RFC 6901 pointer in `WebhookReceived.body`.
    pub pointer: String,
    /// The associated data's record: the webhook's event id as text.
    pub record: String,
    /// The `rbf1.` envelope, as ingest produced it.
    pub sealed: String,
    pub provider: String,
}

/// Most sealed values one webhook body may hold (a definition declares at most 64 pointers; `*` over an
/// array multiplies them). A body with more is dead-lettered with the count.
pub const PERSONAL_VALUES_PER_EVENT_MAX: usize = 4096;

impl Row {
    pub fn meta(&self) -> &Meta {
        match self {
            Row::Audit(m, _)
            | Row::AuditCheckpoint(m, _)
            | Row::Status(m, _)
            | Row::Posting(m, _)
            | Row::Balance(m, _)
            | Row::RiskDecision(m, _)
            | Row::RiskRejection(m, _)
            | Row::Rejection(m, _)
            | Row::User(m, _, _)
            | Row::KycRejection(m, _)
            | Row::FxRates(m, _)
            | Row::Quote(m, _)
            | Row::Conversion(m, _)
            | Row::FxRejection(m, _)
            | Row::Booking(m, _)
            | Row::Fee(m, _)
            | Row::Invoice(m, _)
            | Row::BillingRejection(m, _)
            | Row::PersonalData(m, _) => m,
        }
    }
}

/// The event types the sinks project. The sinks read every topic a registered processor declares
/// with one of these (`src/registry.rs`); a declared output with none must be read by a processor.
pub const PROJECTED: &[&str] = &[
    AuditRecord::EVENT_TYPE,
    AuditCheckpoint::EVENT_TYPE,
    TransferStatusChanged::EVENT_TYPE,
    LedgerPosting::EVENT_TYPE,
    BalanceChanged::EVENT_TYPE,
    InputRejected::EVENT_TYPE,
    risk_types::DECISION_RECORDED,
    risk_types::INPUT_REJECTED,
    kyc_types::USER_KYC_UPDATED,
    kyc_types::USER_VERIFIED,
    kyc_types::USER_FROZEN,
    kyc_types::USER_UNFROZEN,
    kyc_types::USER_CLOSED,
    kyc_types::USER_KYC_EXPIRING,
    kyc_types::KYC_INPUT_REJECTED,
    command_types::FX_RATES_PUBLISHED,
    QuoteRecorded::EVENT_TYPE,
    ConversionRecorded::EVENT_TYPE,
    FxInputRejected::EVENT_TYPE,
    BookingRecorded::EVENT_TYPE,
    FeeCharged::EVENT_TYPE,
    InvoiceRecorded::EVENT_TYPE,
    BillingInputRejected::EVENT_TYPE,
];

fn typed<P: serde::de::DeserializeOwned>(e: &RawEnvelope) -> Result<P, String> {
    serde_json::from_value(e.payload.clone())
        .map_err(|err| format!("payload of {} does not match its schema: {err}", e.event_type))
}

/// The earliest and latest instants both stores can hold: ClickHouse `DateTime` is unsigned 32-bit
/// seconds (up to 2106-02-07), PostgreSQL `timestamptz` is wider. A time outside is dead-lettered by
/// both sinks alike, so neither store's batch can fail on it.
pub const TIME_MIN_S: i64 = 0;
pub const TIME_MAX_S: i64 = u32::MAX as i64;

fn check_time(field: &str, t: &DateTime<Utc>) -> Result<(), String> {
    if (TIME_MIN_S..=TIME_MAX_S).contains(&t.timestamp()) {
        Ok(())
    } else {
        Err(format!("{field} {t} is outside 1970-01-01..2106-02-07, which the stores can hold"))
    }
}

/// PostgreSQL `text` cannot hold a NUL character; a row with one would fail its whole batch.
fn check_text(field: &str, v: &str) -> Result<(), String> {
    if v.contains('\0') {
        Err(format!("{field} contains a NUL character"))
    } else {
        Ok(())
    }
}

/// Decode one message into its row and the time it was ingested (ms). The error is the dead-letter
/// reason. Every constraint the stores enforce is checked here first (times in range, no NUL in text,
/// the CHECK constraints of the migrations, integer widths), so no row can fail a batch and wedge the
/// sink for every tenant behind it: it is dead-lettered instead.
pub fn decode(
    topic: &str,
    env: Environment,
    partition: i32,
    offset: i64,
    payload: &[u8],
) -> Result<(Vec<Row>, i64), String> {
    let e: RawEnvelope = serde_json::from_slice(payload).map_err(|err| format!("not an envelope: {err}"))?;
    let understood = match e.event_type.as_str() {
        AuditRecord::EVENT_TYPE => AuditRecord::SCHEMA_VERSION,
        _ => 1,
    };
    if e.schema_version != understood {
        return Err(format!("{} v{} is not understood by the sinks", e.event_type, e.schema_version));
    }
    if e.environment != env {
        return Err(format!("envelope says environment {} on a {env} topic", e.environment));
    }
    let ingested_ms = e.ingested_at.timestamp_millis();
    if e.event_type == WebhookReceived::EVENT_TYPE {
        let sealed = sealed_values(&e.payload["body"])?;
        // A webhook without personal data becomes no row at all, and nothing of it is checked further.
        if sealed.is_empty() {
            return Ok((vec![], ingested_ms));
        }
        check_time("occurred_at", &e.occurred_at)?;
        check_text("tenant_id", &e.tenant_id)?;
        let provider = e.payload["provider"].as_str().ok_or("webhook.received without its provider")?;
        check_text("provider", provider)?;
        let meta = Meta {
            event_id: e.event_id,
            tenant_id: e.tenant_id.clone(),
            environment: e.environment,
            occurred_at: e.occurred_at,
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
        };
        let record = e.event_id.to_string();
        let rows = sealed
            .into_iter()
            .map(|(pointer, sealed, parsed)| {
                check_text("personal data pointer", &pointer)?;
                check_text("personal data subject", &parsed.subject)?;
                Ok(Row::PersonalData(
                    meta.clone(),
                    Box::new(PersonalValue {
                        subject: parsed.subject,
                        data_class: parsed.class.as_str(),
                        pointer,
                        record: record.clone(),
                        sealed: sealed.to_owned(),
                        provider: provider.to_owned(),
                    }),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        return Ok((rows, ingested_ms));
    }
    check_time("occurred_at", &e.occurred_at)?;
    check_time("ingested_at", &e.ingested_at)?;
    check_text("tenant_id", &e.tenant_id)?;
    let meta = Meta {
        event_id: e.event_id,
        tenant_id: e.tenant_id.clone(),
        environment: e.environment,
        occurred_at: e.occurred_at,
        source_topic: topic.to_owned(),
        source_partition: partition,
        source_offset: offset,
    };
    let row = match e.event_type.as_str() {
        AuditRecord::EVENT_TYPE => {
            let a: AuditRecord = typed(&e)?;
            if a.audit_id != e.event_id || a.tenant_id != e.tenant_id || a.environment != e.environment {
                return Err("envelope and audit record disagree on id, tenant or environment".to_owned());
            }
            if i64::try_from(a.payload_bytes).is_err() || i64::try_from(a.seq).is_err() || a.seq == 0 {
                return Err("payload_bytes or seq out of range".to_owned());
            }
            // Asserted where consumed too: a record whose hash is not its own is never stored.
            if a.hash != a.compute_hash() {
                return Err(format!("audit record {} (seq {}) does not hash to its hash", a.audit_id, a.seq));
            }
            check_time("recorded_at", &a.recorded_at)?;
            check_time("audit occurred_at", &a.occurred_at)?;
            for (f, v) in [
                ("actor", &a.actor),
                ("action", &a.action),
                ("resource_type", &a.resource_type),
                ("resource_id", &a.resource_id),
                ("source_event_type", &a.source_event_type),
                ("prev_hash", &a.prev_hash),
            ] {
                check_text(f, v)?;
            }
            for (f, v) in [
                ("before", &a.before),
                ("after", &a.after),
                ("ip", &a.ip),
                ("user_agent", &a.user_agent),
                ("request_id", &a.request_id),
                ("trace_id", &a.trace_id),
            ] {
                if let Some(v) = v {
                    check_text(f, v)?;
                }
            }
            Row::Audit(meta, Box::new(a))
        }
        AuditCheckpoint::EVENT_TYPE => {
            let c: AuditCheckpoint = typed(&e)?;
            if c.checkpoint_id != e.event_id || c.tenant_id != e.tenant_id || c.environment != e.environment {
                return Err("envelope and audit checkpoint disagree on id, tenant or environment".to_owned());
            }
            if i64::try_from(c.tree_size).is_err() || c.tree_size == 0 {
                return Err("tree_size out of range".to_owned());
            }
            check_time("checkpoint occurred_at", &c.occurred_at)?;
            for (f, v) in [("key_id", &c.key_id), ("signature", &c.signature), ("root_hash", &c.root_hash)] {
                check_text(f, v)?;
            }
            Row::AuditCheckpoint(meta, c)
        }
        TransferStatusChanged::EVENT_TYPE => {
            let s: TransferStatusChanged = typed(&e)?;
            if s.amount.amount_minor <= 0 || s.version == 0 {
                return Err("status event with a non-positive amount or version 0".to_owned());
            }
            if i32::try_from(s.version).is_err() {
                return Err("status version does not fit a 32-bit integer".to_owned());
            }
            check_text("transfer_id", &s.transfer_id)?;
            if let Some(r) = &s.reason {
                check_text("reason", r)?;
            }
            Row::Status(meta, s)
        }
        LedgerPosting::EVENT_TYPE => {
            let p: LedgerPosting = typed(&e)?;
            if p.amount_minor == 0 {
                return Err("posting leg of zero".to_owned());
            }
            check_text("transfer_id", &p.transfer_id)?;
            check_text("account", &p.account)?;
            Row::Posting(meta, p)
        }
        BalanceChanged::EVENT_TYPE => {
            let b: BalanceChanged = typed(&e)?;
            if b.pending_debit_minor < 0 || b.pending_credit_minor < 0 {
                return Err("balance with a negative pending amount".to_owned());
            }
            if i64::try_from(b.version).is_err() {
                return Err("balance version does not fit a 64-bit integer".to_owned());
            }
            check_text("account", &b.account)?;
            Row::Balance(meta, b)
        }
        InputRejected::EVENT_TYPE => {
            let r: InputRejected = typed(&e)?;
            check_text("input_event_type", &r.input_event_type)?;
            check_text("reason", &r.reason)?;
            if let Some(t) = &r.transfer_id {
                check_text("transfer_id", t)?;
            }
            Row::Rejection(meta, r)
        }
        risk_types::DECISION_RECORDED => Row::RiskDecision(meta, Box::new(risk_decision(&e)?)),
        risk_types::INPUT_REJECTED => {
            let r: RiskInputRejected = typed(&e)?;
            check_text("input_event_type", &r.input_event_type)?;
            check_text("reason", &r.reason)?;
            if let Some(t) = &r.transfer_id {
                check_text("transfer_id", t)?;
            }
            Row::RiskRejection(meta, r)
        }
        kyc_types::KYC_INPUT_REJECTED => {
            let r: KycInputRejected = typed(&e)?;
            check_text("input_event_type", &r.input_event_type)?;
            check_text("reason", &r.reason)?;
            for (f, v) in [("user_id", &r.user_id), ("case_id", &r.case_id)] {
                if let Some(v) = v {
                    check_text(f, v)?;
                }
            }
            Row::KycRejection(meta, r)
        }
        command_types::FX_RATES_PUBLISHED => Row::FxRates(meta, fx_rates(&e)?),
        QuoteRecorded::EVENT_TYPE => Row::Quote(meta, Box::new(quote(&e)?)),
        ConversionRecorded::EVENT_TYPE => Row::Conversion(meta, Box::new(conversion(&e)?)),
        FxInputRejected::EVENT_TYPE => {
            let r: FxInputRejected = typed(&e)?;
            check_text("input_event_type", &r.input_event_type)?;
            check_text("reason", &r.reason)?;
            check_opt_text(&[("quote_id", &r.quote_id), ("conversion_id", &r.conversion_id)])?;
            Row::FxRejection(meta, r)
        }
        BookingRecorded::EVENT_TYPE => Row::Booking(meta, booking(&e)?),
        FeeCharged::EVENT_TYPE => Row::Fee(meta, Box::new(fee(&e)?)),
        InvoiceRecorded::EVENT_TYPE => Row::Invoice(meta, Box::new(invoice(&e)?)),
        BillingInputRejected::EVENT_TYPE => {
            let r: BillingInputRejected = typed(&e)?;
            check_text("input_event_type", &r.input_event_type)?;
            check_text("reason", &r.reason)?;
            check_opt_text(&[("transfer_id", &r.transfer_id)])?;
            Row::BillingRejection(meta, r)
        }
        other => match kyc_types::USER.iter().find(|t| **t == other) {
            Some(event_type) => Row::User(meta, event_type, user_event(&e)?),
            None => return Err(format!("the sinks have no mapping for {other}")),
        },
    };
    Ok((vec![row], ingested_ms))
}

/// Every sealed value (`rbf1.` envelope, `riverbank_crypto::field::parse`) in a webhook body: its
/// concrete RFC 6901 pointer, the envelope and what its key id names. Strings that are not envelopes
/// (clear values the definition does not declare) are no concern of the store and are passed over.
fn sealed_values(body: &serde_json::Value) -> Result<Vec<(String, &str, field::SealedField)>, String> {
    fn walk<'a>(
        v: &'a serde_json::Value,
        at: &mut String,
        out: &mut Vec<(String, &'a str, field::SealedField)>,
    ) -> Result<(), String> {
        match v {
            serde_json::Value::String(s) if s.starts_with("rbf1.") => {
                if let Some(parsed) = field::parse(s) {
                    if out.len() == PERSONAL_VALUES_PER_EVENT_MAX {
                        return Err(format!(
                            "the webhook body holds more than {PERSONAL_VALUES_PER_EVENT_MAX} sealed values"
                        ));
                    }
                    out.push((at.clone(), s.as_str(), parsed));
                }
            }
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    walk(child, at, out)?;
                    at.truncate(len);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&i.to_string());
                    walk(child, at, out)?;
                    at.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(body, &mut String::new(), &mut out)?;
    Ok(out)
}

/// A `user.*` payload, checked against what the stores enforce.
fn user_event(e: &RawEnvelope) -> Result<UserKycChanged, String> {
    let u: UserKycChanged = typed(e)?;
    if u.version == 0 || i64::try_from(u.version).is_err() {
        return Err("user version must be 1 to 2^63-1".to_owned());
    }
    if u.tier > TIER_MAX {
        return Err(format!("tier {} is above {TIER_MAX}", u.tier));
    }
    if let Some(t) = &u.kyc_expires_at {
        check_time("kyc_expires_at", t)?;
    }
    check_text("user_id", &u.user_id)?;
    for (f, v) in
        [("case_id", &u.case_id), ("provider", &u.provider), ("reason", &u.reason), ("actor", &u.actor)]
    {
        if let Some(v) = v {
            check_text(f, v)?;
        }
    }
    Ok(u)
}

/// How a risk outcome is written in both stores.
pub fn outcome_str(o: RiskOutcome) -> &'static str {
    match o {
        RiskOutcome::Approve => "approve",
        RiskOutcome::Review => "review",
        RiskOutcome::Block => "block",
    }
}

/// How a booking's outcome is written in the stores.
pub fn booking_outcome_str(o: BookingOutcome) -> &'static str {
    match o {
        BookingOutcome::Booked => "booked",
        BookingOutcome::Refused => "refused",
    }
}

/// Where a decision stands in its transfer's sequence of decisions: 2 · transfer version, + 1 for an
/// officer's decision (which follows the screening of the same version). The review queue's
/// "latest decision" is the highest step.
pub fn risk_step(d: &DecisionRecorded) -> i64 {
    i64::from(d.transfer_version) * 2 + i64::from(d.reviewed_by.is_some())
}

/// A `risk.decision_recorded` payload, checked against what the stores enforce: the CHECK constraints
/// of `risk_decisions` (0006), integer widths, times, and no NUL in any text (PostgreSQL `text` and
/// `jsonb` refuse it), the hits' features included.
fn risk_decision(e: &RawEnvelope) -> Result<DecisionRecorded, String> {
    let d: DecisionRecorded = typed(e)?;
    if d.transfer_version == 0 || i32::try_from(d.transfer_version).is_err() {
        return Err("transfer_version must be 1 to 2^31-1".to_owned());
    }
    if i32::try_from(d.score).is_err() {
        return Err("score does not fit a 32-bit integer".to_owned());
    }
    if d.amount.amount_minor <= 0 {
        return Err("decision on a non-positive amount".to_owned());
    }
    if d.amount_report_minor.is_some_and(|a| a < 0) {
        return Err("negative amount_report_minor".to_owned());
    }
    if d.reviewed_by.is_some() != d.review_reason.is_some() {
        return Err("reviewed_by and review_reason come together".to_owned());
    }
    if d.reviewed_by.is_some() && d.decision == RiskOutcome::Review {
        return Err("an officer's decision cannot be review".to_owned());
    }
    check_time("screened_at", &d.screened_at)?;
    for (f, v) in [
        ("transfer_id", &d.transfer_id),
        ("requested_by", &d.requested_by),
        ("rule_set", &d.rule_set),
        ("rule_set_version", &d.rule_set_version),
    ] {
        check_text(f, v)?;
    }
    for (f, v) in
        [("user_id", &d.user_id), ("reviewed_by", &d.reviewed_by), ("review_reason", &d.review_reason)]
    {
        if let Some(v) = v {
            check_text(f, v)?;
        }
    }
    for h in &d.hits {
        check_text("hits.rule", &h.rule)?;
        check_text("hits.kind", &h.kind)?;
        for (k, v) in &h.features {
            check_text("hits.features", k)?;
            check_text("hits.features", v)?;
        }
    }
    for (k, v) in &d.lists {
        check_text("lists", k)?;
        check_text("lists", v)?;
    }
    if let Some(r) = &d.rate {
        check_text("rate.version", &r.version)?;
    }
    Ok(d)
}

/// Optional text fields, each checked like [`check_text`].
fn check_opt_text(fields: &[(&str, &Option<String>)]) -> Result<(), String> {
    for (f, v) in fields {
        if let Some(v) = v {
            check_text(f, v)?;
        }
    }
    Ok(())
}

/// A version the stores' `integer` columns hold (`version > 0`).
fn check_version(version: u32) -> Result<(), String> {
    if version == 0 || i32::try_from(version).is_err() {
        return Err("version must be 1 to 2^31-1".to_owned());
    }
    Ok(())
}

/// `YYYY-MM` with a month 01-12: what the `period` CHECK constraints accept.
pub fn is_period(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit)
        && text[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
}

/// An `fx.rates_published` payload, checked against `fx_rates` (0007). A pair named twice keeps its last
/// rate, as the processors reading the publication do.
fn fx_rates(e: &RawEnvelope) -> Result<FxRatesPublished, String> {
    let mut p: FxRatesPublished = typed(e)?;
    check_time("as_of", &p.as_of)?;
    check_text("published_by", &p.published_by)?;
    for r in &p.rates {
        if r.rate_e9 <= 0 {
            return Err(format!("rate of {}/{} must be positive", r.base, r.quote));
        }
        if r.base == r.quote {
            return Err(format!("a rate of {} to itself", r.base));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut last: Vec<FxRate> =
        p.rates.drain(..).rev().filter(|r| seen.insert((r.base.code(), r.quote.code()))).collect();
    last.reverse();
    p.rates = last;
    Ok(p)
}

/// An `fx.quote_recorded` payload, checked against `fx_quotes` (0007).
fn quote(e: &RawEnvelope) -> Result<QuoteRecorded, String> {
    let q: QuoteRecorded = typed(e)?;
    check_version(q.version)?;
    if i32::try_from(q.markup_bps).is_err() {
        return Err("markup_bps does not fit a 32-bit integer".to_owned());
    }
    if !matches!(q.fixed.as_str(), "sell" | "buy") {
        return Err(format!("fixed must be sell or buy, not {:?}", q.fixed));
    }
    for (side, amount, currency) in [("sell", q.sell, q.sell_currency), ("buy", q.buy, q.buy_currency)] {
        if let Some(m) = amount {
            if m.currency != currency {
                return Err(format!("{side} amount is in {}, but {side}_currency is {currency}", m.currency));
            }
        }
    }
    for (f, t) in [("rate_as_of", &q.rate_as_of), ("expires_at", &q.expires_at)] {
        if let Some(t) = t {
            check_time(f, t)?;
        }
    }
    for r in &q.rates {
        check_time("rates.as_of", &r.as_of)?;
        check_text("rates.source", &r.source)?;
        check_text("rates.version", &r.version)?;
    }
    check_text("quote_id", &q.quote_id)?;
    check_text("requested_by", &q.requested_by)?;
    check_opt_text(&[("reason", &q.reason), ("conversion_id", &q.conversion_id)])?;
    Ok(q)
}

/// An `fx.conversion_recorded` payload, checked against `fx_conversions` (0007): the mid value, fee and
/// residue in the buy currency, R = M − B − F without overflow, a completed one with its booking.
fn conversion(e: &RawEnvelope) -> Result<ConversionRecorded, String> {
    let c: ConversionRecorded = typed(e)?;
    check_version(c.version)?;
    if let Some(a) = &c.amounts {
        for (f, m) in [("mid_value", a.mid_value), ("fee", a.fee), ("residue", a.residue)] {
            if m.currency != a.buy.currency {
                return Err(format!("{f} is in {}, not in the buy currency {}", m.currency, a.buy.currency));
            }
        }
        let r = a
            .mid_value
            .amount_minor
            .checked_sub(a.buy.amount_minor)
            .and_then(|x| x.checked_sub(a.fee.amount_minor));
        if r != Some(a.residue.amount_minor) {
            return Err(format!(
                "residue {} is not mid_value {} - buy {} - fee {}",
                a.residue.amount_minor, a.mid_value.amount_minor, a.buy.amount_minor, a.fee.amount_minor
            ));
        }
        for (f, v) in [
            ("mid_value_exact", &a.mid_value_exact),
            ("buy_exact", &a.buy_exact),
            ("fee_exact", &a.fee_exact),
        ] {
            check_text(f, v)?;
        }
    }
    if c.status == ConversionStatus::Completed && (c.booking_id.is_none() || c.amounts.is_none()) {
        return Err("a completed conversion names its booking_id and amounts".to_owned());
    }
    for (f, v) in [
        ("conversion_id", &c.conversion_id),
        ("quote_id", &c.quote_id),
        ("account", &c.account),
        ("destination", &c.destination),
        ("requested_by", &c.requested_by),
    ] {
        check_text(f, v)?;
    }
    check_opt_text(&[("booking_id", &c.booking_id), ("decided_by", &c.decided_by), ("reason", &c.reason)])?;
    Ok(c)
}

/// A `ledger.booking_recorded` payload, checked against `ledger_bookings` (0007).
fn booking(e: &RawEnvelope) -> Result<BookingRecorded, String> {
    let b: BookingRecorded = typed(e)?;
    if (b.outcome == BookingOutcome::Refused) != b.reason.is_some() {
        return Err("a refused booking has a reason, a booked one none".to_owned());
    }
    check_text("booking_id", &b.booking_id)?;
    check_text("reference", &b.reference)?;
    check_opt_text(&[("reason", &b.reason)])?;
    for l in &b.legs {
        check_text("legs.account", &l.account)?;
    }
    Ok(b)
}

/// A `billing.fee_charged` payload, checked against `fees` (0007).
fn fee(e: &RawEnvelope) -> Result<FeeCharged, String> {
    let f: FeeCharged = typed(e)?;
    check_version(f.version)?;
    if f.transfer_amount.amount_minor <= 0 {
        return Err("fee on a non-positive transfer amount".to_owned());
    }
    if f.fee.amount_minor < 0 {
        return Err("negative fee".to_owned());
    }
    if !is_period(&f.period) {
        return Err(format!("period {:?} is not YYYY-MM", f.period));
    }
    if f.clamped.as_deref().is_some_and(|c| !matches!(c, "min" | "max")) {
        return Err("clamped must be min or max".to_owned());
    }
    if f.status == FeeStatus::Booked && (f.booking_id.is_none() || f.invoice_id.is_none()) {
        return Err("a booked fee names its booking_id and invoice_id".to_owned());
    }
    check_time("completed_at", &f.completed_at)?;
    check_text("transfer_id", &f.transfer_id)?;
    check_text("exact", &f.exact)?;
    check_opt_text(&[
        ("config_version", &f.config_version),
        ("clamped", &f.clamped),
        ("booking_id", &f.booking_id),
        ("invoice_id", &f.invoice_id),
        ("reason", &f.reason),
    ])?;
    Ok(f)
}

/// A `billing.invoice_recorded` payload, checked against `invoices` and `invoice_lines` (0007): line ids
/// unique within the invoice (the lines' primary key), periods `YYYY-MM`, counts within 64 bits.
fn invoice(e: &RawEnvelope) -> Result<InvoiceRecorded, String> {
    let i: InvoiceRecorded = typed(e)?;
    check_version(i.version)?;
    if !is_period(&i.period) {
        return Err(format!("period {:?} is not YYYY-MM", i.period));
    }
    if i.period_start >= i.period_end {
        return Err("period_start must be before period_end".to_owned());
    }
    for (f, t) in
        [("period_start", &i.period_start), ("period_end", &i.period_end), ("closes_at", &i.closes_at)]
    {
        check_time(f, t)?;
    }
    if i32::try_from(i.lines.len()).is_err() {
        return Err("more lines than a 32-bit integer counts".to_owned());
    }
    check_text("invoice_id", &i.invoice_id)?;
    let mut seen = std::collections::BTreeSet::new();
    for l in &i.lines {
        if !seen.insert(l.line_id.as_str()) {
            return Err(format!("line {} appears twice", l.line_id));
        }
        if i64::try_from(l.count).is_err() {
            return Err(format!("line {}: count does not fit a 64-bit integer", l.line_id));
        }
        if l.source_period.as_deref().is_some_and(|p| !is_period(p)) {
            return Err(format!("line {}: source_period is not YYYY-MM", l.line_id));
        }
        check_text("lines.line_id", &l.line_id)?;
        check_text("lines.description", &l.description)?;
        check_opt_text(&[("lines.source_period", &l.source_period)])?;
        for t in &l.sources {
            check_text("lines.sources", t)?;
        }
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_schemas::transfers::{TransferKind, TransferStatus};
    use riverbank_schemas::{Currency, Envelope, Money};

    /// Every CHECK constraint of the migrations, and where `decode` (or the type system) enforces it.
    const MIRRORED: &[(&str, &str)] = &[
        ("environment IN ('live', 'sandbox')", "Environment is an enum of the two"),
        ("payload_bytes >= 0", "u64, and checked to fit i64"),
        ("seq >= 1", "u64, checked to fit i64; seq 0 is refused"),
        ("tree_size >= 1", "u64, checked to fit i64; a checkpoint of size 0 is refused"),
        ("next_offset >= 0", "positions are offsets the log delivered"),
        ("amount_minor > 0", "status events with a non-positive amount are refused"),
        ("version > 0", "status version 0 is refused"),
        ("phase IN ('hold', 'post', 'release')", "PostingPhase is an enum of the three"),
        ("amount_minor <> 0", "a posting leg of zero is refused"),
        ("pending_debit_minor >= 0", "negative pending amounts are refused"),
        ("pending_credit_minor >= 0", "negative pending amounts are refused"),
        ("log_epoch >= 0", "epochs start at 0 and only grow"),
        ("transfer_version > 0", "risk decisions of transfer version 0 are refused"),
        ("decision IN ('approve', 'review', 'block')", "RiskOutcome is an enum of the three"),
        ("score >= 0", "u32, and checked to fit i32"),
        ("amount_report_minor >= 0", "a negative amount_report_minor is refused"),
        (
            "(reviewed_by IS NULL) = (review_reason IS NULL)",
            "a reviewer without a reason (or one without the other) is refused",
        ),
        ("reviewed_by IS NULL OR decision <> 'review'", "an officer's decision of review is refused"),
        (
            "user_status IN ('pending', 'active', 'suspended', 'frozen', 'closed')",
            "UserStatus is an enum of the five",
        ),
        (
            "kyc_status IN ('not_started', 'pending', 'in_review', 'approved', 'rejected', 'expired')",
            "KycStatus is an enum of the six",
        ),
        ("tier BETWEEN 0 AND 3", "a tier above TIER_MAX is refused"),
        ("rate_e9 > 0", "a rate that is not positive is refused"),
        ("base <> quote", "a rate of a currency to itself is refused"),
        ("status IN ('issued', 'refused', 'expired', 'used')", "QuoteStatus is an enum of the four"),
        ("fixed IN ('sell', 'buy')", "a fixed side other than sell or buy is refused"),
        ("markup_bps >= 0", "u32, and checked to fit i32"),
        ("rounding IN ('half_even', 'half_up')", "RoundingMode is an enum of the two"),
        (
            "status IN ('pending_approval', 'booking', 'completed', 'rejected')",
            "ConversionStatus is an enum of the four",
        ),
        (
            "residue_minor = mid_value_minor - buy_minor - fee_minor",
            "checked in decode, without overflow, in the order Postgres computes it",
        ),
        (
            "status <> 'completed' OR (booking_id IS NOT NULL AND sell_minor IS NOT NULL)",
            "a completed conversion without its booking id or amounts is refused",
        ),
        ("purpose IN ('fx_conversion', 'fee', 'plan')", "BookingPurpose is an enum of the three"),
        ("outcome IN ('booked', 'refused')", "BookingOutcome is an enum of the two"),
        (
            "(outcome = 'refused') = (reason IS NOT NULL)",
            "a refused booking without a reason (or a booked one with one) is refused",
        ),
        ("transfer_amount_minor > 0", "a fee on a non-positive transfer amount is refused"),
        ("period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'", "is_period"),
        ("fee_minor >= 0", "a negative fee is refused"),
        ("status IN ('booking', 'booked', 'refused', 'waived')", "FeeStatus is an enum of the four"),
        ("pricing IN ('volume', 'graduated')", "TierPricing is an enum of the two"),
        ("clamped IN ('min', 'max')", "a clamp other than min or max is refused"),
        (
            "status <> 'booked' OR (booking_id IS NOT NULL AND invoice_id IS NOT NULL)",
            "a booked fee without its booking id or invoice id is refused",
        ),
        ("status IN ('draft', 'finalized')", "InvoiceStatus is an enum of the two"),
        ("line_count >= 0", "a length, checked to fit i32"),
        ("period_start < period_end", "an invoice period that does not start before it ends is refused"),
        ("kind IN ('usage', 'plan', 'adjustment')", "LineKind is an enum of the three"),
        ("counted >= 0", "u64, and checked to fit i64"),
        ("source_period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'", "is_period"),
    ];

    #[test]
    fn every_check_constraint_is_mirrored_before_the_write() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut found = std::collections::BTreeSet::new();
        for f in std::fs::read_dir(dir).expect("migrations") {
            let sql = std::fs::read_to_string(f.expect("entry").path()).expect("readable");
            for part in sql.split("CHECK (").skip(1) {
                // Up to the parenthesis that closes CHECK (
                let mut depth = 1;
                let end = part
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .expect("closed");
                found.insert(part[..end].to_owned());
            }
        }
        let mirrored: std::collections::BTreeSet<String> =
            MIRRORED.iter().map(|(c, _)| (*c).to_owned()).collect();
        assert_eq!(found, mirrored, "a CHECK constraint was added or changed: mirror it in decode and here");
    }

    fn status(amount: i64, version: u32) -> Envelope<TransferStatusChanged> {
        let now = Utc::now();
        Envelope {
            event_id: Uuid::new_v4(),
            event_type: TransferStatusChanged::EVENT_TYPE.to_owned(),
            schema_version: 1,
            tenant_id: "tenant-a".into(),
            environment: Environment::Live,
            occurred_at: now,
            ingested_at: now,
            idempotency_key: None,
            source: "test".into(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload: TransferStatusChanged {
                transfer_id: "t-1".into(),
                kind: TransferKind::Deposit,
                amount: Money::new(amount, Currency::from_code("USD").expect("USD")),
                previous: None,
                status: TransferStatus::Initiated,
                version,
                reason: None,
                cause_event_id: Uuid::new_v4(),
            },
        }
    }

    fn decoded(e: &Envelope<TransferStatusChanged>, env: Environment) -> Result<(Vec<Row>, i64), String> {
        decode("t", env, 0, 0, &serde_json::to_vec(e).expect("json"))
    }

    fn decision() -> riverbank_schemas::risk::DecisionRecorded {
        use riverbank_schemas::risk::{RateApplied, RuleHit};
        let usd = Currency::from_code("USD").expect("USD");
        DecisionRecorded {
            transfer_id: "t-1".into(),
            transfer_version: 4,
            kind: TransferKind::Payout,
            amount: Money::new(150_000, usd),
            user_id: Some("usr_1".into()),
            requested_by: "key:maker".into(),
            decision: RiskOutcome::Review,
            score: 35,
            hits: vec![RuleHit {
                rule: "large-single".into(),
                kind: "threshold".into(),
                score: 35,
                features: [("amount_report_minor".to_owned(), "150000".to_owned())].into(),
            }],
            rule_set: "riverbank-default".into(),
            rule_set_version: "rs_0123456789abcdef".into(),
            amount_report_minor: Some(150_000),
            report_currency: usd,
            rate: Some(RateApplied { base: usd, quote: usd, rate_e9: 1_000_000_000, version: "v1".into() }),
            lists: [("sanctions".to_owned(), "ls_0123".to_owned())].into(),
            ctr: false,
            shadow: false,
            reviewed_by: None,
            review_reason: None,
            screened_at: DateTime::from_timestamp(1_790_000_000, 0).expect("time"),
        }
    }

    fn risk_decoded<P: serde::Serialize>(event_type: &str, payload: P) -> Result<Vec<Row>, String> {
        let e = Envelope::new(
            Uuid::new_v4(),
            event_type,
            "tenant-a",
            Environment::Live,
            Utc::now(),
            "t",
            payload,
        );
        decode("t", Environment::Live, 0, 0, &serde_json::to_vec(&e).expect("json")).map(|(rows, _)| rows)
    }

    #[test]
    fn risk_decisions_decode_and_what_the_stores_refuse_is_dead_lettered() {
        let rows = risk_decoded(risk_types::DECISION_RECORDED, decision()).expect("a valid decision");
        assert!(matches!(&rows[..], [Row::RiskDecision(_, d)] if **d == decision()));
        let mut reviewed = decision();
        reviewed.decision = RiskOutcome::Approve;
        reviewed.reviewed_by = Some("key:officer".into());
        reviewed.review_reason = Some("documents checked".into());
        assert!(risk_decoded(risk_types::DECISION_RECORDED, &reviewed).is_ok());
        let mut shadow = decision();
        shadow.shadow = true;
        shadow.amount_report_minor = None;
        shadow.rate = None;
        assert!(risk_decoded(risk_types::DECISION_RECORDED, &shadow).is_ok());

        type Breach = (&'static str, fn(&mut DecisionRecorded));
        let breaches: &[Breach] = &[
            ("transfer_version", |d| d.transfer_version = 0),
            ("transfer_version", |d| d.transfer_version = u32::MAX),
            ("score", |d| d.score = u32::MAX),
            ("non-positive amount", |d| d.amount.amount_minor = 0),
            ("negative amount_report_minor", |d| d.amount_report_minor = Some(-1)),
            ("come together", |d| d.reviewed_by = Some("key:officer".into())),
            ("come together", |d| d.review_reason = Some("why".into())),
            ("cannot be review", |d| {
                d.reviewed_by = Some("key:officer".into());
                d.review_reason = Some("why".into());
            }),
            ("NUL", |d| d.transfer_id = "t\0".into()),
            ("NUL", |d| d.user_id = Some("u\0".into())),
            ("NUL", |d| d.rule_set_version = "rs\0".into()),
            ("NUL", |d| {
                d.hits[0].features.insert("sum".into(), "1\0".into());
            }),
            ("NUL", |d| {
                d.lists.insert("l\0".into(), "v".into());
            }),
            ("NUL", |d| {
                if let Some(r) = &mut d.rate {
                    r.version = "\0".into();
                }
            }),
            ("screened_at", |d| d.screened_at = DateTime::from_timestamp(TIME_MAX_S + 1, 0).expect("time")),
        ];
        for (want, breach) in breaches {
            let mut d = decision();
            breach(&mut d);
            let err = risk_decoded(risk_types::DECISION_RECORDED, &d).expect_err(want);
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn risk_rejections_decode_and_steps_order_a_transfers_decisions() {
        let r = RiskInputRejected {
            input_event_id: Uuid::new_v4(),
            input_event_type: "risk.review_decided".into(),
            transfer_id: Some("t-1".into()),
            reason: "transfer is not awaiting a risk review".into(),
        };
        assert!(matches!(
            &risk_decoded(risk_types::INPUT_REJECTED, &r).expect("valid")[..],
            [Row::RiskRejection(..)]
        ));
        let mut nul = r.clone();
        nul.reason = "\0".into();
        assert!(risk_decoded(risk_types::INPUT_REJECTED, &nul).unwrap_err().contains("NUL"));

        let screened = decision();
        let mut reviewed = decision();
        reviewed.reviewed_by = Some("key:officer".into());
        let mut retried = decision();
        retried.transfer_version += 1;
        assert!(risk_step(&screened) < risk_step(&reviewed));
        assert!(risk_step(&reviewed) < risk_step(&retried));
        assert_eq!(outcome_str(RiskOutcome::Review), "review");
    }

    #[test]
    fn rows_a_store_would_refuse_are_dead_lettered_with_the_reason() {
        assert!(decoded(&status(100, 1), Environment::Live).is_ok());
        assert!(decoded(&status(0, 1), Environment::Live).is_err());
        assert!(decoded(&status(100, 0), Environment::Live).is_err());
        assert!(decoded(&status(100, u32::MAX), Environment::Live).unwrap_err().contains("32-bit"));
        let mut ancient = status(100, 1);
        ancient.occurred_at = DateTime::from_timestamp(-300_000_000_000, 0).expect("representable");
        assert!(decoded(&ancient, Environment::Live).unwrap_err().contains("occurred_at"));
        let mut far = status(100, 1);
        far.ingested_at = DateTime::from_timestamp(TIME_MAX_S + 1, 0).expect("representable");
        assert!(decoded(&far, Environment::Live).unwrap_err().contains("ingested_at"));
        let mut nul = status(100, 1);
        nul.payload.transfer_id = "t\0".into();
        assert!(decoded(&nul, Environment::Live).unwrap_err().contains("NUL"));
        assert!(decoded(&status(100, 1), Environment::Sandbox).unwrap_err().contains("environment"));
    }

    /// A `webhook.received` of `tenant-a` in live whose body is `body`, at `at`.
    fn webhook(id: Uuid, body: serde_json::Value, at: DateTime<Utc>) -> Vec<u8> {
        let w = WebhookReceived {
            provider: "kycflow".into(),
            provider_event_id: "kf_1".into(),
            provider_event_type: Some("auto_approved".into()),
            event_type: Some("kyc.result".into()),
            entity_key: Some("usr_1".into()),
            provider_schema_version: None,
            body_bytes: 10,
            fields: [("user_id".to_owned(), "usr_1".to_owned())].into(),
            transfer_callback: None,
            body,
        };
        let e =
            Envelope::new(id, WebhookReceived::EVENT_TYPE, "tenant-a", Environment::Live, at, "kycflow", w);
        serde_json::to_vec(&e).expect("json")
    }

    #[test]
    fn sealed_values_of_a_webhook_become_personal_data_rows_that_open_where_they_are_stored() {
        use riverbank_runtime::keystore::crypto::field::{key_id, open, seal, FieldContext};
        use riverbank_runtime::keystore::crypto::keys::{DataClass, Dek};
        let (dek, id) = (Dek::generate().expect("dek"), Uuid::new_v4());
        let record = id.to_string();
        let sealed = |subject: &str, class: DataClass, pointer: &str, clear: &str| {
            let ctx = FieldContext {
                tenant: "tenant-a",
                environment: "live",
                subject,
                field: pointer,
                record: &record,
            };
            let text = serde_json::to_vec(clear).expect("json");
            seal(&dek, &key_id(subject, class, 1), &ctx, &text).expect("seal")
        };
        let body = serde_json::json!({
            "userId": "usr_1",
            "status": "auto_approved",
            "applicant": {
                "name": sealed("usr_1", DataClass::PII_NAME, "/applicant/name", "Ada Lovelace"),
                "a/b~c": sealed("usr_1", DataClass::PII_PHONE, "/applicant/a~1b~0c", "+44 20 7946 0000"),
            },
            "documents": [
                {"type": "pan", "number": sealed("usr_1", DataClass::PII_NATIONAL_ID, "/documents/0/number", "ABCDE1234F")},
                {"type": "note", "number": "rbf1.not-an-envelope"}
            ],
        });
        let (rows, _) =
            decode("t.live.ingest.webhooks", Environment::Live, 2, 7, &webhook(id, body, Utc::now()))
                .expect("decodes");
        let mut got: Vec<(String, &str, String)> = Vec::new();
        for r in &rows {
            let Row::PersonalData(m, v) = r else { panic!("not personal data: {r:?}") };
            assert_eq!(
                (m.event_id, m.tenant_id.as_str(), m.source_partition, m.source_offset),
                (id, "tenant-a", 2, 7)
            );
            assert_eq!(
                (v.subject.as_str(), v.record.as_str(), v.provider.as_str()),
                ("usr_1", record.as_str(), "kycflow")
            );
            assert!(v.sealed.starts_with("rbf1."));
            // The stored pointer and record are the associated data: the value opens with them.
            let ctx = FieldContext {
                tenant: "tenant-a",
                environment: "live",
                subject: &v.subject,
                field: &v.pointer,
                record: &v.record,
            };
            let clear: String =
                serde_json::from_slice(&open(&dek, &ctx, &v.sealed).expect("opens")).expect("json");
            got.push((v.pointer.clone(), v.data_class, clear));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("/applicant/a~1b~0c".to_owned(), "pii.phone", "+44 20 7946 0000".to_owned()),
                ("/applicant/name".to_owned(), "pii.name", "Ada Lovelace".to_owned()),
                ("/documents/0/number".to_owned(), "pii.national_id", "ABCDE1234F".to_owned()),
            ],
            "every sealed value, and nothing else (a string that only looks like one is passed over)"
        );
        // No row holds a clear value.
        assert!(!format!("{rows:?}").contains("Lovelace") && !format!("{rows:?}").contains("1234F"));
    }

    #[test]
    fn webhooks_without_personal_data_become_no_row_and_are_never_dead_lettered() {
        let body = serde_json::json!({"userId": "usr_1", "status": "auto_approved", "tier": 1});
        let (rows, _) =
            decode("t", Environment::Live, 0, 0, &webhook(Uuid::new_v4(), body.clone(), Utc::now()))
                .expect("decodes");
        assert!(rows.is_empty());
        // Nothing to store, so nothing the stores refuse matters: a time beyond them is no dead letter.
        let far = DateTime::from_timestamp(TIME_MAX_S + 1, 0).expect("time");
        let (rows, _) =
            decode("t", Environment::Live, 0, 0, &webhook(Uuid::new_v4(), body, far)).expect("decodes");
        assert!(rows.is_empty());
    }

    #[test]
    fn personal_data_the_store_would_refuse_is_dead_lettered_with_the_reason() {
        use riverbank_runtime::keystore::crypto::field::{key_id, seal, FieldContext};
        use riverbank_runtime::keystore::crypto::keys::{DataClass, Dek};
        let dek = Dek::generate().expect("dek");
        let ctx = FieldContext {
            tenant: "tenant-a",
            environment: "live",
            subject: "usr_1",
            field: "/x",
            record: "r",
        };
        let one = seal(&dek, &key_id("usr_1", DataClass::PII_NAME, 1), &ctx, b"\"x\"").expect("seal");
        // A key holding a NUL (PostgreSQL text cannot).
        let body = serde_json::json!({ "na\u{0}me": one.clone() });
        let err =
            decode("t", Environment::Live, 0, 0, &webhook(Uuid::new_v4(), body, Utc::now())).unwrap_err();
        assert!(err.contains("pointer") && err.contains("NUL"), "{err}");
        // A time the stores cannot hold, once there is something to store.
        let far = DateTime::from_timestamp(TIME_MAX_S + 1, 0).expect("time");
        let err = decode(
            "t",
            Environment::Live,
            0,
            0,
            &webhook(Uuid::new_v4(), serde_json::json!({"n": one.clone()}), far),
        )
        .unwrap_err();
        assert!(err.contains("occurred_at"), "{err}");
        // More sealed values than one event may hold.
        let many: Vec<String> = vec![one; PERSONAL_VALUES_PER_EVENT_MAX + 1];
        let err = decode(
            "t",
            Environment::Live,
            0,
            0,
            &webhook(Uuid::new_v4(), serde_json::json!({"n": many}), Utc::now()),
        )
        .unwrap_err();
        assert!(err.contains(&PERSONAL_VALUES_PER_EVENT_MAX.to_string()), "{err}");
    }

    #[test]
    fn kyc_events_decode_and_what_the_stores_refuse_is_dead_lettered() {
        use riverbank_schemas::kyc::{KycStatus, UserStatus};
        let user = UserKycChanged {
            user_id: "usr_1".into(),
            user_status: UserStatus::Active,
            kyc_status: KycStatus::Approved,
            tier: 2,
            kyc_expires_at: Some(Utc::now()),
            version: 3,
            case_id: Some("c1".into()),
            case_status: Some(KycStatus::Approved),
            provider: Some("idcheck".into()),
            reason: None,
            actor: None,
            cause_event_id: Uuid::new_v4(),
        };
        let decode_user = |event_type: &str, u: &UserKycChanged| {
            let e =
                Envelope::new(Uuid::new_v4(), event_type, "tenant-a", Environment::Live, Utc::now(), "t", u);
            decode("t", Environment::Live, 0, 0, &serde_json::to_vec(&e).expect("json")).map(|(rows, _)| rows)
        };
        for t in kyc_types::USER {
            let rows = decode_user(t, &user).expect("decodes");
            assert!(matches!(&rows[..], [Row::User(_, got, u)] if *got == t && *u == user), "{t}");
        }
        type Breakage = (fn(&mut UserKycChanged), &'static str);
        let bad: [Breakage; 5] = [
            (|u| u.version = 0, "version"),
            (|u| u.version = u64::MAX, "version"),
            (|u| u.tier = 4, "tier"),
            (|u| u.reason = Some("a\0".into()), "NUL"),
            (|u| u.kyc_expires_at = DateTime::from_timestamp(TIME_MAX_S + 1, 0), "kyc_expires_at"),
        ];
        for (spoil, want) in bad {
            let mut u = user.clone();
            spoil(&mut u);
            let err = decode_user(kyc_types::USER_VERIFIED, &u).expect_err(want);
            assert!(err.contains(want), "{err}");
        }
        let r = KycInputRejected {
            input_event_id: Uuid::new_v4(),
            input_event_type: "webhook.received".into(),
            user_id: Some("usr\0".into()),
            case_id: None,
            reason: "late".into(),
            at: None,
        };
        assert!(decode_user(kyc_types::KYC_INPUT_REJECTED, &user).is_err(), "a user payload is no rejection");
        let e = Envelope::new(
            Uuid::new_v4(),
            kyc_types::KYC_INPUT_REJECTED,
            "tenant-a",
            Environment::Live,
            Utc::now(),
            "t",
            &r,
        );
        let err =
            decode("t", Environment::Live, 0, 0, &serde_json::to_vec(&e).expect("json")).expect_err("NUL");
        assert!(err.contains("NUL"), "{err}");
    }

    fn usd_eur() -> (Currency, Currency) {
        (Currency::from_code("USD").expect("USD"), Currency::from_code("EUR").expect("EUR"))
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).expect("time")
    }

    fn quote_recorded() -> QuoteRecorded {
        use riverbank_schemas::fx::{QuoteStatus, RateUsed};
        use riverbank_schemas::rounding::RoundingMode;
        let (usd, eur) = usd_eur();
        QuoteRecorded {
            quote_id: "q1".into(),
            status: QuoteStatus::Issued,
            version: 1,
            sell_currency: eur,
            buy_currency: usd,
            sell: Some(Money::new(10_000, eur)),
            buy: Some(Money::new(10_870, usd)),
            fixed: "sell".into(),
            mid_e9: Some(1_092_560_000),
            rate_e9: Some(1_087_030_000),
            markup_bps: 50,
            rates: vec![RateUsed {
                base: eur,
                quote: usd,
                rate_e9: 1_092_560_000,
                inverted: false,
                source: "key:feed".into(),
                as_of: at(1_790_000_000),
                version: "live.fx.inputs/0/3".into(),
            }],
            pivot: None,
            rate_as_of: Some(at(1_790_000_000)),
            expires_at: Some(at(1_790_000_030)),
            rounding: RoundingMode::HalfEven,
            requested_by: "user:maker".into(),
            reason: None,
            conversion_id: None,
        }
    }

    fn conversion_recorded() -> ConversionRecorded {
        use riverbank_schemas::fx::ConversionAmounts;
        use riverbank_schemas::rounding::RoundingMode;
        let (usd, eur) = usd_eur();
        ConversionRecorded {
            conversion_id: "c1".into(),
            quote_id: "q1".into(),
            status: ConversionStatus::Completed,
            version: 2,
            account: "acct_1".into(),
            destination: "acct_1".into(),
            amounts: Some(ConversionAmounts {
                sell: Money::new(10_000, eur),
                buy: Money::new(10_870, usd),
                mid_value: Money::new(10_926, usd),
                fee: Money::new(55, usd),
                residue: Money::new(1, usd),
                mid_value_exact: "10925.6".into(),
                buy_exact: "10870.3".into(),
                fee_exact: "55.3".into(),
            }),
            mid_e9: Some(1_092_560_000),
            rate_e9: Some(1_087_030_000),
            rounding: RoundingMode::HalfEven,
            booking_id: Some("fx:c1".into()),
            otc: false,
            requested_by: "user:maker".into(),
            decided_by: None,
            reason: None,
        }
    }

    fn fee_charged() -> FeeCharged {
        use riverbank_schemas::billing::{FeePart, TierPricing};
        use riverbank_schemas::rounding::RoundingMode;
        let (usd, _) = usd_eur();
        FeeCharged {
            transfer_id: "t-1".into(),
            transfer_kind: TransferKind::Payout,
            transfer_amount: Money::new(10_000, usd),
            completed_at: at(1_790_000_000),
            period: "2026-09".into(),
            fee: Money::new(150, usd),
            status: FeeStatus::Booked,
            version: 2,
            config_version: Some("2026-01-01T00:00:00Z/0190".into()),
            pricing: TierPricing::Volume,
            monthly_volume_before: Money::new(0, usd),
            fixed: Money::new(100, usd),
            parts: vec![FeePart { amount: Money::new(10_000, usd), bps: 50 }],
            exact: "150".into(),
            clamped: None,
            rounding: RoundingMode::HalfEven,
            booking_id: Some("fee:t-1".into()),
            invoice_id: Some("inv_2026-09".into()),
            adjustment: false,
            reason: None,
        }
    }

    fn invoice_recorded() -> InvoiceRecorded {
        use riverbank_schemas::billing::{InvoiceLine, InvoiceStatus, LineKind};
        let (usd, _) = usd_eur();
        let line = |id: &str, kind: LineKind, minor: i64| InvoiceLine {
            line_id: id.into(),
            kind,
            transfer_kind: Some(TransferKind::Payout),
            description: id.into(),
            count: 1,
            amount: Money::new(minor, usd),
            source_period: (kind == LineKind::Adjustment).then(|| "2026-08".to_owned()),
            sources: if kind == LineKind::Adjustment { vec!["t-0".into()] } else { vec![] },
        };
        InvoiceRecorded {
            invoice_id: "inv_2026-09".into(),
            period: "2026-09".into(),
            period_start: at(1_788_220_800),
            period_end: at(1_790_812_800),
            closes_at: at(1_790_899_200),
            status: InvoiceStatus::Draft,
            version: 3,
            lines: vec![
                line("usage/payout/USD", LineKind::Usage, 150),
                line("adjustment/2026-08/payout/USD", LineKind::Adjustment, 90),
            ],
            totals: vec![Money::new(240, usd)],
        }
    }

    fn booking_recorded() -> BookingRecorded {
        use riverbank_schemas::ledger::{BookingLeg, BookingPurpose};
        let (usd, _) = usd_eur();
        BookingRecorded {
            booking_id: "fee:t-1".into(),
            purpose: BookingPurpose::Fee,
            reference: "t-1".into(),
            outcome: BookingOutcome::Booked,
            reason: None,
            legs: vec![
                BookingLeg { account: "billing:receivable".into(), amount: Money::new(-150, usd) },
                BookingLeg { account: "billing:fees".into(), amount: Money::new(150, usd) },
            ],
        }
    }

    /// What a breach's error must name, and the breach.
    type Breach<P> = (&'static str, fn(&mut P));

    /// Decodes `payload` as `event_type`, then each breach of it, which must fail naming `want`.
    fn refuses<P: Clone + serde::Serialize>(event_type: &str, payload: &P, breaches: &[Breach<P>]) {
        assert!(risk_decoded(event_type, payload).is_ok(), "{event_type}: the valid payload decodes");
        for (want, breach) in breaches {
            let mut p = payload.clone();
            breach(&mut p);
            let err = risk_decoded(event_type, &p).expect_err(want);
            assert!(err.contains(want), "{event_type}: {want}: {err}");
        }
    }

    #[test]
    fn fx_events_decode_and_what_the_stores_refuse_is_dead_lettered() {
        let rows = risk_decoded(QuoteRecorded::EVENT_TYPE, quote_recorded()).expect("quote");
        assert!(matches!(&rows[..], [Row::Quote(_, q)] if **q == quote_recorded()));
        refuses(
            QuoteRecorded::EVENT_TYPE,
            &quote_recorded(),
            &[
                ("version", |q| q.version = 0),
                ("version", |q| q.version = u32::MAX),
                ("markup_bps", |q| q.markup_bps = u32::MAX),
                ("fixed", |q| q.fixed = "both".into()),
                ("sell_currency", |q| q.sell = q.buy),
                ("expires_at", |q| q.expires_at = Some(at(TIME_MAX_S + 1))),
                ("NUL", |q| q.rates[0].source = "k\0".into()),
                ("NUL", |q| q.reason = Some("\0".into())),
            ],
        );
        let rows = risk_decoded(ConversionRecorded::EVENT_TYPE, conversion_recorded()).expect("conversion");
        assert!(matches!(&rows[..], [Row::Conversion(_, c)] if **c == conversion_recorded()));
        let mut rejected = conversion_recorded();
        rejected.status = ConversionStatus::Rejected;
        rejected.amounts = None;
        rejected.booking_id = None;
        rejected.reason = Some("stale_rate".into());
        assert!(risk_decoded(ConversionRecorded::EVENT_TYPE, &rejected).is_ok(), "no amounts before pricing");
        refuses(
            ConversionRecorded::EVENT_TYPE,
            &conversion_recorded(),
            &[
                ("version", |c| c.version = 0),
                ("residue", |c| {
                    if let Some(a) = &mut c.amounts {
                        a.residue.amount_minor = 2;
                    }
                }),
                // M − B overflows i64 before F is taken off: Postgres would fail the batch.
                ("residue", |c| {
                    if let Some(a) = &mut c.amounts {
                        (a.mid_value.amount_minor, a.buy.amount_minor) = (i64::MAX, -1);
                        (a.fee.amount_minor, a.residue.amount_minor) = (1, i64::MAX);
                    }
                }),
                ("buy currency", |c| {
                    if let Some(a) = &mut c.amounts {
                        a.fee.currency = a.sell.currency;
                    }
                }),
                ("booking_id and amounts", |c| c.booking_id = None),
                ("booking_id and amounts", |c| c.amounts = None),
                ("NUL", |c| c.destination = "a\0".into()),
                ("NUL", |c| {
                    if let Some(a) = &mut c.amounts {
                        a.fee_exact = "\0".into();
                    }
                }),
            ],
        );
        let r = FxInputRejected {
            input_event_id: Uuid::new_v4(),
            input_event_type: "fx.conversion_requested".into(),
            quote_id: Some("q1".into()),
            conversion_id: Some("c9".into()),
            reason: "quote_expired".into(),
        };
        assert!(matches!(
            &risk_decoded(FxInputRejected::EVENT_TYPE, &r).expect("valid")[..],
            [Row::FxRejection(..)]
        ));
        refuses(FxInputRejected::EVENT_TYPE, &r, &[("NUL", |r| r.conversion_id = Some("c\0".into()))]);
    }

    #[test]
    fn rates_decode_one_per_pair_and_bad_rates_are_dead_lettered() {
        let (usd, eur) = usd_eur();
        let gbp = Currency::from_code("GBP").expect("GBP");
        let p = FxRatesPublished {
            as_of: at(1_790_000_000),
            rates: vec![
                FxRate { base: eur, quote: usd, rate_e9: 1_080_000_000 },
                FxRate { base: gbp, quote: usd, rate_e9: 1_270_000_000 },
                FxRate { base: eur, quote: usd, rate_e9: 1_090_000_000 },
            ],
            published_by: "key:feed".into(),
        };
        let rows = risk_decoded(command_types::FX_RATES_PUBLISHED, &p).expect("rates");
        let [Row::FxRates(_, got)] = &rows[..] else { panic!("one rates row: {rows:?}") };
        let pairs: Vec<(&str, i64)> = got.rates.iter().map(|r| (r.base.code(), r.rate_e9)).collect();
        assert_eq!(pairs, [("GBP", 1_270_000_000), ("EUR", 1_090_000_000)], "the last rate of a pair");
        refuses(
            command_types::FX_RATES_PUBLISHED,
            &p,
            &[
                ("positive", |p| p.rates[1].rate_e9 = 0),
                ("to itself", |p| p.rates[0].quote = p.rates[0].base),
                ("as_of", |p| p.as_of = at(-1)),
                ("NUL", |p| p.published_by = "\0".into()),
            ],
        );
    }

    #[test]
    fn billing_events_and_bookings_decode_and_what_the_stores_refuse_is_dead_lettered() {
        let rows = risk_decoded(FeeCharged::EVENT_TYPE, fee_charged()).expect("fee");
        assert!(matches!(&rows[..], [Row::Fee(_, f)] if **f == fee_charged()));
        let mut waived = fee_charged();
        (waived.status, waived.fee.amount_minor, waived.booking_id, waived.invoice_id) =
            (FeeStatus::Waived, 0, None, None);
        assert!(risk_decoded(FeeCharged::EVENT_TYPE, &waived).is_ok(), "a waived fee books nothing");
        refuses(
            FeeCharged::EVENT_TYPE,
            &fee_charged(),
            &[
                ("version", |f| f.version = 0),
                ("non-positive transfer amount", |f| f.transfer_amount.amount_minor = 0),
                ("negative fee", |f| f.fee.amount_minor = -1),
                ("YYYY-MM", |f| f.period = "2026-13".into()),
                ("YYYY-MM", |f| f.period = "2026-9".into()),
                ("clamped", |f| f.clamped = Some("floor".into())),
                ("booking_id and invoice_id", |f| f.invoice_id = None),
                ("booking_id and invoice_id", |f| f.booking_id = None),
                ("completed_at", |f| f.completed_at = at(TIME_MAX_S + 1)),
                ("NUL", |f| f.exact = "1\0".into()),
            ],
        );
        let rows = risk_decoded(InvoiceRecorded::EVENT_TYPE, invoice_recorded()).expect("invoice");
        assert!(matches!(&rows[..], [Row::Invoice(_, i)] if **i == invoice_recorded()));
        refuses(
            InvoiceRecorded::EVENT_TYPE,
            &invoice_recorded(),
            &[
                ("version", |i| i.version = 0),
                ("YYYY-MM", |i| i.period = "2026-00".into()),
                ("before period_end", |i| i.period_end = i.period_start),
                ("appears twice", |i| i.lines[1].line_id = i.lines[0].line_id.clone()),
                ("64-bit", |i| i.lines[0].count = u64::MAX),
                ("source_period", |i| i.lines[1].source_period = Some("August".into())),
                ("NUL", |i| i.lines[1].sources = vec!["t\0".into()]),
                ("closes_at", |i| i.closes_at = at(TIME_MAX_S + 1)),
            ],
        );
        let rows = risk_decoded(BookingRecorded::EVENT_TYPE, booking_recorded()).expect("booking");
        assert!(matches!(&rows[..], [Row::Booking(_, b)] if *b == booking_recorded()));
        refuses(
            BookingRecorded::EVENT_TYPE,
            &booking_recorded(),
            &[
                ("reason", |b| b.outcome = BookingOutcome::Refused),
                ("reason", |b| b.reason = Some("why".into())),
                ("NUL", |b| b.legs[0].account = "a\0".into()),
            ],
        );
        let r = BillingInputRejected {
            input_event_id: Uuid::new_v4(),
            input_event_type: "billing.fee_config_upserted".into(),
            transfer_id: None,
            reason: "min above max".into(),
        };
        assert!(matches!(
            &risk_decoded(BillingInputRejected::EVENT_TYPE, &r).expect("valid")[..],
            [Row::BillingRejection(..)]
        ));
        refuses(BillingInputRejected::EVENT_TYPE, &r, &[("NUL", |r| r.reason = "\0".into())]);
    }

    #[test]
    fn periods_are_year_and_month() {
        for ok in ["2026-01", "2026-12", "0001-09"] {
            assert!(is_period(ok), "{ok}");
        }
        for bad in ["2026-00", "2026-13", "2026-1", "2026/01", "26-01", "2026-01-01", "２０２６-01", ""] {
            assert!(!is_period(bad), "{bad}");
        }
    }
}
