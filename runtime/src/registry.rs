//! Processors behind one object-safe face, so the binary can keep them in one list (`src/registry.rs`)
//! and derive from their declarations what used to be wired by hand: topic creation, `riverbank run`,
//! `riverbank process NAME`, the sinks' inputs and the conformance suite.
use std::time::Duration;

use futures::future::BoxFuture;
use riverbank_schemas::processor::{Emit, Processor, Spec};
use riverbank_schemas::{Environment, RawEnvelope, Topics};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Writer};
use crate::config::Config;
use crate::engine::{self, OwnedRecord, Partition};

/// A registered processor.
pub trait Runnable: Send + Sync {
    fn name(&self) -> &'static str;
    fn spec(&self, topics: &Topics, env: Environment) -> Spec;
    /// Run it (and its router) until `stop`.
    fn run(&self, cfg: Config, stop: CancellationToken) -> BoxFuture<'static, anyhow::Result<()>>;
    fn examples(&self, env: Environment) -> Vec<RawEnvelope>;
    /// Apply `records` (as offsets 0.. of partition 0 of its log) to a fresh partition, through the
    /// engine the loop runs. After each index in `cuts` the state is checkpointed with the real
    /// checkpoint records (deltas and chunked snapshots) and the run continues from a restore of them.
    /// Returns every output in order; `Err` names a panic or a failed restore.
    fn replay(
        &self,
        topics: &Topics,
        env: Environment,
        records: &[OwnedRecord],
        cuts: &[usize],
    ) -> Result<Vec<Emit>, String>;
}

impl<P: Processor + Clone> Runnable for P {
    fn name(&self) -> &'static str {
        Processor::name(self)
    }
    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Processor::spec(self, topics, env)
    }
    fn run(&self, cfg: Config, stop: CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> {
        let p = self.clone();
        Box::pin(async move { crate::process::run(&cfg, p, stop).await })
    }
    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        Processor::examples(self, env)
    }
    fn replay(
        &self,
        topics: &Topics,
        env: Environment,
        records: &[OwnedRecord],
        cuts: &[usize],
    ) -> Result<Vec<Emit>, String> {
        replay(self, topics, env, records, cuts)
    }
}

/// Small checkpoint records, so replays with cuts exercise chunked snapshots and deltas alike.
const REPLAY_LIMITS: checkpoint::Limits = checkpoint::Limits {
    snapshot_every_batches: 3,
    record_bytes_max: 4096,
    restore_window_records: 1 << 20,
    restore_timeout: Duration::from_secs(60),
};

/// See [`Runnable::replay`].
pub fn replay<P: Processor>(
    p: &P,
    topics: &Topics,
    env: Environment,
    records: &[OwnedRecord],
    cuts: &[usize],
) -> Result<Vec<Emit>, String> {
    let spec = Processor::spec(p, topics, env);
    let ctx = engine::Ctx { topics, env, spec: &spec };
    let mut part: Partition<P::State> = Partition::empty();
    let mut writer = Writer::new(0);
    let mut log = Vec::new();
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let emitted =
            engine::step(p, &ctx, &mut part, &r.at(&spec.log, i as i64), None).map_err(|e| e.reason)?;
        out.extend(emitted);
        if cuts.contains(&i) {
            let changes = part.take_changes();
            let snapshot = || part.snapshot();
            let recs = checkpoint::records_for_batch(
                &mut writer,
                &REPLAY_LIMITS,
                "cp",
                &spec.log,
                0,
                i as i64 + 1,
                snapshot,
                changes,
            );
            for (_, e) in recs {
                log.push(checkpoint::decode(&e.payload)?);
            }
            let restored = checkpoint::rebuild(&log, &spec.log, 0).ok_or("no complete snapshot")?;
            if restored.next_offset != i as i64 + 1 {
                return Err(format!("restored at {} after input {i}", restored.next_offset));
            }
            part = Partition::restore(restored.entries)?;
        }
    }
    Ok(out)
}
