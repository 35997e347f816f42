//! A real ACME server for the tests: Pebble (Debian package `pebble`) on free loopback ports,
//! validating HTTP-01 and TLS-ALPN-01 against the gateway's HTTP and HTTPS ports, with
//! `pebble-challtestsrv` as its DNS server so every name (`*.gatehouse.test`) is 127.0.0.1.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::free_port;

pub struct Pebble {
    pub dir: PathBuf,
    /// The directory URL.
    pub directory: String,
    /// CA of Pebble's own HTTPS listener (for `tls.acme.ca_file`).
    pub ca_file: PathBuf,
    management: u16,
    config: PathBuf,
    dns: u16,
    child: Option<Child>,
    dns_child: Option<Child>,
}

impl Pebble {
    /// Validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`; certificates are valid
    /// for `validity_seconds`; names in `blocked` are refused.
    pub async fn start(
        http_port: u16,
        tls_port: u16,
        validity_seconds: u64,
        blocked: &[&str],
    ) -> Self {
        Self::start_with(http_port, tls_port, validity_seconds, blocked, None).await
    }

    /// Like `start`; with `eab` = (key id, base64url HMAC key) the CA requires external
    /// account binding.
    pub async fn start_with(
        http_port: u16,
        tls_port: u16,
        validity_seconds: u64,
        blocked: &[&str],
        eab: Option<(&str, &str)>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("pebble-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // Its listener certificate: a throwaway CA + leaf for localhost / 127.0.0.1.
        gateway::tls::self_signed(&["localhost".into(), "127.0.0.1".into()], &dir).unwrap();
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = dir.join("pebble.json");
        let blocklist: Vec<String> = blocked.iter().map(|b| format!("\"{b}\"")).collect();
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{
  "listenAddress": "127.0.0.1:{listen}",
  "managementListenAddress": "127.0.0.1:{management}",
  "certificate": "{cert}",
  "privateKey": "{key}",
  "httpPort": {http_port},
  "tlsPort": {tls_port},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": {eab_required},
  "externalAccountMACKeys": {{{eab_keys}}},
  "domainBlocklist": [{blocklist}],
  "certificateValidityPeriod": {validity_seconds}
}}}}"#,
                cert = dir.join("gateway.pem").display(),
                key = dir.join("gateway.key").display(),
                blocklist = blocklist.join(", "),
                eab_required = eab.is_some(),
                eab_keys = eab
                    .map(|(kid, key)| format!("\"{kid}\": \"{key}\""))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("challtestsrv.log")).unwrap();
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) is installed by make test");
        let mut p = Self {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file: dir.join("ca.pem"),
            dir,
            management,
            config,
            dns,
            child: None,
            dns_child: Some(dns_child),
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pebble.log"))
            .unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (Debian package) is installed by make test");
        self.child = Some(child);
        let client = self.client();
        for _ in 0..100 {
            if let Ok(r) = client.get(&self.directory).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pebble did not start:\n{}", self.log());
    }

    fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca_file).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    /// The root that issued (and, after a restart, will issue) certificates: Pebble makes a
    /// new one at every start.
    pub async fn root(&self) -> String {
        self.client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Pebble gone: the directory is unreachable (its DNS helper stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Back, with a new root and no memory of accounts or orders.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// How many orders Pebble has seen created.
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.log());
        }
        self.stop();
        if let Some(mut c) = self.dns_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
