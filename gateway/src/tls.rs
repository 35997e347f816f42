//! TLS certificates: one rustls `ResolvesServerCert` behind a swappable pointer, so new
//! certificates serve new handshakes at once while existing connections keep theirs (the ACME
//! source will swap through the same pointer). Sources: PEM `files`, and `self-signed`
//! (development: a throwaway CA + leaf written under `certs/dev/`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::settings::{Tls, TlsSource};

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

/// The resolver handed to the TLS listener; `replace` swaps every certificate atomically.
#[derive(Debug, Default)]
pub struct Resolver {
    store: ArcSwap<CertStore>,
}

impl Resolver {
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
        }
    }

    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().lookup(hello.server_name())
    }
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

/// Builds the certificate store the configuration asks for.
pub fn load(tls: &Tls) -> Result<CertStore, String> {
    let mut store = CertStore::default();
    match tls.source {
        TlsSource::Files => {
            for (i, c) in tls.certificates.iter().enumerate() {
                let (chain, key) =
                    read_pem(&c.cert, &c.key).map_err(|e| format!("tls.certificates.{i}: {e}"))?;
                store
                    .add(chain, key)
                    .map_err(|e| format!("tls.certificates.{i}: {e}"))?;
            }
        }
        TlsSource::SelfSigned => {
            let (chain, key) =
                self_signed(&tls.self_signed_names, Path::new(&tls.self_signed_dir))?;
            store.add(chain, key)?;
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

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
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
