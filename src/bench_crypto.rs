//! `riverbank bench crypto`: nanoseconds per field seal and open (AES-256-GCM envelopes of
//! riverbank-crypto) at 16, 256 and 4096 bytes of clear text, plus a data-key wrap and unwrap under the
//! key ring and a pseudonym; the median over `--runs` runs of `--iterations` operations each. CPU only:
//! no stack needed. Prints a table and writes a JSON report.
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
