//! The verified-token cache's key: a token, hashed by its tail.

use std::hash::{Hash, Hasher};

use super::Verdict;

/// Keyed by the whole token: a hit needs the same bytes, so no hash collision can serve one
/// token's verdict for another (a digest per request cost ~0.3 µs of SHA-256 for nothing more).
pub(super) type Cache = quick_cache::sync::Cache<TokenKey, Verdict>;

/// A cached token. Hashed by its length and its last [`HASHED_TAIL`] bytes only: they are the
/// end of the signature, which no caller can choose for a token that verifies (only verified
/// tokens are ever inserted), so entries spread as well as under the whole token, and a lookup
/// hashes 16 bytes instead of a few hundred. Equality is still the whole token.
#[derive(PartialEq, Eq)]
pub(super) struct TokenKey(pub(super) Box<str>);

/// A token looked up, as bytes (which need not be UTF-8): hashed as [`TokenKey`] is, equal to
/// the key of the same bytes.
pub(super) struct TokenRef<'a>(pub(super) &'a [u8]);

const HASHED_TAIL: usize = 16;

fn hash_token<H: Hasher>(bytes: &[u8], state: &mut H) {
    state.write_usize(bytes.len());
    state.write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(self.0.as_bytes(), state);
    }
}

impl Hash for TokenRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(self.0, state);
    }
}

impl quick_cache::Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        key.0.as_bytes() == self.0
    }
}
