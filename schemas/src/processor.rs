//! The contract between the runtime and the processors: a processor is a pure state machine.
//! It lives here, beside the event types, so processors depend on nothing that does I/O.
use uuid::Uuid;

pub use crate::state::{State, Timer, Timers};
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

/// How an input reached the processor's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// Written to the log itself (by ingest or another processor).
    Log,
    /// Copied by the router from a partitioned input, at that input's position.
    Routed { topic: &'a str, partition: i32, offset: i64 },
    /// Copied by the router from a broadcast (reference) input into every partition of the log. The
    /// position names the version of the reference data a decision used.
    Broadcast { topic: &'a str, partition: i32, offset: i64 },
}

/// Where an input came from: deterministic facts a processor may use (never the clock).
#[derive(Debug, Clone, Copy)]
pub struct InputRef<'a> {
    /// The processor's log.
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub environment: Environment,
    /// The partition's event clock (ms): the latest tick in the log so far (0 before the first, and
    /// always for a processor without ticks). Never the wall clock.
    pub now_ms: i64,
    pub via: Via<'a>,
}

impl<'a> InputRef<'a> {
    /// An input written straight to the log (tests and stateless processors).
    pub fn log(topic: &'a str, partition: i32, offset: i64, environment: Environment) -> Self {
        InputRef { topic, partition, offset, environment, now_ms: 0, via: Via::Log }
    }
}

/// A topic a processor produces, and the event types it carries there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    pub event_types: Vec<&'static str>,
}

impl Output {
    pub fn new(topic: String, event_types: &[&'static str]) -> Self {
        Output { topic, event_types: event_types.to_vec() }
    }
}

/// What a processor reads and writes in one environment. Everything else (topic creation, the router,
/// ticks, the sinks' inputs, the registry's checks) is derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The one log the processor consumes: each partition is one totally ordered history, so a replay
    /// sees the same inputs in the same order.
    pub log: String,
    /// Partitioned inputs the router copies into the log, each record to the partition of its key.
    pub routed: Vec<String>,
    /// Reference inputs the router copies into every partition of the log.
    pub broadcast: Vec<String>,
    /// Whether the router writes ticks (time) into every partition of the log; a processor with timers
    /// needs them.
    pub ticks: bool,
    pub outputs: Vec<Output>,
    /// Whether the runtime checkpoints this processor's state (a stateless one needs no checkpoints).
    pub stateful: bool,
}

impl Spec {
    /// A processor reading one log, with no router.
    pub fn reading(log: String) -> Self {
        Spec { log, routed: vec![], broadcast: vec![], ticks: false, outputs: vec![], stateful: true }
    }
    /// Whether a router runs for this processor.
    pub fn routes(&self) -> bool {
        self.ticks || !self.routed.is_empty() || !self.broadcast.is_empty()
    }
    pub fn output_topics(&self) -> impl Iterator<Item = &String> {
        self.outputs.iter().map(|o| &o.topic)
    }
    /// Every topic this processor reads.
    pub fn inputs(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.log).chain(&self.routed).chain(&self.broadcast)
    }
}

/// A pure state machine over its own state: no I/O, no clock, no randomness.
pub trait Processor: Send + Sync + 'static {
    type State: State;
    fn name(&self) -> &'static str;
    fn spec(&self, topics: &Topics, env: Environment) -> Spec;
    fn apply(&self, state: &mut Self::State, at: &InputRef<'_>, input: RawEnvelope) -> Verdict;
    /// A timer of the state came due (the runtime removed it first). `at` is the tick that fired it.
    fn on_timer(&self, _state: &mut Self::State, _at: &InputRef<'_>, _timer: Timer) -> Verdict {
        Verdict::Emit(Vec::new())
    }
    /// Representative inputs (valid and invalid) for the conformance suite every registered processor
    /// runs: replays, duplicates, checkpoint cuts and mutations are built from them.
    fn examples(&self, env: Environment) -> Vec<RawEnvelope>;
}

/// The typed payload of a version-1 input, or why it cannot be read (the engine dead-letters the input
/// with that reason). Every processor decodes its inputs through this one function.
pub fn decode_v1<P: serde::de::DeserializeOwned>(input: &RawEnvelope) -> Result<P, String> {
    if input.schema_version != 1 {
        return Err(format!("{} v{} is not understood (v1 only)", input.event_type, input.schema_version));
    }
    serde_json::from_value(input.payload.clone())
        .map_err(|e| format!("payload of {} does not match its schema: {e}", input.event_type))
}

/// Output number `index` of processor `name` for `input`: its id derived from (name, input id, index),
/// its envelope derived from the input (source `riverbank.{name}`, schema version 1), keyed by the input's
/// tenant. Replaying the input gives the same bytes.
pub fn derived_emit<P: serde::Serialize>(
    name: &str,
    input: &RawEnvelope,
    index: usize,
    topic: String,
    event_type: &str,
    payload: P,
) -> Emit {
    let event_id = crate::derived_id(&[name, &input.event_id.to_string(), &index.to_string()]);
    let source = format!("riverbank.{name}");
    let envelope = crate::Envelope::derived(input, event_id, event_type, 1, &source, payload);
    let payload = serde_json::to_vec(&envelope).unwrap_or_default();
    Emit { topic, key: input.tenant_id.clone(), event_id, payload }
}
