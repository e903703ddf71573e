//! Secrets: API key generation, hashing for storage, constant-time checks of
//! configured tokens, and reading the Bearer credential of a request.

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a secret: what the store keeps instead of an API key. Keys
/// carry 192 random bits, so a fast hash cannot be brute-forced.
pub type SecretHash = [u8; 32];

/// Hashes a secret for storage or lookup.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Hex text of a hash, as stored.
pub fn hash_hex(hash: &SecretHash) -> String {
    to_hex(hash)
}

/// Parses [`hash_hex`] output.
pub fn parse_hash_hex(text: &str) -> Option<SecretHash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random secret with a readable prefix (`hk_` for map keys, `st_`
/// for SSE tokens): 192 bits from the OS-seeded CSPRNG, hex encoded.
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", to_hex(&bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two hashes in constant time.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    a.ct_eq(b).into()
}

/// Whether `presented` equals `expected`, in time independent of where they
/// differ (both are hashed first, so lengths do not leak either).
pub fn secret_matches(presented: &str, expected: &str) -> bool {
    hashes_equal(&hash_secret(presented), &hash_secret(expected))
}

/// Whether `presented` equals any of `candidates`; every candidate is
/// compared, so timing does not tell which one matched.
pub fn secret_in(presented: &str, candidates: &[String]) -> bool {
    let presented = hash_secret(presented);
    candidates.iter().fold(false, |found, c| {
        found | hashes_equal(&presented, &hash_secret(c))
    })
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = generate_secret("hk_");
        assert!(a.starts_with("hk_") && a.len() == 3 + 48);
        assert_ne!(a, generate_secret("hk_"));
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = hash_secret("k");
        assert_eq!(parse_hash_hex(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash_hex("zz"), None);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches("abc", "abc"));
        assert!(!secret_matches("abc", "abd"));
        assert!(!secret_matches("abc", "abcd"));
        assert!(secret_in("b", &["a".into(), "b".into()]));
        assert!(!secret_in("c", &["a".into(), "b".into()]));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer tok"));
        assert_eq!(bearer_token(&h), Some("tok"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic tok"));
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
