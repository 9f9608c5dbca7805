//! The contract between the runtime and the processors: a processor is a pure state machine.
//! It lives here, beside the event types, so processors depend on nothing that does I/O.
use uuid::Uuid;

use crate::{Environment, RawEnvelope, Topics};

/// One record to produce. `event_id` must be derived from the input (never random).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub topic: String,
    pub key: String,
    pub event_id: Uuid,
    pub payload: Vec<u8>,
}

/// What a processor answers for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Outputs to produce (business rejections are outputs too).
    Emit(Vec<Emit>),
    /// The input is unusable; it goes to the dead-letter topic with this reason.
    Poison(String),
}

/// Where an input came from: deterministic facts a processor may use (never the clock).
#[derive(Debug, Clone, Copy)]
pub struct InputRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub environment: Environment,
}

/// A pure state machine over its own state: no I/O, no clock, no randomness.
pub trait Processor: Send + Sync + 'static {
    type State: KvState + Send;
    fn name(&self) -> &'static str;
    /// The input topics. A stateful processor has exactly one, so each partition is one totally
    /// ordered history and a replay sees the same inputs in the same order.
    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String>;
    /// Whether the runtime checkpoints this processor's state (a stateless one needs no checkpoints).
    fn checkpoints(&self) -> bool {
        true
    }
    fn apply(&self, state: &mut Self::State, at: &InputRef<'_>, input: RawEnvelope) -> Verdict;
}

/// Processor state as keyed entries, so the runtime can checkpoint it as a full snapshot now and
/// then, and as the changed entries (a delta) after every batch.
pub trait KvState: Default + Sized {
    /// Every entry: a full snapshot.
    fn entries(&self) -> Vec<(String, serde_json::Value)>;
    /// Entries changed since the last call: `Some` upserted, `None` removed.
    fn take_changes(&mut self) -> Vec<(String, Option<serde_json::Value>)>;
    /// Rebuild from entries (a snapshot with later deltas applied).
    fn restore(entries: Vec<(String, serde_json::Value)>) -> Result<Self, String>;
}

impl KvState for () {
    fn entries(&self) -> Vec<(String, serde_json::Value)> {
        Vec::new()
    }
    fn take_changes(&mut self) -> Vec<(String, Option<serde_json::Value>)> {
        Vec::new()
    }
    fn restore(_: Vec<(String, serde_json::Value)>) -> Result<Self, String> {
        Ok(())
    }
}
