//! Access-token signing keys: the current signing key, previous public keys kept during a
//! rotation overlap, the JWK Set published at `/.well-known/jwks.json`, and the key set the API
//! itself verifies with.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use gatehouse_common::config::Environment;
use gatehouse_common::jwt::{ACCESS_TOKEN_TYP, KeySet, VerificationKey, now_secs};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use uuid::Uuid;

use crate::settings::{AuthSettings, PreviousKey, SigningAlgorithm};

/// Signs access tokens (RFC 9068 shape: `typ: at+jwt`, `kid`, iss/aud/sub/iat/nbf/exp/jti).
pub struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

impl Signer {
    /// A signed access token for `sub` and its lifetime in seconds.
    pub fn issue(&self, sub: Uuid) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let now = now_secs();
        let mut header = Header::new(self.alg);
        header.typ = Some(ACCESS_TOKEN_TYP.to_string());
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: sub.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: Uuid::new_v4().to_string(),
        };
        Ok((
            jsonwebtoken::encode(&header, &claims, &self.key)?,
            self.ttl_secs,
        ))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Everything key-related the app needs.
pub struct Keys {
    pub signer: Signer,
    pub jwks: JwkSet,
    pub verify: KeySet,
    /// True when the signing key was generated at start-up (development only).
    pub ephemeral: bool,
}

/// A new Ed25519 private key as PKCS#8 PEM (for `core-api keygen` and development).
pub fn generate_ed25519_pem() -> Result<SecretString, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    // PKCS#8 v1 (no embedded public key), the form `openssl genpkey -algorithm ed25519` writes.
    let pair = KeypairBytes {
        secret_key: seed,
        public_key: None,
    };
    let pem = pair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("encoding key: {e}"))?;
    Ok(SecretString::from(pem.to_string()))
}

/// Ed25519 keys arrive as PKCS#8 v1 or v2 (with the public key); jsonwebtoken wants v1 DER.
fn ed25519_encoding_key(pem: &str) -> Result<EncodingKey, String> {
    let pair = KeypairBytes::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
    let v1 = KeypairBytes {
        secret_key: pair.secret_key,
        public_key: None,
    };
    let der = v1.to_pkcs8_der().map_err(|e| e.to_string())?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}

pub fn load(auth: &AuthSettings, env: Environment) -> Result<Keys, String> {
    let alg = auth.algorithm.jwt();
    let configured = auth.signing_key.expose_secret().trim();
    let (material, ephemeral) = if configured.is_empty() {
        if env != Environment::Development {
            return Err(
                "auth.signing_key is empty: set JWT_SIGNING_KEY or JWT_SIGNING_KEY_FILE".into(),
            );
        }
        if auth.algorithm != SigningAlgorithm::EdDSA {
            return Err(
                "auth.signing_key is empty: ephemeral development keys are EdDSA only".into(),
            );
        }
        (generate_ed25519_pem()?, true)
    } else {
        (SecretString::from(configured.to_string()), false)
    };
    let pem = material.expose_secret().as_bytes();
    let key = match auth.algorithm {
        SigningAlgorithm::EdDSA => ed25519_encoding_key(material.expose_secret()),
        SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem).map_err(|e| e.to_string()),
        SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string()),
        SigningAlgorithm::HS256 => Ok(EncodingKey::from_secret(pem)),
    }
    .map_err(|e| {
        format!(
            "auth.signing_key is not a {:?} private key in PKCS#8 PEM: {e}",
            auth.algorithm
        )
    })?;

    let mut jwks = JwkSet::default();
    let mut verify = Vec::new();
    let kid = if auth.algorithm == SigningAlgorithm::HS256 {
        // A shared secret is never published; its kid is an opaque label.
        let kid = auth
            .signing_kid
            .clone()
            .unwrap_or_else(|| "hs256".to_string());
        verify.push(VerificationKey {
            kid: kid.clone(),
            alg,
            key: DecodingKey::from_secret(pem),
        });
        kid
    } else {
        let jwk =
            Jwk::from_encoding_key(&key, alg).map_err(|e| format!("auth.signing_key: {e}"))?;
        let (jwk, kid) = publishable(jwk, auth.signing_kid.clone())?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("auth.signing_key: {e}"))?;
        verify.push(VerificationKey {
            kid: kid.clone(),
            alg,
            key: decoding,
        });
        jwks.keys.push(jwk);
        kid
    };

    for (i, prev) in auth.previous_keys.iter().enumerate() {
        let (jwk, vk) = previous_key(prev).map_err(|e| format!("auth.previous_keys.{i}: {e}"))?;
        if vk.kid == kid || verify.iter().any(|k| k.kid == vk.kid) {
            return Err(format!(
                "auth.previous_keys.{i}: kid {:?} is already in use",
                vk.kid
            ));
        }
        jwks.keys.push(jwk);
        verify.push(vk);
    }

    let signer = Signer {
        alg,
        kid,
        key,
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        ttl_secs: auth.access_ttl_seconds,
    };
    Ok(Keys {
        signer,
        jwks,
        verify: KeySet::new(verify),
        ephemeral,
    })
}

fn previous_key(prev: &PreviousKey) -> Result<(Jwk, VerificationKey), String> {
    let alg = prev.algorithm.jwt();
    let pem = prev.public_key.trim().as_bytes();
    let decoding = match prev.algorithm {
        SigningAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        SigningAlgorithm::ES256 => DecodingKey::from_ec_pem(pem),
        SigningAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        SigningAlgorithm::HS256 => return Err("HS256 keys cannot be published".into()),
    }
    .map_err(|e| format!("not a {:?} public key in PEM: {e}", prev.algorithm))?;
    let jwk = Jwk::from_decoding_key(&decoding, Some(alg)).map_err(|e| e.to_string())?;
    let (jwk, kid) = publishable(jwk, prev.kid.clone())?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok((jwk, VerificationKey { kid, alg, key }))
}

/// Sets `kid` (the RFC 7638 thumbprint unless configured) and `use: sig`.
fn publishable(mut jwk: Jwk, kid: Option<String>) -> Result<(Jwk, String), String> {
    let kid = match kid.filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("thumbprint: {e}"))?,
    };
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok((jwk, kid))
}
