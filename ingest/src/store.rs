//! The edge's own state in Postgres, in its own schema (`ingest`), apart from the sinks' tables:
//! - `ingest.requests`: one row per webhook delivery (deduplication) and per `Idempotency-Key`. The
//!   primary key is the claim: of two concurrent requests (on any instance) exactly one inserts the row
//!   and produces; the other waits for its answer and returns it.
//!
//! Tenant API keys (`ingest.api_keys`) live in `riverbank_runtime::apikeys`: the read API checks them too.
use std::time::{Duration, Instant};

use sqlx::{PgPool, Row as _};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

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
    /// This request owns the key: produce, then [`Claims::complete`] (or [`release`] on failure).
    Owned,
    /// Answered before: return this again.
    Done { status: u16, response: serde_json::Value, event_id: Uuid },
    /// The key was first used for a different request.
    Mismatch,
    /// Another request with this key is still in flight after the wait.
    InFlight,
}

/// Poll interval while waiting for another request's answer.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Claim `key` for a request whose content hashes to `request_sha256` and whose event will be `event_id`.
/// `check_hash`: refuse a different request under the same key (API idempotency); webhooks do not (the
/// provider's event id is the identity).
pub async fn claim(
    pool: &PgPool,
    key: &RequestKey<'_>,
    request_sha256: &[u8],
    event_id: Uuid,
    check_hash: bool,
    lease: Duration,
    wait: Duration,
) -> Result<Claim, sqlx::Error> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let deadline = Instant::now() + wait;
    loop {
        let inserted = keyed("INSERT INTO ingest.requests (tenant_id, environment, scope, request_key, request_sha256, event_id, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 millisecond')
             ON CONFLICT DO NOTHING", key)
        .bind(request_sha256)
        .bind(event_id)
        .bind(lease_ms)
        .execute(pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Owned);
        }
        let row = keyed("SELECT request_sha256, event_id, status_code, response, lease_until < now() AS expired
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
            // The claimant died (or gave up) without answering: take the key over. Its event id is
            // kept, so if it did produce, consumers see the same event twice and keep one.
            let took = keyed(
                "UPDATE ingest.requests SET lease_until = now() + $5 * interval '1 millisecond'
                 WHERE tenant_id = $1 AND environment = $2 AND scope = $3 AND request_key = $4
                   AND status_code IS NULL AND lease_until < now()",
                key,
            )
            .bind(lease_ms)
            .execute(pool)
            .await?
            .rows_affected();
            if took == 1 {
                return Ok(Claim::Owned);
            }
            continue;
        }
        if Instant::now() >= deadline {
            return Ok(Claim::InFlight);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Give an owned, unanswered claim back (the event was not accepted): a retry may claim it again.
pub async fn release(pool: &PgPool, key: &RequestKey<'_>) -> Result<(), sqlx::Error> {
    keyed("DELETE FROM ingest.requests
         WHERE tenant_id = $1 AND environment = $2 AND scope = $3 AND request_key = $4 AND status_code IS NULL", key)
    .execute(pool)
    .await?;
    Ok(())
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

type ClaimReply = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Claims and answers batched into one statement (one commit) each, so the edge's Postgres cost does
/// not grow with its request rate. A request first tries the batched insert; only a key that exists
/// already (a duplicate, a retry) takes the one-by-one path in [`claim`].
#[derive(Clone)]
pub struct Claims {
    pool: PgPool,
    claims: tokio::sync::mpsc::Sender<(OwnedKey, Vec<u8>, Uuid, ClaimReply)>,
    answers: tokio::sync::mpsc::Sender<(OwnedKey, u16, serde_json::Value)>,
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

    /// As [`claim`]: the batched insert first, the full protocol for a key that exists.
    pub async fn claim(
        &self,
        key: &RequestKey<'_>,
        request_sha256: &[u8],
        event_id: Uuid,
        check_hash: bool,
    ) -> Result<Claim, sqlx::Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self.claims.send((OwnedKey::of(key), request_sha256.to_vec(), event_id, reply)).await;
        let owned = match sent {
            Ok(()) => answer.await.map_err(|_| sqlx::Error::PoolClosed)?.map_err(sqlx::Error::Protocol)?,
            Err(_) => return Err(sqlx::Error::PoolClosed),
        };
        if owned {
            return Ok(Claim::Owned);
        }
        claim(&self.pool, key, request_sha256, event_id, check_hash, self.lease, self.wait).await
    }

    /// Record an owned claim's answer. Queued: the caller answers its client at once; a duplicate
    /// arriving meanwhile waits for the row (the same as for a request still in flight).
    pub async fn complete(&self, key: &RequestKey<'_>, status: u16, response: serde_json::Value) {
        if self.answers.send((OwnedKey::of(key), status, response)).await.is_err() {
            // Shutting down: the lease expires and a retry takes the key over (same event id).
            tracing::warn!("answer queue closed; the claim's lease will expire");
        }
    }

    pub async fn release(&self, key: &RequestKey<'_>) -> Result<(), sqlx::Error> {
        release(&self.pool, key).await
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

type ClaimQueue =
    std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(OwnedKey, Vec<u8>, Uuid, ClaimReply)>>>;

async fn claim_loop(pool: PgPool, rx: ClaimQueue, batch_max: usize, lease_ms: i64) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            with_waiting(&mut rx, first, batch_max)
        };
        // One row per key per statement; a second request for the same key takes the slow path.
        let mut seen = std::collections::HashSet::new();
        let (firsts, repeats): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|(k, ..)| seen.insert(k.clone()));
        for (.., reply) in repeats {
            let _ = reply.send(Ok(false));
        }
        let result = insert_claims(&pool, &firsts, lease_ms).await;
        metrics::histogram!("riverbank_ingest_claim_batch_rows").record(firsts.len() as f64);
        for (k, _, _, reply) in firsts {
            let _ = reply.send(match &result {
                Ok(inserted) => Ok(inserted.contains(&k)),
                Err(e) => Err(e.to_string()),
            });
        }
    }
}

async fn insert_claims(
    pool: &PgPool,
    items: &[(OwnedKey, Vec<u8>, Uuid, ClaimReply)],
    lease_ms: i64,
) -> Result<std::collections::HashSet<OwnedKey>, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO ingest.requests (tenant_id, environment, scope, request_key, request_sha256, event_id, lease_until)
         SELECT t, e, s, k, h, id, now() + $7 * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::uuid[]) AS u(t, e, s, k, h, id)
         ON CONFLICT DO NOTHING
         RETURNING tenant_id, environment, scope, request_key",
    )
    .bind(items.iter().map(|i| i.0.tenant_id.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.0.environment.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.0.scope.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.0.key.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.1.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.2).collect::<Vec<_>>())
    .bind(lease_ms)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let env: String = r.try_get("environment")?;
            Ok(OwnedKey {
                tenant_id: r.try_get("tenant_id")?,
                environment: env.parse().map_err(|_| sqlx::Error::Protocol("environment".into()))?,
                scope: r.try_get("scope")?,
                key: r.try_get("request_key")?,
            })
        })
        .collect()
}

async fn answer_loop(
    pool: PgPool,
    mut rx: tokio::sync::mpsc::Receiver<(OwnedKey, u16, serde_json::Value)>,
    batch_max: usize,
) {
    while let Some(first) = rx.recv().await {
        let batch = with_waiting(&mut rx, first, batch_max);
        let result = sqlx::query(
            "UPDATE ingest.requests r SET status_code = u.st, response = u.resp::jsonb, lease_until = NULL
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[]) AS u(t, e, s, k, st, resp)
             WHERE r.tenant_id = u.t AND r.environment = u.e AND r.scope = u.s AND r.request_key = u.k",
        )
        .bind(batch.iter().map(|i| i.0.tenant_id.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|i| i.0.environment.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|i| i.0.scope.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|i| i.0.key.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|i| i16::try_from(i.1).unwrap_or(500)).collect::<Vec<_>>())
        .bind(batch.iter().map(|i| i.2.to_string()).collect::<Vec<_>>())
        .execute(&pool)
        .await;
        if let Err(e) = result {
            // The answers are lost, not the events: their leases expire and retries take the keys
            // over with the same event ids.
            metrics::counter!("riverbank_ingest_store_errors_total").increment(1);
            tracing::warn!(error = %e, rows = batch.len(), "could not record answers");
        }
    }
}
