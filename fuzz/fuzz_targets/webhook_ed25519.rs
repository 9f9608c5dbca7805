#![no_main]
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::schemes::sign::Signer;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::fuzz(
        "chainwatch",
        || {
            let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            let public: String =
                signing.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            (public, Signer::Ed25519(signing))
        },
        data,
    )
});
