//! The data-key store: every data key of field encryption, wrapped, in Postgres (`keys.data_keys`), one
//! row per (tenant, environment, subject, data class, version). See ARCHITECTURE.md "Personal data and
//! keys".
//!
//! - [`KeyStore::seal_key`] gets or creates the live key of (tenant, environment, subject, class); safe
//!   when several processes ask at once (`INSERT … ON CONFLICT DO NOTHING`, then read what won).
//! - [`KeyStore::open_key`] finds the key a sealed field names; an erased one answers
//!   [`KeyStoreError::Erased`].
//! - [`KeyStore::erase_subject`] destroys every key of a subject: the wrapped key is set to NULL and the
//!   row stays as a tombstone (so readers can say "erased", and a later seal creates the next version,
//!   never the old one again).
//! - [`KeyStore::rewrap`] moves every data key to its class's active key-encryption key, batch by batch.
//!
//! **Cache bound.** Unwrapped keys are cached per process, at most `keys.cache_entries_max` of them, each
//! for at most `keys.cache_ttl_ms` from when it was read. `erase_subject` drops the subject's entries in
//! its own process at once; every other process stops decrypting the subject's data at most
//! `keys.cache_ttl_ms` after the erasure committed. Within that window another process may also still
//! seal under the erased key: such a value is as unreadable as the rest of the subject's erased data.
//!
//! **Backups.** The wrapped key is gone from the live table at once; a backup taken before the erasure
//! still holds it, wrapped under a key-encryption key. The subject's data is unreadable in every backup
//! once backups of the `keys` schema older than the erasure have expired, or once that key-encryption key
//! is retired (rotate, `riverbank keys rewrap`, remove the old key from the ring), whichever is first.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riverbank_crypto::field::{key_id, parse_key_id, SUBJECT_BYTES_MAX};
use riverbank_crypto::keys::{
    CryptoError, DataClass, Dek, DekContext, KeyRing, KeyWrapper, WrappedDek, NONCE_BYTES,
};
use riverbank_schemas::Environment;
use sqlx::{PgPool, Row as _};

use crate::config::{is_tenant_id, KeysConfig};

pub use riverbank_crypto as crypto;

/// Key-encryption key ids of the embedded development keys start with this.
pub const DEV_KEK_ID_PREFIX: &str = "dev-only-";
/// The embedded development pseudonym key (runtime/config/default.toml).
const DEV_PSEUDONYM_KEY: &str = "09f972f685489d71b9649e8e36cf2f50cee4f97f889869f35fbfd5f9e84d8f8b";
/// Attempts of the get-or-create loop of `seal_key` (each loses only to a concurrent create or erasure).
const SEAL_ATTEMPTS_MAX: u32 = 4;

const DDL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS keys",
    "CREATE TABLE IF NOT EXISTS keys.data_keys (
        tenant_id text NOT NULL,
        environment text NOT NULL,
        subject text NOT NULL,
        data_class text NOT NULL,
        version integer NOT NULL CHECK (version >= 1),
        kek_id text NOT NULL,
        nonce bytea NOT NULL,
        wrapped bytea,
        created_at timestamptz NOT NULL DEFAULT now(),
        destroyed_at timestamptz,
        PRIMARY KEY (tenant_id, environment, subject, data_class, version),
        CONSTRAINT data_keys_wrapped_until_destroyed CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
    )",
    // At most one live key per (tenant, environment, subject, class).
    "CREATE UNIQUE INDEX IF NOT EXISTS data_keys_live ON keys.data_keys
        (tenant_id, environment, subject, data_class) WHERE destroyed_at IS NULL",
    "CREATE INDEX IF NOT EXISTS data_keys_by_kek ON keys.data_keys (data_class, kek_id) WHERE destroyed_at IS NULL",
];

/// Create the `keys` schema and table if missing (safe from several processes at once).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    crate::apikeys::run_ddl(pool, DDL).await
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The data key was destroyed (the subject was erased): the data it sealed is gone for good.
    #[error("the data key was erased")]
    Erased,
    /// No such data key in this tenant and environment.
    #[error("no such data key")]
    Unknown,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("stored data key is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("could not get or create a data key after {SEAL_ATTEMPTS_MAX} attempts (concurrent erasures?)")]
    Contended,
}

/// A data key's row: (tenant, environment, subject, version).
type RowKey = (String, String, String, i32);

/// The store's limits (from `[keys]`).
#[derive(Debug, Clone, Copy)]
pub struct KeyStoreLimits {
    pub cache_entries_max: usize,
    pub cache_ttl_ms: u64,
    pub rewrap_batch_rows: u32,
}

impl From<&KeysConfig> for KeyStoreLimits {
    fn from(c: &KeysConfig) -> Self {
        KeyStoreLimits {
            cache_entries_max: c.cache_entries_max,
            cache_ttl_ms: c.cache_ttl_ms,
            rewrap_batch_rows: c.rewrap_batch_rows,
        }
    }
}

/// One destroyed data key (what an erasure reports, e.g. to the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyedKey {
    pub class: DataClass,
    pub version: u32,
    pub kek_id: String,
}

/// What [`KeyStore::erase_subject`] did: the hook for the audit record of an erasure. Holds the subject
/// id (an opaque id, never a name) and no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub tenant: String,
    pub environment: Environment,
    pub subject: String,
    pub destroyed: Vec<DestroyedKey>,
}

/// Counts of one (class, from key, to key) move of [`KeyStore::rewrap`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewrapCount {
    /// Data keys re-wrapped (or, in a dry run, that would be).
    pub keys: u64,
    /// Data keys that could not be unwrapped (their key-encryption key is missing from the ring, or the
    /// row does not authenticate); they stay as they are.
    pub failed: u64,
}

/// What [`KeyStore::rewrap`] did or would do, by (class, from key-encryption key, to key-encryption key).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewrapReport {
    pub dry_run: bool,
    pub moves: BTreeMap<(String, String, String), RewrapCount>,
    /// Classes with live data keys but no active key-encryption key in the ring (nothing to move to).
    pub classes_without_active_kek: Vec<String>,
    /// Transactions committed.
    pub batches: u64,
}

impl RewrapReport {
    pub fn total(&self) -> u64 {
        self.moves.values().map(|c| c.keys).sum()
    }
    pub fn failed(&self) -> u64 {
        self.moves.values().map(|c| c.failed).sum()
    }
}

type CacheKey = (String, Environment, String, DataClass);

struct Cached {
    version: u32,
    dek: Dek,
    read_at: Instant,
}

/// The data-key store. Cheap to share behind an `Arc`.
pub struct KeyStore {
    pool: PgPool,
    wrapper: Arc<dyn KeyWrapper>,
    limits: KeyStoreLimits,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn check_scope(tenant: &str, subject: &str) -> Result<(), KeyStoreError> {
    if !is_tenant_id(tenant) {
        return Err(KeyStoreError::Invalid("tenant id"));
    }
    if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX || subject.chars().any(char::is_control) {
        return Err(KeyStoreError::Invalid("subject id (1 to 256 bytes, no control characters)"));
    }
    Ok(())
}

fn wrapped_of(kek_id: String, nonce: Vec<u8>, wrapped: Vec<u8>) -> Result<WrappedDek, KeyStoreError> {
    let nonce: [u8; NONCE_BYTES] =
        nonce.try_into().map_err(|_| KeyStoreError::Corrupt("nonce is not 12 bytes"))?;
    Ok(WrappedDek { kek_id, nonce, ciphertext: wrapped })
}

fn version_of(v: i32) -> Result<u32, KeyStoreError> {
    u32::try_from(v).map_err(|_| KeyStoreError::Corrupt("negative version"))
}

impl KeyStore {
    pub fn new(pool: PgPool, wrapper: Arc<dyn KeyWrapper>, limits: KeyStoreLimits) -> KeyStore {
        KeyStore { pool, wrapper, limits, cache: Mutex::new(HashMap::new()) }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.limits.cache_ttl_ms)
    }

    fn cached(&self, key: &CacheKey, version: Option<u32>) -> Option<(u32, Dek)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(key)?;
        (c.read_at.elapsed() < self.ttl() && version.is_none_or(|v| v == c.version))
            .then(|| (c.version, c.dek.clone()))
    }

    fn remember(&self, key: CacheKey, version: u32, dek: &Dek) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.limits.cache_entries_max && !cache.contains_key(&key) {
            let ttl = self.ttl();
            cache.retain(|_, c| c.read_at.elapsed() < ttl);
            if cache.len() >= self.limits.cache_entries_max {
                let oldest = cache.iter().min_by_key(|(_, c)| c.read_at).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, Cached { version, dek: dek.clone(), read_at: Instant::now() });
    }

    /// The live data key of (tenant, environment, subject, class) and its key id, created if there is
    /// none (the first, or the next version after an erasure).
    pub async fn seal_key(
        &self,
        tenant: &str,
        environment: Environment,
        subject: &str,
        class: DataClass,
    ) -> Result<(String, Dek), KeyStoreError> {
        check_scope(tenant, subject)?;
        let ck = (tenant.to_string(), environment, subject.to_string(), class);
        if let Some((version, dek)) = self.cached(&ck, None) {
            return Ok((key_id(subject, class, version), dek));
        }
        for _ in 0..SEAL_ATTEMPTS_MAX {
            let live = sqlx::query(
                "SELECT version, kek_id, nonce, wrapped FROM keys.data_keys
                 WHERE tenant_id = $1 AND environment = $2 AND subject = $3 AND data_class = $4
                   AND destroyed_at IS NULL",
            )
            .bind(tenant)
            .bind(environment.as_str())
            .bind(subject)
            .bind(class.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = live {
                let version = version_of(row.try_get("version")?)?;
                let wrapped: Option<Vec<u8>> = row.try_get("wrapped")?;
                let w = wrapped_of(
                    row.try_get("kek_id")?,
                    row.try_get("nonce")?,
                    wrapped.ok_or(KeyStoreError::Corrupt("live key without a wrapped key"))?,
                )?;
                let ctx = DekContext { tenant, environment: environment.as_str(), subject, class, version };
                let dek = self.wrapper.unwrap(&ctx, &w)?;
                self.remember(ck, version, &dek);
                return Ok((key_id(subject, class, version), dek));
            }
            // None live: create the next version (never one that existed, even destroyed).
            let next: i32 = sqlx::query_scalar(
                "SELECT COALESCE(max(version), 0) + 1 FROM keys.data_keys
                 WHERE tenant_id = $1 AND environment = $2 AND subject = $3 AND data_class = $4",
            )
            .bind(tenant)
            .bind(environment.as_str())
            .bind(subject)
            .bind(class.as_str())
            .fetch_one(&self.pool)
            .await?;
            let version = version_of(next)?;
            let dek = Dek::generate()?;
            let ctx = DekContext { tenant, environment: environment.as_str(), subject, class, version };
            let w = self.wrapper.wrap(&ctx, &dek)?;
            // Loses (inserts nothing) to a concurrent create of the same version or of another live key;
            // the next round reads the winner.
            sqlx::query(
                "INSERT INTO keys.data_keys (tenant_id, environment, subject, data_class, version, kek_id, nonce, wrapped)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(environment.as_str())
            .bind(subject)
            .bind(class.as_str())
            .bind(next)
            .bind(&w.kek_id)
            .bind(w.nonce.as_slice())
            .bind(&w.ciphertext)
            .execute(&self.pool)
            .await?;
        }
        Err(KeyStoreError::Contended)
    }

    /// The data key `key_id` (from a sealed field) names in this tenant and environment.
    pub async fn open_key(
        &self,
        tenant: &str,
        environment: Environment,
        key_id: &str,
    ) -> Result<Dek, KeyStoreError> {
        let (subject, class, version) = parse_key_id(key_id).ok_or(KeyStoreError::Invalid("key id"))?;
        check_scope(tenant, &subject)?;
        let stored_version = i32::try_from(version).map_err(|_| KeyStoreError::Unknown)?;
        let ck = (tenant.to_string(), environment, subject.clone(), class);
        if let Some((_, dek)) = self.cached(&ck, Some(version)) {
            return Ok(dek);
        }
        let row = sqlx::query(
            "SELECT kek_id, nonce, wrapped FROM keys.data_keys
             WHERE tenant_id = $1 AND environment = $2 AND subject = $3 AND data_class = $4 AND version = $5",
        )
        .bind(tenant)
        .bind(environment.as_str())
        .bind(&subject)
        .bind(class.as_str())
        .bind(stored_version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(KeyStoreError::Unknown)?;
        let Some(wrapped) = row.try_get::<Option<Vec<u8>>, _>("wrapped")? else {
            return Err(KeyStoreError::Erased);
        };
        let w = wrapped_of(row.try_get("kek_id")?, row.try_get("nonce")?, wrapped)?;
        let ctx = DekContext { tenant, environment: environment.as_str(), subject: &subject, class, version };
        let dek = self.wrapper.unwrap(&ctx, &w)?;
        self.remember(ck, version, &dek);
        Ok(dek)
    }

    /// Destroy every live data key of `subject` (all classes). Returns what was destroyed (empty if
    /// nothing was live). Other processes stop decrypting within `keys.cache_ttl_ms`.
    pub async fn erase_subject(
        &self,
        tenant: &str,
        environment: Environment,
        subject: &str,
    ) -> Result<Erasure, KeyStoreError> {
        check_scope(tenant, subject)?;
        let rows = sqlx::query(
            "UPDATE keys.data_keys SET wrapped = NULL, destroyed_at = now()
             WHERE tenant_id = $1 AND environment = $2 AND subject = $3 AND destroyed_at IS NULL
             RETURNING data_class, version, kek_id",
        )
        .bind(tenant)
        .bind(environment.as_str())
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|(t, e, s, _), _| !(t == tenant && *e == environment && s == subject));
        }
        let mut destroyed = Vec::with_capacity(rows.len());
        for row in rows {
            let class: String = row.try_get("data_class")?;
            destroyed.push(DestroyedKey {
                class: DataClass::parse(&class).map_err(|_| KeyStoreError::Corrupt("unknown data class"))?,
                version: version_of(row.try_get("version")?)?,
                kek_id: row.try_get("kek_id")?,
            });
        }
        destroyed.sort_by_key(|d| (d.class, d.version));
        Ok(Erasure { tenant: tenant.to_string(), environment, subject: subject.to_string(), destroyed })
    }

    /// Re-wrap every live data key not under its class's active key-encryption key, `rewrap_batch_rows`
    /// per transaction (rows locked `FOR UPDATE SKIP LOCKED`, so it can run beside live traffic and
    /// beside an erasure). A dry run counts and changes nothing.
    pub async fn rewrap(&self, dry_run: bool) -> Result<RewrapReport, KeyStoreError> {
        let mut report = RewrapReport { dry_run, ..RewrapReport::default() };
        let stale = sqlx::query(
            "SELECT data_class, kek_id, count(*) AS n FROM keys.data_keys
             WHERE destroyed_at IS NULL GROUP BY data_class, kek_id ORDER BY data_class, kek_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in stale {
            let class_name: String = row.try_get("data_class")?;
            let kek_id: String = row.try_get("kek_id")?;
            let n: i64 = row.try_get("n")?;
            let class =
                DataClass::parse(&class_name).map_err(|_| KeyStoreError::Corrupt("unknown data class"))?;
            let Some(active) = self.wrapper.active_kek_id(&class) else {
                if !report.classes_without_active_kek.contains(&class_name) {
                    report.classes_without_active_kek.push(class_name);
                }
                continue;
            };
            if kek_id == active {
                continue;
            }
            let count = report.moves.entry((class_name, kek_id.clone(), active.clone())).or_default();
            if dry_run {
                count.keys = u64::try_from(n).unwrap_or(0);
                continue;
            }
            self.rewrap_from(class, &kek_id, &mut report).await?;
        }
        Ok(report)
    }

    /// Re-wrap every live key of `class` under `from`, batch by batch, keyset-paginated so a row that
    /// fails to unwrap is counted once and passed over.
    async fn rewrap_from(
        &self,
        class: DataClass,
        from: &str,
        report: &mut RewrapReport,
    ) -> Result<(), KeyStoreError> {
        let mut after: RowKey = (String::new(), String::new(), String::new(), 0);
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "SELECT tenant_id, environment, subject, version, nonce, wrapped FROM keys.data_keys
                 WHERE data_class = $1 AND kek_id = $2 AND destroyed_at IS NULL
                   AND (tenant_id, environment, subject, version) > ($3, $4, $5, $6)
                 ORDER BY tenant_id, environment, subject, version
                 LIMIT $7 FOR UPDATE SKIP LOCKED",
            )
            .bind(class.as_str())
            .bind(from)
            .bind(&after.0)
            .bind(&after.1)
            .bind(&after.2)
            .bind(after.3)
            .bind(i64::from(self.limits.rewrap_batch_rows))
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(());
            }
            let (mut moved, mut failed, mut to_kek) = (0u64, 0u64, String::new());
            for row in &rows {
                let key: RowKey = (
                    row.try_get("tenant_id")?,
                    row.try_get("environment")?,
                    row.try_get("subject")?,
                    row.try_get("version")?,
                );
                match self.rewrap_row(&mut tx, class, from, row, &key).await? {
                    Some(kek) => {
                        to_kek = kek;
                        moved += 1;
                    }
                    None => failed += 1,
                }
                after = key;
            }
            tx.commit().await?;
            report.batches += 1;
            let active = self.wrapper.active_kek_id(&class).unwrap_or(to_kek);
            let count =
                report.moves.entry((class.as_str().to_string(), from.to_string(), active)).or_default();
            count.keys += moved;
            count.failed += failed;
        }
    }

    /// Re-wrap one locked row of `class` under the class's active key: the new key-encryption key's
    /// id, or `None` when the row's data key does not unwrap under `from` (left as it was).
    async fn rewrap_row(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        class: DataClass,
        from: &str,
        row: &sqlx::postgres::PgRow,
        (tenant, env_name, subject, v): &RowKey,
    ) -> Result<Option<String>, KeyStoreError> {
        let ctx = DekContext { tenant, environment: env_name, subject, class, version: version_of(*v)? };
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped")?;
        let old = wrapped_of(
            from.to_string(),
            row.try_get("nonce")?,
            wrapped.ok_or(KeyStoreError::Corrupt("live key without a wrapped key"))?,
        )?;
        let dek = match self.wrapper.unwrap(&ctx, &old) {
            Ok(dek) => dek,
            Err(e) => {
                tracing::warn!(data_class = class.as_str(), kek_id = from, error = %e, "data key not re-wrapped");
                return Ok(None);
            }
        };
        let new = self.wrapper.wrap(&ctx, &dek)?;
        sqlx::query(
            "UPDATE keys.data_keys SET kek_id = $1, nonce = $2, wrapped = $3
             WHERE tenant_id = $4 AND environment = $5 AND subject = $6 AND data_class = $7
               AND version = $8 AND destroyed_at IS NULL",
        )
        .bind(&new.kek_id)
        .bind(new.nonce.as_slice())
        .bind(&new.ciphertext)
        .bind(tenant)
        .bind(env_name)
        .bind(subject)
        .bind(class.as_str())
        .bind(v)
        .execute(&mut **tx)
        .await?;
        Ok(Some(new.kek_id))
    }
}

/// The key ring `[keys]` configures: the key file if one is set, else the configured entries.
pub fn key_ring(cfg: &KeysConfig) -> anyhow::Result<KeyRing> {
    use anyhow::Context as _;
    if cfg.key_file.is_empty() {
        Ok(KeyRing::from_entries(&cfg.kek_entries())?)
    } else {
        let text = std::fs::read_to_string(&cfg.key_file)
            .with_context(|| format!("reading keys.key_file {}", cfg.key_file))?;
        KeyRing::parse_file(&text).with_context(|| format!("keys.key_file {}", cfg.key_file))
    }
}

/// The pseudonym key (validated as 64 hex digits by the config).
pub fn pseudonym_key(cfg: &KeysConfig) -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(cfg.pseudonym_key.expose(), &mut key)
        .map_err(|_| anyhow::anyhow!("keys.pseudonym_key must be 64 hex digits"))?;
    Ok(key)
}

/// Whether `ring` or the pseudonym key is one of the embedded development keys.
pub fn development_keys_in_use(cfg: &KeysConfig, ring: &KeyRing) -> bool {
    ring.kek_ids().any(|id| id.starts_with(DEV_KEK_ID_PREFIX))
        || cfg.pseudonym_key.expose() == DEV_PSEUDONYM_KEY
}

/// The key store `[keys]` configures over `pool` (creating its table if missing); warns when the
/// development keys are in use.
pub async fn from_config(pool: PgPool, cfg: &KeysConfig) -> anyhow::Result<KeyStore> {
    let ring = key_ring(cfg)?;
    if development_keys_in_use(cfg, &ring) {
        tracing::warn!(
            "field encryption uses the DEVELOPMENT-ONLY keys of the embedded config: set keys.key_file \
             and keys.pseudonym_key (RIVERBANK__KEYS__KEY_FILE, RIVERBANK__KEYS__PSEUDONYM_KEY) in production"
        );
    }
    let missing = ring.missing_classes();
    if !missing.is_empty() {
        tracing::warn!(classes = ?missing, "no active key-encryption key for these data classes: sealing them fails");
    }
    migrate(&pool).await?;
    Ok(KeyStore::new(pool, Arc::new(ring), KeyStoreLimits::from(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds_a_full_ring_and_is_flagged_development() {
        let cfg = crate::Config::load(None).expect("defaults");
        let ring = key_ring(&cfg.keys).expect("ring");
        assert!(ring.missing_classes().is_empty());
        assert!(development_keys_in_use(&cfg.keys, &ring));
        assert_eq!(pseudonym_key(&cfg.keys).expect("key").len(), 32);
    }

    #[test]
    fn key_file_replaces_the_entries() {
        let dir = std::env::temp_dir().join(format!("rb-keystore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.json");
        let keks: Vec<serde_json::Value> = DataClass::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let byte = u8::try_from(i + 1).expect("small");
                serde_json::json!({"id": format!("prod-{}", c.as_str()), "class": c.as_str(),
                    "key": hex::encode([byte; 32]), "active": true})
            })
            .collect();
        std::fs::write(&path, serde_json::json!({ "keks": keks }).to_string()).expect("write");
        let mut cfg = crate::Config::load(None).expect("defaults").keys;
        cfg.key_file = path.display().to_string();
        cfg.pseudonym_key = crate::Secret::new(hex::encode([42u8; 32]));
        let ring = key_ring(&cfg).expect("ring");
        assert!(ring.kek_ids().all(|id| id.starts_with("prod-")));
        assert!(!development_keys_in_use(&cfg, &ring));
        std::fs::write(&path, "{\"keks\": [}").expect("write");
        assert!(key_ring(&cfg).is_err());
    }
}
