//! The Grafana dashboard (deploy/grafana/riverbank.json) charts only metrics the code defines.
//!
//! Metric names and their labels are read from the `metrics::{counter,gauge,histogram}!` calls in the
//! crates' sources; every `riverbank_*` name in a panel's or variable's query must be one of them (a
//! histogram is exported as a summary: `name{quantile=..}`, `name_sum`, `name_count`), and every label a
//! query selects or groups by must be one those metrics carry (or a label Prometheus or the scrape
//! config puts on every target). Renaming a metric or a label without updating the dashboard fails here.
//! Stack-free: reads files only.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/riverbank.json";
/// The source trees whose metrics the dashboard may chart (crate `src/` folders, not tests or benches).
const SOURCE_DIRS: &[&str] = &[
    "src",
    "runtime/src",
    "ingest/src",
    "ingest/core/src",
    "processors/src",
    "schemas/src",
    "sinks/src",
    "api/src",
];
/// Labels on every scraped series: Prometheus's own and the ones deploy/grafana/README.md's scrape
/// config sets on riverbank's targets.
const TARGET_LABELS: &[&str] = &["job", "instance", "environment"];
/// The rows the dashboard must keep (issue 14).
const ROWS: &[&str] = &["Ingest", "Processors", "Sinks", "Dead letters"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct Metric {
    kind: Kind,
    labels: BTreeSet<String>,
    /// Where it is defined (first place), for messages.
    at: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literal starting at `s[i]` (which must be `"`): its text and the index after it.
fn literal(s: &[u8], i: usize) -> Option<(String, usize)> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    let mut text = Vec::new();
    while j < s.len() {
        match s[j] {
            b'\\' => {
                text.extend_from_slice(s.get(j..j + 2)?);
                j += 2;
            }
            b'"' => return Some((String::from_utf8_lossy(&text).into_owned(), j + 1)),
            c => {
                text.push(c);
                j += 1;
            }
        }
    }
    None
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// One metric macro call of the sources.
#[derive(Debug)]
struct Call {
    kind: Kind,
    name: String,
    labels: BTreeSet<String>,
    line: usize,
}

/// Every `counter!(` / `gauge!(` / `histogram!(` call in `text`, or the line of a call whose name is not
/// a string literal (the dashboard test could not check it).
fn metric_calls(text: &str) -> Vec<Result<Call, usize>> {
    let s = text.as_bytes();
    let mut out = Vec::new();
    for (mac, kind) in
        [("counter!(", Kind::Counter), ("gauge!(", Kind::Gauge), ("histogram!(", Kind::Histogram)]
    {
        let mut from = 0;
        while let Some(off) = text[from..].find(mac) {
            let start = from + off;
            from = start + mac.len();
            let line = text[..start].matches('\n').count() + 1;
            // `describe_counter!(` etc. or another macro ending the same way is not a definition.
            if start > 0 && (s[start - 1].is_ascii_alphanumeric() || s[start - 1] == b'_') {
                continue;
            }
            let Some((name, mut i)) = literal(s, skip_ws(s, from)) else {
                out.push(Err(line));
                continue;
            };
            // Labels: literals followed by `=>`, up to the call's closing parenthesis.
            let mut labels = BTreeSet::new();
            let mut depth = 1usize;
            while i < s.len() && depth > 0 {
                match s[i] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    b'"' => {
                        let Some((lit, next)) = literal(s, i) else { break };
                        if s[skip_ws(s, next)..].starts_with(b"=>") {
                            labels.insert(lit);
                        }
                        i = next;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
            out.push(Ok(Call { kind, name, labels, line }));
        }
    }
    out
}

/// The metrics the code defines, by name.
fn defined_metrics() -> BTreeMap<String, Metric> {
    let mut files = Vec::new();
    for d in SOURCE_DIRS {
        rust_files(&root().join(d), &mut files);
    }
    files.sort();
    let mut metrics: BTreeMap<String, Metric> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(root()).unwrap_or(f).display().to_string();
        for call in metric_calls(&text) {
            match call {
                Ok(Call { kind, name, labels, line }) => {
                    let m = metrics.entry(name.clone()).or_insert_with(|| Metric {
                        kind,
                        labels: BTreeSet::new(),
                        at: format!("{rel}:{line}"),
                    });
                    assert_eq!(
                        m.kind, kind,
                        "{name} is defined as {:?} at {} and as {kind:?} at {rel}:{line}",
                        m.kind, m.at
                    );
                    m.labels.extend(labels);
                }
                Err(line) => unreadable.push(format!("{rel}:{line}")),
            }
        }
    }
    assert!(
        unreadable.is_empty(),
        "metric names must be string literals so the Grafana dashboard can be checked against them: {unreadable:?}"
    );
    metrics
}

/// The names a scrape shows for each metric (metrics-exporter-prometheus without buckets renders a
/// histogram as a summary), mapped to the labels its series carry.
fn exposed(metrics: &BTreeMap<String, Metric>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (name, m) in metrics {
        let mut labels: BTreeSet<String> = m.labels.clone();
        labels.extend(TARGET_LABELS.iter().map(|l| (*l).to_owned()));
        if m.kind == Kind::Histogram {
            out.insert(format!("{name}_sum"), labels.clone());
            out.insert(format!("{name}_count"), labels.clone());
            labels.insert("quantile".to_owned());
        }
        out.insert(name.clone(), labels);
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Problems with one PromQL query: unknown `riverbank_*` names, and labels selected or grouped by that
/// none of its metrics carry.
fn check_query(q: &str, exposed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let s = q.as_bytes();
    let mut errors = Vec::new();
    let mut used = Vec::new();
    let mut selected = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'"' {
            // Skip string contents (label values such as regexes).
            i = literal(s, i).map_or(s.len(), |(_, next)| next);
            continue;
        }
        if is_ident(s[i]) && (i == 0 || !is_ident(s[i - 1])) {
            let mut j = i;
            while j < s.len() && is_ident(s[j]) {
                j += 1;
            }
            let word = &q[i..j];
            let next = skip_ws(s, j);
            if word.starts_with("riverbank_") {
                match exposed.get(word) {
                    Some(_) => used.push(word.to_owned()),
                    None => errors.push(format!("unknown metric {word}")),
                }
                // Its selector: `name{label op "value", ...}`.
                if s.get(next) == Some(&b'{') {
                    let mut k = next + 1;
                    while k < s.len() && s[k] != b'}' {
                        if s[k] == b'"' {
                            k = literal(s, k).map_or(s.len(), |(_, n)| n);
                            continue;
                        }
                        if is_ident(s[k]) {
                            let mut e = k;
                            while e < s.len() && is_ident(s[e]) {
                                e += 1;
                            }
                            selected.push((word.to_owned(), q[k..e].to_owned()));
                            k = e;
                            continue;
                        }
                        k += 1;
                    }
                    i = k;
                    continue;
                }
            } else if word == "by" || word == "without" {
                if s.get(next) == Some(&b'(') {
                    let close = q[next..].find(')').map_or(q.len(), |c| next + c);
                    for l in q[next + 1..close].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                        selected.push((String::new(), l.to_owned()));
                    }
                    i = close;
                    continue;
                }
            } else if word == "label_values" && s.get(next) == Some(&b'(') {
                // label_values(metric{...}, label): the label after the last comma.
                let close = q.rfind(')').unwrap_or(q.len());
                if let Some(comma) = q[next..close].rfind(',') {
                    let l = q[next + comma + 1..close].trim();
                    selected.push((String::new(), l.to_owned()));
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    if used.is_empty() && errors.is_empty() {
        errors.push("no riverbank metric in the query".to_owned());
    }
    for (metric, label) in selected {
        let known = if metric.is_empty() {
            // Grouping: some metric of the query must carry it.
            used.iter().any(|m| exposed.get(m).is_some_and(|ls| ls.contains(&label)))
        } else {
            exposed.get(&metric).is_none_or(|ls| ls.contains(&label))
        };
        if !known {
            let whose = if metric.is_empty() { used.join(", ") } else { metric };
            errors.push(format!("label {label} is not on {whose}"));
        }
    }
    errors
}

fn load_dashboard() -> Value {
    let path = root().join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every (where, query) of the dashboard: panel targets and query variables.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((format!("panel '{}' target {}", p["title"], t["refId"]), expr.to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_defined_in_the_code() {
    let metrics = defined_metrics();
    let exposed = exposed(&metrics);
    let d = load_dashboard();
    let qs = queries(&d);
    assert!(qs.len() > 20, "the dashboard has {} queries; expected its panels", qs.len());
    let mut errors = Vec::new();
    let mut charted = BTreeSet::new();
    for (at, q) in &qs {
        for e in check_query(q, &exposed) {
            errors.push(format!("{DASHBOARD}: {at}: {e}\n    {q}"));
        }
        for name in metrics.keys() {
            if q.contains(name.as_str()) {
                charted.insert(name.clone());
            }
        }
    }
    assert!(errors.is_empty(), "the dashboard does not match the code's metrics:\n{}", errors.join("\n"));
    // The areas of issue 14 stay charted (a metric dropped from the code must leave a gap noticed here).
    for needed in [
        "riverbank_ingest_commands_total",
        "riverbank_ingest_webhooks_refused_total",
        "riverbank_processor_events_in_total",
        "riverbank_processor_events_out_total",
        "riverbank_consumer_lag_messages",
        "riverbank_processor_checkpoint_seconds",
        "riverbank_processor_checkpoint_bytes",
        "riverbank_processor_panics_total",
        "riverbank_sink_rows_total",
        "riverbank_sink_store_errors_total",
        "riverbank_dead_letters_total",
    ] {
        assert!(charted.contains(needed), "{needed} is no longer charted (or no longer defined)");
    }
}

#[test]
fn the_dashboard_is_an_importable_grafana_model() {
    let d = load_dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "Grafana 10+ schemaVersion");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "a fixed uid so re-imports replace it");
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input"
    );
    let vars: BTreeSet<&str> =
        d["templating"]["list"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    assert!(vars.contains("environment") && vars.contains("component"), "variables: {vars:?}");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rows = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} repeated");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("gridPos.x"), g["w"].as_u64().expect("gridPos.w"));
        assert!(x + w <= 24 && g["h"].as_u64().is_some_and(|h| h > 0), "panel {id} off the 24-column grid");
        if p["type"] == "row" {
            rows.push(p["title"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "panel {id} has a title");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id} uses the input datasource");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        for t in targets.unwrap_or_else(|| panic!("panel {id} has no queries")) {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("environment=~\"$environment\""),
                "panel {id} ignores $environment: {expr}"
            );
        }
    }
    assert_eq!(rows, ROWS, "the dashboard's rows");
}

#[test]
fn the_checker_catches_what_it_is_for() {
    let src = r#"
        metrics::counter!("riverbank_a_total", "sink" => name.to_owned()).increment(1);
        metrics::histogram!(
            "riverbank_b_seconds", "processor" => f(x, (y))
        ).record(1.0);
        metrics::gauge!(NAME).set(1.0);
        metrics::describe_counter!("riverbank_a_total", "described only");
    "#;
    let calls = metric_calls(src);
    let ok: Vec<_> =
        calls.iter().filter_map(|c| c.as_ref().ok()).map(|c| (c.kind, c.name.as_str())).collect();
    assert_eq!(ok, [(Kind::Counter, "riverbank_a_total"), (Kind::Histogram, "riverbank_b_seconds")]);
    assert_eq!(calls.iter().filter(|c| c.is_err()).count(), 1, "a non-literal name is reported");

    let mut m = BTreeMap::new();
    for (name, kind, label) in
        [("riverbank_a_total", Kind::Counter, "sink"), ("riverbank_b_seconds", Kind::Histogram, "processor")]
    {
        let labels = [label.to_owned()].into();
        m.insert(name.to_owned(), Metric { kind, labels, at: String::new() });
    }
    let ex = exposed(&m);
    let ok = |q: &str| check_query(q, &ex);
    assert!(ok(r#"sum by (sink) (rate(riverbank_a_total{environment=~"$environment"}[5m]))"#).is_empty());
    assert!(ok(r#"max(riverbank_b_seconds{quantile="0.99", processor=~"a|b"})"#).is_empty());
    assert!(ok("rate(riverbank_b_seconds_sum[5m]) / rate(riverbank_b_seconds_count[5m])").is_empty());
    assert!(ok("label_values(riverbank_a_total, sink)").is_empty());
    assert_eq!(ok("rate(riverbank_renamed_total[5m])"), ["unknown metric riverbank_renamed_total"]);
    assert_eq!(ok("rate(riverbank_a_total_sum[5m])"), ["unknown metric riverbank_a_total_sum"]);
    assert_eq!(ok(r#"riverbank_a_total{quantile="0.5"}"#), ["label quantile is not on riverbank_a_total"]);
    assert_eq!(ok("sum by (processor) (riverbank_a_total)"), ["label processor is not on riverbank_a_total"]);
    assert_eq!(ok("label_values(riverbank_a_total, tenant)"), ["label tenant is not on riverbank_a_total"]);
    assert_eq!(ok("up"), ["no riverbank metric in the query"]);
    // A group regex mentioning a metric-like word is a value, not a metric.
    assert!(ok(r#"riverbank_a_total{sink=~"riverbank_x"}"#).is_empty());
}
