//! The shape of the workspace (ARCHITECTURE.md): dependency direction is enforced, not hoped for.
use std::collections::{HashMap, HashSet};

#[test]
fn crates_depend_only_in_the_allowed_direction() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let mut deps: HashMap<String, HashSet<String>> = HashMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().expect("name").to_owned();
        let names = pkg["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies only
            .map(|d| d["name"].as_str().expect("dep name").to_owned())
            .collect();
        deps.insert(name, names);
    }
    let edges = ["riverbank-ingest", "riverbank-processors", "riverbank-sinks", "riverbank-api"];
    for a in edges {
        let of_a = deps.get(a).unwrap_or_else(|| panic!("{a} is a workspace member"));
        for b in edges {
            assert!(!of_a.contains(b), "{a} must not depend on {b}: they meet only in the binary");
        }
        let base = if a == "riverbank-processors" { "riverbank-schemas" } else { "riverbank-runtime" };
        assert!(of_a.contains(base), "{a} builds on {base}");
    }
    let schemas = &deps["riverbank-schemas"];
    for forbidden in ["tokio", "rdkafka", "sqlx", "clickhouse", "axum", "reqwest", "riverbank-runtime"] {
        assert!(!schemas.contains(forbidden), "schemas must have no I/O, yet depends on {forbidden}");
    }
    let core = &deps["riverbank-ingest-core"];
    for forbidden in ["tokio", "rdkafka", "sqlx", "clickhouse", "axum", "reqwest", "riverbank-runtime"] {
        assert!(!core.contains(forbidden), "ingest-core is pure (fuzzed), yet depends on {forbidden}");
    }
    assert!(deps["riverbank-ingest"].contains("riverbank-ingest-core"), "ingest builds on ingest-core");
    let processors = &deps["riverbank-processors"];
    for forbidden in ["tokio", "rdkafka", "sqlx", "clickhouse", "axum", "reqwest", "riverbank-runtime"] {
        assert!(!processors.contains(forbidden), "processors are pure, yet depend on {forbidden}");
    }
}
