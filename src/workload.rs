//! Deterministic workloads shared by the end-to-end tests and the benchmarks.
use std::time::Duration;

use riverbank_runtime::config::KafkaConfig;
use riverbank_runtime::produce::{produce_all, Emit};
use riverbank_schemas::transfers::input_types as it;
use riverbank_schemas::{derived_id, Envelope, Environment, RawEnvelope, Topics};

/// A small deterministic generator (no randomness crate needed, same sequence every run).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Lifecycles of many transfers for several tenants, interleaved (per-transfer order kept), with
/// duplicates, stale callbacks, reviews, blocks, failures, retries and cancels.
pub fn transfer_inputs(tenants: &[&str], transfers_per_tenant: usize, seed: u64) -> Vec<RawEnvelope> {
    let mut rng = Lcg(seed);
    let mut lanes: Vec<Vec<(String, &'static str, serde_json::Value)>> = Vec::new();
    for tenant in tenants {
        // Funding first, in its own lane, so later withdrawals can succeed.
        let mut funding = Vec::new();
        for a in 0..10 {
            let id = format!("fund-{a}");
            funding.push((tenant.to_string(), it::REQUESTED, serde_json::json!({"transfer_id": id, "kind": "deposit", "amount": {"amount_minor": 1_000_000, "currency": "USD"}, "destination_account": format!("acct_{a}"), "requested_by": "ops"})));
            funding.push((tenant.to_string(), it::RISK_DECIDED, serde_json::json!({"transfer_id": id, "decision": "approve", "score": 1, "reasons": [], "rule_set_version": "r1"})));
            funding.push((
                tenant.to_string(),
                it::PROVIDER_STATUS,
                serde_json::json!({"transfer_id": id, "status": "completed"}),
            ));
        }
        lanes.push(funding);
        for n in 0..transfers_per_tenant {
            let id = format!("t-{n}");
            let kind = ["deposit", "withdrawal", "internal", "payout"][rng.below(4) as usize];
            let amount = 1 + rng.below(50_000) as i64;
            let (a, b) = (rng.below(10), rng.below(10));
            let b = if a == b { (b + 1) % 10 } else { b };
            let mut lane = vec![(
                tenant.to_string(),
                it::REQUESTED,
                serde_json::json!({"transfer_id": id, "kind": kind, "amount": {"amount_minor": amount, "currency": "USD"}, "source_account": format!("acct_{a}"), "destination_account": format!("acct_{b}"), "requested_by": "maker"}),
            )];
            let risk = |d: &str| serde_json::json!({"transfer_id": id, "decision": d, "score": 5, "reasons": ["test"], "rule_set_version": "r1"});
            let cb = |s: &str| serde_json::json!({"transfer_id": id, "status": s});
            match rng.below(10) {
                0 => lane.push((tenant.to_string(), it::RISK_DECIDED, risk("block"))),
                1 => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("review")));
                    lane.push((
                        tenant.to_string(),
                        it::APPROVED,
                        serde_json::json!({"transfer_id": id, "actor": "checker"}),
                    ));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                }
                2 => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("failed")));
                    lane.push((
                        tenant.to_string(),
                        it::RETRY_REQUESTED,
                        serde_json::json!({"transfer_id": id, "actor": "maker"}),
                    ));
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                }
                _ => {
                    lane.push((tenant.to_string(), it::RISK_DECIDED, risk("approve")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("confirming")));
                    lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("completed")));
                    if rng.below(4) == 0 {
                        lane.push((tenant.to_string(), it::PROVIDER_STATUS, cb("processing")));
                        // stale
                    }
                }
            }
            lanes.push(lane);
        }
    }
    // Interleave: repeatedly take the next input of a random lane (funding lanes first).
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut cursors = vec![0usize; lanes.len()];
    let funding: Vec<usize> = (0..lanes.len())
        .filter(|&i| {
            lanes[i]
                .first()
                .is_some_and(|l| l.2["transfer_id"].as_str().is_some_and(|t| t.starts_with("fund-")))
        })
        .collect();
    let mut order: Vec<usize> =
        funding.iter().flat_map(|&i| std::iter::repeat_n(i, lanes[i].len())).collect();
    let mut rest: Vec<usize> = (0..lanes.len())
        .filter(|i| !funding.contains(i))
        .flat_map(|i| std::iter::repeat_n(i, lanes[i].len()))
        .collect();
    for i in (1..rest.len()).rev() {
        rest.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order.extend(rest);
    for lane in order {
        let (tenant, event_type, payload) = lanes[lane][cursors[lane]].clone();
        cursors[lane] += 1;
        seq += 1;
        let t = chrono::DateTime::from_timestamp(1_790_000_000 + (seq / 100) as i64, 0).unwrap_or_default();
        let e = Envelope {
            event_id: derived_id(&["e2e-transfers", &seed.to_string(), &seq.to_string()]),
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant_id: tenant,
            environment: Environment::Live,
            occurred_at: t,
            ingested_at: t,
            idempotency_key: None,
            source: "api".to_owned(),
            user_id: None,
            customer_id: None,
            session_id: None,
            trace_id: None,
            payload,
        };
        // Some inputs arrive twice (an upstream replay).
        if rng.below(20) == 0 {
            out.push(e.clone());
        }
        out.push(e);
    }
    out
}

/// Transfer inputs as records for the environment's inputs topic, keyed by tenant.
pub fn input_emits(topics: &Topics, env: Environment, inputs: &[RawEnvelope]) -> Vec<Emit> {
    inputs
        .iter()
        .map(|e| Emit {
            topic: topics.transfer_inputs(env),
            key: e.tenant_id.clone(),
            event_id: e.event_id,
            payload: serde_json::to_vec(e).unwrap_or_default(),
        })
        .collect()
}

/// Produce transfer inputs to the live inputs topic and wait for the broker's acknowledgements.
pub async fn produce_inputs(kafka: &KafkaConfig, inputs: &[RawEnvelope]) -> anyhow::Result<()> {
    let topics = riverbank_runtime::kafka::topics(kafka);
    let producer = riverbank_runtime::kafka::producer(kafka)?;
    let emits = input_emits(&topics, Environment::Live, inputs);
    produce_all(&producer, &emits, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)
}
