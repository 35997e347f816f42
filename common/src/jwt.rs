//! Access-token verification shared by the gateway and the core API, following RFC 8725 (JWT
//! BCP) and RFC 9068 (JWT access tokens) to the letter:
//! - §3.1 the algorithm comes from our key, never from the token: one algorithm per key, an
//!   allow-list, `none` impossible (it is not even a variant of `Algorithm`);
//! - keys are chosen by `kid` among keys we configured; `jku`, `x5u` and embedded `jwk` headers
//!   are never followed;
//! - §3.11 explicit typing: header `typ` must be `at+jwt` (RFC 9068 §2.1);
//! - `iss`, `aud`, `sub`, `exp` required, `nbf` honoured, small leeway;
//! - unknown `crit` extensions are rejected (RFC 7515 §4.1.11).
//!
//! Verified tokens are cached (keyed by the token itself, compared whole, as Envoy's `jwt_authn`
//! cache keys by the token string; bounded, and never served past their `exp`) so repeated
//! requests skip the signature check. Each cached verdict names the key set it was reached under
//! (a generation number); it is served only while that set is the current one, so a
//! verification that raced a key replacement can never bring an old key's verdict back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

mod cache;
mod keys;

use cache::{Cache, TokenKey, TokenRef};
pub use keys::{KeySet, VerificationKey};

/// `typ` value required on access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Largest leeway we accept from configuration (docs/security.md: ≤ 30 s).
pub const MAX_LEEWAY_SECS: u64 = 30;

/// The claims of a verified access token that callers use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub iss: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub jti: Option<String>,
    /// `sub` as an HTTP header value, made on first use and kept with the verified claims, so
    /// a cached token costs no new one per request (the gateway forwards it as `X-User-Id` and
    /// keys per-subject limits by it). Not a claim.
    #[serde(skip)]
    sub_value: NotAClaim<Option<http::HeaderValue>>,
}

/// A value made once from the claims and kept with them. It is not a claim: two claims compare
/// equal whatever it holds, so `AccessClaims` derives its equality over the claims alone.
#[derive(Debug, Clone, Default)]
struct NotAClaim<T>(OnceLock<T>);

impl<T> PartialEq for NotAClaim<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for NotAClaim<T> {}

impl AccessClaims {
    /// `sub` as a header value; `None` when it is not visible ASCII (no spaces, no control
    /// characters, nothing beyond ASCII), which a request header cannot carry unambiguously.
    pub fn sub_header(&self) -> Option<&http::HeaderValue> {
        self.sub_value
            .0
            .get_or_init(|| {
                let visible = self.sub.bytes().all(|b| b.is_ascii_graphic());
                visible
                    .then(|| http::HeaderValue::from_str(&self.sub).ok())
                    .flatten()
            })
            .as_ref()
    }
}

/// Why a token was refused. `reason()` is a stable label for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("token is malformed")]
    Malformed,
    #[error("token type must be at+jwt")]
    WrongType,
    #[error("token uses an unsupported critical header")]
    UnsupportedCrit,
    #[error("token has no key id")]
    MissingKid,
    #[error("token key id is not known")]
    UnknownKey,
    #[error("token algorithm is not allowed for this key")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token lacks required claim {0}")]
    MissingClaim(String),
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_typ",
            Self::UnsupportedCrit => "crit",
            Self::MissingKid => "missing_kid",
            Self::UnknownKey => "unknown_kid",
            Self::WrongAlgorithm => "wrong_alg",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_iss",
            Self::WrongAudience => "wrong_aud",
            Self::MissingClaim(_) => "missing_claim",
        }
    }
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub cache_capacity: usize,
}

/// A verified token's claims and the key-set generation that verified them.
#[derive(Clone)]
struct Verdict {
    generation: u64,
    claims: Arc<AccessClaims>,
}

/// The key set in force and its generation (bumped on every replacement).
struct Current {
    generation: u64,
    keys: Arc<KeySet>,
}

/// Verifies access tokens against a swappable key set, with a verified-token cache.
pub struct Verifier {
    policy: Policy,
    current: ArcSwap<Current>,
    generations: AtomicU64,
    cache: Cache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(mut policy: Policy, keys: KeySet) -> Self {
        policy.leeway_secs = policy.leeway_secs.min(MAX_LEEWAY_SECS);
        let cache = Cache::new(policy.cache_capacity.max(1));
        Self {
            policy,
            current: ArcSwap::from_pointee(Current {
                generation: 0,
                keys: Arc::new(keys),
            }),
            generations: AtomicU64::new(0),
            cache,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.current.load().keys.clone()
    }

    /// Replaces the key set (rotation, JWKS refresh). Verdicts reached under earlier sets are
    /// never served again (their generation is not the current one), so a removed or replaced
    /// key stops being honoured at once, even by verifications still running on the old set.
    pub fn replace_keys(&self, keys: KeySet) {
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Arc::new(Current {
            generation,
            keys: Arc::new(keys),
        }));
        // Only frees memory: stale verdicts would not be served anyway.
        self.cache.clear();
    }

    /// Verifies `token`, from the cache when it was verified before under the current key
    /// set and has not expired.
    pub fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, Rejection> {
        let current = self.current.load_full();
        self.verify_under(&current, token)
    }

    /// The cache's verdict on `token` under the current key set, if it holds one; `None` when
    /// the token would have to be verified. Takes the bytes as received, unchecked: only
    /// verified tokens (base64url and dots) are ever cached, so a hit means the bytes are such
    /// a token, and a client reusing its access token costs neither a check of its characters
    /// nor a signature.
    pub fn verify_cached(&self, token: &[u8]) -> Option<Result<Arc<AccessClaims>, Rejection>> {
        self.cached_under(&self.current.load(), token)
    }

    fn cached_under(
        &self,
        current: &Current,
        token: &[u8],
    ) -> Option<Result<Arc<AccessClaims>, Rejection>> {
        let cached = self.cache.get(&TokenRef(token))?;
        if cached.generation != current.generation {
            return None;
        }
        if cached.claims.exp.saturating_add(self.policy.leeway_secs) > now_secs() {
            return Some(Ok(cached.claims));
        }
        self.cache.remove(&TokenRef(token));
        Some(Err(Rejection::Expired))
    }

    /// Verification against one snapshot of the key set: what a request sees from start to end
    /// even when the set is replaced meanwhile.
    fn verify_under(&self, current: &Current, token: &str) -> Result<Arc<AccessClaims>, Rejection> {
        if let Some(verdict) = self.cached_under(current, token.as_bytes()) {
            return verdict;
        }
        let claims = Arc::new(self.verify_uncached(&current.keys, token)?);
        // Tagged with the generation it was verified under: if the set was replaced while we
        // verified, this entry is stale on arrival and never served.
        self.cache.insert(
            TokenKey(token.into()),
            Verdict {
                generation: current.generation,
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }

    fn verify_uncached(&self, keys: &KeySet, token: &str) -> Result<AccessClaims, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        // RFC 8725 §3.11 / RFC 9068 §2.1: explicit typing. "application/at+jwt" is the same
        // media type (RFC 7515 §4.1.9 lets the prefix be omitted); compare case-insensitively.
        let typ = header.typ.as_deref().unwrap_or_default();
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) {
            return Err(Rejection::WrongType);
        }
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is fatal.
        if header.crit.is_some() {
            return Err(Rejection::UnsupportedCrit);
        }
        let kid = header.kid.as_deref().ok_or(Rejection::MissingKid)?;
        let key = keys.get(kid).ok_or(Rejection::UnknownKey)?;
        // RFC 8725 §3.1: the key decides the algorithm; the header must agree with it.
        if header.alg != key.alg || !self.policy.algorithms.contains(&key.alg) {
            return Err(Rejection::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.policy.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.policy.issuer]);
        validation.set_audience(&[&self.policy.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        // RFC 9068 §2.2: `sub` is required; jsonwebtoken only checks that the member exists,
        // and an empty subject would become an empty `X-User-Id` and satisfy an empty path
        // segment (`/api/users//…`).
        if data.claims.sub.is_empty() {
            return Err(Rejection::MissingClaim("sub".into()));
        }
        Ok(data.claims)
    }
}

fn map_error(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::InvalidAlgorithm => Rejection::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => Rejection::MissingClaim(c.clone()),
        _ => Rejection::Malformed,
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
    use jsonwebtoken::DecodingKey;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn keypair(seed: u8) -> (EncodingKey, DecodingKey) {
        let pem = KeypairBytes {
            secret_key: [seed; 32],
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map(|p| p.to_string())
        .unwrap_or_default();
        let enc = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        (enc, DecodingKey::from_ed_der(public.as_bytes()))
    }

    fn verifier(dec: DecodingKey) -> Verifier {
        Verifier::new(
            Policy {
                issuer: "iss".into(),
                audience: "aud".into(),
                algorithms: vec![Algorithm::EdDSA],
                leeway_secs: 120,
                cache_capacity: 16,
            },
            KeySet::new([VerificationKey {
                kid: "k1".into(),
                alg: Algorithm::EdDSA,
                key: dec,
            }]),
        )
    }

    fn token(enc: &EncodingKey, exp_in: i64) -> String {
        let now = now_secs() as i64;
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("at+jwt".into());
        h.kid = Some("k1".into());
        let claims = json!({"iss": "iss", "aud": "aud", "sub": "u1", "iat": now, "nbf": now, "exp": now + exp_in});
        jsonwebtoken::encode(&h, &claims, enc).unwrap_or_default()
    }

    /// Caught by the policy check of fuzz/fuzz_targets/jwt.rs: `"sub": ""` passed as a subject.
    #[test]
    fn the_subject_header_value_is_made_once_and_only_from_visible_ascii() {
        let claims = |sub: &str| -> AccessClaims {
            serde_json::from_value(serde_json::json!({"sub": sub, "iss": "i", "exp": 1}))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let c = claims("3f2a-user");
        let first = c.sub_header().map(|v| v as *const http::HeaderValue);
        assert_eq!(
            c.sub_header().map(|v| v.as_bytes()),
            Some(&b"3f2a-user"[..])
        );
        assert_eq!(
            c.sub_header().map(|v| v as *const _),
            first,
            "kept, not rebuilt"
        );
        // The kept value is not a claim: equality sees the claims only.
        assert_eq!(
            c,
            claims("3f2a-user"),
            "one has made its value, the other not"
        );
        assert_ne!(c, claims("another-user"));
        for bad in ["a b", "tab\there", "caf\u{e9}", "line\nbreak"] {
            assert!(claims(bad).sub_header().is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_subject_is_a_missing_subject() {
        let (enc, dec) = keypair(1);
        let v = verifier(dec);
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("at+jwt".into());
        h.kid = Some("k1".into());
        let exp = now_secs() + 300;
        let claims = json!({"iss": "iss", "aud": "aud", "sub": "", "exp": exp});
        let t = jsonwebtoken::encode(&h, &claims, &enc).unwrap_or_default();
        assert_eq!(v.verify(&t), Err(Rejection::MissingClaim("sub".into())));
    }

    #[test]
    fn leeway_is_capped_at_30_seconds() {
        let (_, dec) = keypair(1);
        assert_eq!(verifier(dec).policy().leeway_secs, MAX_LEEWAY_SECS);
    }

    #[test]
    fn verifies_caches_and_forgets_on_key_change() {
        let (enc, dec) = keypair(1);
        let v = verifier(dec);
        let t = token(&enc, 300);
        assert_eq!(v.verify(&t).map(|c| c.sub.clone()), Ok("u1".to_string()));
        assert_eq!(v.cache.len(), 1);
        assert!(v.verify(&t).is_ok(), "served from the cache");
        // Rotating to another key drops cached verdicts at once.
        let (_, other) = keypair(2);
        v.replace_keys(KeySet::new([VerificationKey {
            kid: "k1".into(),
            alg: Algorithm::EdDSA,
            key: other,
        }]));
        assert_eq!(v.verify(&t), Err(Rejection::BadSignature));
    }

    /// The cache hashes a token's tail only: a token that shares a cached one's length and tail
    /// but differs before it is another key, verified on its own.
    #[test]
    fn a_token_sharing_a_cached_tokens_tail_is_not_served_its_verdict() {
        use std::hash::BuildHasher;
        let (enc, dec) = keypair(1);
        let v = verifier(dec);
        let t = token(&enc, 300);
        assert!(v.verify(&t).is_ok());
        // The same length and signature, one payload character changed.
        let dot = t.find('.').unwrap_or_default();
        let mut forged = t.clone().into_bytes();
        forged[dot + 2] = if forged[dot + 2] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap_or_default();
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(
            hasher.hash_one(TokenKey(t.as_str().into())),
            hasher.hash_one(TokenRef(forged.as_bytes())),
            "one hash for both"
        );
        assert!(v.verify(&forged).is_err(), "a cached verdict served");
        assert!(v.verify(&t).is_ok());
        assert_eq!(v.cache.len(), 1);
        // Shorter than the tail: the whole token is hashed.
        assert_eq!(
            hasher.hash_one(TokenKey("abc".into())),
            hasher.hash_one(TokenRef(b"abc"))
        );
        assert_ne!(
            hasher.hash_one(TokenRef(b"abc")),
            hasher.hash_one(TokenRef(b"abd"))
        );
    }

    /// `verify_cached` answers only for bytes that are a token verified under the current
    /// keys: not for other bytes (obs-text in place of one character, none), and not after the
    /// keys changed.
    #[test]
    fn the_cache_answers_raw_bytes_only_for_a_verified_token() {
        let (enc, dec) = keypair(1);
        let v = verifier(dec.clone());
        let t = token(&enc, 300);
        assert!(v.verify_cached(t.as_bytes()).is_none(), "not verified yet");
        let claims = v.verify(&t).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(v.verify_cached(t.as_bytes()), Some(Ok(claims)));
        let mut other = t.clone().into_bytes();
        other[3] = 0xE9;
        assert!(v.verify_cached(&other).is_none());
        assert!(v.verify_cached(b"").is_none());
        v.replace_keys(replacement(dec));
        assert!(v.verify_cached(t.as_bytes()).is_none(), "keys replaced");
    }

    fn replacement(dec: DecodingKey) -> KeySet {
        KeySet::new([VerificationKey {
            kid: "k1".into(),
            alg: Algorithm::EdDSA,
            key: dec,
        }])
    }

    /// Issue 9, item 12: a verification that started on the old key set and finishes after a
    /// replacement must not put the old key's verdict back into the cache.
    #[test]
    fn a_verification_racing_a_key_replacement_is_never_served_later() {
        let (enc, dec) = keypair(1);
        let v = verifier(dec);
        let t = token(&enc, 300);
        // The racing request took its snapshot of the key set...
        let before = v.current.load_full();
        // ...the key is replaced (same kid, other material) while it verifies...
        let (_, other) = keypair(2);
        v.replace_keys(replacement(other));
        // ...and it finishes successfully with the old key, caching what it found.
        assert!(v.verify_under(&before, &t).is_ok());
        assert_eq!(v.cache.len(), 1);
        // The next request sees the new key set: the old verdict is not evidence any more.
        assert_eq!(v.verify(&t), Err(Rejection::BadSignature));
        assert_eq!(v.verify(&t), Err(Rejection::BadSignature));
    }

    /// The same race with real threads: verifications hammer the cache while the key is
    /// swapped away; afterwards the token is refused, whatever the interleaving was.
    #[test]
    fn concurrent_verifications_during_replacements_settle_on_the_current_keys() {
        let (enc, dec) = keypair(1);
        let v = Arc::new(verifier(dec.clone()));
        let t = token(&enc, 300);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (v, t, stop) = (v.clone(), t.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = v.verify(&t);
                    }
                })
            })
            .collect();
        let (_, other) = keypair(2);
        for i in 0..50 {
            let key = if i % 2 == 0 {
                other.clone()
            } else {
                dec.clone()
            };
            v.replace_keys(replacement(key));
        }
        v.replace_keys(replacement(other));
        for _ in 0..10 {
            assert_eq!(v.verify(&t), Err(Rejection::BadSignature));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
        assert_eq!(v.verify(&t), Err(Rejection::BadSignature));
    }

    #[test]
    fn expiry_respects_the_capped_leeway() {
        let (enc, dec) = keypair(1);
        let v = verifier(dec);
        assert!(v.verify(&token(&enc, -10)).is_ok(), "within 30 s leeway");
        assert_eq!(v.verify(&token(&enc, -60)), Err(Rejection::Expired));
    }

    #[test]
    fn jwks_keys_are_filtered() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym", "alg": "HS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "alg": "EdDSA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ok", "alg": "EdDSA"}
        ]}))
        .unwrap_or_default();
        let (keys, skipped) = KeySet::from_jwks(&set, &[Algorithm::EdDSA, Algorithm::HS256]);
        assert_eq!(keys.kids(), vec!["ok"]);
        assert_eq!(skipped.len(), 2);
    }
}
