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
pub trait Processor: Send + 'static {
    type State: Default + Send;
    fn name(&self) -> &'static str;
    fn inputs(&self, topics: &Topics, env: Environment) -> Vec<String>;
    fn apply(&self, state: &mut Self::State, at: &InputRef<'_>, input: RawEnvelope) -> Verdict;
}
