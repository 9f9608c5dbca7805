//! The processors' table tests drive a processor through this harness (tests only): its state and the
//! partition clock, inputs applied at the clock, a tick moving the clock and firing the timers due, as
//! the runtime drives a partition.
use chrono::DateTime;
use riverbank_schemas::processor::{Emit, InputRef, Processor, Verdict, Via};
use riverbank_schemas::state::State as _;
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope};

/// A processor, its state and the partition clock (ticks).
pub(crate) struct Harness<P: Processor> {
    pub(crate) p: P,
    pub(crate) s: P::State,
    /// Inputs made so far (their ids derive from it).
    pub(crate) seq: u64,
    pub(crate) now_ms: i64,
    /// The log inputs are applied from (`live.kyc.inputs`).
    input_topic: &'static str,
    /// What the inputs' ids derive from, with the sequence (`kyc-test`).
    id_prefix: &'static str,
}

impl<P: Processor> Harness<P> {
    /// `p` with an empty state at clock 0.
    pub(crate) fn of(p: P, input_topic: &'static str, id_prefix: &'static str) -> Self {
        Harness { p, s: P::State::empty(), seq: 0, now_ms: 0, input_topic, id_prefix }
    }

    /// A copy of this harness (its processor, sequence and clock) holding the state `s`.
    pub(crate) fn with_state(&self, s: P::State) -> Self
    where
        P: Clone,
    {
        Harness { p: self.p.clone(), s, ..*self }
    }

    pub(crate) fn at(&self) -> InputRef<'static> {
        InputRef {
            topic: self.input_topic,
            partition: 0,
            offset: 0,
            environment: Environment::Live,
            now_ms: self.now_ms,
            via: Via::Log,
        }
    }

    /// The next input: a live envelope of `tenant` at `at_ms`, its id derived from the sequence.
    pub(crate) fn envelope(
        &mut self,
        tenant: &str,
        event_type: &str,
        at_ms: i64,
        payload: serde_json::Value,
    ) -> RawEnvelope {
        self.seq += 1;
        let id = derived_id(&[self.id_prefix, &self.seq.to_string()]);
        let at = DateTime::from_timestamp_millis(at_ms).expect("a time");
        Envelope::new(id, event_type, tenant, Environment::Live, at, "test", payload)
    }

    /// Apply `e` at the clock; its outputs (poison fails the test).
    pub(crate) fn send_raw(&mut self, e: RawEnvelope) -> Vec<Emit> {
        let at = self.at();
        match self.p.apply(&mut self.s, &at, e) {
            Verdict::Emit(out) => out,
            Verdict::Poison(reason) => panic!("poison: {reason}"),
        }
    }

    /// Move the clock to `now_ms` (never back) and fire the timers due, as the runtime does on a tick.
    pub(crate) fn tick_raw(&mut self, now_ms: i64) -> Vec<Emit> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        while let Some(t) = self.s.timers().and_then(|t| t.pop_due(self.now_ms)) {
            let at = self.at();
            match self.p.on_timer(&mut self.s, &at, t) {
                Verdict::Emit(e) => out.extend(e),
                Verdict::Poison(r) => panic!("timer poison: {r}"),
            }
        }
        out
    }
}
