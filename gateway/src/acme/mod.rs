//! Automatic certificates (RFC 8555) with instant-acme: one certificate per configured name,
//! obtained with HTTP-01 (answered on the plain-HTTP listener) or TLS-ALPN-01 (RFC 8737,
//! answered by the HTTPS listener's resolver), renewed when a fraction of the lifetime remains
//! or earlier when the CA's renewal information (ARI, RFC 9773) says so. Failures are retried
//! with exponential backoff and jitter while the current certificate keeps serving. With
//! `postgres` storage several gateways share account, certificates and HTTP-01 answers, and an
//! advisory lock lets one of them order at a time; the others pick the result up.
//!
//! HTTP-01 requests are answered from memory only: this instance's own orders, plus the shared
//! answers its follower keeps current (store.rs). No request ever queries storage, so a flood of
//! made-up tokens on port 80 costs a hash lookup each and cannot starve renewal. The ordering
//! instance asks the CA to validate only once every live instance holds the answer.
//!
//! This file is the manager (schedule, storage, installing what was issued, the HTTP-01
//! answers); one order against the CA is `order.rs`; storage is `store.rs`.

mod order;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use instant_acme::{Account, CertificateIdentifier, ChallengeType};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;

pub use store::{Answers, FileStore, PgStore, Store, Stored};

use crate::metrics::Metrics;
use crate::settings::{self, AcmeChallenge, AcmeStorage, TlsSource};
use crate::tls::Resolver;

/// The HTTP-01 path prefix (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// How long the ordering instance waits for every live instance to hold a new HTTP-01 answer
/// before it asks the CA anyway: the liveness window, after which a vanished instance no
/// longer counts.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(store::LIVE_WINDOW_SECS as u64);

/// RFC 8555 §8.3: a token is base64url without padding and carries at least 128 bits (22
/// characters). Longer than 256 characters is no CA's token either.
fn well_formed_token(token: &str) -> bool {
    (22..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random id for this process in shared storage (heartbeat and acks).
fn instance_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    let random: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{random}", std::process::id())
}

/// Checks a configured name: a DNS name the gateway can validate by itself (no wildcard: that
/// needs DNS-01; no IP address).
pub fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.is_empty() || d.len() > 253 {
        return Err("not a DNS name");
    }
    if d.starts_with("*.") {
        return Err("wildcards need DNS-01, which the gateway does not do");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("IP addresses are not supported; name a DNS name");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !d.split('.').all(label_ok) {
        return Err("not a DNS name (letters, digits, '-' and '.' only)");
    }
    Ok(())
}

/// Why an attempt failed, as counted in `acme_renewal_failures_total{reason}`.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    detail: String,
}

fn fail(reason: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        reason,
        detail: detail.into(),
    }
}

/// A certificate being served, and when it should be replaced.
struct Served {
    chain_pem: String,
    renew_at: SystemTime,
}

#[derive(Default)]
struct NameState {
    served: Option<Served>,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl NameState {
    fn due(&self, now: SystemTime, clock: Instant) -> bool {
        let wanted = self.served.as_ref().is_none_or(|s| now >= s.renew_at);
        wanted && self.next_attempt.is_none_or(|t| clock >= t)
    }
}

struct Storage {
    kind: (AcmeStorage, String, String),
    store: Box<dyn Store>,
}

/// The ACME side of the gateway: the background manager and the HTTP-01 answers.
pub struct Acme {
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    /// HTTP-01 answers of this instance's own orders (token → key authorization), filled
    /// before the challenge is published.
    answers: RwLock<HashMap<String, String>>,
    /// HTTP-01 answers in shared storage, as this instance's follower last read them.
    shared_answers: Arc<Answers>,
    /// This process in shared storage.
    instance: String,
    /// The follower task of the current shared storage.
    follower: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    storage: ArcSwapOption<Storage>,
    account: Mutex<Option<(String, Arc<Account>)>>,
    names: Mutex<HashMap<String, NameState>>,
}

impl Acme {
    pub fn new(resolver: Arc<Resolver>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            resolver,
            metrics,
            answers: RwLock::default(),
            shared_answers: Arc::default(),
            instance: instance_id(),
            follower: std::sync::Mutex::new(None),
            storage: ArcSwapOption::empty(),
            account: Mutex::new(None),
            names: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP-01 answer for a request path under [`CHALLENGE_PREFIX`], if there is one.
    /// Memory only: malformed tokens are refused before any lookup, the rest cost one hash
    /// lookup in each map.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX).unwrap_or_default();
        let outcome = |o: &str| {
            self.metrics
                .acme_http01_requests
                .with_label_values(&[o])
                .inc();
        };
        if !well_formed_token(token) {
            outcome("malformed");
            return None;
        }
        let answer = self
            .answers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
            .or_else(|| self.shared_answers.load().get(token).cloned());
        outcome(if answer.is_some() {
            "answered"
        } else {
            "unknown"
        });
        answer
    }

    /// The storage for the current settings (rebuilt when a reload changed where it is).
    fn storage(&self, a: &settings::Acme) -> Arc<Storage> {
        let kind = (a.storage, a.dir.clone(), a.database_url.clone());
        if let Some(s) = self.storage.load_full()
            && s.kind == kind
        {
            return s;
        }
        let store: Box<dyn Store> = match a.storage {
            AcmeStorage::Files => Box::new(FileStore::new(&a.dir)),
            AcmeStorage::Postgres => Box::new(PgStore::new(&a.database_url)),
        };
        let s = Arc::new(Storage { kind, store });
        self.storage.store(Some(s.clone()));
        self.follow(&s);
        s
    }

    /// Keeps [`Self::shared_answers`] current from `storage` (when it is shared) in a task of
    /// its own, replacing the follower of any previous storage.
    fn follow(&self, storage: &Arc<Storage>) {
        let mut follower = self.follower.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = follower.take() {
            old.abort();
        }
        self.shared_answers.store(Arc::default());
        if !storage.store.shared() {
            return;
        }
        let storage = storage.clone();
        let answers = self.shared_answers.clone();
        let reads = self.metrics.acme_challenge_reads.clone();
        let instance = self.instance.clone();
        let task = tokio::spawn(async move {
            storage
                .store
                .follow_challenges(&instance, &answers, &reads)
                .await;
        });
        *follower = Some(task.abort_handle());
    }

    /// Runs until shutdown: loads stored certificates, orders and renews what is due, picks
    /// up what other instances stored. Reads the live settings on every round, so a reload
    /// that adds a name gets it a certificate.
    pub async fn run(
        self: Arc<Self>,
        settings: impl Fn() -> settings::Tls,
        mut shutdown: pingora::server::ShutdownWatch,
    ) {
        let mut next_poll = Instant::now();
        loop {
            let tls = settings();
            if tls.source == TlsSource::Acme {
                let a = &tls.acme;
                let storage = self.storage(a);
                if Instant::now() >= next_poll {
                    self.pick_up(a, storage.store.as_ref()).await;
                    next_poll = Instant::now() + Duration::from_secs(a.poll_seconds);
                }
                self.order_due(a, storage.store.as_ref()).await;
            } else if self.storage.swap(None).is_some() {
                // A reload turned ACME off: stop following shared HTTP-01 answers.
                if let Some(f) = self
                    .follower
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    f.abort();
                }
                self.shared_answers.store(Arc::default());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // The follower keeps running: while draining (or handing its sockets over in
                // an upgrade) this process still answers HTTP-01 with current answers.
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Installs stored certificates that differ from what is served (start-up, restarts,
    /// another instance's renewal).
    async fn pick_up(&self, a: &settings::Acme, store: &dyn Store) {
        for name in &a.domains {
            match store.certificate(name).await {
                Ok(Some(stored)) => match self.adopt(a, name, &stored).await {
                    Ok(true) => tracing::info!(name, "certificate loaded from storage"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(name, error = %e, "stored certificate unusable; ordering a new one")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    self.count_failure(name, "storage");
                    tracing::error!(name, error = %e, "cannot read certificate storage");
                }
            }
        }
    }

    /// Installs `stored` unless `name` serves it already; whether it was installed.
    async fn adopt(&self, a: &settings::Acme, name: &str, stored: &Stored) -> Result<bool, String> {
        let serving = self
            .names
            .lock()
            .await
            .get(name)
            .and_then(|n| n.served.as_ref())
            .is_some_and(|s| s.chain_pem == stored.chain_pem);
        if serving {
            return Ok(false);
        }
        self.install(a, name, stored).await.map(|()| true)
    }

    async fn is_due(&self, name: &str) -> bool {
        self.names
            .lock()
            .await
            .get(name)
            .is_none_or(|n| n.due(SystemTime::now(), Instant::now()))
    }

    async fn order_due(&self, a: &settings::Acme, store: &dyn Store) {
        let now = SystemTime::now();
        let clock = Instant::now();
        let due: Vec<String> = {
            let mut names = self.names.lock().await;
            a.domains
                .iter()
                .filter(|d| names.entry((*d).clone()).or_default().due(now, clock))
                .cloned()
                .collect()
        };
        if due.is_empty() {
            return;
        }
        match store.try_lock().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("another gateway instance is ordering; waiting for its result");
                return;
            }
            Err(e) => {
                for name in &due {
                    self.record_failure(a, name, fail("storage", e.clone()))
                        .await;
                }
                return;
            }
        }
        for name in &due {
            // Another instance may have renewed while we waited for the lock.
            if let Ok(Some(stored)) = store.certificate(name).await
                && self.adopt(a, name, &stored).await == Ok(true)
                && !self.is_due(name).await
            {
                tracing::info!(name, "certificate renewed by another instance");
                continue;
            }
            self.attempt(a, store, name).await;
        }
        store.unlock().await;
    }

    async fn attempt(&self, a: &settings::Acme, store: &dyn Store, name: &str) {
        self.metrics.acme_attempts.with_label_values(&[name]).inc();
        let failures = self.names.lock().await.get(name).map_or(0, |n| n.failures);
        let kind = match a.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Auto if failures % 2 == 0 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Auto => ChallengeType::Http01,
        };
        tracing::info!(name, challenge = ?kind, directory = %a.directory, "ordering a certificate");
        let issued = self.order(a, store, name, kind.clone()).await;
        let result = match issued {
            Ok(stored) => {
                let saved = store.save_certificate(name, &stored).await;
                let installed = self.install(a, name, &stored).await;
                match (saved, installed) {
                    (_, Err(e)) => Err(fail("bad_certificate", e)),
                    (Err(e), Ok(())) => {
                        // Serving it anyway; the next start orders again.
                        tracing::error!(name, error = %e, "issued certificate not stored");
                        self.count_failure(name, "storage");
                        Ok(())
                    }
                    (Ok(()), Ok(())) => Ok(()),
                }
            }
            Err(f) => Err(f),
        };
        match result {
            Ok(()) => {
                let mut names = self.names.lock().await;
                let state = names.entry(name.to_string()).or_default();
                state.failures = 0;
                state.next_attempt = None;
                self.metrics
                    .acme_last_success
                    .with_label_values(&[name])
                    .set(unix_now() as i64);
                tracing::info!(name, "certificate issued and serving");
            }
            Err(f) => self.record_failure(a, name, f).await,
        }
    }

    fn count_failure(&self, name: &str, reason: &str) {
        self.metrics
            .acme_failures
            .with_label_values(&[name, reason])
            .inc();
    }

    async fn record_failure(&self, a: &settings::Acme, name: &str, f: Failure) {
        self.count_failure(name, f.reason);
        let mut names = self.names.lock().await;
        let state = names.entry(name.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        let wait = backoff(
            Duration::from_secs(a.retry_min_seconds),
            Duration::from_secs(a.retry_max_seconds),
            state.failures,
        );
        state.next_attempt = Some(Instant::now() + wait);
        tracing::error!(
            name,
            reason = f.reason,
            error = %f.detail,
            failures = state.failures,
            retry_in_seconds = wait.as_secs_f64(),
            serving = state.served.is_some(),
            "certificate order failed; the current certificate keeps serving"
        );
    }

    /// Makes `stored` the certificate served for `name` and schedules its renewal.
    async fn install(&self, a: &settings::Acme, name: &str, stored: &Stored) -> Result<(), String> {
        let key = crate::tls::certified_key(&stored.chain_pem, &stored.key_pem)?;
        let leaf = key.cert.first().ok_or("empty chain")?.clone();
        let (not_before, not_after) = validity(&leaf)?;
        if !covers(&leaf, name) {
            return Err(format!("the certificate does not name {name}"));
        }
        if not_after <= SystemTime::now() {
            return Err("the certificate has expired".into());
        }
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let mut renew_at = not_after - lifetime.mul_f64(a.renew_remaining_fraction);
        if let Some(ari) = self.renewal_window(&leaf).await
            && ari < renew_at
        {
            tracing::info!(
                name,
                "the CA's renewal information asks for an earlier renewal"
            );
            renew_at = ari;
        }
        self.resolver.install(name, key);
        self.metrics
            .certificate_expiry
            .with_label_values(&[name])
            .set(unix(not_after) as i64);
        let mut names = self.names.lock().await;
        let state = names.entry(name.to_string()).or_default();
        state.served = Some(Served {
            chain_pem: stored.chain_pem.clone(),
            renew_at,
        });
        tracing::info!(
            name,
            not_after = unix(not_after),
            renew_in_seconds = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .as_secs(),
            "certificate serving"
        );
        Ok(())
    }

    /// A time inside the CA's suggested renewal window (ARI), when the CA has one and an
    /// account is already open.
    async fn renewal_window(&self, leaf: &CertificateDer<'static>) -> Option<SystemTime> {
        let account = self.account.lock().await.as_ref().map(|(_, a)| a.clone())?;
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                let start = info.suggested_window.start.unix_timestamp();
                let end = info.suggested_window.end.unix_timestamp().max(start);
                let pick = start + ((end - start) as f64 * rand_unit()) as i64;
                Some(UNIX_EPOCH + Duration::from_secs(pick.max(0) as u64))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "renewal information unavailable");
                None
            }
        }
    }
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

fn covers(leaf: &CertificateDer<'_>, name: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|n| {
                matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name))
            })
        })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// A number in [0, 1) that differs between instances and calls (jitter only).
fn rand_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `min · 2^(failures-1)`, at most `max`, times a jitter factor in [0.75, 1.25).
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.75 + rand_unit() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_the_gateway_can_validate() {
        assert!(check_domain("api.example.com").is_ok());
        assert!(check_domain("localhost").is_ok());
        assert!(check_domain("*.example.com").is_err());
        assert!(check_domain("127.0.0.1").is_err());
        assert!(check_domain("bad_name.example").is_err());
        assert!(check_domain("-x.example").is_err());
        assert!(check_domain("").is_err());
    }

    #[test]
    fn challenge_tokens_are_checked_before_any_lookup() {
        // RFC 8555 §8.3: base64url, no padding, >= 128 bits.
        assert!(well_formed_token(
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
        ));
        assert!(well_formed_token(&"A".repeat(22)));
        assert!(!well_formed_token(&"A".repeat(21)), "under 128 bits");
        assert!(!well_formed_token(&"A".repeat(257)));
        for bad in [
            "",
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA=",
            "../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaa",
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ+PCt92wr/oA",
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ%2FCt92wr-oA",
        ] {
            assert!(!well_formed_token(bad), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let min = Duration::from_secs(10);
        let max = Duration::from_secs(100);
        for (failures, base) in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (9, 100.0)] {
            let b = backoff(min, max, failures).as_secs_f64();
            assert!(b >= base * 0.75 && b < base * 1.25, "{failures}: {b}");
        }
    }
}
