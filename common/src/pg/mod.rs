//! PostgreSQL connections as libpq understands `DATABASE_URL`: `sslmode` (disable, prefer,
//! require, verify-ca, verify-full) and `sslrootcert`, on rustls with ring. Used by the core
//! API's pool and by the gateway's shared certificate storage.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

mod tls;

/// How the connection is protected, from `sslmode` (libpq semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// `prefer` / `require`: encrypted, server certificate not verified (as libpq does).
    Unverified,
    /// `verify-ca`: chain verified against the roots, host name not checked.
    VerifyCa(Option<String>),
    /// `verify-full`: chain and host name verified.
    VerifyFull(Option<String>),
}

/// A parsed `DATABASE_URL`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub pg: tokio_postgres::Config,
    pub tls: TlsMode,
}

impl ConnectOptions {
    /// Parses a `postgres://` URL, taking `sslmode` and `sslrootcert` out (tokio-postgres knows
    /// only disable/prefer/require). Errors never echo the URL: it holds the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut sslmode = None;
        let mut rootcert = None;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| "has a malformed query string".to_string())?;
        let mut rest = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "sslmode" => sslmode = Some(v),
                "sslrootcert" => rootcert = Some(v),
                _ => rest.push((k, v)),
            }
        }
        let rest = serde_urlencoded::to_string(&rest).unwrap_or_default();
        let rebuilt = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{rest}")
        };
        let mut pg = tokio_postgres::Config::from_str(&rebuilt)
            .map_err(|e| format!("is not a valid PostgreSQL URL ({e})"))?;
        let tls = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" | "require" => TlsMode::Unverified,
            "verify-ca" => TlsMode::VerifyCa(rootcert),
            "verify-full" => TlsMode::VerifyFull(rootcert),
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        pg.ssl_mode(match (&tls, sslmode.as_deref()) {
            (TlsMode::Disable, _) => SslMode::Disable,
            (_, Some("allow" | "prefer") | None) => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if pg.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        Ok(Self { pg, tls })
    }

    pub fn tls_connector(&self) -> Result<MakeRustlsConnect, String> {
        tls::connector(&self.tls).map(MakeRustlsConnect::new)
    }
}

/// A single connection outside any pool; `what` names it in the log when it closes.
pub async fn connect_once(
    url: &str,
    timeout: Duration,
    what: &'static str,
) -> Result<tokio_postgres::Client, String> {
    let mut opts = ConnectOptions::parse(url).map_err(|e| format!("database.url {e}"))?;
    opts.pg.connect_timeout(timeout);
    let tls = opts.tls_connector()?;
    let (client, conn) = opts
        .pg
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, connection = what, "database connection closed");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_forms() {
        let o = ConnectOptions::parse("postgres://u:p@h:5/d?sslmode=require").ok();
        assert_eq!(o.map(|o| o.tls), Some(TlsMode::Unverified));
        let o = ConnectOptions::parse(
            "postgres://u:p@h/d?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        );
        assert_eq!(
            o.map(|o| o.tls).ok(),
            Some(TlsMode::VerifyFull(Some("/ca.pem".into())))
        );
        let o = ConnectOptions::parse("postgres://u:p@h/d?sslmode=disable").ok();
        assert_eq!(o.map(|o| o.tls), Some(TlsMode::Disable));
        let err = ConnectOptions::parse("postgres://u:secretpw@h/d?sslmode=bogus").err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("sslmode=bogus") && !e.contains("secretpw"))
        );
        let err = ConnectOptions::parse("mysql://u:secretpw@h/d")
            .err()
            .unwrap_or_default();
        assert!(!err.contains("secretpw"), "{err}");
    }
}
