//! The keys access tokens may be signed with: one per `kid`, from files or a JWK Set.

use std::collections::HashMap;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key: its id, its single algorithm and the key material.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: String,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The keys tokens may be signed with, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerificationKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = VerificationKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
        }
    }

    /// Keys from a JWK Set. Keys without `kid` or `alg`, symmetric keys, and keys whose
    /// algorithm is not allowed are skipped; the reasons are returned for logging.
    pub fn from_jwks(set: &JwkSet, allowed: &[Algorithm]) -> (Self, Vec<String>) {
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &set.keys {
            match Self::key_from_jwk(jwk, allowed) {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push(why),
            }
        }
        (Self::new(keys), skipped)
    }

    fn key_from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<VerificationKey, String> {
        let kid = jwk.common.key_id.clone().ok_or("JWK without kid")?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::try_from(a).ok())
            .ok_or_else(|| format!("JWK {kid}: no supported alg"))?;
        if !allowed.contains(&alg) {
            return Err(format!("JWK {kid}: algorithm {alg:?} not allowed"));
        }
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "JWK {kid}: symmetric keys are never taken from a JWK Set"
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
        Ok(VerificationKey { kid, alg, key })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }
}
