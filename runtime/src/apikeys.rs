//! Tenant API keys, shared by the two HTTP edges: ingest (commands) and the read API. A token is
//! `rbk_<environment>_<key id>_<secret>`; only the SHA-256 of the secret is stored (the secret has 256
//! random bits, so a fast hash is enough), in `ingest.api_keys`. Lookups are cached for a bounded time,
//! which is how long a revocation takes to bite.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use riverbank_schemas::roles::Role;
use riverbank_schemas::Environment;
use sha2::{Digest as _, Sha256};
use sqlx::{PgPool, Row as _};
use subtle::ConstantTimeEq as _;

use crate::http::HttpError;

/// Create the keys table if missing (safe from several processes at once).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    run_ddl(pool, DDL).await
}

/// Run idempotent DDL statements in one transaction under one advisory lock, so processes starting
/// together create the `ingest` schema one at a time.
pub async fn run_ddl(pool: &PgPool, statements: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // "already exists, skipping" notices are expected on every start but the first.
    sqlx::query("SET LOCAL client_min_messages = warning").execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK_ID).execute(&mut *tx).await?;
    for stmt in statements {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// An arbitrary, fixed advisory lock id for the edges' DDL.
const DDL_LOCK_ID: i64 = 0x7269_7665_7262_6e6b;

const DDL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS ingest",
    "CREATE TABLE IF NOT EXISTS ingest.api_keys (
        key_id text PRIMARY KEY,
        tenant_id text NOT NULL,
        environment text NOT NULL,
        role text NOT NULL,
        secret_sha256 bytea NOT NULL,
        label text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    )",
];

/// An API key as stored (without its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub key_id: String,
    pub tenant_id: String,
    pub environment: Environment,
    pub role: Role,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    secret_sha256: Vec<u8>,
}

/// Token prefix: `rbk_<environment>_<key id>_<secret>`.
pub const TOKEN_PREFIX: &str = "rbk_";

/// The parts of a presented token, if it is shaped like one.
pub fn parse_token(token: &str) -> Option<(Environment, &str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let mut parts = rest.splitn(3, '_');
    let env = parts.next()?.parse::<Environment>().ok()?;
    let key_id = parts.next()?;
    let secret = parts.next()?;
    let id_ok =
        key_id.len() == 17 && key_id.starts_with('k') && key_id[1..].bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && (32..=128).contains(&secret.len())).then_some((env, key_id, secret))
}

impl ApiKey {
    /// Whether `secret` is this key's, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let digest = Sha256::digest(secret.as_bytes());
        bool::from(digest.as_slice().ct_eq(&self.secret_sha256))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("stored key {0} is corrupt: {1}")]
    Corrupt(String, &'static str),
}

/// Create a key; returns it and the token (shown once: only its hash is stored).
pub async fn create_key(
    pool: &PgPool,
    tenant_id: &str,
    environment: Environment,
    role: Role,
    label: &str,
) -> Result<(ApiKey, String), KeyError> {
    use base64::Engine as _;
    let mut id_bytes = [0u8; 8];
    let mut secret_bytes = [0u8; 32];
    getrandom::getrandom(&mut id_bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    getrandom::getrandom(&mut secret_bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    let key_id = format!("k{}", hex::encode(id_bytes));
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let token = format!("{TOKEN_PREFIX}{}_{key_id}_{secret}", environment.as_str());
    let digest = Sha256::digest(secret.as_bytes()).to_vec();
    let row = sqlx::query(
        "INSERT INTO ingest.api_keys (key_id, tenant_id, environment, role, secret_sha256, label)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
    )
    .bind(&key_id)
    .bind(tenant_id)
    .bind(environment.as_str())
    .bind(role.as_str())
    .bind(&digest)
    .bind(label)
    .fetch_one(pool)
    .await?;
    let key = ApiKey {
        key_id,
        tenant_id: tenant_id.to_owned(),
        environment,
        role,
        label: label.to_owned(),
        created_at: row.try_get("created_at")?,
        revoked_at: None,
        secret_sha256: digest,
    };
    Ok((key, token))
}

/// Revoke a key; returns whether it existed and was live.
pub async fn revoke_key(pool: &PgPool, key_id: &str) -> Result<bool, KeyError> {
    let n =
        sqlx::query("UPDATE ingest.api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(n == 1)
}

fn key_from_row(row: &sqlx::postgres::PgRow) -> Result<ApiKey, KeyError> {
    let key_id: String = row.try_get("key_id")?;
    let env: String = row.try_get("environment")?;
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        environment: env.parse().map_err(|_| KeyError::Corrupt(key_id.clone(), "environment"))?,
        role: Role::parse(&role).ok_or_else(|| KeyError::Corrupt(key_id.clone(), "role"))?,
        tenant_id: row.try_get("tenant_id")?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        secret_sha256: row.try_get("secret_sha256")?,
        key_id,
    })
}

const KEY_COLUMNS: &str =
    "key_id, tenant_id, environment, role, secret_sha256, label, created_at, revoked_at";

pub async fn find_key(pool: &PgPool, key_id: &str) -> Result<Option<ApiKey>, KeyError> {
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM ingest.api_keys WHERE key_id = $1"))
        .bind(key_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Keys of a tenant (all tenants when `None`), newest first, at most `limit`.
pub async fn list_keys(pool: &PgPool, tenant_id: Option<&str>, limit: i64) -> Result<Vec<ApiKey>, KeyError> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM ingest.api_keys WHERE ($1::text IS NULL OR tenant_id = $1)
         ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(key_from_row).collect()
}

/// Keys looked up in Postgres, remembered for `ttl`, at most `entries_max`.
#[derive(Debug)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (ApiKey, Instant)>>,
    ttl: Duration,
    entries_max: usize,
    retry_after_s: u64,
}

fn unauthorized(code: &'static str, message: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, code, message)
}

impl KeyCache {
    pub fn new(ttl: Duration, entries_max: usize, retry_after_s: u64) -> KeyCache {
        KeyCache { entries: Mutex::new(HashMap::new()), ttl, entries_max, retry_after_s }
    }

    /// Whether the request carries `Authorization` at all.
    pub fn presented(headers: &HeaderMap) -> bool {
        headers.contains_key("authorization")
    }

    /// The live key behind `Authorization: Bearer rbk_…`: 401 when missing, malformed, unknown, revoked or
    /// not matching; 503 when Postgres cannot be asked.
    pub async fn authenticate(&self, pool: &PgPool, headers: &HeaderMap) -> Result<ApiKey, HttpError> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("missing_api_key", "send Authorization: Bearer <api key>"))?;
        let token = auth.strip_prefix("Bearer ").unwrap_or("").trim();
        let invalid =
            || unauthorized("invalid_api_key", "the API key is not valid (malformed, unknown or revoked)");
        let (token_env, key_id, secret) = parse_token(token).ok_or_else(invalid)?;
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.get(key_id).filter(|(_, at)| at.elapsed() < self.ttl).map(|(k, _)| k.clone())
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let found = find_key(pool, key_id).await.map_err(|e| {
                    tracing::warn!(error = %e, "API key lookup failed");
                    HttpError::unavailable(
                        "store_unavailable",
                        "request not accepted; retry later",
                        self.retry_after_s,
                    )
                })?;
                let k = found.ok_or_else(invalid)?;
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                if entries.len() >= self.entries_max {
                    entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
                    if entries.len() >= self.entries_max {
                        entries.clear();
                    }
                }
                entries.insert(key_id.to_owned(), (k.clone(), Instant::now()));
                k
            }
        };
        if key.revoked_at.is_some() || key.environment != token_env || !key.secret_matches(secret) {
            return Err(invalid());
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_shape() {
        let secret = "A".repeat(43);
        let t = format!("rbk_sandbox_k0123456789abcdef_{secret}");
        assert_eq!(parse_token(&t), Some((Environment::Sandbox, "k0123456789abcdef", secret.as_str())));
        let with_underscores = format!("rbk_live_k0123456789abcdef_ab_cd{}", "x".repeat(40));
        assert!(parse_token(&with_underscores).is_some(), "base64url secrets may hold '_'");
        for bad in
            ["", "rbk_", "rbk_prod_k0123456789abcdef_x", "sk_live_k0123456789abcdef_x", "rbk_live_kzz_x"]
        {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        assert_eq!(parse_token(&format!("rbk_live_k0123456789abcdef_{}", "s".repeat(10))), None);
    }
}
