//! One typed config: the embedded default file, then an optional file, then `RIVERBANK__SECTION__KEY`
//! environment variables. Unknown keys are errors; secrets never print.
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use riverbank_schemas::Environment;
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Longest KYC approval validity accepted (100 years).
pub const KYC_APPROVAL_VALID_DAYS_MAX: u32 = 36_500;

/// A value that must never appear in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
    pub processor: ProcessorConfig,
    pub transfers: TransfersConfig,
    pub kyc: KycConfig,
    pub risk: RiskConfig,
    pub keys: KeysConfig,
    pub audit: AuditConfig,
    pub fx: FxConfig,
    pub billing: BillingConfig,
    pub sinks: SinksConfig,
    pub postgres: PostgresConfig,
    pub clickhouse: ClickHouseConfig,
    pub api: ApiConfig,
    pub live: LiveConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub client_id: String,
    pub environments: Vec<Environment>,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    /// Retention of the topics riverbank creates (checkpoint topics excepted: they never expire).
    pub topic_retention_ms: i64,
    pub admin_timeout_ms: u64,
    pub metadata_timeout_ms: u64,
    pub message_timeout_ms: u64,
    pub producer_linger_ms: u64,
    pub producer_queue_messages_max: u64,
    pub producer_queue_kbytes_max: u64,
    pub producer_batch_messages_max: u64,
    pub consumer_session_timeout_ms: u64,
    pub consumer_fetch_wait_max_ms: u64,
    pub consumer_queued_kbytes_max: u64,
    pub commit_timeout_ms: u64,
    pub statistics_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub listen_addr: SocketAddr,
    /// Open connections at most (past it, new ones wait in the kernel's backlog).
    pub connections_max: usize,
    /// The request head must arrive within this long (a trickling client is cut off).
    pub header_read_timeout_ms: u64,
    /// Read buffer per connection, bounding the request head; at least 8192.
    pub read_buffer_bytes_max: usize,
    pub body_bytes_max: usize,
    pub headers_count_max: usize,
    pub request_timeout_ms: u64,
    pub in_flight_requests_max: usize,
    pub produce_timeout_ms: u64,
    pub retry_after_s: u64,
    /// Extra provider definitions (`*.toml`), beside the built-in ones; empty: built-ins only.
    pub providers_dir: String,
    /// Webhook deliveries are recognised as duplicates for this long (providers retry for days).
    pub webhook_dedupe_retention_h: u64,
    /// An `Idempotency-Key` answers with its first response for this long.
    pub idempotency_retention_h: u64,
    /// How long a claimed key stays reserved for the request that claimed it; past this a crashed
    /// claimant's key may be taken over (the event id is the same, so consumers deduplicate).
    pub idempotency_lease_ms: u64,
    /// A request whose key is in flight elsewhere waits this long for the first answer, then gets 503
    /// `request_in_progress` with `Retry-After` (the outcome is unknown, so never a 4xx).
    pub idempotency_wait_ms: u64,
    /// Claims (and answers) go to Postgres in batches of at most this many rows, one statement each;
    /// at most this many requests wait for a batch.
    pub claim_batch_rows_max: usize,
    pub claim_queue_requests_max: usize,
    pub claim_batches_in_flight_max: usize,
    /// Expired dedupe and idempotency rows are deleted this often, at most this many per pass.
    pub retention_sweep_interval_s: u64,
    pub retention_sweep_rows_max: i64,
    /// API keys are looked up in Postgres and cached this long (so a revocation takes at most this
    /// long to bite), at most this many.
    pub api_key_cache_ttl_ms: u64,
    pub api_key_cache_entries_max: usize,
    pub webhooks: Vec<WebhookSecretConfig>,
}

/// Secrets one tenant shares with one provider in one environment. Several may be active at once
/// (rotation): any of them verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSecretConfig {
    pub provider: String,
    pub tenant_id: String,
    pub environment: Environment,
    /// Shared secrets, or public keys for an asymmetric scheme, in the form the provider's scheme takes
    /// (its definition says which).
    pub secrets: Vec<Secret<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub batch_events_max: usize,
    pub batch_linger_ms: u64,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub checkpoint_snapshot_every_batches: u32,
    pub checkpoint_record_bytes_max: usize,
    pub restore_window_records: i64,
    pub restore_timeout_ms: u64,
    pub idle_wake_ms: u64,
    /// Largest state of one partition (bytes, measured at each snapshot).
    pub state_bytes_max: usize,
    /// How often the router writes a tick into each partition of a processor's log.
    pub tick_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransfersConfig {
    pub final_retention_s: i64,
    pub final_retained_max: usize,
    /// A forgotten final transfer's id stays refused this long (event time) after it became final.
    pub id_reuse_refused_s: i64,
    /// At most this many forgotten transfer ids (tombstones) per partition.
    pub tombstones_retained_max: usize,
    /// The processor's event clock advances at most this much per input (a skewed ingest clock
    /// cannot evict a partition's final transfers at once).
    pub clock_step_max_ms: i64,
}

/// The KYC lifecycle processor (processors/src/kyc.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KycConfig {
    /// An approval is valid this long (event time from the approval), then the KYC is `expired`.
    pub approval_valid_days: u32,
    /// The `user.kyc.expiring` reminder comes this long before the expiry; below `approval_valid_days`.
    pub expiry_reminder_days: u32,
    /// Users per partition at most; an input that would add one more is refused with the reason.
    pub users_per_partition_max: usize,
    /// Inputs remembered per partition to recognise duplicates (the oldest is forgotten first).
    pub inputs_remembered_max: usize,
}

/// The audit trail (processors/src/audit.rs, ARCHITECTURE.md "The audit trail").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Ed25519 seed (64 hex digits) checkpoints are signed with. The default is a development key:
    /// set your own in production (RIVERBANK__AUDIT__SIGNING_KEY); `riverbank audit public-key` prints
    /// the public key and key id a verifier needs.
    pub signing_key: Secret<String>,
    /// Public keys (hex) of earlier signing keys, still accepted by `riverbank audit verify` and the proof
    /// endpoint after a rotation.
    pub verify_keys: Vec<String>,
    /// A checkpoint after this many records of a log at most …
    pub checkpoint_every_records: u64,
    /// … or this long (event time) after the first record it does not cover yet.
    pub checkpoint_every_ms: u64,
    /// Source event ids remembered per partition, so an upstream duplicate is never chained twice.
    pub inputs_remembered_max: usize,
    /// (tenant) logs per partition at most; a record of one more is dead-lettered with the reason.
    pub logs_per_partition_max: usize,
    /// Records an inclusion proof is computed over at most (`GET /v1/audit/{id}/proof` reads the leaves).
    pub proof_records_max: u64,
    /// Rows an export streams at most per request (narrow the time range for more).
    pub export_rows_max: u64,
    /// Rows fetched from the store per round trip while streaming an export.
    pub export_batch_rows: u32,
}

/// Field-level encryption keys (runtime/src/keystore.rs, ARCHITECTURE.md "Personal data and keys").
/// The embedded defaults are DEVELOPMENT-ONLY keys (ids `dev-only-…`, a warning at start-up when in use):
/// production sets `key_file` (RIVERBANK__KEYS__KEY_FILE) and `pseudonym_key`
/// (RIVERBANK__KEYS__PSEUDONYM_KEY), or replaces `keks` in its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Key-encryption keys: per data class, exactly one `active` (new data keys are wrapped under it);
    /// older ones of a class stay until `riverbank keys rewrap` has moved every data key off them.
    /// Ignored when `key_file` is set.
    pub keks: Vec<KekConfig>,
    /// A JSON key file (`{"keks": [{"id", "class", "key", "active"}]}`) replacing `keks`; empty: none.
    pub key_file: String,
    /// Key of pseudonymous ids in analytics (64 hex digits, HMAC-SHA256).
    pub pseudonym_key: Secret<String>,
    /// Unwrapped data keys cached per process at most, each for at most `cache_ttl_ms` (so an erasure
    /// stops every process decrypting within `cache_ttl_ms`).
    pub cache_entries_max: usize,
    pub cache_ttl_ms: u64,
    /// `riverbank keys rewrap` re-wraps this many data keys per transaction.
    pub rewrap_batch_rows: u32,
}

/// One key-encryption key: `key` is 64 hex digits (256 bits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekConfig {
    pub id: String,
    pub class: String,
    pub key: Secret<String>,
    pub active: bool,
}

impl KeysConfig {
    /// The configured key-encryption keys as the crypto crate takes them.
    pub fn kek_entries(&self) -> Vec<riverbank_crypto::keys::KekEntry> {
        self.keks
            .iter()
            .map(|k| riverbank_crypto::keys::KekEntry {
                id: k.id.clone(),
                class: k.class.clone(),
                key: k.key.expose().clone(),
                active: k.active,
            })
            .collect()
    }

    fn check(&self, errors: &mut Vec<String>) {
        if self.key_file.is_empty() {
            match riverbank_crypto::keys::KeyRing::from_entries(&self.kek_entries()) {
                Ok(ring) if !ring.missing_classes().is_empty() => errors.push(format!(
                    "keys.keks: no active key for {}",
                    ring.missing_classes().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                )),
                Ok(_) => {}
                Err(e) => errors.push(format!("keys.keks: {e}")),
            }
        } else if !Path::new(&self.key_file).is_file() {
            errors.push(format!("keys.key_file {} is not a readable file", self.key_file));
        }
        let p = self.pseudonym_key.expose();
        if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            errors.push("keys.pseudonym_key must be 64 hex digits (256 bits)".into());
        }
        if self.cache_entries_max == 0 || self.cache_ttl_ms == 0 || self.rewrap_batch_rows == 0 {
            errors
                .push("keys.cache_entries_max, cache_ttl_ms and rewrap_batch_rows must be at least 1".into());
        }
    }
}

/// Risk scoring (and the edge's part of it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Key of the counterparty name digests (`riverbank_schemas::risk::name_keys`): the edge digests
    /// names with it and `riverbank risk lists publish` digests sanctions entries with it. At least 16
    /// bytes. Changing it makes published lists stop matching until they are published again.
    pub name_key: Secret<String>,
}

/// The FX processor (processors/src/fx.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FxConfig {
    /// A rate whose `as_of` is further than this behind the partition's clock is stale: no quote on it,
    /// no conversion against a quote resting on it.
    pub rate_age_max_ms: u64,
    /// A quote is live this long after it is issued (a timer expires it).
    pub quote_ttl_ms: u64,
    /// Cross rates go through this currency when a pair has no direct (or inverse) rate.
    pub pivot_currency: String,
    /// `half_even` or `half_up` (schemas/src/rounding.rs), at each currency's precision.
    pub rounding: String,
    /// Markup on the mid rate, in basis points, for tenants without their own.
    pub markup_bps_default: u32,
    /// Conversions selling more than this (per sell currency, `"100000.00 USD"`) need a second person's
    /// approval, for tenants without their own list. A currency not listed has no threshold.
    pub otc_thresholds_default: Vec<String>,
    /// Per-tenant markup and OTC thresholds (`[fx.tenants.<tenant>]`).
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, FxTenantConfig>,
    /// Quotes and conversions kept per partition at most (a request beyond is refused with the reason).
    pub entries_per_partition_max: usize,
    /// Final quotes and conversions are forgotten this long (event time) after they became final.
    pub final_retention_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FxTenantConfig {
    pub markup_bps: Option<u32>,
    pub otc_thresholds: Option<Vec<String>>,
}

/// The billing processor (processors/src/billing.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// A calendar month's invoice is finalized this long after the month ends (partition clock); a fee
    /// whose transfer completed in a finalized month goes on the next open invoice as an adjustment.
    pub lateness_ms: u64,
    /// `half_even` or `half_up`, at each currency's precision.
    pub rounding: String,
    /// Charged transfers remembered per partition (a fee is charged once per transfer).
    pub fees_remembered_max: usize,
    /// Open (draft) invoices per partition at most.
    pub open_invoices_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    pub batch_rows_max: usize,
    pub batch_linger_ms: u64,
    pub idle_watermark_ms: u64,
    /// A complete-through observation round at most this often (busy or idle).
    pub watermark_interval_ms: u64,
    /// Hosts' clocks (ingest vs sink) differ by at most this much; complete-through allows for it.
    pub clock_skew_max_ms: u64,
    /// One seek of a partition waits at most this long (positioning never blocks polling longer).
    pub seek_timeout_ms: u64,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Secret<String>,
    pub pool_connections_max: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret<String>,
    pub validation: bool,
    pub request_timeout_ms: u64,
    pub create_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen_addr: SocketAddr,
    /// Reads need a tenant API key (`Authorization: Bearer rbk_…`) of the tenant read. Off only on a
    /// trusted network (the local stack): then a read without a key names its tenant in `tenant_id`.
    pub require_api_key: bool,
    pub api_key_cache_ttl_ms: u64,
    pub api_key_cache_entries_max: usize,
    pub connections_max: usize,
    pub header_read_timeout_ms: u64,
    pub read_buffer_bytes_max: usize,
    pub request_timeout_ms: u64,
    pub in_flight_requests_max: usize,
    pub page_rows_max: u32,
}

/// `[live]`: the api's live component (windows over the topics as they flow, `GET /v1/live`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Off: no live reader runs and `GET /v1/live` answers 503.
    pub enabled: bool,
    /// History read at start-up, and how long minute windows are kept (late events older than that
    /// are counted as dropped, never folded into a window that was already forgotten).
    pub lookback_ms: u64,
    /// How long sliding (10 s) windows are kept after their end.
    pub sliding_kept_ms: u64,
    /// How often what was read is aggregated and what changed is pushed (a micro-batch).
    pub batch_interval_ms: u64,
    /// How far behind the newest event time the watermark trails.
    pub lateness_ms: u64,
    /// Without new events for this long, the watermark follows the clock instead (idle topics).
    pub idle_ms: u64,
    /// How often the review queue, consumer lag and landed-through gauges are read.
    pub gauge_interval_ms: u64,
    /// Events read but not yet aggregated at most (the reader waits above it).
    pub pending_events_max: usize,
    /// Frames kept for `Last-Event-ID` resumption.
    pub replay_frames_max: usize,
    /// Open `GET /v1/live` streams at most (more answer 503).
    pub connections_max: usize,
    /// Frames queued per stream at most; a client further behind is resynchronised with a snapshot.
    pub connection_queue_frames_max: usize,
    /// Frames in one snapshot at most (the newest windows win).
    pub snapshot_frames_max: usize,
    /// Latest dead letters kept (per platform; a tenant view shows its own of these).
    pub dead_letters_kept_max: usize,
    /// Distinct tenants with windows of their own at most; further tenants count in the totals only.
    pub tenants_max: usize,
    /// A comment line on an idle stream this often, so proxies keep it open.
    pub keepalive_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub metrics_listen_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("config is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Both HTTP edges read their server limits from the same four keys.
macro_rules! server_limits {
    ($($section:ty),*) => {$(
        impl $section {
            pub fn server_limits(&self) -> crate::http::ServerLimits {
                crate::http::ServerLimits::from_ms(
                    self.connections_max,
                    self.header_read_timeout_ms,
                    self.read_buffer_bytes_max,
                    self.request_timeout_ms,
                )
            }
        }
    )*};
}

server_limits!(IngestConfig, ApiConfig);

impl Config {
    /// Defaults ← `file` (if given) ← environment, then validated as a whole.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, "RIVERBANK__")
    }

    fn load_from(file: Option<&Path>, env_prefix: &str) -> Result<Config, ConfigError> {
        let env = Env::prefixed(env_prefix).split("__");
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once, so an operator fixes the file in one go.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.check_positive(&mut errors);
        self.check_ranges(&mut errors);
        self.check_edges(&mut errors);
        self.check_webhooks(&mut errors);
        self.keys.check(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Limits that must be above zero.
    fn check_positive(&self, errors: &mut Vec<String>) {
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        };
        let k = &self.kafka;
        positive("kafka.admin_timeout_ms", k.admin_timeout_ms);
        positive("kafka.metadata_timeout_ms", k.metadata_timeout_ms);
        positive("kafka.message_timeout_ms", k.message_timeout_ms);
        positive("kafka.producer_queue_messages_max", k.producer_queue_messages_max);
        positive("kafka.producer_queue_kbytes_max", k.producer_queue_kbytes_max);
        positive("kafka.producer_batch_messages_max", k.producer_batch_messages_max);
        positive("kafka.consumer_session_timeout_ms", k.consumer_session_timeout_ms);
        positive("kafka.consumer_queued_kbytes_max", k.consumer_queued_kbytes_max);
        positive("kafka.commit_timeout_ms", k.commit_timeout_ms);
        let i = &self.ingest;
        positive("ingest.body_bytes_max", i.body_bytes_max as u64);
        positive("ingest.headers_count_max", i.headers_count_max as u64);
        positive("ingest.request_timeout_ms", i.request_timeout_ms);
        positive("ingest.in_flight_requests_max", i.in_flight_requests_max as u64);
        positive("ingest.produce_timeout_ms", i.produce_timeout_ms);
        positive("processor.batch_events_max", self.processor.batch_events_max as u64);
        positive("processor.retry_backoff_initial_ms", self.processor.retry_backoff_initial_ms);
        positive(
            "processor.checkpoint_snapshot_every_batches",
            u64::from(self.processor.checkpoint_snapshot_every_batches),
        );
        positive("processor.restore_timeout_ms", self.processor.restore_timeout_ms);
        positive("processor.idle_wake_ms", self.processor.idle_wake_ms);
        positive("processor.state_bytes_max", self.processor.state_bytes_max as u64);
        positive("processor.tick_interval_ms", self.processor.tick_interval_ms);
        positive("sinks.idle_watermark_ms", self.sinks.idle_watermark_ms);
        positive("transfers.final_retained_max", self.transfers.final_retained_max as u64);
        positive("transfers.tombstones_retained_max", self.transfers.tombstones_retained_max as u64);
        positive("transfers.clock_step_max_ms", u64::try_from(self.transfers.clock_step_max_ms).unwrap_or(0));
        positive("kyc.approval_valid_days", u64::from(self.kyc.approval_valid_days));
        positive("kyc.users_per_partition_max", self.kyc.users_per_partition_max as u64);
        positive("kyc.inputs_remembered_max", self.kyc.inputs_remembered_max as u64);
        positive("fx.rate_age_max_ms", self.fx.rate_age_max_ms);
        positive("fx.quote_ttl_ms", self.fx.quote_ttl_ms);
        positive("fx.entries_per_partition_max", self.fx.entries_per_partition_max as u64);
        positive("fx.final_retention_ms", self.fx.final_retention_ms);
        positive("billing.fees_remembered_max", self.billing.fees_remembered_max as u64);
        positive("billing.open_invoices_max", self.billing.open_invoices_max as u64);
        positive("sinks.watermark_interval_ms", self.sinks.watermark_interval_ms);
        positive("sinks.seek_timeout_ms", self.sinks.seek_timeout_ms);
        positive("sinks.batch_rows_max", self.sinks.batch_rows_max as u64);
        positive("sinks.retry_backoff_initial_ms", self.sinks.retry_backoff_initial_ms);
        positive("postgres.pool_connections_max", u64::from(self.postgres.pool_connections_max));
        positive("postgres.acquire_timeout_ms", self.postgres.acquire_timeout_ms);
        positive("postgres.statement_timeout_ms", self.postgres.statement_timeout_ms);
        positive("clickhouse.request_timeout_ms", self.clickhouse.request_timeout_ms);
        positive("api.request_timeout_ms", self.api.request_timeout_ms);
        positive("api.in_flight_requests_max", self.api.in_flight_requests_max as u64);
        positive("api.page_rows_max", u64::from(self.api.page_rows_max));
        let l = &self.live;
        positive("live.lookback_ms", l.lookback_ms);
        positive("live.sliding_kept_ms", l.sliding_kept_ms);
        positive("live.batch_interval_ms", l.batch_interval_ms);
        positive("live.idle_ms", l.idle_ms);
        positive("live.gauge_interval_ms", l.gauge_interval_ms);
        positive("live.pending_events_max", l.pending_events_max as u64);
        positive("live.replay_frames_max", l.replay_frames_max as u64);
        positive("live.connections_max", l.connections_max as u64);
        positive("live.connection_queue_frames_max", l.connection_queue_frames_max as u64);
        positive("live.snapshot_frames_max", l.snapshot_frames_max as u64);
        positive("live.dead_letters_kept_max", l.dead_letters_kept_max as u64);
        positive("live.tenants_max", l.tenants_max as u64);
        positive("live.keepalive_ms", l.keepalive_ms);
    }

    /// `[audit]`: a signing seed and verify keys of 64 hex digits, and every limit at least 1.
    fn check_audit(&self, errors: &mut Vec<String>) {
        let seed = self.audit.signing_key.expose();
        if seed.len() != 64 || !seed.bytes().all(|b| b.is_ascii_hexdigit()) {
            errors.push("audit.signing_key must be an Ed25519 seed of 64 hex digits".into());
        }
        for k in &self.audit.verify_keys {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors
                    .push(format!("audit.verify_keys: {k:?} is not an Ed25519 public key of 64 hex digits"));
            }
        }
        for (name, v) in [
            ("audit.checkpoint_every_records", self.audit.checkpoint_every_records),
            ("audit.checkpoint_every_ms", self.audit.checkpoint_every_ms),
            ("audit.proof_records_max", self.audit.proof_records_max),
            ("audit.export_rows_max", self.audit.export_rows_max),
            ("audit.export_batch_rows", u64::from(self.audit.export_batch_rows)),
            ("audit.inputs_remembered_max", self.audit.inputs_remembered_max as u64),
            ("audit.logs_per_partition_max", self.audit.logs_per_partition_max as u64),
        ] {
            if v == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
    }

    /// Sizes, ranges and orderings of the Kafka, processor, sink and telemetry settings.
    fn check_ranges(&self, errors: &mut Vec<String>) {
        let k = &self.kafka;
        if !(4096..=1_000_000).contains(&self.processor.checkpoint_record_bytes_max) {
            errors.push("processor.checkpoint_record_bytes_max must be 4096..=1000000 (under the broker's message limit)".into());
        }
        if self.processor.restore_window_records < 1 {
            errors.push("processor.restore_window_records must be at least 1".into());
        }
        self.check_audit(errors);
        if self.risk.name_key.expose().len() < 16 {
            errors.push("risk.name_key must be at least 16 bytes".into());
        }
        if self.kyc.approval_valid_days > KYC_APPROVAL_VALID_DAYS_MAX {
            errors.push(format!("kyc.approval_valid_days must be at most {KYC_APPROVAL_VALID_DAYS_MAX}"));
        }
        if self.kyc.expiry_reminder_days >= self.kyc.approval_valid_days {
            errors.push("kyc.expiry_reminder_days must be below kyc.approval_valid_days".into());
        }
        for (name, rounding) in
            [("fx.rounding", &self.fx.rounding), ("billing.rounding", &self.billing.rounding)]
        {
            if riverbank_schemas::rounding::RoundingMode::parse(rounding).is_none() {
                errors.push(format!("{name} must be half_even or half_up, got '{rounding}'"));
            }
        }
        if riverbank_schemas::Currency::from_code(&self.fx.pivot_currency).is_err() {
            errors.push(format!("fx.pivot_currency '{}' is not a known currency", self.fx.pivot_currency));
        }
        let markups = std::iter::once(("default".to_owned(), Some(self.fx.markup_bps_default)))
            .chain(self.fx.tenants.iter().map(|(t, c)| (t.clone(), c.markup_bps)));
        for (tenant, bps) in markups {
            if bps.is_some_and(|b| b >= 10_000) {
                errors.push(format!("fx markup for {tenant} must be below 10000 bps"));
            }
        }
        let thresholds = std::iter::once(("default".to_owned(), &self.fx.otc_thresholds_default)).chain(
            self.fx.tenants.iter().filter_map(|(t, c)| c.otc_thresholds.as_ref().map(|l| (t.clone(), l))),
        );
        for (tenant, list) in thresholds {
            for text in list {
                if parse_money_text(text).is_none() {
                    errors.push(format!("fx OTC threshold '{text}' for {tenant} must be '<amount> <CCY>'"));
                }
            }
        }
        if self.transfers.final_retention_s < 0 {
            errors.push("transfers.final_retention_s must not be negative".into());
        }
        let m = &self.telemetry.metrics_listen_addr;
        if !m.is_empty() && m.parse::<SocketAddr>().is_err() {
            errors.push(format!("telemetry.metrics_listen_addr must be empty or host:port, got '{m}'"));
        }
        if k.brokers.trim().is_empty() {
            errors.push("kafka.brokers must name at least one broker".into());
        }
        if k.environments.is_empty() {
            errors.push("kafka.environments must name at least one of live, sandbox".into());
        }
        if k.topic_partitions < 1 {
            errors.push("kafka.topic_partitions must be at least 1".into());
        }
        if k.topic_replication_factor < 1 {
            errors.push("kafka.topic_replication_factor must be at least 1".into());
        }
        if !k.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            errors.push("kafka.topic_prefix may hold only ASCII letters, digits, '.', '_' and '-'".into());
        }
        if self.processor.retry_backoff_max_ms < self.processor.retry_backoff_initial_ms {
            errors.push("processor.retry_backoff_max_ms must be at least retry_backoff_initial_ms".into());
        }
        if self.sinks.retry_backoff_max_ms < self.sinks.retry_backoff_initial_ms {
            errors.push("sinks.retry_backoff_max_ms must be at least retry_backoff_initial_ms".into());
        }
    }

    /// The HTTP edges' settings that depend on each other.
    fn check_edges(&self, errors: &mut Vec<String>) {
        let i = &self.ingest;
        if i.idempotency_lease_ms <= i.request_timeout_ms {
            errors.push(
                "ingest.idempotency_lease_ms must exceed ingest.request_timeout_ms (a live request keeps its key)"
                    .into(),
            );
        }
        for (section, buffer, connections) in [
            ("ingest", i.read_buffer_bytes_max, i.connections_max),
            ("api", self.api.read_buffer_bytes_max, self.api.connections_max),
        ] {
            if buffer < 8192 {
                errors.push(format!("{section}.read_buffer_bytes_max must be at least 8192"));
            }
            if connections == 0 {
                errors.push(format!("{section}.connections_max must be at least 1"));
            }
        }
        if i.produce_timeout_ms >= i.request_timeout_ms {
            errors.push("ingest.produce_timeout_ms must be below ingest.request_timeout_ms (so the answer is 503, not 408)".into());
        }
        if i.idempotency_wait_ms >= i.request_timeout_ms {
            errors.push("ingest.idempotency_wait_ms must be below ingest.request_timeout_ms".into());
        }
        if i.webhook_dedupe_retention_h == 0 || i.idempotency_retention_h == 0 {
            errors.push("ingest.*_retention_h must be at least 1".into());
        }
        if i.claim_batch_rows_max == 0
            || i.claim_queue_requests_max == 0
            || i.claim_batches_in_flight_max == 0
        {
            errors.push("ingest.claim_batch_rows_max, claim_queue_requests_max and claim_batches_in_flight_max must be at least 1".into());
        }
        if self.api.api_key_cache_entries_max == 0 {
            errors.push("api.api_key_cache_entries_max must be at least 1".into());
        }
        if i.retention_sweep_rows_max < 1 || i.api_key_cache_entries_max == 0 {
            errors.push(
                "ingest.retention_sweep_rows_max and api_key_cache_entries_max must be at least 1".into(),
            );
        }
        if !self.clickhouse.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push("clickhouse.database may hold only ASCII letters, digits and '_'".into());
        }
    }

    /// Static webhook keys: well-formed and not repeated.
    fn check_webhooks(&self, errors: &mut Vec<String>) {
        let i = &self.ingest;
        let mut seen = std::collections::HashSet::new();
        for (n, w) in i.webhooks.iter().enumerate() {
            let at = format!("ingest.webhooks[{n}]");
            if !is_slug(&w.provider) {
                errors.push(format!("{at}.provider must be 1-64 of a-z, 0-9, '-', '_'"));
            }
            if !is_tenant_id(&w.tenant_id) {
                errors.push(format!("{at}.tenant_id must be 1-64 of ASCII letters, digits, '-', '_'"));
            }
            if w.secrets.is_empty() {
                errors.push(format!("{at}.secrets must hold at least one secret"));
            }
            if !seen.insert((w.provider.clone(), w.tenant_id.clone(), w.environment)) {
                errors.push(format!(
                    "{at} repeats provider/tenant/environment; list all its secrets in one entry"
                ));
            }
        }
    }
}

/// Provider names: lowercase slugs (they appear in routes, topics' keys and audit actors).
pub fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Tenant ids: short, ASCII, safe in URLs, keys and SQL literals.
pub fn is_tenant_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `"100000.00 USD"` → Money (amount at the currency's precision).
pub fn parse_money_text(text: &str) -> Option<riverbank_schemas::Money> {
    let (amount, code) = text.trim().split_once(' ')?;
    let currency = riverbank_schemas::Currency::from_code(code.trim()).ok()?;
    riverbank_schemas::Money::parse_major(amount.trim(), currency).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: &str = "RIVERBANK_TEST_NOTHING__";

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, NO_ENV).expect("defaults are valid");
        assert_eq!(c.kafka.environments, vec![Environment::Live, Environment::Sandbox]);
        assert!(c.ingest.webhooks.is_empty());
    }

    #[test]
    fn file_overrides_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("rb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let good = dir.join("good.toml");
        std::fs::write(&good, "[kafka]\nbrokers = \"b:1\"\n[sinks]\nbatch_rows_max = 7\n").expect("write");
        let c = Config::load_from(Some(&good), NO_ENV).expect("valid");
        assert_eq!(c.kafka.brokers, "b:1");
        assert_eq!(c.sinks.batch_rows_max, 7);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[kafka]\nbrokerz = \"b:1\"\n").expect("write");
        let err = Config::load_from(Some(&bad), NO_ENV).expect_err("unknown key");
        assert!(err.to_string().contains("brokerz"), "{err}");

        let zero = dir.join("zero.toml");
        std::fs::write(&zero, "[sinks]\nbatch_rows_max = 0\n[ingest]\nbody_bytes_max = 0\n").expect("write");
        let err = Config::load_from(Some(&zero), NO_ENV).expect_err("zero limits");
        let text = err.to_string();
        assert!(text.contains("sinks.batch_rows_max") && text.contains("ingest.body_bytes_max"), "{text}");

        assert!(matches!(
            Config::load_from(Some(&dir.join("nope.toml")), NO_ENV),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    fn environment_overrides_file() {
        std::env::set_var("RIVERBANK_TEST_ENV__KAFKA__BROKERS", "from-env:9092");
        std::env::set_var("RIVERBANK_TEST_ENV__SINKS__BATCH_ROWS_MAX", "11");
        let c = Config::load_from(None, "RIVERBANK_TEST_ENV__").expect("valid");
        assert_eq!(c.kafka.brokers, "from-env:9092");
        assert_eq!(c.sinks.batch_rows_max, 11);
    }

    #[test]
    fn keys_section_validates() {
        let c = Config::load_from(None, NO_ENV).expect("defaults are valid");
        assert_eq!(c.keys.keks.len(), riverbank_crypto::keys::DataClass::ALL.len());
        assert!(!format!("{c:?}").contains(c.keys.keks[0].key.expose().as_str()));
        let mut bad = c.clone();
        bad.keys.keks.retain(|k| k.class != "pii.dob");
        bad.keys.pseudonym_key = Secret::new("short".into());
        let text = bad.validate().expect_err("invalid").to_string();
        assert!(text.contains("no active key for pii.dob") && text.contains("keys.pseudonym_key"), "{text}");
    }

    #[test]
    fn secrets_never_print() {
        let dir = std::env::temp_dir().join(format!("rb-config-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let f = dir.join("s.toml");
        std::fs::write(
            &f,
            "[postgres]\nurl = \"postgres://u:hunter2@h/db\"\n[[ingest.webhooks]]\nprovider = \"acme\"\ntenant_id = \"t1\"\nenvironment = \"live\"\nsecrets = [\"whsec_c2VjcmV0LXNlY3JldA==\"]\n",
        )
        .expect("write");
        let c = Config::load_from(Some(&f), NO_ENV).expect("valid");
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("whsec_c2Vj"), "{printed}");
        assert_eq!(c.ingest.webhooks[0].secrets[0].expose(), "whsec_c2VjcmV0LXNlY3JldA==");
    }
}
