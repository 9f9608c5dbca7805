#![no_main]
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::schemes::sign::Signer;
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fuzz_target!(|data: &[u8]| {
    static SETUP: OnceLock<(riverbank_ingest_core::provider::ProviderDef, riverbank_ingest_core::schemes::Key, Signer)> =
        OnceLock::new();
    let (def, key, signer) = SETUP.get_or_init(|| common::setup("acmepay", SECRET, Signer::Secret(SECRET.into())));
    common::run(def, key, signer, data);
});
