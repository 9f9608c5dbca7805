//! Personal data sealed at the edge (a definition's `[sensitive]`, `riverbank_ingest_core::sensitive`):
//! after the signature is verified and the body mapped, and before anything is produced, every declared
//! value present is replaced in place by its sealed form (`riverbank_crypto::field::seal` of its JSON
//! text) under the subject's data key for its class (`KeyStore::seal_key`), bound to
//! `FieldContext { tenant, environment, subject, field: the concrete JSON pointer, record: the event id }`.
//!
//! - **What is sealed.** The mapped event's body (`WebhookReceived.body`), and a dead letter's stored
//!   form (`raw_base64`): a JSON body with its declared values sealed (re-serialised, so not the bytes
//!   the provider signed), or, for a body that is not JSON, the whole body in chunks under the tenant's
//!   fallback subject, class `pii.document`. `[fields]`, the event id, type, entity key and schema
//!   version never read a declared value (refused at load), so the rest of the event is clear.
//! - **What is not changed.** The deduplication key and the claim's request hash are computed on the
//!   raw body, as before sealing existed: a redelivery is recognised exactly as it was.
//! - **Order.** The data keys are fetched (get-or-create) before the claim, the values sealed once the
//!   claim settles the event id: a claim taken over seals under the id it produces.
//! - **Redrive.** A dead letter's stored form is mapped again (`riverbank dlq redrive`) under the
//!   letter's id (the original event id, which the sealed values are bound to): values sealed at the
//!   edge are kept as they are ([`Pass::Stored`]), a value in clear at a pointer declared since is sealed
//!   then. A letter sealed whole stays unmappable (its body was not JSON to begin with).
//! - **Nothing in clear, ever.** A key store that does not answer is a 503 (nothing produced; the
//!   provider retries); a value that cannot be sealed (over `FIELD_BYTES_MAX`) is a 500, never a clear
//!   copy. Neither the values nor the bodies are logged, at any level.
use std::collections::BTreeMap;

use riverbank_crypto::field::{self, FieldContext};
use riverbank_crypto::keys::{CryptoError, DataClass, Dek};
use riverbank_ingest_core::provider::{Mapping, ProviderDef};
use riverbank_ingest_core::sensitive::{
    self, seal_in_place, Pass, Plan, FALLBACK_SUBJECT, WHOLE_BODY_CHUNK_BYTES, WHOLE_BODY_CLASS,
};
use riverbank_runtime::keystore::{KeyStore, KeyStoreError};
use riverbank_schemas::Environment;

/// A delivery's plan and the data keys it needs.
pub struct Sealer {
    plan: Plan,
    /// Class → (key id, data key) of the plan's subject.
    keys: BTreeMap<DataClass, (String, Dek)>,
}

/// The plan for a delivery: over the mapped body when it maps, else over the raw body (a dead letter).
pub fn plan(def: &ProviderDef, mapping: &Mapping, raw: &[u8], pass: Pass) -> Plan {
    match &mapping.result {
        Ok(m) => Plan::of(&def.sensitive, &def.fields, Some(&m.body), pass),
        Err(_) => {
            let json: Option<serde_json::Value> = serde_json::from_slice(raw).ok();
            Plan::of(&def.sensitive, &def.fields, json.as_ref(), pass)
        }
    }
}

impl Sealer {
    /// Fetch (or create) the data keys `plan` needs for `tenant` in `env`.
    pub async fn prepare(
        store: &KeyStore,
        tenant: &str,
        env: Environment,
        plan: Plan,
    ) -> Result<Sealer, KeyStoreError> {
        let mut keys = BTreeMap::new();
        if let Some((subject, classes)) = plan.keys_needed() {
            for class in classes {
                let key = store.seal_key(tenant, env, subject, class).await?;
                keys.insert(class, key);
            }
        }
        Ok(Sealer { plan, keys })
    }

    /// A sealer with the keys at hand (tests, tools).
    pub fn with_keys(plan: Plan, keys: BTreeMap<DataClass, (String, Dek)>) -> Sealer {
        Sealer { plan, keys }
    }

    /// The mapping with its body sealed, and the raw form a dead letter of it keeps, for the event
    /// `event_id` of `tenant` in `env`. Without anything to seal, both are what they were.
    pub fn seal(
        &self,
        tenant: &str,
        env: Environment,
        event_id: uuid::Uuid,
        mapping: &Mapping,
        raw: &[u8],
    ) -> Result<(Mapping, Vec<u8>), CryptoError> {
        let record = event_id.to_string();
        let key = |class: DataClass| {
            self.keys.get(&class).ok_or(CryptoError::KeyId(format!("no data key fetched for {class}")))
        };
        match &self.plan {
            Plan::Nothing => Ok((mapping.clone(), raw.to_vec())),
            Plan::Fields { subject, sites } => {
                let seal_one = |site: &sensitive::Site, value: &serde_json::Value| {
                    let (key_id, dek) = key(site.class)?;
                    let ctx = FieldContext {
                        tenant,
                        environment: env.as_str(),
                        subject,
                        field: &site.pointer,
                        record: &record,
                    };
                    let text = serde_json::to_vec(value).map_err(|_| CryptoError::Refused)?;
                    field::seal(dek, key_id, &ctx, &text).map(Some)
                };
                let mut sealed = mapping.clone();
                match &mut sealed.result {
                    Ok(m) => {
                        seal_in_place(&mut m.body, sites, seal_one)?;
                        Ok((sealed, raw.to_vec()))
                    }
                    Err(_) => {
                        // A dead letter: its raw body (JSON, or the plan would be another) sealed.
                        let mut json: serde_json::Value =
                            serde_json::from_slice(raw).map_err(|_| CryptoError::Refused)?;
                        seal_in_place(&mut json, sites, seal_one)?;
                        let raw = serde_json::to_vec(&json).map_err(|_| CryptoError::Refused)?;
                        Ok((sealed, raw))
                    }
                }
            }
            Plan::WholeBody => {
                let (key_id, dek) = key(WHOLE_BODY_CLASS)?;
                let mut out = Vec::with_capacity(raw.len() * 4 / 3 + 128);
                for (i, chunk) in raw.chunks(WHOLE_BODY_CHUNK_BYTES).enumerate() {
                    let field = sensitive::whole_body_field(i);
                    let ctx = FieldContext {
                        tenant,
                        environment: env.as_str(),
                        subject: FALLBACK_SUBJECT,
                        field: &field,
                        record: &record,
                    };
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(field::seal(dek, key_id, &ctx, chunk)?.as_bytes());
                }
                Ok((mapping.clone(), out))
            }
        }
    }
}

/// Open a body sealed whole at the edge (the stored form of a dead letter whose body was not JSON),
/// given the tenant's fallback data key for [`WHOLE_BODY_CLASS`]: for an operator's tooling and tests.
pub fn open_whole_body(
    dek: &Dek,
    tenant: &str,
    env: Environment,
    record: uuid::Uuid,
    stored: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let text = std::str::from_utf8(stored).map_err(|_| CryptoError::Refused)?;
    let record = record.to_string();
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let field = sensitive::whole_body_field(i);
        let ctx = FieldContext {
            tenant,
            environment: env.as_str(),
            subject: FALLBACK_SUBJECT,
            field: &field,
            record: &record,
        };
        out.extend(field::open(dek, &ctx, line)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_ingest_core::provider::{self, Unmappable};

    const TENANT: &str = "t1";
    const ENV: Environment = Environment::Live;

    fn kycflow() -> ProviderDef {
        provider::load(&[]).expect("built-ins")["kycflow"].clone()
    }

    fn keys_for(plan: &Plan) -> BTreeMap<DataClass, (String, Dek)> {
        let (subject, classes) = plan.keys_needed().expect("needs keys");
        classes
            .into_iter()
            .map(|c| (c, (field::key_id(subject, c, 1), Dek::generate().expect("dek"))))
            .collect()
    }

    const SEEDED: [&str; 6] = [
        "Zebulon Quixotehaven",
        "QZXPK7731Q",
        "1979-02-29",
        "55501234567890",
        "Quixote Lane",
        "+91 90000 77731",
    ];

    fn body(user: Option<&str>, status: &str) -> Vec<u8> {
        let mut v = serde_json::json!({
            "transactionId": "kf_1", "status": status, "tier": 1, "timestamp": 1795332600123_i64,
            "applicant": {"name": SEEDED[0], "pan": SEEDED[1], "dob": SEEDED[2], "phone": SEEDED[5],
                          "address": {"line1": SEEDED[4], "pincode": "560001"}},
            "documents": [{"type": "pan", "number": SEEDED[1]}, {"type": "selfie"}],
            "bank": {"accountNumber": SEEDED[3], "ifsc": "HDFC0000123"}
        });
        if let Some(u) = user {
            v["userId"] = serde_json::json!(u);
        }
        serde_json::to_vec(&v).expect("json")
    }

    fn assert_clean(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for s in SEEDED {
            assert!(!text.contains(s), "{s} in clear: {text}");
        }
    }

    fn open_at(
        keys: &BTreeMap<DataClass, (String, Dek)>,
        subject: &str,
        pointer: &str,
        record: &str,
        v: &str,
    ) -> Vec<u8> {
        let class = field::parse(v).expect("sealed").class;
        let ctx = FieldContext { tenant: TENANT, environment: "live", subject, field: pointer, record };
        field::open(&keys[&class].1, &ctx, v).expect("opens")
    }

    #[test]
    fn a_mapped_body_holds_every_declared_value_sealed_and_bound_to_its_place() {
        let def = kycflow();
        let none: &[(&str, &str)] = &[];
        let raw = body(Some("usr_77"), "auto_approved");
        let mapping = def.map(&none, &raw);
        let plan = plan(&def, &mapping, &raw, Pass::Edge);
        let keys = keys_for(&plan);
        let sealer = Sealer::with_keys(plan, keys.clone());
        let id = uuid::Uuid::new_v4();
        let (sealed, letter) = sealer.seal(TENANT, ENV, id, &mapping, &raw).expect("seals");
        assert_eq!(letter, raw, "a mapped delivery is no dead letter: the raw form is not used");
        assert_eq!(sealed.dedupe_key, mapping.dedupe_key, "deduplication is on the raw body");
        let m = sealed.result.expect("maps");
        assert_eq!(m.fields, mapping.result.as_ref().expect("maps").fields, "fields stay as they were");
        assert_clean(&serde_json::to_vec(&m.body).expect("json"));
        let rec = id.to_string();
        let name = m.body.pointer("/applicant/name").and_then(|v| v.as_str()).expect("sealed text");
        assert_eq!(open_at(&keys, "usr_77", "/applicant/name", &rec, name), br#""Zebulon Quixotehaven""#);
        let addr = m.body.pointer("/applicant/address").and_then(|v| v.as_str()).expect("sealed text");
        let addr: serde_json::Value =
            serde_json::from_slice(&open_at(&keys, "usr_77", "/applicant/address", &rec, addr))
                .expect("json");
        assert_eq!(addr["line1"], SEEDED[4]);
        let doc = m.body.pointer("/documents/0/number").and_then(|v| v.as_str()).expect("sealed");
        assert_eq!(open_at(&keys, "usr_77", "/documents/0/number", &rec, doc), br#""QZXPK7731Q""#);
        // Bound to its place: another pointer, record or subject does not open it.
        let class = field::parse(name).expect("sealed").class;
        for (subject, pointer, record) in [
            ("usr_77", "/applicant/pan", rec.as_str()),
            ("usr_77", "/applicant/name", "other"),
            ("usr_78", "/applicant/name", rec.as_str()),
        ] {
            let ctx = FieldContext { tenant: TENANT, environment: "live", subject, field: pointer, record };
            assert!(field::open(&keys[&class].1, &ctx, name).is_err(), "{subject} {pointer} {record}");
        }
        assert_eq!(m.body["documents"][1], serde_json::json!({"type": "selfie"}), "undeclared values stay");
        assert_eq!(m.body["bank"]["ifsc"], "HDFC0000123");
    }

    #[test]
    fn a_body_without_its_subject_is_sealed_under_the_tenant_fallback() {
        let def = kycflow();
        let none: &[(&str, &str)] = &[];
        let raw = body(None, "auto_approved");
        let mapping = def.map(&none, &raw);
        let plan = plan(&def, &mapping, &raw, Pass::Edge);
        assert_eq!(plan.keys_needed().map(|k| k.0), Some(FALLBACK_SUBJECT));
        let keys = keys_for(&plan);
        let id = uuid::Uuid::new_v4();
        let (sealed, _) =
            Sealer::with_keys(plan, keys.clone()).seal(TENANT, ENV, id, &mapping, &raw).expect("seals");
        let m = sealed.result.expect("maps");
        assert_clean(&serde_json::to_vec(&m.body).expect("json"));
        let v = m.body.pointer("/bank/accountNumber").and_then(|v| v.as_str()).expect("sealed");
        assert_eq!(
            open_at(&keys, FALLBACK_SUBJECT, "/bank/accountNumber", &id.to_string(), v),
            br#""55501234567890""#
        );
    }

    #[test]
    fn dead_letters_keep_a_sealed_form_that_a_redrive_maps_without_sealing_twice() {
        let def = kycflow();
        let none: &[(&str, &str)] = &[];
        let raw = body(Some("usr_9"), "no_such_status");
        let mapping = def.map(&none, &raw);
        assert!(matches!(mapping.result, Err(Unmappable::UnknownType(_))));
        let plan = plan(&def, &mapping, &raw, Pass::Edge);
        let keys = keys_for(&plan);
        let id = uuid::Uuid::new_v4();
        let (_, stored) =
            Sealer::with_keys(plan, keys.clone()).seal(TENANT, ENV, id, &mapping, &raw).expect("seals");
        assert_clean(&stored);
        // The redrive, after a definition fix, maps the stored form: nothing left to seal.
        let fixed = ProviderDef::parse(
            "kycflow.toml",
            &provider::BUILTIN.iter().find(|(f, _)| *f == "kycflow.toml").expect("kycflow").1.replace(
                "[event.types]\n",
                "[event.types]\n\"no_such_status\" = \"kyc.case_needs_review\"\n",
            ),
        )
        .expect("valid");
        let again = fixed.map(&none, &stored);
        let m = again.result.as_ref().expect("maps now");
        assert_eq!(m.fields["user_id"], "usr_9");
        assert_eq!(plan_of_stored(&fixed, &again, &stored), Plan::Nothing, "already sealed: left as it is");
        let pan = m.body.pointer("/applicant/pan").and_then(|v| v.as_str()).expect("sealed");
        assert_eq!(open_at(&keys, "usr_9", "/applicant/pan", &id.to_string(), pan), br#""QZXPK7731Q""#);
    }

    fn plan_of_stored(def: &ProviderDef, m: &Mapping, raw: &[u8]) -> Plan {
        plan(def, m, raw, Pass::Stored)
    }

    #[test]
    fn a_body_that_is_not_json_is_sealed_whole_in_chunks() {
        let def = kycflow();
        let none: &[(&str, &str)] = &[];
        let mut raw = b"name=Zebulon Quixotehaven&pan=QZXPK7731Q&".to_vec();
        raw.extend(std::iter::repeat_n(b'x', WHOLE_BODY_CHUNK_BYTES + 10));
        let mapping = def.map(&none, &raw);
        let plan = plan(&def, &mapping, &raw, Pass::Edge);
        assert_eq!(plan, Plan::WholeBody);
        let keys = keys_for(&plan);
        let id = uuid::Uuid::new_v4();
        let (_, stored) =
            Sealer::with_keys(plan, keys.clone()).seal(TENANT, ENV, id, &mapping, &raw).expect("seals");
        assert_clean(&stored);
        assert_eq!(stored.iter().filter(|b| **b == b'\n').count(), 1, "two chunks");
        let dek = &keys[&WHOLE_BODY_CLASS].1;
        assert_eq!(open_whole_body(dek, TENANT, ENV, id, &stored).expect("opens"), raw);
        assert!(
            open_whole_body(dek, TENANT, ENV, uuid::Uuid::new_v4(), &stored).is_err(),
            "bound to its record"
        );
        // A provider that declares nothing keeps its raw body.
        let chain = provider::load(&[]).expect("built-ins")["chainwatch"].clone();
        assert_eq!(super::plan(&chain, &chain.map(&none, &raw), &raw, Pass::Edge), Plan::Nothing);
    }
}
