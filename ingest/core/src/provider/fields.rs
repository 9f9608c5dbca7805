//! A definition's `[fields]`: named values taken from the verified body at the edge, so processors read
//! `WebhookReceived.fields` and never the body (routers drop it).
//!
//! ```toml
//! [fields]
//! user_id = { pointer = "/externalUserId" }
//! # Sources tried in order; `map` translates a value (a value it does not list is no value: the next
//! # source is tried).
//! tier = [
//!   { pointer = "/tier" },
//!   { pointer = "/levelName", map = { "basic-kyc-level" = "1", "full-kyc-level" = "3" } },
//! ]
//! ```
//!
//! A value is a JSON string (kept as is), number or boolean (rendered as JSON text: `2`, `250.5`,
//! `true`). An object, an array, `null`, an empty string, or a value over [`FIELD_BYTES_MAX`] bytes or
//! with control characters is no value (the field is absent; [`extract`] says why for the ones that were
//! there but unusable). **Fields never name personal data** (names, documents, dates of birth, addresses,
//! phone numbers, e-mail) **nor sensitive financial data** (card tokens, bank account numbers): they
//! travel to every processor's log. Point them at pseudonymous ids, codes
//! and amounts only; a pointer whose segments name such data is refused at load ([`PERSONAL_SEGMENTS`]:
//! a guard against the obvious mistakes, not a proof).
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::FIELD_BYTES_MAX;

/// Most fields one definition may declare.
pub const FIELDS_MAX: usize = 32;
/// Most sources one field may try.
pub const FIELD_SOURCES_MAX: usize = 8;
/// Most entries in one source's `map`.
pub const FIELD_MAP_ENTRIES_MAX: usize = 64;
/// Longest field name, in bytes.
pub const FIELD_NAME_BYTES_MAX: usize = 32;

/// JSON pointer segments (compared in lower case, without `_` and `-`) that name personal data or
/// sensitive financial data (card tokens, bank account numbers): a field reading one is refused at load.
pub const PERSONAL_SEGMENTS: &[&str] = &[
    "name",
    "firstname",
    "lastname",
    "middlename",
    "fullname",
    "legalname",
    "surname",
    "givenname",
    "address",
    "street",
    "postcode",
    "zipcode",
    "dob",
    "dateofbirth",
    "birthdate",
    "phone",
    "mobile",
    "email",
    "ssn",
    "pan",
    "aadhaar",
    "passport",
    "document",
    "documents",
    "iddocs",
    "nationalid",
    "taxid",
    // Sensitive financial data (DOMAIN.md: encrypted where stored, never in clear on a topic).
    "cardnumber",
    "cardtoken",
    "iban",
    "accountnumber",
    "bankaccount",
];

/// One field: the sources tried in order (a TOML table, or an array of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec(pub Vec<FieldSource>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSource {
    /// RFC 6901 JSON pointer into the signed body.
    pub pointer: String,
    /// Value as sent → value kept. A value not listed here is no value from this source.
    #[serde(default)]
    pub map: Option<BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a source { pointer = \"/…\" } or an array of sources")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                FieldSource::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|s| FieldSpec(vec![s]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<FieldSpec, A::Error> {
                Vec::<FieldSource>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(FieldSpec)
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// A field name: 1–32 of `a-z 0-9 _`, starting with a letter.
pub fn is_field_name(s: &str) -> bool {
    s.len() <= FIELD_NAME_BYTES_MAX
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The first segment of `pointer` that names personal data, if any.
pub fn personal_segment(pointer: &str) -> Option<&str> {
    pointer.split('/').skip(1).find(|seg| {
        let norm: String =
            seg.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect();
        PERSONAL_SEGMENTS.contains(&norm.as_str())
    })
}

/// Validate `[fields]` as a whole.
pub fn validate(fields: &BTreeMap<String, FieldSpec>) -> Result<(), String> {
    if fields.len() > FIELDS_MAX {
        return Err(format!("fields declares {} fields, at most {FIELDS_MAX}", fields.len()));
    }
    for (name, spec) in fields {
        if !is_field_name(name) {
            return Err(format!(
                "fields.{name}: a field name is 1-{FIELD_NAME_BYTES_MAX} of a-z, 0-9, '_', starting with a letter"
            ));
        }
        if spec.0.is_empty() || spec.0.len() > FIELD_SOURCES_MAX {
            return Err(format!("fields.{name} needs 1-{FIELD_SOURCES_MAX} sources"));
        }
        for (i, source) in spec.0.iter().enumerate() {
            let at = format!("fields.{name}[{i}]");
            let p = &source.pointer;
            if !p.starts_with('/') {
                return Err(format!("{at}.pointer '{p}' must start with '/'"));
            }
            if let Some(seg) = personal_segment(p) {
                return Err(format!(
                    "{at}.pointer '{p}' reads '{seg}': personal data or sensitive financial data; fields carry ids, codes and amounts only"
                ));
            }
            let Some(map) = &source.map else { continue };
            if map.is_empty() || map.len() > FIELD_MAP_ENTRIES_MAX {
                return Err(format!("{at}.map needs 1-{FIELD_MAP_ENTRIES_MAX} entries"));
            }
            for (from, to) in map {
                for v in [from, to] {
                    if !usable(v) {
                        return Err(format!(
                            "{at}.map '{from}' = '{to}': values are 1-{FIELD_BYTES_MAX} bytes without control characters"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn usable(v: &str) -> bool {
    !v.is_empty() && v.len() <= FIELD_BYTES_MAX && !v.chars().any(char::is_control)
}

/// What one source gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    Value(String),
    /// Nothing there (absent, `null`, empty, or not listed in the source's map).
    Absent,
    /// Something there that cannot be a field value, and why.
    Unusable(String),
}

/// The value of one source in `body`.
pub fn extract_source(source: &FieldSource, body: &serde_json::Value) -> Extracted {
    use serde_json::Value;
    let raw = match body.pointer(&source.pointer) {
        None | Some(Value::Null) => return Extracted::Absent,
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Array(_) | Value::Object(_)) => {
            return Extracted::Unusable(format!("{} is not a string, number or boolean", source.pointer))
        }
    };
    if raw.is_empty() {
        return Extracted::Absent;
    }
    let value = match &source.map {
        None => raw,
        Some(map) => match map.get(&raw) {
            Some(to) => to.clone(),
            None => return Extracted::Absent,
        },
    };
    if usable(&value) {
        Extracted::Value(value)
    } else {
        Extracted::Unusable(format!(
            "{} must be at most {FIELD_BYTES_MAX} bytes, without control characters",
            source.pointer
        ))
    }
}

/// The value of one field: its first source with a value; else why the first unusable one was
/// unusable (`Err`), else `Ok(None)`.
pub fn extract_field(spec: &FieldSpec, body: &serde_json::Value) -> Result<Option<String>, String> {
    let mut unusable = None;
    for source in &spec.0 {
        match extract_source(source, body) {
            Extracted::Value(v) => return Ok(Some(v)),
            Extracted::Absent => {}
            Extracted::Unusable(why) => {
                unusable.get_or_insert(why);
            }
        }
    }
    unusable.map_or(Ok(None), Err)
}

/// Every field with a value, and why each field that had something unusable has none.
pub fn extract(
    fields: &BTreeMap<String, FieldSpec>,
    body: &serde_json::Value,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (name, spec) in fields {
        match extract_field(spec, body) {
            Ok(Some(v)) => {
                values.insert(name.clone(), v);
            }
            Ok(None) => {}
            Err(why) => {
                problems.insert(name.clone(), why);
            }
        }
    }
    (values, problems)
}
