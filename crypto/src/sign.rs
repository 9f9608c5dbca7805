//! Ed25519 signatures over audit checkpoints, under key ids.
//!
//! - [`CheckpointSigner`] holds the signing key, built from a 32-byte seed given as 64 hex digits. Its
//!   key id is `ed25519:` followed by the first 16 hex digits of SHA-256 of the public key, so a verifier
//!   with the public key alone derives the same id. Signatures are standard base64 (with padding) of
//!   the 64-byte Ed25519 signature. `Debug` prints the key id, never the seed.
//! - [`VerifyingKeys`] maps key ids to public keys (parsed from `id=hex` or the public key hex alone)
//!   and verifies strictly (`verify_strict`: no small-order keys, no malleable signatures), with a
//!   distinct error for an unknown key id, a badly encoded signature and a signature that does not
//!   verify.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The prefix of every key id this module derives.
pub const KEY_ID_PREFIX: &str = "ed25519:";

/// How many hex digits of SHA-256(public key) a key id carries (64 bits).
pub const KEY_ID_HEX_DIGITS: usize = 16;

/// What went wrong loading a key or verifying a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signing seed must be 64 hex digits (32 bytes)")]
    BadSeed,
    #[error("public key {0:?}: must be 64 hex digits (32 bytes) of a valid Ed25519 point, optionally prefixed by `key_id=`")]
    BadPublicKey(String),
    #[error("key id {given:?} does not match the public key, whose key id is {derived:?}")]
    KeyIdMismatch { given: String, derived: String },
    #[error("key id {0:?} is given twice with different public keys")]
    DuplicateKeyId(String),
    #[error("no public key for key id {0:?}")]
    UnknownKeyId(String),
    #[error("the signature is not standard base64 of 64 bytes")]
    BadEncoding,
    #[error("the signature does not verify under key id {0:?}")]
    BadSignature(String),
}

/// The key id of an Ed25519 public key: `ed25519:` + the first 16 hex digits of SHA-256(public key).
pub fn key_id_of(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    let mut id = String::with_capacity(KEY_ID_PREFIX.len() + KEY_ID_HEX_DIGITS);
    id.push_str(KEY_ID_PREFIX);
    id.push_str(&hex::encode(&digest[..KEY_ID_HEX_DIGITS / 2]));
    id
}

/// Signs checkpoints with one Ed25519 key.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// From a 32-byte Ed25519 seed (the RFC 8032 private key) as 64 hex digits; surrounding
    /// whitespace is ignored.
    pub fn from_seed_hex(seed_hex: &str) -> Result<Self, SignError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(seed_hex.trim(), &mut seed[..]).map_err(|_| SignError::BadSeed)?;
        Ok(Self::from_seed(&seed))
    }

    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id_of(key.verifying_key().as_bytes());
        Self { key, key_id }
    }

    /// `ed25519:` + the first 16 hex digits of SHA-256 of the public key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as 64 hex digits (what verifiers are given).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The Ed25519 signature of `msg`, standard base64 with padding (88 characters).
    pub fn sign(&self, msg: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(msg).to_bytes())
    }

    /// A verifier that knows this signer's public key.
    pub fn verifying_keys(&self) -> VerifyingKeys {
        let mut keys = VerifyingKeys::new();
        keys.keys.insert(self.key_id.clone(), self.key.verifying_key());
        keys
    }
}

/// Public keys by key id.
#[derive(Clone, Default)]
pub struct VerifyingKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl VerifyingKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses each spec with [`Self::add`].
    pub fn parse<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<Self, SignError> {
        let mut keys = Self::new();
        for spec in specs {
            keys.add(spec)?;
        }
        Ok(keys)
    }

    /// Adds a public key given as `key_id=hex` or as the 64 hex digits alone (its key id is then
    /// derived). An explicit id that starts with `ed25519:` must be the derived one (a typo would
    /// otherwise make every checkpoint "unknown key id"); other explicit ids are taken as given.
    /// Returns the key id.
    pub fn add(&mut self, spec: &str) -> Result<String, SignError> {
        let spec = spec.trim();
        let (given, key_hex) = match spec.split_once('=') {
            Some((id, key)) => (Some(id.trim()), key.trim()),
            None => (None, spec),
        };
        let bad = || SignError::BadPublicKey(spec.chars().take(80).collect());
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(key_hex, &mut bytes).map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
        if key.is_weak() {
            return Err(bad());
        }
        let derived = key_id_of(&bytes);
        let id = match given {
            None => derived,
            Some("") => return Err(bad()),
            Some(id) if id.starts_with(KEY_ID_PREFIX) && id != derived => {
                return Err(SignError::KeyIdMismatch { given: id.to_string(), derived })
            }
            Some(id) => id.to_string(),
        };
        match self.keys.get(&id) {
            Some(existing) if *existing != key => Err(SignError::DuplicateKeyId(id)),
            _ => {
                self.keys.insert(id.clone(), key);
                Ok(id)
            }
        }
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The known key ids, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `signature_b64` (standard base64 of 64 bytes) over `msg` under the key named `key_id`.
    pub fn verify(&self, key_id: &str, msg: &[u8], signature_b64: &str) -> Result<(), SignError> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SignError::UnknownKeyId(key_id.chars().take(80).collect()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| SignError::BadEncoding)?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| SignError::BadEncoding)?;
        let signature = Signature::from_bytes(&raw);
        key.verify_strict(msg, &signature).map_err(|_| SignError::BadSignature(key_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::engine::general_purpose::STANDARD;

    /// RFC 8032 §7.1 TEST 1 and TEST 2: (seed, public key, message, signature).
    const RFC8032: [(&str, &str, &str, &str); 2] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ];

    #[test]
    fn signs_and_derives_keys_as_rfc_8032_says() {
        for (seed, public, msg, sig) in RFC8032 {
            let signer = CheckpointSigner::from_seed_hex(seed).unwrap();
            assert_eq!(signer.public_key_hex(), public);
            let msg = hex::decode(msg).unwrap();
            let got = signer.sign(&msg);
            assert_eq!(hex::encode(STANDARD.decode(&got).unwrap()), sig);
            let keys = VerifyingKeys::parse([public]).unwrap();
            keys.verify(signer.key_id(), &msg, &got).unwrap();
        }
    }

    #[test]
    fn key_id_is_the_prefix_of_the_public_key_digest() {
        let signer = CheckpointSigner::from_seed_hex(RFC8032[0].0).unwrap();
        let public = hex::decode(RFC8032[0].1).unwrap();
        let digest = hex::encode(Sha256::digest(&public));
        assert_eq!(signer.key_id(), format!("ed25519:{}", &digest[..16]));
        assert_eq!(signer.key_id().len(), "ed25519:".len() + 16);
    }

    #[test]
    fn debug_never_prints_the_seed() {
        let (seed, public, _, _) = RFC8032[0];
        let signer = CheckpointSigner::from_seed_hex(seed).unwrap();
        let shown = format!("{signer:?} {signer:#?}");
        assert!(shown.contains(signer.key_id()), "{shown}");
        assert!(!shown.contains(seed) && !shown.contains(&seed[..8]), "{shown}");
        assert!(!shown.contains(&seed.to_uppercase()[..8]), "{shown}");
        assert!(!shown.contains(public), "{shown}");
        let keys = signer.verifying_keys();
        assert_eq!(format!("{keys:?}"), format!("{{{:?}}}", signer.key_id()));
    }

    #[test]
    fn bad_seeds_are_refused() {
        for seed in ["", "00", &"0".repeat(63), &"0".repeat(66), &"zz".repeat(32)] {
            assert_eq!(CheckpointSigner::from_seed_hex(seed).unwrap_err(), SignError::BadSeed, "{seed:?}");
        }
        let spaced = format!("  {}\n", RFC8032[1].0);
        assert_eq!(CheckpointSigner::from_seed_hex(&spaced).unwrap().public_key_hex(), RFC8032[1].1);
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let a = CheckpointSigner::from_seed_hex(RFC8032[0].0).unwrap();
        let b = CheckpointSigner::from_seed_hex(RFC8032[1].0).unwrap();
        let keys = VerifyingKeys::parse([a.public_key_hex().as_str()]).unwrap();
        let msg = b"riverbank checkpoint v1\nsize 7\n";
        let sig = a.sign(msg);
        keys.verify(a.key_id(), msg, &sig).unwrap();

        assert_eq!(
            keys.verify(b.key_id(), msg, &b.sign(msg)),
            Err(SignError::UnknownKeyId(b.key_id().to_string()))
        );
        assert_eq!(keys.verify(a.key_id(), msg, "not base64!"), Err(SignError::BadEncoding));
        assert_eq!(keys.verify(a.key_id(), msg, &STANDARD.encode([0u8; 63])), Err(SignError::BadEncoding));
        let bad = SignError::BadSignature(a.key_id().to_string());
        assert_eq!(keys.verify(a.key_id(), b"another message", &sig), Err(bad.clone()));
        let mut raw = STANDARD.decode(&sig).unwrap();
        raw[10] ^= 0x01;
        assert_eq!(keys.verify(a.key_id(), msg, &STANDARD.encode(&raw)), Err(bad.clone()));
        // b's signature presented under a's key id.
        assert_eq!(keys.verify(a.key_id(), msg, &b.sign(msg)), Err(bad));
    }

    #[test]
    fn public_keys_parse_with_or_without_an_id() {
        let a = CheckpointSigner::from_seed_hex(RFC8032[0].0).unwrap();
        let b = CheckpointSigner::from_seed_hex(RFC8032[1].0).unwrap();
        let mut keys = VerifyingKeys::new();
        assert_eq!(keys.add(&a.public_key_hex()).unwrap(), a.key_id());
        let explicit = format!("{}={}", b.key_id(), b.public_key_hex());
        assert_eq!(keys.add(&explicit).unwrap(), b.key_id());
        assert!(matches!(keys.add("legacy-2025="), Err(SignError::BadPublicKey(_))));
        let custom = format!("legacy-2025={}", a.public_key_hex());
        assert_eq!(keys.add(&custom).unwrap(), "legacy-2025");
        let msg = b"m";
        keys.verify("legacy-2025", msg, &a.sign(msg)).unwrap();
        assert_eq!(keys.key_ids().count(), 3);

        // The same key again is fine; another key under a taken id is not.
        assert!(keys.add(&a.public_key_hex()).is_ok());
        assert_eq!(
            keys.add(&format!("legacy-2025={}", b.public_key_hex())),
            Err(SignError::DuplicateKeyId("legacy-2025".into()))
        );
        // An `ed25519:` id that is not the key's own.
        assert_eq!(
            keys.add(&format!("{}={}", a.key_id(), b.public_key_hex())),
            Err(SignError::KeyIdMismatch { given: a.key_id().to_string(), derived: b.key_id().to_string() })
        );
        for bad in ["", "abc", &"0".repeat(64), &format!("={}", a.public_key_hex())] {
            assert!(
                matches!(keys.add(bad), Err(SignError::BadPublicKey(_))),
                "{bad:?} must be refused (the all-zero point is small order)"
            );
        }
    }
}
