//! Sliding event-time windows over one subject's screened transfers, with bounded state.
//!
//! A subject (a user, a counterparty) keeps its screened transfers (event time, amount in the report
//! currency) for [`VELOCITY_WINDOW_MS_MAX`] behind the newest one, at most [`HISTORY_EVENTS_MAX`]. A
//! window ending at `t` of length `w` holds the transfers with event time in `(t - w, t]`, whatever
//! order they arrived in: a late transfer is inserted at its event time, and a transfer screened with
//! an earlier event time than others already seen counts only what precedes it. Past the count limit
//! the oldest are dropped and the history is marked `truncated` (sums are then lower bounds, and every
//! decision that used it says so).
use riverbank_schemas::risk::VELOCITY_WINDOW_MS_MAX;
use serde::{Deserialize, Serialize};

/// Transfers remembered per subject at most.
pub const HISTORY_EVENTS_MAX: usize = 10_000;

/// One screened transfer in a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub at_ms: i64,
    /// In minor units of the report currency; `None` when no rate was seen (counts, adds nothing).
    pub amount: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Sorted by event time (ties in arrival order).
    pub seen: Vec<Seen>,
    /// Transfers were dropped by the count limit.
    pub truncated: bool,
}

/// What a window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSum {
    pub count: u64,
    pub sum: i128,
    /// Some transfer in it had no amount in the report currency.
    pub unpriced: bool,
}

impl History {
    /// Add a transfer at its event time; drop what fell out of the longest window or over the limit.
    pub fn insert(&mut self, s: Seen) {
        let at = self.seen.partition_point(|x| x.at_ms <= s.at_ms);
        self.seen.insert(at, s);
        if let Some(newest) = self.newest_ms() {
            self.prune(newest.saturating_sub(VELOCITY_WINDOW_MS_MAX));
        }
        if self.seen.len() > HISTORY_EVENTS_MAX {
            let extra = self.seen.len() - HISTORY_EVENTS_MAX;
            self.seen.drain(..extra);
            self.truncated = true;
        }
    }

    /// Drop transfers with an event time at or before `before_ms`.
    pub fn prune(&mut self, before_ms: i64) {
        let keep_from = self.seen.partition_point(|x| x.at_ms <= before_ms);
        self.seen.drain(..keep_from);
    }

    pub fn newest_ms(&self) -> Option<i64> {
        self.seen.last().map(|s| s.at_ms)
    }

    /// The transfers with event time in `(end_ms - window_ms, end_ms]`.
    pub fn window(&self, end_ms: i64, window_ms: i64) -> WindowSum {
        let from = self.seen.partition_point(|x| x.at_ms <= end_ms.saturating_sub(window_ms));
        let to = self.seen.partition_point(|x| x.at_ms <= end_ms);
        let mut w = WindowSum::default();
        for s in &self.seen[from..to.max(from)] {
            w.count += 1;
            match s.amount {
                Some(a) => w.sum += i128::from(a),
                None => w.unpriced = true,
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute(all: &[Seen], end: i64, window: i64) -> (u64, i128) {
        let inside: Vec<&Seen> = all.iter().filter(|s| s.at_ms > end - window && s.at_ms <= end).collect();
        (inside.len() as u64, inside.iter().filter_map(|s| s.amount).map(i128::from).sum())
    }

    #[test]
    fn the_window_is_half_open_and_order_free() {
        let mut h = History::default();
        for (at, a) in [(100, 5), (50, 1), (200, 7), (100, 2)] {
            h.insert(Seen { at_ms: at, amount: Some(a) });
        }
        assert_eq!(h.window(200, 100), WindowSum { count: 1, sum: 7, unpriced: false });
        assert_eq!(h.window(200, 101), WindowSum { count: 3, sum: 14, unpriced: false });
        assert_eq!(h.window(100, 1_000).count, 3, "later transfers are not in an earlier window");
        h.insert(Seen { at_ms: 150, amount: None });
        assert!(h.window(200, 100).unpriced);
    }

    #[test]
    fn the_longest_window_bounds_what_is_kept() {
        let mut h = History::default();
        h.insert(Seen { at_ms: 0, amount: Some(1) });
        h.insert(Seen { at_ms: VELOCITY_WINDOW_MS_MAX + 1, amount: Some(1) });
        assert_eq!(h.seen.len(), 1);
        for i in 0..(HISTORY_EVENTS_MAX as i64 + 5) {
            h.insert(Seen { at_ms: VELOCITY_WINDOW_MS_MAX + 2 + i, amount: Some(1) });
        }
        assert_eq!(h.seen.len(), HISTORY_EVENTS_MAX);
        assert!(h.truncated);
    }

    proptest! {
        /// Sliding-window sums equal a brute-force model over random event times, arriving in any
        /// order (late and out of order), for random window ends and lengths.
        #[test]
        fn windows_equal_a_brute_force_model(
            events in proptest::collection::vec((0i64..10_000_000, proptest::option::of(0i64..1_000_000)), 0..200),
            queries in proptest::collection::vec((0i64..12_000_000, 1i64..5_000_000), 1..20),
        ) {
            let mut h = History::default();
            let all: Vec<Seen> = events.iter().map(|&(at_ms, amount)| Seen { at_ms, amount }).collect();
            for s in &all {
                h.insert(*s);
            }
            for (end, window) in queries {
                let w = h.window(end, window);
                prop_assert_eq!((w.count, w.sum), brute(&all, end, window));
                prop_assert_eq!(w.unpriced, all.iter().any(|s| s.at_ms > end - window && s.at_ms <= end && s.amount.is_none()));
            }
        }
    }
}
