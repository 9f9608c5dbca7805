//! PostgreSQL: operational truth. A batch's rows (every kind) and the sink's positions commit in one
//! transaction. Append-only tables are idempotent on event id; "current" projections move forward only.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use riverbank_runtime::sink::{Position, SinkStore, StoreError, Stored};
use riverbank_schemas::billing::{FeeCharged, InvoiceRecorded};
use riverbank_schemas::commands::FxRatesPublished;
use riverbank_schemas::fx::{ConversionRecorded, QuoteRecorded};
use riverbank_schemas::kyc::UserKycChanged;
use riverbank_schemas::ledger::BookingRecorded;
use riverbank_schemas::risk::DecisionRecorded;
use riverbank_schemas::transfers::{BalanceChanged, LedgerPosting, TransferStatusChanged};
use riverbank_schemas::{AuditCheckpoint, AuditRecord, Environment};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::rows::{self, Meta, PersonalValue, Row};

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

/// The rejection row of `$r` (any of the rejection events: they share these fields), naming its ids `$id`.
macro_rules! rejection {
    ($m:expr, $r:expr, [$($id:ident),+]) => {
        Rejection {
            meta: $m,
            input_event_id: $r.input_event_id,
            input_event_type: &$r.input_event_type,
            ids: [$(&$r.$id),+],
            reason: &$r.reason,
        }
    };
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
        let mut checkpoints = vec![];
        let mut rejections = vec![];
        let (mut risk_decisions, mut risk_rejections) = (vec![], vec![]);
        let (mut users, mut kyc_rejections) = (vec![], vec![]);
        let (mut rates, mut quotes, mut conversions, mut fx_rejections) = (vec![], vec![], vec![], vec![]);
        let (mut bookings, mut fees, mut invoices, mut billing_rejections) = (vec![], vec![], vec![], vec![]);
        let mut personal = vec![];
        for r in rows {
            match r {
                Row::Audit(m, a) => audit.push((m, &**a)),
                Row::AuditCheckpoint(m, c) => checkpoints.push((m, c)),
                Row::Status(m, s) => status.push((m, s)),
                Row::Posting(m, p) => postings.push((m, p)),
                Row::Balance(m, b) => balances.push((m, b)),
                Row::Rejection(m, r) => rejections.push(rejection!(m, r, [transfer_id])),
                // Shadow decisions are ClickHouse's alone.
                Row::RiskDecision(m, d) if !d.shadow => risk_decisions.push((m, &**d)),
                Row::RiskDecision(..) => {}
                Row::RiskRejection(m, r) => risk_rejections.push(rejection!(m, r, [transfer_id])),
                Row::User(m, t, u) => users.push((m, *t, u)),
                Row::KycRejection(m, r) => kyc_rejections.push(rejection!(m, r, [user_id, case_id])),
                Row::FxRates(m, p) => rates.push((m, p)),
                Row::Quote(m, q) => quotes.push((m, &**q)),
                Row::Conversion(m, c) => conversions.push((m, &**c)),
                Row::FxRejection(m, r) => fx_rejections.push(rejection!(m, r, [quote_id, conversion_id])),
                Row::Booking(m, b) => bookings.push((m, b)),
                Row::Fee(m, f) => fees.push((m, &**f)),
                Row::Invoice(m, i) => invoices.push((m, &**i)),
                Row::BillingRejection(m, r) => billing_rejections.push(rejection!(m, r, [transfer_id])),
                Row::PersonalData(m, v) => personal.push((m, &**v)),
            }
        }
        insert_audit(&mut tx, &audit).await?;
        insert_checkpoints(&mut tx, &checkpoints).await?;
        insert_status(&mut tx, &status).await?;
        insert_postings(&mut tx, &postings).await?;
        upsert_balances(&mut tx, &balances).await?;
        insert_rejections(&mut tx, "transfer_rejections", ["transfer_id"], &rejections).await?;
        insert_risk_decisions(&mut tx, &risk_decisions).await?;
        insert_rejections(&mut tx, "risk_rejections", ["transfer_id"], &risk_rejections).await?;
        insert_kyc(&mut tx, &users).await?;
        insert_rejections(&mut tx, "kyc_rejections", ["user_id", "case_id"], &kyc_rejections).await?;
        insert_fx_rates(&mut tx, &rates).await?;
        upsert_quotes(&mut tx, &quotes).await?;
        upsert_conversions(&mut tx, &conversions).await?;
        insert_rejections(&mut tx, "fx_rejections", ["quote_id", "conversion_id"], &fx_rejections).await?;
        insert_bookings(&mut tx, &bookings).await?;
        upsert_fees(&mut tx, &fees).await?;
        upsert_invoices(&mut tx, &invoices).await?;
        insert_rejections(&mut tx, "billing_rejections", ["transfer_id"], &billing_rejections).await?;
        insert_personal_data(&mut tx, &personal).await?;
        store_positions(&mut tx, SINK_NAME, positions).await?;
        tx.commit().await?;
        Ok(())
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

/// A row of one of the rejection tables (transfer, risk, KYC, FX and billing rejections share one shape): the
/// event's meta, the input refused, the ids it names (one per id column of its table, in order) and the reason.
struct Rejection<'a, const N: usize> {
    meta: &'a Meta,
    input_event_id: Uuid,
    input_event_type: &'a str,
    ids: [&'a Option<String>; N],
    reason: &'a str,
}

/// Rejections into `table`, whose id columns are `id_columns` (constants, never input), in one statement per
/// batch, every value bound; idempotent on event id.
async fn insert_rejections<const N: usize>(
    tx: &mut Tx<'_>,
    table: &'static str,
    id_columns: [&'static str; N],
    rows: &[Rejection<'_, N>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // $1..$5: the meta and the input; then one text array per id column; then the reason and the time.
    let id_arrays: String = (0..N).map(|i| format!("${}::text[], ", 6 + i)).collect();
    let sql = format!(
        "INSERT INTO {table} (event_id, tenant_id, environment, input_event_id, input_event_type, {}, reason,
             occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], {id_arrays}${}::text[],
             ${}::timestamptz[])
         ON CONFLICT (event_id) DO NOTHING",
        id_columns.join(", "),
        6 + N,
        7 + N,
    );
    let mut query = sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.meta.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.meta.tenant_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.meta.environment.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.input_event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.input_event_type.to_owned()).collect::<Vec<_>>());
    for i in 0..N {
        query = query.bind(rows.iter().map(|r| r.ids[i].clone()).collect::<Vec<_>>());
    }
    query
        .bind(rows.iter().map(|r| r.reason.to_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.meta.occurred_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_audit(tx: &mut Tx<'_>, rows: &[(&Meta, &AuditRecord)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&(&Meta, &AuditRecord)) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let opt =
        |f: fn(&AuditRecord) -> &Option<String>| rows.iter().map(|(_, a)| f(a).clone()).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|(_, a)| a.audit_id).collect();
    let source_ids: Vec<Uuid> = rows.iter().map(|(_, a)| a.source_event_id).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|(_, a)| a.occurred_at).collect();
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|(_, a)| a.recorded_at).collect();
    // Checked in decode: both fit in i64.
    let bytes: Vec<i64> =
        rows.iter().map(|(_, a)| i64::try_from(a.payload_bytes).unwrap_or(i64::MAX)).collect();
    let seqs: Vec<i64> = rows.iter().map(|(_, a)| i64::try_from(a.seq).unwrap_or(i64::MAX)).collect();
    let partitions: Vec<i32> = rows.iter().map(|(m, _)| m.source_partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|(m, _)| m.source_offset).collect();
    sqlx::query(
        "INSERT INTO audit_log (event_id, tenant_id, environment, actor, action, resource_type, resource_id,
             source_event_id, occurred_at, recorded_at, trace_id, payload_bytes, source_topic,
             source_partition, source_offset, seq, before, after, ip, user_agent, request_id,
             source_event_type, prev_hash, hash)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::text[], $8::uuid[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::int8[],
             $13::text[], $14::int4[], $15::int8[], $16::int8[], $17::text[], $18::text[], $19::text[],
             $20::text[], $21::text[], $22::text[], $23::text[], $24::text[])
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
    .bind(opt(|a| &a.trace_id))
    .bind(&bytes)
    .bind(col(|(m, _)| m.source_topic.clone()))
    .bind(&partitions)
    .bind(&offsets)
    .bind(&seqs)
    .bind(opt(|a| &a.before))
    .bind(opt(|a| &a.after))
    .bind(opt(|a| &a.ip))
    .bind(opt(|a| &a.user_agent))
    .bind(opt(|a| &a.request_id))
    .bind(col(|(_, a)| a.source_event_type.clone()))
    .bind(col(|(_, a)| a.prev_hash.clone()))
    .bind(col(|(_, a)| a.hash.clone()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_checkpoints(tx: &mut Tx<'_>, rows: &[(&Meta, &AuditCheckpoint)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&(&Meta, &AuditCheckpoint)) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let ids: Vec<Uuid> = rows.iter().map(|(_, c)| c.checkpoint_id).collect();
    let sizes: Vec<i64> = rows.iter().map(|(_, c)| i64::try_from(c.tree_size).unwrap_or(i64::MAX)).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|(_, c)| c.occurred_at).collect();
    let partitions: Vec<i32> = rows.iter().map(|(m, _)| m.source_partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|(m, _)| m.source_offset).collect();
    sqlx::query(
        "INSERT INTO audit_checkpoints (checkpoint_id, tenant_id, environment, tree_size, root_hash, last_hash,
             occurred_at, key_id, signature, source_topic, source_partition, source_offset)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
             $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[])
         ON CONFLICT (checkpoint_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(col(|(_, c)| c.tenant_id.clone()))
    .bind(col(|(_, c)| c.environment.as_str().to_owned()))
    .bind(&sizes)
    .bind(col(|(_, c)| c.root_hash.clone()))
    .bind(col(|(_, c)| c.last_hash.clone()))
    .bind(&occurred)
    .bind(col(|(_, c)| c.key_id.clone()))
    .bind(col(|(_, c)| c.signature.clone()))
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
    let cur = latest(
        rows,
        |m, s| (m.tenant_id.as_str(), m.environment.as_str(), s.transfer_id.as_str()),
        |s| s.version,
    );
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
    let events: Vec<(&Meta, &UserKycChanged)> = rows.iter().map(|&(m, _, u)| (m, u)).collect();
    let cur = latest(
        &events,
        |m, u| (m.tenant_id.as_str(), m.environment.as_str(), u.user_id.as_str()),
        |u| u.version,
    );
    let with_case: Vec<(&Meta, &UserKycChanged)> =
        events.iter().copied().filter(|(_, u)| u.case_id.is_some() && u.case_status.is_some()).collect();
    let cases = latest(
        &with_case,
        |m, u| (m.tenant_id.as_str(), m.environment.as_str(), u.case_id.as_deref().unwrap_or_default()),
        |u| u.version,
    );
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
    let cur = cases;
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
    let cur = latest(
        rows,
        |m, d| (m.tenant_id.as_str(), m.environment.as_str(), d.transfer_id.as_str()),
        rows::risk_step,
    );
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

async fn upsert_balances(tx: &mut Tx<'_>, rows: &[(&Meta, &BalanceChanged)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let cur = latest(
        rows,
        |m, b| (m.tenant_id.as_str(), m.environment.as_str(), b.account.as_str(), b.currency.code()),
        |b| b.version,
    );
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

/// A version checked in decode to fit `integer`.
fn version_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The highest version per key among `rows` (a batch may carry several versions of one entity).
fn latest<'a, T, K: Ord, V: PartialOrd>(
    rows: &[(&'a Meta, &'a T)],
    key: impl Fn(&'a Meta, &'a T) -> K,
    version: impl Fn(&T) -> V,
) -> Vec<(&'a Meta, &'a T)> {
    let mut latest: BTreeMap<K, (&'a Meta, &'a T)> = BTreeMap::new();
    for &(m, r) in rows {
        let k = key(m, r);
        if latest.get(&k).is_none_or(|(_, old)| version(old) < version(r)) {
            latest.insert(k, (m, r));
        }
    }
    latest.into_values().collect()
}

/// Every rate of every publication, one row per (event, pair).
async fn insert_fx_rates(tx: &mut Tx<'_>, rows: &[(&Meta, &FxRatesPublished)]) -> Result<(), sqlx::Error> {
    let flat: Vec<(&Meta, &FxRatesPublished, &riverbank_schemas::commands::FxRate)> =
        rows.iter().flat_map(|(m, p)| p.rates.iter().map(move |r| (*m, *p, r))).collect();
    if flat.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO fx_rates (event_id, tenant_id, environment, base, quote, rate_e9, as_of, published_by,
             occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
             $7::timestamptz[], $8::text[], $9::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(flat.iter().map(|(m, _, _)| m.event_id).collect::<Vec<_>>())
    .bind(flat.iter().map(|(m, _, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(flat.iter().map(|(m, _, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(flat.iter().map(|(_, _, r)| r.base.code()).collect::<Vec<_>>())
    .bind(flat.iter().map(|(_, _, r)| r.quote.code()).collect::<Vec<_>>())
    .bind(flat.iter().map(|(_, _, r)| r.rate_e9).collect::<Vec<_>>())
    .bind(flat.iter().map(|(_, p, _)| p.as_of).collect::<Vec<_>>())
    .bind(flat.iter().map(|(_, p, _)| p.published_by.clone()).collect::<Vec<_>>())
    .bind(flat.iter().map(|(m, _, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Quotes' current state, forward-only by version.
async fn upsert_quotes(tx: &mut Tx<'_>, rows: &[(&Meta, &QuoteRecorded)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let cur = latest(
        rows,
        |m, q| (m.tenant_id.as_str(), m.environment.as_str(), q.quote_id.as_str()),
        |q| q.version,
    );
    sqlx::query(
        "INSERT INTO fx_quotes (tenant_id, environment, quote_id, status, version, sell_currency, buy_currency,
             sell_minor, buy_minor, fixed, mid_e9, rate_e9, markup_bps, rates, pivot, rate_as_of, expires_at,
             rounding, requested_by, reason, conversion_id, last_event_id, updated_at)
         SELECT t, env, q, st, v, sc, bc, s, b, f, mid, r, bps, rs::jsonb, pv, ra, ex, rd, rq, rsn, cv, e, u
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[],
             $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::int8[], $13::int4[], $14::text[], $15::text[],
             $16::timestamptz[], $17::timestamptz[], $18::text[], $19::text[], $20::text[], $21::text[],
             $22::uuid[], $23::timestamptz[])
             AS x(t, env, q, st, v, sc, bc, s, b, f, mid, r, bps, rs, pv, ra, ex, rd, rq, rsn, cv, e, u)
         ON CONFLICT (tenant_id, environment, quote_id) DO UPDATE
         SET status = EXCLUDED.status, version = EXCLUDED.version, sell_currency = EXCLUDED.sell_currency,
             buy_currency = EXCLUDED.buy_currency, sell_minor = EXCLUDED.sell_minor, buy_minor = EXCLUDED.buy_minor,
             fixed = EXCLUDED.fixed, mid_e9 = EXCLUDED.mid_e9, rate_e9 = EXCLUDED.rate_e9,
             markup_bps = EXCLUDED.markup_bps, rates = EXCLUDED.rates, pivot = EXCLUDED.pivot,
             rate_as_of = EXCLUDED.rate_as_of, expires_at = EXCLUDED.expires_at, rounding = EXCLUDED.rounding,
             requested_by = EXCLUDED.requested_by, reason = EXCLUDED.reason,
             conversion_id = EXCLUDED.conversion_id, last_event_id = EXCLUDED.last_event_id,
             updated_at = EXCLUDED.updated_at
         WHERE fx_quotes.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.quote_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| version_i32(q.version)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.sell_currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.buy_currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.sell.map(|m| m.amount_minor)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.buy.map(|m| m.amount_minor)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.fixed.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.mid_e9).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.rate_e9).collect::<Vec<_>>())
    // Checked in decode: fits in i32.
    .bind(cur.iter().map(|(_, q)| i32::try_from(q.markup_bps).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| json_text(&q.rates)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.pivot.map(|c| c.code())).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.rate_as_of).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.expires_at).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.rounding.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.requested_by.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.reason.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, q)| q.conversion_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Conversions' current state with their amounts, forward-only by version.
async fn upsert_conversions(
    tx: &mut Tx<'_>,
    rows: &[(&Meta, &ConversionRecorded)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let cur = latest(
        rows,
        |m, c| (m.tenant_id.as_str(), m.environment.as_str(), c.conversion_id.as_str()),
        |c| c.version,
    );
    let amount = |f: fn(&riverbank_schemas::fx::ConversionAmounts) -> i64| {
        cur.iter().map(|(_, c)| c.amounts.as_ref().map(f)).collect::<Vec<Option<i64>>>()
    };
    let exact = |f: fn(&riverbank_schemas::fx::ConversionAmounts) -> &String| {
        cur.iter().map(|(_, c)| c.amounts.as_ref().map(|a| f(a).clone())).collect::<Vec<Option<String>>>()
    };
    sqlx::query(
        "INSERT INTO fx_conversions (tenant_id, environment, conversion_id, quote_id, status, version, account,
             destination, sell_minor, sell_currency, buy_minor, buy_currency, mid_value_minor, fee_minor,
             residue_minor, mid_value_exact, buy_exact, fee_exact, mid_e9, rate_e9, rounding, booking_id, otc,
             requested_by, decided_by, reason, last_event_id, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[],
             $8::text[], $9::int8[], $10::text[], $11::int8[], $12::text[], $13::int8[], $14::int8[], $15::int8[],
             $16::text[], $17::text[], $18::text[], $19::int8[], $20::int8[], $21::text[], $22::text[],
             $23::bool[], $24::text[], $25::text[], $26::text[], $27::uuid[], $28::timestamptz[])
         ON CONFLICT (tenant_id, environment, conversion_id) DO UPDATE
         SET quote_id = EXCLUDED.quote_id, status = EXCLUDED.status, version = EXCLUDED.version,
             account = EXCLUDED.account, destination = EXCLUDED.destination, sell_minor = EXCLUDED.sell_minor,
             sell_currency = EXCLUDED.sell_currency, buy_minor = EXCLUDED.buy_minor,
             buy_currency = EXCLUDED.buy_currency, mid_value_minor = EXCLUDED.mid_value_minor,
             fee_minor = EXCLUDED.fee_minor, residue_minor = EXCLUDED.residue_minor,
             mid_value_exact = EXCLUDED.mid_value_exact, buy_exact = EXCLUDED.buy_exact,
             fee_exact = EXCLUDED.fee_exact, mid_e9 = EXCLUDED.mid_e9, rate_e9 = EXCLUDED.rate_e9,
             rounding = EXCLUDED.rounding, booking_id = EXCLUDED.booking_id, otc = EXCLUDED.otc,
             requested_by = EXCLUDED.requested_by, decided_by = EXCLUDED.decided_by, reason = EXCLUDED.reason,
             last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE fx_conversions.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.conversion_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.quote_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| version_i32(c.version)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.account.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.destination.clone()).collect::<Vec<_>>())
    .bind(amount(|a| a.sell.amount_minor))
    .bind(cur.iter().map(|(_, c)| c.amounts.as_ref().map(|a| a.sell.currency.code())).collect::<Vec<_>>())
    .bind(amount(|a| a.buy.amount_minor))
    .bind(cur.iter().map(|(_, c)| c.amounts.as_ref().map(|a| a.buy.currency.code())).collect::<Vec<_>>())
    .bind(amount(|a| a.mid_value.amount_minor))
    .bind(amount(|a| a.fee.amount_minor))
    .bind(amount(|a| a.residue.amount_minor))
    .bind(exact(|a| &a.mid_value_exact))
    .bind(exact(|a| &a.buy_exact))
    .bind(exact(|a| &a.fee_exact))
    .bind(cur.iter().map(|(_, c)| c.mid_e9).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.rate_e9).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.rounding.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.booking_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.otc).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.requested_by.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.decided_by.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, c)| c.reason.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bookings' outcomes: one per booking id, the first answer kept (the ledger answers a booking once).
async fn insert_bookings(tx: &mut Tx<'_>, rows: &[(&Meta, &BookingRecorded)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_bookings (tenant_id, environment, booking_id, purpose, reference, outcome, reason, legs,
             event_id, occurred_at)
         SELECT t, env, b, p, r, o, rsn, l::jsonb, e, oc
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::uuid[], $10::timestamptz[]) AS x(t, env, b, p, r, o, rsn, l, e, oc)
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| b.booking_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| b.purpose.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| b.reference.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| rows::booking_outcome_str(b.outcome)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| b.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, b)| json_text(&b.legs)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sealed personal values, as sealed (never opened here); insert-only, idempotent on (event id, pointer).
async fn insert_personal_data(tx: &mut Tx<'_>, rows: &[(&Meta, &PersonalValue)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO personal_data (event_id, pointer, tenant_id, environment, subject, data_class, record, sealed,
             provider, occurred_at, source_topic, source_partition, source_offset)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::int4[], $13::int8[])
         ON CONFLICT (event_id, pointer) DO NOTHING",
    )
    .bind(rows.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.pointer.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.subject.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.data_class).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.record.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.sealed.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, v)| v.provider.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.source_topic.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.source_partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|(m, _)| m.source_offset).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fees per transfer, forward-only by version.
async fn upsert_fees(tx: &mut Tx<'_>, rows: &[(&Meta, &FeeCharged)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let cur = latest(
        rows,
        |m, f| (m.tenant_id.as_str(), m.environment.as_str(), f.transfer_id.as_str()),
        |f| f.version,
    );
    sqlx::query(
        "INSERT INTO fees (tenant_id, environment, transfer_id, transfer_kind, transfer_amount_minor,
             transfer_currency, completed_at, period, fee_minor, currency, status, version, config_version,
             pricing, monthly_volume_before_minor, monthly_volume_currency, fixed_minor, fixed_currency, parts,
             exact, clamped, rounding, booking_id, invoice_id, adjustment, reason, last_event_id, updated_at)
         SELECT t, env, tr, k, ta, tc, ca, p, f, c, st, v, cv, pr, mv, mvc, fx, fxc, pa::jsonb, ex, cl, rd, b, i,
             adj, rsn, e, u
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::timestamptz[],
             $8::text[], $9::int8[], $10::text[], $11::text[], $12::int4[], $13::text[], $14::text[], $15::int8[],
             $16::text[], $17::int8[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[],
             $23::text[], $24::text[], $25::bool[], $26::text[], $27::uuid[], $28::timestamptz[])
             AS x(t, env, tr, k, ta, tc, ca, p, f, c, st, v, cv, pr, mv, mvc, fx, fxc, pa, ex, cl, rd, b, i, adj,
                  rsn, e, u)
         ON CONFLICT (tenant_id, environment, transfer_id) DO UPDATE
         SET transfer_kind = EXCLUDED.transfer_kind, transfer_amount_minor = EXCLUDED.transfer_amount_minor,
             transfer_currency = EXCLUDED.transfer_currency, completed_at = EXCLUDED.completed_at,
             period = EXCLUDED.period, fee_minor = EXCLUDED.fee_minor, currency = EXCLUDED.currency,
             status = EXCLUDED.status, version = EXCLUDED.version, config_version = EXCLUDED.config_version,
             pricing = EXCLUDED.pricing, monthly_volume_before_minor = EXCLUDED.monthly_volume_before_minor,
             monthly_volume_currency = EXCLUDED.monthly_volume_currency, fixed_minor = EXCLUDED.fixed_minor,
             fixed_currency = EXCLUDED.fixed_currency, parts = EXCLUDED.parts, exact = EXCLUDED.exact,
             clamped = EXCLUDED.clamped, rounding = EXCLUDED.rounding, booking_id = EXCLUDED.booking_id,
             invoice_id = EXCLUDED.invoice_id, adjustment = EXCLUDED.adjustment, reason = EXCLUDED.reason,
             last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE fees.version < EXCLUDED.version",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.transfer_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.transfer_kind.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.transfer_amount.amount_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.transfer_amount.currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.completed_at).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.period.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.fee.amount_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.fee.currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| version_i32(f.version)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.config_version.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.pricing.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.monthly_volume_before.amount_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.monthly_volume_before.currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.fixed.amount_minor).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.fixed.currency.code()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| json_text(&f.parts)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.exact.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.clamped.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.rounding.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.booking_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.invoice_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.adjustment).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, f)| f.reason.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Invoices, forward-only by version; an invoice that moved to a higher version gets that version's
/// lines in place of the ones it had, in this transaction.
async fn upsert_invoices(tx: &mut Tx<'_>, rows: &[(&Meta, &InvoiceRecorded)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let cur = latest(
        rows,
        |m, i| (m.tenant_id.as_str(), m.environment.as_str(), i.invoice_id.as_str()),
        |i| i.version,
    );
    // RETURNING yields the rows inserted or moved forward, not the ones an older version left alone.
    let moved: Vec<(String, String, String)> = sqlx::query_as(
        "INSERT INTO invoices (tenant_id, environment, invoice_id, period, period_start, period_end, closes_at,
             status, version, totals, line_count, last_event_id, updated_at)
         SELECT t, env, i, p, ps, pe, ca, st, v, tot::jsonb, lc, e, u
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
             $7::timestamptz[], $8::text[], $9::int4[], $10::text[], $11::int4[], $12::uuid[], $13::timestamptz[])
             AS x(t, env, i, p, ps, pe, ca, st, v, tot, lc, e, u)
         ON CONFLICT (tenant_id, environment, invoice_id) DO UPDATE
         SET period = EXCLUDED.period, period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
             closes_at = EXCLUDED.closes_at, status = EXCLUDED.status, version = EXCLUDED.version,
             totals = EXCLUDED.totals, line_count = EXCLUDED.line_count, last_event_id = EXCLUDED.last_event_id,
             updated_at = EXCLUDED.updated_at
         WHERE invoices.version < EXCLUDED.version
         RETURNING tenant_id, environment, invoice_id",
    )
    .bind(cur.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.invoice_id.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.period.clone()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.period_start).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.period_end).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.closes_at).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| i.status.as_str()).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| version_i32(i.version)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(_, i)| json_text(&i.totals)).collect::<Vec<_>>())
    // Checked in decode: fits in i32.
    .bind(cur.iter().map(|(_, i)| i32::try_from(i.lines.len()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.event_id).collect::<Vec<_>>())
    .bind(cur.iter().map(|(m, _)| m.occurred_at).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    if moved.is_empty() {
        return Ok(());
    }
    let moved: std::collections::BTreeSet<(String, String, String)> = moved.into_iter().collect();
    let replaced: Vec<(&Meta, &InvoiceRecorded)> = cur
        .into_iter()
        .filter(|(m, i)| {
            moved.contains(&(m.tenant_id.clone(), m.environment.as_str().to_owned(), i.invoice_id.clone()))
        })
        .collect();
    sqlx::query(
        "DELETE FROM invoice_lines l
         USING UNNEST($1::text[], $2::text[], $3::text[]) AS x(t, env, i)
         WHERE l.tenant_id = x.t AND l.environment = x.env AND l.invoice_id = x.i",
    )
    .bind(replaced.iter().map(|(m, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(replaced.iter().map(|(m, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(replaced.iter().map(|(_, i)| i.invoice_id.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let lines: Vec<(&Meta, &InvoiceRecorded, usize, &riverbank_schemas::billing::InvoiceLine)> = replaced
        .iter()
        .flat_map(|&(m, i)| i.lines.iter().enumerate().map(move |(n, l)| (m, i, n, l)))
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO invoice_lines (tenant_id, environment, invoice_id, line_id, position, invoice_version, kind,
             transfer_kind, description, counted, amount_minor, currency, source_period, sources)
         SELECT t, env, i, l, p, v, k, tk, d, n, a, c, sp, s::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::text[],
             $8::text[], $9::text[], $10::int8[], $11::int8[], $12::text[], $13::text[], $14::text[])
             AS x(t, env, i, l, p, v, k, tk, d, n, a, c, sp, s)",
    )
    .bind(lines.iter().map(|(m, _, _, _)| m.tenant_id.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(m, _, _, _)| m.environment.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, i, _, _)| i.invoice_id.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.line_id.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, n, _)| i32::try_from(*n).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, i, _, _)| version_i32(i.version)).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.kind.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.transfer_kind.map(|k| k.as_str())).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.description.clone()).collect::<Vec<_>>())
    // Checked in decode: fits in i64.
    .bind(lines.iter().map(|(_, _, _, l)| i64::try_from(l.count).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.amount.amount_minor).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.amount.currency.code()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| l.source_period.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, _, _, l)| json_text(&l.sources)).collect::<Vec<_>>())
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
