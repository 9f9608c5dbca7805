//! PostgreSQL: operational truth. A batch's rows (every kind) and the sink's positions commit in one
//! transaction. Append-only tables are idempotent on event id; "current" projections move forward only.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use riverbank_runtime::sink::{Position, SinkStore, StoreError, Stored};
use riverbank_schemas::kyc::{KycInputRejected, UserKycChanged};
use riverbank_schemas::risk::{DecisionRecorded, RiskInputRejected};
use riverbank_schemas::transfers::{BalanceChanged, InputRejected, LedgerPosting, TransferStatusChanged};
use riverbank_schemas::{AuditRecord, Environment};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::rows::{self, Meta, Row};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub const SINK_NAME: &str = "postgres";

pub struct PostgresSink {
    pool: PgPool,
}

impl PostgresSink {
    pub fn new(pool: PgPool) -> Self {
        PostgresSink { pool }
    }
}

impl SinkStore for PostgresSink {
    type Row = Row;

    fn name(&self) -> &'static str {
        SINK_NAME
    }

    fn decode(
        &self,
        topic: &str,
        env: Environment,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(Vec<Row>, i64), String> {
        rows::decode(topic, env, partition, offset, payload)
    }

    async fn load_positions(&self, topic: &str) -> Result<HashMap<i32, Stored>, StoreError> {
        load_positions(&self.pool, SINK_NAME, topic).await.map_err(Into::into)
    }

    async fn write(&self, rows: &[Row], positions: &[Position]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (mut audit, mut status, mut postings, mut balances) = (vec![], vec![], vec![], vec![]);
        let mut rejections = vec![];
        let (mut risk_decisions, mut risk_rejections) = (vec![], vec![]);
        let (mut users, mut kyc_rejections) = (vec![], vec![]);
        for r in rows {
            match r {
                Row::Audit(m, a) => audit.push((m, a)),
                Row::Status(m, s) => status.push((m, s)),
                Row::Posting(m, p) => postings.push((m, p)),
                Row::Balance(m, b) => balances.push((m, b)),
                Row::Rejection(m, r) => rejections.push((m, r)),
                // Shadow decisions are ClickHouse's alone.
                Row::RiskDecision(m, d) if !d.shadow => risk_decisions.push((m, &**d)),
                Row::RiskDecision(..) => {}
                Row::RiskRejection(m, r) => risk_rejections.push((m, r)),
                Row::User(m, t, u) => users.push((m, *t, u)),
                Row::KycRejection(m, r) => kyc_rejections.push((m, r)),
            }
        }
        insert_audit(&mut tx, &audit).await?;
        insert_status(&mut tx, &status).await?;
        insert_postings(&mut tx, &postings).await?;
        upsert_balances(&mut tx, &balances).await?;
        insert_rejections(&mut tx, &rejections).await?;
        insert_risk_decisions(&mut tx, &risk_decisions).await?;
        insert_risk_rejections(&mut tx, &risk_rejections).await?;
        insert_kyc(&mut tx, &users).await?;
        insert_kyc_rejections(&mut tx, &kyc_rejections).await?;
        store_positions(&mut tx, SINK_NAME, positions).await?;
        tx.commit().await?;
        Ok(())
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

async fn insert_audit(tx: &mut Tx<'_>, rows: &[(&Meta, &AuditRecord)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&(&Meta, &AuditRecord)) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let ids: Vec<Uuid> = rows.iter().map(|(_, a)| a.audit_id).collect();
    let source_ids: Vec<Uuid> = rows.iter().map(|(_, a)| a.source_event_id).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|(_, a)| a.occurred_at).collect();
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|(_, a)| a.recorded_at).collect();
    let trace: Vec<Option<String>> = rows.iter().map(|(_, a)| a.trace_id.clone()).collect();
    // Checked in decode: fits in i64.
    let bytes: Vec<i64> =
        rows.iter().map(|(_, a)| i64::try_from(a.payload_bytes).unwrap_or(i64::MAX)).collect();
    let partitions: Vec<i32> = rows.iter().map(|(m, _)| m.source_partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|(m, _)| m.source_offset).collect();
    sqlx::query(
        "INSERT INTO audit_log (event_id, tenant_id, environment, actor, action, resource_type, resource_id,
             source_event_id, occurred_at, recorded_at, trace_id, payload_bytes, source_topic,
             source_partition, source_offset)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::text[], $8::uuid[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::int8[],
             $13::text[], $14::int4[], $15::int8[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(col(|(_, a)| a.tenant_id.clone()))
    .bind(col(|(_, a)| a.environment.as_str().to_owned()))
    .bind(col(|(_, a)| a.actor.clone()))
    .bind(col(|(_, a)| a.action.clone()))
    .bind(col(|(_, a)| a.resource_type.clone()))
    .bind(col(|(_, a)| a.resource_id.clone()))
    .bind(&source_ids)
    .bind(&occurred)
    .bind(&recorded)
    .bind(&trace)
    .bind(&bytes)
    .bind(col(|(m, _)| m.source_topic.clone()))
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_status(tx: &mut Tx<'_>, rows: &[(&Meta, &TransferStatusChanged)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|(m, _)| m.event_id).collect();
    let tenants: Vec<String> = rows.iter().map(|(m, _)| m.tenant_id.clone()).collect();
    let envs: Vec<String> = rows.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect();
    let transfers: Vec<String> = rows.iter().map(|(_, s)| s.transfer_id.clone()).collect();
    let previous: Vec<Option<String>> =
        rows.iter().map(|(_, s)| s.previous.map(|p| p.as_str().to_owned())).collect();
    let statuses: Vec<String> = rows.iter().map(|(_, s)| s.status.as_str().to_owned()).collect();
    let versions: Vec<i32> = rows.iter().map(|(_, s)| i32::try_from(s.version).unwrap_or(i32::MAX)).collect();
    let reasons: Vec<Option<String>> = rows.iter().map(|(_, s)| s.reason.clone()).collect();
    let causes: Vec<Uuid> = rows.iter().map(|(_, s)| s.cause_event_id).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|(m, _)| m.occurred_at).collect();
    sqlx::query(
        "INSERT INTO transfer_status_history (event_id, tenant_id, environment, transfer_id, previous, status,
             version, reason, cause_event_id, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[],
             $8::text[], $9::uuid[], $10::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&envs)
    .bind(&transfers)
    .bind(&previous)
    .bind(&statuses)
    .bind(&versions)
    .bind(&reasons)
    .bind(&causes)
    .bind(&occurred)
    .execute(&mut **tx)
    .await?;
    // Current status: the highest version per transfer in this batch, applied only if newer than stored.
    let mut latest: BTreeMap<(&str, &str, &str), (&Meta, &TransferStatusChanged)> = BTreeMap::new();
    for (m, s) in rows {
        let key = (m.tenant_id.as_str(), m.environment.as_str(), s.transfer_id.as_str());
        if latest.get(&key).is_none_or(|(_, old)| old.version < s.version) {
            latest.insert(key, (m, s));
        }
    }
    let cur: Vec<(&Meta, &TransferStatusChanged)> = latest.into_values().collect();
    sqlx::query(
        "INSERT INTO transfers (tenant_id, environment, transfer_id, kind, amount_minor, currency, status, version,
             reason, last_event_id, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[],
             $8::int4[], $9::text[], $10::uuid[], $11::timestamptz[])
         ON CONFLICT (tenant_id, environment, transfer_id) DO UPDATE
         SET status = EXCLUDED.status, version = EXCLUDED.version, reason = EXCLUDED.reason,
             last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE transfers.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.transfer_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.kind.as_str().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.amount.amount_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.amount.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.status.as_str().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| i32::try_from(s.version).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, s)| s.reason.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_postings(tx: &mut Tx<'_>, rows: &[(&Meta, &LedgerPosting)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_postings (event_id, posting_id, tenant_id, environment, transfer_id, phase, account,
             amount_minor, currency, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::int8[], $9::text[], $10::timestamptz[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.posting_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.transfer_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.phase.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.account.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.amount_minor).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, p)| p.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_rejections(tx: &mut Tx<'_>, rows: &[(&Meta, &InputRejected)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO transfer_rejections (event_id, tenant_id, environment, input_event_id, input_event_type,
             transfer_id, reason, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
             $8::timestamptz[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_type.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.transfer_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `user.*` events: history rows, then the users' and cases' current state (forward-only by version).
async fn insert_kyc(tx: &mut Tx<'_>, rows: &[(&Meta, &str, &UserKycChanged)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Checked in decode: versions fit i64.
    let version = |u: &UserKycChanged| i64::try_from(u.version).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO kyc_history (event_id, tenant_id, environment, user_id, event_type, user_status, kyc_status,
             tier, kyc_expires_at, version, case_id, case_status, provider, reason, actor, cause_event_id,
             occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::int2[], $9::timestamptz[], $10::int8[], $11::text[], $12::text[], $13::text[], $14::text[],
             $15::text[], $16::uuid[], $17::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.user_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, t, _)| *t).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.user_status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.kyc_status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| i16::from(u.tier)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.kyc_expires_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| version(u)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.case_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.case_status.map(|s| s.as_str())).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.provider.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.actor.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, u)| u.cause_event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    // Current state: the highest version per user (and per case) in this batch, applied only if newer.
    let mut users: BTreeMap<(&str, &str, &str), (&Meta, &UserKycChanged)> = BTreeMap::new();
    let mut cases: BTreeMap<(&str, &str, &str), (&Meta, &UserKycChanged)> = BTreeMap::new();
    for (m, _, u) in rows {
        let key = (m.tenant_id.as_str(), m.environment.as_str(), u.user_id.as_str());
        if users.get(&key).is_none_or(|(_, old)| old.version < u.version) {
            users.insert(key, (m, u));
        }
        if let (Some(case), Some(_)) = (&u.case_id, u.case_status) {
            let key = (m.tenant_id.as_str(), m.environment.as_str(), case.as_str());
            if cases.get(&key).is_none_or(|(_, old)| old.version < u.version) {
                cases.insert(key, (m, u));
            }
        }
    }
    let cur: Vec<(&Meta, &UserKycChanged)> = users.into_values().collect();
    sqlx::query(
        "INSERT INTO users (tenant_id, environment, user_id, user_status, kyc_status, tier, kyc_expires_at, version,
             last_event_id, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int2[],
             $7::timestamptz[], $8::int8[], $9::uuid[], $10::timestamptz[])
         ON CONFLICT (tenant_id, environment, user_id) DO UPDATE
         SET user_status = EXCLUDED.user_status, kyc_status = EXCLUDED.kyc_status, tier = EXCLUDED.tier,
             kyc_expires_at = EXCLUDED.kyc_expires_at, version = EXCLUDED.version,
             last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE users.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.user_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.user_status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.kyc_status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| i16::from(u.tier)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.kyc_expires_at).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| version(u)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    if cases.is_empty() {
        return Ok(());
    }
    let cur: Vec<(&Meta, &UserKycChanged)> = cases.into_values().collect();
    sqlx::query(
        "INSERT INTO kyc_cases (tenant_id, environment, case_id, user_id, provider, case_status, version,
             last_event_id, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
             $8::uuid[], $9::timestamptz[])
         ON CONFLICT (tenant_id, environment, case_id) DO UPDATE
         SET user_id = EXCLUDED.user_id, provider = coalesce(EXCLUDED.provider, kyc_cases.provider),
             case_status = EXCLUDED.case_status, version = EXCLUDED.version,
             last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE kyc_cases.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.case_id.clone().unwrap_or_default()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.user_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.provider.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| u.case_status.map(|s| s.as_str()).unwrap_or_default()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, u)| version(u)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_kyc_rejections(
    tx: &mut Tx<'_>,
    rows: &[(&Meta, &KycInputRejected)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO kyc_rejections (event_id, tenant_id, environment, input_event_id, input_event_type, user_id,
             case_id, reason, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::timestamptz[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_type.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.user_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.case_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Live risk decisions (append-only), then the latest decision per transfer, forward-only by step.
async fn insert_risk_decisions(
    tx: &mut Tx<'_>,
    rows: &[(&Meta, &DecisionRecorded)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO risk_decisions (event_id, tenant_id, environment, transfer_id, transfer_version, kind, decision,
             score, rule_set, rule_set_version, amount_minor, currency, amount_report_minor, report_currency, ctr,
             user_id, requested_by, reviewed_by, review_reason, hits, lists, rate, screened_at, occurred_at)
         SELECT e, t, env, tr, v, k, d, s, rs, rsv, a, c, ar, rc, ctr, usr, rb, rv, rr, h::jsonb, l::jsonb, r::jsonb, sa, o
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::int4[],
             $9::text[], $10::text[], $11::int8[], $12::text[], $13::int8[], $14::text[], $15::bool[], $16::text[],
             $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::timestamptz[],
             $24::timestamptz[])
             AS x(e, t, env, tr, v, k, d, s, rs, rsv, a, c, ar, rc, ctr, usr, rb, rv, rr, h, l, r, sa, o)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.transfer_id.clone()).collect::<Vec<_>>())
    // Checked in decode: fits in i32.
    .bind(rows.iter().map(|(_, d)| i32::try_from(d.transfer_version).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.kind.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| rows::outcome_str(d.decision)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| i32::try_from(d.score).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.rule_set.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.rule_set_version.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.amount.amount_minor).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.amount.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.amount_report_minor).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.report_currency.code().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.ctr).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.user_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.requested_by.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.reviewed_by.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.review_reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| json_text(&d.hits)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| json_text(&d.lists)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.rate.as_ref().map(json_text)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.screened_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let mut latest: BTreeMap<(&str, &str, &str), (&Meta, &DecisionRecorded)> = BTreeMap::new();
    for (m, d) in rows {
        let key = (m.tenant_id.as_str(), m.environment.as_str(), d.transfer_id.as_str());
        if latest.get(&key).is_none_or(|(_, old)| rows::risk_step(old) < rows::risk_step(d)) {
            latest.insert(key, (m, d));
        }
    }
    let cur: Vec<(&Meta, &DecisionRecorded)> = latest.into_values().collect();
    sqlx::query(
        "INSERT INTO risk_latest (tenant_id, environment, transfer_id, step, decision, event_id, occurred_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::uuid[],
             $7::timestamptz[])
         ON CONFLICT (tenant_id, environment, transfer_id) DO UPDATE
         SET step = EXCLUDED.step, decision = EXCLUDED.decision, event_id = EXCLUDED.event_id,
             occurred_at = EXCLUDED.occurred_at
         WHERE risk_latest.step < EXCLUDED.step",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, d)| d.transfer_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, d)| rows::risk_step(d)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, d)| rows::outcome_str(d.decision)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// JSON text of a value the sinks serialize themselves (a plain data type: serializing cannot fail).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

async fn insert_risk_rejections(
    tx: &mut Tx<'_>,
    rows: &[(&Meta, &RiskInputRejected)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO risk_rejections (event_id, tenant_id, environment, input_event_id, input_event_type,
             transfer_id, reason, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
             $8::timestamptz[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.input_event_type.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.transfer_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_balances(tx: &mut Tx<'_>, rows: &[(&Meta, &BalanceChanged)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut latest: BTreeMap<(&str, &str, &str, &str), (&Meta, &BalanceChanged)> = BTreeMap::new();
    for (m, b) in rows {
        let key = (m.tenant_id.as_str(), m.environment.as_str(), b.account.as_str(), b.currency.code());
        if latest.get(&key).is_none_or(|(_, old)| old.version < b.version) {
            latest.insert(key, (m, b));
        }
    }
    let cur: Vec<(&Meta, &BalanceChanged)> = latest.into_values().collect();
    sqlx::query(
        "INSERT INTO account_balances (tenant_id, environment, account, currency, posted_minor, pending_debit_minor,
             pending_credit_minor, available_minor, version, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
             $8::int8[], $9::int8[], $10::timestamptz[])
         ON CONFLICT (tenant_id, environment, account, currency) DO UPDATE
         SET posted_minor = EXCLUDED.posted_minor, pending_debit_minor = EXCLUDED.pending_debit_minor,
             pending_credit_minor = EXCLUDED.pending_credit_minor, available_minor = EXCLUDED.available_minor,
             version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
         WHERE account_balances.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.account.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.posted_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.pending_debit_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.pending_credit_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| b.available_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, b)| i64::try_from(b.version).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The positions `sink` holds for `topic`.
pub async fn load_positions(
    pool: &PgPool,
    sink: &str,
    topic: &str,
) -> Result<HashMap<i32, Stored>, sqlx::Error> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i32, i64, i32, Option<Uuid>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT partition, next_offset, log_epoch, last_event_id, landed_through FROM sink_offsets
         WHERE sink = $1 AND topic = $2",
    )
    .bind(sink)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, next_offset, log_epoch, last_event_id, landed)| {
            let landed_through_ms = landed.map(|t| t.timestamp_millis());
            (p, Stored { next_offset, last_event_id, log_epoch, landed_through_ms })
        })
        .collect())
}

/// Upsert positions. Within a log epoch a position only moves forward (a stale writer never moves it
/// back); a newer epoch (the topic was recreated) replaces it. Complete-through only grows.
pub async fn store_positions(tx: &mut Tx<'_>, sink: &str, positions: &[Position]) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = positions.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = positions.iter().map(|p| p.next_offset).collect();
    let epochs: Vec<i32> = positions.iter().map(|p| p.log_epoch).collect();
    let ids: Vec<Option<Uuid>> = positions.iter().map(|p| p.last_event_id).collect();
    let landed: Vec<Option<DateTime<Utc>>> =
        positions.iter().map(|p| p.landed_through_ms.and_then(DateTime::from_timestamp_millis)).collect();
    sqlx::query(
        "INSERT INTO sink_offsets (sink, topic, partition, next_offset, log_epoch, last_event_id, landed_through)
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int4[], $6::uuid[], $7::timestamptz[])
         ON CONFLICT (sink, topic, partition) DO UPDATE
         SET next_offset = CASE WHEN (EXCLUDED.log_epoch, EXCLUDED.next_offset)
                                     > (sink_offsets.log_epoch, sink_offsets.next_offset)
                                THEN EXCLUDED.next_offset ELSE sink_offsets.next_offset END,
             last_event_id = CASE WHEN (EXCLUDED.log_epoch, EXCLUDED.next_offset)
                                       > (sink_offsets.log_epoch, sink_offsets.next_offset)
                                  THEN EXCLUDED.last_event_id ELSE sink_offsets.last_event_id END,
             log_epoch = GREATEST(sink_offsets.log_epoch, EXCLUDED.log_epoch),
             landed_through = GREATEST(sink_offsets.landed_through, EXCLUDED.landed_through),
             updated_at = now()",
    )
    .bind(sink)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&epochs)
    .bind(&ids)
    .bind(&landed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
