//! Key secrets: generation, hashing, and finding the one a client presented.
//!
//! A secret is `tg-` + 43 base62 characters (256 bits from the OS CSPRNG). Only its SHA-256 is
//! ever stored. A fast unsalted hash is right here (unlike passwords): the secret has full
//! entropy, so there is nothing to brute-force, and hashing stays cheap on every request.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub const SECRET_PREFIX: &str = "tg-";
/// 43 × log2(62) ≈ 256 bits.
const SECRET_CHARS: usize = 43;
/// Characters after `tg-` kept in clear so humans can tell keys apart in lists.
pub const PREFIX_CHARS: usize = 8;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// A presented key longer than this is not one of ours; refuse it without hashing megabytes.
const MAX_PRESENTED_LEN: usize = 512;

/// The SHA-256 of a key secret; written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> KeyHash {
        KeyHash(Sha256::digest(secret.as_bytes()).into())
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for KeyHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with(SECRET_PREFIX) {
            return Err("this looks like a key secret, not its hash: store only \
                        `sha256:<hex>` of the secret, never the secret itself"
                .to_string());
        }
        let hex_part = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        let mut out = [0u8; 32];
        match hex_part.map(|h| hex::decode_to_slice(h, &mut out)) {
            Some(Ok(())) => Ok(KeyHash(out)),
            _ => Err("expected `sha256:` followed by 64 lowercase hex digits".to_string()),
        }
    }
}

/// Hashing a `KeyHash` for a `HashMap` just takes 8 of its bytes: they are already uniformly
/// distributed, and no client can choose a SHA-256 output to collide buckets.
impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `KeyHash` is hashed with it; stay correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type BuildKeyHasher = BuildHasherDefault<PassThroughHasher>;

/// A freshly generated key. `secret` is shown to its owner once and then forgotten.
pub struct NewSecret {
    pub secret: String,
    pub hash: KeyHash,
    pub prefix: String,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident (logs, panics, test output).
        f.debug_struct("NewSecret")
            .field("hash", &self.hash)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Generates a secret from the OS CSPRNG (`getrandom`; `fastrand` is not cryptographic).
pub fn generate_secret() -> io::Result<NewSecret> {
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + SECRET_CHARS);
    secret.push_str(SECRET_PREFIX);
    let mut pool = [0u8; 64];
    while secret.len() < SECRET_PREFIX.len() + SECRET_CHARS {
        getrandom::getrandom(&mut pool).map_err(|e| match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::other(format!("no OS random number generator: {e}")),
        })?;
        // Rejection sampling: 248 = 4 × 62, so `b % 62` is uniform for b < 248.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if secret.len() == SECRET_PREFIX.len() + SECRET_CHARS {
                break;
            }
            secret.push(char::from(BASE62[usize::from(b % 62)]));
        }
    }
    Ok(NewSecret {
        hash: KeyHash::of(&secret),
        prefix: display_prefix(&secret),
        secret,
    })
}

/// The non-secret characters kept for display: up to 8 after `tg-`.
pub fn display_prefix(secret: &str) -> String {
    let body = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    body.chars().take(PREFIX_CHARS).collect()
}

/// The key a client presented: `Authorization: Bearer <key>` (scheme case-insensitive, as
/// RFC 9110 says) or `x-api-key: <key>` (Anthropic-style clients). An `Authorization` header
/// with another scheme falls through to `x-api-key`. Empty values count as absent.
pub fn extract_presented_key(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            let (scheme, rest) = v.split_once([' ', '\t'])?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|k| !k.is_empty());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// Whether a presented string is worth hashing at all.
pub(crate) fn plausible(presented: &str) -> bool {
    presented.len() <= MAX_PRESENTED_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn secrets_are_well_formed_and_distinct() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 46);
        assert!(a.secret.starts_with("tg-"));
        assert!(a.secret[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.prefix, &a.secret[3..11]);
        assert_eq!(a.hash, KeyHash::of(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn base62_characters_are_all_used() {
        // 200 secrets × 43 chars: every one of the 62 symbols shows up (sanity of the mapping).
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(generate_secret().unwrap().secret[3..].chars());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn hash_text_round_trips_and_rejects_bad_forms() {
        let h = KeyHash::of("tg-abc");
        let text = h.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71);
        assert_eq!(text.parse::<KeyHash>().unwrap(), h);
        assert!("sha256:abc".parse::<KeyHash>().is_err());
        assert!(text.to_uppercase().parse::<KeyHash>().is_err());
        assert!(text.replace("sha256:", "md5:").parse::<KeyHash>().is_err());
        let e = "tg-0123".parse::<KeyHash>().unwrap_err();
        assert!(e.contains("looks like a key secret"), "{e}");
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            KeyHash::of("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn presented_key_from_either_header() {
        let h = headers(&[("authorization", "Bearer tg-abc")]);
        assert_eq!(extract_presented_key(&h), Some("tg-abc"));
        let h = headers(&[("authorization", "bearer   tg-abc  ")]);
        assert_eq!(extract_presented_key(&h), Some("tg-abc"));
        let h = headers(&[("authorization", "BEARER tg-abc")]);
        assert_eq!(extract_presented_key(&h), Some("tg-abc"));
        let h = headers(&[("x-api-key", "tg-xyz")]);
        assert_eq!(extract_presented_key(&h), Some("tg-xyz"));
        let h = headers(&[("authorization", "Basic dXNlcjpw"), ("x-api-key", "tg-xyz")]);
        assert_eq!(extract_presented_key(&h), Some("tg-xyz"));
        let h = headers(&[("authorization", "Bearer tg-a"), ("x-api-key", "tg-b")]);
        assert_eq!(extract_presented_key(&h), Some("tg-a"));
        for missing in [
            headers(&[]),
            headers(&[("authorization", "Bearer")]),
            headers(&[("authorization", "Bearer   ")]),
            headers(&[("authorization", "Bearertg-abc")]),
            headers(&[("x-api-key", "")]),
        ] {
            assert_eq!(extract_presented_key(&missing), None, "{missing:?}");
        }
    }

    #[test]
    fn pass_through_hasher_uses_the_digest_bytes() {
        use std::hash::BuildHasher;
        let h = KeyHash([7; 32]);
        let b = BuildKeyHasher::default();
        assert_eq!(b.hash_one(h), u64::from_le_bytes([7; 8]));
    }
}
