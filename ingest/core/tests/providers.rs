//! Every shipped provider definition against its own fixtures, signed the way the provider signs: valid,
//! wrong secret, rotated secret, tampered body, tampered timestamp, outside tolerance, missing headers,
//! duplicate delivery and replay with a stripped id.
use std::path::PathBuf;

use riverbank_ingest_core::provider::{self, ProviderDef};
use riverbank_ingest_core::schemes::sign::{self, Signer};
use riverbank_ingest_core::schemes::{Key, Scheme, VerifyError};
use riverbank_ingest_core::Headers;

/// 2026-11-22T07:31:00Z, the time the fixtures were "sent".
const NOW: i64 = 1_795_332_660;

fn fixtures(provider: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(provider);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("dir entry").path();
            (p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{provider} has fixtures");
    out
}

/// Key material for seed `n`: what the provider signs with, and what riverbank is configured with.
fn keypair(scheme: &Scheme, n: u8) -> (Signer, Key) {
    use base64::Engine as _;
    let (signer, configured) = match scheme {
        Scheme::StandardWebhooks { .. } => {
            let s = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([n; 24]));
            (Signer::Secret(s.clone()), s)
        }
        Scheme::HmacSha256 { .. } | Scheme::PayloadDigest { .. } => {
            let s = format!("shared-secret-{n:02}-0123456789");
            (Signer::Secret(s.clone()), s)
        }
        Scheme::Ed25519 { .. } => {
            let k = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
            let public = hex::encode(k.verifying_key().to_bytes());
            (Signer::Ed25519(k), public)
        }
    };
    (signer, scheme.key(&configured).expect("valid key"))
}

struct Delivery {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Delivery {
    fn view(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
    fn without(&self, header: &str) -> Delivery {
        Delivery {
            headers: self.headers.iter().filter(|(k, _)| k != header).cloned().collect(),
            body: self.body.clone(),
        }
    }
}

fn deliver(def: &ProviderDef, signer: &Signer, id: &str, at: i64, body: &[u8]) -> Delivery {
    Delivery { headers: sign::headers(&def.signature, signer, id, at, body), body: body.to_vec() }
}

fn accept(
    def: &ProviderDef,
    keys: &[Key],
    d: &Delivery,
    now: i64,
) -> Result<provider::Accepted, VerifyError> {
    let view = d.view();
    def.accept(keys, &view.as_slice(), &d.body, now)
}

fn timestamp_header(scheme: &Scheme) -> Option<&str> {
    match scheme {
        Scheme::StandardWebhooks { .. } => Some("webhook-timestamp"),
        Scheme::Ed25519 { timestamp_header, .. } => Some(timestamp_header),
        _ => None,
    }
}

#[test]
fn every_provider_and_scheme_holds_up() {
    let all = provider::load(&[]).expect("definitions valid");
    for def in all.values() {
        let name = &def.name;
        let (s1, k1) = keypair(&def.signature, 1);
        let (s2, k2) = keypair(&def.signature, 2);
        let (_, k3) = keypair(&def.signature, 3);
        for (file, body) in fixtures(name) {
            let case = format!("{name}/{file}");
            let good = deliver(def, &s1, "msg_1", NOW, &body);

            // Valid, and what it maps to (the fixtures named unknown_* / future_* must dead-letter).
            let ok =
                accept(def, std::slice::from_ref(&k1), &good, NOW).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(ok.key_index, 0, "{case}");
            let expect_mapped = !(file.starts_with("unknown_") || file.starts_with("future_"));
            assert_eq!(ok.mapping.result.is_ok(), expect_mapped, "{case}: {:?}", ok.mapping.result);

            // Wrong secret.
            assert_eq!(
                accept(def, std::slice::from_ref(&k3), &good, NOW).map(|_| ()),
                Err(VerifyError::NoMatch),
                "{case}"
            );

            // Rotated: the provider signs with the new key while both are configured.
            let rotated = deliver(def, &s2, "msg_1", NOW, &body);
            let r = accept(def, &[k1.clone(), k2.clone()], &rotated, NOW).expect("rotated key verifies");
            assert_eq!(r.key_index, 1, "{case}");
            assert_eq!(r.mapping.dedupe_key, ok.mapping.dedupe_key, "{case}: same event, same key");

            // Tampered body: one byte changed (a digit, so the body stays JSON).
            let mut tampered = good.body.clone();
            let at = tampered.iter().position(u8::is_ascii_digit).expect("fixture has a digit");
            tampered[at] = if tampered[at] == b'9' { b'8' } else { tampered[at] + 1 };
            let t = Delivery { headers: good.headers.clone(), body: tampered };
            assert_eq!(
                accept(def, std::slice::from_ref(&k1), &t, NOW).map(|_| ()),
                Err(VerifyError::NoMatch),
                "{case}"
            );

            // Tampered timestamp: the signed timestamp header, or the time inside the signed body.
            match timestamp_header(&def.signature) {
                Some(h) => {
                    let mut t = good.without(h);
                    t.headers.push((h.to_owned(), (NOW + 1).to_string()));
                    assert_eq!(
                        accept(def, std::slice::from_ref(&k1), &t, NOW).map(|_| ()),
                        Err(VerifyError::NoMatch),
                        "{case}"
                    );
                }
                None => {
                    let mut json: serde_json::Value = serde_json::from_slice(&body).expect("fixture JSON");
                    let pointer =
                        def.event.occurred_at.as_ref().and_then(|s| s.pointer.clone()).expect("time pointer");
                    *json.pointer_mut(&pointer).expect("time present") =
                        serde_json::json!("2020-01-01T00:00:00Z");
                    let t = Delivery {
                        headers: good.headers.clone(),
                        body: serde_json::to_vec(&json).expect("json"),
                    };
                    assert_eq!(
                        accept(def, std::slice::from_ref(&k1), &t, NOW).map(|_| ()),
                        Err(VerifyError::NoMatch),
                        "{case}"
                    );
                }
            }

            // Outside tolerance: 301 s late, against a 300 s window where the definition has one.
            let late = match timestamp_header(&def.signature) {
                Some(_) => {
                    accept(def, std::slice::from_ref(&k1), &deliver(def, &s1, "msg_1", NOW - 301, &body), NOW)
                }
                None => accept(def, std::slice::from_ref(&k1), &good, NOW + 301 + 600),
            };
            let has_window =
                timestamp_header(&def.signature).is_some() || def.signature.body_time_tolerance_s().is_some();
            if has_window && expect_mapped {
                assert!(matches!(late, Err(VerifyError::OutsideTolerance(_, 300))), "{case}: {late:?}");
            } else if !has_window {
                assert!(late.is_ok(), "{case}: no window declared, late deliveries are deduplicated instead");
            }

            // Missing headers, each in turn.
            for h in def.signature.required_headers() {
                let d = good.without(h);
                assert_eq!(
                    accept(def, std::slice::from_ref(&k1), &d, NOW).map(|_| ()),
                    Err(VerifyError::MissingHeader(h.to_owned())),
                    "{case} without {h}"
                );
            }

            // Duplicate delivery (re-signed later, as providers retry): the same deduplication key.
            let again = deliver(def, &s1, "msg_1", NOW + 5, &body);
            let dup = accept(def, std::slice::from_ref(&k1), &again, NOW + 5).expect("redelivery verifies");
            assert_eq!(dup.mapping.dedupe_key, ok.mapping.dedupe_key, "{case}");

            // Replay with the id stripped: refused where the id is signed; where there is no id, the body
            // hash still recognises it.
            match def.event.id.as_ref() {
                Some(src) if src.header.is_some() => {
                    let h = src.header.as_deref().expect("header");
                    let d = good.without(h);
                    assert_eq!(
                        accept(def, std::slice::from_ref(&k1), &d, NOW).map(|_| ()),
                        Err(VerifyError::MissingHeader(h.to_owned())),
                        "{case}"
                    );
                }
                Some(src) => {
                    let mut json: serde_json::Value = serde_json::from_slice(&body).expect("fixture JSON");
                    let pointer = src.pointer.as_deref().expect("pointer");
                    let (parent, leaf) = pointer.rsplit_once('/').expect("pointer");
                    let obj = if parent.is_empty() { Some(&mut json) } else { json.pointer_mut(parent) };
                    obj.and_then(|o| o.as_object_mut()).expect("object").remove(leaf);
                    let d = Delivery {
                        headers: good.headers.clone(),
                        body: serde_json::to_vec(&json).expect("json"),
                    };
                    assert_eq!(
                        accept(def, std::slice::from_ref(&k1), &d, NOW).map(|_| ()),
                        Err(VerifyError::NoMatch),
                        "{case}"
                    );
                }
                None => {
                    assert!(ok.mapping.dedupe_key.starts_with("sha256:"), "{case}");
                    let replay = deliver(def, &s1, "other-delivery", NOW + 60, &body);
                    let r = accept(def, std::slice::from_ref(&k1), &replay, NOW + 60).expect("verifies");
                    assert_eq!(r.mapping.dedupe_key, ok.mapping.dedupe_key, "{case}");
                }
            }
        }
    }
}

#[test]
fn provider_secrets_are_checked_per_scheme() {
    let all = provider::load(&[]).expect("definitions valid");
    assert!(all["acmepay"].signature.key("not-a-whsec").is_err());
    assert!(all["kycflow"].signature.key("short").is_err());
    assert!(all["chainwatch"].signature.key("00").is_err());
    assert!(all["chainwatch"].signature.key(&"zz".repeat(32)).is_err());
}

#[test]
fn sha1_digests_are_refused() {
    let def = &provider::load(&[]).expect("valid")["idcheck"];
    let (s1, k1) = keypair(&def.signature, 1);
    let (_, body) = fixtures("idcheck").remove(0);
    let mut d = deliver(def, &s1, "x", NOW, &body);
    d = d.without("x-payload-digest-alg");
    d.headers.push(("x-payload-digest-alg".into(), "HMAC_SHA1_HEX".into()));
    assert_eq!(accept(def, &[k1], &d, NOW).map(|_| ()), Err(VerifyError::UnsupportedAlgorithm));
    let view: &[(&str, &str)] = &[];
    assert_eq!(Headers::get(&view, "x"), None);
}

/// Field name → value, as a table row.
type Fields = &'static [(&'static str, &'static str)];

/// What each shipped fixture's `[fields]` give: the names the processors read (KYC: user_id, case_id,
/// tier, level, reason; transfers: reference, amount, currency, …). Every mapped fixture is listed.
#[test]
fn every_fixture_yields_the_declared_fields() {
    let expected: &[(&str, &str, Fields)] = &[
        (
            "acmepay",
            "deposit_completed.json",
            &[
                ("amount", "250.00"),
                ("currency", "USDC"),
                ("destination_account", "acct_7Hq2"),
                ("reference", "dep_01JD8Q4Z7K2M"),
            ],
        ),
        (
            "acmepay",
            "deposit_received.json",
            &[
                ("amount", "75.25"),
                ("currency", "USD"),
                ("destination_account", "acct_7Hq2"),
                ("reference", "dep_01JD8R7Q1N4C"),
                ("user_id", "usr_8f3a1c"),
            ],
        ),
        (
            "acmepay",
            "payout_failed.json",
            &[
                ("amount", "1200.50"),
                ("currency", "USD"),
                ("failure_code", "account_closed"),
                ("reference", "po_01JD8QB1X9TA"),
            ],
        ),
        (
            "cardnet",
            "authorization.json",
            &[
                ("amount", "42.10"),
                ("authorization_id", "auth_0b4f5e6a-1c2d-4e3f-9a8b-7c6d5e4f3a2b"),
                ("currency", "USD"),
                ("user_id", "usr_5e2a11"),
            ],
        ),
        (
            "cardnet",
            "authorization_declined.json",
            &[
                ("amount", "9800.00"),
                ("authorization_id", "auth_6f5e4d3c-2b1a-4c9d-8e7f-6a5b4c3d2e1f"),
                ("currency", "USD"),
                ("response_code", "1016"),
                ("user_id", "usr_5e2a11"),
            ],
        ),
        (
            "chainwatch",
            "transfer_confirmed.json",
            &[
                ("amount", "1500.000000"),
                ("chain", "polygon"),
                ("currency", "USDC"),
                ("reference", "0x9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"),
            ],
        ),
        (
            "chainwatch",
            "transfer_dropped.json",
            &[
                ("amount", "20.000000"),
                ("chain", "ethereum"),
                ("currency", "USDT"),
                ("failure_code", "replaced_by_fee"),
                ("reference", "0x1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"),
            ],
        ),
        (
            "idcheck",
            "applicant_approved.json",
            &[
                ("case_id", "5cb56e8e0a975a35f333cb83"),
                ("level", "basic-kyc-level"),
                ("tier", "1"),
                ("user_id", "usr_8f3a1c"),
            ],
        ),
        (
            "idcheck",
            "applicant_on_hold.json",
            &[
                ("case_id", "5cb744200a975a67ed1798a9"),
                ("level", "enhanced-kyc-level"),
                ("tier", "2"),
                ("user_id", "usr_c01d44"),
            ],
        ),
        (
            "idcheck",
            "applicant_rejected.json",
            &[
                ("case_id", "5cb744200a975a67ed1798a4"),
                ("level", "basic-kyc-level"),
                ("reason", "FINAL"),
                ("tier", "1"),
                ("user_id", "usr_2b9e70"),
            ],
        ),
        (
            "idcheck",
            "level_reached.json",
            &[
                ("case_id", "5cb56e8e0a975a35f333cb83"),
                ("level", "tier-2-address"),
                ("tier", "2"),
                ("user_id", "usr_8f3a1c"),
            ],
        ),
        (
            "kycflow",
            "auto_approved.json",
            &[("case_id", "kf_txn_4f1a9c2e"), ("tier", "1"), ("user_id", "usr_5e2a11")],
        ),
        (
            "kycflow",
            "needs_review.json",
            &[
                ("case_id", "kf_txn_77c0de31"),
                ("reason", "face_match_low"),
                ("tier", "0"),
                ("user_id", "usr_0aa9f2"),
            ],
        ),
        (
            "kycflow",
            "tier_upgraded.json",
            &[("case_id", "kf_txn_4f1a9c2e"), ("tier", "3"), ("user_id", "usr_5e2a11")],
        ),
        (
            "ratewire",
            "rate_updated.json",
            &[("as_of", "2026-11-22T07:30:00Z"), ("base", "EUR"), ("quote", "USD"), ("rate", "1.084500")],
        ),
        (
            "ratewire",
            "rate_updated_jpy.json",
            &[
                ("as_of", "2026-11-22T07:30:30.250Z"),
                ("base", "USD"),
                ("quote", "JPY"),
                ("rate", "151.230000"),
            ],
        ),
    ];
    let all = provider::load(&[]).expect("definitions valid");
    let mut checked = 0;
    for def in all.values() {
        for (file, body) in fixtures(&def.name) {
            let none: &[(&str, &str)] = &[];
            let Ok(mapped) = def.map(&none, &body).result else { continue };
            let want = expected
                .iter()
                .find(|(p, f, _)| *p == def.name && *f == file)
                .unwrap_or_else(|| panic!("{}/{file} maps but has no expected fields here", def.name));
            let want: std::collections::BTreeMap<String, String> =
                want.2.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            assert_eq!(mapped.fields, want, "{}/{file}", def.name);
            assert!(mapped.field_problems.is_empty(), "{}/{file}: {:?}", def.name, mapped.field_problems);
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len(), "every listed fixture exists and maps");
}

const BASE: &str = r#"
name = "p"
[signature]
scheme = "hmac_sha256"
header = "x-signature"
encoding = "hex"
[event]
id = { pointer = "/id" }
type = { pointer = "/type" }
entity_key = { pointer = "/case/id" }
occurred_at = { pointer = "/at", format = "unix_s" }
[event.types]
"case.ok" = "kyc.case_approved"
"#;

fn def(text: &str) -> Result<ProviderDef, provider::DefinitionError> {
    ProviderDef::parse("test.toml", text)
}

const WITH_FIELDS: &str = r#"
[fields]
user_id = { pointer = "/user/id" }
tier = [
  { pointer = "/tier" },
  { pointer = "/level", map = { "basic" = "1", "full" = "3" } },
]
flag = { pointer = "/flag" }
amount = { pointer = "/amount" }
"#;

#[test]
fn fields_take_values_from_the_body_in_source_order_with_maps() {
    let d = def(&format!("{BASE}{WITH_FIELDS}")).expect("valid");
    let none: &[(&str, &str)] = &[];
    let body = |rest: &str| format!(r#"{{"id":"e","type":"case.ok","case":{{"id":"c"}},"at":1{rest}}}"#);
    let fields = |rest: &str| {
        let m = d.map(&none, body(rest).as_bytes()).result.expect("maps");
        (m.fields.into_iter().collect::<Vec<_>>(), m.field_problems.into_keys().collect::<Vec<_>>())
    };
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    // The first source with a value wins; a mapped value is translated.
    assert_eq!(fields(r#","tier":2,"level":"full""#).0, kv(&[("tier", "2")]));
    assert_eq!(fields(r#","level":"full""#).0, kv(&[("tier", "3")]));
    assert_eq!(fields(r#","tier":null,"level":"basic""#).0, kv(&[("tier", "1")]));
    // A value the map does not list is no value.
    assert_eq!(fields(r#","level":"gold""#), (vec![], vec![]));
    // Strings kept; numbers and booleans as JSON text.
    assert_eq!(
        fields(r#","user":{"id":"u_1"},"flag":true,"amount":250.5"#).0,
        kv(&[("amount", "250.5"), ("flag", "true"), ("user_id", "u_1")])
    );
    // Objects, arrays, empty and over-long values are absent; the unusable ones say why.
    let long = "x".repeat(provider::FIELD_BYTES_MAX + 1);
    assert_eq!(
        fields(&format!(r#","user":{{"id":{{"a":1}}}},"flag":[1],"amount":"","tier":"{long}""#)),
        (vec![], vec!["flag".to_owned(), "tier".to_owned(), "user_id".to_owned()])
    );
    let at_max = "x".repeat(provider::FIELD_BYTES_MAX);
    assert_eq!(fields(&format!(r#","user":{{"id":"{at_max}"}}"#)).0, kv(&[("user_id", &at_max)]));
    // A later source still gives the value after an unusable earlier one.
    assert_eq!(fields(r#","tier":{"x":1},"level":"basic""#), (kv(&[("tier", "1")]), vec![]));
}

#[test]
fn invalid_fields_are_refused_at_load_with_the_reason() {
    let with = |fields: &str| format!("{BASE}\n[fields]\n{fields}\n");
    let cases = [
        ("user_id = { pointer = \"user\" }", "fields.user_id[0].pointer 'user' must start with '/'"),
        ("User = { pointer = \"/u\" }", "fields.User: a field name"),
        ("u = { pointer = \"/u\", header = \"x\" }", "unknown field"),
        ("u = []", "fields.u needs 1-8 sources"),
        ("u = { pointer = \"/u\", map = {} }", "fields.u[0].map needs 1-64 entries"),
        ("u = { pointer = \"/u\", map = { \"a\" = \"\" } }", "values are 1-256 bytes"),
        ("who = { pointer = \"/applicant/firstName\" }", "reads 'firstName': personal data"),
        ("who = [{ pointer = \"/id\" }, { pointer = \"/info/date_of_birth\" }]", "fields.who[1].pointer"),
        ("doc = { pointer = \"/idDocs/0/number\" }", "personal data"),
        (
            "card = { pointer = \"/card_token\" }",
            "reads 'card_token': personal data or sensitive financial data",
        ),
        ("u = \"/u\"", "a source"),
    ];
    for (fields, want) in cases {
        let e = def(&with(fields)).expect_err(want);
        assert!(e.to_string().contains(want), "{e} should mention {want}");
    }
    let many: String =
        (0..=provider::fields::FIELDS_MAX).map(|i| format!("f{i} = {{ pointer = \"/f{i}\" }}\n")).collect();
    assert!(def(&with(&many)).expect_err("too many").to_string().contains("at most 32"));
    def(&with("level = { pointer = \"/levelName\" }")).expect("a level name is a code, not a person's name");
}

/// What each shipped fixture means for a transfer: acmepay's deposit/payout and chainwatch's chain
/// events are callbacks with typed values; KYC and card deliveries are none.
#[test]
fn every_fixture_resolves_its_transfer_callback() {
    use riverbank_schemas::transfers::{CallbackStatus as C, TransferCallback, TransferKind as K};
    use riverbank_schemas::{Currency, Money};
    let money = |minor: i64, code: &str| Some(Money::new(minor, Currency::from_code(code).expect("known")));
    let cb = |status,
              kind,
              creates,
              reference: &str,
              amount,
              dst: Option<&str>,
              user: Option<&str>,
              reason: Option<&str>| {
        Some(TransferCallback {
            status,
            kind,
            creates_deposit: creates,
            reference: Some(reference.to_owned()),
            amount,
            destination_account: dst.map(str::to_owned),
            user_id: user.map(str::to_owned),
            reason: reason.map(str::to_owned),
            problems: vec![],
        })
    };
    let all = provider::load(&[]).expect("definitions valid");
    let none: &[(&str, &str)] = &[];
    let resolved = |p: &str, file: &str| {
        let body = fixtures(p).into_iter().find(|(f, _)| f == file).expect("fixture").1;
        all[p].map(&none, &body).result.expect("maps").transfer_callback
    };
    assert_eq!(
        resolved("acmepay", "deposit_completed.json"),
        cb(
            C::Completed,
            Some(K::Deposit),
            false,
            "dep_01JD8Q4Z7K2M",
            money(250_000_000, "USDC"),
            Some("acct_7Hq2"),
            None,
            None
        )
    );
    assert_eq!(
        resolved("acmepay", "deposit_received.json"),
        cb(
            C::Received,
            Some(K::Deposit),
            true,
            "dep_01JD8R7Q1N4C",
            money(7_525, "USD"),
            Some("acct_7Hq2"),
            Some("usr_8f3a1c"),
            None
        )
    );
    assert_eq!(
        resolved("acmepay", "payout_failed.json"),
        cb(
            C::Failed,
            Some(K::Payout),
            false,
            "po_01JD8QB1X9TA",
            money(120_050, "USD"),
            None,
            None,
            Some("account_closed")
        )
    );
    assert_eq!(
        resolved("chainwatch", "transfer_confirmed.json"),
        cb(
            C::Confirming,
            None,
            false,
            "0x9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d",
            money(1_500_000_000, "USDC"),
            None,
            None,
            None
        )
    );
    assert_eq!(
        resolved("chainwatch", "transfer_dropped.json"),
        cb(
            C::Failed,
            None,
            false,
            "0x1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809",
            money(20_000_000, "USDT"),
            None,
            None,
            Some("replaced_by_fee")
        )
    );
    for (p, file) in [
        ("idcheck", "applicant_approved.json"),
        ("kycflow", "needs_review.json"),
        ("cardnet", "authorization.json"),
    ] {
        assert_eq!(resolved(p, file), None, "{p}/{file} is no transfer callback");
    }
}

const WITH_CALLBACKS: &str = r#"
[event.types]
"dep.in" = "deposit.received"
"dep.ok" = "deposit.completed"
"po.in" = "payout.received"

[fields]
reference = { pointer = "/ref" }
amount = { pointer = "/amount" }
currency = { pointer = "/currency" }
account = { pointer = "/account" }
code = { pointer = "/code" }

[transfers]
reference = "reference"
amount = "amount"
currency = "currency"
destination_account = "account"
reason = "code"

[transfers.callbacks]
"deposit.received" = { status = "received", kind = "deposit", creates_deposit = true }
"deposit.completed" = { status = "completed", kind = "deposit" }
"payout.received" = { status = "received" }
"#;

/// BASE with its event types replaced by `extra`'s (TOML refuses a table declared twice).
fn with_callbacks(extra: &str) -> String {
    let base = BASE.replace("[event.types]\n\"case.ok\" = \"kyc.case_approved\"\n", "");
    format!("{base}{extra}")
}

#[test]
fn unresolvable_callbacks_still_map_and_say_why() {
    let d = def(&with_callbacks(WITH_CALLBACKS)).expect("valid");
    let none: &[(&str, &str)] = &[];
    let problems = |type_: &str, rest: &str| {
        let body = format!(r#"{{"id":"e","type":"{type_}","case":{{"id":"c"}},"at":1{rest}}}"#);
        let m = d.map(&none, body.as_bytes()).result.expect("an authentic delivery always maps");
        m.transfer_callback.expect("a callback").problems
    };
    let ok = r#","ref":"r1","amount":"12.34","currency":"USD","account":"acct_1""#;
    assert_eq!(problems("dep.in", ok), Vec::<String>::new());
    // A number amount is its JSON text.
    assert_eq!(problems("dep.ok", r#","ref":"r1","amount":12.5,"currency":"USD""#), Vec::<String>::new());
    let cases: &[(&str, &str, &str)] = &[
        ("dep.ok", r#","amount":"1.00","currency":"USD""#, "reference is missing (field 'reference': /ref)"),
        ("dep.ok", r#","ref":"r1","amount":"12.345","currency":"USD""#, "USD has 2 decimal places"),
        ("dep.ok", r#","ref":"r1","amount":"12","currency":"XYZ""#, "currency: unknown currency 'XYZ'"),
        ("dep.ok", r#","ref":"r1","amount":"-3","currency":"USD""#, "not greater than zero"),
        ("dep.ok", r#","ref":"r1","amount":"1e3","currency":"USD""#, "'1e3' is not a decimal amount"),
        (
            "dep.ok",
            r#","ref":"r1","amount":"10000000000000.01","currency":"USD""#,
            "above the largest amount",
        ),
        ("dep.ok", r#","ref":"r1","amount":{"v":1},"currency":"USD""#, "amount: /amount is not a string"),
        ("dep.ok", r#","ref":"r1","currency":"USD""#, "amount is missing (field 'amount': /amount)"),
        ("dep.in", r#","ref":"r1","amount":"1","currency":"USD""#, "destination_account is missing"),
    ];
    for (type_, rest, want) in cases {
        let p = problems(type_, rest);
        assert!(p.iter().any(|w| w.contains(want)), "{type_} {rest}: {p:?} should mention {want}");
    }
    // Only a creating callback needs the destination account.
    assert_eq!(problems("po.in", r#","ref":"r1","amount":"1","currency":"USD""#), Vec::<String>::new());
    let long = "r".repeat(provider::FIELD_BYTES_MAX + 1);
    let p = problems("dep.ok", &format!(r#","ref":"{long}","amount":"1","currency":"USD""#));
    assert!(p.iter().any(|w| w.starts_with("reference: /ref must be at most 256 bytes")), "{p:?}");
}

#[test]
fn invalid_transfer_callbacks_are_refused_at_load_with_the_reason() {
    let cases = [
        (
            WITH_CALLBACKS.replace("reference = \"reference\"\namount", "reference = \"ref\"\namount"),
            "transfers.reference names field 'ref'",
        ),
        (
            WITH_CALLBACKS.replace("currency = \"currency\"\ndestination", "destination"),
            "amount and transfers.currency go together",
        ),
        (
            WITH_CALLBACKS.replace("\"payout.received\" = { status", "\"payout.completed\" = { status"),
            "no provider type maps to 'payout.completed'",
        ),
        (
            WITH_CALLBACKS.replace(
                "status = \"received\", kind = \"deposit\", creates",
                "status = \"completed\", kind = \"deposit\", creates",
            ),
            "only a 'received' callback may create",
        ),
        (
            WITH_CALLBACKS.replace("kind = \"deposit\", creates", "kind = \"payout\", creates"),
            "creates_deposit needs kind = \"deposit\"",
        ),
        (WITH_CALLBACKS.replace("destination_account = \"account\"\n", ""), "a created deposit needs"),
        (WITH_CALLBACKS.replace("status = \"received\" }", "status = \"settled\" }"), "unknown variant"),
        (WITH_CALLBACKS.replace("reason = \"code\"", "reason = \"code\"\nlimit = 3"), "unknown field"),
        (
            WITH_CALLBACKS.split("[transfers.callbacks]").next().expect("head").to_owned()
                + "[transfers.callbacks]\n",
            "declares no callback",
        ),
    ];
    for (text, want) in cases {
        let e = def(&with_callbacks(&text)).expect_err(want);
        assert!(e.to_string().contains(want), "{e} should mention {want}");
    }
}
