//! `riverbank audit verify`: checks, offline, that an audit trail is what the audit processor wrote
//! (schemas/src/audit.rs, ARCHITECTURE.md "The audit trail"). Per (tenant, environment) log, in seq
//! order:
//!
//! 1. seq runs 1, 2, 3, … with no gap and no duplicate;
//! 2. each record's `hash` is SHA-256 of its canonical encoding as stored (no field was changed);
//! 3. each record's `prev_hash` is the previous record's `hash` (64 zeros for seq 1);
//! 4. each checkpoint's signature verifies under its key id, its `root_hash` is the RFC 6962 tree head
//!    of records 1..=tree_size and its `last_hash` is record tree_size's hash; no checkpoint covers
//!    more records than the log holds (rows deleted from the end of a checkpointed range).
//!
//! The first failure of each log is named (tenant, environment, seq, audit id or checkpoint id, and
//! what does not match); the exit code is non-zero when any log fails. A log holds one
//! [`merkle::CompactRange`] (at most 64 hashes) and the checkpoints not reached yet, never its records.
//!
//! Sources: an export file (JSON lines or CSV of [`ExportRow`]; read twice, checkpoints first, so their
//! order in the file does not matter), or the live stores (Postgres `audit_log` + `audit_checkpoints`,
//! ClickHouse `audit_trail` + `audit_checkpoints` with FINAL), read in keyset pages of [`PAGE_ROWS`]
//! while the pipeline runs: records first, then the checkpoints up to the page's last seq (past the
//! last page: all of them, and records are read once more when a checkpoint covers more than was read).
//! Records after the last checkpoint are chained but not yet signed: the summary says up to where the
//! log is signed. Only reads; prints ids, seqs and hashes, never record contents.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use riverbank_crypto::merkle::{self, CompactRange};
use riverbank_crypto::sign::{CheckpointSigner, SignError, VerifyingKeys};
use riverbank_runtime::Config;
use riverbank_schemas::audit::{AuditCheckpoint, AuditRecord, ExportRow, GENESIS_HASH};
use riverbank_schemas::Environment;
use uuid::Uuid;

/// Rows read per store query (records or checkpoints of one log).
pub const PAGE_ROWS: u32 = 5_000;
/// Logs (tenant × environment) one run verifies at most; past it the run stops rather than report on
/// part of the trail.
pub const LOGS_MAX: usize = 100_000;
/// Longest line of an export file (bytes); a CSV record may span lines (quoted line breaks), each
/// bounded the same way, and a record at most [`CSV_RECORD_BYTES_MAX`].
pub const LINE_BYTES_MAX: usize = 1 << 20;
/// Longest CSV record of an export file (bytes).
pub const CSV_RECORD_BYTES_MAX: usize = 4 << 20;
/// Checkpoints of an export file held in memory at most (every checkpoint is read before the records;
/// one per 1000 records by default, so a file of 10⁹ records).
pub const FILE_CHECKPOINTS_MAX: usize = 1_000_000;

/// The CLI arguments of `riverbank audit verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// An export (JSON lines or CSV of export rows). Repeat it for consecutive slices of the same logs
    /// (monthly archives), in log order: they are verified as one trail from seq 1.
    #[arg(long)]
    pub file: Vec<PathBuf>,
    /// The exports' format (default: from each extension: .csv is CSV, anything else JSON lines).
    #[arg(long, value_enum, requires = "file")]
    pub format: Option<ExportFormat>,
    /// The configured Postgres (`audit_log`, `audit_checkpoints`).
    #[arg(long)]
    pub postgres: bool,
    /// The configured ClickHouse (`audit_trail`, `audit_checkpoints`, FINAL).
    #[arg(long)]
    pub clickhouse: bool,
    /// A checkpoint public key: 64 hex digits, or `key_id=hex`; repeatable. Default: the config's
    /// `audit.signing_key` and `audit.verify_keys`.
    #[arg(long = "public-key", value_name = "HEX")]
    pub public_keys: Vec<String>,
    /// Only this tenant's logs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this environment's logs (live or sandbox).
    #[arg(long, alias = "env", value_parser = parse_environment)]
    pub environment: Option<Environment>,
}

fn parse_environment(s: &str) -> Result<Environment, String> {
    s.parse()
}

/// The two encodings of an export.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line: `{"record": {…}}` or `{"checkpoint": {…}}`.
    Jsonl,
    /// RFC 4180 with the export header.
    Csv,
}

impl ExportFormat {
    /// `.csv` is CSV; anything else (`.jsonl`, `.ndjson`, `.json`) JSON lines.
    pub fn of_path(path: &Path) -> ExportFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => ExportFormat::Csv,
            _ => ExportFormat::Jsonl,
        }
    }
}

/// One (tenant, environment) log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub tenant_id: String,
    pub environment: Environment,
}

impl LogId {
    pub fn new(tenant_id: &str, environment: Environment) -> Self {
        Self { tenant_id: tenant_id.to_owned(), environment }
    }
    fn of_record(r: &AuditRecord) -> Self {
        Self::new(&r.tenant_id, r.environment)
    }
    fn of_checkpoint(c: &AuditCheckpoint) -> Self {
        Self::new(&c.tenant_id, c.environment)
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {} environment {}", self.tenant_id, self.environment)
    }
}

/// The first thing in a log that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub log: LogId,
    /// The record's position (for a checkpoint: its tree size; for missing records: the first one).
    pub seq: Option<u64>,
    /// The record at `seq`, when there is one.
    pub audit_id: Option<Uuid>,
    /// The checkpoint, when the failure is one.
    pub checkpoint_id: Option<Uuid>,
    pub kind: FailureKind,
    /// What does not match, with both values.
    pub detail: String,
}

/// What kind of failure (for callers and tests; the detail says it in words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A seq is missing (a row deleted) or the log does not start at 1.
    Gap,
    /// A seq comes twice, or goes backwards.
    Duplicate,
    /// The record does not hash to its stored hash: a field was changed.
    RecordHash,
    /// `prev_hash` is not the previous record's hash: a record replaced or re-hashed.
    Chain,
    /// A checkpoint's signature does not verify (bad signature, unknown key id, bad encoding).
    Signature,
    /// A checkpoint's tree head is not the one of the records it covers.
    RootHash,
    /// A checkpoint's chain head is not the hash of its last record.
    LastHash,
    /// A checkpoint covers records the log does not hold.
    Truncated,
    /// A row that is not a valid record or checkpoint (size 0, a hash that is not hex).
    Malformed,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.log)?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        if let Some(id) = self.audit_id {
            write!(f, " audit_id {id}")?;
        }
        if let Some(id) = self.checkpoint_id {
            write!(f, " checkpoint {id}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What one log verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    pub log: LogId,
    pub records: u64,
    pub checkpoints: u64,
    /// The highest tree size a verified checkpoint signs (0: none).
    pub signed_through: u64,
    /// The chain head: the last record's hash.
    pub head_hash: Option<String>,
}

/// The last record verified.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    audit_id: Uuid,
    hash: String,
}

/// The verification of one log, fed in seq order. Holds a compact range and the checkpoints not
/// reached yet, never the records.
#[derive(Debug)]
pub struct LogVerifier {
    log: LogId,
    tree: CompactRange,
    head: Option<Head>,
    /// Checkpoints by tree size, verified when the log reaches that size.
    pending: BTreeMap<u64, Vec<AuditCheckpoint>>,
    checkpoints: u64,
    signed_through: u64,
}

impl LogVerifier {
    pub fn new(log: LogId) -> Self {
        Self {
            log,
            tree: CompactRange::new(),
            head: None,
            pending: BTreeMap::new(),
            checkpoints: 0,
            signed_through: 0,
        }
    }

    /// Records verified so far (the last seq).
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Whether a checkpoint read covers records not read yet.
    pub fn awaits_records(&self) -> bool {
        !self.pending.is_empty()
    }

    fn fail(&self, kind: FailureKind, seq: Option<u64>, audit_id: Option<Uuid>, detail: String) -> Failure {
        Failure { log: self.log.clone(), seq, audit_id, checkpoint_id: None, kind, detail }
    }

    fn fail_checkpoint(&self, cp: &AuditCheckpoint, kind: FailureKind, detail: String) -> Failure {
        let audit_id = self.head.as_ref().filter(|h| h.seq == cp.tree_size).map(|h| h.audit_id);
        Failure {
            log: self.log.clone(),
            seq: Some(cp.tree_size),
            audit_id,
            checkpoint_id: Some(cp.checkpoint_id),
            kind,
            detail,
        }
    }

    /// A checkpoint of this log, verified now if the log is at its size, else when it gets there. A
    /// checkpoint whose size was passed already cannot be checked (the leaves are gone): the caller
    /// must give checkpoints before the records they cover.
    pub fn checkpoint(&mut self, cp: AuditCheckpoint, keys: &VerifyingKeys) -> Result<(), Failure> {
        if LogId::of_checkpoint(&cp) != self.log {
            return Err(self.fail_checkpoint(
                &cp,
                FailureKind::Malformed,
                format!("the checkpoint belongs to {}, not to this log", LogId::of_checkpoint(&cp)),
            ));
        }
        if cp.tree_size == 0 {
            return Err(self.fail_checkpoint(
                &cp,
                FailureKind::Malformed,
                "tree_size 0 signs nothing".into(),
            ));
        }
        match cp.tree_size.cmp(&self.tree.size()) {
            std::cmp::Ordering::Greater => {
                self.pending.entry(cp.tree_size).or_default().push(cp);
                Ok(())
            }
            std::cmp::Ordering::Equal => self.verify_checkpoint(&cp, keys),
            std::cmp::Ordering::Less => Err(self.fail_checkpoint(
                &cp,
                FailureKind::Malformed,
                format!(
                    "the checkpoint was read after record {} (past its tree size): the source is not in order",
                    self.tree.size()
                ),
            )),
        }
    }

    /// The next record of this log.
    pub fn record(&mut self, r: &AuditRecord, keys: &VerifyingKeys) -> Result<(), Failure> {
        let here = (Some(r.seq), Some(r.audit_id));
        if LogId::of_record(r) != self.log {
            return Err(self.fail(
                FailureKind::Malformed,
                here.0,
                here.1,
                format!("the record belongs to {}, not to this log", LogId::of_record(r)),
            ));
        }
        let last = self.tree.size();
        let want = last + 1;
        if r.seq != want {
            let after = match &self.head {
                Some(h) => format!("seq {} (audit_id {})", h.seq, h.audit_id),
                None => "the start of the log".to_owned(),
            };
            return Err(if r.seq <= last {
                self.fail(
                    FailureKind::Duplicate,
                    here.0,
                    here.1,
                    format!("seq {} comes after {after}: a duplicate or out of order", r.seq),
                )
            } else {
                let missing = if r.seq - want == 1 {
                    format!("seq {want} is missing")
                } else {
                    format!("seq {want}..={} are missing", r.seq - 1)
                };
                self.fail(
                    FailureKind::Gap,
                    here.0,
                    here.1,
                    format!("seq {} follows {after}: {missing} (deleted?)", r.seq),
                )
            });
        }
        let computed = r.compute_hash();
        if computed != r.hash {
            return Err(self.fail(
                FailureKind::RecordHash,
                here.0,
                here.1,
                format!(
                    "the record does not hash to its stored hash (stored {}, computed {computed}): a field was changed",
                    r.hash
                ),
            ));
        }
        let (prev, what) = match &self.head {
            Some(h) => (h.hash.as_str(), format!("the hash of seq {} (audit_id {})", h.seq, h.audit_id)),
            None => (GENESIS_HASH, "64 zeros (the first record)".to_owned()),
        };
        if r.prev_hash != prev {
            return Err(self.fail(
                FailureKind::Chain,
                here.0,
                here.1,
                format!(
                    "prev_hash {} is not {what}, {prev}: the chain is broken (a record replaced, re-hashed or reordered)",
                    r.prev_hash
                ),
            ));
        }
        self.tree.push(merkle::leaf_hash(&r.canonical_bytes()));
        debug_assert_eq!(self.tree.size(), r.seq);
        self.head = Some(Head { seq: r.seq, audit_id: r.audit_id, hash: r.hash.clone() });
        if let Some(due) = self.pending.remove(&r.seq) {
            for cp in &due {
                self.verify_checkpoint(cp, keys)?;
            }
        }
        Ok(())
    }

    /// Checks a checkpoint of the current size: signature first (is the statement authentic?), then
    /// what it states against the records read.
    fn verify_checkpoint(&mut self, cp: &AuditCheckpoint, keys: &VerifyingKeys) -> Result<(), Failure> {
        debug_assert_eq!(cp.tree_size, self.tree.size());
        if let Err(e) = keys.verify(&cp.key_id, &cp.signed_message(), &cp.signature) {
            let detail = match e {
                SignError::UnknownKeyId(id) => format!(
                    "signed under key id {id}, which is not among the keys given ({})",
                    keys.key_ids().collect::<Vec<_>>().join(", ")
                ),
                SignError::BadEncoding => "the signature is not base64 of 64 bytes".to_owned(),
                other => format!("{other}: the checkpoint was changed or forged"),
            };
            return Err(self.fail_checkpoint(cp, FailureKind::Signature, detail));
        }
        let root = self.tree.root();
        let computed = hex(&root);
        if merkle::parse_hash(&cp.root_hash).ok() != Some(root) {
            return Err(self.fail_checkpoint(
                cp,
                FailureKind::RootHash,
                format!(
                    "the signed root_hash {} is not the Merkle tree head of records 1..={} as stored ({computed}): \
                     records it covers were changed, removed or re-chained",
                    cp.root_hash, cp.tree_size
                ),
            ));
        }
        let head = self.head.as_ref().map(|h| h.hash.as_str()).unwrap_or(GENESIS_HASH);
        if cp.last_hash != head {
            return Err(self.fail_checkpoint(
                cp,
                FailureKind::LastHash,
                format!(
                    "the signed last_hash {} is not the hash of seq {} ({head})",
                    cp.last_hash, cp.tree_size
                ),
            ));
        }
        self.checkpoints += 1;
        self.signed_through = self.signed_through.max(cp.tree_size);
        Ok(())
    }

    /// The log has no more records: a checkpoint not reached means records were removed.
    pub fn finish(self) -> Result<LogSummary, Failure> {
        if let Some((&size, cps)) = self.pending.iter().next() {
            let end = self.tree.size();
            let cp = &cps[0];
            let missing = if size - end == 1 {
                format!("seq {size} is missing")
            } else {
                format!("seq {}..={size} are missing", end + 1)
            };
            return Err(Failure {
                log: self.log.clone(),
                seq: Some(end + 1),
                audit_id: None,
                checkpoint_id: Some(cp.checkpoint_id),
                kind: FailureKind::Truncated,
                detail: format!(
                    "checkpoint {} signs {size} records but the log ends at seq {end}: {missing} (deleted?)",
                    cp.checkpoint_id
                ),
            });
        }
        Ok(LogSummary {
            records: self.tree.size(),
            checkpoints: self.checkpoints,
            signed_through: self.signed_through,
            head_hash: self.head.map(|h| h.hash),
            log: self.log,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Many logs at once (an export file interleaves them); each stops at its first failure.
#[derive(Debug)]
pub struct Verifier {
    keys: VerifyingKeys,
    logs: BTreeMap<LogId, LogState>,
}

impl Verifier {
    pub fn new(keys: VerifyingKeys) -> Self {
        Self { keys, logs: BTreeMap::new() }
    }

    /// A checkpoint, before the records it covers.
    pub fn checkpoint(&mut self, cp: AuditCheckpoint) -> anyhow::Result<()> {
        let Self { keys, logs } = self;
        if let Ok(v) = log_entry(logs, LogId::of_checkpoint(&cp))? {
            if let Err(f) = v.checkpoint(cp, keys) {
                logs.insert(f.log.clone(), Err(f));
            }
        }
        Ok(())
    }

    /// The next record of its log.
    pub fn record(&mut self, r: &AuditRecord) -> anyhow::Result<()> {
        let Self { keys, logs } = self;
        if let Ok(v) = log_entry(logs, LogId::of_record(r))? {
            if let Err(f) = v.record(r, keys) {
                logs.insert(f.log.clone(), Err(f));
            }
        }
        Ok(())
    }

    /// Whether a log failed already (a reader may skip its remaining rows).
    pub fn failed(&self, log: &LogId) -> bool {
        matches!(self.logs.get(log), Some(Err(_)))
    }

    /// Every log read, ended.
    pub fn finish(self) -> Report {
        Report {
            logs: self.logs.into_values().map(|s| s.and_then(LogVerifier::finish)).collect(),
            notes: Vec::new(),
        }
    }
}

type LogState = Result<LogVerifier, Failure>;

fn log_entry(logs: &mut BTreeMap<LogId, LogState>, id: LogId) -> anyhow::Result<&mut LogState> {
    if !logs.contains_key(&id) {
        anyhow::ensure!(logs.len() < LOGS_MAX, "more than {LOGS_MAX} logs: verify per tenant (--tenant)");
    }
    Ok(logs.entry(id.clone()).or_insert_with(|| Ok(LogVerifier::new(id))))
}

/// The outcome per log, in (tenant, environment) order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub logs: Vec<Result<LogSummary, Failure>>,
    /// Things that are not failures but limit what was verified (rows written before the chain).
    pub notes: Vec<String>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.logs.iter().filter_map(|l| l.as_ref().err())
    }
    pub fn is_clean(&self) -> bool {
        self.failures().next().is_none()
    }
    fn verified(&self) -> impl Iterator<Item = &LogSummary> {
        self.logs.iter().filter_map(|l| l.as_ref().ok())
    }
    pub fn records(&self) -> u64 {
        self.verified().map(|s| s.records).sum()
    }
    pub fn checkpoints(&self) -> u64 {
        self.verified().map(|s| s.checkpoints).sum()
    }

    /// One line per log, then the summary.
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        for l in &self.logs {
            match l {
                Ok(s) => {
                    let signed = match s.signed_through {
                        0 => "no checkpoint yet".to_owned(),
                        n if n == s.records => format!("signed through seq {n}"),
                        n => format!(
                            "signed through seq {n}, seq {}..={} chained, not yet signed",
                            n + 1,
                            s.records
                        ),
                    };
                    out.push_str(&format!(
                        "ok      {}: {} records, {} checkpoints, {signed}, head {}\n",
                        s.log,
                        s.records,
                        s.checkpoints,
                        s.head_hash.as_deref().unwrap_or("-")
                    ));
                }
                Err(f) => out.push_str(&format!("FAILED  {f}\n")),
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note    {n}\n"));
        }
        let failed = self.failures().count();
        out.push_str(&format!(
            "{source}: {} logs, {} records and {} checkpoints verified; {failed} logs failed\n",
            self.logs.len() - failed,
            self.records(),
            self.checkpoints()
        ));
        out
    }
}

/// The keys checkpoints are checked with: the command line's, else the config's signing key and
/// earlier keys.
pub fn verifying_keys(cfg: &Config, given: &[String]) -> anyhow::Result<VerifyingKeys> {
    if !given.is_empty() {
        return VerifyingKeys::parse(given.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--public-key: {e}"));
    }
    let signer = CheckpointSigner::from_seed_hex(cfg.audit.signing_key.expose())
        .map_err(|e| anyhow::anyhow!("audit.signing_key: {e}"))?;
    let mut keys = signer.verifying_keys();
    for k in &cfg.audit.verify_keys {
        keys.add(k).map_err(|e| anyhow::anyhow!("audit.verify_keys: {e}"))?;
    }
    Ok(keys)
}

/// Which logs to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub environment: Option<Environment>,
}

impl Filter {
    fn admits(&self, log: &LogId) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == log.tenant_id)
            && self.environment.is_none_or(|e| e == log.environment)
    }
}

/// `riverbank audit verify`: every source asked for; an error (non-zero exit) naming the first failure
/// when any log fails.
pub async fn run(cfg: &Config, args: &VerifyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.file.is_empty() || args.postgres || args.clickhouse,
        "name a source: --file PATH, --postgres or --clickhouse"
    );
    let keys = verifying_keys(cfg, &args.public_keys)?;
    let filter = Filter { tenant: args.tenant.clone(), environment: args.environment };
    let mut first_failure = None;
    let mut failed_logs = 0usize;
    let mut sources = Vec::new();
    if !args.file.is_empty() {
        let files: Vec<(PathBuf, ExportFormat)> = args
            .file
            .iter()
            .map(|p| (p.clone(), args.format.unwrap_or_else(|| ExportFormat::of_path(p))))
            .collect();
        let name = args.file.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + ");
        sources.push((format!("file {name}"), verify_files(&files, &keys, &filter)?));
    }
    if args.postgres {
        sources.push(("postgres".to_owned(), verify_postgres(cfg, &keys, &filter).await?));
    }
    if args.clickhouse {
        sources.push(("clickhouse".to_owned(), verify_clickhouse(cfg, &keys, &filter).await?));
    }
    for (name, report) in &sources {
        print!("{}", report.render(name));
        failed_logs += report.failures().count();
        if first_failure.is_none() {
            first_failure = report.failures().next().map(|f| format!("{name}: {f}"));
        }
    }
    match first_failure {
        None => Ok(()),
        Some(f) => anyhow::bail!("the audit trail does not verify ({failed_logs} logs failed); first: {f}"),
    }
}

// ---- Export files --------------------------------------------------------------------------------

/// Verifies an export file: one pass for the checkpoints, one for the records. A line that is not an
/// export row stops the run with its line number (and its seq and audit id when they can be read).
pub fn verify_file(
    path: &Path,
    format: ExportFormat,
    keys: &VerifyingKeys,
    filter: &Filter,
) -> anyhow::Result<Report> {
    verify_files(&[(path.to_path_buf(), format)], keys, filter)
}

/// Verifies consecutive slices of the same logs as one trail: every file's checkpoints first, then
/// every file's records in the order given.
pub fn verify_files(
    files: &[(PathBuf, ExportFormat)],
    keys: &VerifyingKeys,
    filter: &Filter,
) -> anyhow::Result<Report> {
    let mut v = Verifier::new(keys.clone());
    let mut checkpoints = 0usize;
    for (path, format) in files {
        read_export(path, *format, |_, row| {
            if let ExportRow::Checkpoint(cp) = row {
                if filter.admits(&LogId::of_checkpoint(&cp)) {
                    checkpoints += 1;
                    anyhow::ensure!(
                        checkpoints <= FILE_CHECKPOINTS_MAX,
                        "more than {FILE_CHECKPOINTS_MAX} checkpoints: verify per tenant (--tenant)"
                    );
                    v.checkpoint(cp)?;
                }
            }
            Ok(())
        })?;
    }
    for (path, format) in files {
        read_export(path, *format, |_, row| {
            if let ExportRow::Record(r) = row {
                if filter.admits(&LogId::of_record(&r)) {
                    v.record(&r)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(v.finish())
}

/// Calls `each(line, row)` for every row of an export, in file order.
pub fn read_export(
    path: &Path,
    format: ExportFormat,
    mut each: impl FnMut(u64, ExportRow) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let at = |line: u64| format!("{}:{line}", path.display());
    let mut buf = Vec::new();
    let mut line = 0u64;
    // CSV: the header, then records, each possibly over several lines.
    let mut header: Option<String> = None;
    let mut record = String::new();
    let mut record_line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .by_ref()
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        line += 1;
        anyhow::ensure!(
            buf.len() <= LINE_BYTES_MAX,
            "{}: a line longer than {LINE_BYTES_MAX} bytes",
            at(line)
        );
        let text = std::str::from_utf8(&buf).map_err(|e| anyhow::anyhow!("{}: not UTF-8 ({e})", at(line)))?;
        match format {
            ExportFormat::Jsonl => {
                if text.trim().is_empty() {
                    continue;
                }
                let row = serde_json::from_str::<ExportRow>(text).map_err(|e| {
                    anyhow::anyhow!("{}: not an export row ({e}){}", at(line), row_hint(text))
                })?;
                each(line, row)?;
            }
            ExportFormat::Csv => {
                if record.is_empty() {
                    record_line = line;
                }
                record.push_str(text);
                anyhow::ensure!(
                    record.len() <= CSV_RECORD_BYTES_MAX,
                    "{}: a CSV record longer than {CSV_RECORD_BYTES_MAX} bytes",
                    at(record_line)
                );
                // A record is complete when its quotes balance (RFC 4180 doubles quotes inside fields).
                if record.bytes().filter(|b| *b == b'"').count() % 2 == 1 {
                    continue;
                }
                let complete = std::mem::take(&mut record);
                match &header {
                    None => {
                        let want = ExportRow::csv_header();
                        anyhow::ensure!(
                            complete.trim_end() == want.trim_end(),
                            "{}: the CSV header is not the export's ({})",
                            at(record_line),
                            want.trim_end()
                        );
                        header = Some(complete);
                    }
                    Some(h) => {
                        if complete.trim().is_empty() {
                            continue;
                        }
                        let mut one = h.clone();
                        one.push_str(&complete);
                        let mut rows = ExportRow::parse_csv(&one).map_err(|e| {
                            anyhow::anyhow!(
                                "{}: not an export row ({e}){}",
                                at(record_line),
                                csv_hint(&complete)
                            )
                        })?;
                        anyhow::ensure!(
                            rows.len() == 1,
                            "{}: {} rows in one CSV record",
                            at(record_line),
                            rows.len()
                        );
                        each(record_line, rows.remove(0))?;
                    }
                }
            }
        }
    }
    anyhow::ensure!(record.is_empty(), "{}: a quoted CSV field is not closed", at(record_line));
    Ok(())
}

/// For a JSON line that is not an export row: its tenant, seq, audit id or checkpoint id when they read.
fn row_hint(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return String::new();
    };
    let (kind, inner) = match (v.get("record"), v.get("checkpoint")) {
        (Some(r), _) => ("record", r),
        (_, Some(c)) => ("checkpoint", c),
        _ => return String::new(),
    };
    let fields: Vec<String> = ["tenant_id", "environment", "seq", "audit_id", "tree_size", "checkpoint_id"]
        .iter()
        .filter_map(|k| {
            inner
                .get(*k)
                .map(|val| format!("{k} {}", val.as_str().map(str::to_owned).unwrap_or(val.to_string())))
        })
        .collect();
    if fields.is_empty() {
        return String::new();
    }
    format!("; the {kind} reads as {}", fields.join(" "))
}

/// For a CSV record that is not an export row: its first fields (kind, audit_id, tenant, environment,
/// seq) as far as they split.
fn csv_hint(record: &str) -> String {
    let first: Vec<&str> = record.splitn(6, ',').take(5).map(|f| f.trim_matches('"')).collect();
    format!("; the row starts {}", first.join(","))
}

// ---- The stores ---------------------------------------------------------------------------------

async fn bounded<T, E: fmt::Display>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow::anyhow!("{what}: no answer within {} ms", limit.as_millis())),
    }
}

/// Postgres: the logs, then per log its records and checkpoints in keyset pages.
pub async fn verify_postgres(cfg: &Config, keys: &VerifyingKeys, filter: &Filter) -> anyhow::Result<Report> {
    use riverbank_runtime::audit::{AuditRow, CheckpointRow, AUDIT_COLUMNS, CHECKPOINT_COLUMNS};
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false)
        .await
        .context("connecting to postgres")?;
    let limit = Duration::from_millis(
        cfg.postgres.statement_timeout_ms.saturating_add(cfg.postgres.acquire_timeout_ms),
    );
    let tenant = filter.tenant.as_deref();
    let env = filter.environment.map(Environment::as_str);
    let logs: Vec<(String, String)> = bounded(
        limit,
        "postgres: audit logs",
        sqlx::query_as(
            "SELECT tenant_id, environment FROM audit_log
              WHERE seq IS NOT NULL AND ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR environment = $2)
             UNION
             SELECT tenant_id, environment FROM audit_checkpoints
              WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR environment = $2)
             ORDER BY 1, 2 LIMIT $3",
        )
        .bind(tenant)
        .bind(env)
        .bind(LOGS_MAX as i64 + 1)
        .fetch_all(&pool),
    )
    .await?;
    anyhow::ensure!(logs.len() <= LOGS_MAX, "more than {LOGS_MAX} logs: verify per tenant (--tenant)");
    let mut report = Report::default();
    for (tenant_id, environment) in logs {
        let environment: Environment =
            environment.parse().map_err(|e| anyhow::anyhow!("postgres: tenant {tenant_id}: {e}"))?;
        let log = LogId::new(&tenant_id, environment);
        let mut v = LogVerifier::new(log.clone());
        let (mut rec_after, mut cp_after) = (0i64, 0i64);
        let outcome: Result<(), Failure> = 'log: loop {
            let rows: Vec<AuditRow> = bounded(
                limit,
                "postgres: audit_log",
                sqlx::query_as(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log
                      WHERE tenant_id = $1 AND environment = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                ))
                .bind(&log.tenant_id)
                .bind(environment.as_str())
                .bind(rec_after)
                .bind(i64::from(PAGE_ROWS))
                .fetch_all(&pool),
            )
            .await?;
            let last_page = rows.len() < PAGE_ROWS as usize;
            let none_new = rows.is_empty();
            // Every checkpoint up to this page's last seq (all that remain after the last page) goes in
            // before the records, so each is checked when the log reaches its size.
            let upto = if last_page { i64::MAX } else { rows.last().and_then(|r| r.seq).unwrap_or(i64::MAX) };
            let cps: Vec<CheckpointRow> = bounded(
                limit,
                "postgres: audit_checkpoints",
                sqlx::query_as(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
                      WHERE tenant_id = $1 AND environment = $2 AND tree_size > $3 AND tree_size <= $4
                      ORDER BY tree_size LIMIT $5"
                ))
                .bind(&log.tenant_id)
                .bind(environment.as_str())
                .bind(cp_after)
                .bind(upto)
                .bind(i64::from(PAGE_ROWS) + 1)
                .fetch_all(&pool),
            )
            .await?;
            anyhow::ensure!(
                cps.len() <= PAGE_ROWS as usize,
                "postgres: {log}: more than {PAGE_ROWS} checkpoints in one page of records"
            );
            for row in cps {
                cp_after = cp_after.max(row.tree_size);
                let cp = row.to_checkpoint().map_err(|e| anyhow::anyhow!("postgres: {log}: {e}"))?;
                if let Err(f) = v.checkpoint(cp, keys) {
                    break 'log Err(f);
                }
            }
            for row in rows {
                rec_after = row.seq.unwrap_or(rec_after);
                let r = row.to_record().map_err(|e| anyhow::anyhow!("postgres: {log}: {e}"))?;
                if let Err(f) = v.record(&r, keys) {
                    break 'log Err(f);
                }
            }
            // A checkpoint beyond the records read may be one whose records landed after the records
            // query (the sinks write records, then checkpoints): read once more before calling them
            // missing.
            if last_page && (none_new || !v.awaits_records()) {
                break Ok(());
            }
        };
        report.logs.push(outcome.and_then(|()| v.finish()));
    }
    let pre_chain: i64 = bounded(
        limit,
        "postgres: audit_log",
        sqlx::query_scalar(
            "SELECT count(*)::int8 FROM audit_log
              WHERE seq IS NULL AND ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR environment = $2)",
        )
        .bind(tenant)
        .bind(env)
        .fetch_one(&pool),
    )
    .await?;
    if pre_chain > 0 {
        report
            .notes
            .push(format!("postgres: {pre_chain} audit_log rows predate the chain (no seq): not verifiable"));
    }
    pool.close().await;
    Ok(report)
}

/// ClickHouse: the same, over `audit_trail FINAL` and `audit_checkpoints FINAL`.
pub async fn verify_clickhouse(
    cfg: &Config,
    keys: &VerifyingKeys,
    filter: &Filter,
) -> anyhow::Result<Report> {
    use riverbank_sinks::clickhouse::{AuditCheckpointRow, AuditTrailRow};
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Log {
        tenant_id: String,
        environment: String,
    }
    let ch = riverbank_runtime::stores::clickhouse_client(&cfg.clickhouse);
    let limit = Duration::from_millis(cfg.clickhouse.request_timeout_ms);
    let seconds = limit.as_millis().div_ceil(1000).max(1).to_string();
    let query = |sql: &str| ch.query(sql).with_setting("max_execution_time", seconds.clone());
    let where_filter = "(? = '' OR tenant_id = ?) AND (? = '' OR toString(environment) = ?)";
    let tenant = filter.tenant.clone().unwrap_or_default();
    let env = filter.environment.map(Environment::as_str).unwrap_or_default();
    let mut logs = BTreeSet::new();
    for table in ["audit_trail", "audit_checkpoints"] {
        let rows: Vec<Log> = bounded(
            limit,
            &format!("clickhouse: {table}"),
            query(&format!(
                "SELECT tenant_id, toString(environment) AS environment FROM {table} WHERE {where_filter}
                 GROUP BY tenant_id, environment ORDER BY tenant_id, environment LIMIT {}",
                LOGS_MAX + 1
            ))
            .bind(&tenant)
            .bind(&tenant)
            .bind(env)
            .bind(env)
            .fetch_all::<Log>(),
        )
        .await?;
        for l in rows {
            let e: Environment =
                l.environment.parse().map_err(|e| anyhow::anyhow!("clickhouse: {table}: {e}"))?;
            logs.insert(LogId::new(&l.tenant_id, e));
        }
    }
    anyhow::ensure!(logs.len() <= LOGS_MAX, "more than {LOGS_MAX} logs: verify per tenant (--tenant)");
    let mut report = Report::default();
    for log in logs {
        let mut v = LogVerifier::new(log.clone());
        let (mut rec_after, mut cp_after) = (0u64, 0u64);
        let outcome: Result<(), Failure> = 'log: loop {
            let rows: Vec<AuditTrailRow> = bounded(
                limit,
                "clickhouse: audit_trail",
                query(&format!(
                    "SELECT ?fields FROM audit_trail FINAL
                      WHERE tenant_id = ? AND environment = ? AND seq > ? ORDER BY seq LIMIT {PAGE_ROWS}"
                ))
                .bind(&log.tenant_id)
                .bind(log.environment.as_str())
                .bind(rec_after)
                .fetch_all::<AuditTrailRow>(),
            )
            .await?;
            let last_page = rows.len() < PAGE_ROWS as usize;
            let none_new = rows.is_empty();
            let upto = if last_page { u64::MAX } else { rows.last().map(|r| r.seq).unwrap_or(u64::MAX) };
            let cps: Vec<AuditCheckpointRow> = bounded(
                limit,
                "clickhouse: audit_checkpoints",
                query(&format!(
                    "SELECT ?fields FROM audit_checkpoints FINAL
                      WHERE tenant_id = ? AND environment = ? AND tree_size > ? AND tree_size <= ?
                      ORDER BY tree_size LIMIT {}",
                    PAGE_ROWS + 1
                ))
                .bind(&log.tenant_id)
                .bind(log.environment.as_str())
                .bind(cp_after)
                .bind(upto)
                .fetch_all::<AuditCheckpointRow>(),
            )
            .await?;
            anyhow::ensure!(
                cps.len() <= PAGE_ROWS as usize,
                "clickhouse: {log}: more than {PAGE_ROWS} checkpoints in one page of records"
            );
            for row in cps {
                cp_after = cp_after.max(row.tree_size);
                let cp = row.to_checkpoint().map_err(|e| anyhow::anyhow!("clickhouse: {log}: {e}"))?;
                if let Err(f) = v.checkpoint(cp, keys) {
                    break 'log Err(f);
                }
            }
            for row in rows {
                rec_after = row.seq;
                let r = row.to_record().map_err(|e| anyhow::anyhow!("clickhouse: {log}: {e}"))?;
                if let Err(f) = v.record(&r, keys) {
                    break 'log Err(f);
                }
            }
            // A checkpoint beyond the records read may be one whose records landed after the records
            // query (the sinks write records, then checkpoints): read once more before calling them
            // missing.
            if last_page && (none_new || !v.awaits_records()) {
                break Ok(());
            }
        };
        report.logs.push(outcome.and_then(|()| v.finish()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::{DateTime, Utc};
    use riverbank_crypto::merkle::leaf_hash;

    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed_hex(SEED).unwrap()
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap()
    }

    /// A chained log of `n` records for `tenant`, with a signed checkpoint after every `every`.
    fn log(tenant: &str, n: u64, every: u64) -> Vec<ExportRow> {
        let s = signer();
        let mut out = Vec::new();
        let mut prev = GENESIS_HASH.to_owned();
        let mut leaves = Vec::new();
        for seq in 1..=n {
            let mut r = AuditRecord {
                audit_id: Uuid::from_u128(u128::from(seq) | (u128::from(tenant.len() as u64) << 64)),
                tenant_id: tenant.into(),
                environment: Environment::Live,
                seq,
                actor: "provider:acmepay".into(),
                action: "transfer.status_changed".into(),
                resource_type: "transfer".into(),
                resource_id: format!("tr_{seq}"),
                before: (seq % 2 == 0).then(|| "pending".into()),
                after: Some("completed".into()),
                ip: None,
                user_agent: Some("curl/8, \"x\"\nsecond line".into()),
                request_id: None,
                trace_id: None,
                source_event_id: Uuid::from_u128(1000 + u128::from(seq)),
                source_event_type: "transfer.status_changed".into(),
                occurred_at: at(1_790_000_000_000 + seq as i64),
                recorded_at: at(1_790_000_000_500 + seq as i64),
                payload_bytes: seq * 10,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            leaves.push(leaf_hash(&r.canonical_bytes()));
            out.push(ExportRow::Record(r));
            if seq % every == 0 {
                out.push(ExportRow::Checkpoint(checkpoint(&s, tenant, seq, &merkle::root(&leaves), &prev)));
            }
        }
        out
    }

    fn checkpoint(
        s: &CheckpointSigner,
        tenant: &str,
        size: u64,
        root: &[u8; 32],
        last: &str,
    ) -> AuditCheckpoint {
        let mut cp = AuditCheckpoint {
            checkpoint_id: Uuid::from_u128(u128::from(size) << 32),
            tenant_id: tenant.into(),
            environment: Environment::Live,
            tree_size: size,
            root_hash: hex(root),
            last_hash: last.into(),
            occurred_at: at(1_790_000_001_000 + size as i64),
            key_id: s.key_id().into(),
            signature: String::new(),
        };
        cp.signature = s.sign(&cp.signed_message());
        cp
    }

    fn verify(rows: &[ExportRow]) -> Report {
        let mut v = Verifier::new(signer().verifying_keys());
        for row in rows {
            if let ExportRow::Checkpoint(cp) = row {
                v.checkpoint(cp.clone()).unwrap();
            }
        }
        for row in rows {
            if let ExportRow::Record(r) = row {
                v.record(r).unwrap();
            }
        }
        v.finish()
    }

    fn only_failure(rows: &[ExportRow]) -> Failure {
        let report = verify(rows);
        let f: Vec<_> = report.failures().cloned().collect();
        assert_eq!(f.len(), 1, "{}", report.render("test"));
        f[0].clone()
    }

    fn record_mut(rows: &mut [ExportRow], seq: u64) -> &mut AuditRecord {
        rows.iter_mut()
            .find_map(|r| match r {
                ExportRow::Record(r) if r.seq == seq => Some(r),
                _ => None,
            })
            .unwrap()
    }

    fn audit_id(rows: &[ExportRow], seq: u64) -> Uuid {
        rows.iter()
            .find_map(|r| match r {
                ExportRow::Record(r) if r.seq == seq => Some(r.audit_id),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn an_untouched_trail_verifies_every_log() {
        let mut rows = log("tenant-a", 25, 10);
        rows.extend(log("tenant-bb", 7, 7));
        rows.extend(log("tenant-ccc", 3, 100));
        let report = verify(&rows);
        assert!(report.is_clean(), "{}", report.render("test"));
        assert_eq!((report.logs.len(), report.records(), report.checkpoints()), (3, 35, 3));
        let text = report.render("test");
        assert!(text.contains("signed through seq 20, seq 21..=25 chained, not yet signed"), "{text}");
        assert!(text.contains("no checkpoint yet"), "{text}");
        assert!(
            text.contains("test: 3 logs, 35 records and 3 checkpoints verified; 0 logs failed"),
            "{text}"
        );
    }

    #[test]
    fn a_changed_field_is_named_by_seq_and_audit_id() {
        let mut rows = log("tenant-a", 12, 5);
        record_mut(&mut rows, 7).resource_id = "tr_forged".into();
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq, f.audit_id), (FailureKind::RecordHash, Some(7), Some(audit_id(&rows, 7))));
        let text = f.to_string();
        assert!(text.starts_with("tenant tenant-a environment live seq 7 audit_id "), "{text}");
        assert!(text.contains("a field was changed"), "{text}");
    }

    #[test]
    fn a_changed_and_rehashed_record_breaks_the_next_link() {
        let mut rows = log("tenant-a", 12, 100);
        let r = record_mut(&mut rows, 4);
        r.after = Some("failed".into());
        r.hash = r.compute_hash();
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq), (FailureKind::Chain, Some(5)));
        assert!(f.detail.contains("the hash of seq 4"), "{f}");
    }

    #[test]
    fn a_rechained_log_fails_at_the_checkpoint_that_signed_it() {
        let mut rows = log("tenant-a", 12, 10);
        // Change record 3, then re-chain everything after it: every link holds, the signed head does not.
        let mut prev = GENESIS_HASH.to_owned();
        for row in rows.iter_mut() {
            if let ExportRow::Record(r) = row {
                if r.seq == 3 {
                    r.payload_bytes = 1;
                }
                r.prev_hash = prev.clone();
                r.hash = r.compute_hash();
                prev = r.hash.clone();
            }
        }
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq, f.audit_id), (FailureKind::RootHash, Some(10), Some(audit_id(&rows, 10))));
        assert!(f.checkpoint_id.is_some());
    }

    #[test]
    fn a_deleted_record_is_a_gap() {
        let mut rows = log("tenant-a", 12, 5);
        rows.retain(|r| !matches!(r, ExportRow::Record(r) if r.seq == 6));
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq, f.audit_id), (FailureKind::Gap, Some(7), Some(audit_id(&rows, 7))));
        assert!(f.detail.contains("seq 7 follows seq 5") && f.detail.contains("seq 6 is missing"), "{f}");

        let mut first = log("tenant-a", 4, 5);
        first.remove(0);
        let f = only_failure(&first);
        assert_eq!((f.kind, f.seq), (FailureKind::Gap, Some(2)));
        assert!(f.detail.contains("the start of the log"), "{f}");
    }

    #[test]
    fn records_deleted_from_the_end_of_a_signed_range_are_named() {
        let mut rows = log("tenant-a", 10, 10);
        rows.retain(|r| !matches!(r, ExportRow::Record(r) if r.seq >= 9));
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq), (FailureKind::Truncated, Some(9)));
        assert!(
            f.detail.contains("signs 10 records but the log ends at seq 8: seq 9..=10 are missing"),
            "{f}"
        );
    }

    #[test]
    fn swapped_seqs_and_duplicates_are_named() {
        // Swap the seq of records 4 and 5 (each keeps its hash), then read in seq order.
        let mut rows = log("tenant-a", 8, 100);
        record_mut(&mut rows, 4).seq = 0;
        record_mut(&mut rows, 5).seq = 4;
        record_mut(&mut rows, 0).seq = 5;
        rows.sort_by_key(|r| match r {
            ExportRow::Record(r) => r.seq,
            ExportRow::Checkpoint(c) => c.tree_size,
        });
        let f = only_failure(&rows);
        assert_eq!((f.kind, f.seq), (FailureKind::RecordHash, Some(4)));

        let mut dup = log("tenant-a", 5, 100);
        let copy = dup[2].clone();
        dup.insert(3, copy);
        let f = only_failure(&dup);
        assert_eq!((f.kind, f.seq), (FailureKind::Duplicate, Some(3)));
    }

    #[test]
    fn checkpoint_failures_name_the_checkpoint() {
        let base = log("tenant-a", 10, 5);
        let cp_at = |rows: &mut Vec<ExportRow>, size: u64| -> usize {
            rows.iter().position(|r| matches!(r, ExportRow::Checkpoint(c) if c.tree_size == size)).unwrap()
        };
        let edit = |f: &dyn Fn(&mut AuditCheckpoint)| {
            let mut rows = base.clone();
            let i = cp_at(&mut rows, 5);
            if let ExportRow::Checkpoint(c) = &mut rows[i] {
                f(c);
            }
            only_failure(&rows)
        };
        // A changed statement no longer matches its signature.
        let f = edit(&|c| c.root_hash = "ab".repeat(32));
        assert_eq!((f.kind, f.seq, f.audit_id), (FailureKind::Signature, Some(5), Some(audit_id(&base, 5))));
        // Re-signed by someone else.
        let other = CheckpointSigner::from_seed(&[7; 32]);
        let f = edit(&|c| {
            c.key_id = other.key_id().into();
            c.signature = other.sign(&c.signed_message());
        });
        assert_eq!(f.kind, FailureKind::Signature);
        assert!(f.detail.contains("not among the keys given"), "{f}");
        let f = edit(&|c| c.signature = "%%%".into());
        assert!(f.detail.contains("not base64"), "{f}");
        // Authentic signatures over wrong statements (as a signer that lied would make them).
        let s = signer();
        let f = edit(&|c| {
            c.root_hash = "ab".repeat(32);
            c.signature = s.sign(&c.signed_message());
        });
        assert_eq!(f.kind, FailureKind::RootHash);
        let f = edit(&|c| {
            c.last_hash = "cd".repeat(32);
            c.signature = s.sign(&c.signed_message());
        });
        assert_eq!(f.kind, FailureKind::LastHash);
        let f = edit(&|c| {
            c.tree_size = 0;
        });
        assert_eq!(f.kind, FailureKind::Malformed);
    }

    #[test]
    fn a_checkpoint_after_its_records_cannot_be_checked() {
        let rows = log("tenant-a", 6, 3);
        let keys = signer().verifying_keys();
        let mut v = LogVerifier::new(LogId::new("tenant-a", Environment::Live));
        for row in &rows {
            if let ExportRow::Record(r) = row {
                v.record(r, &keys).unwrap();
            }
        }
        let cp3 = rows
            .iter()
            .find_map(|r| match r {
                ExportRow::Checkpoint(c) if c.tree_size == 3 => Some(c.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(v.checkpoint(cp3, &keys).unwrap_err().kind, FailureKind::Malformed);
    }

    fn write(rows: &[ExportRow], format: ExportFormat) -> tempfile_path::TempPath {
        let mut text = String::new();
        if format == ExportFormat::Csv {
            text.push_str(&ExportRow::csv_header());
        }
        for r in rows {
            match format {
                ExportFormat::Csv => text.push_str(&r.to_csv_line()),
                ExportFormat::Jsonl => {
                    text.push_str(&serde_json::to_string(r).unwrap());
                    text.push('\n');
                }
            }
        }
        tempfile_path::TempPath::with(
            text.as_bytes(),
            if format == ExportFormat::Csv { "csv" } else { "jsonl" },
        )
    }

    /// A file under the system temp dir, removed on drop.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(bytes: &[u8], ext: &str) -> Self {
                let p = std::env::temp_dir()
                    .join(format!("riverbank-audit-verify-{}.{ext}", uuid::Uuid::new_v4()));
                std::fs::write(&p, bytes).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn export_files_verify_in_both_formats_and_one_flipped_byte_is_named() {
        let mut rows = log("tenant-a", 30, 10);
        rows.extend(log("tenant-b", 5, 2));
        let keys = signer().verifying_keys();
        let all = Filter::default();
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            let file = write(&rows, format);
            assert_eq!(ExportFormat::of_path(&file.0), format);
            let report = verify_file(&file.0, format, &keys, &all).unwrap();
            assert!(report.is_clean(), "{}", report.render("file"));
            assert_eq!((report.records(), report.checkpoints()), (35, 5));
            let only_b = Filter { tenant: Some("tenant-b".into()), environment: None };
            assert_eq!(verify_file(&file.0, format, &keys, &only_b).unwrap().records(), 5);

            // Flip one byte of record 17's resource id: still a row, no longer the record signed.
            let mut bytes = std::fs::read(&file.0).unwrap();
            let needle = b"tr_17";
            let i = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
            bytes[i + 3] ^= 0x01;
            std::fs::write(&file.0, &bytes).unwrap();
            let report = verify_file(&file.0, format, &keys, &all).unwrap();
            let f: Vec<_> = report.failures().collect();
            assert_eq!(f.len(), 1, "{}", report.render("file"));
            assert_eq!(
                (f[0].kind, f[0].seq, f[0].audit_id),
                (FailureKind::RecordHash, Some(17), Some(audit_id(&rows, 17)))
            );

            // A flipped byte that breaks the row itself stops the run at its line.
            let mut bytes = std::fs::read(&file.0).unwrap();
            let needle = b"payload_bytes";
            let i = bytes.windows(needle.len()).rposition(|w| w == needle).unwrap();
            bytes[i] ^= 0x20;
            std::fs::write(&file.0, &bytes).unwrap();
            let err = verify_file(&file.0, format, &keys, &all).unwrap_err().to_string();
            let line = bytes[..i].iter().filter(|b| **b == b'\n').count() + 1;
            if format == ExportFormat::Jsonl {
                assert!(err.contains(&format!(":{line}: not an export row")), "{err}");
                assert!(err.contains("tenant_id tenant-b environment live seq 5 audit_id"), "{err}");
            } else {
                // In CSV the header names columns: the header no longer reads.
                assert!(err.contains(":1: the CSV header"), "{err}");
            }
        }
    }

    #[test]
    fn consecutive_slices_verify_as_one_trail_and_a_missing_slice_is_named() {
        let rows = log("tenant-a", 30, 4);
        let split = |rows: &[ExportRow], from: u64, to: u64| -> Vec<ExportRow> {
            rows.iter()
                .filter(|r| {
                    let at = match r {
                        ExportRow::Record(r) => r.seq,
                        ExportRow::Checkpoint(c) => c.tree_size,
                    };
                    (from..=to).contains(&at)
                })
                .cloned()
                .collect()
        };
        let (a, b, c) = (split(&rows, 1, 10), split(&rows, 11, 20), split(&rows, 21, 30));
        let files =
            [write(&a, ExportFormat::Jsonl), write(&b, ExportFormat::Csv), write(&c, ExportFormat::Jsonl)];
        let keys = signer().verifying_keys();
        let all = Filter::default();
        let given = |fs: &[&tempfile_path::TempPath]| -> Vec<(PathBuf, ExportFormat)> {
            fs.iter().map(|f| (f.0.clone(), ExportFormat::of_path(&f.0))).collect()
        };
        let report = verify_files(&given(&[&files[0], &files[1], &files[2]]), &keys, &all).unwrap();
        assert!(report.is_clean(), "{}", report.render("slices"));
        assert_eq!((report.records(), report.checkpoints()), (30, 7));
        // A slice alone does not start the log; a slice left out is a gap.
        let f = verify_files(&given(&[&files[1]]), &keys, &all).unwrap();
        assert_eq!(f.failures().next().map(|f| (f.kind, f.seq)), Some((FailureKind::Gap, Some(11))));
        let f = verify_files(&given(&[&files[0], &files[2]]), &keys, &all).unwrap();
        assert_eq!(f.failures().next().map(|f| (f.kind, f.seq)), Some((FailureKind::Gap, Some(21))));
    }

    #[test]
    fn a_csv_byte_flip_inside_a_quoted_line_break_still_names_its_row() {
        let rows = log("tenant-a", 4, 2);
        let file = write(&rows, ExportFormat::Csv);
        let mut text = std::fs::read_to_string(&file.0).unwrap();
        // The user agent holds a quoted line break: change the byte after it in record 3.
        let at = text.match_indices("second line").nth(2).unwrap().0;
        text.replace_range(at..at + 1, "S");
        std::fs::write(&file.0, text).unwrap();
        let report =
            verify_file(&file.0, ExportFormat::Csv, &signer().verifying_keys(), &Filter::default()).unwrap();
        let f: Vec<_> = report.failures().collect();
        assert_eq!((f[0].kind, f[0].seq), (FailureKind::RecordHash, Some(3)));
    }

    #[test]
    fn keys_come_from_the_command_line_or_the_config() {
        let cfg = Config::load(None).unwrap();
        let from_cfg = verifying_keys(&cfg, &[]).unwrap();
        let cfg_signer = CheckpointSigner::from_seed_hex(cfg.audit.signing_key.expose()).unwrap();
        assert_eq!(from_cfg.key_ids().collect::<Vec<_>>(), vec![cfg_signer.key_id()]);
        let given = verifying_keys(&cfg, &[signer().public_key_hex()]).unwrap();
        assert_eq!(given.key_ids().collect::<Vec<_>>(), vec![signer().key_id()]);
        assert!(verifying_keys(&cfg, &["nothex".into()]).is_err());
    }
}
