//! Refresh-token material: 256 random bits from the OS CSPRNG, handed to the client as
//! base64url, stored only as SHA-256 (SECURITY.md, RFC 9700 §4.14).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// A fresh token and the hash to store for it.
pub fn generate() -> Result<(String, [u8; 32]), getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash(&token);
    Ok((token, hash))
}

/// The stored form of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Cheap shape check so garbage never reaches the database.
pub fn looks_valid(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, ha) = generate().unwrap_or_else(|e| panic!("{e}"));
        let (b, _) = generate().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert!(looks_valid(&a));
        assert_eq!(hash(&a), ha);
    }
}
