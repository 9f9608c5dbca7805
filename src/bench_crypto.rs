//! `riverbank bench crypto`: nanoseconds per field seal and open (AES-256-GCM envelopes of
//! riverbank-crypto) at 16, 256 and 4096 bytes of clear text, plus a data-key wrap and unwrap under the
//! key ring and a pseudonym; the median over `--runs` runs of `--iterations` operations each. CPU only:
//! no stack needed. Prints a table and writes a JSON report.
//!
//! The audit trail's cost too: records per second through the audit processor's `apply` (canonical
//! encoding, SHA-256 chain, Merkle compact range, the record's JSON) with a signed checkpoint every 1,000
//! records (the default) and after every record (the worst case), and one Ed25519 signature alone.
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use riverbank_crypto::field::{self, FieldContext};
use riverbank_crypto::keys::{DataClass, Dek, DekContext, KekEntry, KeyRing, KeyWrapper as _};

#[derive(clap::Args)]
pub struct Options {
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 31)]
    pub runs: usize,
    /// Operations per run.
    #[arg(long, default_value_t = 2_000)]
    pub iterations: u32,
    #[arg(long, default_value = "target/bench/crypto.json")]
    pub json: PathBuf,
}

const SIZES_BYTES: [usize; 3] = [16, 256, 4096];

/// Median ns per operation of `op` over `runs` runs of `iterations` calls.
fn median_ns(
    runs: usize,
    iterations: u32,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut per_op = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        for _ in 0..iterations {
            op()?;
        }
        let ns = start.elapsed().as_nanos() / u128::from(iterations.max(1));
        per_op.push(u64::try_from(ns).unwrap_or(u64::MAX));
    }
    per_op.sort_unstable();
    Ok(per_op[per_op.len() / 2])
}

pub fn crypto(o: &Options) -> anyhow::Result<()> {
    let dek = Dek::generate()?;
    let ctx = FieldContext {
        tenant: "bench-tenant",
        environment: "live",
        subject: "user-0001",
        field: "/applicant/national_id",
        record: "0f0e0d0c-0b0a-4908-8706-050403020100",
    };
    let key_id = field::key_id(ctx.subject, DataClass::PII_NATIONAL_ID, 1);
    let mut rows = Vec::new();
    println!("{:<22} {:>8} {:>10}", "operation", "bytes", "ns/op");
    for size in SIZES_BYTES {
        let clear = vec![0x5au8; size];
        let seal_ns = median_ns(o.runs, o.iterations, || {
            black_box(field::seal(&dek, &key_id, &ctx, black_box(&clear))?);
            Ok(())
        })?;
        let sealed = field::seal(&dek, &key_id, &ctx, &clear)?;
        let open_ns = median_ns(o.runs, o.iterations, || {
            black_box(field::open(&dek, &ctx, black_box(&sealed))?);
            Ok(())
        })?;
        for (op, ns) in [("field seal", seal_ns), ("field open", open_ns)] {
            println!("{op:<22} {size:>8} {ns:>10}");
            rows.push(serde_json::json!({ "operation": op, "bytes": size, "ns_per_op": ns }));
        }
    }
    let ring = KeyRing::from_entries(&[KekEntry {
        id: "bench-kek".into(),
        class: DataClass::PII_NATIONAL_ID.as_str().into(),
        key: Dek::generate()?.expose_secret().iter().map(|b| format!("{b:02x}")).collect(),
        active: true,
    }])?;
    let dctx = DekContext {
        tenant: ctx.tenant,
        environment: ctx.environment,
        subject: ctx.subject,
        class: DataClass::PII_NATIONAL_ID,
        version: 1,
    };
    let wrap_ns = median_ns(o.runs, o.iterations, || {
        black_box(ring.wrap(&dctx, &dek)?);
        Ok(())
    })?;
    let wrapped = ring.wrap(&dctx, &dek)?;
    let unwrap_ns = median_ns(o.runs, o.iterations, || {
        black_box(ring.unwrap(&dctx, &wrapped)?);
        Ok(())
    })?;
    let pkey = [7u8; 32];
    let pseudonym_ns = median_ns(o.runs, o.iterations, || {
        black_box(riverbank_crypto::pseudonym::pseudonym(&pkey, ctx.tenant, black_box(ctx.subject)));
        Ok(())
    })?;
    for (op, ns) in [("data key wrap", wrap_ns), ("data key unwrap", unwrap_ns), ("pseudonym", pseudonym_ns)]
    {
        println!("{op:<22} {:>8} {ns:>10}", "-");
        rows.push(serde_json::json!({ "operation": op, "bytes": null, "ns_per_op": ns }));
    }
    rows.extend(audit_chain(o)?);
    let report = serde_json::json!({
        "bench": "crypto",
        "method": format!("median of {} runs of {} operations, one thread", o.runs, o.iterations),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "results": rows,
    });
    if let Some(dir) = o.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| o.json.display().to_string())?;
    println!("report: {}", o.json.display());
    Ok(())
}

/// Audit records per second through the processor (median of `runs` runs over fresh state), and the
/// nanoseconds of one checkpoint signature.
fn audit_chain(o: &Options) -> anyhow::Result<Vec<serde_json::Value>> {
    use riverbank_processors::audit::{AuditProcessor, AuditSettings, AuditState};
    use riverbank_schemas::processor::{InputRef, Processor as _, Verdict};
    const RECORDS_PER_RUN: usize = 20_000;
    const TENANTS: usize = 10;
    let signer = std::sync::Arc::new(riverbank_crypto::sign::CheckpointSigner::from_seed(&[9u8; 32]));
    let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    let inputs: Vec<riverbank_schemas::RawEnvelope> = (0..RECORDS_PER_RUN)
        .map(|i| {
            let id = riverbank_schemas::derived_id(&["bench-audit", &i.to_string()]);
            let payload = serde_json::json!({"transfer_id": format!("tr_{i}"), "previous": "PROCESSING", "status": "COMPLETED"});
            let at = t0 + chrono::Duration::milliseconds(i as i64);
            riverbank_schemas::Envelope::new(id, "transfer.status_changed", &format!("tenant-{}", i % TENANTS),
                riverbank_schemas::Environment::Live, at, "bench", payload)
        })
        .collect();
    let mut out = Vec::new();
    println!("{:<34} {:>12}", "audit chain", "records/s");
    for every in [1_000u64, 1] {
        let p = AuditProcessor::new(
            riverbank_schemas::Topics::new("bench."),
            AuditSettings {
                signer: Some(signer.clone()),
                checkpoint_every_records: every,
                ..AuditSettings::default()
            },
        );
        let runs = (o.runs / 4).max(3);
        let mut per_s = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut state = AuditState::new();
            let at = InputRef::log("bench.live.audit.inputs", 0, 0, riverbank_schemas::Environment::Live);
            let start = Instant::now();
            for e in &inputs {
                match p.apply(&mut state, &at, e.clone()) {
                    Verdict::Emit(emits) => {
                        black_box(emits);
                    }
                    Verdict::Poison(r) => anyhow::bail!("bench input refused: {r}"),
                }
            }
            let ns = start.elapsed().as_nanos().max(1);
            per_s.push(u64::try_from(RECORDS_PER_RUN as u128 * 1_000_000_000 / ns).unwrap_or(u64::MAX));
        }
        per_s.sort_unstable();
        let median = per_s[per_s.len() / 2];
        let label = format!("apply, checkpoint every {every}");
        println!("{label:<34} {median:>12}");
        out.push(
            serde_json::json!({ "operation": label, "bytes": null, "records_per_s": median, "runs": runs }),
        );
    }
    let message = riverbank_schemas::audit::signed_message(
        "tenant-0",
        riverbank_schemas::Environment::Live,
        1000,
        &"a".repeat(64),
        &"b".repeat(64),
        0,
    );
    let sign_ns = median_ns(o.runs, o.iterations / 4 + 1, || {
        black_box(signer.sign(black_box(&message)));
        Ok(())
    })?;
    println!("{:<22} {:>8} {sign_ns:>10}", "checkpoint sign", "-");
    out.push(serde_json::json!({ "operation": "checkpoint sign", "bytes": null, "ns_per_op": sign_ns }));
    Ok(out)
}
