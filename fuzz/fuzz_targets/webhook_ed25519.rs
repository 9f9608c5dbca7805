#![no_main]
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::schemes::sign::Signer;
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    static SETUP: OnceLock<(riverbank_ingest_core::provider::ProviderDef, riverbank_ingest_core::schemes::Key, Signer)> =
        OnceLock::new();
    let (def, key, signer) = SETUP.get_or_init(|| {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public: String = signing.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        common::setup("chainwatch", &public, Signer::Ed25519(signing))
    });
    common::run(def, key, signer, data);
});
