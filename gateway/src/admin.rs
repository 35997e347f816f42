//! Who may talk to the admin listener (`listen.admin`: `/metrics`, `/healthz`, `/readyz`,
//! `POST /reload`) and the read-only metrics listener (`listen.metrics`), and what `/readyz`
//! answers (`readiness`).
//!
//! Loopback alone is not a boundary against a browser: a web page can make a local browser send
//! requests to `127.0.0.1`, either cross-site (a form POST needs no CORS permission) or through
//! DNS rebinding (its own name re-pointed at 127.0.0.1, so the page can even read the answers).
//! Hence, in order:
//! 1. admin listener: the authority (absolute request target, else `Host`; RFC 9112 §3.2) must
//!    be a loopback address literal, `localhost`, or a name in `admin.allowed_hosts`: a
//!    rebinding page's `Host` is its own name, refused with 421 (RFC 9110 §15.5.20);
//! 2. both listeners: requests a browser marks as coming from a page (`Origin`, RFC 6454 §7;
//!    `Sec-Fetch-Site` other than `none`, Fetch Metadata) are refused with 403;
//! 3. `POST /reload` needs `Authorization: Bearer <admin.token>` when a token is configured,
//!    which a cross-site page cannot send; without a token it is open in development only.
//!
//! The metrics listener has no Host check: it is meant to be reached over the network, by
//! address (pod IP) or by name (`gateway:9091` in compose), serves nothing that changes state,
//! and is fenced by the network (NetworkPolicy, unpublished ports) instead.

use std::net::IpAddr;

use gatehouse_common::config::Environment;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Why a request was refused, mapped to a status and problem type in `server.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No authority at all (RFC 9112 §3.2: 400).
    NoHost,
    /// An authority this listener does not answer for (DNS rebinding): 421.
    Misdirected(String),
    /// Sent by a web page (Origin / Sec-Fetch-Site): 403.
    CrossSite,
    /// `POST /reload` without the right bearer token: 401.
    Unauthorized,
    /// `POST /reload` with no token configured outside development: 403.
    ReloadDisabled,
}

impl Refusal {
    /// Status, problem type, title and detail of the answer.
    pub fn problem(&self) -> (u16, &'static str, &'static str, String) {
        match self {
            Self::NoHost => (
                400,
                "host_required",
                "Host required",
                "Send a Host header.".into(),
            ),
            Self::Misdirected(host) => (
                421,
                "misdirected_request",
                "Misdirected request",
                format!(
                    "This listener does not answer for {host:?}: use 127.0.0.1, localhost or a name in admin.allowed_hosts."
                ),
            ),
            Self::CrossSite => (
                403,
                "cross_site_refused",
                "Requests from web pages are refused",
                "The admin listener does not serve browsers' page requests (Origin or Sec-Fetch-Site).".into(),
            ),
            Self::Unauthorized => (
                401,
                "unauthorized",
                "Authentication required",
                "POST /reload needs 'Authorization: Bearer <admin.token>'.".into(),
            ),
            Self::ReloadDisabled => (
                403,
                "reload_disabled",
                "Reload over HTTP is disabled",
                "Outside development POST /reload needs admin.token (GATEWAY_ADMIN_TOKEN); or send SIGHUP.".into(),
            ),
        }
    }
}

/// The host of an authority (`name`, `name:port`, `[v6]:port`), lowercase, without a trailing
/// dot; `None` when it is not a well-formed authority.
fn host_of(authority: &str) -> Option<String> {
    let a: http::uri::Authority = authority.parse().ok()?;
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Step 1 (admin listener): the request must name the loopback listener itself.
pub fn check_host(
    uri: &http::Uri,
    headers: &HeaderMap,
    allowed_hosts: &[String],
) -> Result<(), Refusal> {
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    let raw = match uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => match headers.get(http::header::HOST).map(|h| h.to_str()) {
            Some(Ok(h)) => h.to_string(),
            Some(Err(_)) => return Err(Refusal::Misdirected("(not text)".into())),
            None => return Err(Refusal::NoHost),
        },
    };
    let Some(host) = host_of(&raw) else {
        return Err(Refusal::Misdirected(raw));
    };
    let ok = match host.parse::<IpAddr>() {
        // A rebinding attack needs a name; a loopback literal is what a local tool dialled.
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            host == "localhost"
                || allowed_hosts.iter().any(|a| {
                    let a = a.strip_suffix('.').unwrap_or(a);
                    a.eq_ignore_ascii_case(&host)
                })
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::Misdirected(raw))
    }
}

/// Step 2: nothing a browser sends on behalf of a page. Browsers add `Origin` to every
/// cross-origin request and to same-origin POSTs, and `Sec-Fetch-Site` to everything; only
/// `none` (typed into the address bar, a bookmark) is the user's own.
pub fn check_not_from_a_page(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.contains_key(http::header::ORIGIN) {
        return Err(Refusal::CrossSite);
    }
    match headers.get("sec-fetch-site") {
        Some(v) if v.as_bytes() != b"none" => Err(Refusal::CrossSite),
        _ => Ok(()),
    }
}

/// Step 3, for `POST /reload`: the bearer token when one is configured; without one, only in
/// development.
pub fn check_reload(
    headers: &HeaderMap,
    token: &SecretString,
    env: Environment,
) -> Result<(), Refusal> {
    let expected = token.expose_secret();
    if expected.is_empty() {
        return if env == Environment::Development {
            Ok(())
        } else {
            Err(Refusal::ReloadDisabled)
        };
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or_default();
    if same_secret(presented, expected) {
        Ok(())
    } else {
        Err(Refusal::Unauthorized)
    }
}

/// Compares digests, so the time taken says nothing about how much of the token matched.
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Shortest accepted `admin.token` (e.g. `openssl rand -hex 32` gives 64 characters).
pub const MIN_TOKEN_CHARS: usize = 32;

/// `/readyz`: ready once the keys are loaded, every upstream has a healthy target and every
/// client-facing listener is bound (each is bound in its own service thread, so the admin
/// listener can answer first); otherwise 503 and what is missing.
pub fn readiness(
    keys: bool,
    upstreams_down: &[&str],
    listeners_unbound: &[&str],
) -> (u16, Vec<u8>) {
    if keys && upstreams_down.is_empty() && listeners_unbound.is_empty() {
        return (200, br#"{"status":"ready"}"#.to_vec());
    }
    let body = serde_json::json!({
        "status": "not_ready",
        "jwks_loaded": keys,
        "upstreams_down": upstreams_down,
        "listeners_unbound": listeners_unbound,
    });
    (503, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map as headers;
    use http::HeaderValue;
    use serde_json::{Value, json};

    fn host(h: &'static str) -> Result<(), Refusal> {
        let uri: http::Uri = "/reload".parse().unwrap_or_default();
        check_host(
            &uri,
            &headers(&[("host", h)]),
            &["gw-admin.internal".into()],
        )
    }

    #[test]
    fn the_admin_listener_answers_loopback_localhost_and_configured_names_only() {
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST.",
            "gw-admin.internal:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:9090",
            "127.0.0.1.nip.io:9090",
            "10.0.0.5:9090",
            "localhost.attacker.example",
            "[::1",
            "",
        ] {
            assert!(matches!(host(bad), Err(Refusal::Misdirected(_))), "{bad}");
        }
        let uri: http::Uri = "/".parse().unwrap_or_default();
        assert_eq!(
            check_host(&uri, &HeaderMap::new(), &[]),
            Err(Refusal::NoHost)
        );
        // An absolute-form target names the authority (RFC 9112 §3.2.2), whatever Host says.
        let uri: http::Uri = "http://evil.example/reload".parse().unwrap_or_default();
        assert!(matches!(
            check_host(&uri, &headers(&[("host", "127.0.0.1")]), &[]),
            Err(Refusal::Misdirected(_))
        ));
    }

    #[test]
    fn page_requests_are_refused() {
        assert_eq!(check_not_from_a_page(&headers(&[])), Ok(()));
        assert_eq!(
            check_not_from_a_page(&headers(&[("sec-fetch-site", "none")])),
            Ok(())
        );
        for h in [
            [("origin", "https://attacker.example")],
            [("origin", "null")],
            [("sec-fetch-site", "cross-site")],
            [("sec-fetch-site", "same-origin")],
            [("sec-fetch-site", "same-site")],
        ] {
            assert_eq!(
                check_not_from_a_page(&headers(&h)),
                Err(Refusal::CrossSite),
                "{h:?}"
            );
        }
    }

    #[test]
    fn reload_needs_the_token_when_configured_and_outside_development() {
        let token = SecretString::from("t".repeat(40));
        let none = SecretString::from("");
        let good = format!("Bearer {}", "t".repeat(40));
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&good).unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(check_reload(&h, &token, Environment::Production), Ok(()));
        assert_eq!(check_reload(&h, &token, Environment::Development), Ok(()));
        for wrong in ["Bearer nope", "Basic dDp0", "Bearer", ""] {
            let h = headers(&[("authorization", wrong)]);
            assert_eq!(
                check_reload(&h, &token, Environment::Development),
                Err(Refusal::Unauthorized),
                "{wrong}"
            );
        }
        assert_eq!(
            check_reload(&HeaderMap::new(), &none, Environment::Development),
            Ok(())
        );
        assert_eq!(
            check_reload(&HeaderMap::new(), &none, Environment::Staging),
            Err(Refusal::ReloadDisabled)
        );
        assert_eq!(
            check_reload(&h, &none, Environment::Production),
            Err(Refusal::ReloadDisabled)
        );
    }

    #[test]
    fn readiness_waits_for_keys_upstreams_and_every_client_listener() {
        assert_eq!(readiness(true, &[], &[]).0, 200);
        let (status, body) = readiness(true, &[], &["https"]);
        assert_eq!(status, 503);
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            body,
            json!({"status": "not_ready", "jwks_loaded": true, "upstreams_down": [], "listeners_unbound": ["https"]})
        );
        assert_eq!(readiness(false, &[], &[]).0, 503);
        assert_eq!(readiness(true, &["api"], &[]).0, 503);
    }
}
