//! The Standard Webhooks signature scheme, verified on the raw body in constant time.
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, id + "." + timestamp + "." + body))>` (space-separated
//! list, so several keys can be active during rotation); secrets are `whsec_<base64 key>`.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Longest `webhook-id` accepted, in bytes.
pub const ID_BYTES_MAX: usize = 256;
/// Most signatures considered in one header (rotation needs a few, not hundreds).
pub const SIGNATURES_MAX: usize = 8;

pub use crate::verify::VerifyError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook secret must be 'whsec_' followed by base64 of at least 16 bytes")]
pub struct BadSecret;

/// A decoded signing key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([redacted])")
    }
}

impl Key {
    pub fn from_secret(secret: &str) -> Result<Key, BadSecret> {
        let b64 = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
        let bytes = STANDARD.decode(b64).map_err(|_| BadSecret)?;
        if bytes.len() < 16 {
            return Err(BadSecret);
        }
        Ok(Key(bytes))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac =
            HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for this key (used by senders: the demo, tests, benchmarks).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, &timestamp.to_string(), body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Headers of one delivery, as received.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a verified delivery tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: String,
    pub timestamp: i64,
}

/// Verify `delivery` against any of `keys`. `now` is unix seconds.
pub fn verify(
    keys: &[Key],
    delivery: &Delivery<'_>,
    now: i64,
    tolerance_s: i64,
) -> Result<Verified, VerifyError> {
    let indexed: Vec<(usize, &Key)> = keys.iter().enumerate().collect();
    verify_indexed(&indexed, delivery, now, tolerance_s).map(|(_, v)| v)
}

/// As [`verify`], over keys that carry their caller's index; returns the index of the key that matched.
pub fn verify_indexed(
    keys: &[(usize, &Key)],
    delivery: &Delivery<'_>,
    now: i64,
    tolerance_s: i64,
) -> Result<(usize, Verified), VerifyError> {
    let missing = |h: &str| VerifyError::MissingHeader(h.to_owned());
    let id = delivery.id.ok_or_else(|| missing(HEADER_ID))?;
    let ts_text = delivery.timestamp.ok_or_else(|| missing(HEADER_TIMESTAMP))?;
    let sigs = delivery.signature.ok_or_else(|| missing(HEADER_SIGNATURE))?;
    if id.is_empty() || id.len() > ID_BYTES_MAX || !id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(VerifyError::BadId(HEADER_ID));
    }
    let timestamp = crate::verify::unix_seconds(ts_text)?;
    crate::verify::within_tolerance(timestamp, now, tolerance_s)?;
    let candidates: Vec<Vec<u8>> = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .take(SIGNATURES_MAX)
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for (index, key) in keys {
        let tag = key.mac(id, ts_text, delivery.body);
        for c in &candidates {
            // `verify_slice` compares in constant time.
            if tag.clone().verify_slice(c).is_ok() {
                return Ok((*index, Verified { id: id.to_owned(), timestamp }));
            }
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_614_265_330;

    fn key(seed: u8) -> Key {
        Key::from_secret(&format!("whsec_{}", STANDARD.encode([seed; 24]))).expect("valid")
    }

    fn delivery<'a>(id: &'a str, ts: &'a str, sig: &'a str, body: &'a [u8]) -> Delivery<'a> {
        Delivery { id: Some(id), timestamp: Some(ts), signature: Some(sig), body }
    }

    #[test]
    fn published_test_vector_verifies() {
        // The scheme's reference vector (secret, id, timestamp, body → signature).
        let k = Key::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            k.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", NOW, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    type Case<'a> = (&'a str, Vec<Key>, Delivery<'a>, i64, Result<(), VerifyError>);

    #[test]
    fn verification_table() {
        let body = br#"{"type":"deposit.completed","amount":1200}"#;
        let good = key(1).sign("msg_1", NOW, body);
        let rotated = format!("v1,AAAA {} v1,bm90LWl0", key(2).sign("msg_1", NOW, body));
        let ts = NOW.to_string();
        let v2 = good.replace("v1,", "v2,");
        let cases: Vec<Case<'_>> = vec![
            ("valid", vec![key(1)], delivery("msg_1", &ts, &good, body), NOW, Ok(())),
            (
                "wrong secret",
                vec![key(3)],
                delivery("msg_1", &ts, &good, body),
                NOW,
                Err(VerifyError::NoMatch),
            ),
            (
                "rotated: new key among old",
                vec![key(1), key(2)],
                delivery("msg_1", &ts, &rotated, body),
                NOW,
                Ok(()),
            ),
            (
                "tampered body",
                vec![key(1)],
                delivery("msg_1", &ts, &good, b"{\"amount\":9999}"),
                NOW,
                Err(VerifyError::NoMatch),
            ),
            (
                "tampered id",
                vec![key(1)],
                delivery("msg_2", &ts, &good, body),
                NOW,
                Err(VerifyError::NoMatch),
            ),
            (
                "tampered timestamp",
                vec![key(1)],
                delivery("msg_1", "1614265331", &good, body),
                NOW,
                Err(VerifyError::NoMatch),
            ),
            (
                "too old",
                vec![key(1)],
                delivery("msg_1", &ts, &good, body),
                NOW + 301,
                Err(VerifyError::OutsideTolerance(301, 300)),
            ),
            (
                "too new",
                vec![key(1)],
                delivery("msg_1", &ts, &good, body),
                NOW - 301,
                Err(VerifyError::OutsideTolerance(301, 300)),
            ),
            ("edge of tolerance", vec![key(1)], delivery("msg_1", &ts, &good, body), NOW + 300, Ok(())),
            (
                "bad timestamp",
                vec![key(1)],
                delivery("msg_1", "-5", &good, body),
                NOW,
                Err(VerifyError::BadTimestamp),
            ),
            ("v2 ignored", vec![key(1)], delivery("msg_1", &ts, &v2, body), NOW, Err(VerifyError::NoMatch)),
            (
                "empty id",
                vec![key(1)],
                delivery("", &ts, &good, body),
                NOW,
                Err(VerifyError::BadId(HEADER_ID)),
            ),
            ("no keys", vec![], delivery("msg_1", &ts, &good, body), NOW, Err(VerifyError::NoMatch)),
        ];
        for (name, keys, d, now, want) in cases {
            let got = verify(&keys, &d, now, 300).map(|_| ());
            assert_eq!(got, want, "{name}");
        }
        let missing = [
            (Delivery { id: None, ..delivery("msg_1", &ts, &good, body) }, HEADER_ID),
            (Delivery { timestamp: None, ..delivery("msg_1", &ts, &good, body) }, HEADER_TIMESTAMP),
            (Delivery { signature: None, ..delivery("msg_1", &ts, &good, body) }, HEADER_SIGNATURE),
        ];
        for (d, header) in missing {
            assert_eq!(verify(&[key(1)], &d, NOW, 300), Err(VerifyError::MissingHeader(header.to_owned())));
        }
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(Key::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Key::from_secret("whsec_!!!").is_err());
        assert!(Key::from_secret("whsec_c2hvcnQ=").is_err());
        assert!(!format!("{:?}", key(1)).contains('A'));
    }
}
