//! Data keys and the keys that wrap them (envelope encryption).
//!
//! - A **data key** ([`Dek`], 256 bits) encrypts the fields of one (tenant, environment, subject, data
//!   class) — and one *version* of that: erasure destroys a version for good and a later seal for the same
//!   subject creates the next one. Data keys are stored only wrapped ([`WrappedDek`]).
//! - A **key-encryption key** (KEK, 256 bits) wraps data keys of one [`DataClass`]. Each class has exactly
//!   one *active* KEK: new data keys are wrapped under it. Older KEKs of the class stay in the ring to
//!   unwrap what they wrapped until `riverbank keys rewrap` has moved every data key to the active one;
//!   then they can be removed.
//! - A wrap is AES-256-GCM under the KEK with a random 96-bit nonce, and its associated data is the
//!   canonical, length-prefixed encoding of the [`DekContext`], so a wrapped key copied to another tenant,
//!   subject, class or version does not unwrap.
//!
//! [`KeyWrapper`] is the interface a KMS or Vault transit engine implements. With Vault transit: one
//! transit key per data class (`riverbank-pii-name`, …), `wrap` = `POST transit/encrypt/<key>` with
//! `plaintext` = base64 of the DEK and `context` = base64 of [`DekContext::aad`] (a `derived` key, so the
//! context is bound), `kek_id` = `<key>:v<version>` from the returned `vault:vN:` prefix, the Vault
//! ciphertext stored in `WrappedDek::ciphertext` (with an all-zero nonce: Vault carries its own);
//! `unwrap` = `transit/decrypt`; `active_kek_id` = the key's `latest_version`. Vault's own `rewrap`
//! endpoint then does what `riverbank keys rewrap` does with the local ring. With AWS KMS: `Encrypt` /
//! `Decrypt` with `EncryptionContext` = the context fields, `kek_id` = the key ARN. The key material never
//! leaves the KMS; only unwrapped data keys are held (briefly, in a bounded cache) by the process.
use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::{Zeroize, Zeroizing};

/// Everything that can go wrong in this crate's keys and envelopes. The messages never carry key bytes or
/// clear text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("unknown data class {0:?} (known: {known})", known = DataClass::ALL.map(|c| c.as_str()).join(", "))]
    UnknownDataClass(String),
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    #[error("no key-encryption key with id {0:?} in the key ring")]
    UnknownKek(String),
    #[error("no active key-encryption key for data class {0}")]
    NoActiveKek(DataClass),
    #[error("key-encryption key {kek_id:?} is for data class {kek_class}, not {wanted}")]
    KekClassMismatch { kek_id: String, kek_class: DataClass, wanted: DataClass },
    #[error("invalid key ring: {0}")]
    KeyRing(String),
    #[error("invalid key id {0:?}")]
    KeyId(String),
    #[error("malformed sealed field: {0}")]
    Malformed(&'static str),
    #[error("unsupported envelope version {0:?}")]
    UnsupportedVersion(String),
    #[error("field of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Authentication failed: wrong key, wrong associated data (moved to another tenant, subject, field or
    /// record), or a tampered ciphertext. AES-GCM cannot tell these apart, by design.
    #[error("decryption refused: wrong key, wrong context or tampered ciphertext")]
    Refused,
}

/// A data class: what kind of personal or sensitive financial data a field holds. Each class has its own
/// key-encryption key and masking rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataClass(&'static str);

impl DataClass {
    pub const PII_NAME: DataClass = DataClass("pii.name");
    pub const PII_DOB: DataClass = DataClass("pii.dob");
    pub const PII_NATIONAL_ID: DataClass = DataClass("pii.national_id");
    pub const PII_ADDRESS: DataClass = DataClass("pii.address");
    pub const PII_PHONE: DataClass = DataClass("pii.phone");
    pub const PII_EMAIL: DataClass = DataClass("pii.email");
    pub const PII_DOCUMENT: DataClass = DataClass("pii.document");
    pub const PII_IP: DataClass = DataClass("pii.ip");
    pub const FINANCIAL_BANK_ACCOUNT: DataClass = DataClass("financial.bank_account");
    pub const FINANCIAL_CARD_TOKEN: DataClass = DataClass("financial.card_token");

    /// Every known class.
    pub const ALL: [DataClass; 10] = [
        Self::PII_NAME,
        Self::PII_DOB,
        Self::PII_NATIONAL_ID,
        Self::PII_ADDRESS,
        Self::PII_PHONE,
        Self::PII_EMAIL,
        Self::PII_DOCUMENT,
        Self::PII_IP,
        Self::FINANCIAL_BANK_ACCOUNT,
        Self::FINANCIAL_CARD_TOKEN,
    ];

    /// A known class by its name (exact, lower case).
    pub fn parse(name: &str) -> Result<DataClass, CryptoError> {
        Self::ALL
            .into_iter()
            .find(|c| c.0 == name)
            .ok_or_else(|| CryptoError::UnknownDataClass(name.chars().take(64).collect()))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataClass({})", self.0)
    }
}

impl std::str::FromStr for DataClass {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataClass::parse(s)
    }
}

impl serde::Serialize for DataClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DataClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        DataClass::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// Length of every key in this module (AES-256), in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of an AES-GCM nonce, in bytes (96 bits).
pub const NONCE_BYTES: usize = 12;
/// Length of an AES-GCM tag, in bytes.
pub const TAG_BYTES: usize = 16;

/// 96 random bits from the operating system, for one AES-GCM encryption.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_BYTES], CryptoError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(nonce)
}

/// Append `bytes` to `out` prefixed by its length (u32, big endian): the canonical encoding of associated
/// data, so no two different contexts encode to the same bytes.
pub(crate) fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A 256-bit data key. Zeroized on drop; its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Dek([u8; KEY_BYTES]);

impl Drop for Dek {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Dek {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Dek, CryptoError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Dek(bytes))
    }

    /// A key from its bytes (an unwrapped key from a KMS, a test vector).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Dek {
        Dek(bytes)
    }

    /// The key bytes, for a [`KeyWrapper`] implementation to wrap. Do not log or store them.
    pub fn expose_secret(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// What a wrapped data key is bound to (the associated data of the wrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DekContext<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub subject: &'a str,
    pub class: DataClass,
    /// The key's version for this (tenant, environment, subject, class): 1, then one more after each
    /// erasure.
    pub version: u32,
}

impl DekContext<'_> {
    /// The canonical, length-prefixed encoding used as associated data (domain separated from fields).
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.tenant.len() + self.subject.len());
        put_lp(&mut out, b"riverbank.dek.v1");
        put_lp(&mut out, self.tenant.as_bytes());
        put_lp(&mut out, self.environment.as_bytes());
        put_lp(&mut out, self.subject.as_bytes());
        put_lp(&mut out, self.class.as_str().as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// A data key as stored: encrypted under the key-encryption key `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek {
    pub kek_id: String,
    pub nonce: [u8; NONCE_BYTES],
    pub ciphertext: Vec<u8>,
}

/// Wraps and unwraps data keys: the local [`KeyRing`], or a KMS / Vault transit client (see the module
/// documentation for how one maps onto this).
pub trait KeyWrapper: Send + Sync {
    /// Wrap `dek` under the active key-encryption key of `ctx.class`, bound to `ctx`.
    fn wrap(&self, ctx: &DekContext, dek: &Dek) -> Result<WrappedDek, CryptoError>;
    /// Unwrap under `w.kek_id`, which must be a key of `ctx.class`; refused if `ctx` is not the context
    /// the key was wrapped with.
    fn unwrap(&self, ctx: &DekContext, w: &WrappedDek) -> Result<Dek, CryptoError>;
    /// The id new data keys of `class` are wrapped under; `None` if the class has none.
    fn active_kek_id(&self, class: &DataClass) -> Option<String>;
}

/// A key-encryption key as configured: `key` is 64 hex characters (256 bits).
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KekEntry {
    pub id: String,
    pub class: String,
    pub key: String,
    /// Whether new data keys of `class` are wrapped under this one (exactly one per class).
    pub active: bool,
}

impl fmt::Debug for KekEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KekEntry")
            .field("id", &self.id)
            .field("class", &self.class)
            .field("key", &"<redacted>")
            .field("active", &self.active)
            .finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keks: Vec<KekEntry>,
}

/// Longest key-encryption key id, in bytes.
pub const KEK_ID_BYTES_MAX: usize = 64;

struct Kek {
    class: DataClass,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

/// The local key ring: 256-bit key-encryption keys by id, each for one data class, one active per class.
pub struct KeyRing {
    keks: BTreeMap<String, Kek>,
    active: BTreeMap<DataClass, String>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kek_ids", &self.keks.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn valid_kek_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= KEK_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl KeyRing {
    /// A ring from configured entries. Refuses: a malformed id, a duplicate id, an unknown class, a key
    /// that is not 64 hex characters or is all zeros, the same key bytes under two ids, and a class with
    /// keys but not exactly one active. Classes without any key are allowed (wrapping for them fails
    /// with [`CryptoError::NoActiveKek`]); see [`KeyRing::missing_classes`].
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a KekEntry>) -> Result<KeyRing, CryptoError> {
        let mut keks = BTreeMap::new();
        let mut active: BTreeMap<DataClass, String> = BTreeMap::new();
        let mut classes = Vec::new();
        for e in entries {
            if !valid_kek_id(&e.id) {
                return Err(CryptoError::KeyRing(format!(
                    "key id {:?} must be 1 to {KEK_ID_BYTES_MAX} characters of A-Z a-z 0-9 - _ . :",
                    e.id.chars().take(80).collect::<String>()
                )));
            }
            let class = DataClass::parse(&e.class)
                .map_err(|err| CryptoError::KeyRing(format!("key {}: {err}", e.id)))?;
            let mut key = Zeroizing::new([0u8; KEY_BYTES]);
            hex::decode_to_slice(e.key.trim(), key.as_mut_slice()).map_err(|_| {
                CryptoError::KeyRing(format!(
                    "key {}: the key must be {} hex characters",
                    e.id,
                    KEY_BYTES * 2
                ))
            })?;
            if key.iter().all(|b| *b == 0) {
                return Err(CryptoError::KeyRing(format!("key {}: an all-zero key is refused", e.id)));
            }
            if keks.values().any(|k: &Kek| *k.key == *key) {
                return Err(CryptoError::KeyRing(format!(
                    "key {}: the same key bytes appear under another id",
                    e.id
                )));
            }
            if keks.insert(e.id.clone(), Kek { class, key }).is_some() {
                return Err(CryptoError::KeyRing(format!("key id {} appears twice", e.id)));
            }
            classes.push(class);
            if e.active {
                if let Some(other) = active.insert(class, e.id.clone()) {
                    return Err(CryptoError::KeyRing(format!(
                        "class {class} has two active keys: {other} and {}",
                        e.id
                    )));
                }
            }
        }
        if let Some(class) = classes.iter().find(|c| !active.contains_key(c)) {
            return Err(CryptoError::KeyRing(format!("class {class} has keys but none is active")));
        }
        Ok(KeyRing { keks, active })
    }

    /// A ring from the text of a key file: JSON `{"keks": [{"id", "class", "key", "active"}, …]}` with the
    /// same rules as [`KeyRing::from_entries`]. (Reading the file is the caller's business: no I/O here.)
    pub fn parse_file(text: &str) -> Result<KeyRing, CryptoError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            // serde_json's message names the position and the field, never the value.
            CryptoError::KeyRing(format!("key file: {e}"))
        })?;
        Self::from_entries(&file.keks)
    }

    /// The ids of every key in the ring.
    pub fn kek_ids(&self) -> impl Iterator<Item = &str> {
        self.keks.keys().map(String::as_str)
    }

    /// The class of key `kek_id`, if the ring has it.
    pub fn class_of(&self, kek_id: &str) -> Option<DataClass> {
        self.keks.get(kek_id).map(|k| k.class)
    }

    /// Known classes without an active key.
    pub fn missing_classes(&self) -> Vec<DataClass> {
        DataClass::ALL.into_iter().filter(|c| !self.active.contains_key(c)).collect()
    }

    fn kek(&self, kek_id: &str, class: DataClass) -> Result<&Kek, CryptoError> {
        let kek = self.keks.get(kek_id).ok_or_else(|| CryptoError::UnknownKek(kek_id.to_string()))?;
        if kek.class != class {
            return Err(CryptoError::KekClassMismatch {
                kek_id: kek_id.to_string(),
                kek_class: kek.class,
                wanted: class,
            });
        }
        Ok(kek)
    }
}

impl KeyWrapper for KeyRing {
    fn wrap(&self, ctx: &DekContext, dek: &Dek) -> Result<WrappedDek, CryptoError> {
        let kek_id = self.active.get(&ctx.class).ok_or(CryptoError::NoActiveKek(ctx.class))?;
        let kek = self.kek(kek_id, ctx.class)?;
        let nonce = random_nonce()?;
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek.key.as_slice()));
        let aad = ctx.aad();
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: dek.expose_secret(), aad: &aad })
            .map_err(|_| CryptoError::Refused)?;
        Ok(WrappedDek { kek_id: kek_id.clone(), nonce, ciphertext })
    }

    fn unwrap(&self, ctx: &DekContext, w: &WrappedDek) -> Result<Dek, CryptoError> {
        let kek = self.kek(&w.kek_id, ctx.class)?;
        if w.ciphertext.len() != KEY_BYTES + TAG_BYTES {
            return Err(CryptoError::Malformed("a wrapped data key is 48 bytes"));
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek.key.as_slice()));
        let aad = ctx.aad();
        let clear = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&w.nonce), Payload { msg: &w.ciphertext, aad: &aad })
                .map_err(|_| CryptoError::Refused)?,
        );
        let mut bytes = [0u8; KEY_BYTES];
        bytes.copy_from_slice(&clear);
        Ok(Dek(bytes))
    }

    fn active_kek_id(&self, class: &DataClass) -> Option<String> {
        self.active.get(class).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, class: &str, byte: u8, active: bool) -> KekEntry {
        KekEntry { id: id.into(), class: class.into(), key: hex::encode([byte; 32]), active }
    }

    fn ctx(subject: &str) -> DekContext<'_> {
        DekContext { tenant: "t1", environment: "sandbox", subject, class: DataClass::PII_NAME, version: 1 }
    }

    #[test]
    fn data_classes_parse_and_refuse() {
        for c in DataClass::ALL {
            assert_eq!(DataClass::parse(c.as_str()), Ok(c));
        }
        assert!(matches!(DataClass::parse("pii.Name"), Err(CryptoError::UnknownDataClass(_))));
        assert!(matches!(DataClass::parse("pii"), Err(CryptoError::UnknownDataClass(_))));
        let json = serde_json::to_string(&DataClass::PII_DOB).expect("serialize");
        assert_eq!(json, "\"pii.dob\"");
        assert_eq!(serde_json::from_str::<DataClass>(&json).expect("deserialize"), DataClass::PII_DOB);
        assert!(serde_json::from_str::<DataClass>("\"pii.shoe_size\"").is_err());
    }

    #[test]
    fn dek_debug_hides_the_bytes() {
        let dek = Dek::from_bytes([0xab; 32]);
        assert_eq!(format!("{dek:?}"), "Dek(<redacted>)");
        let e = entry("k1", "pii.name", 0xcd, true);
        assert!(!format!("{e:?}").contains("cdcd"));
        let ring = KeyRing::from_entries([&e]).expect("ring");
        assert!(!format!("{ring:?}").contains("cdcd"));
    }

    #[test]
    fn wrap_round_trips_and_binds_the_context() {
        let ring = KeyRing::from_entries(&[entry("k1", "pii.name", 1, true)]).expect("ring");
        let dek = Dek::generate().expect("dek");
        let w = ring.wrap(&ctx("s1"), &dek).expect("wrap");
        assert_eq!(w.kek_id, "k1");
        assert_eq!(ring.unwrap(&ctx("s1"), &w).expect("unwrap").expose_secret(), dek.expose_secret());
        // Another subject, tenant, environment, class or version: refused.
        assert_eq!(ring.unwrap(&ctx("s2"), &w).map(drop), Err(CryptoError::Refused));
        let other_tenant = DekContext { tenant: "t2", ..ctx("s1") };
        assert_eq!(ring.unwrap(&other_tenant, &w).map(drop), Err(CryptoError::Refused));
        let other_env = DekContext { environment: "production", ..ctx("s1") };
        assert_eq!(ring.unwrap(&other_env, &w).map(drop), Err(CryptoError::Refused));
        let other_version = DekContext { version: 2, ..ctx("s1") };
        assert_eq!(ring.unwrap(&other_version, &w).map(drop), Err(CryptoError::Refused));
        let other_class = DekContext { class: DataClass::PII_DOB, ..ctx("s1") };
        assert!(matches!(ring.unwrap(&other_class, &w), Err(CryptoError::KekClassMismatch { .. })));
        // Tampered.
        let mut t = w.clone();
        t.ciphertext[3] ^= 1;
        assert_eq!(ring.unwrap(&ctx("s1"), &t).map(drop), Err(CryptoError::Refused));
        let mut t = w.clone();
        t.nonce[0] ^= 1;
        assert_eq!(ring.unwrap(&ctx("s1"), &t).map(drop), Err(CryptoError::Refused));
        // Length-prefixing: moving bytes between fields changes the encoding.
        let a = DekContext { tenant: "ab", subject: "c", ..ctx("") };
        let b = DekContext { tenant: "a", subject: "bc", ..ctx("") };
        assert_ne!(a.aad(), b.aad());
    }

    #[test]
    fn rotation_keeps_old_keys_unwrapping() {
        let old = KeyRing::from_entries(&[entry("k1", "pii.name", 1, true)]).expect("ring");
        let w_old = old.wrap(&ctx("s1"), &Dek::generate().expect("dek")).expect("wrap");
        let rotated =
            KeyRing::from_entries(&[entry("k1", "pii.name", 1, false), entry("k2", "pii.name", 2, true)])
                .expect("ring");
        assert_eq!(rotated.active_kek_id(&DataClass::PII_NAME).as_deref(), Some("k2"));
        assert!(rotated.unwrap(&ctx("s1"), &w_old).is_ok());
        let w_new = rotated.wrap(&ctx("s1"), &Dek::generate().expect("dek")).expect("wrap");
        assert_eq!(w_new.kek_id, "k2");
        // With k1 gone, the old wrap no longer unwraps.
        let only_new = KeyRing::from_entries(&[entry("k2", "pii.name", 2, true)]).expect("ring");
        assert_eq!(only_new.unwrap(&ctx("s1"), &w_old).map(drop), Err(CryptoError::UnknownKek("k1".into())));
        assert!(only_new.unwrap(&ctx("s1"), &w_new).is_ok());
    }

    #[test]
    fn bad_rings_are_refused() {
        let cases: Vec<(Vec<KekEntry>, &str)> = vec![
            (vec![entry("k 1", "pii.name", 1, true)], "key id"),
            (vec![entry("k1", "pii.nope", 1, true)], "unknown data class"),
            (vec![entry("k1", "pii.name", 0, true)], "all-zero"),
            (vec![entry("k1", "pii.name", 1, true), entry("k1", "pii.dob", 2, true)], "appears twice"),
            (vec![entry("k1", "pii.name", 1, true), entry("k2", "pii.dob", 1, true)], "same key bytes"),
            (vec![entry("k1", "pii.name", 1, true), entry("k2", "pii.name", 2, true)], "two active"),
            (vec![entry("k1", "pii.name", 1, false)], "none is active"),
            (vec![KekEntry { key: "abcd".into(), ..entry("k1", "pii.name", 1, true) }], "hex characters"),
        ];
        for (entries, want) in cases {
            match KeyRing::from_entries(&entries) {
                Err(CryptoError::KeyRing(msg)) => assert!(msg.contains(want), "{msg:?} should say {want:?}"),
                other => panic!("{entries:?}: expected a key ring error with {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn key_file_parses() {
        let text = format!(
            r#"{{"keks": [{{"id": "name-2026", "class": "pii.name", "key": "{}", "active": true}}]}}"#,
            hex::encode([7u8; 32])
        );
        let ring = KeyRing::parse_file(&text).expect("ring");
        assert_eq!(ring.kek_ids().collect::<Vec<_>>(), ["name-2026"]);
        assert_eq!(ring.class_of("name-2026"), Some(DataClass::PII_NAME));
        assert_eq!(ring.missing_classes().len(), DataClass::ALL.len() - 1);
        assert!(KeyRing::parse_file(r#"{"keks": [], "extra": 1}"#).is_err());
        assert!(KeyRing::parse_file("not json").is_err());
    }

    #[test]
    fn no_active_kek_for_a_class() {
        let ring = KeyRing::from_entries(&[entry("k1", "pii.name", 1, true)]).expect("ring");
        let c = DekContext { class: DataClass::PII_DOB, ..ctx("s") };
        assert_eq!(
            ring.wrap(&c, &Dek::generate().expect("dek")).map(drop),
            Err(CryptoError::NoActiveKek(DataClass::PII_DOB))
        );
    }
}
