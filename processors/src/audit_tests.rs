use std::sync::Arc;

use proptest::prelude::*;
use riverbank_crypto::merkle;
use riverbank_crypto::sign::{CheckpointSigner, VerifyingKeys};
use riverbank_schemas::audit::{AuditCheckpoint, AuditRecord, GENESIS_HASH};
use riverbank_schemas::processor::{Emit, Processor, Verdict};
use riverbank_schemas::{Envelope, Topics};

use super::*;
use crate::test_harness::Harness;

const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn processor(every_records: u64) -> AuditProcessor {
    let signer = CheckpointSigner::from_seed_hex(SEED).expect("a seed");
    AuditProcessor::new(
        Topics::new("p."),
        AuditSettings {
            signer: Some(Arc::new(signer)),
            checkpoint_every_records: every_records,
            checkpoint_every_ms: 10_000,
            inputs_remembered_max: 1_000,
            logs_per_partition_max: 10,
        },
    )
}

fn harness(every_records: u64) -> Harness<AuditProcessor> {
    Harness::of(processor(every_records), "p.live.audit.inputs", "audit-test")
}

fn status(h: &mut Harness<AuditProcessor>, tenant: &str, transfer: &str, to: &str) -> RawEnvelope {
    h.envelope(
        tenant,
        "transfer.status_changed",
        1_790_000_000_000 + h.seq as i64,
        serde_json::json!({"transfer_id": transfer, "previous": "PENDING", "status": to}),
    )
}

fn records(out: &[Emit]) -> Vec<AuditRecord> {
    out.iter()
        .filter_map(|e| serde_json::from_slice::<Envelope<AuditRecord>>(&e.payload).ok())
        .filter(|e| e.event_type == AuditRecord::EVENT_TYPE)
        .map(|e| e.payload)
        .collect()
}

fn checkpoints(out: &[Emit]) -> Vec<AuditCheckpoint> {
    out.iter()
        .filter_map(|e| serde_json::from_slice::<Envelope<AuditCheckpoint>>(&e.payload).ok())
        .filter(|e| e.event_type == AuditCheckpoint::EVENT_TYPE)
        .map(|e| e.payload)
        .collect()
}

fn leaf(r: &AuditRecord) -> [u8; 32] {
    merkle::leaf_hash(&r.canonical_bytes())
}

#[test]
fn records_are_numbered_and_chained_per_tenant() {
    let mut h = harness(1_000);
    let mut out = Vec::new();
    for i in 0..5 {
        let e = status(&mut h, "tenant-a", &format!("tr_{i}"), "COMPLETED");
        out.extend(h.send_raw(e));
        let e = status(&mut h, "tenant-b", &format!("tr_{i}"), "FAILED");
        out.extend(h.send_raw(e));
    }
    let all = records(&out);
    assert_eq!(all.len(), 10);
    for tenant in ["tenant-a", "tenant-b"] {
        let log: Vec<&AuditRecord> = all.iter().filter(|r| r.tenant_id == tenant).collect();
        let mut prev = GENESIS_HASH.to_owned();
        for (i, r) in log.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.prev_hash, prev);
            assert_eq!(r.hash, r.compute_hash());
            prev = r.hash.clone();
        }
        assert_eq!(log[0].before.as_deref(), Some("PENDING"));
    }
    assert!(out.iter().all(|e| e.topic == "p.live.audit.events.log"));
}

#[test]
fn a_checkpoint_every_n_records_signs_the_tree_head() {
    let mut h = harness(3);
    let mut out = Vec::new();
    for i in 0..7 {
        let e = status(&mut h, "tenant-a", &format!("tr_{i}"), "COMPLETED");
        out.extend(h.send_raw(e));
    }
    let recs = records(&out);
    let cps = checkpoints(&out);
    assert_eq!(cps.iter().map(|c| c.tree_size).collect::<Vec<_>>(), [3, 6]);
    let signer = CheckpointSigner::from_seed_hex(SEED).expect("seed");
    let public = signer.public_key_hex();
    let keys = VerifyingKeys::parse([public.as_str()]).expect("keys");
    for cp in &cps {
        let leaves: Vec<[u8; 32]> = recs[..cp.tree_size as usize].iter().map(leaf).collect();
        assert_eq!(cp.root_hash, hex_of(&merkle::root(&leaves)));
        assert_eq!(cp.last_hash, recs[cp.tree_size as usize - 1].hash);
        keys.verify(&cp.key_id, &cp.signed_message(), &cp.signature).expect("the signature verifies");
        let mut forged = cp.clone();
        forged.tree_size += 1;
        assert!(keys.verify(&forged.key_id, &forged.signed_message(), &forged.signature).is_err());
        // Every record up to the head is provably included.
        for (i, l) in leaves.iter().enumerate() {
            let proof = merkle::inclusion_proof(&leaves, i as u64).expect("a proof");
            assert!(merkle::verify_inclusion(l, i as u64, cp.tree_size, &proof, &merkle::root(&leaves)));
        }
    }
}

#[test]
fn a_quiet_log_is_checkpointed_when_its_interval_passes() {
    let mut h = harness(1_000);
    h.tick_raw(5_000);
    let e = status(&mut h, "tenant-a", "tr_1", "COMPLETED");
    let first = h.send_raw(e);
    assert!(checkpoints(&first).is_empty());
    assert!(h.tick_raw(14_999).is_empty(), "not before the interval");
    let out = h.tick_raw(15_000);
    let cps = checkpoints(&out);
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].tree_size, 1);
    assert_eq!(cps[0].occurred_at.timestamp_millis(), 15_000);
    // Nothing new: no timer, no checkpoint.
    assert!(h.tick_raw(100_000).is_empty());
}

#[test]
fn a_source_event_is_audited_once_and_other_events_are_passed_over() {
    let mut h = harness(1_000);
    let e = status(&mut h, "tenant-a", "tr_1", "COMPLETED");
    assert_eq!(records(&h.send_raw(e.clone())).len(), 1);
    assert!(h.send_raw(e).is_empty(), "an upstream duplicate is not chained twice");
    let quote = h.envelope("tenant-a", "fx.quote_recorded", 1, serde_json::json!({"quote_id": "q"}));
    assert!(h.send_raw(quote).is_empty());
    let shadow = h.envelope(
        "tenant-a",
        "risk.decision_recorded",
        1,
        serde_json::json!({"transfer_id": "tr_1", "shadow": true, "decision": "approve", "score": 1}),
    );
    assert!(h.send_raw(shadow).is_empty());
    let draft = h.envelope(
        "tenant-a",
        "billing.invoice_recorded",
        1,
        serde_json::json!({"invoice_id": "inv_2026-11", "status": "draft"}),
    );
    assert!(h.send_raw(draft).is_empty());
    let review = h.envelope(
        "tenant-a",
        "risk.decision_recorded",
        1,
        serde_json::json!({"transfer_id": "tr_1", "shadow": false, "decision": "approve", "score": 40, "reviewed_by": "officer-2"}),
    );
    let r = records(&h.send_raw(review));
    assert_eq!(r[0].action, "risk.review_decided");
    assert_eq!(r[0].actor, "user:officer-2");
    assert_eq!(r[0].seq, 2);
}

#[test]
fn actions_are_checked_and_their_ip_is_cut() {
    let mut h = harness(1_000);
    let ok = h.envelope(
        "tenant-a",
        "audit.action_taken",
        1,
        serde_json::json!({"actor": "operator:ops", "action": "api_key.created", "resource_type": "api_key",
            "resource_id": "k1", "ip": "198.51.100.23", "user_agent": "curl/8"}),
    );
    let r = records(&h.send_raw(ok));
    assert_eq!(r[0].ip.as_deref(), Some("198.51.100.0/24"));
    assert_eq!(r[0].user_agent.as_deref(), Some("curl/8"));
    let bad = h.envelope(
        "tenant-a",
        "audit.action_taken",
        1,
        serde_json::json!({"actor": "x", "action": "made.up", "resource_type": "r", "resource_id": "1"}),
    );
    let at = h.at();
    assert!(matches!(h.p.apply(&mut h.s, &at, bad), Verdict::Poison(r) if r.contains("made.up")));
}

#[test]
fn webhook_bodies_never_reach_a_record() {
    let mut h = harness(1_000);
    let e = h.envelope(
        "tenant-a",
        "webhook.received",
        1,
        serde_json::json!({"provider": "kycflow", "provider_event_id": "sha256:ab", "body_bytes": 77,
            "event_type": "kyc.case_approved", "body": {"name": "Zebulon Quixotehaven"}}),
    );
    let out = h.send_raw(e);
    let text = String::from_utf8(out[0].payload.clone()).expect("utf8");
    assert!(!text.contains("Zebulon"), "{text}");
    let r = records(&out);
    assert_eq!((r[0].action.as_str(), r[0].payload_bytes), ("kyc.case_approved", 77));
}

#[test]
fn the_log_count_is_bounded() {
    let mut h = harness(1_000);
    for t in 0..10 {
        let e = status(&mut h, &format!("t{t}"), "tr", "COMPLETED");
        h.send_raw(e);
    }
    let e = status(&mut h, "t10", "tr", "COMPLETED");
    let at = h.at();
    assert!(
        matches!(h.p.apply(&mut h.s, &at, e), Verdict::Poison(r) if r.contains("logs_per_partition_max"))
    );
}

proptest! {
    #[test]
    fn a_replay_gives_the_same_chain(tenants in proptest::collection::vec(0u8..3, 1..40), every in 1u64..6) {
        let run = || {
            let mut h = harness(every);
            let mut out = Vec::new();
            for (i, t) in tenants.iter().enumerate() {
                let e = status(&mut h, &format!("tenant-{t}"), &format!("tr_{i}"), "COMPLETED");
                out.extend(h.send_raw(e));
                if i % 7 == 0 {
                    out.extend(h.tick_raw(i as i64 * 4_000));
                }
            }
            out
        };
        prop_assert_eq!(run(), run());
    }
}
