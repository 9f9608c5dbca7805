#![no_main]
//! Command decoding: the first byte picks the endpoint, the second a path id (well formed or not), the
//! rest is the body. Whatever decodes must satisfy the rules it was validated against.
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::commands::{decode, Endpoint, Stream};

const PATHS: &[Option<&str>] =
    &[None, Some("tr_1"), Some("payout"), Some("bad id!"), Some(""), Some("usr_1")];

fuzz_target!(|data: &[u8]| {
    let [e, p, body @ ..] = data else { return };
    let endpoint = Endpoint::ALL[usize::from(*e) % Endpoint::ALL.len()];
    let path = PATHS[usize::from(*p) % PATHS.len()];
    if let Ok(cmd) = decode(endpoint, path, body, "key:fuzz") {
        assert!(!cmd.entity_key.is_empty() && cmd.entity_key.len() <= 64);
        if cmd.event_type == "transfer.requested" {
            assert_eq!(cmd.stream, Stream::Transfers);
            let minor = cmd.payload["amount"]["amount_minor"].as_i64().expect("amount");
            assert!(minor > 0, "accepted a non-positive amount");
        }
    }
});
