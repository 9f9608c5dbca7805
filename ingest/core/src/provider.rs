//! Declared provider adapters. A provider is a data file (TOML), not code: its signature scheme, where its
//! event id, type, time, entity key and schema version live (a header the signature covers, or a JSON
//! pointer into the signed body), and how its event types map to riverbank's. Definitions are validated
//! as a whole at start-up; adding a provider that signs with a known scheme needs no Rust code.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::event_time;
use crate::schemes::{Key, Scheme};
use crate::verify::{within_tolerance, VerifyError};
use crate::Headers;

pub mod callbacks;
pub mod fields;
pub mod sensitive;

use sensitive::Sensitive;

pub use callbacks::{CallbackSpec, TransfersSpec};
pub use fields::{FieldSource, FieldSpec};

/// Longest id, type, entity key or schema version taken from a delivery, in bytes.
pub const FIELD_BYTES_MAX: usize = 256;

/// The definitions shipped with riverbank (`ingest/providers/*.toml`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("acmepay.toml", include_str!("../../providers/acmepay.toml")),
    ("idcheck.toml", include_str!("../../providers/idcheck.toml")),
    ("kycflow.toml", include_str!("../../providers/kycflow.toml")),
    ("cardnet.toml", include_str!("../../providers/cardnet.toml")),
    ("chainwatch.toml", include_str!("../../providers/chainwatch.toml")),
    ("ratewire.toml", include_str!("../../providers/ratewire.toml")),
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDef {
    /// Route name: `/v1/webhooks/{name}`. 1–32 of `a-z 0-9 _ -`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub signature: Scheme,
    pub event: EventSpec,
    /// Named values taken from the verified body into `WebhookReceived.fields` (see [`fields`]): ids,
    /// codes and amounts, never personal data.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// Which mapped types are transfer status callbacks, and where their values are (see
    /// [`callbacks`]): resolved here into `WebhookReceived.transfer_callback`.
    #[serde(default)]
    pub transfers: Option<TransfersSpec>,
    /// Where the body carries personal or sensitive financial data, and its class (see
    /// [`sensitive`]): sealed at the edge before anything is produced.
    #[serde(default)]
    pub sensitive: Sensitive,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// The provider's event id, the deduplication key. Absent (or absent from a delivery): a hash of the
    /// raw body is used instead.
    #[serde(default)]
    pub id: Option<Source>,
    /// The provider's event type, looked up in `types`.
    #[serde(rename = "type")]
    pub event_type: Source,
    #[serde(default)]
    pub occurred_at: Option<Source>,
    /// The entity whose events must stay in order (a case, a deposit, a card, a chain transfer): the
    /// partitioning key.
    #[serde(default)]
    pub entity_key: Option<Source>,
    #[serde(default)]
    pub schema_version: Option<Source>,
    /// Versions this definition understands; a delivery naming another is dead-lettered.
    #[serde(default)]
    pub schema_versions: Vec<String>,
    /// Provider event type → riverbank event type. A type not listed is dead-lettered.
    pub types: BTreeMap<String, String>,
}

/// Where a value lives: exactly one of `header` (lower case, covered by the signature) or `pointer`
/// (RFC 6901 JSON pointer into the body). `format` is for times only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub format: Option<TimeFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    Rfc3339,
    UnixS,
    UnixMs,
}

impl TimeFormat {
    pub fn name(self) -> &'static str {
        match self {
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::UnixS => "unix_s",
            TimeFormat::UnixMs => "unix_ms",
        }
    }
}

impl Source {
    /// Where the value is read from, as a sender sees it: the JSON pointer or the header name.
    pub fn name(&self) -> &str {
        self.pointer.as_deref().or(self.header.as_deref()).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider definition {file}: {message}")]
pub struct DefinitionError {
    pub file: String,
    pub message: String,
}

impl ProviderDef {
    /// Parse and validate one definition file.
    pub fn parse(file: &str, text: &str) -> Result<ProviderDef, DefinitionError> {
        let err = |message: String| DefinitionError { file: file.to_owned(), message };
        let def: ProviderDef = toml::from_str(text).map_err(|e| err(e.message().to_owned()))?;
        def.validate().map_err(err)?;
        Ok(def)
    }

    fn validate(&self) -> Result<(), String> {
        if !is_name(&self.name) {
            return Err(format!("name '{}' must be 1-32 of a-z, 0-9, '_', '-'", self.name));
        }
        let signed = self.signature.signed_headers();
        let e = &self.event;
        let fields = [
            ("event.id", e.id.as_ref()),
            ("event.type", Some(&e.event_type)),
            ("event.occurred_at", e.occurred_at.as_ref()),
            ("event.entity_key", e.entity_key.as_ref()),
            ("event.schema_version", e.schema_version.as_ref()),
        ];
        for (field, source) in fields {
            let Some(s) = source else { continue };
            match (&s.header, &s.pointer) {
                (Some(h), None) => {
                    if !signed.contains(&h.as_str()) {
                        return Err(format!(
                            "{field} reads header '{h}', which the {} signature does not cover; \
                             use a JSON pointer into the signed body",
                            self.signature.name()
                        ));
                    }
                }
                (None, Some(p)) => {
                    if !p.starts_with('/') {
                        return Err(format!("{field}.pointer '{p}' must start with '/'"));
                    }
                }
                _ => return Err(format!("{field} needs exactly one of 'header' or 'pointer'")),
            }
            let wants_format = field == "event.occurred_at";
            if wants_format != s.format.is_some() {
                return Err(if wants_format {
                    format!("{field} needs a format: rfc3339, unix_s or unix_ms")
                } else {
                    format!("{field}: 'format' is only for event.occurred_at")
                });
            }
        }
        if self.signature.body_time_tolerance_s().is_some() && e.occurred_at.is_none() {
            return Err("signature.tolerance_s checks event.occurred_at, which is not declared".to_owned());
        }
        if e.schema_version.is_some() == e.schema_versions.is_empty() {
            return Err("event.schema_version and event.schema_versions go together".to_owned());
        }
        if e.types.is_empty() {
            return Err("event.types maps no provider type".to_owned());
        }
        for (from, to) in &e.types {
            if from.is_empty() || from.len() > FIELD_BYTES_MAX {
                return Err(format!("event.types: provider type '{from}' must be 1-256 bytes"));
            }
            if !is_event_type(to) {
                return Err(format!(
                    "event.types.'{from}' = '{to}': riverbank types are dotted lower case, e.g. kyc.case_approved"
                ));
            }
        }
        fields::validate(&self.fields)?;
        let reads: Vec<(String, String)> = fields
            .iter()
            .filter_map(|(at, s)| Some(((*at).to_owned(), s.as_ref()?.pointer.clone()?)))
            .collect();
        self.sensitive.validate(&self.fields, &reads)?;
        if let Some(t) = &self.transfers {
            let mapped: std::collections::BTreeSet<&str> = e.types.values().map(String::as_str).collect();
            t.validate(&self.fields, &mapped)?;
        }
        Ok(())
    }

    /// Verify a delivery against any of `keys`, map it, and hold a body-signed event time to the
    /// scheme's tolerance. An authentic delivery that cannot be mapped is still `Ok` (its mapping says
    /// why): it is dead-lettered, not refused.
    pub fn accept(
        &self,
        keys: &[Key],
        headers: &dyn Headers,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, VerifyError> {
        let verified = self.signature.verify(keys, headers, body, now)?;
        let mut mapping = self.map(headers, body);
        if let (Some(tolerance_s), Ok(m)) = (self.signature.body_time_tolerance_s(), &mapping.result) {
            if let Some(t) = m.occurred_at {
                within_tolerance(t.timestamp(), now, tolerance_s)?;
            }
        }
        // A signed header time is never the event time (a per-attempt value; ingest stamps the first
        // claim's time), but one outside the range is refused all the same (a definition's tolerance
        // is no bound on it by itself).
        if let (Some(t), Some(header), Ok(_)) =
            (verified.signed_timestamp, self.signature.timestamp_header(), &mapping.result)
        {
            if !event_time::unix_s_in_range(t) {
                mapping.result = Err(Unmappable::EventTime {
                    field: header.to_owned(),
                    rule: "range",
                    why: out_of_range(),
                });
            }
        }
        Ok(Accepted { key_index: verified.key_index, signed_timestamp: verified.signed_timestamp, mapping })
    }

    /// The signed headers of a delivery (what a redrive of its dead letter needs to map it again).
    pub fn signed_header_values(&self, headers: &dyn Headers) -> BTreeMap<String, String> {
        self.signature
            .signed_headers()
            .into_iter()
            .filter_map(|h| headers.get(h).map(|v| (h.to_owned(), v.to_owned())))
            .collect()
    }

    /// Map a verified delivery. The deduplication key is always computed, even when the delivery cannot
    /// be mapped (so a redelivered dead letter is recognised too).
    pub fn map(&self, headers: &dyn Headers, body: &[u8]) -> Mapping {
        let json: Result<serde_json::Value, String> =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"));
        let provider_event_id =
            self.event.id.as_ref().and_then(|s| text(s, headers, json.as_ref().ok()).ok().flatten());
        let dedupe_key = match &provider_event_id {
            Some(id) => format!("id:{id}"),
            None => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        };
        let result = json.map_err(Unmappable::NotJson).and_then(|json| self.map_json(headers, json));
        Mapping { dedupe_key, provider_event_id, result }
    }

    fn map_json(&self, headers: &dyn Headers, body: serde_json::Value) -> Result<Mapped, Unmappable> {
        let e = &self.event;
        let field = |name: &'static str, s: &Source| {
            text(s, headers, Some(&body)).map_err(|why| Unmappable::BadField(name, why))
        };
        let schema_version = match &e.schema_version {
            Some(s) => {
                let v = field("schema_version", s)?.ok_or(Unmappable::MissingField("schema_version"))?;
                if !e.schema_versions.contains(&v) {
                    return Err(Unmappable::UnknownSchemaVersion(v));
                }
                Some(v)
            }
            None => None,
        };
        let provider_event_type = field("type", &e.event_type)?.ok_or(Unmappable::MissingField("type"))?;
        let event_type = e
            .types
            .get(&provider_event_type)
            .cloned()
            .ok_or_else(|| Unmappable::UnknownType(provider_event_type.clone()))?;
        let entity_key = match &e.entity_key {
            Some(s) => Some(field("entity_key", s)?.ok_or(Unmappable::MissingField("entity_key"))?),
            None => None,
        };
        let occurred_at = match &e.occurred_at {
            Some(s) => {
                let raw = field("occurred_at", s)?.ok_or(Unmappable::MissingField("occurred_at"))?;
                let format = s.format.unwrap_or(TimeFormat::Rfc3339);
                let bad = |rule, why: String| Unmappable::EventTime { field: s.name().to_owned(), rule, why };
                let t = parse_time(&raw, format)
                    .ok_or_else(|| bad("time_format", format!("is not a valid {} time", format.name())))?;
                if !event_time::in_range(t) {
                    return Err(bad("range", out_of_range()));
                }
                Some(t)
            }
            None => None,
        };
        let (fields, field_problems) = fields::extract(&self.fields, &body);
        let transfer_callback = self
            .transfers
            .as_ref()
            .and_then(|t| t.resolve(&event_type, &fields, &field_problems, &self.fields));
        Ok(Mapped {
            provider_event_type,
            event_type,
            occurred_at,
            entity_key,
            schema_version,
            fields,
            field_problems,
            transfer_callback,
            body,
        })
    }
}

/// The value at `source` as text: strings as they are, integers in decimal; `Ok(None)` when absent.
fn text(
    source: &Source,
    headers: &dyn Headers,
    body: Option<&serde_json::Value>,
) -> Result<Option<String>, &'static str> {
    let value = match (&source.header, &source.pointer) {
        (Some(h), _) => headers.get(h).map(str::to_owned),
        (None, Some(p)) => match body.and_then(|b| b.pointer(p)) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Some(_) => return Err("must be a string or an integer"),
        },
        (None, None) => None,
    };
    match value {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > FIELD_BYTES_MAX || v.chars().any(char::is_control) => {
            Err("must be at most 256 bytes, without control characters")
        }
        v => Ok(v),
    }
}

fn out_of_range() -> String {
    format!("is outside {}", event_time::EVENT_TIME_RANGE)
}

fn parse_time(raw: &str, format: TimeFormat) -> Option<DateTime<Utc>> {
    match format {
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(raw).ok().map(|t| t.with_timezone(&Utc)),
        TimeFormat::UnixS => raw.parse::<i64>().ok().and_then(|s| DateTime::from_timestamp(s, 0)),
        TimeFormat::UnixMs => raw.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Dotted lower case: `kyc.case_approved`, `deposit.completed`.
pub fn is_event_type(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= 64
        && parts.len() >= 2
        && parts.iter().all(|p| {
            p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// An authentic delivery: which key verified it, and what it maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub key_index: usize,
    pub signed_timestamp: Option<i64>,
    pub mapping: Mapping,
}

/// What mapping a delivery gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// `id:<provider event id>` or `sha256:<hex of the raw body>`.
    pub dedupe_key: String,
    pub provider_event_id: Option<String>,
    pub result: Result<Mapped, Unmappable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub provider_event_type: String,
    /// The riverbank event type it maps to.
    pub event_type: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub entity_key: Option<String>,
    pub schema_version: Option<String>,
    /// The definition's `[fields]` that have a value.
    pub fields: BTreeMap<String, String>,
    /// Fields whose value was there but unusable (an object, too long), and why.
    pub field_problems: BTreeMap<String, String>,
    /// What it means for a transfer, when the definition declares its type a transfer callback.
    pub transfer_callback: Option<riverbank_schemas::transfers::TransferCallback>,
    pub body: serde_json::Value,
}

/// Why an authentic delivery cannot be mapped: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    #[error("{0}")]
    NotJson(String),
    #[error("event type '{0}' is not in the provider definition")]
    UnknownType(String),
    #[error("schema version '{0}' is not one the provider definition understands")]
    UnknownSchemaVersion(String),
    #[error("{0} is missing")]
    MissingField(&'static str),
    #[error("{0} {1}")]
    BadField(&'static str, &'static str),
    /// The event time (`field`: the JSON pointer or signed header it was read from) is not a time, or
    /// is outside [`event_time::EVENT_TIME_RANGE`]. The delivery is refused (422 naming `field`) and
    /// kept on the dead-letter topic.
    #[error("occurred_at ({field}) {why}")]
    EventTime { field: String, rule: &'static str, why: String },
}

/// All providers by name: the built-ins, then `extra` files (which may replace a built-in by name).
pub fn load(extra: &[(String, String)]) -> Result<BTreeMap<String, ProviderDef>, DefinitionError> {
    let mut out = BTreeMap::new();
    let builtins = BUILTIN.iter().map(|(f, t)| ((*f).to_owned(), (*t).to_owned()));
    for (file, text) in builtins.chain(extra.iter().cloned()) {
        let def = ProviderDef::parse(&file, &text)?;
        out.insert(def.name.clone(), def);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(text: &str) -> Result<ProviderDef, DefinitionError> {
        ProviderDef::parse("test.toml", text)
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

    #[test]
    fn builtin_definitions_are_valid() {
        let all = load(&[]).expect("built-ins validate");
        assert!(all.len() >= 4, "at least four providers ship");
        let schemes: std::collections::BTreeSet<&str> = all.values().map(|d| d.signature.name()).collect();
        assert_eq!(
            schemes.into_iter().collect::<Vec<_>>(),
            ["ed25519", "hmac_sha256", "payload_digest", "standard_webhooks"]
        );
    }

    /// The entries of `ingest/<dir>/` (from the source tree), sorted: `(name, path)`.
    fn shipped(dir: &str) -> Vec<(String, std::path::PathBuf)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let p = e.expect("dir entry").path();
                (p.file_name().expect("name").to_string_lossy().into_owned(), p)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_shipped_definition_is_built_in() {
        // A file in ingest/providers/ without its line in BUILTIN ships nothing: no route, no fixture test.
        let files: Vec<_> = shipped("providers").into_iter().filter(|(n, _)| n.ends_with(".toml")).collect();
        for (name, path) in &files {
            let text = std::fs::read_to_string(path).expect("read");
            let built_in = BUILTIN.iter().find(|(f, _)| f == name);
            assert!(
                built_in.is_some(),
                "ingest/providers/{name} is not in provider::BUILTIN, so it never ships"
            );
            assert!(
                built_in.is_some_and(|(_, t)| *t == text),
                "BUILTIN's {name} is not ingest/providers/{name}"
            );
        }
        assert_eq!(BUILTIN.len(), files.len(), "BUILTIN names a file that is not in ingest/providers/");
    }

    #[test]
    fn every_fixture_folder_has_a_built_in_provider() {
        // Fixtures of a provider that is not loaded are never exercised (tests/providers.rs walks the
        // loaded providers and reads their folders).
        let loaded = load(&[]).expect("built-ins validate");
        for (name, path) in shipped("fixtures") {
            if path.is_dir() {
                assert!(
                    loaded.contains_key(&name),
                    "ingest/fixtures/{name}/ has no loaded provider named '{name}' (a file in ingest/providers/ and its BUILTIN line)"
                );
            }
        }
    }

    #[test]
    fn invalid_definitions_are_refused_with_the_reason() {
        let cases = [
            (BASE.replace("name = \"p\"", "name = \"P!\""), "name"),
            (
                BASE.replace("id = { pointer = \"/id\" }", "id = { header = \"x-event-id\" }"),
                "does not cover",
            ),
            (BASE.replace("\"/type\"", "\"type\""), "must start with '/'"),
            (BASE.replace(", format = \"unix_s\"", ""), "needs a format"),
            (BASE.replace("\"kyc.case_approved\"", "\"Approved\""), "dotted lower case"),
            (
                BASE.replace("encoding = \"hex\"", "encoding = \"hex\"\ntolerance_s = 300\nextra = 1"),
                "unknown",
            ),
            (
                BASE.replace("occurred_at = { pointer = \"/at\", format = \"unix_s\" }", "")
                    .replace("encoding = \"hex\"", "encoding = \"hex\"\ntolerance_s = 300"),
                "tolerance_s",
            ),
            (BASE.replace("scheme = \"hmac_sha256\"", "scheme = \"md5\""), "unknown variant"),
        ];
        for (text, want) in cases {
            let e = def(&text).expect_err(want);
            assert!(e.to_string().contains(want), "{e} should mention {want}");
        }
        def(BASE).expect("base is valid");
    }

    #[test]
    fn a_data_file_adds_a_provider_or_replaces_a_built_in() {
        let extra = vec![
            ("newpay.toml".to_owned(), BASE.replace("name = \"p\"", "name = \"newpay\"")),
            ("kycflow.toml".to_owned(), BASE.replace("name = \"p\"", "name = \"kycflow\"")),
        ];
        let all = load(&extra).expect("valid");
        assert_eq!(all["newpay"].event.types["case.ok"], "kyc.case_approved");
        assert_eq!(all["kycflow"].event.id.as_ref().and_then(|s| s.pointer.as_deref()), Some("/id"));
        let broken = vec![("bad.toml".to_owned(), "name = \"x\"".to_owned())];
        assert!(load(&broken).expect_err("refused").to_string().contains("bad.toml"));
    }

    #[test]
    fn mapping_takes_fields_from_the_signed_body() {
        let d = def(BASE).expect("valid");
        let none: &[(&str, &str)] = &[];
        let m = d.map(&none, br#"{"id":"evt_1","type":"case.ok","case":{"id":77},"at":1700000000}"#);
        assert_eq!(m.dedupe_key, "id:evt_1");
        let mapped = m.result.expect("maps");
        assert_eq!(mapped.event_type, "kyc.case_approved");
        assert_eq!(mapped.entity_key.as_deref(), Some("77"));
        assert_eq!(mapped.occurred_at.map(|t| t.timestamp()), Some(1_700_000_000));
    }

    #[test]
    fn event_times_outside_1970_to_2100_are_refused_naming_the_field() {
        let none: &[(&str, &str)] = &[];
        let body = |at: &str| format!(r#"{{"id":"e","type":"case.ok","case":{{"id":"c"}},"at":{at}}}"#);
        let unix_s = def(BASE).expect("valid");
        let unix_ms = def(&BASE.replace("unix_s", "unix_ms")).expect("valid");
        let rfc3339 = def(&BASE.replace("unix_s", "rfc3339")).expect("valid");
        let cases = [
            (&unix_s, "-300000000000".to_owned(), false),
            (&unix_s, "-1".to_owned(), false),
            (&unix_s, "0".to_owned(), true),
            (&unix_s, "4102444799".to_owned(), true),
            (&unix_s, "4102444800".to_owned(), false),
            (&unix_s, "7258118400".to_owned(), false),
            (&unix_ms, "-300000000000000".to_owned(), false),
            (&unix_ms, "1795332600123".to_owned(), true),
            (&unix_ms, "4102444800000".to_owned(), false),
            (&rfc3339, "\"1969-12-31T23:59:59Z\"".to_owned(), false),
            (&rfc3339, "\"2026-11-22T07:31:00+01:00\"".to_owned(), true),
            (&rfc3339, "\"2150-01-01T00:00:00Z\"".to_owned(), false),
        ];
        for (d, at, ok) in cases {
            let m = d.map(&none, body(&at).as_bytes());
            match (&m.result, ok) {
                (Ok(mapped), true) => assert!(mapped.occurred_at.is_some(), "{at}"),
                (Err(Unmappable::EventTime { field, rule: "range", why }), false) => {
                    assert_eq!(field, "/at", "{at}");
                    assert!(why.contains("1970-01-01T00:00:00Z"), "{why}");
                    let text = m.result.clone().expect_err("refused").to_string();
                    assert!(text.starts_with("occurred_at (/at) is outside"), "{text}");
                }
                (r, _) => panic!("{at}: {r:?}"),
            }
            assert_eq!(m.dedupe_key, "id:e", "a refused delivery still has its dedupe key");
        }
    }

    #[test]
    fn a_signed_header_time_outside_the_range_is_refused_naming_the_header() {
        use crate::schemes::sign::{self, Signer};
        let text = r#"
name = "p"
[signature]
scheme = "ed25519"
signature_header = "x-sig"
timestamp_header = "x-sig-ts"
tolerance_s = 9000000000
[event]
id = { pointer = "/id" }
type = { pointer = "/type" }
[event.types]
"case.ok" = "kyc.case_approved"
"#;
        let d = def(text).expect("valid");
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let key = d.signature.key(&hex::encode(k.verifying_key().to_bytes())).expect("key");
        let signer = Signer::Ed25519(k);
        let body = br#"{"id":"e1","type":"case.ok"}"#;
        let now = 1_795_332_660;
        for (at, ok) in [(now, true), (4_102_444_800, false), (9_999_999_999, false)] {
            let headers = sign::headers(&d.signature, &signer, "-", at, body);
            let view: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let accepted =
                d.accept(std::slice::from_ref(&key), &view.as_slice(), body, now).expect("verifies");
            match (&accepted.mapping.result, ok) {
                (Ok(_), true) => {}
                (Err(Unmappable::EventTime { field, rule: "range", .. }), false) => {
                    assert_eq!(field, "x-sig-ts")
                }
                (r, _) => panic!("{at}: {r:?}"),
            }
        }
    }

    #[test]
    fn unmappable_deliveries_say_why_and_still_dedupe() {
        let d = def(BASE).expect("valid");
        let none: &[(&str, &str)] = &[];
        let m = d.map(&none, br#"{"id":"evt_2","type":"case.weird","case":{"id":"c"},"at":1}"#);
        assert_eq!(m.result, Err(Unmappable::UnknownType("case.weird".into())));
        assert_eq!(m.dedupe_key, "id:evt_2");
        let m = d.map(&none, b"not json");
        assert!(matches!(m.result, Err(Unmappable::NotJson(_))));
        assert!(m.dedupe_key.starts_with("sha256:"));
        let m = d.map(&none, br#"{"type":"case.ok","case":{"id":"c"},"at":1}"#);
        assert!(m.dedupe_key.starts_with("sha256:"), "no id: the body hash deduplicates");
        assert!(m.result.is_ok());
        let m = d.map(&none, br#"{"id":"e","type":"case.ok","at":1}"#);
        assert_eq!(m.result, Err(Unmappable::MissingField("entity_key")));
        let m = d.map(&none, br#"{"id":"e","type":"case.ok","case":{"id":"c"},"at":"soon"}"#);
        assert!(
            matches!(&m.result, Err(Unmappable::EventTime { field, rule: "time_format", .. }) if field == "/at"),
            "{:?}",
            m.result
        );
        let m = d.map(&none, br#"{"id":{"x":1},"type":"case.ok","case":{"id":"c"},"at":1}"#);
        assert!(m.dedupe_key.starts_with("sha256:"), "an id that is not text falls back to the hash");
    }
}
