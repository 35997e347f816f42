//! Header hygiene at the edge: what a client may never send upstream, what the gateway sets
//! for the upstream, and the security headers on every response.

use pingora::http::{RequestHeader, ResponseHeader};

/// Identity and forwarding headers only the gateway may set (docs/security.md): removed from every
/// request before anything reads them. `x-request-id` is kept only from trusted proxies.
pub const SPOOFABLE: &[&str] = &[
    "x-user-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

pub fn strip_spoofable(req: &mut RequestHeader, keep_request_id: bool) {
    for h in SPOOFABLE {
        req.remove_header(*h);
    }
    if !keep_request_id {
        req.remove_header("x-request-id");
    }
}

/// Security headers on every response, local or proxied (docs/contracts.md, docs/security.md).
pub fn secure(resp: &mut ResponseHeader, hsts: &str, authenticated: bool) {
    let _ = resp.insert_header("strict-transport-security", hsts);
    let _ = resp.insert_header("x-content-type-options", "nosniff");
    let _ = resp.insert_header("referrer-policy", "no-referrer");
    if authenticated {
        let _ = resp.insert_header("cache-control", "no-store");
    }
    // Never reveal versions.
    resp.remove_header("server");
    resp.remove_header("x-powered-by");
}

pub fn hsts_value(max_age: u64) -> String {
    format!("max-age={max_age}; includeSubDomains")
}

/// A header map of `pairs`, in order (repeated names append), for unit tests.
#[cfg(test)]
pub fn map(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, http::HeaderValue::from_static(v));
    }
    h
}
