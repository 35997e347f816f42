//! The verification keys: PEM public keys from files (`jwt.key_files`) and/or the core API's
//! JWKS URL, refreshed on an interval, refetched when a token names an unknown `kid` or fails
//! its signature under a known one (a key replaced under its `kid`), the last good set kept
//! whenever the URL fails. One fetch at a time: requests that need keys wait for the fetch in
//! flight and use its result, and a fetch starts at most once per `min_refetch`. A fetched set
//! is installed when any key differs (material, algorithm or `kid`), not only the `kid` list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_common::jwt::{KeySet, VerificationKey, Verifier};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::metrics::Metrics;
use crate::settings::Invalid;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 256 * 1024;

pub struct Jwks {
    url: Option<http::Uri>,
    static_keys: Vec<VerificationKey>,
    allowed: Vec<Algorithm>,
    verifier: Arc<Verifier>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Held for the whole of a fetch: fetches never overlap, and whoever waited for one sees
    /// when it ended.
    fetches: Mutex<Fetches>,
    min_refetch: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Fetches {
    started: Option<Instant>,
    finished: Option<Instant>,
    /// Digest of the fetched keys now installed (`None`: none installed yet).
    installed: Option<[u8; 32]>,
}

/// The `jwt.jwks_url` to fetch: none when empty, else an http(s) URL.
fn jwks_url(url: &str) -> Result<Option<http::Uri>, Invalid> {
    let invalid = |why: String| Invalid::new("jwt.jwks_url", why);
    match url.trim() {
        "" => Ok(None),
        u => {
            let url: http::Uri = u
                .parse()
                .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
            if !matches!(url.scheme_str(), Some("http" | "https")) {
                return Err(invalid("must be an http:// or https:// URL".into()));
            }
            Ok(Some(url))
        }
    }
}

impl Jwks {
    fn new(
        url: Option<http::Uri>,
        tls: rustls::ClientConfig,
        static_keys: Vec<VerificationKey>,
        allowed: Vec<Algorithm>,
        verifier: Arc<Verifier>,
        min_refetch: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            url,
            static_keys,
            allowed,
            verifier,
            client,
            fetches: Mutex::new(Fetches::default()),
            min_refetch,
            metrics,
        }
    }

    /// A fetcher and its verifier for the `[jwt]` settings (keys empty until the first fetch);
    /// else every key file, URL and CA file that cannot be used.
    pub fn from_settings(
        s: &crate::settings::Jwt,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Vec<Invalid>> {
        let mut invalid = Vec::new();
        let mut static_keys = Vec::new();
        for (i, k) in s.key_files.iter().enumerate() {
            match key_from_file(k) {
                Ok(key) => static_keys.push(key),
                Err((field, why)) => {
                    invalid.push(Invalid::new(format!("jwt.key_files.{i}.{field}"), why))
                }
            }
        }
        let url = jwks_url(&s.jwks_url).map_err(|i| invalid.push(i));
        let tls = client_tls(&s.jwks_ca_file)
            .map_err(|why| invalid.push(Invalid::new("jwt.jwks_ca_file", why)));
        let (Ok(url), Ok(tls), true) = (url, tls, invalid.is_empty()) else {
            return Err(invalid);
        };
        let algorithms: Vec<Algorithm> =
            s.algorithms.iter().filter_map(|a| a.parse().ok()).collect();
        let verifier = Arc::new(Verifier::new(
            gatehouse_common::jwt::Policy {
                issuer: s.issuer.clone(),
                audience: s.audience.clone(),
                algorithms: algorithms.clone(),
                leeway_secs: s.leeway_seconds,
                cache_capacity: s.cache_capacity,
            },
            KeySet::new(static_keys.clone()),
        ));
        Ok(Self::new(
            url,
            tls,
            static_keys,
            algorithms,
            verifier,
            Duration::from_secs(s.min_refetch_seconds),
            metrics,
        ))
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Fetches and installs the key set (after any fetch in flight); on any failure the
    /// current keys stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        if self.url.is_none() {
            return Ok(self.static_keys.len());
        }
        let mut fetches = self.fetches.lock().await;
        self.refresh_locked(&mut fetches).await
    }

    async fn refresh_locked(&self, fetches: &mut Fetches) -> Result<usize, String> {
        fetches.started = Some(Instant::now());
        let result = self.install(fetches).await;
        fetches.finished = Some(Instant::now());
        result
    }

    async fn install(&self, fetches: &mut Fetches) -> Result<usize, String> {
        let result = self.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .jwks_refreshes
            .with_label_values(&[outcome])
            .inc();
        let set = result?;
        let (fetched, skipped) = KeySet::from_jwks(&set, &self.allowed);
        let digest = digest(&set, &fetched);
        let mut all: Vec<VerificationKey> = self.static_keys.clone();
        all.extend(
            fetched
                .kids()
                .into_iter()
                .filter_map(|k| fetched.get(k).cloned()),
        );
        let keys = KeySet::new(all);
        for s in skipped {
            tracing::warn!(reason = %s, "JWKS key skipped");
        }
        if keys.is_empty() {
            return Err("JWKS has no usable key; keeping the previous set".into());
        }
        let n = keys.len();
        // Compared by content: a key replaced under the same `kid` is a change too.
        if fetches.installed != Some(digest) {
            let mut kids = keys.kids();
            kids.sort_unstable();
            tracing::info!(kids = ?kids, "JWKS keys installed");
            self.verifier.replace_keys(keys);
            fetches.installed = Some(digest);
        }
        Ok(n)
    }

    /// For a token the current keys refused (unknown `kid`, or a signature that fails under a
    /// known one): whether verifying again is worth it. Waits for a fetch in flight and answers
    /// true once one ended after `rejected_at`; otherwise fetches, unless a fetch started within
    /// `min_refetch` (tokens that name keys nobody has cost at most one fetch per interval).
    pub async fn refetch_after_rejection(&self, rejected_at: Instant) -> bool {
        if self.url.is_none() {
            return false;
        }
        let mut fetches = self.fetches.lock().await;
        if fetches.finished.is_some_and(|t| t >= rejected_at) {
            return true;
        }
        if fetches
            .started
            .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return false;
        }
        match self.refresh_locked(&mut fetches).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch for a rejected token failed");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let Some(url) = self.url.clone() else {
            return Ok(JwkSet::default());
        };
        let req = http::Request::get(url)
            .header("accept", "application/jwk-set+json, application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| "JWKS fetch timed out".to_string())?
            .map_err(|e| format!("JWKS fetch: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS fetch: HTTP {}", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("JWKS fetch: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("JWKS fetch: not a JWK Set: {e}"))
    }
}

/// What identifies the fetched keys in use: each accepted JWK (all its members, so its
/// material) with its `kid`, in `kid` order.
fn digest(set: &JwkSet, accepted: &KeySet) -> [u8; 32] {
    let mut used: Vec<(&str, String)> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.as_deref()?;
            accepted.get(kid)?;
            Some((kid, serde_json::to_string(jwk).unwrap_or_default()))
        })
        .collect();
    used.sort();
    let mut h = Sha256::new();
    for (kid, jwk) in used {
        h.update(kid.as_bytes());
        h.update([0]);
        h.update(jwk.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// TLS for fetching keys: the public web roots, plus the CA certificates in `ca_file` (PEM).
pub fn client_tls(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file).map_err(|e| format!("{ca_file}: {e}"))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{ca_file}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{ca_file}: not a usable CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{ca_file}: no PEM certificate in it"));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// A PEM public key (SPKI) with its configured `kid` and algorithm.
/// The key of a `[[jwt.key_files]]` entry; else the field at fault and why.
fn key_from_file(k: &crate::settings::KeyFile) -> Result<VerificationKey, (&'static str, String)> {
    let alg: Algorithm = k.algorithm.parse().map_err(|_| {
        (
            "algorithm",
            format!("{:?} is not a JWS algorithm", k.algorithm),
        )
    })?;
    let pem =
        std::fs::read(&k.path).map_err(|e| ("path", format!("{}: cannot read: {e}", k.path)))?;
    let key = match alg {
        Algorithm::EdDSA => jsonwebtoken::DecodingKey::from_ed_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => jsonwebtoken::DecodingKey::from_ec_pem(&pem),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => jsonwebtoken::DecodingKey::from_rsa_pem(&pem),
        _ => return Err(("algorithm", "symmetric keys are not accepted".into())),
    }
    .map_err(|e| ("path", format!("{}: not a {alg:?} public key: {e}", k.path)))?;
    Ok(VerificationKey {
        kid: k.kid.clone(),
        alg,
        key,
    })
}
