//! One order against the CA (RFC 8555 §7): the account (with external account binding when the
//! CA asks for one), the order and its authorizations, the challenge — HTTP-01 answers
//! published to storage and memory, TLS-ALPN-01 validation certificates (RFC 8737) in the
//! resolver — finalization and download; and what instant-acme's errors mean for the
//! `acme_renewal_failures_total{reason}` label.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{Acme, Failure, PROPAGATION_TIMEOUT, Store, Stored, fail};
use crate::settings;

impl Acme {
    /// The account for the configured directory: from storage, or created once and stored.
    /// `fresh`: the CA no longer knows the stored one (a CA reset); create and store another.
    pub(super) async fn account(
        &self,
        a: &settings::Acme,
        store: &dyn Store,
        fresh: bool,
    ) -> Result<Arc<Account>, Failure> {
        let mut cached = self.account.lock().await;
        if let Some((dir, account)) = cached.as_ref()
            && dir == &a.directory
            && !fresh
        {
            return Ok(account.clone());
        }
        let builder = || {
            if a.ca_file.is_empty() {
                Account::builder()
            } else {
                Account::builder_with_root(&a.ca_file)
            }
            .map_err(|e| fail("tls_setup", format!("tls.acme.ca_file: {e}")))
        };
        let stored = if fresh {
            None
        } else {
            store
                .account(&a.directory)
                .await
                .map_err(|e| fail("storage", e))?
        };
        let account = match stored {
            Some(json) => {
                let creds: AccountCredentials = serde_json::from_str(&json)
                    .map_err(|e| fail("storage", format!("stored account unreadable: {e}")))?;
                builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| classify("account", e))?
            }
            None => {
                // `["${ACME_CONTACT:-}"]` leaves an empty entry when the variable is unset.
                let contact: Vec<&str> = a
                    .contact
                    .iter()
                    .map(String::as_str)
                    .filter(|c| !c.is_empty())
                    .collect();
                let eab = if a.eab_kid.is_empty() {
                    None
                } else {
                    use base64::Engine;
                    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(a.eab_hmac_key.trim_end_matches('='))
                        .map_err(|_| fail("config", "tls.acme.eab_hmac_key is not base64url"))?;
                    Some(ExternalAccountKey::new(a.eab_kid.clone(), &key))
                };
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        a.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| classify("account", e))?;
                let json =
                    serde_json::to_string(&creds).map_err(|e| fail("storage", e.to_string()))?;
                store
                    .save_account(&a.directory, &json)
                    .await
                    .map_err(|e| fail("storage", e))?;
                tracing::info!(account = account.id(), directory = %a.directory, "ACME account created");
                account
            }
        };
        let account = Arc::new(account);
        *cached = Some((a.directory.clone(), account.clone()));
        Ok(account)
    }

    /// One order for `name`: challenges published, validated, finalized, downloaded. Published
    /// challenge answers are withdrawn whatever the outcome.
    pub(super) async fn order(
        &self,
        a: &settings::Acme,
        store: &dyn Store,
        name: &str,
        kind: ChallengeType,
    ) -> Result<Stored, Failure> {
        let identifiers = [Identifier::Dns(name.to_string())];
        let new_order = NewOrder::new(&identifiers);
        let account = self.account(a, store, false).await?;
        let mut order = match account.new_order(&new_order).await {
            Err(instant_acme::Error::Api(p))
                if p
                    .r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                tracing::warn!(directory = %a.directory, "the CA no longer knows the stored account; creating a new one");
                self.account(a, store, true)
                    .await?
                    .new_order(&new_order)
                    .await
            }
            other => other,
        }
        .map_err(|e| classify("new order", e))?;
        let url = order.url().to_string();
        tracing::info!(name, order = %url, "ACME order created");
        let mut tokens = Vec::new();
        let mut alpn = false;
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| classify("authorization", e))?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(fail(
                            "challenge_failed",
                            format!("authorization is {other:?}"),
                        ));
                    }
                }
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    fail(
                        "challenge_unavailable",
                        format!("the CA offers no {kind:?} challenge for {name}"),
                    )
                })?;
                let key_auth = challenge.key_authorization();
                if kind == ChallengeType::Http01 {
                    let token = challenge.token.clone();
                    self.answers
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(token.clone(), key_auth.as_str().to_string());
                    tokens.push(token.clone());
                    store
                        .put_challenge(&token, key_auth.as_str())
                        .await
                        .map_err(|e| fail("storage", e))?;
                    // The CA may ask any instance behind the name: tell it to validate only
                    // when they all hold the answer (or have stopped proving they live).
                    let missing = store
                        .await_propagation(&token, PROPAGATION_TIMEOUT)
                        .await
                        .map_err(|e| fail("storage", e))?;
                    if missing > 0 {
                        tracing::warn!(
                            name,
                            instances = missing,
                            "HTTP-01 answer not confirmed by every live gateway instance in time; asking the CA to validate anyway"
                        );
                    }
                } else {
                    let cert = alpn_certificate(name, key_auth.digest().as_ref())
                        .map_err(|e| fail("challenge_setup", e))?;
                    self.resolver.set_challenge(name, Some(cert));
                    alpn = true;
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| classify("challenge", e))?;
                tracing::info!(name, order = %url, challenge = ?kind, "challenge ready for validation");
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(90));
            let status = order
                .poll_ready(&retry)
                .await
                .map_err(|e| classify("validation", e))?;
            if status != OrderStatus::Ready {
                let why = challenge_errors(&mut order).await;
                return Err(fail(
                    "challenge_failed",
                    format!("validation failed ({status:?}): {why}"),
                ));
            }
            tracing::info!(name, order = %url, "validated; finalizing");
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| classify("finalize", e))?;
            let chain_pem = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| classify("certificate download", e))?;
            Ok(Stored { chain_pem, key_pem })
        }
        .await;
        for token in &tokens {
            self.answers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(token);
            if let Err(e) = store.remove_challenge(token).await {
                tracing::warn!(error = %e, "HTTP-01 answer not removed from storage");
            }
        }
        if alpn {
            self.resolver.set_challenge(name, None);
        }
        result
    }
}

/// What the CA said about failed challenges of `order`.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    if let Some(p) = &order.state().error {
        out.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    out.push(p.to_string());
                }
            }
        }
    }
    if out.is_empty() {
        "no detail from the CA".into()
    } else {
        out.join("; ")
    }
}

/// The RFC 8737 validation certificate: self-signed, `name` as its only SAN, the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Maps an instant-acme error at `stage` to a reason and a message naming the cause.
fn classify(stage: &str, e: instant_acme::Error) -> Failure {
    use instant_acme::Error as E;
    match e {
        E::Api(p) => fail("ca_rejected", format!("{stage}: the CA refused: {p}")),
        E::Timeout(_) => fail("timeout", format!("{stage}: the CA did not finish in time")),
        E::Http(_) | E::Hyper(_) | E::Other(_) => fail(
            "ca_unreachable",
            format!("{stage}: cannot reach the CA: {}", error_chain(&e)),
        ),
        other => fail("protocol", format!("{stage}: {}", error_chain(&other))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::covers;

    #[test]
    fn alpn_certificate_names_only_the_domain_and_carries_the_digest() {
        let digest = [7u8; 32];
        let key = alpn_certificate("acme.test", &digest).unwrap_or_else(|e| panic!("{e}"));
        let leaf = &key.cert[0];
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        assert!(covers(leaf, "acme.test"));
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap_or_else(|| panic!("acmeIdentifier extension"));
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &digest, "DER OCTET STRING of the digest");
    }
}
