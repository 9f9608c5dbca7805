//! Processor state that tracks its own changes: keyed [`Table`]s and single [`Cell`]s. The runtime
//! checkpoints a state as a full snapshot now and then and as the changed entries (a delta) after every
//! batch; a table records which keys changed, so no processor ever marks anything "dirty" by hand.
//!
//! Entries are encoded with bincode (compact, and 5–10× faster to restore than JSON values; see
//! `riverbank bench state`). Checkpoints written before that held JSON values; a table still decodes
//! them ([`Encoded::Json`]), so an upgrade restores the old checkpoints.
//!
//! Values must serialize the same way every time and without `skip_serializing_if` (bincode is not
//! self-describing: a skipped field would shift every field after it).
use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An entry's value as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// bincode (every checkpoint written since state tables exist).
    Bin(Vec<u8>),
    /// JSON (checkpoints written before).
    Json(serde_json::Value),
}

impl Encoded {
    pub fn decode<V: DeserializeOwned>(&self) -> Result<V, String> {
        match self {
            Encoded::Bin(b) => bincode::deserialize(b).map_err(|e| e.to_string()),
            Encoded::Json(v) => serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
        }
    }
}

/// Encode a value the way tables store it.
pub fn encode<V: Serialize>(v: &V) -> Vec<u8> {
    // bincode only fails on types serde cannot describe without length (never a state value).
    bincode::serialize(v).unwrap_or_default()
}

/// One snapshot entry: checkpoint key and encoded value.
pub type Entry = (String, Vec<u8>);
/// One change: checkpoint key and the new value, `None` when removed.
pub type Change = (String, Option<Vec<u8>>);

/// What the runtime needs from any table: snapshot, changes, restore.
pub trait AnyTable {
    /// The checkpoint key prefix: entries are `{prefix}/{key}` (a [`Cell`]'s key is the prefix itself).
    fn prefix(&self) -> &'static str;
    fn snapshot_into(&self, out: &mut Vec<Entry>);
    fn changes_into(&mut self, out: &mut Vec<Change>);
    /// Take one restored entry whose checkpoint key belongs to this table.
    fn restore_entry(&mut self, key: &str, value: &Encoded) -> Result<(), String>;
    /// Whether `checkpoint_key` belongs to this table.
    fn owns(&self, checkpoint_key: &str) -> bool;
    fn rows(&self) -> usize;
}

/// A keyed table of state. Every write (insert, `get_mut`, `upsert`, remove) records the key as changed.
/// Two tables are equal when their rows are (what changed since the last checkpoint is bookkeeping).
#[derive(Debug, Clone)]
pub struct Table<V> {
    prefix: &'static str,
    rows: BTreeMap<String, V>,
    changed: BTreeSet<String>,
}

impl<V: PartialEq> PartialEq for Table<V> {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.rows == other.rows
    }
}

impl<V> Table<V> {
    pub fn new(prefix: &'static str) -> Self {
        Table { prefix, rows: BTreeMap::new(), changed: BTreeSet::new() }
    }
    pub fn get(&self, key: &str) -> Option<&V> {
        self.rows.get(key)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }
    /// Mutable access; the key counts as changed (whether or not the caller writes).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let v = self.rows.get_mut(key)?;
        if !self.changed.contains(key) {
            self.changed.insert(key.to_owned());
        }
        Some(v)
    }
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.changed.insert(key.clone());
        self.rows.insert(key, value)
    }
    /// The row at `key` (created with `Default` if absent), changed by `f`.
    pub fn upsert<R>(&mut self, key: &str, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        if !self.changed.contains(key) {
            self.changed.insert(key.to_owned());
        }
        f(self.rows.entry(key.to_owned()).or_default())
    }
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let old = self.rows.remove(key);
        if old.is_some() {
            self.changed.insert(key.to_owned());
        }
        old
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.rows.iter()
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.rows.values()
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.rows.keys()
    }
    /// Rows whose key starts with `prefix`, in key order.
    pub fn range_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
        self.rows.range(prefix.to_owned()..).take_while(move |(k, _)| k.starts_with(prefix))
    }
}

impl<V> std::ops::Index<&str> for Table<V> {
    type Output = V;
    /// Panics when absent, like a map's index (tests).
    fn index(&self, key: &str) -> &V {
        &self.rows[key]
    }
}

impl<V: Serialize + DeserializeOwned> AnyTable for Table<V> {
    fn prefix(&self) -> &'static str {
        self.prefix
    }
    fn snapshot_into(&self, out: &mut Vec<Entry>) {
        out.extend(self.rows.iter().map(|(k, v)| (format!("{}/{k}", self.prefix), encode(v))));
    }
    fn changes_into(&mut self, out: &mut Vec<Change>) {
        for k in std::mem::take(&mut self.changed) {
            let v = self.rows.get(&k).map(encode);
            out.push((format!("{}/{k}", self.prefix), v));
        }
    }
    fn restore_entry(&mut self, key: &str, value: &Encoded) -> Result<(), String> {
        let own = key.strip_prefix(self.prefix).and_then(|k| k.strip_prefix('/'));
        let own = own.ok_or_else(|| format!("entry {key} is not in table {}", self.prefix))?;
        let v = value.decode().map_err(|e| format!("checkpoint entry {key}: {e}"))?;
        self.rows.insert(own.to_owned(), v);
        Ok(())
    }
    fn owns(&self, checkpoint_key: &str) -> bool {
        checkpoint_key.strip_prefix(self.prefix).is_some_and(|r| r.starts_with('/'))
    }
    fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// One value of state (a clock, a counter), checkpointed under its own key.
#[derive(Debug, Clone)]
pub struct Cell<V> {
    key: &'static str,
    value: V,
    changed: bool,
}

impl<V: PartialEq> PartialEq for Cell<V> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value
    }
}

impl<V: Default> Cell<V> {
    pub fn new(key: &'static str) -> Self {
        Cell { key, value: V::default(), changed: false }
    }
}

impl<V> Cell<V> {
    pub fn get(&self) -> &V {
        &self.value
    }
    pub fn set(&mut self, value: V) {
        self.value = value;
        self.changed = true;
    }
}

impl<V: Serialize + DeserializeOwned> AnyTable for Cell<V> {
    fn prefix(&self) -> &'static str {
        self.key
    }
    fn snapshot_into(&self, out: &mut Vec<Entry>) {
        out.push((self.key.to_owned(), encode(&self.value)));
    }
    fn changes_into(&mut self, out: &mut Vec<Change>) {
        if std::mem::take(&mut self.changed) {
            out.push((self.key.to_owned(), Some(encode(&self.value))));
        }
    }
    fn restore_entry(&mut self, key: &str, value: &Encoded) -> Result<(), String> {
        self.value = value.decode().map_err(|e| format!("checkpoint entry {key}: {e}"))?;
        Ok(())
    }
    fn owns(&self, checkpoint_key: &str) -> bool {
        checkpoint_key == self.key
    }
    fn rows(&self) -> usize {
        1
    }
}

/// A scheduled piece of work: fires once the partition's clock (ticks) reaches `due_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The processor's own name for it; scheduling the same key again replaces it.
    pub key: String,
    pub due_ms: i64,
    /// Whatever the processor needs to act (ids, not payloads with PII).
    pub data: String,
}

/// Event-time timers, part of the checkpointed state. Due timers fire in (due time, key) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Timers {
    table: Table<Timer>,
    order: BTreeSet<(i64, String)>,
}

impl Timers {
    pub fn new(prefix: &'static str) -> Self {
        Timers { table: Table::new(prefix), order: BTreeSet::new() }
    }
    /// Schedule (or move) the timer `key`.
    pub fn schedule(&mut self, key: &str, due_ms: i64, data: impl Into<String>) {
        if let Some(old) = self.table.get(key) {
            self.order.remove(&(old.due_ms, key.to_owned()));
        }
        self.order.insert((due_ms, key.to_owned()));
        self.table.insert(key.to_owned(), Timer { key: key.to_owned(), due_ms, data: data.into() });
    }
    pub fn cancel(&mut self, key: &str) -> Option<Timer> {
        let t = self.table.remove(key)?;
        self.order.remove(&(t.due_ms, key.to_owned()));
        Some(t)
    }
    pub fn get(&self, key: &str) -> Option<&Timer> {
        self.table.get(key)
    }
    /// The earliest timer due at or before `now_ms`, removed.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<Timer> {
        let (due, key) = self.order.first()?.clone();
        if due > now_ms {
            return None;
        }
        self.cancel(&key)
    }
    pub fn next_due_ms(&self) -> Option<i64> {
        self.order.first().map(|(d, _)| *d)
    }
    pub fn len(&self) -> usize {
        self.table.len()
    }
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl AnyTable for Timers {
    fn prefix(&self) -> &'static str {
        self.table.prefix()
    }
    fn snapshot_into(&self, out: &mut Vec<Entry>) {
        self.table.snapshot_into(out)
    }
    fn changes_into(&mut self, out: &mut Vec<Change>) {
        self.table.changes_into(out)
    }
    fn restore_entry(&mut self, key: &str, value: &Encoded) -> Result<(), String> {
        self.table.restore_entry(key, value)?;
        let own = &key[self.table.prefix().len() + 1..];
        if let Some(t) = self.table.get(own) {
            self.order.insert((t.due_ms, t.key.clone()));
        }
        Ok(())
    }
    fn owns(&self, checkpoint_key: &str) -> bool {
        self.table.owns(checkpoint_key)
    }
    fn rows(&self) -> usize {
        self.table.rows()
    }
}

/// A processor's state: a set of tables. Implement it with [`state_tables!`](crate::state_tables).
pub trait State: Send + Sync + 'static {
    /// A new, empty state (tables know their prefixes, so this is not `Default`).
    fn empty() -> Self;
    fn tables(&self) -> Vec<&dyn AnyTable>;
    fn tables_mut(&mut self) -> Vec<&mut dyn AnyTable>;
    /// Rebuild what is derived from the tables (indexes, orders) after a restore.
    fn restored(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The state's timers, if the processor uses any (the runtime fires them as ticks arrive).
    fn timers(&mut self) -> Option<&mut Timers> {
        None
    }

    /// Every entry: a full snapshot.
    fn snapshot(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for t in self.tables() {
            t.snapshot_into(&mut out);
        }
        out
    }
    /// Entries changed since the last call: `Some` upserted, `None` removed.
    fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for t in self.tables_mut() {
            t.changes_into(&mut out);
        }
        out
    }
    /// Rebuild from entries (a snapshot with later deltas applied).
    fn restore(entries: &[(String, Encoded)]) -> Result<Self, String>
    where
        Self: Sized,
    {
        let mut s = Self::empty();
        {
            let mut tables = s.tables_mut();
            for (k, v) in entries {
                let t = tables.iter_mut().find(|t| t.owns(k));
                let t = t.ok_or_else(|| format!("checkpoint entry {k} belongs to no table of this state"))?;
                t.restore_entry(k, v)?;
            }
        }
        s.restored()?;
        // Restoring is not a change.
        s.take_changes();
        Ok(s)
    }
    /// Rows over every table (for limits and metrics).
    fn rows(&self) -> usize {
        self.tables().iter().map(|t| t.rows()).sum()
    }
}

/// A stateless processor's state.
impl State for () {
    fn empty() -> Self {}
    fn tables(&self) -> Vec<&dyn AnyTable> {
        Vec::new()
    }
    fn tables_mut(&mut self) -> Vec<&mut dyn AnyTable> {
        Vec::new()
    }
}

/// Remember `key` in a bounded set of remembered inputs (or ids): `seen` maps each key to its sequence,
/// `order` holds the keys by sequence (`{sequence:020}`) and `seq` the last sequence given. Past `max`
/// keys (at least one) the oldest are forgotten first.
pub fn remember_bounded(
    seen: &mut Table<u64>,
    order: &mut Table<String>,
    seq: &mut Cell<u64>,
    key: String,
    max: usize,
) {
    while order.len() >= max.max(1) {
        let Some(oldest) = order.keys().next().cloned() else { break };
        if let Some(k) = order.remove(&oldest) {
            seen.remove(&k);
        }
    }
    // 2^64 inputs cannot arrive; saturating keeps even that from reusing an earlier position.
    let next = seq.get().saturating_add(1);
    seq.set(next);
    seen.insert(key.clone(), next);
    order.insert(format!("{next:020}"), key);
}

/// Implement [`State`] for a struct from the fields that hold its tables, cells and timers:
/// `state_tables!(MyState { accounts, clock }, timers = timers);` (`timers = …` is optional). The struct
/// needs `fn new() -> Self` building every table with its prefix, and may implement `restored` via
/// `after_restore = method` (an inherent `fn method(&mut self) -> Result<(), String>`).
#[macro_export]
macro_rules! state_tables {
    ($ty:ty { $($field:ident),+ $(,)? } $(, timers = $timers:ident)? $(, after_restore = $after:ident)?) => {
        impl $crate::state::State for $ty {
            fn empty() -> Self {
                <$ty>::new()
            }
            fn tables(&self) -> Vec<&dyn $crate::state::AnyTable> {
                vec![$(&self.$field as &dyn $crate::state::AnyTable),+ $(, &self.$timers as &dyn $crate::state::AnyTable)?]
            }
            fn tables_mut(&mut self) -> Vec<&mut dyn $crate::state::AnyTable> {
                vec![$(&mut self.$field as &mut dyn $crate::state::AnyTable),+ $(, &mut self.$timers as &mut dyn $crate::state::AnyTable)?]
            }
            $(fn timers(&mut self) -> Option<&mut $crate::state::Timers> {
                Some(&mut self.$timers)
            })?
            $(fn restored(&mut self) -> Result<(), String> {
                self.$after()
            })?
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Row {
        n: i64,
        tag: String,
    }

    struct S {
        rows: Table<Row>,
        clock: Cell<i64>,
        timers: Timers,
    }
    impl S {
        fn new() -> Self {
            S { rows: Table::new("r"), clock: Cell::new("clock"), timers: Timers::new("tm") }
        }
    }
    crate::state_tables!(S { rows, clock }, timers = timers);

    #[test]
    fn changes_track_themselves_and_restore_rebuilds_the_same_state() {
        let mut s = S::new();
        s.rows.insert("a".into(), Row { n: 1, tag: "x".into() });
        s.rows.upsert("b", |r| r.n = 2);
        s.clock.set(7);
        s.timers.schedule("t1", 100, "d");
        let changes = s.take_changes();
        let keys: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["r/a", "r/b", "clock", "tm/t1"]);
        assert!(s.take_changes().is_empty(), "taken once");
        let _ = s.rows.get("a");
        assert!(s.take_changes().is_empty(), "a read is not a change");
        s.rows.remove("a");
        assert_eq!(s.take_changes(), vec![("r/a".to_owned(), None)]);
        let snap: Vec<(String, Encoded)> =
            s.snapshot().into_iter().map(|(k, v)| (k, Encoded::Bin(v))).collect();
        let mut r = S::restore(&snap).expect("restores");
        assert_eq!((r.rows.clone(), *r.clock.get()), (s.rows.clone(), 7));
        assert!(r.take_changes().is_empty());
        assert_eq!(r.timers.pop_due(99), None);
        assert_eq!(r.timers.pop_due(100).map(|t| t.key), Some("t1".to_owned()));
        assert!(S::restore(&[("zz/1".into(), Encoded::Bin(vec![]))]).is_err(), "unknown entries refuse");
    }

    #[test]
    fn json_entries_of_older_checkpoints_still_restore() {
        let entries = vec![
            ("r/a".to_owned(), Encoded::Json(serde_json::json!({"n": 5, "tag": "old"}))),
            ("clock".to_owned(), Encoded::Json(serde_json::json!(42))),
        ];
        let s = S::restore(&entries).expect("restores");
        assert_eq!(s.rows.get("a"), Some(&Row { n: 5, tag: "old".into() }));
        assert_eq!(*s.clock.get(), 42);
    }

    #[test]
    fn timers_fire_in_due_then_key_order_and_reschedule_moves_them() {
        let mut t = Timers::new("tm");
        t.schedule("b", 10, "");
        t.schedule("a", 10, "");
        t.schedule("c", 5, "");
        t.schedule("c", 20, "");
        let fired: Vec<String> = std::iter::from_fn(|| t.pop_due(15)).map(|x| x.key).collect();
        assert_eq!(fired, ["a", "b"]);
        assert_eq!(t.next_due_ms(), Some(20));
    }
}
