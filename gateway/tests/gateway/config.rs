//! The configuration a test gateway runs with: `config_text` (every route, limit and CORS
//! policy the tests use, against the echo upstream), changed per test through `TestConfig`'s
//! typed setters.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use crate::helpers::{Echo, ISSUER};

pub struct Options {
    pub targets: Vec<SocketAddr>,
    pub jwks: SocketAddr,
}

impl Options {
    pub fn echo(echo: &Echo) -> Self {
        Self {
            targets: vec![echo.addr],
            jwks: echo.addr,
        }
    }
}

/// The configuration a test gateway runs with: `config_text` as a TOML document, changed
/// through typed setters (it stays a file with lines, for the tests that read errors).
pub struct TestConfig(toml_edit::DocumentMut);

/// A TOML array of strings.
pub fn list(values: &[&str]) -> toml_edit::Value {
    toml_edit::Value::Array(values.iter().copied().collect())
}

impl TestConfig {
    pub fn new(o: &Options, https: u16, http: u16, admin: u16, dir: &std::path::Path) -> Self {
        Self::parse(&config_text(o, https, http, admin, dir))
    }

    pub fn parse(text: &str) -> Self {
        Self(text.parse().expect("a TOML document"))
    }

    /// Sets a dotted key, creating tables on the way; a number picks an entry of an array of
    /// tables (`routes.0.prefix`).
    pub fn set(&mut self, key: &str, value: impl Into<toml_edit::Value>) -> &mut Self {
        let (table, last) = self.parent(key);
        table.insert(last, toml_edit::Item::Value(value.into()));
        self
    }

    /// Whether `listen.https` is on (not set to "").
    pub fn https_enabled(&self) -> bool {
        self.0
            .get("listen")
            .and_then(|l| l.get("https"))
            .and_then(|v| v.as_str())
            != Some("")
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        let (table, last) = self.parent(key);
        table.remove(last);
        self
    }

    /// Appends an entry to the array of tables at `key` (`routes`, `jwt.key_files`,
    /// `tls.certificates`).
    pub fn push(&mut self, key: &str, entry: &[(&str, toml_edit::Value)]) -> &mut Self {
        let (table, last) = self.parent(key);
        let mut t = toml_edit::Table::new();
        for (k, v) in entry {
            t.insert(k, toml_edit::Item::Value(v.clone()));
        }
        table
            .entry(last)
            .or_insert(toml_edit::Item::ArrayOfTables(Default::default()))
            .as_array_of_tables_mut()
            .expect("an array of tables")
            .push(t);
        self
    }

    /// A `[[tls.certificates]]` entry for the `gateway.pem` and `gateway.key` in `dir` (as
    /// `gateway::tls::self_signed` writes them).
    pub fn certificate(&mut self, dir: &std::path::Path) -> &mut Self {
        let file = |name: &str| dir.join(name).display().to_string().into();
        self.push(
            "tls.certificates",
            &[("cert", file("gateway.pem")), ("key", file("gateway.key"))],
        )
    }

    /// Another route to the echo upstream, with `more` settings.
    pub fn route(&mut self, prefix: &str, more: &[(&str, toml_edit::Value)]) -> &mut Self {
        let mut entry = vec![("prefix", prefix.into()), ("upstream", "echo".into())];
        entry.extend(more.iter().cloned());
        self.push("routes", &entry)
    }

    /// The table holding the last segment of `key`, and that segment.
    fn parent<'k>(&mut self, key: &'k str) -> (&mut toml_edit::Table, &'k str) {
        let mut segments: Vec<&str> = key.split('.').collect();
        let last = segments.pop().expect("a key");
        let mut table = self.0.as_table_mut();
        let mut rest = segments.as_slice();
        while let [name, tail @ ..] = rest {
            let item = table.entry(name).or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                toml_edit::Item::Table(t)
            });
            if item.is_array_of_tables() {
                let index: usize = tail[0].parse().expect("an index into an array of tables");
                let entries = item.as_array_of_tables_mut().expect("an array of tables");
                table = entries.get_mut(index).expect("an entry");
                rest = &tail[1..];
            } else {
                table = item.as_table_mut().expect("a table");
                rest = tail;
            }
        }
        (table, last)
    }
}

impl std::fmt::Display for TestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub fn config_text(
    o: &Options,
    https: u16,
    http: u16,
    admin: u16,
    dir: &std::path::Path,
) -> String {
    let targets = o
        .targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[listen]
https = "127.0.0.1:{https}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"

[server]
threads = 1
grace_period_seconds = 1
keepalive_timeout_seconds = 30

[tls]
source = "self-signed"
self_signed_names = ["localhost", "127.0.0.1"]
self_signed_dir = "{certs}"

[jwt]
jwks_url = "http://{jwks}/.well-known/jwks.json"
issuer = "{ISSUER}"
audience = "gatehouse-api"
min_refetch_seconds = 1

[upstreams.echo]
targets = [{targets}]
connect_timeout_ms = 500
read_timeout_ms = 5000
health_interval_ms = 200

[cors.web]
origins = ["https://app.example.com", "https://*.example.org"]
credentials = false

[limits.roomy]
per_second = 1000
burst = 1000

# One token a minute: tests see exactly the burst, however slow the machine is.
[limits.tight]
per_minute = 1
burst = 3

[limits.per_subject]
key = "subject"
per_minute = 1
burst = 2

[log]
format = "json"
level = "warn"

[[routes]]
prefix = "/open/"
upstream = "echo"
cors = "web"
limits = ["roomy"]
body_limit_bytes = 1024

[[routes]]
prefix = "/tight/"
upstream = "echo"
cors = "web"
limits = ["tight"]

[[routes]]
prefix = "/limited/"
upstream = "echo"
auth = "jwt"
limits = ["per_subject"]

[[routes]]
prefix = "/api/users/"
upstream = "echo"
auth = "jwt"
cors = "web"
path_claim = "/api/users/{{sub}}/"

[[routes]]
prefix = "/api/"
upstream = "echo"
auth = "jwt"
cors = "web"
"#,
        certs = dir.join("certs").display(),
        jwks = o.jwks,
    )
}
