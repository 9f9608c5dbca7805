//! The frames of `GET /v1/live`: numbered once, kept for resumption, and fanned out to every stream
//! whose view may see them.
//!
//! Every frame gets the next sequence number of this process's epoch (`<epoch>-<seq>` is its SSE id).
//! The newest `replay_frames_max` are kept: a stream that reconnects with a `Last-Event-ID` of this
//! epoch still covered is replayed exactly what it missed (filtered by its view); any other is sent a
//! snapshot (the current state of every window, gauge and the latest dead letters), which supersedes
//! whatever it missed. A stream that falls more than its queue behind is resynchronised the same way.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use riverbank_schemas::Environment;
use tokio::sync::broadcast;

/// Who may see a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One tenant's view (and the platform view).
    Tenant(Arc<str>),
    /// The platform view only (platform-wide totals, consumer lag).
    Platform,
    /// Every view of the environment (the sinks' landed-through lag).
    Everyone,
}

/// A view: a tenant's, or the platform's (`tenant: None`), of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub tenant: Option<String>,
    pub env: Environment,
}

impl View {
    pub fn sees(&self, f: &Frame) -> bool {
        // Frames of no environment (the watermark, stats) go to every environment's views.
        if f.env.is_some_and(|e| e != self.env) {
            return false;
        }
        match (&f.audience, &self.tenant) {
            (_, None) => true,
            (Audience::Tenant(t), Some(v)) => t.as_ref() == v,
            (Audience::Everyone, Some(_)) => true,
            (Audience::Platform, Some(_)) => false,
        }
    }
}

/// What a frame is the latest value of, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Window(String),
    Gauge(String),
    DeadLetter,
    /// Not part of the state (stats, watermarks).
    None,
}

#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub env: Option<Environment>,
    pub audience: Audience,
    pub event: &'static str,
    /// One JSON object on one line.
    pub data: String,
}

impl Frame {
    /// The SSE text of this frame.
    pub fn sse(&self, epoch: &str) -> String {
        format!("id: {epoch}-{}\nevent: {}\ndata: {}\n\n", self.seq, self.event, self.data)
    }
}

/// A frame to publish.
pub struct Outgoing {
    pub env: Option<Environment>,
    pub audience: Audience,
    pub event: &'static str,
    pub data: String,
    pub slot: Slot,
}

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub replay_frames_max: usize,
    pub snapshot_frames_max: usize,
    pub dead_letters_kept_max: usize,
    pub connection_queue_frames_max: usize,
}

struct Inner {
    seq: u64,
    ring: VecDeque<Arc<Frame>>,
    windows: BTreeMap<String, Arc<Frame>>,
    gauges: BTreeMap<String, Arc<Frame>>,
    dead_letters: VecDeque<Arc<Frame>>,
}

pub struct Hub {
    pub epoch: String,
    limits: HubLimits,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Frame>>,
}

/// What a new stream starts with.
pub enum Start {
    /// Everything after its Last-Event-ID, in order.
    Replay(Vec<Arc<Frame>>),
    /// The current state (`snapshot` frame data).
    Snapshot(String),
}

impl Hub {
    pub fn new(limits: HubLimits) -> Hub {
        let (tx, _) = broadcast::channel(limits.connection_queue_frames_max.max(1));
        Hub {
            epoch: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            limits,
            inner: Mutex::new(Inner {
                seq: 0,
                ring: VecDeque::new(),
                windows: BTreeMap::new(),
                gauges: BTreeMap::new(),
                dead_letters: VecDeque::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number, keep and send frames (in the order given).
    pub fn publish(&self, frames: Vec<Outgoing>) {
        let mut inner = self.lock();
        for o in frames {
            inner.seq += 1;
            let f = Arc::new(Frame {
                seq: inner.seq,
                env: o.env,
                audience: o.audience,
                event: o.event,
                data: o.data,
            });
            match o.slot {
                Slot::Window(k) => {
                    inner.windows.insert(k, f.clone());
                }
                Slot::Gauge(k) => {
                    inner.gauges.insert(k, f.clone());
                }
                Slot::DeadLetter => {
                    inner.dead_letters.push_back(f.clone());
                    while inner.dead_letters.len() > self.limits.dead_letters_kept_max {
                        inner.dead_letters.pop_front();
                    }
                }
                Slot::None => {}
            }
            inner.ring.push_back(f.clone());
            while inner.ring.len() > self.limits.replay_frames_max {
                inner.ring.pop_front();
            }
            // No receiver is fine: nobody is watching.
            let _ = self.tx.send(f);
        }
    }

    /// Forget windows that are no longer kept (their snapshot entries).
    pub fn forget_windows(&self, keys: &[String]) {
        let mut inner = self.lock();
        for k in keys {
            inner.windows.remove(k);
        }
    }

    /// A new stream of `view`: where it starts, and the live frames after that (no gap, no repeat:
    /// both are taken under one lock).
    pub fn subscribe(
        &self,
        view: &View,
        last_event_id: Option<&str>,
    ) -> (Start, broadcast::Receiver<Arc<Frame>>) {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let resumable = last_event_id
            .and_then(|id| id.split_once('-'))
            .filter(|(epoch, _)| *epoch == self.epoch)
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .filter(|&seq| seq <= inner.seq)
            // Covered when the ring still holds the frame right after it (or it is the newest).
            .filter(|&seq| seq == inner.seq || inner.ring.front().is_some_and(|f| f.seq <= seq + 1));
        let start = match resumable {
            Some(seq) => {
                Start::Replay(inner.ring.iter().filter(|f| f.seq > seq && view.sees(f)).cloned().collect())
            }
            None => Start::Snapshot(self.snapshot_of(&inner, view)),
        };
        (start, rx)
    }

    /// The current state a view sees, as the data of a `snapshot` frame.
    pub fn snapshot(&self, view: &View) -> String {
        let inner = self.lock();
        self.snapshot_of(&inner, view)
    }

    fn snapshot_of(&self, inner: &Inner, view: &View) -> String {
        let join =
            |frames: Vec<&Arc<Frame>>| frames.iter().map(|f| f.data.as_str()).collect::<Vec<_>>().join(",");
        let gauges: Vec<&Arc<Frame>> = inner.gauges.values().filter(|f| view.sees(f)).collect();
        let dead: Vec<&Arc<Frame>> = inner.dead_letters.iter().filter(|f| view.sees(f)).collect();
        // The newest windows win when there are more than a snapshot holds.
        let mut windows: Vec<&Arc<Frame>> = inner.windows.values().filter(|f| view.sees(f)).collect();
        let room = self.limits.snapshot_frames_max.saturating_sub(gauges.len() + dead.len());
        let truncated = windows.len() > room;
        if truncated {
            windows.sort_by_key(|f| std::cmp::Reverse(f.seq));
            windows.truncate(room);
            windows.sort_by_key(|f| f.seq);
        }
        format!(
            "{{\"seq\":{},\"truncated\":{truncated},\"windows\":[{}],\"gauges\":[{}],\"dead_letters\":[{}]}}",
            inner.seq,
            join(windows),
            join(gauges),
            join(dead)
        )
    }

    pub fn seq(&self) -> u64 {
        self.lock().seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(replay: usize) -> Hub {
        Hub::new(HubLimits {
            replay_frames_max: replay,
            snapshot_frames_max: 100,
            dead_letters_kept_max: 2,
            connection_queue_frames_max: 16,
        })
    }

    fn window(tenant: &str, key: &str, value: u64) -> Outgoing {
        Outgoing {
            env: Some(Environment::Live),
            audience: if tenant == "*" { Audience::Platform } else { Audience::Tenant(tenant.into()) },
            event: "window",
            data: format!("{{\"tenant_id\":\"{tenant}\",\"k\":\"{key}\",\"v\":{value}}}"),
            slot: Slot::Window(format!("{tenant}|{key}")),
        }
    }

    fn view(t: Option<&str>) -> View {
        View { tenant: t.map(str::to_owned), env: Environment::Live }
    }

    #[test]
    fn a_tenant_view_sees_its_own_and_the_everyone_frames_and_the_platform_view_all() {
        let a = view(Some("a"));
        let p = view(None);
        let f = |audience, env| Frame { seq: 1, env, audience, event: "x", data: String::new() };
        assert!(a.sees(&f(Audience::Tenant("a".into()), Some(Environment::Live))));
        assert!(!a.sees(&f(Audience::Tenant("b".into()), Some(Environment::Live))));
        assert!(!a.sees(&f(Audience::Platform, Some(Environment::Live))));
        assert!(a.sees(&f(Audience::Everyone, Some(Environment::Live))));
        assert!(!a.sees(&f(Audience::Tenant("a".into()), Some(Environment::Sandbox))));
        assert!(a.sees(&f(Audience::Everyone, None)), "frames of no environment are for every environment");
        assert!(!a.sees(&f(Audience::Platform, None)));
        assert!(p.sees(&f(Audience::Tenant("b".into()), Some(Environment::Live))));
        assert!(p.sees(&f(Audience::Platform, Some(Environment::Live))));
        assert!(!p.sees(&f(Audience::Platform, Some(Environment::Sandbox))));
    }

    #[test]
    fn a_covered_last_event_id_replays_exactly_what_was_missed_else_a_snapshot() {
        let h = hub(4);
        h.publish(vec![window("a", "x", 1), window("b", "x", 1), window("a", "x", 2)]);
        let epoch = h.epoch.clone();
        let (start, _) = h.subscribe(&view(Some("a")), Some(&format!("{epoch}-1")));
        let Start::Replay(frames) = start else { panic!("seq 1 is covered") };
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![3], "b's frame is not a's");
        // Nothing missed.
        let (start, _) = h.subscribe(&view(Some("a")), Some(&format!("{epoch}-3")));
        assert!(matches!(start, Start::Replay(ref f) if f.is_empty()));
        // Pushed out of the ring, another epoch, garbage, or from the future: a snapshot.
        h.publish(vec![window("a", "y", 1), window("a", "z", 1), window("a", "w", 1)]);
        for id in [format!("{epoch}-1"), "0123456789ab-5".into(), "garbage".into(), format!("{epoch}-99")] {
            let (start, _) = h.subscribe(&view(Some("a")), Some(&id));
            let Start::Snapshot(s) = start else { panic!("{id} must not resume") };
            let v: serde_json::Value = serde_json::from_str(&s).expect("json");
            let ws = v["windows"].as_array().expect("windows");
            assert_eq!(ws.len(), 4, "{s}");
            assert!(ws.iter().all(|w| w["tenant_id"] == "a"));
            assert!(ws.iter().any(|w| w["k"] == "x" && w["v"] == 2), "the latest value of a slot");
        }
        let (start, _) = h.subscribe(&view(Some("a")), Some(&format!("{epoch}-2")));
        assert!(matches!(start, Start::Replay(_)), "seq 3.. are still in the ring");
    }

    #[tokio::test]
    async fn frames_published_after_subscribing_arrive_in_order() {
        let h = hub(10);
        let (_, mut rx) = h.subscribe(&view(None), None);
        h.publish(vec![window("a", "x", 1), window("*", "x", 1)]);
        assert_eq!(rx.recv().await.expect("frame").seq, 1);
        assert_eq!(rx.recv().await.expect("frame").seq, 2);
        assert!(h.snapshot(&view(None)).contains("\"seq\":2"));
        let text =
            Frame { seq: 7, env: None, audience: Audience::Platform, event: "stats", data: "{}".into() }
                .sse("e");
        assert_eq!(text, "id: e-7\nevent: stats\ndata: {}\n\n");
    }
}
