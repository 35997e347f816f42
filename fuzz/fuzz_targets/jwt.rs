//! `jwt::Verifier::verify`, the access-token check of both services. Random text never gets
//! past the signature, so the input is also read as `header JSON, NUL, claims JSON`: both are
//! base64url-encoded and signed with the key the verifier trusts, so that the header checks
//! (typ, crit, kid, alg) and the claims checks (exp, nbf, iss, aud, sub: types, huge numbers,
//! duplicates) all see hostile JSON. A token is accepted only if it meets the policy, checked
//! here on the JSON as sent, independently of the verifier.

#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use gatehouse_common::jwt::{
    AccessClaims, KeySet, Policy, Rejection, VerificationKey, Verifier, now_secs,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

const KID: &str = "k1";
const ISSUER: &str = "https://gatehouse.test";
const AUDIENCE: &str = "gatehouse-api";
const LEEWAY: u64 = 5;

static SIGNING: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let public = SIGNING.verifying_key();
    Verifier::new(
        Policy {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec![Algorithm::EdDSA],
            leeway_secs: LEEWAY,
            // Small, so evictions and cache hits both happen.
            cache_capacity: 8,
        },
        KeySet::new([VerificationKey {
            kid: KID.into(),
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_der(public.as_bytes()),
        }]),
    )
});

fuzz_target!(|data: &[u8]| {
    let verifier = &*VERIFIER;

    // The bytes as a token: unsigned by our key, so never accepted.
    let raw = String::from_utf8_lossy(data);
    if let Ok(claims) = verifier.verify(&raw) {
        panic!("accepted a token we never signed: {raw:?} → {claims:?}");
    }

    // The bytes as header and claims, signed.
    let Some(split) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (header, claims) = (&data[..split], &data[split + 1..]);
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = SIGNING.sign(signing_input.as_bytes());
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    );
    let before = now_secs();
    let verdict = verifier.verify(&token);
    match verdict {
        Ok(accepted) => meets_policy(header, claims, &accepted, before),
        Err(rejection) => {
            assert!(!rejection.reason().is_empty());
            // Our own signature over our own key is never the problem.
            assert_ne!(rejection, Rejection::BadSignature, "{token}");
        }
    }
});

/// The header parameters the policy is about, as sent. Other members are skipped unparsed
/// (as the verifier skips them: `{"x": 1e400}` is no reason to refuse a token); a duplicate
/// of one of these is an error here, so a verifier that took either copy shows up.
#[derive(Debug, Deserialize)]
struct SentHeader {
    alg: Option<Value>,
    typ: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// The claims the policy is about, as sent.
#[derive(Debug, Deserialize)]
struct SentClaims {
    iss: Option<Value>,
    aud: Option<Value>,
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
}

/// RFC 8725 / RFC 9068 as the verifier promises them, read off the JSON that was signed.
fn meets_policy(header: &[u8], claims: &[u8], accepted: &AccessClaims, before: u64) {
    let show = || {
        format!(
            "header {} claims {}",
            String::from_utf8_lossy(header),
            String::from_utf8_lossy(claims)
        )
    };
    let header: SentHeader = serde_json::from_slice(header)
        .unwrap_or_else(|e| panic!("accepted header is not JSON ({e}): {}", show()));
    let claims: SentClaims = serde_json::from_slice(claims)
        .unwrap_or_else(|e| panic!("accepted claims are not JSON ({e}): {}", show()));
    let str_of = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);

    // Header: explicit type, our key, its algorithm, no critical extensions.
    let typ = str_of(&header.typ).unwrap_or_default().to_ascii_lowercase();
    assert!(
        typ == "at+jwt" || typ == "application/at+jwt",
        "typ {typ:?}: {}",
        show()
    );
    assert_eq!(str_of(&header.kid).as_deref(), Some(KID), "{}", show());
    assert_eq!(str_of(&header.alg).as_deref(), Some("EdDSA"), "{}", show());
    assert!(header.crit.is_none(), "crit: {}", show());

    // Claims: issuer, audience, a subject, inside the validity window.
    assert_eq!(str_of(&claims.iss).as_deref(), Some(ISSUER), "{}", show());
    let aud_ok = match &claims.aud {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "aud: {}", show());
    let sub = str_of(&claims.sub).expect("sub is a string");
    assert!(!sub.is_empty(), "empty sub accepted: {}", show());
    assert_eq!(accepted.sub, sub, "{}", show());
    assert_eq!(accepted.iss, ISSUER);

    let exp = claims
        .exp
        .as_ref()
        .and_then(Value::as_u64)
        .expect("exp is a whole number");
    assert_eq!(accepted.exp, exp, "{}", show());
    assert!(
        exp.saturating_add(LEEWAY) >= before,
        "expired token accepted: {}",
        show()
    );
    if let Some(nbf) = &claims.nbf {
        let nbf = nbf.as_u64().expect("nbf is a whole number");
        assert_eq!(accepted.nbf, Some(nbf));
        assert!(
            nbf <= now_secs().saturating_add(LEEWAY),
            "token not valid yet accepted: {}",
            show()
        );
    }
}
