//! `riverbank bench state`: one partition of the transfers processor at scale (by default 1 000 000
//! accounts and 1 000 000 retained transfers over 100 tenants). Figures printed, never asserted:
//! (1) a full snapshot: entries, bytes, encode and produce time, on the real broker;
//! (2) restore from the broker: read + rebuild (`checkpoint::restore`), then decode into the partition
//!     (`Partition::restore`, orders rebuilt), against the goal of under 10 s, and the same steps one at
//!     a time (read, decode records, rebuild, decode values, orders) to show where the time goes;
//! (3) steady state: batches of realistic inputs applied to the big state (`engine::step`), outputs
//!     produced, then the delta checkpoint (take changes, encode, produce), against the goal of a
//!     checkpoint costing under 10 % of the batch, with the snapshots the writer will add amortized;
//!     then more batches until the next one would snapshot, and a restore at that worst point (the
//!     snapshot and every delta after it);
//! (4) bincode (what checkpoints hold) against JSON values (what they held before) for the same state.
//!
//! The state is built by inserting into the tables directly (not by running millions of inputs), then
//! checkpointed and restored through the runtime's own code, so the steady-state part runs on a state
//! whose derived orders were rebuilt exactly as after a real restore.
//! Measurement arithmetic is floating point here; no money passes through it.
#![allow(clippy::float_arithmetic)]
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use riverbank_processors::transfers::{account_key, transfer_key, Account, Policy, Transfer, TransfersState};
use riverbank_processors::{ReuseLimits, TransfersLimits, TransfersProcessor};
use riverbank_runtime::checkpoint::{self, Limits, Writer};
use riverbank_runtime::engine::{step, Ctx, OwnedRecord, Partition};
use riverbank_runtime::produce::{produce_all, produce_at, Emit};
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::processor::Processor as _;
use riverbank_schemas::state::{Encoded, State as _};
use riverbank_schemas::transfers::{input_types as it, RiskOutcome, TransferKind, TransferStatus};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics};
use uuid::Uuid;

use crate::workload::Lcg;

/// Tenants the accounts and transfers are spread over (inputs are keyed by tenant: a partition holds
/// whole tenants).
const TENANTS: usize = 100;
/// Inputs at most between two inputs of one transfer's lifecycle (request, risk, callbacks).
const LANE_GAP_MAX: u64 = 2_000;
/// Steady-state batches measured (after the first batch past the restore, which is a snapshot).
const STEADY_BATCHES: usize = 50;
/// The event clock of the built state (ms); final transfers became final in the 6 days before.
const CLOCK_MS: i64 = 1_790_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Goals of the requirement "State at scale".
const RESTORE_GOAL_S: f64 = 10.0;
const CHECKPOINT_SHARE_GOAL: f64 = 0.10;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn usd() -> anyhow::Result<Currency> {
    Currency::from_code("USD").map_err(|e| anyhow::anyhow!("{e}"))
}

fn uuid(rng: &mut Lcg) -> Uuid {
    let hi = (rng.next_u64() << 33) ^ rng.next_u64();
    let lo = (rng.next_u64() << 33) ^ rng.next_u64();
    Uuid::from_u64_pair(hi, lo)
}

fn tenant(t: usize) -> String {
    format!("tenant-{t:03}")
}

/// Account `j` belongs to tenant `j % TENANTS`.
fn account(j: usize) -> String {
    format!("acct_{j:06}")
}

/// The accounts of tenant `t` are `t, t + TENANTS, …`: how many there are.
fn accounts_of(t: usize, accounts: usize) -> usize {
    (accounts + TENANTS - 1 - t) / TENANTS
}

/// A random account of tenant `t` (an index into the global numbering), other than `not`.
fn pick_account(rng: &mut Lcg, t: usize, accounts: usize, not: Option<usize>) -> usize {
    let n = accounts_of(t, accounts) as u64;
    loop {
        let j = t + TENANTS * rng.below(n) as usize;
        if Some(j) != not {
            return j;
        }
    }
}

/// What the built state holds, for the report.
struct Built {
    state: TransfersState,
    finals: usize,
    holding: usize,
    build_s: f64,
}

/// The state: `accounts` accounts (plus one `external` per tenant, whose posted balance keeps every
/// tenant's sum at zero) and `transfers` transfers in realistic statuses — most completed (final), some
/// cancelled, blocked, rejected or failed, about a tenth in flight holding funds (their holds are in
/// the accounts' pending columns, so the ledger is consistent and later callbacks post them).
fn build(accounts: usize, transfers: usize) -> anyhow::Result<Built> {
    use TransferStatus as S;
    let started = Instant::now();
    let usd = usd()?;
    let mut rng = Lcg(7);
    let mut balances: Vec<Account> = (0..accounts)
        .map(|_| Account {
            posted: 100_000_000 + rng.below(1_000_000_000) as i64 * 10,
            pending_debit: 0,
            pending_credit: 0,
            version: 1 + rng.below(1_000),
        })
        .collect();
    let mut external: Vec<Account> = vec![Account::default(); TENANTS];
    let mut state = TransfersState::new();
    let (mut finals, mut holding) = (0usize, 0usize);
    let window = 6 * DAY_MS;
    for j in 0..transfers {
        let t = j % TENANTS;
        let ten = tenant(t);
        let id = format!("tr_{:08x}{:08x}{:08x}", rng.next_u64(), rng.next_u64(), j);
        let kind = match rng.below(100) {
            0..=39 => TransferKind::Internal,
            40..=64 => TransferKind::Deposit,
            65..=84 => TransferKind::Withdrawal,
            _ => TransferKind::Payout,
        };
        let a = pick_account(&mut rng, t, accounts, None);
        let b = pick_account(&mut rng, t, accounts, Some(a));
        // (source, destination): `None` is the tenant's external account.
        let (src, dst) = match kind {
            TransferKind::Internal => (Some(a), Some(b)),
            TransferKind::Deposit => (None, Some(a)),
            TransferKind::Withdrawal | TransferKind::Payout => (Some(a), None),
        };
        let name = |x: Option<usize>| x.map_or_else(|| "external".to_owned(), account);
        // Status, version (status changes so far), risk, inputs applied.
        let (status, version, risk, inputs) = match rng.below(100) {
            0..=79 => (S::Completed, 8, Some(RiskOutcome::Approve), 3 + rng.below(3) as usize),
            80..=82 => (S::Cancelled, 6, Some(RiskOutcome::Block), 3),
            83..=85 => (S::Blocked, 5, Some(RiskOutcome::Block), 2),
            86..=87 => (S::Rejected, 3, None, 1),
            88..=89 => (S::Failed, 7, Some(RiskOutcome::Approve), 3),
            90..=91 => (S::ComplianceCheck, 4, None, 1),
            92..=94 => (S::Approved, 5, Some(RiskOutcome::Approve), 2),
            95..=97 => (S::Processing, 6, Some(RiskOutcome::Approve), 3),
            _ => (S::Confirming, 7, Some(RiskOutcome::Approve), 4),
        };
        let amount = 100 + rng.below(5_000_000) as i64;
        if status.holds_funds() {
            holding += 1;
            let debit = match src {
                Some(s) => &mut balances[s],
                None => &mut external[t],
            };
            debit.pending_debit += amount;
            let credit = match dst {
                Some(d) => &mut balances[d],
                None => &mut external[t],
            };
            credit.pending_credit += amount;
        }
        let final_at_ms = status.is_final().then(|| {
            finals += 1;
            // In the order they were built, over the last 6 days of the clock.
            CLOCK_MS - window + (j as i64 * window) / transfers.max(1) as i64
        });
        let needs_approval = rng.below(20) == 0;
        let transfer = Transfer {
            tenant_id: ten.clone(),
            transfer_id: id.clone(),
            kind,
            amount: Money::new(amount, usd),
            source: name(src),
            destination: name(dst),
            requested_by: format!("user_{:04}", rng.below(500)),
            status,
            version,
            risk,
            approved_by: (needs_approval && risk.is_some()).then(|| format!("user_{:04}", rng.below(500))),
            needs_approval,
            applied_inputs: (0..inputs).map(|_| uuid(&mut rng)).collect::<VecDeque<_>>(),
            final_at_ms,
            final_seq: final_at_ms.map(|_| finals as u64),
            user_id: None,
            counterparty: None,
            external_ref: None,
            parked: Vec::new(),
        };
        state.transfers.insert(transfer_key(&ten, &id), transfer);
    }
    for (j, a) in balances.into_iter().enumerate() {
        let t = j % TENANTS;
        external[t].posted -= a.posted;
        state.accounts.insert(account_key(&tenant(t), &account(j), usd), a);
    }
    for (t, mut a) in external.into_iter().enumerate() {
        a.version = 1;
        state.accounts.insert(account_key(&tenant(t), "external", usd), a);
        // Approval thresholds above every amount here: policies exist but no input waits for a human.
        let policy = Policy {
            approval_thresholds: vec![Money::new(100_000_000, usd)],
            overdraft_accounts: vec![],
            applied_inputs: VecDeque::from([uuid(&mut rng)]),
        };
        state.policies.insert(tenant(t), policy);
    }
    state.clock.set(CLOCK_MS);
    state.final_seq.set(finals as u64);
    Ok(Built { state, finals, holding, build_s: started.elapsed().as_secs_f64() })
}

/// Inputs for the tenants of the state, touching it: new transfers between its accounts (request, risk
/// approval, provider processing, completed), callbacks moving its in-flight transfers to completion,
/// late callbacks for completed ones (refused), and 5 % delivered twice. Each lane starts at a random
/// point of the run and its next inputs follow within [`LANE_GAP_MAX`] inputs, so requests and the
/// callbacks completing earlier requests are mixed the same way all along (a shuffle over the whole run,
/// as `workload::transfer_inputs` does for its small runs, would put most requests first).
fn inputs(state: &TransfersState, accounts: usize, n: usize) -> anyhow::Result<Vec<RawEnvelope>> {
    use serde_json::json;
    use TransferStatus as S;
    let mut rng = Lcg(11);
    // In-flight and completed transfers of the state, by status.
    let mut existing: Vec<(&Transfer, S)> = state.transfers.values().map(|t| (t, t.status)).collect();
    let mut lanes: Vec<Vec<(String, &'static str, serde_json::Value)>> = Vec::new();
    let mut total = 0usize;
    let mut fresh = 0usize;
    while total < n {
        let lane = if rng.below(10) < 6 {
            // A new transfer between the tenant's accounts.
            let t = rng.below(TENANTS as u64) as usize;
            let id = format!("new_{fresh:08}");
            fresh += 1;
            let a = pick_account(&mut rng, t, accounts, None);
            let b = pick_account(&mut rng, t, accounts, Some(a));
            let amount = json!({"amount_minor": 100 + rng.below(500_000), "currency": "USD"});
            let request = match rng.below(4) {
                0 | 1 => {
                    json!({"transfer_id": id, "kind": "internal", "amount": amount, "source_account": account(a), "destination_account": account(b), "requested_by": "maker"})
                }
                2 => {
                    json!({"transfer_id": id, "kind": "deposit", "amount": amount, "destination_account": account(a), "requested_by": "maker"})
                }
                _ => {
                    json!({"transfer_id": id, "kind": "payout", "amount": amount, "source_account": account(a), "requested_by": "maker"})
                }
            };
            let ten = tenant(t);
            vec![
                (ten.clone(), it::REQUESTED, request),
                (
                    ten.clone(),
                    it::RISK_DECIDED,
                    json!({"transfer_id": id, "decision": "approve", "score": 3, "reasons": [], "rule_set_version": "r1"}),
                ),
                (ten.clone(), it::PROVIDER_STATUS, json!({"transfer_id": id, "status": "processing"})),
                (ten, it::PROVIDER_STATUS, json!({"transfer_id": id, "status": "completed"})),
            ]
        } else {
            // An existing transfer, picked at random; in flight ones move on, others get a late callback.
            let i = rng.below(existing.len() as u64) as usize;
            let (t, status) = existing[i];
            let id = &t.transfer_id;
            let ten = t.tenant_id.clone();
            let cb = |s: &str| (ten.clone(), it::PROVIDER_STATUS, json!({"transfer_id": id, "status": s}));
            let lane = match status {
                S::ComplianceCheck => vec![
                    (
                        ten.clone(),
                        it::RISK_DECIDED,
                        json!({"transfer_id": id, "decision": "approve", "score": 3, "reasons": [], "rule_set_version": "r1"}),
                    ),
                    cb("completed"),
                ],
                S::Approved => vec![cb("processing"), cb("completed")],
                S::Processing => vec![cb("confirming"), cb("completed")],
                S::Confirming => vec![cb("completed")],
                _ => vec![cb("completed")],
            };
            // Each in-flight transfer is driven once.
            existing[i].1 = S::Completed;
            lane
        };
        total += lane.len();
        lanes.push(lane);
    }
    // (position, lane, index in lane): positions grow along a lane, so sorting keeps each lane's order.
    let mut placed: Vec<(u64, usize, usize)> = Vec::with_capacity(total);
    for (i, lane) in lanes.iter().enumerate() {
        let mut at = rng.below(n as u64);
        for k in 0..lane.len() {
            placed.push((at, i, k));
            at += 1 + rng.below(LANE_GAP_MAX);
        }
    }
    placed.sort_unstable();
    let mut out = Vec::with_capacity(n + n / 16);
    for (seq, (_, lane, k)) in placed.into_iter().enumerate() {
        let (tenant_id, event_type, payload) = lanes[lane][k].clone();
        let at = chrono::DateTime::from_timestamp_millis(CLOCK_MS + 10 * seq as i64).unwrap_or_default();
        let id = derived_id(&["bench-state", &seq.to_string()]);
        let e = Envelope::new(id, event_type, &tenant_id, Environment::Live, at, "api", payload);
        if rng.below(20) == 0 {
            out.push(e.clone());
        }
        out.push(e);
        if out.len() >= n {
            break;
        }
    }
    anyhow::ensure!(out.len() >= n, "generated {} inputs, wanted {n}", out.len());
    out.truncate(n);
    Ok(out)
}

/// The processor as `riverbank process transfers` builds it from the config.
fn processor(cfg: &Config, topics: Topics) -> TransfersProcessor {
    let t = &cfg.transfers;
    let limits = TransfersLimits {
        final_retention_ms: t.final_retention_s.saturating_mul(1000),
        final_retained_max: t.final_retained_max,
    };
    let reuse = ReuseLimits {
        id_reuse_refused_ms: t.id_reuse_refused_s.saturating_mul(1000),
        tombstones_retained_max: t.tombstones_retained_max,
        clock_step_max_ms: t.clock_step_max_ms,
    };
    TransfersProcessor::new(topics, limits).with_reuse_limits(reuse)
}

/// Checkpoint limits as the processor loop takes them from the config.
fn limits(cfg: &Config) -> Limits {
    Limits {
        snapshot_every_batches: cfg.processor.checkpoint_snapshot_every_batches,
        record_bytes_max: cfg.processor.checkpoint_record_bytes_max,
        restore_window_records: cfg.processor.restore_window_records,
        restore_timeout: Duration::from_millis(cfg.processor.restore_timeout_ms),
    }
}

/// Keys and values, as the writer counts a snapshot (without its per-entry overhead).
fn entries_bytes<V: AsRef<[u8]>>(entries: &[(String, V)]) -> usize {
    entries.iter().map(|(k, v)| k.len() + v.as_ref().len()).sum()
}

/// One entry as checkpoints held it before bincode: the value as JSON (`serde_json::to_value`), as bytes.
fn push_json<V: serde::Serialize>(
    out: &mut Vec<(String, Vec<u8>)>,
    key: String,
    v: &V,
) -> anyhow::Result<()> {
    out.push((key, serde_json::to_vec(&serde_json::to_value(v)?)?));
    Ok(())
}

/// Whether the writer's next checkpoint is a snapshot (as `checkpoint::Writer` decides, unless the
/// delta is too large for one record).
fn snapshot_next(w: &Writer, l: &Limits) -> bool {
    w.needs_snapshot
        || w.batches_since_snapshot + 1 >= l.snapshot_every_batches
        || w.delta_bytes >= w.snapshot_bytes.max(l.record_bytes_max)
}

/// Records `checkpoint::restore` reads to find a complete snapshot whose first chunk is `needed` records
/// from the end of a partition of `total`: its window starts at `restore_window_records` and grows ×4,
/// reading the tail again each time.
fn restore_reads(l: &Limits, needed: usize, total: usize) -> usize {
    let mut window = usize::try_from(l.restore_window_records.max(1)).unwrap_or(1);
    let mut read = 0;
    loop {
        let take = window.min(total);
        read += take;
        if take >= needed {
            return read;
        }
        window = window.saturating_mul(4);
    }
}

/// Produce checkpoint records to partition 0; returns the payload bytes.
async fn produce_checkpoint(
    producer: &rdkafka::producer::FutureProducer,
    writer: &mut Writer,
    records: &[(i32, Emit)],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let items: Vec<(Option<i32>, &Emit)> = records.iter().map(|(p, e)| (Some(*p), e)).collect();
    let landed = produce_at(producer, &items, timeout).await.map_err(anyhow::Error::msg)?;
    if let Some((_, first)) = landed.first() {
        writer.landed(*first); // later deltas name where their snapshot starts, as the loop does
    }
    Ok(records.iter().map(|(_, e)| e.payload.len()).sum())
}

/// Read every record of a checkpoint partition (raw bytes), as restore's consumer does. Blocking.
fn read_raw(kcfg: &riverbank_runtime::config::KafkaConfig, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kcfg.brokers)
        .set("group.id", "bench-state-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let mut out = Vec::with_capacity((high - low) as usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while (out.len() as i64) < high - low {
        anyhow::ensure!(Instant::now() < deadline, "read {} of {} records in 300 s", out.len(), high - low);
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// `riverbank bench state`.
pub async fn state(
    cfg: &Config,
    accounts: usize,
    transfers: usize,
    batch_inputs: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(accounts >= 2 * TENANTS, "--accounts must be at least {}", 2 * TENANTS);
    anyhow::ensure!(batch_inputs > 0, "--batch-inputs must be positive");
    let mut cfg = cfg.clone();
    cfg.kafka.topic_prefix = format!("benchstate-{}.", &Uuid::new_v4().simple().to_string()[..8]);
    cfg.kafka.environments = vec![Environment::Live];
    let topics = kafka::topics(&cfg.kafka);
    let mut names = kafka::all_topics(&cfg.kafka);
    names.push(topics.checkpoints(Environment::Live, "transfers"));
    kafka::ensure_topics(&cfg.kafka, &names).await.context("creating bench topics")?;
    let result = run(&cfg, &topics, accounts, transfers, batch_inputs).await;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create()?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(&refs, &opts).await {
        Ok(r) if r.iter().all(Result::is_ok) => {
            println!("cleanup: deleted the {} bench topics ({}*)", refs.len(), cfg.kafka.topic_prefix)
        }
        Ok(r) => println!(
            "cleanup: {} of {} bench topics not deleted ({}*): {:?}",
            r.iter().filter(|x| x.is_err()).count(),
            refs.len(),
            cfg.kafka.topic_prefix,
            r.iter().filter_map(|x| x.as_ref().err()).collect::<Vec<_>>()
        ),
        Err(e) => println!("cleanup: bench topics {}* left in place: {e}", cfg.kafka.topic_prefix),
    }
    result
}

async fn run(
    cfg: &Config,
    topics: &Topics,
    accounts: usize,
    transfers: usize,
    batch_inputs: usize,
) -> anyhow::Result<()> {
    let env = Environment::Live;
    let input_topic = topics.transfer_inputs(env);
    let ckpt_topic = topics.checkpoints(env, "transfers");
    let l = limits(cfg);
    let timeout = Duration::from_millis(cfg.kafka.message_timeout_ms);
    let producer = kafka::producer(&cfg.kafka)?;
    // Checkpoint records go through the loop's own checkpoint producer (no linger).
    let ckpt_producer = kafka::checkpoint_producer(&cfg.kafka)?;

    // (0) The state.
    let built = build(accounts, transfers)?;
    let mut part: Partition<TransfersState> = Partition::empty();
    part.state = built.state;
    part.take_changes(); // building is not a change to checkpoint
    println!(
        "state: one partition, {TENANTS} tenants, {} accounts (+{TENANTS} external), {} transfers ({} final, {} holding funds), {} policies; built in {:.1} s",
        accounts,
        part.state.transfers.len(),
        built.finals,
        built.holding,
        part.state.policies.len(),
        built.build_s
    );
    println!(
        "limits: checkpoint_record_bytes_max {} B, checkpoint_snapshot_every_batches {}, restore_window_records {}",
        l.record_bytes_max, l.snapshot_every_batches, l.restore_window_records
    );

    // A warm producer, as the loop's is: connection and the checkpoint topic's metadata in place (a
    // record on partition 1, which nothing here reads).
    let warm = Emit {
        topic: ckpt_topic.clone(),
        key: "warm-up".to_owned(),
        event_id: Uuid::nil(),
        payload: vec![0],
    };
    produce_at(&producer, &[(Some(1), &warm)], timeout).await.map_err(anyhow::Error::msg)?;

    // (1) Snapshot: encode, chunk into records, produce.
    let t0 = Instant::now();
    let entries = part.snapshot();
    let snapshot_ms = ms(t0.elapsed());
    let snap_entries = entries.len();
    let snap_bytes = entries_bytes(&entries);
    let t0 = Instant::now();
    let mut writer = Writer::new(0);
    let next_offset = 1_000_000;
    let records = checkpoint::records_for_batch(
        &mut writer,
        &l,
        &ckpt_topic,
        &input_topic,
        0,
        next_offset,
        || entries,
        vec![],
    );
    let chunk_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let snap_payload = produce_checkpoint(&ckpt_producer, &mut writer, &records, timeout).await?;
    let snap_produce_ms = ms(t0.elapsed());
    let snap_records = records.len();
    drop(records);
    println!(
        "(1) snapshot: {snap_entries} entries, {:.1} MB (keys+values), {snap_records} records, {:.1} MB on the wire; \
         snapshot() {snapshot_ms:.0} ms + records {chunk_ms:.0} ms = encode {:.0} ms; produce {snap_produce_ms:.0} ms ({:.0} MB/s)",
        mb(snap_bytes),
        mb(snap_payload),
        snapshot_ms + chunk_ms,
        mb(snap_payload) / (snap_produce_ms / 1000.0)
    );

    // (2) Restore from the broker, then into a partition.
    let (kcfg, rl, ct, itopic) = (cfg.kafka.clone(), l, ckpt_topic.clone(), input_topic.clone());
    let t0 = Instant::now();
    let restored = tokio::task::spawn_blocking(move || checkpoint::restore(&kcfg, &rl, &ct, &itopic, 0))
        .await?
        .map_err(anyhow::Error::msg)?
        .context("restore found no complete snapshot")?;
    let restore_read_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let mut rpart = Partition::<TransfersState>::restore(restored.entries).map_err(anyhow::Error::msg)?;
    let restore_decode_ms = ms(t0.elapsed());
    let restore_ms = restore_read_ms + restore_decode_ms;
    anyhow::ensure!(
        rpart.state.transfers == part.state.transfers && rpart.state.accounts == part.state.accounts,
        "the restored state differs from the one checkpointed"
    );
    println!(
        "(2) restore: checkpoint::restore (read {} records + rebuild) {restore_read_ms:.0} ms; Partition::restore (decode + orders) {restore_decode_ms:.0} ms; total {:.2} s (goal < {RESTORE_GOAL_S:.0} s: {})",
        restored.records_read,
        restore_ms / 1000.0,
        if restore_ms / 1000.0 < RESTORE_GOAL_S { "met" } else { "NOT met" }
    );
    // Where restore's time goes: the same steps one at a time.
    let kcfg = cfg.kafka.clone();
    let ct = ckpt_topic.clone();
    let t0 = Instant::now();
    let raw = tokio::task::spawn_blocking(move || read_raw(&kcfg, &ct)).await??;
    let read_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let decoded: Vec<checkpoint::Record> =
        raw.iter().map(|b| checkpoint::decode(b)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let record_decode_ms = ms(t0.elapsed());
    drop(raw);
    let t0 = Instant::now();
    let rebuilt = checkpoint::rebuild(&decoded, &input_topic, 0).context("rebuild")?;
    let rebuild_ms = ms(t0.elapsed());
    drop(decoded);
    let t0 = Instant::now();
    let own: Vec<(String, Encoded)> =
        rebuilt.entries.iter().filter(|(k, _)| !k.starts_with('~')).cloned().collect();
    let clone_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let mut values = 0usize;
    for (k, v) in &own {
        let ok = if k.starts_with("t/") {
            v.decode::<Transfer>().is_ok()
        } else if k.starts_with("a/") {
            v.decode::<Account>().is_ok()
        } else {
            true
        };
        values += usize::from(ok);
    }
    let values_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let mut bin_state = TransfersState::restore(&own).map_err(anyhow::Error::msg)?;
    let state_restore_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    bin_state.restored().map_err(anyhow::Error::msg)?;
    let orders_ms = ms(t0.elapsed());
    drop(bin_state);
    drop(rebuilt);
    println!(
        "    breakdown: read {snap_records} records {read_ms:.0} ms, decode records {record_decode_ms:.0} ms, rebuild {rebuild_ms:.0} ms; \
         entries cloned {clone_ms:.0} ms; values decoded alone {values_ms:.0} ms ({values} values), State::restore (decode + tables + orders) \
         {state_restore_ms:.0} ms, of which orders (restored()) {orders_ms:.0} ms"
    );
    println!(
        "    restore's window ({} records, ×4 while no complete snapshot is in it, the tail read again each time) read {} records to reach a snapshot of {snap_records}",
        l.restore_window_records,
        restore_reads(&l, snap_records, snap_records)
    );

    // (3) Steady state on the restored partition.
    let p = processor(cfg, topics.clone());
    let spec = p.spec(topics, env);
    let ctx = Ctx { topics, env, spec: &spec };
    // Inputs for the measured batches and for filling the log up to the next snapshot (the worst point
    // to restore from).
    let every = usize::try_from(l.snapshot_every_batches).unwrap_or(usize::MAX);
    let n = (STEADY_BATCHES.max(every) + 1) * batch_inputs;
    let records: Vec<OwnedRecord> =
        inputs(&rpart.state, accounts, n)?.iter().map(OwnedRecord::input).collect();
    let mut writer = Writer::new(restored.snapshot_seq);
    writer.snapshot_bytes = restored.snapshot_bytes;
    let mut offset = restored.next_offset;

    let (mut apply, mut outputs, mut encode, mut produce, mut delta_bytes, mut delta_entries) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut emitted, mut snapshots_due) = (0usize, 0usize);
    let mut first = None;
    // Batches past the measured ones: apply and checkpoint only (outputs are not needed to restore).
    let (mut fill_apply, mut fill_ckpt, mut fill_bytes, mut fill_entries, mut fill_snapshots) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0usize);
    for (b, chunk) in records.chunks(batch_inputs).enumerate() {
        let measured = b <= STEADY_BATCHES;
        if !measured && snapshot_next(&writer, &l) {
            break;
        }
        let t0 = Instant::now();
        let mut emits = Vec::new();
        for r in chunk {
            let out = step(&p, &ctx, &mut rpart, &r.at(&input_topic, offset), None)
                .map_err(|e| anyhow::anyhow!("{}", e.reason))?;
            emits.extend(out);
            offset += 1;
        }
        let apply_ms = ms(t0.elapsed());
        let t0 = Instant::now();
        if measured {
            produce_all(&producer, &emits, timeout).await.map_err(anyhow::Error::msg)?;
        }
        let outputs_ms = ms(t0.elapsed());
        let t0 = Instant::now();
        let changes = rpart.take_changes();
        let changed = changes.len();
        let snapshot_of = &rpart;
        let recs = checkpoint::records_for_batch(
            &mut writer,
            &l,
            &ckpt_topic,
            &input_topic,
            0,
            offset,
            || snapshot_of.snapshot(),
            changes,
        );
        let encode_ms = ms(t0.elapsed());
        let snapshot = writer.delta_seq == 0;
        let t0 = Instant::now();
        let bytes = produce_checkpoint(&ckpt_producer, &mut writer, &recs, timeout).await?;
        let produce_ms = ms(t0.elapsed());
        if b == 0 {
            first = Some((snapshot, recs.len(), bytes, encode_ms, produce_ms, apply_ms + outputs_ms));
            continue;
        }
        if !measured {
            fill_apply.push(apply_ms);
            fill_ckpt.push(encode_ms + produce_ms);
            fill_bytes.push(bytes as f64);
            fill_entries.push(changed as f64);
            fill_snapshots += usize::from(snapshot);
            continue;
        }
        emitted += emits.len();
        snapshots_due += usize::from(snapshot);
        apply.push(apply_ms);
        outputs.push(outputs_ms);
        encode.push(encode_ms);
        produce.push(produce_ms);
        delta_bytes.push(bytes as f64);
        delta_entries.push(changed as f64);
    }
    if let Some((snapshot, recs, bytes, e, pr, batch)) = first {
        println!(
            "(3) first batch after the restore (a new writer): {} of {recs} records, {:.1} MB, encode {e:.0} ms + produce {pr:.0} ms (the batch itself {batch:.0} ms)",
            if snapshot { "snapshot" } else { "delta" },
            mb(bytes)
        );
    }
    let (m_apply, m_out) = (median(&apply), median(&outputs));
    let (m_enc, m_prod) = (median(&encode), median(&produce));
    let ckpt: Vec<f64> = encode.iter().zip(&produce).map(|(a, b)| a + b).collect();
    let m_ckpt = median(&ckpt);
    let m_delta = median(&delta_bytes);
    let m_batch = m_apply + m_out;
    // The writer snapshots once deltas since the last snapshot add up to the snapshot's size (at least
    // one record's worth), or after `snapshot_every_batches`: one snapshot per that many batches.
    let due_by_bytes = (snap_bytes.max(l.record_bytes_max) as f64 / m_delta).ceil();
    let per_snapshot = due_by_bytes.min(f64::from(l.snapshot_every_batches)).max(1.0);
    // A snapshot's cost: the one the first batch after the restore wrote (warm, on the live state).
    let snapshot_cost_ms = match first {
        Some((true, _, _, e, pr, _)) => e + pr,
        _ => snapshot_ms + chunk_ms + snap_produce_ms,
    };
    let amortized_ms = snapshot_cost_ms / per_snapshot;
    let share = m_ckpt / m_batch;
    let share_amortized = (m_ckpt + amortized_ms) / m_batch;
    println!(
        "    {STEADY_BATCHES} batches of {batch_inputs} inputs ({emitted} outputs), medians: apply {m_apply:.1} ms, produce outputs {m_out:.1} ms, \
         batch {m_batch:.1} ms; checkpoint {m_ckpt:.1} ms (take changes + encode {m_enc:.1} ms, produce {m_prod:.1} ms), delta {:.0} entries, {:.1} KB",
        median(&delta_entries),
        m_delta / 1000.0
    );
    println!(
        "    snapshots due in those batches: {snapshots_due}; one snapshot every {per_snapshot:.0} batches \
         (snapshot bytes / median delta bytes = {due_by_bytes:.0}, snapshot_every_batches = {}), {snapshot_cost_ms:.0} ms each = {amortized_ms:.1} ms per batch",
        l.snapshot_every_batches
    );
    println!(
        "    checkpoint / batch: {:.1} % (deltas only), {:.1} % with snapshots amortized (goal < {:.0} %: {}); the same over apply alone: {:.1} %",
        share * 100.0,
        share_amortized * 100.0,
        CHECKPOINT_SHARE_GOAL * 100.0,
        if share_amortized < CHECKPOINT_SHARE_GOAL { "met" } else { "NOT met" },
        (m_ckpt + amortized_ms) / m_apply * 100.0
    );
    drop(records);

    // Restore at the worst point: the newest snapshot and every delta after it, the next batch due to
    // snapshot.
    let deltas = writer.delta_seq;
    println!(
        "    then {} more batches (apply + checkpoint, outputs not produced), medians: apply {:.1} ms, checkpoint {:.1} ms, delta {:.0} entries, {:.1} KB; \
         snapshots among them {fill_snapshots}; now {} transfers, {} tombstones, {deltas} deltas since the snapshot",
        fill_apply.len(),
        median(&fill_apply),
        median(&fill_ckpt),
        median(&fill_entries),
        median(&fill_bytes) / 1000.0,
        rpart.state.transfers.len(),
        rpart.state.tombstones.len()
    );
    let (kcfg, rl, ct, itopic) = (cfg.kafka.clone(), l, ckpt_topic.clone(), input_topic.clone());
    let t0 = Instant::now();
    let worst = tokio::task::spawn_blocking(move || checkpoint::restore(&kcfg, &rl, &ct, &itopic, 0))
        .await?
        .map_err(anyhow::Error::msg)?
        .context("restore found no complete snapshot")?;
    let worst_read_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let wpart = Partition::<TransfersState>::restore(worst.entries).map_err(anyhow::Error::msg)?;
    let worst_decode_ms = ms(t0.elapsed());
    let worst_ms = worst_read_ms + worst_decode_ms;
    anyhow::ensure!(
        wpart.state.transfers == rpart.state.transfers && wpart.state.accounts == rpart.state.accounts,
        "the state restored from snapshot + deltas differs from the live one"
    );
    println!(
        "(3b) restore at the worst point (snapshot + {deltas} deltas): checkpoint::restore (read {} records + rebuild) {worst_read_ms:.0} ms; \
         Partition::restore {worst_decode_ms:.0} ms; total {:.2} s (goal < {RESTORE_GOAL_S:.0} s: {})",
        worst.records_read,
        worst_ms / 1000.0,
        if worst_ms / 1000.0 < RESTORE_GOAL_S { "met" } else { "NOT met" }
    );

    drop(wpart);
    drop(rpart);

    // (4) bincode vs JSON values for the same state (state tables; the runtime's two entries aside).
    let state = &part.state;
    let t0 = Instant::now();
    let bin = state.snapshot();
    let bin_encode_ms = ms(t0.elapsed());
    let bin_bytes = entries_bytes(&bin);
    let bin: Vec<(String, Encoded)> = bin.into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
    let t0 = Instant::now();
    let bin_state = TransfersState::restore(&bin).map_err(anyhow::Error::msg)?;
    let bin_decode_ms = ms(t0.elapsed());
    drop(bin_state);
    drop(bin);
    let t0 = Instant::now();
    let mut json: Vec<(String, Vec<u8>)> = Vec::with_capacity(snap_entries);
    for (k, v) in state.transfers.iter() {
        push_json(&mut json, format!("t/{k}"), v)?;
    }
    for (k, v) in state.accounts.iter() {
        push_json(&mut json, format!("a/{k}"), v)?;
    }
    for (k, v) in state.policies.iter() {
        push_json(&mut json, format!("p/{k}"), v)?;
    }
    for (k, v) in state.tombstones.iter() {
        push_json(&mut json, format!("x/{k}"), v)?;
    }
    push_json(&mut json, "clock".to_owned(), state.clock.get())?;
    push_json(&mut json, "final_seq".to_owned(), state.final_seq.get())?;
    let json_encode_ms = ms(t0.elapsed());
    let json_bytes = entries_bytes(&json);
    let t0 = Instant::now();
    let parsed: Vec<(String, Encoded)> = json
        .into_iter()
        .map(|(k, v)| Ok((k, Encoded::Json(serde_json::from_slice(&v)?))))
        .collect::<anyhow::Result<_>>()?;
    let json_parse_ms = ms(t0.elapsed());
    let t0 = Instant::now();
    let json_state = TransfersState::restore(&parsed).map_err(anyhow::Error::msg)?;
    let json_restore_ms = ms(t0.elapsed());
    anyhow::ensure!(
        json_state.transfers == state.transfers && json_state.accounts == state.accounts,
        "the JSON round trip changed the state"
    );
    drop(json_state);
    drop(parsed);
    let json_decode_ms = json_parse_ms + json_restore_ms;
    println!(
        "(4) bincode: {:.1} MB, encode {bin_encode_ms:.0} ms, decode (State::restore) {bin_decode_ms:.0} ms; \
         JSON values: {:.1} MB, encode {json_encode_ms:.0} ms, decode {json_decode_ms:.0} ms (parse {json_parse_ms:.0} + State::restore {json_restore_ms:.0})",
        mb(bin_bytes),
        mb(json_bytes)
    );

    // Summary.
    let row = |name: &str, value: String, goal: &str| println!("  {name:<46} {value:>14}  {goal}");
    println!();
    println!("summary (one partition, {accounts} accounts, {transfers} transfers):");
    row("snapshot entries", snap_entries.to_string(), "");
    row("snapshot bytes (keys+values)", format!("{:.1} MB", mb(snap_bytes)), "");
    row("snapshot records / bytes on the wire", format!("{snap_records} / {:.1} MB", mb(snap_payload)), "");
    row("snapshot encode (snapshot() + records)", format!("{:.0} ms", snapshot_ms + chunk_ms), "");
    row("snapshot produce", format!("{snap_produce_ms:.0} ms"), "");
    row("restore: checkpoint::restore (read+rebuild)", format!("{restore_read_ms:.0} ms"), "");
    row("restore: Partition::restore (decode+orders)", format!("{restore_decode_ms:.0} ms"), "");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    row(
        "restore total",
        format!("{:.2} s", restore_ms / 1000.0),
        &format!("goal < {RESTORE_GOAL_S:.0} s: {}", verdict(restore_ms / 1000.0 < RESTORE_GOAL_S)),
    );
    row(
        &format!("restore at the worst point (+{deltas} deltas)"),
        format!("{:.2} s", worst_ms / 1000.0),
        &format!("goal < {RESTORE_GOAL_S:.0} s: {}", verdict(worst_ms / 1000.0 < RESTORE_GOAL_S)),
    );
    row("batch (apply + produce outputs), median", format!("{m_batch:.1} ms"), "");
    row("delta checkpoint (encode + produce), median", format!("{m_ckpt:.1} ms"), "");
    row("delta bytes, median", format!("{:.1} KB", m_delta / 1000.0), "");
    row("batches per snapshot", format!("{per_snapshot:.0}"), "");
    row("snapshot amortized per batch", format!("{amortized_ms:.1} ms"), "");
    row(
        "checkpoint / batch (deltas + amortized snapshots)",
        format!("{:.1} %", share_amortized * 100.0),
        &format!(
            "goal < {:.0} %: {}",
            CHECKPOINT_SHARE_GOAL * 100.0,
            verdict(share_amortized < CHECKPOINT_SHARE_GOAL)
        ),
    );
    row(
        "bincode: bytes / encode / decode",
        format!("{:.1} MB / {bin_encode_ms:.0} / {bin_decode_ms:.0} ms", mb(bin_bytes)),
        "",
    );
    row(
        "JSON:    bytes / encode / decode",
        format!("{:.1} MB / {json_encode_ms:.0} / {json_decode_ms:.0} ms", mb(json_bytes)),
        "",
    );
    row(
        "JSON / bincode: bytes, encode, decode",
        format!(
            "{:.1}× {:.1}× {:.1}×",
            json_bytes as f64 / bin_bytes as f64,
            json_encode_ms / bin_encode_ms,
            json_decode_ms / bin_decode_ms
        ),
        "",
    );
    Ok(())
}
