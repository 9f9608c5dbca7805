//! Field encryption's data keys on the real Postgres of the stack (a database of its own): seal → open;
//! get-or-create under concurrency; rotate a class's key-encryption key (old data still opens, new data
//! under the new key); `riverbank keys rewrap --dry-run` changes nothing, `riverbank keys rewrap` moves
//! every data key (in batches) so the old key can leave the ring; `riverbank gdpr erase` → Erased, and
//! the next seal of the subject is a new version; the cache's bound on how long an erasure takes to bite.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use riverbank_crypto::field::{self, FieldContext};
use riverbank_crypto::keys::{CryptoError, DataClass, KekEntry, KeyRing, KeyWrapper};
use riverbank_runtime::keystore::{self, KeyStore, KeyStoreError, KeyStoreLimits};
use riverbank_schemas::Environment;
use sqlx::PgPool;

use crate::harness::pg_url;

const TENANT: &str = "keys-t";
const ENV: Environment = Environment::Live;
const SUBJECTS: [&str; 5] = ["user-1", "user-2", "user-3", "user-4", "user/5"];
const NAME_OLD: &str = "name-2025";
const NAME_NEW: &str = "name-2026";
const DOB: &str = "dob-2025";

fn kek(id: &str, class: DataClass, byte: u8, active: bool) -> KekEntry {
    KekEntry { id: id.into(), class: class.as_str().into(), key: format!("{byte:02x}").repeat(32), active }
}

fn ring(entries: &[KekEntry]) -> Arc<dyn KeyWrapper> {
    Arc::new(KeyRing::from_entries(entries).expect("a valid ring"))
}

fn store(pool: &PgPool, wrapper: Arc<dyn KeyWrapper>, cache_ttl_ms: u64) -> KeyStore {
    KeyStore::new(
        pool.clone(),
        wrapper,
        KeyStoreLimits { cache_entries_max: 1000, cache_ttl_ms, rewrap_batch_rows: 2 },
    )
}

async fn database() -> anyhow::Result<(PgPool, String)> {
    let id = format!("keys_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin = PgPool::connect(&pg_url()).await.context("connect to the test Postgres")?;
    sqlx::query(&format!("CREATE DATABASE {id}")).execute(&admin).await?;
    admin.close().await;
    let base = pg_url();
    let url = format!("{}/{id}", base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base));
    let pool = PgPool::connect(&url).await?;
    keystore::migrate(&pool).await?;
    Ok((pool, url))
}

/// A sealed field and where it lives.
struct Sealed {
    subject: &'static str,
    field: &'static str,
    clear: String,
    sealed: String,
}

impl Sealed {
    fn ctx(&self) -> FieldContext<'_> {
        FieldContext {
            tenant: TENANT,
            environment: ENV.as_str(),
            subject: self.subject,
            field: self.field,
            record: "ev-1",
        }
    }
}

async fn seal(
    ks: &KeyStore,
    subject: &'static str,
    class: DataClass,
    field: &'static str,
) -> anyhow::Result<Sealed> {
    let (key_id, dek) = ks.seal_key(TENANT, ENV, subject, class).await?;
    let clear = format!("{class} of {subject}");
    let ctx = FieldContext { tenant: TENANT, environment: ENV.as_str(), subject, field, record: "ev-1" };
    let sealed = field::seal(&dek, &key_id, &ctx, clear.as_bytes())?;
    Ok(Sealed { subject, field, clear, sealed })
}

async fn open(ks: &KeyStore, s: &Sealed) -> Result<String, KeyStoreError> {
    let key_id = field::parse(&s.sealed).expect("an envelope").key_id;
    let dek = ks.open_key(TENANT, ENV, &key_id).await?;
    Ok(String::from_utf8(field::open(&dek, &s.ctx(), &s.sealed)?).expect("utf-8"))
}

/// (class, kek_id) → live data keys.
async fn live_by_kek(pool: &PgPool) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT data_class, kek_id, count(*) FROM keys.data_keys WHERE destroyed_at IS NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}

async fn all_rows(pool: &PgPool) -> anyhow::Result<Vec<(String, i32, String, Vec<u8>, Option<Vec<u8>>)>> {
    Ok(sqlx::query_as(
        "SELECT subject || '/' || data_class, version, kek_id, nonce, wrapped FROM keys.data_keys ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}

/// Run `riverbank <args>` over this database with `keks` as the key file; returns stdout.
async fn cli(
    db_url: &str,
    dir: &std::path::Path,
    keks: &[KekEntry],
    args: &[&str],
) -> anyhow::Result<String> {
    let key_file = dir.join("keys.json");
    std::fs::write(&key_file, serde_json::to_vec(&serde_json::json!({ "keks": keks }))?)?;
    let config = dir.join("riverbank.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"e2e-{}.\"\n[postgres]\nurl = \"{db_url}\"\n[keys]\nkey_file = \"{}\"\n\
             rewrap_batch_rows = 2\n[telemetry]\nlog_filter = \"warn\"\n",
            // The CLI states its actions (rewrap, erase) on the test's own audit topics.
            crate::harness::brokers(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("keys"),
            key_file.display()
        ),
    )?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_riverbank"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "riverbank {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_rotate_rewrap_erase() -> anyhow::Result<()> {
    let (pool, db_url) = database().await?;
    let dir = std::env::temp_dir().join(format!("riverbank-e2e-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let first = [kek(NAME_OLD, DataClass::PII_NAME, 0x11, true), kek(DOB, DataClass::PII_DOB, 0x22, true)];
    let rotated = [
        kek(NAME_OLD, DataClass::PII_NAME, 0x11, false),
        kek(NAME_NEW, DataClass::PII_NAME, 0x33, true),
        kek(DOB, DataClass::PII_DOB, 0x22, true),
    ];
    let after_rewrap =
        [kek(NAME_NEW, DataClass::PII_NAME, 0x33, true), kek(DOB, DataClass::PII_DOB, 0x22, true)];

    // Seal → open. Cache TTL 1 ms: every open below reads Postgres.
    let ks1 = store(&pool, ring(&first), 1);
    let mut sealed = Vec::new();
    for s in SUBJECTS {
        sealed.push(seal(&ks1, s, DataClass::PII_NAME, "/name").await?);
        sealed.push(seal(&ks1, s, DataClass::PII_DOB, "/dob").await?);
    }
    for s in &sealed {
        assert_eq!(open(&ks1, s).await?, s.clear);
        assert!(!s.sealed.contains(&s.clear));
    }
    // Get-or-create: the same key again, and one row per (subject, class).
    let (k1, _) = ks1.seal_key(TENANT, ENV, "user-1", DataClass::PII_NAME).await?;
    assert_eq!(k1, field::parse(&sealed[0].sealed).expect("envelope").key_id);
    assert_eq!(
        live_by_kek(&pool).await?,
        [("pii.dob".into(), DOB.into(), 5), ("pii.name".into(), NAME_OLD.into(), 5)]
    );
    // Other tenants do not find the key.
    assert!(matches!(ks1.open_key("keys-other", ENV, &k1).await, Err(KeyStoreError::Unknown)));
    // A sealed value moved to another subject's field does not open.
    let moved = Sealed { subject: "user-2", ..seal(&ks1, "user-1", DataClass::PII_NAME, "/name").await? };
    assert!(matches!(open(&ks1, &moved).await, Err(KeyStoreError::Crypto(CryptoError::Refused))));

    // Concurrent get-or-create from several "processes" (stores without a shared cache): one key wins.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let ks = store(&pool, ring(&first), 1);
        tasks.spawn(async move { ks.seal_key(TENANT, ENV, "user-racy", DataClass::PII_NAME).await });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        ids.insert(r??.0);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let racy: i64 = sqlx::query_scalar("SELECT count(*) FROM keys.data_keys WHERE subject = 'user-racy'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(racy, 1);

    // Rotation: a second name key, active. Old data still opens; new data keys are wrapped under it.
    let ks2 = store(&pool, ring(&rotated), 1);
    for s in &sealed {
        assert_eq!(open(&ks2, s).await?, s.clear);
    }
    let new = seal(&ks2, "user-6", DataClass::PII_NAME, "/name").await?;
    let kek_of_new: String = sqlx::query_scalar("SELECT kek_id FROM keys.data_keys WHERE subject = 'user-6'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(kek_of_new, NAME_NEW);
    // The five subjects' and user-racy's name keys are under the old key; user-6's under the new one.
    let before = all_rows(&pool).await?;

    // Dry run: says what would move, changes nothing.
    let out = cli(&db_url, &dir, &rotated, &["keys", "rewrap", "--dry-run"]).await?;
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let want = ["would", "rewrap", "6", "pii.name", NAME_OLD, "->", NAME_NEW, "(failed", "0)"];
    assert!(out.lines().any(|l| words(l) == want), "{out}");
    assert!(out.contains("would rewrap 6 data keys in total, 0 failed"), "{out}");
    assert_eq!(all_rows(&pool).await?, before);

    // Rewrap: every name key moves to the new key (in batches of 2), the data keys themselves unchanged.
    let out = cli(&db_url, &dir, &rotated, &["keys", "rewrap"]).await?;
    assert!(out.contains("rewrapped 6 data keys in total, 0 failed, 3 batches"), "{out}");
    assert_eq!(
        live_by_kek(&pool).await?,
        [("pii.dob".into(), DOB.into(), 5), ("pii.name".into(), NAME_NEW.into(), 7)]
    );
    let after = all_rows(&pool).await?;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        if b.2 == NAME_OLD {
            assert!(a.2 == NAME_NEW && a.3 != b.3 && a.4 != b.4, "{} was not re-wrapped", b.0);
        } else {
            assert_eq!(a, b);
        }
    }
    // Nothing left to move.
    let out = cli(&db_url, &dir, &rotated, &["keys", "rewrap"]).await?;
    assert!(out.contains("rewrapped 0 data keys in total"), "{out}");

    // The old key leaves the ring: everything still opens. A ring with only the old key no longer does.
    let ks3 = store(&pool, ring(&after_rewrap), 1);
    for s in sealed.iter().chain([&new]) {
        assert_eq!(open(&ks3, s).await?, s.clear);
    }
    let old_only = store(&pool, ring(&first), 1);
    assert!(matches!(
        open(&old_only, &sealed[0]).await,
        Err(KeyStoreError::Crypto(CryptoError::UnknownKek(k))) if k == NAME_NEW
    ));

    // Erasure through the CLI: both keys of user-1 destroyed; its data says Erased, the rest still opens.
    let out = cli(
        &db_url,
        &dir,
        &after_rewrap,
        &["gdpr", "erase", "--tenant", TENANT, "--environment", "live", "--subject", "user-1"],
    )
    .await?;
    assert!(
        out.contains(
            "erased subject user-1 of tenant keys-t (live): 2 data keys destroyed (pii.dob v1, pii.name v1)"
        ),
        "{out}"
    );
    for s in &sealed {
        match open(&ks3, s).await {
            Err(KeyStoreError::Erased) if s.subject == "user-1" => {}
            Ok(clear) if s.subject != "user-1" => assert_eq!(clear, s.clear),
            other => panic!("{} {}: {other:?}", s.subject, s.field),
        }
    }
    let tombstones: Vec<(i32, Option<Vec<u8>>, bool)> = sqlx::query_as(
        "SELECT version, wrapped, destroyed_at IS NOT NULL FROM keys.data_keys WHERE subject = 'user-1'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(tombstones, [(1, None, true), (1, None, true)]);
    // Never reused: the next seal for user-1 is version 2, and the erased data stays erased.
    let again = seal(&ks3, "user-1", DataClass::PII_NAME, "/name").await?;
    let p = field::parse(&again.sealed).expect("envelope");
    assert_eq!((p.subject.as_str(), p.version), ("user-1", 2));
    assert_eq!(open(&ks3, &again).await?, again.clear);
    assert!(matches!(open(&ks3, &sealed[0]).await, Err(KeyStoreError::Erased)));
    // Erasing again destroys only the new key.
    assert_eq!(ks3.erase_subject(TENANT, ENV, "user-1").await?.destroyed.len(), 1);
    assert_eq!(ks3.erase_subject(TENANT, ENV, "user-1").await?.destroyed.len(), 0);

    // The cache: an erasure in this process bites at once; in another process within cache_ttl_ms.
    let cached = store(&pool, ring(&after_rewrap), 60_000);
    let user2_name = &sealed[2];
    assert_eq!(open(&cached, user2_name).await?, user2_name.clear);
    cached.erase_subject(TENANT, ENV, "user-2").await?;
    assert!(matches!(open(&cached, user2_name).await, Err(KeyStoreError::Erased)));
    let ttl_ms = 300;
    let elsewhere = store(&pool, ring(&after_rewrap), ttl_ms);
    let user3_name = &sealed[4];
    assert_eq!(open(&elsewhere, user3_name).await?, user3_name.clear);
    ks3.erase_subject(TENANT, ENV, "user-3").await?;
    tokio::time::sleep(Duration::from_millis(ttl_ms + 50)).await;
    assert!(matches!(open(&elsewhere, user3_name).await, Err(KeyStoreError::Erased)));
    Ok(())
}
