//! Sealed fields: one value of personal or sensitive financial data, encrypted with AES-256-GCM under the
//! data key of its (tenant, environment, subject, class, version), as a versioned, self-describing text
//! envelope that fits in any JSON string:
//!
//! ```text
//! rbf1.<key id>.<nonce, base64url>.<ciphertext and tag, base64url>
//! key id = base64url("{subject}/{class}/{version}")
//! ```
//!
//! - **Version.** `rbf1` is the only format; anything else (and any value without the prefix) is refused,
//!   never read as "legacy clear text".
//! - **Key id.** With the tenant and environment of the record, it names the data key in the key store;
//!   it holds the subject id (an opaque, non-personal id such as a user id, never a name or email).
//! - **Associated data.** The canonical, length-prefixed encoding of the envelope version, the key id and
//!   the [`FieldContext`] (tenant, environment, subject, field, record), so a sealed value copied to another
//!   tenant, subject, field or record does not open.
//! - **Nonces.** 96 random bits from the operating system per seal. NIST SP 800-38D limits a key to 2^32
//!   random-nonce encryptions ([`SEALS_PER_KEY_MAX`]), which keeps the chance of a repeated nonce below
//!   2^-32. A data key covers one subject's fields of one class, so reaching the limit takes four billion
//!   sealed values of, say, one person's phone number: never approached, which is why seals are not
//!   counted. (Were a key ever shared more widely, the key store would have to count seals and rotate
//!   the data key before the limit.)
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;

use crate::keys::{put_lp, random_nonce, CryptoError, DataClass, Dek, NONCE_BYTES, TAG_BYTES};

/// The envelope's version prefix.
pub const ENVELOPE_VERSION: &str = "rbf1";
/// Largest clear text a field may hold, in bytes (a document reference or an address, not a document).
pub const FIELD_BYTES_MAX: usize = 64 * 1024;
/// Random-nonce AES-GCM encryptions allowed per key by NIST SP 800-38D (see the module documentation).
pub const SEALS_PER_KEY_MAX: u64 = 1 << 32;
/// Longest subject id a key id may carry, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// Where a sealed value lives; the associated data of its encryption. `field` is the JSON pointer or
/// field name, `record` the event or provider-event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldContext<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub subject: &'a str,
    pub field: &'a str,
    pub record: &'a str,
}

impl FieldContext<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + key_id.len() + self.field.len() + self.record.len());
        put_lp(&mut out, b"riverbank.field");
        put_lp(&mut out, ENVELOPE_VERSION.as_bytes());
        put_lp(&mut out, key_id.as_bytes());
        put_lp(&mut out, self.tenant.as_bytes());
        put_lp(&mut out, self.environment.as_bytes());
        put_lp(&mut out, self.subject.as_bytes());
        put_lp(&mut out, self.field.as_bytes());
        put_lp(&mut out, self.record.as_bytes());
        out
    }
}

/// The key id of a subject's data key for `class`, version `version`.
pub fn key_id(subject: &str, class: DataClass, version: u32) -> String {
    B64.encode(format!("{subject}/{}/{version}", class.as_str()))
}

/// The (subject, class, version) a key id names, if it is one.
pub fn parse_key_id(key_id: &str) -> Option<(String, DataClass, u32)> {
    if key_id.len() > (SUBJECT_BYTES_MAX + 64) * 4 / 3 + 4 {
        return None;
    }
    let raw = String::from_utf8(B64.decode(key_id).ok()?).ok()?;
    // The subject may itself hold '/', so split from the right.
    let mut parts = raw.rsplitn(3, '/');
    let version = parts.next()?;
    let class = DataClass::parse(parts.next()?).ok()?;
    let subject = parts.next()?;
    let version_ok =
        !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
    let version: u32 = version.parse().ok().filter(|_| version_ok)?;
    (!subject.is_empty() && subject.len() <= SUBJECT_BYTES_MAX).then(|| (subject.to_string(), class, version))
}

/// A parsed envelope (still encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    pub key_id: String,
    pub subject: String,
    pub class: DataClass,
    pub version: u32,
    pub nonce: [u8; NONCE_BYTES],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// Seal `plaintext` under `dek` (the data key `key_id` names), bound to `ctx`. `key_id` must be a key id
/// of [`key_id`]'s form whose subject is `ctx.subject`.
pub fn seal(dek: &Dek, key_id: &str, ctx: &FieldContext, plaintext: &[u8]) -> Result<String, CryptoError> {
    if plaintext.len() > FIELD_BYTES_MAX {
        return Err(CryptoError::TooLarge { len: plaintext.len(), max: FIELD_BYTES_MAX });
    }
    let (subject, _, _) =
        parse_key_id(key_id).ok_or_else(|| CryptoError::KeyId(key_id.chars().take(80).collect()))?;
    if subject != ctx.subject {
        return Err(CryptoError::KeyId("the key id names another subject than the field context".into()));
    }
    let nonce = random_nonce()?;
    let aad = ctx.aad(key_id);
    let ct = dek
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| CryptoError::Refused)?;
    Ok(format!("{ENVELOPE_VERSION}.{key_id}.{}.{}", B64.encode(nonce), B64.encode(ct)))
}

/// Parse an envelope, with a reason when it is not one.
pub fn parse_strict(sealed: &str) -> Result<SealedField, CryptoError> {
    let mut parts = sealed.split('.');
    let version = parts.next().unwrap_or_default();
    if version != ENVELOPE_VERSION {
        return Err(CryptoError::UnsupportedVersion(version.chars().take(16).collect()));
    }
    let (Some(key_id), Some(nonce), Some(ct), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CryptoError::Malformed("expected rbf1.<key id>.<nonce>.<ciphertext>"));
    };
    let (subject, class, version) = parse_key_id(key_id).ok_or(CryptoError::Malformed("bad key id"))?;
    let nonce: [u8; NONCE_BYTES] = B64
        .decode(nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(CryptoError::Malformed("the nonce is not 12 bytes of base64url"))?;
    if ct.len() > (FIELD_BYTES_MAX + TAG_BYTES) * 4 / 3 + 4 {
        return Err(CryptoError::TooLarge { len: ct.len() * 3 / 4, max: FIELD_BYTES_MAX });
    }
    let ciphertext = B64.decode(ct).map_err(|_| CryptoError::Malformed("the ciphertext is not base64url"))?;
    if ciphertext.len() < TAG_BYTES {
        return Err(CryptoError::Malformed("the ciphertext is shorter than its tag"));
    }
    Ok(SealedField { key_id: key_id.to_string(), subject, class, version, nonce, ciphertext })
}

/// Parse an envelope; `None` if `sealed` is not one.
pub fn parse(sealed: &str) -> Option<SealedField> {
    parse_strict(sealed).ok()
}

/// Whether `value` is a well-formed envelope (it may still not open).
pub fn is_sealed(value: &str) -> bool {
    parse(value).is_some()
}

/// Open `sealed` with `dek`, checking it belongs at `ctx`. Refused for a wrong key, a wrong context, a
/// tampered envelope, an unknown version, or a subject other than `ctx.subject`.
pub fn open(dek: &Dek, ctx: &FieldContext, sealed: &str) -> Result<Vec<u8>, CryptoError> {
    let s = parse_strict(sealed)?;
    if s.subject != ctx.subject {
        return Err(CryptoError::Refused);
    }
    let aad = ctx.aad(&s.key_id);
    dek.cipher()
        .decrypt(Nonce::from_slice(&s.nonce), Payload { msg: &s.ciphertext, aad: &aad })
        .map_err(|_| CryptoError::Refused)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const CTX: FieldContext<'static> =
        FieldContext { tenant: "t1", environment: "sandbox", subject: "u-1", field: "/name", record: "ev-1" };

    fn kid() -> String {
        key_id("u-1", DataClass::PII_NAME, 1)
    }

    #[test]
    fn round_trip_and_shape() {
        let dek = Dek::generate().expect("dek");
        let sealed = seal(&dek, &kid(), &CTX, b"Ada Lovelace").expect("seal");
        assert!(sealed.starts_with("rbf1."));
        assert!(!sealed.contains("Ada"));
        assert!(is_sealed(&sealed));
        let p = parse(&sealed).expect("parse");
        assert_eq!((p.subject.as_str(), p.class, p.version), ("u-1", DataClass::PII_NAME, 1));
        assert_eq!(p.key_id, kid());
        assert_eq!(open(&dek, &CTX, &sealed).expect("open"), b"Ada Lovelace");
        assert_eq!(open(&dek, &CTX, &seal(&dek, &kid(), &CTX, b"").expect("seal")).expect("open"), b"");
    }

    #[test]
    fn key_ids_round_trip_with_slashes_in_subjects() {
        for (subject, class, version) in [
            ("u-1", DataClass::PII_DOB, 1),
            ("a/b/c", DataClass::FINANCIAL_CARD_TOKEN, 42),
            ("x", DataClass::PII_IP, u32::MAX),
        ] {
            let id = key_id(subject, class, version);
            assert!(!id.contains('.'));
            assert_eq!(parse_key_id(&id), Some((subject.to_string(), class, version)));
        }
        for bad in [
            "u/pii.name/0",
            "u/pii.name/01",
            "u/pii.nope/1",
            "/pii.name/1",
            "u/pii.name/",
            "u/pii.name/4294967296",
        ] {
            assert_eq!(parse_key_id(&B64.encode(bad)), None, "{bad}");
        }
        assert_eq!(parse_key_id("!!"), None);
    }

    #[test]
    fn seal_refuses_a_key_id_of_another_subject_and_oversized_fields() {
        let dek = Dek::generate().expect("dek");
        let other = key_id("u-2", DataClass::PII_NAME, 1);
        assert!(matches!(seal(&dek, &other, &CTX, b"x"), Err(CryptoError::KeyId(_))));
        assert!(matches!(seal(&dek, "nonsense", &CTX, b"x"), Err(CryptoError::KeyId(_))));
        let big = vec![0u8; FIELD_BYTES_MAX + 1];
        assert!(matches!(seal(&dek, &kid(), &CTX, &big), Err(CryptoError::TooLarge { .. })));
    }

    #[test]
    fn wrong_context_wrong_key_and_tampering_are_refused() {
        let dek = Dek::generate().expect("dek");
        let sealed = seal(&dek, &kid(), &CTX, b"1985-03-04").expect("seal");
        let moved = [
            FieldContext { tenant: "t2", ..CTX },
            FieldContext { environment: "production", ..CTX },
            FieldContext { field: "/dob", ..CTX },
            FieldContext { record: "ev-2", ..CTX },
            FieldContext { subject: "u-2", ..CTX },
        ];
        for ctx in moved {
            assert_eq!(open(&dek, &ctx, &sealed), Err(CryptoError::Refused), "{ctx:?}");
        }
        assert_eq!(open(&Dek::generate().expect("dek"), &CTX, &sealed), Err(CryptoError::Refused));
        // The same ciphertext relabelled with another key id (another version) does not open.
        let p = parse(&sealed).expect("parse");
        let relabelled = sealed.replace(&p.key_id, &key_id("u-1", DataClass::PII_NAME, 2));
        assert_eq!(open(&dek, &CTX, &relabelled), Err(CryptoError::Refused));
        // Unknown versions and non-envelopes are refused, never read as clear text.
        assert!(matches!(
            open(&dek, &CTX, &sealed.replacen("rbf1", "rbf2", 1)),
            Err(CryptoError::UnsupportedVersion(_))
        ));
        assert!(matches!(open(&dek, &CTX, "1985-03-04"), Err(CryptoError::UnsupportedVersion(_))));
        assert!(!is_sealed("1985-03-04"));
        assert!(!is_sealed(&format!("{sealed}.x")));
        assert!(matches!(open(&dek, &CTX, "rbf1.a.b"), Err(CryptoError::Malformed(_))));
    }

    #[test]
    fn nonces_do_not_repeat_over_many_seals() {
        let dek = Dek::generate().expect("dek");
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let nonce = parse(&seal(&dek, &kid(), &CTX, b"x").expect("seal")).expect("parse").nonce;
            assert!(seen.insert(nonce), "nonce repeated");
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip_and_tamper(
            clear in proptest::collection::vec(any::<u8>(), 0..512),
            key in any::<[u8; 32]>(),
            tenant in "[a-z0-9]{1,12}",
            subject in "[a-zA-Z0-9/_-]{1,40}",
            field in "/[a-z_/]{0,20}",
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let dek = Dek::from_bytes(key);
            let ctx = FieldContext { tenant: &tenant, environment: "sandbox", subject: &subject, field: &field, record: "r" };
            let kid = key_id(&subject, DataClass::PII_ADDRESS, 3);
            let sealed = seal(&dek, &kid, &ctx, &clear).expect("seal");
            prop_assert_eq!(open(&dek, &ctx, &sealed).expect("open"), clear.clone());
            let p = parse(&sealed).expect("parse");
            prop_assert_eq!(p.subject, subject.clone());
            // Flip one bit of the ciphertext or tag: refused.
            let mut ct = p.ciphertext.clone();
            let i = flip.index(ct.len());
            ct[i] ^= 1 << bit;
            let tampered = format!("rbf1.{}.{}.{}", p.key_id, B64.encode(p.nonce), B64.encode(&ct));
            prop_assert_eq!(open(&dek, &ctx, &tampered), Err(CryptoError::Refused));
            // Another record: refused.
            let other = FieldContext { record: "r2", ..ctx };
            prop_assert_eq!(open(&dek, &other, &sealed), Err(CryptoError::Refused));
        }

        #[test]
        fn prop_unknown_versions_are_refused(version in "[a-z0-9]{1,6}") {
            prop_assume!(version != ENVELOPE_VERSION);
            let dek = Dek::from_bytes([3; 32]);
            let sealed = seal(&dek, &kid(), &CTX, b"x").expect("seal");
            let other = sealed.replacen(ENVELOPE_VERSION, &version, 1);
            prop_assert!(matches!(open(&dek, &CTX, &other), Err(CryptoError::UnsupportedVersion(_))));
            prop_assert!(!is_sealed(&other));
        }

        #[test]
        fn prop_parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
            let _ = parse(&format!("rbf1.{s}"));
        }
    }
}
