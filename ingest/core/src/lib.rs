//! The pure part of the edge, with no I/O: signature schemes, declared provider adapters and the
//! decoding and validation of tenant API commands. The server (`riverbank-ingest`), the CLI's dead-letter
//! redrive and the fuzz targets all call into this one implementation.
#![forbid(unsafe_code)]

pub mod commands;
pub mod event_time;
pub mod provider;
/// A definition's `[sensitive]` (the module lives beside the provider definitions it belongs to).
pub use provider::sensitive;
pub mod schemes;
pub mod standard_webhooks;
pub mod verify;

/// Request headers by lower-case name.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for &[(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

impl Headers for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, name).map(String::as_str)
    }
}
