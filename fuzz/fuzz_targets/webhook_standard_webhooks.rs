#![no_main]
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::schemes::sign::Signer;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::fuzz(
    "acmepay",
    || (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        Signer::Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
    ),
    data
));
