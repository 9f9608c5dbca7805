//! The edge's own state in Postgres, in its own schema (`ingest`), apart from the sinks' tables:
//! - `ingest.requests`: one row per webhook delivery (deduplication) and per `Idempotency-Key`. The
//!   primary key is the claim: of two concurrent requests (on any instance) exactly one inserts the row
//!   and produces; the other waits for its answer and returns it.
//!
//! A claim row keeps what the key was first used for (the request's SHA-256) and the event id it is
//! produced under until the retention sweep deletes it, whatever happens to the request: a claimant
//! whose produce failed, timed out or was cut off only ends its lease (the outcome is unknown: the
//! event may have landed), so a retry of the same request takes the key over at once and produces
//! the same event id again, and a different request under the key is refused. Each claimant has an
//! owner token in the row; only the current owner may end the lease or record the answer, so a
//! claimant that was paused past its lease cannot touch the claim of the request that took over.
//!
//! The claim also pins the event's time: `created_at`, set once when the key is first claimed, is
//! returned to every owner (the first and each takeover) as `first_claimed_at`, and an event without
//! a time of its own (a command; a webhook whose definition declares no body event time) is stamped
//! with it. So every copy of one event id carries one `occurred_at`: stores that deduplicate within a
//! time partition (ClickHouse `ReplacingMergeTree` partitioned by month) see the copies in the same
//! partition. This holds while the claim exists (`ingest.webhook_dedupe_retention_h`, 168 h, and
//! `ingest.idempotency_retention_h`); a copy made after the sweep deleted the claim gets a new time.
//!
//! Tenant API keys (`ingest.api_keys`) live in `riverbank_runtime::apikeys`: the read API checks them too.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row as _};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use riverbank_runtime::CancellationToken;
use riverbank_schemas::Environment;

/// Bumped when the DDL below changes; each statement is idempotent.
const DDL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS ingest",
    "CREATE TABLE IF NOT EXISTS ingest.requests (
        tenant_id text NOT NULL,
        environment text NOT NULL,
        scope text NOT NULL,
        request_key text NOT NULL,
        request_sha256 bytea NOT NULL,
        event_id uuid NOT NULL,
        status_code smallint,
        response jsonb,
        lease_until timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, environment, scope, request_key)
    )",
    "CREATE INDEX IF NOT EXISTS requests_created_at ON ingest.requests (created_at)",
    // The current claimant's token (NULL on rows written before owners existed).
    "ALTER TABLE ingest.requests ADD COLUMN IF NOT EXISTS owner uuid",
];

/// Create the schema and tables if missing (safe to run from several instances at once).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    riverbank_runtime::apikeys::migrate(pool).await?;
    riverbank_runtime::apikeys::run_ddl(pool, DDL).await
}

/// Identifies one claimable request.
#[derive(Debug, Clone)]
pub struct RequestKey<'a> {
    pub tenant_id: &'a str,
    pub environment: Environment,
    /// `api`, or `webhook:<provider>`.
    pub scope: &'a str,
    pub key: &'a str,
}

/// `sql` with the key bound as $1–$4 (tenant, environment, scope, key); further parameters follow.
fn keyed<'q>(
    sql: &'q str,
    key: &RequestKey<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).bind(key.tenant_id).bind(key.environment.as_str()).bind(key.scope).bind(key.key)
}

/// The outcome of claiming a request key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This request owns the key as `owner`: produce under `event_id` (on a takeover, the one stored
    /// in the claim, which may differ from the one the request asked for), then [`complete`] or, when
    /// the outcome is unknown, [`abandon`], both with `owner`. `first_claimed_at` is when the key was
    /// first claimed (the row's `created_at`), the same for the first owner and every takeover: the
    /// event time of an event that has none of its own, so every copy of the event id carries one time.
    Owned { event_id: Uuid, owner: Uuid, first_claimed_at: DateTime<Utc> },
    /// Answered before: return this again.
    Done { status: u16, response: serde_json::Value, event_id: Uuid },
    /// The key was first used for a different request.
    Mismatch,
    /// Another claimant still holds the key after the wait; its lease ends within `lease_left`.
    InFlight { lease_left: Duration },
}

/// Poll interval while waiting for another request's answer.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Claim `key` as `owner` (a fresh random token per request) for a request whose content hashes to
/// `request_sha256` and whose event will be `event_id` if the key is new. `check_hash`: refuse a
/// different request under the same key (API idempotency); webhooks do not (the provider's event id
/// is the identity).
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    pool: &PgPool,
    key: &RequestKey<'_>,
    request_sha256: &[u8],
    event_id: Uuid,
    check_hash: bool,
    lease: Duration,
    wait: Duration,
    owner: Uuid,
) -> Result<Claim, sqlx::Error> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let deadline = Instant::now() + wait;
    loop {
        let inserted = keyed("INSERT INTO ingest.requests (tenant_id, environment, scope, request_key, request_sha256, event_id, lease_until, owner)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 millisecond', $8)
             ON CONFLICT DO NOTHING
             RETURNING created_at", key)
        .bind(request_sha256)
        .bind(event_id)
        .bind(lease_ms)
        .bind(owner)
        .fetch_optional(pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(Claim::Owned { event_id, owner, first_claimed_at: row.try_get("created_at")? });
        }
        let row = keyed("SELECT request_sha256, event_id, status_code, response, lease_until < now() AS expired,
                    CASE WHEN lease_until > now() THEN (EXTRACT(EPOCH FROM lease_until - now()) * 1000)::int8
                         ELSE 0 END AS lease_left_ms
             FROM ingest.requests WHERE tenant_id = $1 AND environment = $2 AND scope = $3 AND request_key = $4", key)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { continue }; // swept in between: claim again
        let stored_hash: Vec<u8> = row.try_get("request_sha256")?;
        if check_hash && !bool::from(stored_hash.ct_eq(request_sha256)) {
            return Ok(Claim::Mismatch);
        }
        let status: Option<i16> = row.try_get("status_code")?;
        if let Some(status) = status {
            let response: Option<serde_json::Value> = row.try_get("response")?;
            return Ok(Claim::Done {
                status: u16::try_from(status).unwrap_or(500),
                response: response.unwrap_or(serde_json::Value::Null),
                event_id: row.try_get("event_id")?,
            });
        }
        let expired: Option<bool> = row.try_get("expired")?;
        if expired == Some(true) {
            // The claimant died, gave up or could not tell whether its event landed: take the key
            // over, under the event id and with the first claim's time stored in the claim, so if
            // the event did land, consumers see the same event (same id, same event time) twice and
            // keep one.
            let took = keyed(
                "UPDATE ingest.requests SET lease_until = now() + $5 * interval '1 millisecond', owner = $6
                 WHERE tenant_id = $1 AND environment = $2 AND scope = $3 AND request_key = $4
                   AND status_code IS NULL AND lease_until < now()
                 RETURNING event_id, created_at",
                key,
            )
            .bind(lease_ms)
            .bind(owner)
            .fetch_optional(pool)
            .await?;
            if let Some(took) = took {
                return Ok(Claim::Owned {
                    event_id: took.try_get("event_id")?,
                    owner,
                    first_claimed_at: took.try_get("created_at")?,
                });
            }
            continue;
        }
        if Instant::now() >= deadline {
            let left_ms: Option<i64> = row.try_get("lease_left_ms")?;
            let left_ms = u64::try_from(left_ms.unwrap_or(0)).unwrap_or(0);
            return Ok(Claim::InFlight { lease_left: Duration::from_millis(left_ms).min(lease) });
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// End `owner`'s lease on an unanswered claim whose outcome is unknown (the produce failed or timed
/// out, or the request was cut off): the row keeps its request hash and event id, so a retry of the
/// same request takes the key over at once and produces that event id again, and a different request
/// under the key stays refused. Never deletes: a 503 does not mean "not accepted" (a message in
/// flight when the producer gave up may still land). Returns whether `owner` still held the claim
/// (false: another request took it over; nothing was touched).
pub async fn abandon(pool: &PgPool, key: &RequestKey<'_>, owner: Uuid) -> Result<bool, sqlx::Error> {
    let n = keyed(
        "UPDATE ingest.requests SET lease_until = '-infinity'
         WHERE tenant_id = $1 AND environment = $2 AND scope = $3 AND request_key = $4
           AND owner = $5 AND status_code IS NULL",
        key,
    )
    .bind(owner)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Record `owner`'s answer to its claim, at once (the batched path is [`Claims::complete`]). Returns
/// whether `owner` still held the claim (false: another request took it over; nothing was written).
pub async fn complete(
    pool: &PgPool,
    key: &RequestKey<'_>,
    owner: Uuid,
    status: u16,
    response: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let answers = [Answer { key: OwnedKey::of(key), owner, status, response: response.clone() }];
    Ok(record_answers(pool, &answers).await?.is_empty())
}

/// Delete rows past their retention (answered, or abandoned by a claimant whose lease ran out), at most
/// `rows_max` per scope kind. Returns rows deleted.
pub async fn sweep(
    pool: &PgPool,
    webhook_retention: Duration,
    api_retention: Duration,
    rows_max: i64,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for (like, retention) in [("webhook:%", webhook_retention), ("api", api_retention)] {
        let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        deleted += sqlx::query(
            "DELETE FROM ingest.requests WHERE ctid IN (
                SELECT ctid FROM ingest.requests
                WHERE scope LIKE $1 AND (status_code IS NOT NULL OR lease_until < now()) AND created_at < now() - $2 * interval '1 second'
                LIMIT $3)",
        )
        .bind(like)
        .bind(secs)
        .bind(rows_max)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(deleted)
}

/// Run [`sweep`] every `every` until `shutdown`; a failed pass is logged and the next one retries.
pub async fn sweep_loop(
    pool: PgPool,
    every: Duration,
    webhook_retention: Duration,
    api_retention: Duration,
    rows_max: i64,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep(&pool, webhook_retention, api_retention, rows_max).await {
            Ok(n) => metrics::counter!("riverbank_ingest_swept_rows_total").increment(n),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; next pass retries"),
        }
    }
}

/// A request key with owned parts (it crosses into the batching task).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedKey {
    pub tenant_id: String,
    pub environment: Environment,
    pub scope: String,
    pub key: String,
}

impl OwnedKey {
    pub fn of(k: &RequestKey<'_>) -> OwnedKey {
        OwnedKey {
            tenant_id: k.tenant_id.to_owned(),
            environment: k.environment,
            scope: k.scope.to_owned(),
            key: k.key.to_owned(),
        }
    }

    pub fn borrow(&self) -> RequestKey<'_> {
        RequestKey {
            tenant_id: &self.tenant_id,
            environment: self.environment,
            scope: &self.scope,
            key: &self.key,
        }
    }
}

/// The batched insert's answer: the new row's `created_at` when this item inserted it, `None` when its
/// key exists already.
type ClaimReply = tokio::sync::oneshot::Sender<Result<Option<DateTime<Utc>>, String>>;

/// One claim waiting for the batched insert.
struct ClaimItem {
    key: OwnedKey,
    request_sha256: Vec<u8>,
    event_id: Uuid,
    owner: Uuid,
    reply: ClaimReply,
}

/// One answer waiting for the batched update.
#[derive(Debug, Clone)]
struct Answer {
    key: OwnedKey,
    owner: Uuid,
    status: u16,
    response: serde_json::Value,
}

/// Claims and answers batched into one statement (one commit) each, so the edge's Postgres cost does
/// not grow with its request rate. A request first tries the batched insert; only a key that exists
/// already (a duplicate, a retry) takes the one-by-one path in [`claim`].
#[derive(Clone)]
pub struct Claims {
    pool: PgPool,
    claims: tokio::sync::mpsc::Sender<ClaimItem>,
    answers: tokio::sync::mpsc::Sender<Answer>,
    lease: Duration,
    wait: Duration,
}

impl Claims {
    /// Start the batching tasks: `batches_in_flight` claim statements at a time (Postgres group-commits
    /// them). `batch_max` rows per statement, `queue_max` waiting requests.
    pub fn start(
        pool: PgPool,
        lease: Duration,
        wait: Duration,
        batch_max: usize,
        queue_max: usize,
        batches_in_flight: usize,
    ) -> Claims {
        let (claims, claim_rx) = tokio::sync::mpsc::channel(queue_max);
        let (answers, answer_rx) = tokio::sync::mpsc::channel(queue_max);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let claim_rx = std::sync::Arc::new(tokio::sync::Mutex::new(claim_rx));
        for _ in 0..batches_in_flight.max(1) {
            tokio::spawn(claim_loop(pool.clone(), claim_rx.clone(), batch_max, lease_ms));
        }
        tokio::spawn(answer_loop(pool.clone(), answer_rx, batch_max));
        Claims { pool, claims, answers, lease, wait }
    }

    /// As [`claim`] (with a fresh owner token): the batched insert first, the full protocol for a key
    /// that exists.
    pub async fn claim(
        &self,
        key: &RequestKey<'_>,
        request_sha256: &[u8],
        event_id: Uuid,
        check_hash: bool,
    ) -> Result<Claim, sqlx::Error> {
        let owner = Uuid::new_v4();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let item = ClaimItem {
            key: OwnedKey::of(key),
            request_sha256: request_sha256.to_vec(),
            event_id,
            owner,
            reply,
        };
        let inserted = match self.claims.send(item).await {
            Ok(()) => answer.await.map_err(|_| sqlx::Error::PoolClosed)?.map_err(sqlx::Error::Protocol)?,
            Err(_) => return Err(sqlx::Error::PoolClosed),
        };
        if let Some(first_claimed_at) = inserted {
            return Ok(Claim::Owned { event_id, owner, first_claimed_at });
        }
        claim(&self.pool, key, request_sha256, event_id, check_hash, self.lease, self.wait, owner).await
    }

    /// Record an owned claim's answer. Queued without waiting: the caller answers its client at once
    /// (the event is accepted whether or not the answer is recorded); a duplicate arriving meanwhile
    /// waits for the row, as for a request still in flight. With the queue full or closed the answer
    /// is dropped (counted): the lease expires and a retry takes the key over under the same event id.
    pub fn complete(&self, key: &RequestKey<'_>, owner: Uuid, status: u16, response: serde_json::Value) {
        let answer = Answer { key: OwnedKey::of(key), owner, status, response };
        if let Err(e) = self.answers.try_send(answer) {
            metrics::counter!("riverbank_ingest_answers_unrecorded_total").increment(1);
            let why = match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => "answer queue full",
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "answer queue closed",
            };
            tracing::warn!(tenant_id = %key.tenant_id, scope = key.scope, "{why}; the claim's lease will expire");
        }
    }

    /// See [`abandon`].
    pub async fn abandon(&self, key: &RequestKey<'_>, owner: Uuid) -> Result<bool, sqlx::Error> {
        abandon(&self.pool, key, owner).await
    }
}

/// `first` and whatever else is already waiting, up to `max` items: batches form by themselves under
/// load and cost no waiting when idle.
fn with_waiting<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, first: T, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch
}

type ClaimQueue = std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ClaimItem>>>;

async fn claim_loop(pool: PgPool, rx: ClaimQueue, batch_max: usize, lease_ms: i64) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            with_waiting(&mut rx, first, batch_max)
        };
        // One row per key per statement; a second request for the same key takes the slow path.
        let mut seen = std::collections::HashSet::new();
        let (firsts, repeats): (Vec<_>, Vec<_>) = batch.into_iter().partition(|i| seen.insert(i.key.clone()));
        for i in repeats {
            let _ = i.reply.send(Ok(None));
        }
        let result = insert_claims(&pool, &firsts, lease_ms).await;
        metrics::histogram!("riverbank_ingest_claim_batch_rows").record(firsts.len() as f64);
        for i in firsts {
            let _ = i.reply.send(match &result {
                Ok(inserted) => Ok(inserted.get(&i.key).copied()),
                Err(e) => Err(e.to_string()),
            });
        }
    }
}

async fn insert_claims(
    pool: &PgPool,
    items: &[ClaimItem],
    lease_ms: i64,
) -> Result<std::collections::HashMap<OwnedKey, DateTime<Utc>>, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO ingest.requests (tenant_id, environment, scope, request_key, request_sha256, event_id, lease_until, owner)
         SELECT t, e, s, k, h, id, now() + $7 * interval '1 millisecond', o
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::uuid[], $8::uuid[]) AS u(t, e, s, k, h, id, o)
         ON CONFLICT DO NOTHING
         RETURNING tenant_id, environment, scope, request_key, created_at",
    )
    .bind(items.iter().map(|i| i.key.tenant_id.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.key.environment.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.key.scope.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.key.key.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.request_sha256.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.event_id).collect::<Vec<_>>())
    .bind(lease_ms)
    .bind(items.iter().map(|i| i.owner).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| Ok((key_of(r)?, r.try_get("created_at")?))).collect()
}

fn key_of(r: &sqlx::postgres::PgRow) -> Result<OwnedKey, sqlx::Error> {
    let env: String = r.try_get("environment")?;
    Ok(OwnedKey {
        tenant_id: r.try_get("tenant_id")?,
        environment: env.parse().map_err(|_| sqlx::Error::Protocol("environment".into()))?,
        scope: r.try_get("scope")?,
        key: r.try_get("request_key")?,
    })
}

/// Record answers in one statement, each only if its owner still holds the claim. Returns the answers
/// that were not recorded (another request took the key over), each logged and counted.
async fn record_answers(pool: &PgPool, batch: &[Answer]) -> Result<Vec<Answer>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE ingest.requests r SET status_code = u.st, response = u.resp::jsonb, lease_until = NULL
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::uuid[]) AS u(t, e, s, k, st, resp, o)
         WHERE r.tenant_id = u.t AND r.environment = u.e AND r.scope = u.s AND r.request_key = u.k
           AND r.owner = u.o AND r.status_code IS NULL
         RETURNING r.tenant_id, r.environment, r.scope, r.request_key, r.owner",
    )
    .bind(batch.iter().map(|i| i.key.tenant_id.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.key.environment.as_str()).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.key.scope.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.key.key.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i16::try_from(i.status).unwrap_or(500)).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.response.to_string()).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.owner).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let recorded = rows
        .iter()
        .map(|r| Ok((key_of(r)?, r.try_get::<Uuid, _>("owner")?)))
        .collect::<Result<std::collections::HashSet<_>, sqlx::Error>>()?;
    let missed: Vec<Answer> =
        batch.iter().filter(|a| !recorded.contains(&(a.key.clone(), a.owner))).cloned().collect();
    for a in &missed {
        // A claimant that lost its claim (it ran past its lease and another request took the key
        // over, or it was answered already): the current owner's answer stands. Not an error for the
        // client (the event id is the same), but a sign that leases are too short for the load.
        metrics::counter!("riverbank_ingest_answers_unrecorded_total").increment(1);
        tracing::warn!(
            tenant_id = %a.key.tenant_id,
            scope = %a.key.scope,
            "answer not recorded: this claimant no longer owns the claim"
        );
    }
    Ok(missed)
}

async fn answer_loop(pool: PgPool, mut rx: tokio::sync::mpsc::Receiver<Answer>, batch_max: usize) {
    while let Some(first) = rx.recv().await {
        let batch = with_waiting(&mut rx, first, batch_max);
        if let Err(e) = record_answers(&pool, &batch).await {
            // The answers are lost, not the events: their leases expire and retries take the keys
            // over with the same event ids.
            metrics::counter!("riverbank_ingest_store_errors_total").increment(1);
            tracing::warn!(error = %e, rows = batch.len(), "could not record answers");
        }
    }
}
