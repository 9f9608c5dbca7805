//! A definition's `[sensitive]`: where a provider's body carries personal or sensitive financial data,
//! and its data class. The edge seals every declared value present in a verified body (AES-256-GCM
//! under the subject's data key for the class, `riverbank_crypto::field`) before anything is produced,
//! so no topic, table, log line or metric holds it in clear.
//!
//! ```toml
//! [sensitive]
//! subject = "user_id"                            # the [fields] field whose value is the data subject
//! "/name" = "pii.name"
//! "/documents/*/number" = "pii.national_id"      # `*` = every element of an array
//! "/bank/account_number" = "financial.bank_account"
//! ```
//!
//! A declared value is any JSON value but `null` (a string, a number, an object such as an address, an
//! array): its JSON text is sealed and the value is replaced in place by the sealed text (a string
//! `rbf1.…`). Validated at load: every class is a known `DataClass`, `subject` names a `[fields]`
//! field, and no `[fields]` source or `[event]` pointer reads a declared value (or inside one): those
//! travel in clear in every event. A declared pointer inside another declared one is refused too.
//!
//! The subject is the value of the `subject` field in the body (a pseudonymous user id). A body that holds
//! declared values but no subject is sealed under the tenant's [`FALLBACK_SUBJECT`] (its values are
//! erased with that subject, never with a user's). A body that is not JSON at all (only ever a dead
//! letter) is sealed whole, under [`FALLBACK_SUBJECT`] and [`WHOLE_BODY_CLASS`], when the provider
//! declares any sensitive pointer (a provider that declares none is trusted to send none).
//!
//! Commands carry no personal data today. A command's fields would be declared the same way: a
//! `Sensitive` per command endpoint (pointers into its JSON body, the subject a body field), applied by
//! the same [`Sensitive::sites`] + [`seal_in_place`] before the command's event is built.
use std::collections::BTreeMap;

use riverbank_crypto::keys::DataClass;
use serde::Deserialize;

use super::fields::{self, FieldSpec};

/// Most pointers one definition may declare sensitive.
pub const SENSITIVE_POINTERS_MAX: usize = 64;
/// The subject a tenant's personal data is sealed under when its body names none (a user id never
/// starts with `~`: ids are pseudonymous and riverbank's own start with a letter).
pub const FALLBACK_SUBJECT: &str = "~unattributed";
/// A body that is not JSON is sealed whole, in chunks of at most this many bytes (a sealed field holds
/// at most `riverbank_crypto::field::FIELD_BYTES_MAX`); its stored form is the chunks' envelopes, one a
/// line, chunk `i` bound to the field [`whole_body_field`]`(i)`.
pub const WHOLE_BODY_CHUNK_BYTES: usize = 48 * 1024;
/// The class a body that is not JSON is sealed under.
pub const WHOLE_BODY_CLASS: DataClass = DataClass::PII_DOCUMENT;

/// The field chunk `i` of a body that is not JSON is bound to (`#0`, `#1`, …; never a JSON pointer).
pub fn whole_body_field(i: usize) -> String {
    format!("#{i}")
}

/// `[sensitive]`, parsed: the subject field and the declared pointers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Sensitive {
    /// The `[fields]` field whose value is the data subject.
    pub subject: Option<String>,
    pub declared: Vec<Declared>,
}

/// One declared pointer and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// As written in the definition (`/documents/*/number`).
    pub pointer: String,
    pub segments: Vec<Segment>,
    pub class: DataClass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member (or an array index, when the value there is an array).
    Key(String),
    /// `*`: every element of an array.
    Each,
}

/// A declared value present in one body: where (a concrete RFC 6901 pointer, the field its sealed form
/// is bound to) and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub pointer: String,
    pub class: DataClass,
}

impl TryFrom<BTreeMap<String, String>> for Sensitive {
    type Error = String;

    fn try_from(raw: BTreeMap<String, String>) -> Result<Sensitive, String> {
        let mut out = Sensitive::default();
        for (key, value) in raw {
            if key == "subject" {
                if !fields::is_field_name(&value) {
                    return Err(format!("sensitive.subject '{value}' is not a field name"));
                }
                out.subject = Some(value);
                continue;
            }
            if !key.starts_with('/') {
                return Err(format!(
                    "sensitive: '{key}' is neither 'subject' nor a JSON pointer (starting with '/')"
                ));
            }
            let segments = parse_pointer(&key).map_err(|why| format!("sensitive.'{key}': {why}"))?;
            let class = DataClass::parse(&value).map_err(|_| {
                let known: Vec<&str> = DataClass::ALL.iter().map(|c| c.as_str()).collect();
                format!("sensitive.'{key}' = '{value}': unknown data class; known: {}", known.join(", "))
            })?;
            out.declared.push(Declared { pointer: key, segments, class });
        }
        if out.declared.len() > SENSITIVE_POINTERS_MAX {
            return Err(format!(
                "sensitive declares {} pointers, at most {SENSITIVE_POINTERS_MAX}",
                out.declared.len()
            ));
        }
        Ok(out)
    }
}

/// The segments of `pointer` (RFC 6901 `~1` → `/`, `~0` → `~`; a segment `*` is [`Segment::Each`]).
fn parse_pointer(pointer: &str) -> Result<Vec<Segment>, String> {
    pointer
        .split('/')
        .skip(1)
        .map(|seg| {
            if seg == "*" {
                return Ok(Segment::Each);
            }
            let mut out = String::with_capacity(seg.len());
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err("'~' must be followed by 0 or 1".to_owned()),
                    },
                }
            }
            Ok(Segment::Key(out))
        })
        .collect()
}

/// Whether the declared `pattern` covers the concrete or declared `segments`: they are equal or inside
/// it (`*` covers any segment).
fn covers(pattern: &[Segment], segments: &[Segment]) -> bool {
    pattern.len() <= segments.len()
        && pattern.iter().zip(segments).all(|(p, s)| matches!(p, Segment::Each) || p == s)
}

impl Sensitive {
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    /// Validate against the definition's `[fields]` and the pointers its `[event]` reads (`reads`: the
    /// place, for the message, and the pointer).
    pub fn validate(
        &self,
        fields: &BTreeMap<String, FieldSpec>,
        reads: &[(String, String)],
    ) -> Result<(), String> {
        if self.declared.is_empty() {
            return match &self.subject {
                Some(_) => Err("sensitive.subject is set but no pointer is declared".to_owned()),
                None => Ok(()),
            };
        }
        let subject = self
            .subject
            .as_deref()
            .ok_or("sensitive.subject is missing: name the [fields] field whose value is the data subject")?;
        if !fields.contains_key(subject) {
            return Err(format!("sensitive.subject '{subject}' is not a field of [fields]"));
        }
        let mut all_reads: Vec<(String, &str)> =
            reads.iter().map(|(at, p)| (at.clone(), p.as_str())).collect();
        for (name, spec) in fields {
            for (i, s) in spec.0.iter().enumerate() {
                all_reads.push((format!("fields.{name}[{i}]"), s.pointer.as_str()));
            }
        }
        for d in &self.declared {
            for (at, pointer) in &all_reads {
                let segments = parse_pointer(pointer).unwrap_or_default();
                let segments: Vec<Segment> = segments
                    .into_iter()
                    .map(|s| if s == Segment::Each { Segment::Key("*".to_owned()) } else { s })
                    .collect();
                if pointer.starts_with('/') && covers(&d.segments, &segments) {
                    return Err(format!(
                        "{at} reads '{pointer}', which sensitive.'{}' declares {}: it would travel in clear",
                        d.pointer, d.class
                    ));
                }
            }
            for other in &self.declared {
                if other.pointer != d.pointer && covers(&d.segments, &other.segments) {
                    return Err(format!(
                        "sensitive.'{}' is inside sensitive.'{}': declare one of them",
                        other.pointer, d.pointer
                    ));
                }
            }
        }
        Ok(())
    }

    /// The subject of `body`: the value of the `subject` field, if it has one.
    pub fn subject_of(
        &self,
        fields: &BTreeMap<String, FieldSpec>,
        body: &serde_json::Value,
    ) -> Option<String> {
        let spec = fields.get(self.subject.as_deref()?)?;
        fields::extract_field(spec, body).ok().flatten()
    }

    /// Every declared value present in `body` (not `null`), in declaration order, then document order.
    pub fn sites(&self, body: &serde_json::Value) -> Vec<Site> {
        let mut out = Vec::new();
        for d in &self.declared {
            let mut path = String::new();
            walk(body, &d.segments, &mut path, d.class, &mut out);
        }
        out
    }
}

fn walk(
    value: &serde_json::Value,
    segments: &[Segment],
    path: &mut String,
    class: DataClass,
    out: &mut Vec<Site>,
) {
    use serde_json::Value;
    let Some((first, rest)) = segments.split_first() else {
        if !value.is_null() {
            out.push(Site { pointer: path.clone(), class });
        }
        return;
    };
    let len = path.len();
    match (first, value) {
        (Segment::Key(k), Value::Object(map)) => {
            if let Some(child) = map.get(k) {
                path.push('/');
                path.push_str(&escape(k));
                walk(child, rest, path, class, out);
            }
        }
        (Segment::Key(k), Value::Array(items)) => {
            let index = k.parse::<usize>().ok().filter(|_| k == "0" || !k.starts_with('0'));
            if let Some((i, child)) = index.and_then(|i| items.get(i).map(|c| (i, c))) {
                path.push_str(&format!("/{i}"));
                walk(child, rest, path, class, out);
            }
        }
        (Segment::Each, Value::Array(items)) => {
            for (i, child) in items.iter().enumerate() {
                path.push_str(&format!("/{i}"));
                walk(child, rest, path, class, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
    path.truncate(len);
}

/// A key as a JSON pointer segment (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Replace the value at each of `sites` in `body` by what `seal` makes of it (`Ok(None)`: leave it).
/// Returns how many values were replaced. A site no longer present (an earlier site replaced its
/// parent) is skipped.
pub fn seal_in_place<E>(
    body: &mut serde_json::Value,
    sites: &[Site],
    mut seal: impl FnMut(&Site, &serde_json::Value) -> Result<Option<String>, E>,
) -> Result<usize, E> {
    let mut n = 0;
    for site in sites {
        let Some(slot) = body.pointer_mut(&site.pointer) else { continue };
        if let Some(sealed) = seal(site, slot)? {
            *slot = serde_json::Value::String(sealed);
            n += 1;
        }
    }
    Ok(n)
}

/// What sealing one delivery's body means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing declared is there: the body stays as it is.
    Nothing,
    /// Seal these values of the JSON body under `subject` (the body's, or [`FALLBACK_SUBJECT`]).
    Fields { subject: String, sites: Vec<Site> },
    /// The body is not JSON: seal it whole, under [`FALLBACK_SUBJECT`] and [`WHOLE_BODY_CLASS`].
    WholeBody,
}

/// Which declared values a plan seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A delivery at the edge: every declared value (one that merely looks sealed too: the sender's
    /// text is never trusted to be an envelope).
    Edge,
    /// A stored form being processed again (a dead letter's redrive): values already sealed at the
    /// edge stay as they are; only values in clear (a pointer declared since) are sealed.
    Stored,
}

impl Plan {
    /// The plan for a body (`json`: the body parsed, `None` when it is not JSON).
    pub fn of(
        sensitive: &Sensitive,
        fields: &BTreeMap<String, FieldSpec>,
        json: Option<&serde_json::Value>,
        pass: Pass,
    ) -> Plan {
        if sensitive.is_empty() {
            return Plan::Nothing;
        }
        let Some(body) = json else {
            return match pass {
                Pass::Edge => Plan::WholeBody,
                // A stored form that is not JSON was sealed whole at the edge.
                Pass::Stored => Plan::Nothing,
            };
        };
        let mut sites = sensitive.sites(body);
        if pass == Pass::Stored {
            sites.retain(|s| {
                !matches!(body.pointer(&s.pointer), Some(serde_json::Value::String(v))
                    if riverbank_crypto::field::is_sealed(v))
            });
        }
        if sites.is_empty() {
            return Plan::Nothing;
        }
        let subject = sensitive.subject_of(fields, body).unwrap_or_else(|| FALLBACK_SUBJECT.to_owned());
        Plan::Fields { subject, sites }
    }

    /// The subject and the classes whose data keys the plan needs.
    pub fn keys_needed(&self) -> Option<(&str, Vec<DataClass>)> {
        match self {
            Plan::Nothing => None,
            Plan::Fields { subject, sites } => {
                let mut classes: Vec<DataClass> = sites.iter().map(|s| s.class).collect();
                classes.sort();
                classes.dedup();
                Some((subject.as_str(), classes))
            }
            Plan::WholeBody => Some((FALLBACK_SUBJECT, vec![WHOLE_BODY_CLASS])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Sensitive, String> {
        #[derive(Deserialize)]
        struct W {
            sensitive: Sensitive,
        }
        toml::from_str::<W>(text).map(|w| w.sensitive).map_err(|e| e.message().to_owned())
    }

    fn fields(text: &str) -> BTreeMap<String, FieldSpec> {
        #[derive(Deserialize)]
        struct W {
            fields: BTreeMap<String, FieldSpec>,
        }
        toml::from_str::<W>(text).expect("fields").fields
    }

    const FIELDS: &str =
        "[fields]\nuser_id = { pointer = \"/user\" }\ncase_id = { pointer = \"/case/id\" }\n";

    #[test]
    fn declared_pointers_are_found_in_bodies_with_arrays() {
        let s = parse(
            r#"[sensitive]
subject = "user_id"
"/name" = "pii.name"
"/documents/*/number" = "pii.national_id"
"/bank/account_number" = "financial.bank_account"
"/a~1b" = "pii.phone"
"/list/1" = "pii.email"
"#,
        )
        .expect("valid");
        let body = json!({
            "user": "u1", "name": {"first": "Zeb"}, "a/b": "+1 555",
            "documents": [{"number": "P1"}, {"type": "x"}, {"number": null}, {"number": 7}],
            "bank": {"ifsc": "X"}, "list": ["a", "b"]
        });
        let sites: Vec<(String, &str)> =
            s.sites(&body).into_iter().map(|s| (s.pointer, s.class.as_str())).collect();
        assert_eq!(
            sites,
            [
                ("/a~1b".to_owned(), "pii.phone"),
                ("/documents/0/number".to_owned(), "pii.national_id"),
                ("/documents/3/number".to_owned(), "pii.national_id"),
                ("/list/1".to_owned(), "pii.email"),
                ("/name".to_owned(), "pii.name"),
            ]
        );
        let f = fields(FIELDS);
        assert_eq!(s.subject_of(&f, &body).as_deref(), Some("u1"));
        s.validate(&f, &[]).expect("valid with these fields");
    }

    #[test]
    fn sealing_replaces_each_value_in_place_and_leaves_the_rest() {
        let s = parse(
            "[sensitive]\nsubject = \"user_id\"\n\"/name\" = \"pii.name\"\n\"/docs/*\" = \"pii.document\"\n",
        )
        .expect("valid");
        let mut body = json!({"user": "u1", "name": "Zeb Q", "docs": ["d1", {"n": 2}], "amount": "1.00"});
        let sites = s.sites(&body);
        let n = seal_in_place(&mut body, &sites, |site, v| {
            Ok::<_, ()>(Some(format!("sealed({},{})", site.pointer, serde_json::to_string(v).expect("json"))))
        })
        .expect("sealed");
        assert_eq!(n, 3);
        assert_eq!(
            body,
            json!({"user": "u1", "name": "sealed(/name,\"Zeb Q\")",
                   "docs": ["sealed(/docs/0,\"d1\")", "sealed(/docs/1,{\"n\":2})"], "amount": "1.00"})
        );
        // `Ok(None)` leaves a value as it is.
        let mut again = body.clone();
        assert_eq!(seal_in_place(&mut again, &sites, |_, _| Ok::<_, ()>(None)), Ok(0));
        assert_eq!(again, body);
    }

    #[test]
    fn plans_fall_back_to_the_tenant_subject_and_seal_non_json_whole() {
        let s =
            parse("[sensitive]\nsubject = \"user_id\"\n\"/name\" = \"pii.name\"\n\"/dob\" = \"pii.dob\"\n")
                .expect("valid");
        let f = fields(FIELDS);
        let with = json!({"user": "u9", "name": "Z", "dob": "1990-01-02"});
        let plan = Plan::of(&s, &f, Some(&with), Pass::Edge);
        assert_eq!(plan.keys_needed(), Some(("u9", vec![DataClass::PII_DOB, DataClass::PII_NAME])));
        let without = json!({"name": "Z"});
        let plan = Plan::of(&s, &f, Some(&without), Pass::Edge);
        assert_eq!(plan.keys_needed(), Some((FALLBACK_SUBJECT, vec![DataClass::PII_NAME])));
        assert_eq!(Plan::of(&s, &f, Some(&json!({"user": "u9"})), Pass::Edge), Plan::Nothing);
        assert_eq!(Plan::of(&s, &f, None, Pass::Edge), Plan::WholeBody);
        assert_eq!(Plan::of(&s, &f, None, Pass::Stored), Plan::Nothing, "sealed whole at the edge");
        assert_eq!(Plan::WholeBody.keys_needed(), Some((FALLBACK_SUBJECT, vec![WHOLE_BODY_CLASS])));
        assert_eq!(Plan::of(&Sensitive::default(), &f, None, Pass::Edge), Plan::Nothing, "nothing declared");
    }

    #[test]
    fn invalid_declarations_are_refused_with_the_reason() {
        let f = fields(FIELDS);
        let reads = [("event.id".to_owned(), "/event/id".to_owned())];
        let cases = [
            ("\"/name\" = \"pii.shoe_size\"\nsubject = \"user_id\"", "unknown data class"),
            ("\"name\" = \"pii.name\"\nsubject = \"user_id\"", "neither 'subject' nor a JSON pointer"),
            ("\"/na~2me\" = \"pii.name\"\nsubject = \"user_id\"", "'~' must be followed by 0 or 1"),
            ("\"/name\" = \"pii.name\"", "sensitive.subject is missing"),
            ("\"/name\" = \"pii.name\"\nsubject = \"account\"", "'account' is not a field of [fields]"),
            ("\"/user\" = \"pii.name\"\nsubject = \"user_id\"", "fields.user_id[0] reads '/user'"),
            ("\"/case\" = \"pii.document\"\nsubject = \"user_id\"", "fields.case_id[0] reads '/case/id'"),
            ("\"/event/*\" = \"pii.document\"\nsubject = \"user_id\"", "event.id reads '/event/id'"),
            ("\"/a\" = \"pii.address\"\n\"/a/b\" = \"pii.name\"\nsubject = \"user_id\"", "is inside"),
            ("subject = \"user_id\"", "no pointer is declared"),
            ("subject = \"User\"", "not a field name"),
        ];
        for (body, want) in cases {
            let text = format!("[sensitive]\n{body}\n");
            let e = match parse(&text) {
                Err(e) => e,
                Ok(s) => s.validate(&f, &reads).expect_err(want),
            };
            assert!(e.contains(want), "{body}: {e} should mention {want}");
        }
    }

    #[test]
    fn a_stored_pass_leaves_sealed_values_and_seals_those_in_clear() {
        use riverbank_crypto::field::{self, FieldContext};
        use riverbank_crypto::keys::Dek;
        let s =
            parse("[sensitive]\nsubject = \"user_id\"\n\"/name\" = \"pii.name\"\n\"/dob\" = \"pii.dob\"\n")
                .expect("valid");
        let f = fields(FIELDS);
        let dek = Dek::generate().expect("dek");
        let key_id = field::key_id("u1", DataClass::PII_NAME, 1);
        let ctx =
            FieldContext { tenant: "t", environment: "live", subject: "u1", field: "/name", record: "r" };
        let sealed = field::seal(&dek, &key_id, &ctx, b"\"Zeb\"").expect("seals");
        let body = json!({"user": "u1", "name": sealed, "dob": "1990-01-02"});
        let stored = Plan::of(&s, &f, Some(&body), Pass::Stored);
        assert_eq!(
            stored,
            Plan::Fields {
                subject: "u1".to_owned(),
                sites: vec![Site { pointer: "/dob".to_owned(), class: DataClass::PII_DOB }]
            }
        );
        let edge = Plan::of(&s, &f, Some(&body), Pass::Edge);
        assert!(
            matches!(&edge, Plan::Fields { sites, .. } if sites.len() == 2),
            "the edge trusts no envelope: {edge:?}"
        );
    }

    #[test]
    fn a_definition_with_a_bad_declaration_is_refused_at_load() {
        let def = |sensitive: &str| {
            crate::provider::ProviderDef::parse(
                "p.toml",
                &format!(
                    "name = \"p\"\n[signature]\nscheme = \"hmac_sha256\"\nheader = \"x-sig\"\nencoding = \"hex\"\n\
                     [event]\nid = {{ pointer = \"/id\" }}\ntype = {{ pointer = \"/type\" }}\n\
                     [event.types]\n\"ok\" = \"kyc.case_approved\"\n\
                     [fields]\nuser_id = {{ pointer = \"/user\" }}\n[sensitive]\n{sensitive}\n"
                ),
            )
        };
        def("subject = \"user_id\"\n\"/name\" = \"pii.name\"").expect("valid");
        for (bad, want) in [
            ("subject = \"user_id\"\n\"/name\" = \"pii.nickname\"", "unknown data class"),
            ("subject = \"user_id\"\n\"/id\" = \"pii.document\"", "event.id reads '/id'"),
            ("subject = \"user_id\"\n\"/type\" = \"pii.document\"", "event.type reads '/type'"),
            ("subject = \"case\"\n\"/name\" = \"pii.name\"", "not a field of [fields]"),
        ] {
            let e = def(bad).expect_err(want).to_string();
            assert!(
                e.starts_with("provider definition p.toml: ") && e.contains(want),
                "{e} should mention {want}"
            );
        }
    }
}
