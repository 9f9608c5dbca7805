//! What every registered processor gets by being registered (`riverbank::registry::processors`, and the
//! worked examples in `riverbank::registry::examples`), with no per-processor code. Stack-free:
//! processors run through the engine the loop runs and the real checkpoint encoding
//! (`Runnable::replay`), in both environments.
//!
//! Conformance, per processor, from its `examples`, delivered as the log would hold them: written to
//! the log for a processor without a router; otherwise copied by the router from each of its routed
//! and broadcast inputs in turn (a copy per source offset, so a duplicate is the same event again at a
//! new offset, as an upstream processor re-emits it after a crash). With ticks, a tick follows each
//! example at its event time and a far one ends the log, so timers fire.
//! - a replay is deterministic (same ids, same bytes);
//! - outputs go only to declared topics (or the dead-letter topic) and no event id repeats in a run;
//! - a duplicated input (right after, midway, at the end) emits nothing the run without it did not;
//! - checkpointing and restoring after any input changes no output;
//! - proptest: mutated, reordered, repeated, random-byte and tick inputs never panic, and random
//!   checkpoint cuts over them change no output.
//!
//! Registry: every declared output has a consumer and a JSON Schema per event type, names are unique,
//! every topic is created, and `Topics::upstream` follows the chain the sinks' watermark relies on.
//!
//! Every check is a plain function returning the problems it found; the last tests feed them broken
//! declarations and a flawed processor and assert they are reported, so no check passes vacuously.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};
use riverbank::registry;
use riverbank_runtime::engine::OwnedRecord;
use riverbank_runtime::registry::Runnable;
use riverbank_runtime::{kafka, Config};
use riverbank_schemas::processor::{Emit, InputRef, Output, Processor, Spec, Verdict};
use riverbank_schemas::state::Table;
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics};
use serde_json::Value;

/// Cases per processor and environment for each property test (debug build, 2 cores: keep it modest).
const PROPTEST_CASES: u32 = 128;
/// Problems shown per processor, environment and property at most.
const PROBLEMS_SHOWN_MAX: usize = 4;
/// Inputs in one generated sequence at most.
const SEQUENCE_LEN_MAX: usize = 40;

fn config() -> Config {
    Config::load(None).unwrap_or_else(|e| panic!("the embedded default config loads: {e}"))
}

// ---------------------------------------------------------------------------------------------------
// Conformance
// ---------------------------------------------------------------------------------------------------

/// One processor in one environment, as the conformance checks see it.
struct Subject<'a> {
    p: &'a dyn Runnable,
    env: Environment,
    topics: Topics,
    spec: Spec,
    examples: Vec<RawEnvelope>,
}

/// One entry of a log built from the examples.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Example(usize),
    Tick(i64),
}

/// The examples as a log, delivered one way: `via` a source topic the router copies from, or (`None`)
/// written to the log.
struct Base {
    via: Option<String>,
    entries: Vec<Entry>,
}

impl Base {
    fn label(&self) -> String {
        match &self.via {
            Some(t) => format!("examples copied from {t}"),
            None => "examples written to the log".to_owned(),
        }
    }
    /// (example, position) of every example in the log.
    fn example_at(&self) -> Vec<(usize, usize)> {
        let at = self.entries.iter().enumerate();
        at.filter_map(|(pos, e)| match e {
            Entry::Example(i) => Some((*i, pos)),
            Entry::Tick(_) => None,
        })
        .collect()
    }
}

impl<'a> Subject<'a> {
    fn new(p: &'a dyn Runnable, topics: &Topics, env: Environment) -> Self {
        Subject { p, env, topics: topics.clone(), spec: p.spec(topics, env), examples: p.examples(env) }
    }

    fn label(&self) -> String {
        format!("processor {:?} ({})", self.p.name(), self.env)
    }

    fn dead_letters(&self) -> String {
        self.topics.dead_letters(self.env)
    }

    fn replay(&self, records: &[OwnedRecord], cuts: &[usize]) -> Result<Vec<Emit>, String> {
        self.p.replay(&self.topics, self.env, records, cuts).map_err(|e| format!("replay failed: {e}"))
    }

    fn sources(&self) -> Vec<&String> {
        self.spec.routed.iter().chain(&self.spec.broadcast).collect()
    }

    /// The examples as logs: one per way into the log.
    fn bases(&self) -> Vec<Base> {
        let mut entries = Vec::new();
        let mut last_ms = 0i64;
        for (i, e) in self.examples.iter().enumerate() {
            entries.push(Entry::Example(i));
            if self.spec.ticks {
                last_ms = last_ms.max(e.occurred_at.timestamp_millis());
                entries.push(Entry::Tick(e.occurred_at.timestamp_millis()));
            }
        }
        if self.spec.ticks {
            const DAYS_90_MS: i64 = 90 * 24 * 3600 * 1000;
            entries.push(Entry::Tick(last_ms.saturating_add(DAYS_90_MS)));
        }
        let sources = self.sources();
        if sources.is_empty() {
            return vec![Base { via: None, entries }];
        }
        sources.into_iter().map(|t| Base { via: Some(t.clone()), entries: entries.clone() }).collect()
    }

    /// The records of `entries` delivered like `base`: each router copy at the source's next offset.
    fn records(&self, base: &Base, entries: &[Entry]) -> Vec<OwnedRecord> {
        let mut next_offset = 0i64;
        let mut record = |e: &Entry| match (e, &base.via) {
            (Entry::Tick(ms), _) => OwnedRecord::tick(*ms),
            (Entry::Example(i), None) => OwnedRecord::input(&self.examples[*i]),
            (Entry::Example(i), Some(source)) => {
                next_offset += 1;
                OwnedRecord::routed(&self.examples[*i], source, 0, next_offset - 1)
            }
        };
        entries.iter().map(&mut record).collect()
    }

    /// Replay `base`; a failure names how the examples were delivered.
    fn replay_base(&self, base: &Base) -> Result<Vec<Emit>, String> {
        self.replay(&self.records(base, &base.entries), &[]).map_err(|e| format!("{}: {e}", base.label()))
    }
}

/// Run `check` for every registered processor (and worked example) in both environments; fail with
/// every problem found, each naming its processor.
fn check_every_processor(property: &str, check: impl Fn(&Subject<'_>) -> Vec<String>) {
    let cfg = config();
    let topics = kafka::topics(&cfg.kafka);
    let mut all = registry::processors(&cfg);
    assert!(!all.is_empty(), "riverbank::registry::processors registers nothing");
    all.extend(registry::examples(&cfg));
    let mut problems = Vec::new();
    for p in &all {
        for env in Environment::ALL {
            let s = Subject::new(p.as_ref(), &topics, env);
            let found = check(&s);
            let more = found.len().saturating_sub(PROBLEMS_SHOWN_MAX);
            let shown = found.into_iter().take(PROBLEMS_SHOWN_MAX);
            problems.extend(shown.map(|m| format!("{}: {m}", s.label())));
            if more > 0 {
                problems.push(format!("{}: … and {more} more", s.label()));
            }
        }
    }
    assert!(problems.is_empty(), "{property}:\n{}", problems.join("\n"));
}

fn show(e: &Emit) -> String {
    const SHOWN_CHARS_MAX: usize = 400;
    let text = String::from_utf8_lossy(&e.payload);
    let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    if text.chars().count() > SHOWN_CHARS_MAX {
        shown.push('…');
    }
    format!("[{} {} key={:?} {shown}]", e.topic, e.event_id, e.key)
}

/// Where two payloads first differ, with some context.
fn bytes_difference(first: &[u8], now: &[u8]) -> String {
    const CONTEXT_BYTES: usize = 60;
    let at = first.iter().zip(now).position(|(a, b)| a != b).unwrap_or(first.len().min(now.len()));
    let around = |b: &[u8]| {
        let to = (at + CONTEXT_BYTES).min(b.len());
        let from = at.saturating_sub(CONTEXT_BYTES).min(to);
        format!("…{}…", String::from_utf8_lossy(&b[from..to]))
    };
    format!("from byte {at}: first {} now {}", around(first), around(now))
}

/// Where two output sequences first differ, if they do.
fn first_difference(expected: &[Emit], got: &[Emit]) -> Option<String> {
    if let Some(i) = expected.iter().zip(got).position(|(a, b)| a != b) {
        let (a, b) = (&expected[i], &got[i]);
        if a.topic == b.topic && a.event_id == b.event_id && a.key == b.key {
            let diff = bytes_difference(&a.payload, &b.payload);
            return Some(format!("output {i} ({} on {}) differs {diff}", a.event_id, a.topic));
        }
        return Some(format!("output {i} differs: expected {} but got {}", show(a), show(b)));
    }
    match expected.len().cmp(&got.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Less => Some(format!(
            "{} outputs instead of {}; the first extra one: {}",
            got.len(),
            expected.len(),
            show(&got[expected.len()])
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "{} outputs instead of {}; the first missing one: {}",
            got.len(),
            expected.len(),
            show(&expected[got.len()])
        )),
    }
}

/// Outputs to a topic the spec does not declare (the dead-letter topic is every processor's).
fn undeclared_topics(spec: &Spec, dead_letters: &str, out: &[Emit]) -> Vec<String> {
    let declared: BTreeSet<&str> = spec.output_topics().map(String::as_str).collect();
    let stray: BTreeSet<&str> = out
        .iter()
        .map(|e| e.topic.as_str())
        .filter(|t| *t != dead_letters && !declared.contains(t))
        .collect();
    stray
        .into_iter()
        .map(|t| {
            format!(
                "emits to undeclared topic {t} (declared: {declared:?}): declare it in the processor's \
                 spec outputs, with its event types"
            )
        })
        .collect()
}

/// Event ids emitted more than once in one run.
fn repeated_ids(out: &[Emit]) -> Vec<String> {
    let mut first: HashMap<uuid::Uuid, &Emit> = HashMap::new();
    let mut problems = Vec::new();
    for e in out {
        if let Some(earlier) = first.insert(e.event_id, e) {
            problems.push(format!(
                "event id {} emitted twice in one run: {} and {}; derive each output's id from its input and \
                 its position among that input's outputs",
                e.event_id,
                show(earlier),
                show(e)
            ));
        }
    }
    problems
}

/// A dead letter without what depends on where its input sat in the log (its id and offset): a
/// duplicate input shifts every later input's offset.
fn dead_letter_gist(e: &Emit) -> String {
    match serde_json::from_slice::<Value>(&e.payload) {
        Ok(Value::Object(mut m)) => {
            m.remove("dead_letter_id");
            m.remove("source_offset");
            Value::Object(m).to_string()
        }
        _ => format!("unparsable dead letter {:?}", String::from_utf8_lossy(&e.payload)),
    }
}

/// Outputs of `run` that `original` did not emit: an event id it did not emit, or one it emitted with
/// other bytes (or to another topic). Dead letters are compared by their gist (see [`dead_letter_gist`]).
fn new_outputs(original: &[Emit], run: &[Emit], dead_letters: &str) -> Vec<String> {
    let by_id: HashMap<uuid::Uuid, &Emit> =
        original.iter().filter(|e| e.topic != dead_letters).map(|e| (e.event_id, e)).collect();
    let letters: HashSet<String> =
        original.iter().filter(|e| e.topic == dead_letters).map(dead_letter_gist).collect();
    let mut problems = Vec::new();
    for e in run {
        if e.topic == dead_letters {
            if !letters.contains(&dead_letter_gist(e)) {
                problems.push(format!("a dead letter the run without the copy did not emit: {}", show(e)));
            }
            continue;
        }
        match by_id.get(&e.event_id) {
            None => problems.push(format!("a new output: {}", show(e))),
            Some(o) if o.topic != e.topic => problems.push(format!(
                "event {} again on another topic: first {} now {}",
                e.event_id,
                show(o),
                show(e)
            )),
            Some(o) if o.payload != e.payload => problems.push(format!(
                "event {} on {} again with other bytes {}",
                e.event_id,
                e.topic,
                bytes_difference(&o.payload, &e.payload)
            )),
            Some(_) => {}
        }
    }
    problems
}

/// (a) Replaying the examples twice gives the same outputs.
fn deterministic(s: &Subject<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    for base in s.bases() {
        match (s.replay_base(&base), s.replay_base(&base)) {
            (Ok(a), Ok(b)) => problems.extend(first_difference(&a, &b).map(|d| {
                format!(
                    "two replays of its {} differ (an id or byte not derived from the input and state: \
                     a clock, randomness, hash-map order?): {d}",
                    base.label()
                )
            })),
            (Err(e), _) | (_, Err(e)) => problems.push(e),
        }
    }
    problems
}

/// (b) Examples exist and produce something; outputs go to declared topics only; no id repeats.
fn declared_and_unique(s: &Subject<'_>) -> Vec<String> {
    if s.examples.is_empty() {
        return vec![
            "has no examples: Processor::examples must return representative inputs (valid and invalid), \
             or the conformance suite checks nothing"
                .to_owned(),
        ];
    }
    let declared: BTreeSet<&String> = s.spec.output_topics().collect();
    let mut problems = Vec::new();
    let mut emits = false;
    for base in s.bases() {
        let out = match s.replay_base(&base) {
            Ok(out) => out,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let of = |m: String| format!("{}: {m}", base.label());
        problems.extend(undeclared_topics(&s.spec, &s.dead_letters(), &out).into_iter().map(of));
        problems.extend(repeated_ids(&out).into_iter().map(of));
        emits |= out.iter().any(|e| declared.contains(&e.topic));
    }
    if !emits {
        problems.push(
            "its examples emit nothing to a declared output: add examples that do, or the suite \
             checks nothing"
                .to_owned(),
        );
    }
    problems
}

/// (c) A second copy of any example, right after it, midway to the end or at the end, emits nothing
/// new.
fn duplicates_add_nothing(s: &Subject<'_>) -> Vec<String> {
    s.bases().iter().flat_map(|base| duplicates_add_nothing_in(s, base)).collect()
}

fn duplicates_add_nothing_in(s: &Subject<'_>, base: &Base) -> Vec<String> {
    let original = match s.replay_base(base) {
        Ok(out) => out,
        Err(e) => return vec![e],
    };
    let dead = s.dead_letters();
    let mut problems = Vec::new();
    for (i, pos) in base.example_at() {
        let end = base.entries.len();
        let at: BTreeSet<usize> = [pos + 1, (pos + 1 + end) / 2, end].into();
        for at in at {
            let mut entries = base.entries.clone();
            entries.insert(at, Entry::Example(i));
            let records = s.records(base, &entries);
            let what = format!(
                "{}: example {i} ({} {}) again as input {at} of {}",
                base.label(),
                s.examples[i].event_type,
                s.examples[i].event_id,
                records.len()
            );
            match s.replay(&records, &[]) {
                Ok(out) => {
                    problems.extend(new_outputs(&original, &out, &dead).into_iter().map(|m| {
                        format!("{what}: {m} (applying an input twice must equal applying it once)")
                    }))
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
    }
    problems
}

/// (d) Checkpoint + restore after any input (one cut, and several sets of cuts) changes no output.
fn cuts_change_nothing(s: &Subject<'_>) -> Vec<String> {
    s.bases().iter().flat_map(|base| cuts_change_nothing_in(s, base)).collect()
}

fn cuts_change_nothing_in(s: &Subject<'_>, base: &Base) -> Vec<String> {
    let records = s.records(base, &base.entries);
    let original = match s.replay(&records, &[]) {
        Ok(out) => out,
        Err(e) => return vec![format!("{}: {e}", base.label())],
    };
    let n = records.len();
    let mut sets: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    sets.push((0..n).collect());
    sets.push((0..n).step_by(2).collect());
    sets.push((1..n).step_by(3).collect());
    let mut problems = Vec::new();
    for cuts in sets {
        match s.replay(&records, &cuts) {
            Ok(out) => problems.extend(first_difference(&original, &out).map(|d| {
                format!(
                    "{}: a checkpoint and restore after inputs {cuts:?} changes its outputs: {d} (is all \
                     state in its Tables/Cells/Timers, and rebuilt in `restored`?)",
                    base.label()
                )
            })),
            Err(e) => problems.push(format!("{}: with checkpoints after inputs {cuts:?}: {e}", base.label())),
        }
    }
    problems
}

// ---- (e) generated inputs ----

/// A replacement JSON value.
#[derive(Debug, Clone)]
enum Wild {
    Json(Value),
    /// A number literal beyond i64/u64 (put into the bytes: `Value` cannot hold it).
    Huge(String),
}

/// One generated input. Example selectors are taken modulo the number of examples.
#[derive(Debug, Clone)]
enum Op {
    Example(usize),
    /// An example with one payload value (at any depth, or the whole payload) replaced.
    Field {
        example: usize,
        field: usize,
        value: Wild,
    },
    /// An example with one top-level envelope field replaced.
    EnvelopeField {
        example: usize,
        field: usize,
        value: Wild,
    },
    /// An example with the event type of another example.
    TypeOf {
        example: usize,
        other: usize,
    },
    EventType {
        example: usize,
        event_type: String,
    },
    SchemaVersion {
        example: usize,
        version: u16,
    },
    OtherEnvironment(usize),
    Bytes(Vec<u8>),
    Tick(i64),
    /// A tick header that may not be a number.
    TickHeader(String),
    /// An example copied by the router from one of the spec's routed/broadcast inputs (a plain input
    /// when it has none).
    Routed {
        example: usize,
        source: usize,
        partition: i32,
        offset: i64,
    },
}

fn wild() -> impl Strategy<Value = Wild> {
    prop_oneof![
        Just(Wild::Json(Value::Null)),
        any::<String>().prop_map(|s| Wild::Json(s.into())),
        "[a-zA-Z0-9_.-]{0,16}".prop_map(|s| Wild::Json(s.into())),
        any::<i64>().prop_map(|n| Wild::Json(n.into())),
        (i64::MIN..0).prop_map(|n| Wild::Json(n.into())),
        Just(Wild::Json(u64::MAX.into())),
        Just(Wild::Json(i64::MIN.into())),
        Just(Wild::Json(serde_json::json!(1e300))),
        Just(Wild::Json(serde_json::json!(-0.5))),
        any::<bool>().prop_map(|b| Wild::Json(b.into())),
        Just(Wild::Json(serde_json::json!([]))),
        Just(Wild::Json(serde_json::json!({}))),
        "-?[1-9][0-9]{19,40}".prop_map(Wild::Huge),
    ]
}

fn tick_ms() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..4_000_000_000_000, any::<i64>(), Just(i64::MAX), Just(i64::MIN)]
}

fn op() -> impl Strategy<Value = Op> {
    let ex = any::<usize>();
    prop_oneof![
        8 => ex.prop_map(Op::Example),
        4 => (ex, any::<usize>(), wild())
            .prop_map(|(example, field, value)| Op::Field { example, field, value }),
        1 => (ex, any::<usize>(), wild())
            .prop_map(|(example, field, value)| Op::EnvelopeField { example, field, value }),
        1 => (ex, any::<usize>()).prop_map(|(example, other)| Op::TypeOf { example, other }),
        1 => (ex, prop_oneof!["[a-z_.]{0,24}", any::<String>()])
            .prop_map(|(example, event_type)| Op::EventType { example, event_type }),
        1 => (ex, any::<u16>()).prop_map(|(example, version)| Op::SchemaVersion { example, version }),
        1 => ex.prop_map(Op::OtherEnvironment),
        1 => vec(any::<u8>(), 0..64).prop_map(Op::Bytes),
        2 => tick_ms().prop_map(Op::Tick),
        1 => "-?[0-9a-z]{0,12}".prop_map(Op::TickHeader),
        1 => (ex, any::<usize>(), 0i32..3, -1i64..20)
            .prop_map(|(example, source, partition, o)| Op::Routed { example, source, partition, offset: o }),
    ]
}

const HUGE_SENTINEL: &str = "riverbank-registry-test-huge-number";

/// JSON pointers to every value under `v` (at any depth).
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, &p, out);
            }
        }
        _ => {}
    }
}

/// `envelope` as JSON with the value at `pointer` replaced.
fn replaced(envelope: Value, pointer: &str, value: &Wild) -> Vec<u8> {
    let mut envelope = envelope;
    if let Some(slot) = envelope.pointer_mut(pointer) {
        *slot = match value {
            Wild::Json(v) => v.clone(),
            Wild::Huge(_) => Value::String(HUGE_SENTINEL.to_owned()),
        };
    }
    let text = envelope.to_string();
    match value {
        Wild::Huge(digits) => text.replace(&format!("\"{HUGE_SENTINEL}\""), digits).into_bytes(),
        Wild::Json(_) => text.into_bytes(),
    }
}

fn raw(payload: Vec<u8>) -> OwnedRecord {
    OwnedRecord { payload, source: None, tick: None }
}

/// The log a generated sequence stands for.
fn build(s: &Subject<'_>, ops: &[Op]) -> Vec<OwnedRecord> {
    let n = s.examples.len();
    let example = |i: usize| s.examples[i % n].clone();
    let as_json = |e: &RawEnvelope| serde_json::to_value(e).unwrap_or(Value::Null);
    let sources: Vec<&String> = s.spec.routed.iter().chain(&s.spec.broadcast).collect();
    ops.iter()
        .map(|op| match op {
            Op::Example(i) => OwnedRecord::input(&example(*i)),
            Op::Field { example: i, field, value } => {
                let e = example(*i);
                let mut ptrs = Vec::new();
                pointers(&e.payload, "/payload", &mut ptrs);
                ptrs.push("/payload".to_owned());
                raw(replaced(as_json(&e), &ptrs[field % ptrs.len()], value))
            }
            Op::EnvelopeField { example: i, field, value } => {
                let e = as_json(&example(*i));
                let keys: Vec<String> =
                    e.as_object().map(|m| m.keys().map(|k| format!("/{k}")).collect()).unwrap_or_default();
                match keys.get(field % keys.len().max(1)) {
                    Some(k) => raw(replaced(e.clone(), k, value)),
                    None => raw(e.to_string().into_bytes()),
                }
            }
            Op::TypeOf { example: i, other } => {
                let mut e = example(*i);
                e.event_type = example(*other).event_type;
                OwnedRecord::input(&e)
            }
            Op::EventType { example: i, event_type } => {
                let mut e = example(*i);
                e.event_type = event_type.clone();
                OwnedRecord::input(&e)
            }
            Op::SchemaVersion { example: i, version } => {
                let mut e = example(*i);
                e.schema_version = *version;
                OwnedRecord::input(&e)
            }
            Op::OtherEnvironment(i) => {
                let mut e = example(*i);
                e.environment = match e.environment {
                    Environment::Live => Environment::Sandbox,
                    Environment::Sandbox => Environment::Live,
                };
                OwnedRecord::input(&e)
            }
            Op::Bytes(bytes) => raw(bytes.clone()),
            Op::Tick(ms) => OwnedRecord::tick(*ms),
            Op::TickHeader(h) => OwnedRecord { payload: Vec::new(), source: None, tick: Some(h.clone()) },
            Op::Routed { example: i, source, partition, offset } => {
                match sources.get(source % sources.len().max(1)) {
                    Some(topic) => OwnedRecord::routed(&example(*i), topic, *partition, *offset),
                    None => OwnedRecord::input(&example(*i)),
                }
            }
        })
        .collect()
}

fn show_records(records: &[OwnedRecord]) -> String {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut line = format!("  {i}: {}", String::from_utf8_lossy(&r.payload));
            if let Some(t) = &r.tick {
                line.push_str(&format!(" [tick {t:?}]"));
            }
            if let Some(src) = &r.source {
                line.push_str(&format!(" [source {src:?}]"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run `check` over generated sequences (and checkpoint cuts into them); the problem, if any, with the
/// minimal (shrunk) sequence as a reproduction.
fn generated(
    s: &Subject<'_>,
    cases: u32,
    check: impl Fn(&Subject<'_>, &[OwnedRecord], &[usize]) -> Result<(), String>,
) -> Vec<String> {
    if s.examples.is_empty() {
        return Vec::new(); // reported by `declared_and_unique`
    }
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let strategy = (vec(op(), 0..SEQUENCE_LEN_MAX), vec(any::<Index>(), 0..6));
    let cut_at = |records: &[OwnedRecord], cuts: &[Index]| -> Vec<usize> {
        if records.is_empty() {
            return Vec::new();
        }
        let set: BTreeSet<usize> = cuts.iter().map(|c| c.index(records.len())).collect();
        set.into_iter().collect()
    };
    let result = runner.run(&strategy, |(ops, cuts)| {
        let records = build(s, &ops);
        let cuts = cut_at(&records, &cuts);
        check(s, &records, &cuts).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => Vec::new(),
        Err(TestError::Fail(why, (ops, cuts))) => {
            let records = build(s, &ops);
            let cuts = cut_at(&records, &cuts);
            vec![format!(
                "{why}\n minimal case: ops {ops:?}\n as records (cuts after {cuts:?}):\n{}",
                show_records(&records)
            )]
        }
        Err(TestError::Abort(why)) => vec![format!("proptest aborted: {why}")],
    }
}

/// (e) Generated inputs never panic the processor, go to declared topics, and replay identically.
fn never_panics(s: &Subject<'_>, cases: u32) -> Vec<String> {
    generated(s, cases, |s, records, _| {
        let a = s.replay(records, &[])?;
        let stray = undeclared_topics(&s.spec, &s.dead_letters(), &a);
        if !stray.is_empty() {
            return Err(stray.join("; "));
        }
        let b = s.replay(records, &[])?;
        match first_difference(&a, &b) {
            Some(d) => Err(format!("two replays differ: {d}")),
            None => Ok(()),
        }
    })
}

/// (d) under (e): random checkpoint cuts over generated inputs change no output.
fn random_cuts_change_nothing(s: &Subject<'_>, cases: u32) -> Vec<String> {
    generated(s, cases, |s, records, cuts| {
        let a = s.replay(records, &[])?;
        let b = s.replay(records, cuts)?;
        match first_difference(&a, &b) {
            Some(d) => {
                Err(format!("a checkpoint and restore after inputs {cuts:?} changes its outputs: {d}"))
            }
            None => Ok(()),
        }
    })
}

#[test]
fn conformance_replays_are_deterministic() {
    check_every_processor("replaying the examples twice must give identical outputs", deterministic);
}

#[test]
fn conformance_outputs_are_declared_and_ids_unique() {
    check_every_processor(
        "examples must emit, to declared topics (or the dead-letter topic) only, under unique event ids",
        declared_and_unique,
    );
}

#[test]
fn conformance_a_duplicate_input_emits_nothing_new() {
    check_every_processor(
        "a second copy of an input must emit nothing the run without it did not",
        duplicates_add_nothing,
    );
}

#[test]
fn conformance_checkpoint_cuts_change_no_output() {
    check_every_processor(
        "a checkpoint and restore after any input must not change the outputs",
        cuts_change_nothing,
    );
}

#[test]
fn conformance_generated_inputs_never_panic() {
    check_every_processor(
        "mutated, repeated, reordered and random inputs must never panic a processor (money arithmetic \
         is checked; a bad input is a rejection or a dead letter)",
        |s| never_panics(s, PROPTEST_CASES),
    );
}

#[test]
fn conformance_random_cuts_over_generated_inputs_change_no_output() {
    check_every_processor("checkpoint cuts over generated inputs must not change the outputs", |s| {
        random_cuts_change_nothing(s, PROPTEST_CASES)
    });
}

// ---------------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------------

/// One processor's declaration in one environment.
#[derive(Clone)]
struct Declared {
    name: &'static str,
    env: Environment,
    spec: Spec,
}

/// The declarations of `processors` in the configured environments.
fn declared_by(cfg: &Config, processors: Vec<Box<dyn Runnable>>) -> Vec<Declared> {
    let topics = kafka::topics(&cfg.kafka);
    let mut out = Vec::new();
    for p in processors {
        for &env in kafka::environments(&cfg.kafka) {
            out.push(Declared { name: p.name(), env, spec: p.spec(&topics, env) });
        }
    }
    out
}

/// What `riverbank run` runs.
fn declared(cfg: &Config) -> Vec<Declared> {
    declared_by(cfg, registry::processors(cfg))
}

/// The worked examples (`riverbank process NAME` only).
fn declared_examples(cfg: &Config) -> Vec<Declared> {
    declared_by(cfg, registry::examples(cfg))
}

fn sink_inputs(cfg: &Config) -> BTreeSet<String> {
    kafka::environments(&cfg.kafka).iter().flat_map(|&env| registry::sink_inputs_in(cfg, env)).collect()
}

/// (2a) Outputs of `declared` (what `riverbank run` runs) nothing it runs reads: neither the sinks nor
/// a processor (as its log, a routed or a broadcast input). A worked example reading one is named in
/// the problem but is no consumer: `riverbank run` does not start examples.
fn unconsumed_outputs(
    declared: &[Declared],
    examples: &[Declared],
    sink_inputs: &BTreeSet<String>,
) -> Vec<String> {
    let read_by_processors: BTreeSet<&String> = declared.iter().flat_map(|d| d.spec.inputs()).collect();
    let mut problems = Vec::new();
    for d in declared {
        for o in &d.spec.outputs {
            if !sink_inputs.contains(&o.topic) && !read_by_processors.contains(&o.topic) {
                let example_readers: BTreeSet<&str> = examples
                    .iter()
                    .filter(|x| x.spec.inputs().any(|t| *t == o.topic))
                    .map(|x| x.name)
                    .collect();
                let only_examples = if example_readers.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (only the worked example(s) {example_readers:?} read it, and `riverbank run` does \
                         not start examples)"
                    )
                };
                problems.push(format!(
                    "processor {:?} ({}) declares output {} ({:?}), but nothing reads it: the sinks \
                     read only topics carrying an event type in riverbank_sinks::rows::PROJECTED, and no \
                     registered processor has it as its log, a routed or a broadcast input. Project the \
                     event type (add it to PROJECTED in sinks/src/rows.rs, with a Row mapping and tables \
                     in both stores), or register a processor that consumes the topic{only_examples}",
                    d.name, d.env, o.topic, o.event_types
                ));
            }
        }
    }
    problems
}

/// (2b) Declared output event types without a JSON Schema file (`schemas/json/envelope.{type with
/// `.` → `_`}.v{N}.json`) or whose file `json_schema::generated` does not produce (so nothing keeps it
/// equal to the type).
fn outputs_without_schema(declared: &[Declared], on_disk: &[String], generated: &[&str]) -> Vec<String> {
    let mut problems = BTreeSet::new();
    for d in declared {
        for Output { topic, event_types } in &d.spec.outputs {
            for t in event_types {
                let stem = format!("envelope.{}.v", t.replace('.', "_"));
                let versioned = |name: &str| {
                    name.strip_prefix(&stem)
                        .and_then(|r| r.strip_suffix(".json"))
                        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                };
                if !on_disk.iter().any(|n| versioned(n)) {
                    problems.insert(format!(
                        "processor {:?} declares event type {t:?} on {topic}, but schemas/json has no \
                         {stem}<N>.json: add (\"{stem}1.json\", render::<Envelope<ThePayload>>()) to \
                         generated() in schemas/src/json_schema.rs and write the file with \
                         RIVERBANK_BLESS=1 cargo test -p riverbank-schemas",
                        d.name
                    ));
                } else if !generated.iter().any(|n| versioned(n)) {
                    problems.insert(format!(
                        "processor {:?} declares event type {t:?} on {topic}; schemas/json has \
                         {stem}<N>.json but generated() in schemas/src/json_schema.rs does not produce \
                         it, so nothing keeps it equal to the type: add it there and re-bless with \
                         RIVERBANK_BLESS=1 cargo test -p riverbank-schemas",
                        d.name
                    ));
                }
            }
        }
    }
    problems.into_iter().collect()
}

/// (2c) Names registered more than once.
fn repeated_names(names: &[&str]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let repeated: BTreeSet<&str> = names.iter().copied().filter(|n| !seen.insert(*n)).collect();
    repeated
        .into_iter()
        .map(|n| {
            format!(
                "processor name {n:?} is registered more than once in src/registry.rs: names key \
                 `riverbank process NAME`, checkpoint topics and consumer groups, so each must be unique"
            )
        })
        .collect()
}

/// (2c) Topics a processor reads or writes (log, routed, broadcast, outputs, dead letters, its
/// checkpoints when stateful) that are not among the topics riverbank creates.
fn topics_not_created(declared: &[Declared], topics: &Topics, created: &[String]) -> Vec<String> {
    let created: BTreeSet<&String> = created.iter().collect();
    let mut problems = Vec::new();
    for d in declared {
        let mut used: Vec<String> = d.spec.inputs().chain(d.spec.output_topics()).cloned().collect();
        used.push(topics.dead_letters(d.env));
        if d.spec.stateful {
            used.push(topics.checkpoints(d.env, d.name));
        }
        for t in used.iter().filter(|t| !created.contains(t)) {
            problems.push(format!(
                "processor {:?} ({}) uses topic {t}, which riverbank::registry::all_topics does not create: \
                 derive the topic from the processor's spec (runtime::process::topics_of) or add it to \
                 Topics::all",
                d.name, d.env
            ));
        }
    }
    problems
}

/// (2d) For a processor without a router, every output the sinks read must name it and its log in
/// `Topics::upstream`, or the sinks' complete-through watermark follows a wrong chain.
fn upstream_mismatches(
    declared: &[Declared],
    topics: &Topics,
    sink_inputs: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for d in declared.iter().filter(|d| !d.spec.routes()) {
        for topic in d.spec.output_topics().filter(|t| sink_inputs.contains(*t)) {
            let expected = Some((d.name, vec![d.spec.log.clone()]));
            let actual = topics.upstream(topic);
            if actual != expected {
                problems.push(format!(
                    "Topics::upstream({topic}) is {actual:?}, but processor {:?} ({}) writes it from its \
                     log {}: update Topics::upstream in schemas/src/topics.rs to return \
                     Some(({:?}, vec![{}])), so the sinks' complete-through watermark follows the chain",
                    d.name, d.env, d.spec.log, d.name, d.spec.log
                ));
            }
        }
    }
    problems
}

/// `Topics::router_sources` names exactly what each processor's router copies (its routed and broadcast
/// inputs), or the sinks' complete-through skips the router's hop.
fn router_source_mismatches(declared: &[Declared], topics: &Topics) -> Vec<String> {
    let mut problems = Vec::new();
    for d in declared {
        let mut spec: Vec<&String> = d.spec.routed.iter().chain(&d.spec.broadcast).collect();
        let named = topics.router_sources(d.env, d.name);
        let mut named: Vec<&String> = named.iter().collect();
        spec.sort();
        spec.dedup();
        named.sort();
        named.dedup();
        if spec != named {
            problems.push(format!(
                "processor {:?} ({}) routes {spec:?}, but Topics::router_sources names {named:?}: update \
                 router_sources in schemas/src/topics.rs",
                d.name, d.env
            ));
        }
    }
    problems
}

fn schema_files_on_disk() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/json");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

fn schema_files_generated() -> Vec<&'static str> {
    riverbank_schemas::json_schema::generated().into_iter().map(|(name, _)| name).collect()
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

#[test]
fn registry_every_output_has_a_consumer() {
    let cfg = config();
    let problems = unconsumed_outputs(&declared(&cfg), &declared_examples(&cfg), &sink_inputs(&cfg));
    assert_none("declared outputs nothing reads", problems);
}

#[test]
fn registry_every_output_event_type_has_a_json_schema() {
    let cfg = config();
    let mut all = declared(&cfg);
    all.extend(declared_examples(&cfg));
    let problems = outputs_without_schema(&all, &schema_files_on_disk(), &schema_files_generated());
    assert_none("declared output event types without a JSON Schema", problems);
}

#[test]
fn registry_names_are_unique_and_every_topic_is_created() {
    let cfg = config();
    let mut all = registry::processors(&cfg);
    all.extend(registry::examples(&cfg));
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let mut problems = repeated_names(&names);
    let topics = kafka::topics(&cfg.kafka);
    problems.extend(topics_not_created(&declared(&cfg), &topics, &registry::all_topics(&cfg)));
    assert_none("processor names and topics", problems);
}

#[test]
fn registry_upstream_follows_every_processor_the_sinks_read() {
    let cfg = config();
    let topics = kafka::topics(&cfg.kafka);
    assert_none(
        "Topics::upstream disagrees with the registry",
        upstream_mismatches(&declared(&cfg), &topics, &sink_inputs(&cfg)),
    );
    let mut all = declared(&cfg);
    all.extend(declared_examples(&cfg));
    assert_none(
        "Topics::router_sources disagrees with the registry",
        router_source_mismatches(&all, &topics),
    );
}

// ---------------------------------------------------------------------------------------------------
// The checks can fail
// ---------------------------------------------------------------------------------------------------

#[test]
fn the_registry_checks_report_a_broken_declaration() {
    let topics = Topics::new("t.");
    let env = Environment::Live;
    let orphan = "t.live.orphan".to_owned();
    let broken = Declared {
        name: "broken",
        env,
        spec: Spec {
            outputs: vec![Output::new(orphan.clone(), &["no.such_event"])],
            ..Spec::reading(topics.ingest_webhooks(env))
        },
    };
    let sound = Declared {
        name: "audit",
        env,
        spec: Spec {
            outputs: vec![Output::new(topics.audit_events(env), &["audit.recorded"])],
            stateful: false,
            ..Spec::reading(topics.log(env, "audit"))
        },
    };
    let on_disk = schema_files_on_disk();
    let generated = schema_files_generated();
    let sinks_read_audit: BTreeSet<String> = [topics.audit_events(env)].into();
    let sinks_read_both: BTreeSet<String> = [topics.audit_events(env), orphan.clone()].into();
    // What migrate creates: the edge's topics and the sound processor's log.
    let mut created = topics.all(env);
    created.push(topics.log(env, "audit"));
    let broken_only = std::slice::from_ref(&broken);

    // Nothing reads the orphan; a processor reading it would be its consumer.
    let p = unconsumed_outputs(broken_only, &[], &sinks_read_audit);
    assert!(p.len() == 1 && p[0].contains(&orphan) && p[0].contains("sinks/src/rows.rs"), "{p:?}");
    let reader = Declared { name: "reader", env, spec: Spec::reading(orphan.clone()) };
    // A worked example reading it is named, but is no consumer.
    let p = unconsumed_outputs(broken_only, std::slice::from_ref(&reader), &sinks_read_audit);
    assert!(p.len() == 1 && p[0].contains("worked example(s) {\"reader\"}"), "{p:?}");
    assert_eq!(unconsumed_outputs(&[broken.clone(), reader], &[], &sinks_read_audit), Vec::<String>::new());

    // No schema file for its event type; or a file nothing generates.
    let p = outputs_without_schema(broken_only, &on_disk, &generated);
    assert!(
        p.len() == 1 && p[0].contains("envelope.no_such_event.v") && p[0].contains("RIVERBANK_BLESS"),
        "{p:?}"
    );
    let only_disk = ["envelope.no_such_event.v1.json".to_owned()];
    let p = outputs_without_schema(broken_only, &only_disk, &generated);
    assert!(p.len() == 1 && p[0].contains("does not produce it"), "{p:?}");

    // Neither the orphan nor the (stateful) processor's checkpoint topic is created.
    let p = topics_not_created(broken_only, &topics, &created);
    assert!(p.len() == 2 && p.iter().any(|m| m.contains(&orphan)), "{p:?}");
    assert!(p.iter().any(|m| m.contains(&topics.checkpoints(env, "broken"))), "{p:?}");

    // Topics::upstream knows nothing of the orphan, and names another processor for audit events.
    let p = upstream_mismatches(broken_only, &topics, &sinks_read_both);
    assert!(p.len() == 1 && p[0].contains("Topics::upstream(t.live.orphan)"), "{p:?}");
    let impostor = Declared { name: "impostor", ..sound.clone() };
    let p = upstream_mismatches(&[impostor], &topics, &sinks_read_audit);
    assert!(p.len() == 1 && p[0].contains("\"impostor\""), "{p:?}");

    // A router copying a topic Topics::router_sources does not name.
    let routed = Declared {
        name: "kyc",
        env,
        spec: Spec {
            routed: vec![topics.kyc_commands(env)],
            ticks: true,
            ..Spec::reading(topics.log(env, "kyc"))
        },
    };
    let p = router_source_mismatches(std::slice::from_ref(&routed), &topics);
    assert!(p.len() == 1 && p[0].contains("router_sources"), "{p:?}");

    let p = repeated_names(&["audit", "transfers", "audit"]);
    assert!(p.len() == 1 && p[0].contains("\"audit\""), "{p:?}");

    // A sound declaration passes every check.
    let sound = [sound];
    assert_eq!(unconsumed_outputs(&sound, &[], &sinks_read_audit), Vec::<String>::new());
    assert_eq!(outputs_without_schema(&sound, &on_disk, &generated), Vec::<String>::new());
    assert_eq!(topics_not_created(&sound, &topics, &created), Vec::<String>::new());
    assert_eq!(upstream_mismatches(&sound, &topics, &sinks_read_audit), Vec::<String>::new());
    assert_eq!(repeated_names(&["audit", "transfers"]), Vec::<String>::new());
}

/// A processor with the flaws the conformance checks look for. It always panics on a negative `n` and
/// keeps a count outside its tables (lost on restore) that its ids derive from (so a duplicate emits a
/// new id); the flaws it is given are triggered by the examples' payload fields of the same name.
#[derive(Clone)]
struct Flawed {
    flaws: &'static [&'static str],
}

struct FlawedState {
    seen: Table<i64>,
    /// Outside the tables: a restore loses it.
    count: u64,
}

impl FlawedState {
    fn new() -> Self {
        FlawedState { seen: Table::new("seen"), count: 0 }
    }
}

riverbank_schemas::state_tables!(FlawedState { seen });

/// Stands for a wall clock or randomness.
static NOT_FROM_THE_INPUT: AtomicU64 = AtomicU64::new(0);

impl Processor for Flawed {
    type State = FlawedState;
    fn name(&self) -> &'static str {
        "flawed"
    }
    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            outputs: vec![Output::new(format!("{}{env}.flawed.out", topics.prefix()), &["flawed.counted"])],
            ..Spec::reading(format!("{}{env}.flawed.in", topics.prefix()))
        }
    }
    fn apply(&self, state: &mut FlawedState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        let n = input.payload.get("n").and_then(Value::as_i64).unwrap_or(0);
        assert!(n >= 0, "n is negative: {n}");
        state.seen.insert(input.event_id.to_string(), n);
        state.count += 1; // ids from a count, not from the input: a duplicate emits a new id
        let out_topic = format!("{}.flawed.out", at.environment);
        let emit = |topic: &str, id: String| Emit {
            topic: topic.to_owned(),
            key: input.tenant_id.clone(),
            event_id: derived_id(&["flawed", &id]),
            payload: id.into_bytes(),
        };
        let mut out = vec![emit(&out_topic, state.count.to_string())];
        let has = |k: &str| self.flaws.contains(&k) && input.payload.get(k).is_some();
        if has("stray") {
            out.push(emit("t.stray", format!("stray-{}", state.count)));
        }
        if has("twice") {
            out.push(emit(&out_topic, state.count.to_string()));
        }
        if has("clock") {
            out.push(emit(
                &out_topic,
                format!("clock-{}", NOT_FROM_THE_INPUT.fetch_add(1, Ordering::Relaxed)),
            ));
        }
        Verdict::Emit(out)
    }
    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        let payloads = [
            serde_json::json!({"n": 1}),
            serde_json::json!({"n": 2, "stray": true}),
            serde_json::json!({"n": 3, "twice": true}),
            serde_json::json!({"n": 4, "clock": true}),
        ];
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Envelope {
                event_id: derived_id(&["flawed-example", &i.to_string()]),
                event_type: "flawed.input".to_owned(),
                schema_version: 1,
                tenant_id: "tenant-a".to_owned(),
                environment: env,
                occurred_at: t,
                ingested_at: t,
                idempotency_key: None,
                source: "test".to_owned(),
                user_id: None,
                customer_id: None,
                session_id: None,
                trace_id: None,
                payload,
            })
            .collect()
    }
}

#[test]
fn the_conformance_checks_report_a_flawed_processor() {
    let topics = Topics::new("");
    let has = |problems: &[String], needle: &str| problems.iter().any(|p| p.contains(needle));
    let clock = Flawed { flaws: &["clock"] };
    let p = deterministic(&Subject::new(&clock, &topics, Environment::Live));
    assert!(has(&p, "two replays of its examples written to the log differ"), "{p:?}");
    let misdeclared = Flawed { flaws: &["stray", "twice"] };
    let p = declared_and_unique(&Subject::new(&misdeclared, &topics, Environment::Live));
    assert!(has(&p, "undeclared topic t.stray"), "{p:?}");
    assert!(has(&p, "emitted twice in one run"), "{p:?}");
    // Only the flaws it always has from here on.
    let flawed = Flawed { flaws: &[] };
    let s = Subject::new(&flawed, &topics, Environment::Live);
    assert_eq!(deterministic(&s), Vec::<String>::new());
    let p = duplicates_add_nothing(&s);
    assert!(has(&p, "a new output"), "{p:?}");
    let p = cuts_change_nothing(&s);
    assert!(has(&p, "a checkpoint and restore after inputs [0] changes its outputs"), "{p:?}");
    let p = never_panics(&s, PROPTEST_CASES);
    assert!(has(&p, "panicked") && has(&p, "minimal case"), "{p:?}");
    let p = random_cuts_change_nothing(&s, PROPTEST_CASES);
    assert!(has(&p, "changes its outputs") || has(&p, "panicked"), "{p:?}");
    let p = never_panics(&Subject::new(&misdeclared, &topics, Environment::Live), PROPTEST_CASES);
    assert!(has(&p, "undeclared topic t.stray") || has(&p, "panicked"), "{p:?}");

    // The pure helpers on their own.
    let e = |topic: &str, id: &str, bytes: &str| Emit {
        topic: topic.to_owned(),
        key: "k".to_owned(),
        event_id: derived_id(&[id]),
        payload: bytes.as_bytes().to_vec(),
    };
    let original = [e("out", "a", "1"), e("dead", "x", r#"{"reason":"r","source_offset":1}"#)];
    let moved_letter = e("dead", "y", r#"{"reason":"r","source_offset":2}"#);
    assert!(new_outputs(&original, &[original[0].clone(), moved_letter], "dead").is_empty());
    assert_eq!(new_outputs(&original, &[e("out", "a", "2")], "dead").len(), 1);
    assert_eq!(new_outputs(&original, &[e("out", "b", "1")], "dead").len(), 1);
    assert_eq!(new_outputs(&original, &[e("dead", "z", r#"{"reason":"other"}"#)], "dead").len(), 1);
    assert!(first_difference(&original, &original).is_none());
    assert!(first_difference(&original, &original[..1]).is_some());
    assert!(first_difference(&original[..1], &[e("out", "a", "2")]).is_some());
}
