//! Webhook signature schemes. Every scheme verifies the raw body as received, compares in constant time,
//! and accepts any of several active keys per (tenant, provider), so secrets rotate without downtime.
//!
//! - `standard_webhooks`: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>` (see
//!   [`crate::standard_webhooks`]).
//! - `hmac_sha256`: HMAC-SHA256 of the raw body in a named header, hex or base64, with an optional prefix
//!   (`sha256=`), as KYC vendors in the HyperVerge / Signzy style send it.
//! - `payload_digest`: a digest header plus an algorithm header (Sumsub style: `X-Payload-Digest`,
//!   `X-Payload-Digest-Alg` = `HMAC_SHA256_HEX` | `HMAC_SHA512_HEX`). SHA-1 is refused.
//! - `ed25519`: an Ed25519 signature (hex) over `timestamp + body`, timestamp in its own header, verified
//!   with the provider's public key (strict verification: no malleable signatures).
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Sha256, Sha512};

use crate::standard_webhooks as sw;
use crate::Headers;

// Defined in the leaf `verify` (standard_webhooks uses them too); kept at their paths here.
pub use crate::verify::{unix_seconds, within_tolerance, VerifyError};

/// Longest signature header value considered, in bytes (a few rotated signatures fit easily).
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 1024;
/// Shortest shared HMAC secret accepted, in bytes.
pub const HMAC_SECRET_BYTES_MIN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Hex,
    Base64,
}

/// How a provider signs, as declared in its definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scheme {
    StandardWebhooks {
        /// Reject `webhook-timestamp` further than this from now, either way.
        tolerance_s: i64,
    },
    HmacSha256 {
        /// The header carrying the signature, lower case.
        header: String,
        encoding: Encoding,
        /// Stripped from the header value before decoding, e.g. `sha256=`.
        #[serde(default)]
        prefix: Option<String>,
        /// When set, the event time (`event.occurred_at`, inside the signed body) must be this close to now.
        #[serde(default)]
        tolerance_s: Option<i64>,
    },
    PayloadDigest {
        header: String,
        algorithm_header: String,
        #[serde(default)]
        tolerance_s: Option<i64>,
    },
    Ed25519 {
        /// Hex signature over `timestamp + body`.
        signature_header: String,
        /// Unix seconds, signed together with the body.
        timestamp_header: String,
        tolerance_s: i64,
    },
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::StandardWebhooks { .. } => "standard_webhooks",
            Scheme::HmacSha256 { .. } => "hmac_sha256",
            Scheme::PayloadDigest { .. } => "payload_digest",
            Scheme::Ed25519 { .. } => "ed25519",
        }
    }

    /// Headers the signature covers (only these may identify an event for deduplication).
    pub fn signed_headers(&self) -> Vec<&str> {
        match self {
            Scheme::StandardWebhooks { .. } => vec![sw::HEADER_ID, sw::HEADER_TIMESTAMP],
            Scheme::Ed25519 { timestamp_header, .. } => vec![timestamp_header.as_str()],
            Scheme::HmacSha256 { .. } | Scheme::PayloadDigest { .. } => vec![],
        }
    }

    /// The signed header carrying the delivery's timestamp, for schemes that sign one.
    pub fn timestamp_header(&self) -> Option<&str> {
        match self {
            Scheme::StandardWebhooks { .. } => Some(sw::HEADER_TIMESTAMP),
            Scheme::Ed25519 { timestamp_header, .. } => Some(timestamp_header.as_str()),
            Scheme::HmacSha256 { .. } | Scheme::PayloadDigest { .. } => None,
        }
    }

    /// The tolerance for the event time taken from the signed body, for schemes without a signed
    /// timestamp header.
    pub fn body_time_tolerance_s(&self) -> Option<i64> {
        match self {
            Scheme::HmacSha256 { tolerance_s, .. } | Scheme::PayloadDigest { tolerance_s, .. } => {
                *tolerance_s
            }
            Scheme::StandardWebhooks { .. } | Scheme::Ed25519 { .. } => None,
        }
    }

    /// Headers a delivery must carry for this scheme.
    pub fn required_headers(&self) -> Vec<&str> {
        match self {
            Scheme::StandardWebhooks { .. } => {
                vec![sw::HEADER_ID, sw::HEADER_TIMESTAMP, sw::HEADER_SIGNATURE]
            }
            Scheme::HmacSha256 { header, .. } => vec![header.as_str()],
            Scheme::PayloadDigest { header, algorithm_header, .. } => {
                vec![header.as_str(), algorithm_header.as_str()]
            }
            Scheme::Ed25519 { signature_header, timestamp_header, .. } => {
                vec![signature_header.as_str(), timestamp_header.as_str()]
            }
        }
    }

    /// Parse one configured secret (or public key) for this scheme.
    pub fn key(&self, secret: &str) -> Result<Key, BadKey> {
        match self {
            Scheme::StandardWebhooks { .. } => sw::Key::from_secret(secret)
                .map(Key::StandardWebhooks)
                .map_err(|_| BadKey("a Standard Webhooks secret is 'whsec_' + base64 of at least 16 bytes")),
            Scheme::HmacSha256 { .. } | Scheme::PayloadDigest { .. } => {
                if secret.len() < HMAC_SECRET_BYTES_MIN {
                    return Err(BadKey("an HMAC secret has at least 16 bytes"));
                }
                Ok(Key::Hmac(secret.as_bytes().to_vec()))
            }
            Scheme::Ed25519 { .. } => {
                let bytes = hex::decode(secret)
                    .ok()
                    .or_else(|| STANDARD.decode(secret).ok())
                    .ok_or(BadKey("an Ed25519 public key is 32 bytes, hex or base64"))?;
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| BadKey("an Ed25519 public key is 32 bytes, hex or base64"))?;
                VerifyingKey::from_bytes(&arr)
                    .map(Key::Ed25519)
                    .map_err(|_| BadKey("not a valid Ed25519 public key"))
            }
        }
    }

    /// Verify a delivery against any of `keys`; `now` is unix seconds. Returns the index of the key that
    /// matched and the signed timestamp, when the scheme has one.
    pub fn verify(
        &self,
        keys: &[Key],
        headers: &dyn Headers,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        match self {
            Scheme::StandardWebhooks { tolerance_s } => {
                let delivery = sw::Delivery {
                    id: headers.get(sw::HEADER_ID),
                    timestamp: headers.get(sw::HEADER_TIMESTAMP),
                    signature: headers.get(sw::HEADER_SIGNATURE),
                    body,
                };
                let sw_keys: Vec<(usize, &sw::Key)> = keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| match k {
                        Key::StandardWebhooks(k) => Some((i, k)),
                        _ => None,
                    })
                    .collect();
                let (key_index, v) = sw::verify_indexed(&sw_keys, &delivery, now, *tolerance_s)?;
                Ok(Verified { key_index, signed_timestamp: Some(v.timestamp) })
            }
            Scheme::HmacSha256 { header, encoding, prefix, .. } => {
                let value = required(headers, header)?;
                let value = match prefix {
                    Some(p) => {
                        value.strip_prefix(p.as_str()).ok_or(VerifyError::Malformed("signature prefix"))?
                    }
                    None => value,
                };
                let tag = match encoding {
                    Encoding::Hex => hex::decode(value.trim()).ok(),
                    Encoding::Base64 => STANDARD.decode(value.trim()).ok(),
                }
                .ok_or(VerifyError::Malformed("signature encoding"))?;
                hmac_match::<Hmac<Sha256>>(keys, body, &tag)
                    .map(|key_index| Verified { key_index, signed_timestamp: None })
            }
            Scheme::PayloadDigest { header, algorithm_header, .. } => {
                let value = required(headers, header)?;
                let alg = required(headers, algorithm_header)?;
                let tag = hex::decode(value.trim()).map_err(|_| VerifyError::Malformed("digest encoding"))?;
                let key_index = match alg {
                    "HMAC_SHA256_HEX" => hmac_match::<Hmac<Sha256>>(keys, body, &tag)?,
                    "HMAC_SHA512_HEX" => hmac_match::<Hmac<Sha512>>(keys, body, &tag)?,
                    _ => return Err(VerifyError::UnsupportedAlgorithm),
                };
                Ok(Verified { key_index, signed_timestamp: None })
            }
            Scheme::Ed25519 { signature_header, timestamp_header, tolerance_s } => {
                let sig_hex = required(headers, signature_header)?;
                let ts_text = required(headers, timestamp_header)?;
                let timestamp = unix_seconds(ts_text)?;
                within_tolerance(timestamp, now, *tolerance_s)?;
                let sig_bytes: [u8; 64] = hex::decode(sig_hex.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(VerifyError::Malformed("signature encoding"))?;
                let sig = Signature::from_bytes(&sig_bytes);
                let mut message = Vec::with_capacity(ts_text.len() + body.len());
                message.extend_from_slice(ts_text.as_bytes());
                message.extend_from_slice(body);
                keys.iter()
                    .position(|k| matches!(k, Key::Ed25519(vk) if vk.verify_strict(&message, &sig).is_ok()))
                    .map(|key_index| Verified { key_index, signed_timestamp: Some(timestamp) })
                    .ok_or(VerifyError::NoMatch)
            }
        }
    }
}

fn required<'h>(headers: &'h dyn Headers, name: &str) -> Result<&'h str, VerifyError> {
    let v = headers.get(name).ok_or_else(|| VerifyError::MissingHeader(name.to_owned()))?;
    if v.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(VerifyError::Malformed("header too long"));
    }
    Ok(v)
}

fn hmac_match<M: Mac + hmac::digest::KeyInit + Clone>(
    keys: &[Key],
    body: &[u8],
    tag: &[u8],
) -> Result<usize, VerifyError> {
    keys.iter()
        .position(|k| match k {
            Key::Hmac(secret) => <M as Mac>::new_from_slice(secret)
                .map(|mut m| {
                    m.update(body);
                    // `verify_slice` compares in constant time.
                    m.verify_slice(tag).is_ok()
                })
                .unwrap_or(false),
            _ => false,
        })
        .ok_or(VerifyError::NoMatch)
}

/// A decoded key: a shared secret or a provider's public key. Never printed.
#[derive(Clone)]
pub enum Key {
    StandardWebhooks(sw::Key),
    Hmac(Vec<u8>),
    Ed25519(VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadKey(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Which of the keys matched (so the caller knows which tenant's secret verified).
    pub key_index: usize,
    pub signed_timestamp: Option<i64>,
}

/// Signing, for senders: the demo, tests, fuzz seeds and the load benchmark. Returns the headers to send.
pub mod sign {
    use super::*;

    /// HMAC-SHA256 of `body` in `encoding`.
    pub fn hmac_sha256(secret: &[u8], body: &[u8], encoding: Encoding) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(body);
        let tag = m.finalize().into_bytes();
        match encoding {
            Encoding::Hex => hex::encode(tag),
            Encoding::Base64 => STANDARD.encode(tag),
        }
    }

    /// HMAC-SHA512 of `body`, hex.
    pub fn hmac_sha512_hex(secret: &[u8], body: &[u8]) -> String {
        let mut m = <Hmac<Sha512> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }

    /// What signs a delivery: a shared secret as configured (`whsec_…` or plain), or a private key.
    #[derive(Clone)]
    pub enum Signer {
        Secret(String),
        Ed25519(ed25519_dalek::SigningKey),
    }

    impl std::fmt::Debug for Signer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Signer([redacted])")
        }
    }

    /// The headers a provider using `scheme` sends with `body` at `now` (unix seconds). `delivery_id`
    /// is used where the scheme carries one (`webhook-id`).
    pub fn headers(
        scheme: &Scheme,
        signer: &Signer,
        delivery_id: &str,
        now: i64,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let secret = || match signer {
            Signer::Secret(s) => s.as_bytes().to_vec(),
            Signer::Ed25519(k) => k.to_bytes().to_vec(),
        };
        match scheme {
            Scheme::StandardWebhooks { .. } => {
                let signature = match signer {
                    Signer::Secret(s) => sw::Key::from_secret(s)
                        .map(|k| k.sign(delivery_id, now, body))
                        .unwrap_or_else(|_| "v1,invalid-secret".to_owned()),
                    Signer::Ed25519(_) => "v1,wrong-signer".to_owned(),
                };
                vec![
                    (sw::HEADER_ID.to_owned(), delivery_id.to_owned()),
                    (sw::HEADER_TIMESTAMP.to_owned(), now.to_string()),
                    (sw::HEADER_SIGNATURE.to_owned(), signature),
                ]
            }
            Scheme::HmacSha256 { header, encoding, prefix, .. } => {
                let tag = hmac_sha256(&secret(), body, *encoding);
                vec![(header.clone(), format!("{}{tag}", prefix.as_deref().unwrap_or("")))]
            }
            Scheme::PayloadDigest { header, algorithm_header, .. } => vec![
                (header.clone(), hmac_sha256(&secret(), body, Encoding::Hex)),
                (algorithm_header.clone(), "HMAC_SHA256_HEX".to_owned()),
            ],
            Scheme::Ed25519 { signature_header, timestamp_header, .. } => {
                let sig = match signer {
                    Signer::Ed25519(k) => ed25519(k, now, body),
                    Signer::Secret(_) => "00".repeat(64),
                };
                vec![(signature_header.clone(), sig), (timestamp_header.clone(), now.to_string())]
            }
        }
    }

    /// Ed25519 over `timestamp + body`, hex.
    pub fn ed25519(signing_key: &ed25519_dalek::SigningKey, timestamp: i64, body: &[u8]) -> String {
        use ed25519_dalek::Signer as _;
        let mut message = timestamp.to_string().into_bytes();
        message.extend_from_slice(body);
        hex::encode(signing_key.sign(&message).to_bytes())
    }
}
