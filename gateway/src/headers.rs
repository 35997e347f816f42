//! Header hygiene at the edge: what a client may never send upstream, what the gateway sets
//! for the upstream, and the security headers on every response.
//!
//! Names and constant values are built once (`HeaderName`/`HeaderValue` constants): looking a
//! header up by a prebuilt name skips parsing the name, and a static value is inserted without
//! copying or validating it again, on every request.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

pub static HTTPS: HeaderValue = HeaderValue::from_static("https");
pub static HTTP: HeaderValue = HeaderValue::from_static("http");
static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
static NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Identity and forwarding headers only the gateway may set (docs/security.md): removed from every
/// request before anything reads them. `x-request-id` is kept only from trusted proxies.
pub static SPOOFABLE: [HeaderName; 7] = [
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

pub fn strip_spoofable(req: &mut RequestHeader, keep_request_id: bool) {
    // Most requests carry none of them: one pass over the names the request has (a handful)
    // instead of a removal per listed name.
    let spoofed =
        |name: &HeaderName| SPOOFABLE.contains(name) || (!keep_request_id && *name == X_REQUEST_ID);
    if !req.headers.keys().any(spoofed) {
        return;
    }
    for h in &SPOOFABLE {
        req.remove_header(h);
    }
    if !keep_request_id {
        req.remove_header(&X_REQUEST_ID);
    }
}

/// Security headers on every response, local or proxied (docs/contracts.md, docs/security.md).
/// The names go to the client in the case written here.
pub fn secure(resp: &mut ResponseHeader, hsts: &HeaderValue, authenticated: bool) {
    let _ = resp.insert_header("strict-transport-security", hsts.clone());
    let _ = resp.insert_header("x-content-type-options", NOSNIFF.clone());
    let _ = resp.insert_header("referrer-policy", NO_REFERRER.clone());
    if authenticated {
        let _ = resp.insert_header("cache-control", NO_STORE.clone());
    }
    // Never reveal versions.
    resp.remove_header(&header::SERVER);
    resp.remove_header(&X_POWERED_BY);
}

/// `Strict-Transport-Security` (RFC 6797 §6.1), built once per configuration.
pub fn hsts_value(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("max-age={max_age}; includeSubDomains"))
        .unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000"))
}

/// A client address as a header value (`X-Forwarded-For`): IPv4 written by hand, which costs a
/// tenth of `Display`'s formatting machinery on every request.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[n] = b'0' + d;
                    n += 1;
                }
            }
            HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
        IpAddr::V6(_) => {
            HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert_eq!(ip_value(ip).to_str().ok(), Some(ip.to_string().as_str()));
        }
    }

    #[test]
    fn spoofable_headers_are_removed_and_others_kept() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in [
            ("Host", "a"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-user-id", "admin"),
            ("X-Request-Id", "mine"),
            ("Accept", "*/*"),
        ] {
            let _ = req.append_header(k, v);
        }
        strip_spoofable(&mut req, false);
        let names: Vec<&str> = req.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "accept"]);
        let mut clean = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        let _ = clean.append_header("Host", "a");
        strip_spoofable(&mut clean, false);
        assert_eq!(clean.headers.len(), 1);
    }
}
