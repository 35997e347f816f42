//! The sections the server reads once, at start-up (listeners, connection limits, the admin
//! listener, the certificate source and ACME): checked here with every other section, so that
//! `gateway check` and a reload refuse what `gateway run` would refuse, but not part of the
//! [`Runtime`](crate::runtime::Runtime) a reload swaps.

use std::net::SocketAddr;

use gatehouse_common::config::Environment;
use secrecy::ExposeSecret;

use super::Problems;
use crate::settings::{AcmeStorage, HttpMode, Settings, TlsSource};

/// `[listen]`: addresses, and a plain-HTTP listener that has something to redirect to.
pub(super) fn listen(s: &Settings, p: &mut Problems) {
    for (key, addr) in [
        ("listen.https", &s.listen.https),
        ("listen.http", &s.listen.http),
        ("listen.admin", &s.listen.admin),
        ("listen.metrics", &s.listen.metrics),
    ] {
        if matches!(key, "listen.https" | "listen.metrics") && addr.is_empty() {
            continue; // off (HTTPS: a platform terminates TLS in front)
        }
        if addr.parse::<SocketAddr>().is_err() {
            p.at(key, format!("{addr:?} is not an address like 0.0.0.0:443"));
        }
    }
    if !s.listen.https_enabled() && s.listen.http_mode != HttpMode::Proxy {
        p.at(
            "listen.https",
            "with the HTTPS listener off, listen.http_mode must be \"proxy\" (nothing would answer the redirect)",
        );
    }
    if s.listen
        .admin
        .parse::<SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback())
    {
        p.at(
            "listen.admin",
            "the admin listener must be on a loopback address",
        );
    }
}

/// `[server]`: threads, buffers, connection caps and deadlines.
pub(super) fn server(s: &Settings, p: &mut Problems) {
    let v = &s.server;
    if v.read_buffer_bytes != 0 && v.read_buffer_bytes < 4096 {
        p.at(
            "server.read_buffer_bytes",
            "must be 0 (none) or at least 4096",
        );
    }
    for (key, value) in [
        ("server.threads", v.threads as u64),
        ("server.max_connections", v.max_connections as u64),
        ("server.header_timeout_seconds", v.header_timeout_seconds),
        // Pingora reads 0 as "no timeout": an idle connection would be held forever.
        (
            "server.keepalive_timeout_seconds",
            v.keepalive_timeout_seconds,
        ),
    ] {
        if value == 0 {
            p.at(key, "must be at least 1");
        }
    }
}

/// `[admin]`: the reload token and the host names the admin listener answers to.
pub(super) fn admin(s: &Settings, p: &mut Problems) {
    let token = s.admin.token.expose_secret();
    let min = crate::admin::MIN_TOKEN_CHARS;
    if !token.is_empty() && token.chars().count() < min {
        p.at(
            "admin.token",
            format!("must be at least {min} characters (e.g. openssl rand -hex 32)"),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.at(
            "admin.token",
            "must be printable ASCII without spaces (it is sent in an Authorization header)",
        );
    }
    for (i, h) in s.admin.allowed_hosts.iter().enumerate() {
        if crate::acme::check_domain(h.strip_suffix('.').unwrap_or(h)).is_err() {
            p.at(
                &format!("admin.allowed_hosts.{i}"),
                format!("{h:?} is not a host name (address literals need no entry)"),
            );
        }
    }
}

/// `[tls]`: the certificate source and, for ACME, the CA, names and storage.
pub(super) fn tls(s: &Settings, env: Environment, p: &mut Problems) {
    if !s.listen.https_enabled() {
        if s.tls.source == TlsSource::Acme {
            p.at(
                "tls.source",
                "acme certificates need the HTTPS listener (listen.https)",
            );
        }
        return; // without an HTTPS listener no certificate is loaded
    }
    match s.tls.source {
        TlsSource::Files if s.tls.certificates.is_empty() => p.at(
            "tls.certificates",
            "the files source needs at least one [[tls.certificates]]",
        ),
        TlsSource::Acme => acme(&s.tls.acme, p),
        TlsSource::SelfSigned if env != Environment::Development => p.at(
            "tls.source",
            format!("self-signed certificates are for development only, not {env}"),
        ),
        _ => {}
    }
}

/// `[tls.acme]` (RFC 8555).
fn acme(a: &crate::settings::Acme, p: &mut Problems) {
    if !a.directory.starts_with("https://") {
        p.at(
            "tls.acme.directory",
            "must be the CA's https:// directory URL",
        );
    }
    if a.domains.is_empty() {
        p.at("tls.acme.domains", "name at least one domain");
    }
    for (i, d) in a.domains.iter().enumerate() {
        if let Err(e) = crate::acme::check_domain(d) {
            p.at(&format!("tls.acme.domains.{i}"), format!("{d:?}: {e}"));
        }
    }
    if a.storage == AcmeStorage::Postgres && a.database_url.is_empty() {
        p.at(
            "tls.acme.database_url",
            "postgres storage needs a database URL",
        );
    }
    if a.storage == AcmeStorage::Files && a.dir.is_empty() {
        p.at("tls.acme.dir", "files storage needs a directory");
    }
    if !(a.renew_remaining_fraction > 0.0 && a.renew_remaining_fraction < 1.0) {
        p.at(
            "tls.acme.renew_remaining_fraction",
            "must be between 0 and 1",
        );
    }
    if a.retry_min_seconds == 0 || a.retry_max_seconds < a.retry_min_seconds {
        p.at(
            "tls.acme.retry_min_seconds",
            "must be at least 1 and at most retry_max_seconds",
        );
    }
    if a.poll_seconds == 0 {
        p.at("tls.acme.poll_seconds", "must be at least 1");
    }
    if a.eab_kid.is_empty() != a.eab_hmac_key.is_empty() {
        p.at(
            "tls.acme.eab_kid",
            "external account binding needs both eab_kid and eab_hmac_key",
        );
    }
}
