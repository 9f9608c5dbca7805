//! Windows in event time over micro-batches, aggregated with DataFusion.
//!
//! Each pane (1 s of wall time) the reader's events become one Arrow `RecordBatch`, and one SQL query
//! over it yields *partial* aggregates per window: a sliding window (10 s, sliding every 1 s) is a
//! hopping window, so each event is joined with the 10 windows it falls into; tumbling minutes bin by
//! `ts - ts % 60000`. Partials are merged into the state kept across batches (counts and sums are
//! mergeable), so a window that straddles two batches is one window, never two.
//!
//! The watermark trails the newest event time by `lateness_ms`, and follows the clock when no event
//! arrived for `idle_ms` (an idle topic still closes its windows). A window is emitted `provisional`
//! when it changes while open, `final` once the watermark passes its end, and `correction` (the next
//! revision) when a late event changes it after that. Windows are forgotten a retention after their
//! end; an event for a forgotten window is counted in `late_dropped` (shown in every `stats` frame),
//! never folded in silently.
//!
//! Money: amounts are integer minor units summed as `DECIMAL(38,0)` in DataFusion and merged with
//! checked `i128` arithmetic; they leave as decimal strings.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use riverbank_schemas::Environment;

/// One pane: the step of sliding windows and of the reader's micro-batches.
pub const PANE_MS: i64 = 1_000;
/// The length of a sliding window (it slides by one pane).
pub const SLIDING_MS: i64 = 10_000;
/// The length of a tumbling window.
pub const MINUTE_MS: i64 = 60_000;
/// The tenant of platform-wide totals.
pub const ALL_TENANTS: &str = "*";

/// What a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Events per topic, sliding.
    Events,
    /// Completed transfers' amounts per currency, per minute.
    TransferVolume,
    /// Transfer outcomes (accepted, rejected, blocked, completed, failed), per minute.
    TransferOutcomes,
    /// Dead letters per reason class, per minute.
    DeadLetters,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::TransferVolume => "transfer_volume",
            Metric::TransferOutcomes => "transfer_outcomes",
            Metric::DeadLetters => "dead_letters",
        }
    }

    fn parse(s: &str) -> Option<Metric> {
        [Metric::Events, Metric::TransferVolume, Metric::TransferOutcomes, Metric::DeadLetters]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    pub fn length_ms(self) -> i64 {
        match self {
            Metric::Events => SLIDING_MS,
            _ => MINUTE_MS,
        }
    }

    /// The name of the window's key in frames.
    pub fn key_name(self) -> &'static str {
        match self {
            Metric::Events => "topic",
            Metric::TransferVolume => "currency",
            Metric::TransferOutcomes => "outcome",
            Metric::DeadLetters => "reason_class",
        }
    }
}

/// One event as the live component sees it (never a payload value beyond these codes).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// The topic without the deployment prefix, e.g. `live.transfers.inputs`.
    pub topic: Arc<str>,
    /// `None` when the record names no tenant (it then counts in the totals only).
    pub tenant: Option<Arc<str>>,
    pub env: Environment,
    /// Event time: when ingest accepted what this event descends from (ms).
    pub ts_ms: i64,
    /// A transfer status change's outcome class.
    pub outcome: Option<&'static str>,
    /// A completed transfer's amount (minor units) and currency.
    pub amount: Option<(i64, Arc<str>)>,
    /// A dead letter's reason class.
    pub reason: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowKey {
    pub env: Environment,
    pub metric: Metric,
    pub tenant: Arc<str>,
    pub key: Arc<str>,
    pub start_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowValue {
    pub count: u64,
    pub amount_minor: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Provisional,
    Final,
    Correction,
}

impl WindowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Provisional => "provisional",
            WindowState::Final => "final",
            WindowState::Correction => "correction",
        }
    }
}

/// A window as emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub window: WindowKey,
    pub value: WindowValue,
    pub state: WindowState,
    pub revision: u32,
}

#[derive(Debug, Default)]
struct Slot {
    value: WindowValue,
    revision: u32,
    closed: bool,
    changed: bool,
}

/// Counters shown in `stats` frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub late_corrections: u64,
    pub late_dropped: u64,
    pub overflowed_sums: u64,
}

/// Retention after a window's end, per metric.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub sliding_ms: i64,
    pub minute_ms: i64,
}

/// The window state of every (environment, metric, tenant, key, start), and the watermark.
pub struct Windows {
    ctx: SessionContext,
    slots: BTreeMap<WindowKey, Slot>,
    retention: Retention,
    lateness_ms: i64,
    idle_ms: i64,
    watermark_ms: i64,
    newest_event_ms: i64,
    last_event_at_ms: i64,
    pub counters: Counters,
}

/// One SQL query for every window kind: partial counts and sums of this batch per window.
const PARTIALS_SQL: &str = "
SELECT 'events' AS metric, env, tenant, topic AS k, (ts - ts % 1000) + h.k * 1000 - 10000 AS start_ms,
       count(*) AS n, CAST(0 AS DECIMAL(38,0)) AS amount
  FROM batch CROSS JOIN (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) AS h(k)
 GROUP BY env, tenant, topic, (ts - ts % 1000) + h.k * 1000 - 10000
UNION ALL
SELECT 'transfer_volume', env, tenant, currency, ts - ts % 60000, count(*), sum(CAST(amount AS DECIMAL(38,0)))
  FROM batch WHERE currency IS NOT NULL GROUP BY env, tenant, currency, ts - ts % 60000
UNION ALL
SELECT 'transfer_outcomes', env, tenant, outcome, ts - ts % 60000, count(*), CAST(0 AS DECIMAL(38,0))
  FROM batch WHERE outcome IS NOT NULL GROUP BY env, tenant, outcome, ts - ts % 60000
UNION ALL
SELECT 'dead_letters', env, tenant, reason, ts - ts % 60000, count(*), CAST(0 AS DECIMAL(38,0))
  FROM batch WHERE reason IS NOT NULL GROUP BY env, tenant, reason, ts - ts % 60000";

/// The tenant column's value for events that name none (they count in the totals only).
const NO_TENANT: &str = "";

impl Windows {
    pub fn new(retention: Retention, lateness_ms: i64, idle_ms: i64) -> Windows {
        Windows {
            ctx: SessionContext::new(),
            slots: BTreeMap::new(),
            retention,
            lateness_ms,
            idle_ms,
            watermark_ms: i64::MIN,
            newest_event_ms: i64::MIN,
            last_event_at_ms: i64::MIN,
            counters: Counters::default(),
        }
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Fold one micro-batch in (DataFusion computes its partials). Nothing is emitted yet: see
    /// [`Windows::advance`].
    pub async fn add(&mut self, events: &[LiveEvent], now_ms: i64) -> Result<(), String> {
        let wm = self.watermark_ms;
        let forgotten = |e: &LiveEvent| {
            let end = e.ts_ms - e.ts_ms.rem_euclid(MINUTE_MS) + MINUTE_MS;
            wm != i64::MIN && end.saturating_add(self.retention.minute_ms) <= wm
        };
        let (events, dropped): (Vec<&LiveEvent>, Vec<&LiveEvent>) =
            events.iter().filter(|e| e.ts_ms > 0).partition(|e| !forgotten(e));
        self.counters.late_dropped = self.counters.late_dropped.saturating_add(dropped.len() as u64);
        if events.is_empty() {
            return Ok(());
        }
        self.counters.events = self.counters.events.saturating_add(events.len() as u64);
        self.last_event_at_ms = now_ms;
        self.newest_event_ms = events.iter().map(|e| e.ts_ms).fold(self.newest_event_ms, i64::max);
        let batch = to_batch(&events).map_err(|e| format!("live batch: {e}"))?;
        self.ctx.deregister_table("batch").map_err(|e| format!("live batch: {e}"))?;
        self.ctx.register_batch("batch", batch).map_err(|e| format!("live batch: {e}"))?;
        let partials = self
            .ctx
            .sql(PARTIALS_SQL)
            .await
            .map_err(|e| format!("live windows: {e}"))?
            .collect()
            .await
            .map_err(|e| format!("live windows: {e}"))?;
        for b in &partials {
            self.merge(b)?;
        }
        Ok(())
    }

    fn merge(&mut self, b: &RecordBatch) -> Result<(), String> {
        let text =
            |i: usize| b.column(i).as_string_opt::<i32>().ok_or("live windows: a text column is not text");
        let (metric, env, tenant, key) = (text(0)?, text(1)?, text(2)?, text(3)?);
        let start = b.column(4).as_primitive_opt::<Int64Type>().ok_or("live windows: start is not Int64")?;
        let count = b.column(5).as_primitive_opt::<Int64Type>().ok_or("live windows: count is not Int64")?;
        let amount =
            b.column(6).as_primitive_opt::<Decimal128Type>().ok_or("live windows: sum is not decimal")?;
        for row in 0..b.num_rows() {
            let (Some(metric), Some(env)) = (Metric::parse(metric.value(row)), env.value(row).parse().ok())
            else {
                continue;
            };
            let value = WindowValue {
                count: u64::try_from(count.value(row)).unwrap_or(0),
                amount_minor: if amount.is_null(row) { 0 } else { amount.value(row) },
            };
            let start_ms = start.value(row);
            let t = tenant.value(row);
            let mut tenants: Vec<&str> = vec![ALL_TENANTS];
            if t != NO_TENANT {
                tenants.push(t);
            }
            for t in tenants {
                let w = WindowKey { env, metric, tenant: t.into(), key: key.value(row).into(), start_ms };
                self.fold(w, &value);
            }
        }
        Ok(())
    }

    fn fold(&mut self, w: WindowKey, value: &WindowValue) {
        let end = w.start_ms.saturating_add(w.metric.length_ms());
        let kept = match w.metric {
            Metric::Events => self.retention.sliding_ms,
            _ => self.retention.minute_ms,
        };
        // A sliding window forgotten already is not made again (the event still counts in its
        // minute windows; an event older than those is dropped and counted in `add`).
        if self.watermark_ms != i64::MIN && end.saturating_add(kept) <= self.watermark_ms {
            return;
        }
        let slot = self.slots.entry(w).or_default();
        let Some(sum) = slot.value.amount_minor.checked_add(value.amount_minor) else {
            self.counters.overflowed_sums = self.counters.overflowed_sums.saturating_add(1);
            return;
        };
        slot.value.amount_minor = sum;
        slot.value.count = slot.value.count.saturating_add(value.count);
        slot.changed = true;
    }

    /// Move the watermark (`caught_up` false while the reader replays history: the watermark then
    /// holds), close the windows it passed, forget old ones, and answer every window to emit, in key
    /// order: changed windows (provisional while open, a correction once closed) and newly closed
    /// ones (final).
    pub fn advance(&mut self, now_ms: i64, caught_up: bool) -> Vec<Emitted> {
        self.advance_forgetting(now_ms, caught_up).0
    }

    /// [`Windows::advance`], also answering the windows forgotten.
    pub fn advance_forgetting(&mut self, now_ms: i64, caught_up: bool) -> (Vec<Emitted>, Vec<WindowKey>) {
        if !caught_up {
            // History is being read: nothing closes and nothing is emitted until it is all in.
            return (Vec::new(), Vec::new());
        }
        {
            let mut wm = self.newest_event_ms.saturating_sub(self.lateness_ms);
            if now_ms.saturating_sub(self.last_event_at_ms) >= self.idle_ms
                || self.newest_event_ms == i64::MIN
            {
                wm = wm.max(now_ms.saturating_sub(self.lateness_ms).saturating_sub(self.idle_ms));
            }
            self.watermark_ms = self.watermark_ms.max(wm);
        }
        let wm = self.watermark_ms;
        let mut out = Vec::new();
        let mut forget = Vec::new();
        for (w, slot) in self.slots.iter_mut() {
            let end = w.start_ms.saturating_add(w.metric.length_ms());
            let closes = !slot.closed && end <= wm;
            let state = if closes {
                slot.closed = true;
                Some(WindowState::Final)
            } else if slot.changed && slot.closed {
                if w.tenant.as_ref() == ALL_TENANTS {
                    self.counters.late_corrections = self.counters.late_corrections.saturating_add(1);
                }
                Some(WindowState::Correction)
            } else if slot.changed {
                Some(WindowState::Provisional)
            } else {
                None
            };
            slot.changed = false;
            if let Some(state) = state {
                slot.revision = slot.revision.saturating_add(1);
                out.push(Emitted {
                    window: w.clone(),
                    value: slot.value.clone(),
                    state,
                    revision: slot.revision,
                });
            }
            let kept = match w.metric {
                Metric::Events => self.retention.sliding_ms,
                _ => self.retention.minute_ms,
            };
            if wm != i64::MIN && end.saturating_add(kept) <= wm {
                forget.push(w.clone());
            }
        }
        for w in &forget {
            self.slots.remove(w);
        }
        (out, forget)
    }

    /// The tenants with windows (for bounding).
    pub fn tenants(&self) -> HashSet<Arc<str>> {
        self.slots.keys().map(|w| w.tenant.clone()).collect()
    }
}

fn to_batch(events: &[&LiveEvent]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("env", DataType::Utf8, false),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("reason", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.topic.as_ref()))),
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.env.as_str()))),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.tenant.as_deref().unwrap_or(NO_TENANT)),
        )),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.ts_ms))),
        Arc::new(StringArray::from_iter(events.iter().map(|e| e.outcome))),
        Arc::new(StringArray::from_iter(events.iter().map(|e| e.amount.as_ref().map(|(_, c)| c.as_ref())))),
        Arc::new(Int64Array::from_iter(events.iter().map(|e| e.amount.as_ref().map(|(a, _)| *a)))),
        Arc::new(StringArray::from_iter(events.iter().map(|e| e.reason.as_deref()))),
    ];
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(tenant: &str, topic: &str, ts_ms: i64) -> LiveEvent {
        LiveEvent {
            topic: topic.into(),
            tenant: Some(tenant.into()),
            env: Environment::Live,
            ts_ms,
            outcome: None,
            amount: None,
            reason: None,
        }
    }

    fn completed(tenant: &str, ts_ms: i64, amount: i64, ccy: &str) -> LiveEvent {
        LiveEvent {
            outcome: Some("completed"),
            amount: Some((amount, ccy.into())),
            ..ev(tenant, "live.transactions.update.status", ts_ms)
        }
    }

    fn windows() -> Windows {
        Windows::new(Retention { sliding_ms: 60_000, minute_ms: 600_000 }, 2_000, 5_000)
    }

    fn find<'a>(
        out: &'a [Emitted],
        metric: Metric,
        tenant: &str,
        key: &str,
        start: i64,
    ) -> Option<&'a Emitted> {
        out.iter().find(|e| {
            e.window.metric == metric
                && e.window.tenant.as_ref() == tenant
                && e.window.key.as_ref() == key
                && e.window.start_ms == start
        })
    }

    const T0: i64 = 1_700_000_040_000; // a minute boundary

    #[tokio::test]
    async fn sliding_windows_hold_every_event_of_their_ten_seconds_across_batches() {
        let mut w = windows();
        // Two batches straddle a pane: one window, never two.
        w.add(&[ev("a", "t", T0 + 100), ev("a", "t", T0 + 900)], T0 + 1000).await.expect("adds");
        w.add(&[ev("a", "t", T0 + 1500), ev("b", "t", T0 + 1600)], T0 + 2000).await.expect("adds");
        let out = w.advance(T0 + 2000, true);
        // The window [T0-9s, T0+1s) holds the first two; [T0, T0+10s) all of a's three.
        assert_eq!(find(&out, Metric::Events, "a", "t", T0 - 9_000).map(|e| e.value.count), Some(2));
        assert_eq!(find(&out, Metric::Events, "a", "t", T0).map(|e| e.value.count), Some(3));
        assert_eq!(find(&out, Metric::Events, "*", "t", T0).map(|e| e.value.count), Some(4));
        assert_eq!(find(&out, Metric::Events, "b", "t", T0 + 1_000).map(|e| e.value.count), Some(1));
        assert!(find(&out, Metric::Events, "a", "t", T0 + 2_000).is_none(), "no event in that window");
        // Exactly ten windows hold a's first event.
        let holding = out.iter().filter(|e| {
            e.window.metric == Metric::Events
                && e.window.tenant.as_ref() == "a"
                && e.window.start_ms <= T0 + 100
                && e.window.start_ms + SLIDING_MS > T0 + 100
        });
        assert_eq!(holding.count(), 10);
        assert!(out.iter().all(|e| e.state == WindowState::Provisional || e.state == WindowState::Final));
    }

    #[tokio::test]
    async fn minute_windows_close_then_correct_visibly_and_forget_after_retention() {
        let mut w = windows();
        w.add(
            &[completed("a", T0 + 5_000, 1_000, "USD"), completed("a", T0 + 6_000, 250, "EUR")],
            T0 + 7_000,
        )
        .await
        .expect("adds");
        let out = w.advance(T0 + 7_000, true);
        let usd = find(&out, Metric::TransferVolume, "a", "USD", T0).expect("usd window");
        assert_eq!(
            (usd.state, usd.revision, usd.value.amount_minor, usd.value.count),
            (WindowState::Provisional, 1, 1_000, 1)
        );
        // The watermark passes the minute: final, once.
        w.add(&[ev("a", "t", T0 + 63_000)], T0 + 63_000).await.expect("adds");
        let out = w.advance(T0 + 63_000, true);
        let usd = find(&out, Metric::TransferVolume, "a", "USD", T0).expect("closed");
        assert_eq!((usd.state, usd.revision), (WindowState::Final, 2));
        assert!(find(&w.advance(T0 + 63_001, true), Metric::TransferVolume, "a", "USD", T0).is_none());
        // A late event corrects it, visibly.
        w.add(&[completed("a", T0 + 30_000, 9_000_000_000_000_000_000, "USD")], T0 + 64_000)
            .await
            .expect("adds");
        let out = w.advance(T0 + 64_000, true);
        let usd = find(&out, Metric::TransferVolume, "a", "USD", T0).expect("corrected");
        assert_eq!((usd.state, usd.revision), (WindowState::Correction, 3));
        assert_eq!(usd.value.amount_minor, 9_000_000_000_000_001_000, "i128: no overflow past i64");
        assert_eq!(w.counters.late_corrections, 2, "the platform's USD volume and completed outcome");
        // Long after: forgotten, and a later event for it is counted as dropped.
        w.add(&[ev("a", "t", T0 + 700_000)], T0 + 700_000).await.expect("adds");
        w.advance(T0 + 700_000, true);
        w.add(&[completed("a", T0 + 1_000, 5, "USD")], T0 + 700_100).await.expect("adds");
        assert!(find(&w.advance(T0 + 700_100, true), Metric::TransferVolume, "a", "USD", T0).is_none());
        assert_eq!(w.counters.late_dropped, 1, "the one event");
    }

    #[tokio::test]
    async fn the_watermark_holds_while_catching_up_and_follows_the_clock_when_idle() {
        let mut w = windows();
        w.add(&[ev("a", "t", T0)], T0 + 100).await.expect("adds");
        assert!(w.advance(T0 + 100, false).is_empty(), "history is still being read");
        assert_eq!(w.watermark_ms(), i64::MIN);
        w.advance(T0 + 200, true);
        assert_eq!(w.watermark_ms(), T0 - 2_000);
        // Idle for longer than idle_ms: the clock moves it.
        let out = w.advance(T0 + 100_000, true);
        assert_eq!(w.watermark_ms(), T0 + 100_000 - 7_000);
        assert!(out.iter().all(|e| e.state == WindowState::Final));
        assert!(!out.is_empty());
    }

    #[tokio::test]
    async fn outcomes_and_dead_letters_count_per_class_and_events_without_tenant_only_in_totals() {
        let mut w = windows();
        let rejected = LiveEvent { outcome: Some("rejected"), ..ev("a", "s", T0 + 10) };
        let dead = LiveEvent { tenant: None, reason: Some("signature".into()), ..ev("x", "d", T0 + 20) };
        w.add(&[rejected.clone(), rejected, dead], T0 + 100).await.expect("adds");
        let out = w.advance(T0 + 100, true);
        assert_eq!(find(&out, Metric::TransferOutcomes, "a", "rejected", T0).map(|e| e.value.count), Some(2));
        assert_eq!(find(&out, Metric::DeadLetters, "*", "signature", T0).map(|e| e.value.count), Some(1));
        assert!(out.iter().all(|e| e.window.tenant.as_ref() != ""), "no window for a missing tenant");
    }
}
