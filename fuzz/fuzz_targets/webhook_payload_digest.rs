#![no_main]
use libfuzzer_sys::fuzz_target;
use riverbank_ingest_core::schemes::sign::Signer;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::fuzz(
    "idcheck",
    || ("shared-secret-for-fuzzing-0001".into(), Signer::Secret("shared-secret-for-fuzzing-0001".into())),
    data
));
