//! TLS: the server configuration (TLS 1.2/1.3, forward-secret AEAD suites only, ALPN h2,
//! http/1.1 and `acme-tls/1`) and one rustls `ResolvesServerCert` whose certificates sit behind
//! swappable pointers, so a new certificate serves new handshakes at once while existing
//! connections keep theirs. Three layers, first match wins: TLS-ALPN-01 challenge certificates
//! (only for handshakes that offer `acme-tls/1`), ACME-issued certificates by name, and the
//! configured store — PEM `files` (also the fallback while ACME has not issued yet) or
//! `self-signed` (development: a throwaway CA + leaf written under `certs/dev/`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::settings::{Invalid, Tls, TlsSource};

/// Certificates by name, plus the one served when SNI is absent or unknown.
#[derive(Debug, Default)]
pub struct CertStore {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Adds a chain; its DNS/IP subject alternative names index it. The first one added is
    /// the default.
    pub fn add(
        &mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Vec<String>, String> {
        let leaf = chain.first().ok_or("empty certificate chain")?;
        let names = subject_names(leaf)?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("private key: {e}"))?;
        let ck = Arc::new(CertifiedKey::new(chain, signer));
        for n in &names {
            self.by_name.entry(n.clone()).or_insert_with(|| ck.clone());
        }
        if self.default.is_none() {
            self.default = Some(ck);
        }
        Ok(names)
    }

    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(ck) = self.by_name.get(&name) {
            return Some(ck.clone());
        }
        // One-label wildcard (RFC 6125 §6.4.3).
        if let Some((_, parent)) = name.split_once('.')
            && let Some(ck) = self.by_name.get(&format!("*.{parent}"))
        {
            return Some(ck.clone());
        }
        self.default.clone()
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type ByName = HashMap<String, Arc<CertifiedKey>>;

/// The resolver of the HTTPS listener; every layer swaps atomically on its own.
#[derive(Debug, Default)]
pub struct Resolver {
    store: ArcSwap<CertStore>,
    issued: ArcSwap<ByName>,
    challenges: ArcSwap<ByName>,
}

impl Resolver {
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
            ..Self::default()
        }
    }

    /// Swaps the configured certificates (reload); issued ones stay.
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    /// Serves `key` for `name` from the next handshake on.
    pub fn install(&self, name: &str, key: Arc<CertifiedKey>) {
        self.issued.rcu(|m| {
            let mut m = ByName::clone(m);
            m.insert(name.to_ascii_lowercase(), key.clone());
            m
        });
    }

    /// The certificate served for `name` now, if it was issued.
    pub fn issued(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(&name.to_ascii_lowercase()).cloned()
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with `key` (None: stop answering).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        self.challenges.rcu(|m| {
            let mut m = ByName::clone(m);
            match &key {
                Some(k) => m.insert(name.to_ascii_lowercase(), k.clone()),
                None => m.remove(&name.to_ascii_lowercase()),
            };
            m
        });
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            // A validation handshake only ever gets a challenge certificate.
            return self.challenges.load().get(sni.as_deref()?).cloned();
        }
        if let Some(name) = &sni
            && let Some(key) = self.issued.load().get(name)
        {
            return Some(key.clone());
        }
        self.store.load().lookup(sni.as_deref())
    }
}

/// The rustls configuration of the HTTPS listener.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Stateless resumption (TLS 1.3 tickets, keys rotated every 6 h): a returning client skips
    // the full handshake's signature and key exchange.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// A rustls signing key and chain from PEM text (as ACME issues and storage keeps them).
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?
        .ok_or("no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn subject_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Reads a PEM chain and key.
pub fn read_pem(
    cert_path: &str,
    key_path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = std::fs::read(cert_path).map_err(|e| format!("{cert_path}: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut certs.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_path}: no certificate in file"));
    }
    let key = std::fs::read(key_path).map_err(|e| format!("{key_path}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|e| format!("{key_path}: {e}"))?
        .ok_or_else(|| format!("{key_path}: no private key in file"))?;
    Ok((chain, key))
}

/// The certificate store of these settings: none when the HTTPS listener is off.
pub fn load_for(settings: &crate::settings::Settings) -> Result<CertStore, Invalid> {
    if settings.listen.https_enabled() {
        load(&settings.tls)
    } else {
        Ok(CertStore::default())
    }
}

/// Builds the certificate store the configuration asks for.
pub fn load(tls: &Tls) -> Result<CertStore, Invalid> {
    let mut store = CertStore::default();
    match tls.source {
        // With ACME, configured files serve until (and for names without) an issued certificate.
        TlsSource::Files | TlsSource::Acme => {
            for (i, c) in tls.certificates.iter().enumerate() {
                // With ACME an unset fallback (`${TLS_CERT_FILE:-}`) means: no fallback.
                if tls.source == TlsSource::Acme && c.cert.is_empty() && c.key.is_empty() {
                    continue;
                }
                let at = |why: String| Invalid::new(format!("tls.certificates.{i}"), why);
                if c.cert.is_empty() || c.key.is_empty() {
                    return Err(at("cert and key must name PEM files (the shipped configuration reads TLS_CERT_FILE and TLS_KEY_FILE)".into()));
                }
                let (chain, key) = read_pem(&c.cert, &c.key).map_err(at)?;
                store.add(chain, key).map_err(at)?;
            }
        }
        TlsSource::SelfSigned => {
            let at = |why| Invalid::new("tls.self_signed_dir", why);
            let (chain, key) =
                self_signed(&tls.self_signed_names, Path::new(&tls.self_signed_dir)).map_err(at)?;
            store.add(chain, key).map_err(at)?;
        }
    }
    Ok(store)
}

/// A development CA and a leaf for `names`, reused from `dir` when present (so a browser
/// exception or a trusted CA survives restarts), written there otherwise. rustls clients
/// reject a certificate that is its own CA, hence CA + leaf.
pub fn self_signed(
    names: &[String],
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let cert_path = dir.join("gateway.pem");
    let key_path = dir.join("gateway.key");
    if cert_path.exists()
        && key_path.exists()
        && let Ok(pair) = read_pem(&cert_path.to_string_lossy(), &key_path.to_string_lossy())
    {
        return Ok(pair);
    }
    let err = |e: rcgen::Error| format!("self-signed certificate: {e}");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse development CA");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
    let mut leaf_params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(err)?;

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem()))
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| format!("self-signed key: {e}"))?;
    Ok((vec![leaf.der().clone(), ca.der().clone()], key))
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_index_the_store() {
        let dir = std::env::temp_dir().join(format!("gh-tls-{}", std::process::id()));
        let (chain, key) = self_signed(&["localhost".into(), "127.0.0.1".into()], &dir)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut store = CertStore::default();
        let names = store.add(chain, key).unwrap_or_default();
        assert_eq!(names, ["localhost", "127.0.0.1"]);
        assert!(store.lookup(Some("LOCALHOST")).is_some());
        assert!(store.lookup(None).is_some(), "default without SNI");
        // Reused on the next start.
        let again = read_pem(
            &dir.join("gateway.pem").to_string_lossy(),
            &dir.join("gateway.key").to_string_lossy(),
        );
        assert!(again.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
