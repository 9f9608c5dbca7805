//! The pure core of the processor loop: one record of a processor's log in, outputs out. No I/O, so
//! the loop, the conformance suite and the benchmarks run exactly the same code.
//!
//! Besides the processor's own state, a partition holds the runtime's entries (checkpointed with it,
//! under keys starting with `~`): the partition clock (the latest tick) and, per routed source
//! partition, the highest source offset applied. The router copies a source partition in order (an
//! idempotent producer, one key to one partition), so a copy at or below that offset is a duplicate
//! written by a router that restarted, and is skipped; replays skip the same copies.
use riverbank_schemas::processor::{Emit, InputRef, Processor, Spec, Verdict, Via};
use riverbank_schemas::state::{Cell, Change, Encoded, Entry, State, Table};
use riverbank_schemas::{Environment, RawEnvelope, Topics};

use crate::dead_letter::{dead_letter, Origin};

/// Timers fired by one tick at most; the rest fire on the next tick (still deterministic: ticks are in
/// the log). Bounds one batch's outputs.
pub const TIMERS_PER_TICK_MAX: usize = 10_000;

/// Prefix of the runtime's own checkpoint entries.
const META_PREFIX: char = '~';

/// The runtime's entries of a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The partition clock (ms): the latest tick seen. Never moves back.
    pub clock: Cell<i64>,
    /// Per routed source partition (`{topic}/{partition}`): the highest source offset applied.
    pub sources: Table<i64>,
}

impl Meta {
    pub fn new() -> Self {
        Meta { clock: Cell::new("~clock"), sources: Table::new("~src") }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(Meta { clock, sources });

/// One partition: the processor's state and the runtime's entries.
#[derive(Debug)]
pub struct Partition<S> {
    pub state: S,
    pub meta: Meta,
}

impl<S: State> Partition<S> {
    pub fn empty() -> Self {
        Partition { state: S::empty(), meta: Meta::new() }
    }
    pub fn snapshot(&self) -> Vec<Entry> {
        let mut out = self.state.snapshot();
        out.extend(self.meta.snapshot());
        out
    }
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = self.state.take_changes();
        out.extend(self.meta.take_changes());
        out
    }
    pub fn restore(entries: Vec<(String, Encoded)>) -> Result<Self, String> {
        let (meta, own): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(k, _)| k.starts_with(META_PREFIX));
        Ok(Partition { state: S::restore(&own)?, meta: Meta::restore(&meta)? })
    }
}

/// One record of a processor's log, as read.
#[derive(Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
    /// `riverbank-source` header: a router's copy.
    pub source: Option<&'a str>,
    /// `riverbank-tick` header: a tick.
    pub tick: Option<&'a str>,
}

/// An input that panicked the processor before: on its replay it is dead-lettered instead of applied
/// (for a tick: only the timer that panicked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    pub reason: String,
    pub timer: Option<String>,
}

/// What the engine needs to know about the processor besides the processor itself.
pub struct Ctx<'a> {
    pub topics: &'a Topics,
    pub env: Environment,
    pub spec: &'a Spec,
}

/// Parse a `riverbank-source` header: `{topic}/{partition}/{offset}`.
pub fn parse_source(v: &str) -> Option<(&str, i32, i64)> {
    let mut it = v.rsplitn(3, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    Some((it.next()?, partition, offset))
}

/// Apply one log record. `Err` is a panic inside the processor: the partition's state may be half
/// changed and must be dropped (the caller restarts from the checkpoint and passes `poisoned` on the
/// replay).
pub fn step<P: Processor>(
    p: &P,
    ctx: &Ctx<'_>,
    part: &mut Partition<P::State>,
    rec: &LogRecord<'_>,
    poisoned: Option<&Panicked>,
) -> Result<Vec<Emit>, Panicked> {
    let rejected_by = || format!("processor:{}", p.name());
    let origin =
        Origin { topic: rec.topic, partition: rec.partition, offset: rec.offset, payload: rec.payload };
    if let Some(tick) = rec.tick {
        return match tick.parse::<i64>() {
            Ok(ms) => tick_to(p, ctx, part, rec, ms, poisoned),
            Err(_) => {
                let reason = format!("tick header is not milliseconds: {tick:?}");
                Ok(vec![dead_letter(ctx.topics, ctx.env, &rejected_by(), origin, reason)])
            }
        };
    }
    let via = match rec.source.map(|s| (s, parse_source(s))) {
        None => Via::Log,
        Some((raw, None)) => {
            let reason = format!("source header is not topic/partition/offset: {raw:?}");
            return Ok(vec![dead_letter(ctx.topics, ctx.env, &rejected_by(), origin, reason)]);
        }
        Some((_, Some((topic, partition, offset)))) => {
            let key = format!("{topic}/{partition}");
            if part.meta.sources.get(&key).is_some_and(|&seen| seen >= offset) {
                return Ok(Vec::new()); // a copy a restarted router wrote again
            }
            part.meta.sources.insert(key, offset);
            if ctx.spec.broadcast.iter().any(|b| b == topic) {
                Via::Broadcast { topic, partition, offset }
            } else {
                Via::Routed { topic, partition, offset }
            }
        }
    };
    let at = InputRef {
        topic: rec.topic,
        partition: rec.partition,
        offset: rec.offset,
        environment: ctx.env,
        now_ms: *part.meta.clock.get(),
        via,
    };
    let verdict = match poisoned {
        Some(p) => Verdict::Poison(p.reason.clone()),
        None => match serde_json::from_slice::<RawEnvelope>(rec.payload) {
            Err(e) => Verdict::Poison(format!("not an envelope: {e}")),
            Ok(envelope) if envelope.environment != ctx.env => Verdict::Poison(format!(
                "envelope says environment {} on a {} topic",
                envelope.environment, ctx.env
            )),
            Ok(envelope) => guarded(p.name(), None, || p.apply(&mut part.state, &at, envelope))?,
        },
    };
    Ok(match verdict {
        Verdict::Emit(out) => out,
        Verdict::Poison(reason) => {
            tracing::warn!(processor = p.name(), topic = rec.topic, partition = rec.partition, offset = rec.offset, %reason, "dead-lettered");
            metrics::counter!("riverbank_dead_letters_total", "component" => p.name()).increment(1);
            vec![dead_letter(ctx.topics, ctx.env, &rejected_by(), origin, reason)]
        }
    })
}

/// Advance the clock to a tick and fire the timers due by then.
fn tick_to<P: Processor>(
    p: &P,
    ctx: &Ctx<'_>,
    part: &mut Partition<P::State>,
    rec: &LogRecord<'_>,
    tick_ms: i64,
    poisoned: Option<&Panicked>,
) -> Result<Vec<Emit>, Panicked> {
    if tick_ms > *part.meta.clock.get() {
        part.meta.clock.set(tick_ms);
    }
    let now_ms = *part.meta.clock.get();
    let at = InputRef {
        topic: rec.topic,
        partition: rec.partition,
        offset: rec.offset,
        environment: ctx.env,
        now_ms,
        via: Via::Log,
    };
    let mut out = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for _ in 0..TIMERS_PER_TICK_MAX {
        let Some(timer) = part.state.timers().and_then(|t| t.pop_due(now_ms)) else { break };
        if let Some(bad) = poisoned.filter(|b| b.timer.as_deref() == Some(timer.key.as_str())) {
            refused.push(format!("timer {}: {}", timer.key, bad.reason));
            continue;
        }
        let key = timer.key.clone();
        match guarded(p.name(), Some(&key), || p.on_timer(&mut part.state, &at, timer))? {
            Verdict::Emit(e) => out.extend(e),
            Verdict::Poison(reason) => refused.push(format!("timer {key}: {reason}")),
        }
    }
    if !refused.is_empty() {
        let reason = refused.join("; ");
        tracing::warn!(processor = p.name(), topic = rec.topic, partition = rec.partition, offset = rec.offset, %reason, "timers refused");
        let origin =
            Origin { topic: rec.topic, partition: rec.partition, offset: rec.offset, payload: rec.payload };
        out.push(dead_letter(ctx.topics, ctx.env, &format!("processor:{}", p.name()), origin, reason));
    }
    Ok(out)
}

/// Run `f`, turning a panic into `Err(Panicked)` that names the processor (and the timer).
fn guarded(name: &str, timer: Option<&str>, f: impl FnOnce() -> Verdict) -> Result<Verdict, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        let on = timer.map_or_else(|| "this input".to_owned(), |t| format!("timer {t}"));
        Panicked {
            reason: format!("processor {name} panicked on {on}: {what}"),
            timer: timer.map(str::to_owned),
        }
    })
}

/// A record as the conformance suite and benchmarks build it (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub payload: Vec<u8>,
    pub source: Option<String>,
    pub tick: Option<String>,
}

impl OwnedRecord {
    pub fn input(envelope: &RawEnvelope) -> Self {
        OwnedRecord { payload: serde_json::to_vec(envelope).unwrap_or_default(), source: None, tick: None }
    }
    pub fn tick(ms: i64) -> Self {
        OwnedRecord { payload: Vec::new(), source: None, tick: Some(ms.to_string()) }
    }
    pub fn routed(envelope: &RawEnvelope, topic: &str, partition: i32, offset: i64) -> Self {
        OwnedRecord {
            payload: serde_json::to_vec(envelope).unwrap_or_default(),
            source: Some(format!("{topic}/{partition}/{offset}")),
            tick: None,
        }
    }
    pub fn at<'a>(&'a self, topic: &'a str, offset: i64) -> LogRecord<'a> {
        LogRecord {
            topic,
            partition: 0,
            offset,
            payload: &self.payload,
            source: self.source.as_deref(),
            tick: self.tick.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_headers_parse_with_dots_and_slashes_in_topics() {
        assert_eq!(parse_source("a.live.x/3/42"), Some(("a.live.x", 3, 42)));
        assert_eq!(parse_source("a/b/1/2"), Some(("a/b", 1, 2)));
        assert_eq!(parse_source("x/1"), None);
        assert_eq!(parse_source("x/y/1"), None);
    }
}
