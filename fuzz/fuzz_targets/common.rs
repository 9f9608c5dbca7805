//! Shared by the webhook targets: one provider definition, one key, and a delivery built from the input.
//! The first byte picks the mode: even → the body is signed correctly (so mapping sees arbitrary signed
//! bodies); odd → headers come from the input as text lines (so header parsing and verification see
//! arbitrary values).
use riverbank_ingest_core::provider::{self, ProviderDef};
use riverbank_ingest_core::schemes::sign::{self, Signer};
use riverbank_ingest_core::schemes::Key;

pub const NOW: i64 = 1_795_332_660;

/// Fuzz `provider` with the key material `keys` gives: (what riverbank is configured with, the signer).
pub fn fuzz(provider: &str, keys: impl FnOnce() -> (String, Signer), data: &[u8]) {
    static SETUP: std::sync::OnceLock<(ProviderDef, Key, Signer)> = std::sync::OnceLock::new();
    let (def, key, signer) = SETUP.get_or_init(|| {
        let (configured, signer) = keys();
        let def =
            provider::load(&[]).expect("built-in definitions").remove(provider).expect("provider exists");
        let key = def.signature.key(&configured).expect("valid key");
        (def, key, signer)
    });
    run(def, key, signer, data);
}

fn run(def: &ProviderDef, key: &Key, signer: &Signer, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let headers: Vec<(String, String)>;
    let body: &[u8];
    if mode % 2 == 0 {
        body = rest;
        headers = sign::headers(&def.signature, signer, "msg_fuzz", NOW, body);
    } else {
        // "name: value" lines, a blank line, then the body.
        let split = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
        let head = String::from_utf8_lossy(&rest[..split]).into_owned();
        body = rest.get(split + 2..).unwrap_or_default();
        headers = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
    }
    let view: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Ok(accepted) = def.accept(std::slice::from_ref(key), &view.as_slice(), body, NOW) {
        // Whatever was accepted has a bounded, non-empty deduplication key.
        assert!(!accepted.mapping.dedupe_key.is_empty());
        assert!(accepted.mapping.dedupe_key.len() <= 3 + 256 + 4);
        if let Ok(m) = &accepted.mapping.result {
            assert!(def.event.types.values().any(|t| t == &m.event_type));
        }
    }
}
