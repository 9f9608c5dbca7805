//! Volume windows: the worked example of the processor runtime, using each thing it offers.
//! - **Several inputs** (routed into its log `{env}.volume.inputs`): transfer status changes and the
//!   transfers processor's rejections, both keyed by tenant, so a tenant's window sees both in one order.
//! - **A broadcast input**: FX rate publications (`fx.commands`, `fx.rates_published`) reach every
//!   partition; a closed window records the rate versions current when it closed.
//! - **Event-time timers**: a window of one minute (by the input's `occurred_at`) closes on the tick
//!   after its end plus `LATENESS_MS`; inputs for a window that already closed open a correction
//!   (`late: true`) that closes on the next tick.
//! - **Duplicates count once**: an upstream processor that crashed re-emits identical events (same ids)
//!   that the router copies again; a window remembers the event ids it counted, and keeps them for
//!   `CLOSED_REMEMBERED_MS` of partition clock after it closed (a second timer forgets them).
//!
//! Run it with `riverbank process volume` (it is an example: `riverbank run` does not start it).
use std::collections::BTreeMap;

use riverbank_schemas::commands::{command_types, FxRatesPublished};
use riverbank_schemas::processor::{Emit, InputRef, Output, Processor, Spec, Verdict, Via};
use riverbank_schemas::state::{Table, Timer, Timers};
use riverbank_schemas::transfers::{InputRejected, TransferStatus, TransferStatusChanged};
use riverbank_schemas::volume::{RateUsed, VolumeWindowClosed};
use riverbank_schemas::{derived_id, Currency, Envelope, Environment, Money, RawEnvelope, Topics};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Window length (ms of event time).
pub const WINDOW_MS: i64 = 60_000;
/// A window closes on the first tick at least this long after its end.
pub const LATENESS_MS: i64 = 5_000;
/// The currency rates are reported against.
pub const REPORT_CURRENCY: &str = "USD";
/// Open windows per partition at most; an input that would open one more is dead-lettered with the reason.
pub const OPEN_WINDOWS_MAX: usize = 100_000;
/// Inputs counted per window at most (their ids are remembered); more are dead-lettered with the reason.
pub const WINDOW_INPUTS_MAX: usize = 100_000;
/// A closed window's counted ids are remembered this long (ms of partition clock) after it closed.
pub const CLOSED_REMEMBERED_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct VolumeProcessor {
    topics: Topics,
}

impl VolumeProcessor {
    pub fn new(topics: Topics) -> Self {
        VolumeProcessor { topics }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub tenant_id: String,
    pub start_ms: i64,
    /// Completed volume by currency code.
    pub completed: BTreeMap<String, i64>,
    pub completed_count: u64,
    pub rejected_count: u64,
    pub late: bool,
    /// The first input of the window (names the output, so a correction has an id of its own).
    pub first_input: Uuid,
    /// Every input counted (duplicates are recognised by id).
    pub applied: std::collections::BTreeSet<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub rate_e9: i64,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeState {
    /// Open windows by `{tenant}/{start_ms}`.
    pub windows: Table<Window>,
    /// Latest rate per `{base}/{quote}`.
    pub rates: Table<Rate>,
    /// Ids counted by closed windows, by window key, until their `forget/` timer.
    pub closed: Table<std::collections::BTreeSet<Uuid>>,
    pub timers: Timers,
}

impl VolumeState {
    pub fn new() -> Self {
        VolumeState {
            windows: Table::new("w"),
            rates: Table::new("r"),
            closed: Table::new("c"),
            timers: Timers::new("tm"),
        }
    }
}

impl Default for VolumeState {
    fn default() -> Self {
        Self::new()
    }
}

riverbank_schemas::state_tables!(VolumeState { windows, rates, closed }, timers = timers);

use riverbank_schemas::processor::decode_v1 as decode;

impl Processor for VolumeProcessor {
    type State = VolumeState;

    fn name(&self) -> &'static str {
        "volume"
    }

    fn spec(&self, topics: &Topics, env: Environment) -> Spec {
        Spec {
            log: topics.log(env, "volume"),
            routed: vec![topics.transfer_status(env), topics.transfer_rejections(env)],
            broadcast: vec![topics.fx_rates(env)],
            ticks: true,
            outputs: vec![Output::new(topics.volume_windows(env), &[VolumeWindowClosed::EVENT_TYPE])],
            stateful: true,
        }
    }

    fn apply(&self, state: &mut VolumeState, at: &InputRef<'_>, input: RawEnvelope) -> Verdict {
        match (input.event_type.as_str(), at.via) {
            (command_types::FX_RATES_PUBLISHED, Via::Broadcast { topic, partition, offset }) => {
                match decode::<FxRatesPublished>(&input) {
                    Ok(p) => {
                        for r in p.rates {
                            let version = format!("{topic}/{partition}/{offset}");
                            state.rates.insert(
                                format!("{}/{}", r.base, r.quote),
                                Rate { rate_e9: r.rate_e9, version },
                            );
                        }
                        Verdict::Emit(Vec::new())
                    }
                    Err(reason) => Verdict::Poison(reason),
                }
            }
            // Other commands on the broadcast topic (quotes, conversions) are not ours.
            (_, Via::Broadcast { .. }) => Verdict::Emit(Vec::new()),
            (TransferStatusChanged::EVENT_TYPE, _) => match decode::<TransferStatusChanged>(&input) {
                Ok(s) if s.status == TransferStatus::Completed => count(state, at, &input, Some(s.amount)),
                Ok(_) => Verdict::Emit(Vec::new()),
                Err(reason) => Verdict::Poison(reason),
            },
            (InputRejected::EVENT_TYPE, _) => match decode::<InputRejected>(&input) {
                Ok(_) => count(state, at, &input, None),
                Err(reason) => Verdict::Poison(reason),
            },
            (other, _) => Verdict::Poison(format!("volume has no rule for {other}")),
        }
    }

    fn on_timer(&self, state: &mut VolumeState, at: &InputRef<'_>, timer: Timer) -> Verdict {
        if let Some(key) = timer.key.strip_prefix("forget/") {
            state.closed.remove(key);
            return Verdict::Emit(Vec::new());
        }
        let key = timer.key.strip_prefix("close/").unwrap_or(&timer.key).to_owned();
        let Some(mut w) = state.windows.remove(&key) else { return Verdict::Emit(Vec::new()) };
        let applied = std::mem::take(&mut w.applied);
        state.closed.upsert(&key, |ids| ids.extend(applied));
        state.timers.schedule(&format!("forget/{key}"), at.now_ms.saturating_add(CLOSED_REMEMBERED_MS), "");
        let rates_used = w
            .completed
            .keys()
            .filter_map(|c| {
                let r = state.rates.get(&format!("{c}/{REPORT_CURRENCY}"))?;
                let (base, quote) = (c.clone(), REPORT_CURRENCY.to_owned());
                Some(RateUsed { base, quote, rate_e9: r.rate_e9, version: r.version.clone() })
            })
            .collect();
        let completed = w
            .completed
            .iter()
            .filter_map(|(c, minor)| Some(Money::new(*minor, Currency::from_code(c).ok()?)))
            .collect();
        let start = chrono::DateTime::from_timestamp_millis(w.start_ms).unwrap_or_default();
        let closed = VolumeWindowClosed {
            window_start: start,
            window_end: start + chrono::Duration::milliseconds(WINDOW_MS),
            completed,
            completed_count: w.completed_count,
            rejected_count: w.rejected_count,
            rates_used,
            late: w.late,
        };
        let id = derived_id(&["volume", &w.tenant_id, &w.start_ms.to_string(), &w.first_input.to_string()]);
        let when = chrono::DateTime::from_timestamp_millis(at.now_ms).unwrap_or_default();
        let envelope = Envelope {
            event_id: id,
            event_type: VolumeWindowClosed::EVENT_TYPE.to_owned(),
            schema_version: VolumeWindowClosed::SCHEMA_VERSION,
            tenant_id: w.tenant_id.clone(),
            environment: at.environment,
            occurred_at: closed.window_end,
            ingested_at: when,
            idempotency_key: None,
            source: "riverbank.volume".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload: closed,
        };
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        let topic = self.topics.volume_windows(at.environment);
        Verdict::Emit(vec![Emit { topic, key: w.tenant_id, event_id: id, payload }])
    }

    fn examples(&self, env: Environment) -> Vec<RawEnvelope> {
        examples(env)
    }
}

/// Count one input into its tenant's window (opening it, and its timer, if needed).
fn count(
    state: &mut VolumeState,
    at: &InputRef<'_>,
    input: &RawEnvelope,
    completed: Option<Money>,
) -> Verdict {
    let t = input.occurred_at.timestamp_millis();
    let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
    let key = format!("{}/{start}", input.tenant_id);
    let id = input.event_id;
    let counted = state.windows.get(&key).is_some_and(|w| w.applied.contains(&id))
        || state.closed.get(&key).is_some_and(|ids| ids.contains(&id));
    if counted {
        return Verdict::Emit(Vec::new()); // a duplicate (an upstream replay), already counted
    }
    if state.windows.get(&key).is_some_and(|w| w.applied.len() >= WINDOW_INPUTS_MAX) {
        return Verdict::Poison(format!(
            "{WINDOW_INPUTS_MAX} inputs already counted in this window (WINDOW_INPUTS_MAX)"
        ));
    }
    if !state.windows.contains_key(&key) {
        if state.windows.len() >= OPEN_WINDOWS_MAX {
            return Verdict::Poison(format!(
                "{OPEN_WINDOWS_MAX} windows are open in this partition (OPEN_WINDOWS_MAX)"
            ));
        }
        let close_at = start + WINDOW_MS + LATENESS_MS;
        let late = at.now_ms >= close_at;
        let w = Window {
            tenant_id: input.tenant_id.clone(),
            start_ms: start,
            late,
            first_input: input.event_id,
            ..Window::default()
        };
        state.windows.insert(key.clone(), w);
        // A late window closes on the next tick.
        state.timers.schedule(&format!("close/{key}"), close_at.max(at.now_ms), "");
    }
    let mut refused = None;
    state.windows.upsert(&key, |w| match completed {
        Some(m) => {
            let sum = w.completed.entry(m.currency.to_string()).or_insert(0);
            match sum.checked_add(m.amount_minor) {
                Some(n) => {
                    *sum = n;
                    w.completed_count += 1;
                    w.applied.insert(id);
                }
                None => refused = Some(format!("volume of {} in this window would overflow", m.currency)),
            }
        }
        None => {
            w.rejected_count += 1;
            w.applied.insert(id);
        }
    });
    match refused {
        Some(reason) => Verdict::Poison(reason),
        None => Verdict::Emit(Vec::new()),
    }
}

/// Inputs for the conformance suite: completed and other status changes, a rejection, a rate
/// publication (as the router delivers broadcasts it is a plain input here), other commands and junk.
pub fn examples(env: Environment) -> Vec<RawEnvelope> {
    use serde_json::json;
    let status = |id: &str, status: &str, minor: i64, cur: &str| {
        (
            TransferStatusChanged::EVENT_TYPE,
            json!({"transfer_id": id, "kind": "deposit", "amount": {"amount_minor": minor, "currency": cur}, "status": status, "version": 2, "previous": "CONFIRMING", "cause_event_id": Uuid::nil()}),
        )
    };
    let steps: Vec<(&str, &str, serde_json::Value)> = vec![
        ("tenant-a", status("t1", "COMPLETED", 1_000, "USD").0, status("t1", "COMPLETED", 1_000, "USD").1),
        ("tenant-a", status("t2", "COMPLETED", 250, "EUR").0, status("t2", "COMPLETED", 250, "EUR").1),
        ("tenant-b", status("t3", "PROCESSING", 10, "USD").0, status("t3", "PROCESSING", 10, "USD").1),
        (
            "tenant-a",
            InputRejected::EVENT_TYPE,
            json!({"input_event_id": Uuid::nil(), "input_event_type": "transfer.requested", "reason": "unknown transfer"}),
        ),
        (
            "tenant-x",
            command_types::FX_RATES_PUBLISHED,
            json!({"as_of": "2026-09-21T00:00:00Z", "rates": [{"base": "EUR", "quote": "USD", "rate_e9": 1_084_500_000}], "published_by": "rates-desk"}),
        ),
        ("tenant-a", TransferStatusChanged::EVENT_TYPE, json!({"transfer_id": 7})),
        ("tenant-a", "volume.unheard_of", json!({})),
    ];
    let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (tenant, event_type, payload))| {
            let at = t0 + chrono::Duration::seconds(5 * i as i64);
            let id = derived_id(&["volume-example", &i.to_string()]);
            Envelope::new(id, event_type, tenant, env, at, "riverbank.transfers", payload)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_schemas::state::{Encoded, State as _};

    fn at(now_ms: i64, via: Via<'static>) -> InputRef<'static> {
        InputRef {
            topic: "live.volume.inputs",
            partition: 0,
            offset: 0,
            environment: Environment::Live,
            now_ms,
            via,
        }
    }

    fn fire(p: &VolumeProcessor, s: &mut VolumeState, now_ms: i64) -> Vec<VolumeWindowClosed> {
        let mut out = Vec::new();
        while let Some(t) = s.timers.pop_due(now_ms) {
            let Verdict::Emit(e) = p.on_timer(s, &at(now_ms, Via::Log), t) else { panic!("emit") };
            for e in e {
                let env: Envelope<VolumeWindowClosed> = serde_json::from_slice(&e.payload).expect("decodes");
                out.push(env.payload);
            }
        }
        out
    }

    #[test]
    fn windows_count_both_inputs_record_the_broadcast_rate_and_close_on_ticks_only() {
        let p = VolumeProcessor::new(Topics::new(""));
        let mut s = VolumeState::new();
        let ex = examples(Environment::Live);
        let rate = Via::Broadcast { topic: "live.fx.commands", partition: 2, offset: 41 };
        assert_eq!(p.apply(&mut s, &at(0, rate), ex[4].clone()), Verdict::Emit(vec![]));
        for e in &ex[..4] {
            assert_eq!(
                p.apply(&mut s, &at(0, Via::Routed { topic: "x", partition: 0, offset: 0 }), e.clone()),
                Verdict::Emit(vec![])
            );
        }
        assert!(matches!(p.apply(&mut s, &at(0, Via::Log), ex[5].clone()), Verdict::Poison(_)));
        let t0 = ex[0].occurred_at.timestamp_millis();
        let end = t0.div_euclid(WINDOW_MS) * WINDOW_MS + WINDOW_MS;
        assert!(fire(&p, &mut s, end).is_empty(), "not before end + lateness");
        // The snapshot restores with the timers.
        let snap: Vec<(String, Encoded)> =
            s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
        let mut r = VolumeState::restore(&snap).expect("restores");
        let closed = fire(&p, &mut r, end + LATENESS_MS);
        let a: Vec<&VolumeWindowClosed> = closed.iter().filter(|w| w.completed_count > 0).collect();
        assert_eq!(a.len(), 1, "{closed:?}");
        assert_eq!(a[0].completed_count, 2);
        assert_eq!(a[0].rejected_count, 1, "the rejection counted in the same window");
        assert_eq!(a[0].rates_used.len(), 1);
        assert_eq!(a[0].rates_used[0].version, "live.fx.commands/2/41");
        assert!(!a[0].late);
        // The same input again (an upstream replay) after the close: already counted.
        let now = end + LATENESS_MS + 10;
        let routed = Via::Routed { topic: "x", partition: 0, offset: 9 };
        assert_eq!(p.apply(&mut r, &at(now, routed), ex[0].clone()), Verdict::Emit(vec![]));
        assert!(fire(&p, &mut r, now).is_empty(), "a duplicate opens no correction");
        // A new input for the closed window: a correction, closed on the next tick.
        let mut new = ex[0].clone();
        new.event_id = derived_id(&["volume-late"]);
        p.apply(&mut r, &at(now, routed), new);
        let late = fire(&p, &mut r, now);
        assert!(late.len() == 1 && late[0].late && late[0].completed_count == 1, "{late:?}");
        // An hour of partition clock later the closed windows' ids are forgotten.
        fire(&p, &mut r, now + CLOSED_REMEMBERED_MS + 1);
        assert!(r.closed.is_empty());
    }
}
