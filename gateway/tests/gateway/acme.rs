//! Automatic certificates against a real ACME server (Pebble): first issuance over HTTP-01 and
//! TLS-ALPN-01, renewal of short-lived certificates under load, the CA going away and coming
//! back, restarts from storage, two gateways sharing PostgreSQL storage, and bad inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{Echo, Gateway, Options, TestConfig, TestKey, free_port, list, rustls_client};
use crate::pebble::Pebble;

const NAME: &str = "a.gatehouse.test";

struct Ports {
    https: u16,
    http: u16,
    admin: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            https: free_port(),
            http: free_port(),
            admin: free_port(),
        }
    }

    fn tuple(&self) -> (u16, u16, u16) {
        (self.https, self.http, self.admin)
    }
}

fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{label}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where a test keeps the ACME state.
#[derive(Clone, Copy)]
enum Storage<'a> {
    Files(&'a Path),
    Postgres(&'a str),
}

/// `tls.source = "acme"` for `NAME` against `directory`, retrying after a second.
fn acme(c: &mut TestConfig, directory: &str, storage: Storage) {
    c.set("tls.source", "acme")
        // ACME steps log at info.
        .set("log.level", "info,access=warn,rustls=error")
        .set("tls.acme.directory", directory)
        .set("tls.acme.domains", list(&[NAME]))
        .set("tls.acme.retry_min_seconds", 1);
    match storage {
        Storage::Files(dir) => c
            .set("tls.acme.storage", "files")
            .set("tls.acme.dir", dir.display().to_string()),
        Storage::Postgres(url) => c
            .set("tls.acme.storage", "postgres")
            .set("tls.acme.database_url", url),
    };
}

/// `acme` against `pebble`, validating by `challenge`, storage read every second.
fn acme_config(c: &mut TestConfig, pebble: &Pebble, challenge: &str, storage: Storage) {
    acme(c, &pebble.directory, storage);
    c.set("tls.acme.ca_file", pebble.ca_file.display().to_string())
        .set("tls.acme.challenge", challenge)
        .set("tls.acme.retry_max_seconds", 4)
        .set("tls.acme.poll_seconds", 1);
}

/// Handshakes with `name` as SNI, verifying against `root_pem`; the leaf's serial (hex).
async fn served_serial(port: u16, name: &str, root_pem: &str) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(rustls_client(root_pem.as_bytes()))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone();
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(cert.raw_serial_as_string())
}

/// Waits until the gateway serves a certificate for `NAME` that verifies against Pebble's
/// root and differs from `previous`; its serial.
async fn wait_for_certificate(gw: &Gateway, pebble: &Pebble, previous: Option<&str>) -> String {
    let root = pebble.root().await;
    let mut last = String::new();
    for _ in 0..300 {
        match served_serial(gw.https, NAME, &root).await {
            Ok(serial) if Some(serial.as_str()) != previous => return serial,
            Ok(_) => last = "still the previous certificate".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no (new) certificate served: {last}\n--- gateway ---\n{}",
        gw.log()
    );
}

/// A client that trusts Pebble's root and resolves `NAME` to the gateway.
fn client_for(gw: &Gateway, root: &str, keep_alive: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve(NAME, ([127, 0, 0, 1], gw.https).into())
        .http1_only();
    if !keep_alive {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

async fn start_gateway(ports: &Ports, echo: &Echo, tweak: impl FnOnce(&mut TestConfig)) -> Gateway {
    Gateway::start_on(ports.tuple(), Options::echo(echo), tweak).await
}

const OTHER: &str = "b.gatehouse.test";

#[tokio::test]
async fn first_certificates_over_http01_verify_against_the_ca_and_follow_sni() {
    let ports = Ports::new();
    // The CA requires external account binding (as ZeroSSL, Google Trust Services do).
    let (kid, hmac) = (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    );
    let pebble = Pebble::start_with(ports.http, ports.https, 3600, &[], Some((kid, hmac))).await;
    let echo = Echo::start(TestKey::new(31).jwks.clone()).await;
    let store = scratch("acme-files");
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", Storage::Files(&store));
        c.set("tls.acme.eab_kid", kid)
            .set("tls.acme.eab_hmac_key", hmac)
            .set("tls.acme.domains", list(&[NAME, OTHER]));
    })
    .await;
    let first = wait_for_certificate(&gw, &pebble, None).await;
    let root = pebble.root().await;
    // One certificate per name, chosen by SNI.
    let mut other = Err(String::new());
    for _ in 0..100 {
        other = served_serial(gw.https, OTHER, &root).await;
        if other.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(other.unwrap(), first);
    let r = client_for(&gw, &root, true)
        .get(format!("https://{NAME}:{}/open/x", gw.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_log("ACME order created", 10).await;
    assert_eq!(
        gw.metric("gatehouse_gateway_acme_renewal_attempts_total")
            .await,
        2.0
    );
    assert!(
        gw.metric("gatehouse_gateway_certificate_expiry_seconds")
            .await
            > 0.0
    );
    assert_eq!(
        pebble.log().matches("POST /sign-me-up").count(),
        1,
        "one account"
    );
    // Stored for the next start: chain and a private key only its owner can read.
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(store.join(NAME).join("key.pem")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert!(store.join(NAME).join("cert.pem").exists());
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn first_certificate_over_tls_alpn01_with_port_80_closed() {
    let ports = Ports::new();
    // Pebble's HTTP-01 port points nowhere: only TLS-ALPN-01 on the HTTPS port can work.
    let pebble = Pebble::start(free_port(), ports.https, 3600, &[]).await;
    let echo = Echo::start(TestKey::new(32).jwks.clone()).await;
    let store = scratch("acme-files");
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "tls-alpn-01", Storage::Files(&store))
    })
    .await;
    wait_for_certificate(&gw, &pebble, None).await;
    assert_eq!(
        gw.metric("gatehouse_gateway_acme_renewal_failures_total")
            .await,
        0.0
    );
    let _ = std::fs::remove_dir_all(&store);
}

/// The `retry_in_seconds` of every failed attempt in the log, in order.
fn retry_waits(log: &str) -> Vec<f64> {
    log.split("\"retry_in_seconds\":")
        .skip(1)
        .filter_map(|rest| {
            rest.split([',', '}'])
                .next()
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

#[tokio::test]
async fn short_lived_certificates_renew_under_load_without_a_failed_request() {
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https, 20, &[]).await;
    let echo = Echo::start(TestKey::new(33).jwks.clone()).await;
    let store = scratch("acme-files");
    // Renew when 3/4 of a 20-second lifetime remain: 5 s after issuance.
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", Storage::Files(&store));
        c.set("tls.acme.renew_remaining_fraction", 0.75);
    })
    .await;
    let first = wait_for_certificate(&gw, &pebble, None).await;
    let root = pebble.root().await;
    let keep_alive = client_for(&gw, &root, true);
    let fresh = client_for(&gw, &root, false);
    let url = format!("https://{NAME}:{}/open/loop", gw.https);
    let mut renewed = None;
    let mut requests = 0;
    for _ in 0..400 {
        for (kind, client) in [("keep-alive", &keep_alive), ("new connection", &fresh)] {
            let r = client.get(&url).send().await;
            let status = r
                .as_ref()
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string());
            assert_eq!(status, Ok(200), "{kind} request {requests} during renewal");
            requests += 1;
        }
        let serial = served_serial(gw.https, NAME, &root).await.unwrap();
        if serial != first {
            renewed = Some(serial);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed.is_some(), "the certificate was renewed");
    assert!(
        gw.metric("gatehouse_gateway_acme_renewal_attempts_total")
            .await
            >= 2.0
    );
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn ca_outage_keeps_the_certificate_serving_backs_off_and_recovers() {
    let ports = Ports::new();
    let mut pebble = Pebble::start(ports.http, ports.https, 3600, &[]).await;
    let echo = Echo::start(TestKey::new(34).jwks.clone()).await;
    let store = scratch("acme-files");
    // Renew almost at once (when 99.9 % of the hour remains: after 3.6 s).
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", Storage::Files(&store));
        c.set("tls.acme.renew_remaining_fraction", 0.999);
    })
    .await;
    let first = wait_for_certificate(&gw, &pebble, None).await;
    let old_root = pebble.root().await;
    pebble.stop();
    let failures = "gatehouse_gateway_acme_renewal_failures_total{name=\"a.gatehouse.test\",reason=\"ca_unreachable\"}";
    gw.wait_metric(failures, 3.0, 30).await;
    // The certificate in hand keeps serving while the CA is away.
    assert_eq!(
        served_serial(gw.https, NAME, &old_root).await,
        Ok(first.clone())
    );
    let waits = retry_waits(&gw.log_when(|l| retry_waits(l).len() >= 3, 10).await);
    assert!(waits.len() >= 3, "{waits:?}");
    assert!(
        waits[0] < waits[1] && waits[1] < waits[2],
        "the backoff grows: {waits:?}"
    );
    gw.wait_log("cannot reach the CA", 10).await;
    // The CA comes back (a fresh Pebble: new root, no accounts) and renewal succeeds.
    pebble.restart().await;
    wait_for_certificate(&gw, &pebble, Some(&first)).await;
    gw.wait_log("no longer knows the stored account", 10).await;
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https, 3600, &[]).await;
    let echo = Echo::start(TestKey::new(35).jwks.clone()).await;
    let store = scratch("acme-files");
    let mut gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", Storage::Files(&store))
    })
    .await;
    let serial = wait_for_certificate(&gw, &pebble, None).await;
    assert_eq!(pebble.orders(), 1);
    gw.restart().await;
    assert_eq!(wait_for_certificate(&gw, &pebble, None).await, serial);
    assert_eq!(
        gw.metric("gatehouse_gateway_acme_renewal_attempts_total")
            .await,
        0.0
    );
    assert_eq!(pebble.orders(), 1, "no new order after the restart");
    gw.wait_log("certificate loaded from storage", 10).await;
    // The account was reused too: Pebble saw one account created.
    assert_eq!(pebble.log().matches("POST /sign-me-up").count(), 1);
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn two_gateways_share_postgres_storage_with_one_order_per_renewal() {
    let url = acme_database().await;
    let (a_ports, b_ports) = (Ports::new(), Ports::new());
    // Pebble validates against B; A may be the one that orders.
    let pebble = Pebble::start(b_ports.http, b_ports.https, 30, &[]).await;
    let echo = Echo::start(TestKey::new(36).jwks.clone()).await;
    let shared = |c: &mut TestConfig| {
        acme_config(c, &pebble, "http-01", Storage::Postgres(&url));
        c.set("tls.acme.renew_remaining_fraction", 0.5);
    };
    let (a, b) = tokio::join!(
        start_gateway(&a_ports, &echo, shared),
        start_gateway(&b_ports, &echo, shared),
    );
    let first = wait_for_certificate(&a, &pebble, None).await;
    assert_eq!(
        wait_for_certificate(&b, &pebble, None).await,
        first,
        "both serve it"
    );
    const ATTEMPTS: &str = "gatehouse_gateway_acme_renewal_attempts_total";
    assert_eq!(
        a.metric(ATTEMPTS).await + b.metric(ATTEMPTS).await,
        1.0,
        "one order"
    );
    assert_eq!(pebble.orders(), 1);

    // An HTTP-01 answer stored by anyone is served by every instance, from memory: the
    // table's trigger notifies them, and each confirms it holds the answer.
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    const TOKEN: &str = "shared-token_0123456789abcdef";
    db.execute(
        "INSERT INTO gatehouse_acme_challenges (token, key_authorization) VALUES ($1, $1 || '.thumb')",
        &[&TOKEN],
    )
    .await
    .unwrap();
    for gw in [&a, &b] {
        let url = format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/{TOKEN}",
            gw.http
        );
        let mut answer = (0, String::new());
        for _ in 0..50 {
            let r = reqwest::get(&url).await.unwrap();
            answer = (r.status().as_u16(), r.text().await.unwrap());
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer, (200, format!("{TOKEN}.thumb")));
    }
    // Each instance writes its confirmation right after the answer is in memory, so it may
    // land a moment after the first 200.
    let mut acks = 0i64;
    for _ in 0..50 {
        acks = db
            .query_one(
                "SELECT count(*) FROM gatehouse_acme_challenge_acks WHERE token = $1",
                &[&TOKEN],
            )
            .await
            .unwrap()
            .get(0);
        if acks == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acks, 2, "both instances confirmed they hold it");

    // Renewal after 15 s: again exactly one order, and both serve the new certificate.
    let renewed = wait_for_certificate(&a, &pebble, Some(&first)).await;
    let mut same = false;
    for _ in 0..50 {
        if wait_for_certificate(&b, &pebble, Some(&first)).await == renewed {
            same = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same, "B picks up A's renewal (or the other way round)");
    assert_eq!(
        a.metric(ATTEMPTS).await + b.metric(ATTEMPTS).await,
        2.0,
        "one order per renewal"
    );
    assert_eq!(pebble.orders(), 2);
    // Every validation found its answer in memory on B, whichever instance ordered, and the
    // orderer never had to ask the CA before both instances held the answer.
    assert!(
        b.metric("gatehouse_gateway_acme_http01_requests_total{outcome=\"answered\"}")
            .await
            >= 2.0
    );
    for gw in [&a, &b] {
        assert!(
            !gw.log()
                .contains("not confirmed by every live gateway instance")
        );
    }
}

/// Issue 9, item 11: thousands of made-up tokens on port 80 while certificates are ordered
/// and renewed (shared PostgreSQL storage) are answered from memory: the orders succeed and
/// storage is read on change notifications and heartbeats only, never per request.
#[tokio::test]
async fn a_flood_of_unknown_tokens_on_port_80_neither_fails_renewal_nor_queries_storage() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let url = acme_database().await;
    let ports = Ports::new();
    // 20-second certificates renewed when 3/4 remain: an order at start, another 5 s later.
    let pebble = Pebble::start(ports.http, ports.https, 20, &[]).await;
    let echo = Echo::start(TestKey::new(38).jwks.clone()).await;
    let storage = Storage::Postgres(&url);
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", storage);
        c.set("tls.acme.renew_remaining_fraction", 0.75);
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (unknown, malformed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (stop, unknown, malformed) = (stop.clone(), unknown.clone(), malformed.clone());
        let base = format!("http://127.0.0.1:{}/.well-known/acme-challenge/", gw.http);
        flood.spawn(async move {
            let client = crate::helpers::plain_client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Well-formed tokens nobody issued, and every fourth one malformed.
                let (token, counter) = if n.is_multiple_of(4) {
                    (format!("short{n}"), &malformed)
                } else {
                    let t = format!("{}{worker}x{n}", uuid::Uuid::new_v4().simple());
                    (t, &unknown)
                };
                let r = client.get(format!("{base}{token}")).send().await.unwrap();
                assert_eq!(r.status(), 404, "{token}");
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let first = wait_for_certificate(&gw, &pebble, None).await;
    wait_for_certificate(&gw, &pebble, Some(&first)).await;
    // At least a few thousand, however fast this machine is.
    while unknown.load(Ordering::Relaxed) + malformed.load(Ordering::Relaxed) < 3000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    let sent_unknown = unknown.load(Ordering::Relaxed) as f64;
    let sent_malformed = malformed.load(Ordering::Relaxed) as f64;

    assert_eq!(
        gw.metric("gatehouse_gateway_acme_renewal_failures_total")
            .await,
        0.0,
        "no order failed"
    );
    assert_eq!(
        gw.metric("gatehouse_gateway_acme_renewal_attempts_total")
            .await,
        2.0
    );
    const HTTP01: &str = "gatehouse_gateway_acme_http01_requests_total";
    assert_eq!(
        gw.metric(&format!("{HTTP01}{{outcome=\"unknown\"}}")).await,
        sent_unknown
    );
    assert_eq!(
        gw.metric(&format!("{HTTP01}{{outcome=\"malformed\"}}"))
            .await,
        sent_malformed
    );
    assert!(
        gw.metric(&format!("{HTTP01}{{outcome=\"answered\"}}"))
            .await
            >= 2.0,
        "the CA's validations were answered"
    );
    // Reads follow changes (two orders: a few notifications each) and the 5 s heartbeat; a
    // query per request would be thousands.
    let reads = gw
        .metric("gatehouse_gateway_acme_challenge_storage_reads_total")
        .await;
    eprintln!(
        "flood: {sent_unknown} unknown + {sent_malformed} malformed tokens, {reads} storage reads"
    );
    assert!(
        (1.0..50.0).contains(&reads),
        "{reads} storage reads for {} requests",
        sent_unknown + sent_malformed
    );
}

/// A fresh database on the test cluster for the shared ACME storage.
async fn acme_database() -> String {
    let base = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is set by make test");
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let name = format!("acme_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    format!("{}/{name}", &base[..base.rfind('/').unwrap()])
}

#[tokio::test]
async fn unreachable_ca_and_rejected_name_are_reported_while_the_fallback_serves() {
    let ports = Ports::new();
    let echo = Echo::start(TestKey::new(37).jwks.clone()).await;
    let fallback = scratch("acme-fallback");
    gateway::tls::self_signed(&[NAME.into()], &fallback).unwrap();
    let store = scratch("acme-files");
    let unreachable = format!("https://127.0.0.1:{}/dir", free_port());
    let gw = start_gateway(&ports, &echo, |c| {
        acme(c, &unreachable, Storage::Files(&store));
        c.certificate(&fallback);
    })
    .await;
    let reason = "gatehouse_gateway_acme_renewal_failures_total{name=\"a.gatehouse.test\",reason=\"ca_unreachable\"}";
    gw.wait_metric(reason, 1.0, 10).await;
    gw.wait_log("cannot reach the CA", 10).await;
    // The configured fallback certificate serves meanwhile, and the gateway is healthy.
    let ca = std::fs::read_to_string(fallback.join("ca.pem")).unwrap();
    assert!(served_serial(gw.https, NAME, &ca).await.is_ok());
    assert_eq!(gw.admin("/healthz").await.status, 200);
    drop(gw);

    // The CA refuses the name (Pebble's block list): the reason and the CA's words are logged.
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https, 3600, &["gatehouse.test"]).await;
    let gw = start_gateway(&ports, &echo, |c| {
        acme_config(c, &pebble, "http-01", Storage::Files(&store))
    })
    .await;
    let rejected = "gatehouse_gateway_acme_renewal_failures_total{name=\"a.gatehouse.test\",reason=\"ca_rejected\"}";
    gw.wait_metric(rejected, 1.0, 10).await;
    gw.wait_log("the CA refused", 10).await;
    assert_eq!(gw.admin("/healthz").await.status, 200);
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&fallback);
}
