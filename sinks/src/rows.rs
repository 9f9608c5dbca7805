//! What the sinks write: one small mapping per event type. Adding a processor's output to the stores
//! means a variant here, a table in each store and a statement in each sink, not a new sink.
use chrono::{DateTime, Utc};
use riverbank_schemas::kyc::{event_types as kyc_types, KycInputRejected, UserKycChanged, TIER_MAX};
use riverbank_schemas::risk::{event_types as risk_types, DecisionRecorded, RiskInputRejected};
use riverbank_schemas::transfers::{
    BalanceChanged, InputRejected, LedgerPosting, RiskOutcome, TransferStatusChanged,
};
use riverbank_schemas::{AuditRecord, Environment, RawEnvelope};
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
    Audit(Meta, AuditRecord),
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
}

impl Row {
    pub fn meta(&self) -> &Meta {
        match self {
            Row::Audit(m, _)
            | Row::Status(m, _)
            | Row::Posting(m, _)
            | Row::Balance(m, _)
            | Row::RiskDecision(m, _)
            | Row::RiskRejection(m, _)
            | Row::Rejection(m, _)
            | Row::User(m, _, _)
            | Row::KycRejection(m, _) => m,
        }
    }
}

/// The event types the sinks project. The sinks read every topic a registered processor declares
/// with one of these (`src/registry.rs`); a declared output with none must be read by a processor.
pub const PROJECTED: &[&str] = &[
    AuditRecord::EVENT_TYPE,
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
    if e.schema_version != 1 {
        return Err(format!("{} v{} is not understood by the sinks", e.event_type, e.schema_version));
    }
    if e.environment != env {
        return Err(format!("envelope says environment {} on a {env} topic", e.environment));
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
    let ingested_ms = e.ingested_at.timestamp_millis();
    let row = match e.event_type.as_str() {
        AuditRecord::EVENT_TYPE => {
            let a: AuditRecord = typed(&e)?;
            if a.audit_id != e.event_id || a.tenant_id != e.tenant_id || a.environment != e.environment {
                return Err("envelope and audit record disagree on id, tenant or environment".to_owned());
            }
            if i64::try_from(a.payload_bytes).is_err() {
                return Err("payload_bytes out of range".to_owned());
            }
            check_time("recorded_at", &a.recorded_at)?;
            check_time("audit occurred_at", &a.occurred_at)?;
            for (f, v) in [
                ("actor", &a.actor),
                ("action", &a.action),
                ("resource_type", &a.resource_type),
                ("resource_id", &a.resource_id),
            ] {
                check_text(f, v)?;
            }
            if let Some(t) = &a.trace_id {
                check_text("trace_id", t)?;
            }
            Row::Audit(meta, a)
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
        other => match kyc_types::USER.iter().find(|t| **t == other) {
            Some(event_type) => Row::User(meta, event_type, user_event(&e)?),
            None => return Err(format!("the sinks have no mapping for {other}")),
        },
    };
    Ok((vec![row], ingested_ms))
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

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_schemas::transfers::{TransferKind, TransferStatus};
    use riverbank_schemas::{Currency, Envelope, Money};

    /// Every CHECK constraint of the migrations, and where `decode` (or the type system) enforces it.
    const MIRRORED: &[(&str, &str)] = &[
        ("environment IN ('live', 'sandbox')", "Environment is an enum of the two"),
        ("payload_bytes >= 0", "u64, and checked to fit i64"),
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
}
