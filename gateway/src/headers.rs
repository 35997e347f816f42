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
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

pub static HTTPS: HeaderValue = HeaderValue::from_static("https");
pub static HTTP: HeaderValue = HeaderValue::from_static("http");
static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
static NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// `Strict-Transport-Security` when no configuration says otherwise.
pub static DEFAULT_HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Identity and forwarding headers only the gateway may set (docs/security.md): removed from every
/// request, after the request id of a trusted proxy has been read (`proxy.rs` `identify`).
static SPOOFABLE: [&HeaderName; 8] = [
    &X_USER_ID,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &X_REAL_IP,
    &header::FORWARDED,
    &X_REQUEST_ID,
];
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that would reveal the upstream's software and version: removed from every answer.
static REVEALING: [&HeaderName; 2] = [&header::SERVER, &X_POWERED_BY];

/// Those of `names` (at most 32; the tests call it with every list) that `headers` has. Most
/// messages carry none of the names the gateway removes, and the others one or two: one pass
/// over the names a message has (a handful) is cheaper than a hashed removal per listed name
/// that finds nothing. The pass is over when this returns, so the caller may remove them.
fn carried<'a>(
    headers: &http::HeaderMap,
    names: &'a [&'a HeaderName],
) -> impl Iterator<Item = &'a HeaderName> + use<'a> {
    debug_assert!(names.len() <= u32::BITS as usize, "one bit per name");
    let found: u32 = headers.keys().fold(0, |found, name| {
        names
            .iter()
            .position(|n| *n == name)
            .map_or(found, |i| found | 1 << i)
    });
    (0..names.len())
        .filter(move |i| found & 1 << i != 0)
        .map(|i| names[i])
}

pub fn strip_spoofable(req: &mut RequestHeader) {
    for name in carried(&req.headers, &SPOOFABLE) {
        req.remove_header(name);
    }
}

/// Security headers on every response, local or proxied (docs/contracts.md, docs/security.md).
/// `Strict-Transport-Security` only when the answer reaches the client over HTTPS (`hsts` is
/// `None` otherwise): RFC 6797 §7.2 forbids it over plain HTTP, where browsers ignore it.
/// Names go to HTTP/1 clients as Pingora writes a prebuilt name: its usual title case
/// (`Cache-Control`), otherwise lower case.
pub fn secure(resp: &mut ResponseHeader, hsts: Option<&HeaderValue>, authenticated: bool) {
    if let Some(hsts) = hsts {
        let _ = resp.insert_header(&header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let _ = resp.insert_header(&header::X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
    let _ = resp.insert_header(&header::REFERRER_POLICY, NO_REFERRER.clone());
    if authenticated {
        let _ = resp.insert_header(&header::CACHE_CONTROL, NO_STORE.clone());
    }
    // Never reveal versions.
    for name in carried(&resp.headers, &REVEALING) {
        resp.remove_header(name);
    }
}

/// `s` without `prefix`, compared ignoring ASCII case (header values as bytes: `Origin`
/// schemes, `Authorization` schemes); `None` when it does not start so.
pub fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = s.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// `s` without `suffix`, compared ignoring ASCII case.
pub fn strip_suffix_ignore_case<'a>(s: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let (rest, tail) = s.split_at_checked(s.len().checked_sub(suffix.len())?)?;
    tail.eq_ignore_ascii_case(suffix).then_some(rest)
}

/// The request id as a header value. It is marked sensitive, which HTTP/2 sends as a literal
/// that is never indexed (RFC 7541 §6.2.3) and HTTP/1 ignores: indexed, every response would
/// add an entry to the connection's HPACK table that no later response can use, push out the
/// entries that keep the repeated security headers at one byte each, and make the encoder
/// compare each new id with every earlier one still in the table (h2: 2 632 instructions per
/// response in callgrind, −5 % CPU per request measured). An id that is not a valid header
/// value becomes empty (cannot happen: `request_id` only makes or accepts visible ASCII).
pub fn request_id_value(id: String) -> HeaderValue {
    let mut value = HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// A client address as a header value (`X-Forwarded-For`). IPv4, nearly every client, is
/// written out here: the formatting machinery cost ~1 300 instructions per request for four
/// numbers (callgrind).
/// (Both forms are always valid header values; `None` only keeps that out of the type.)
pub fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let (mut buf, mut n) = ([0u8; 15], 0);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        for (at_least, digit) in [(100, octet / 100), (10, octet / 10 % 10), (0, octet % 10)] {
            if octet >= at_least {
                buf[n] = b'0' + digit;
                n += 1;
            }
        }
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// `Strict-Transport-Security` (RFC 6797 §6.1), built once per configuration.
pub fn hsts_value(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("max-age={max_age}; includeSubDomains"))
        .unwrap_or_else(|_| DEFAULT_HSTS.clone())
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
    fn request_ids_are_never_indexed_by_hpack() {
        let value = request_id_value("0b9c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f".into());
        assert_eq!(value, "0b9c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f");
        assert!(value.is_sensitive());
        assert_eq!(request_id_value("bad\nid".into()), "");
    }

    #[test]
    fn ip_values_of_short_and_long_octets() {
        for ip in [
            "0.0.0.0",
            "10.0.100.9",
            "192.168.1.20",
            "255.255.255.255",
            "::1",
        ] {
            let value = ip_value(ip.parse().unwrap_or_else(|e| panic!("{e}")));
            assert_eq!(value.as_ref().and_then(|v| v.to_str().ok()), Some(ip));
        }
    }

    proptest::proptest! {
        #[test]
        fn ip_values_read_as_the_address(bits: u32, v6: u128) {
            for ip in [IpAddr::from(bits.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                let (value, text) = (ip_value(ip), ip.to_string());
                proptest::prop_assert_eq!(
                    value.as_ref().and_then(|v| v.to_str().ok()),
                    Some(text.as_str())
                );
            }
        }
    }

    /// The gateway adds its forwarding headers to the upstream request as new ones, beside the
    /// header map (`proxy.rs`, `upstream_request_filter`): safe only because every one of them
    /// is removed from the client's request first.
    #[test]
    fn every_header_added_upstream_is_one_a_client_cannot_send() {
        for added in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &X_REQUEST_ID,
            &X_USER_ID,
        ] {
            assert!(SPOOFABLE.contains(&added), "{added}");
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
        strip_spoofable(&mut req);
        let names: Vec<&str> = req.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "accept"]);
        let mut clean = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        let _ = clean.append_header("Host", "a");
        strip_spoofable(&mut clean);
        assert_eq!(clean.headers.len(), 1);
        // Every value of a repeated name goes, the last listed name too.
        let mut twice = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in [("X-Request-Id", "1"), ("Host", "a"), ("x-request-id", "2")] {
            let _ = twice.append_header(k, v);
        }
        strip_spoofable(&mut twice);
        let names: Vec<&str> = twice.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host"]);
    }

    #[test]
    fn revealing_headers_are_removed_whichever_come() {
        for upstream in [
            &[("Server", "nginx/1.22"), ("X-Powered-By", "PHP/8")][..],
            &[("x-powered-by", "a"), ("X-Powered-By", "b")],
            &[("Server", "x")],
            &[],
        ] {
            let mut resp = ResponseHeader::build(200, None).unwrap_or_else(|e| panic!("{e}"));
            let _ = resp.append_header("Content-Type", "text/plain");
            for (k, v) in upstream {
                let _ = resp.append_header(*k, *v);
            }
            secure(&mut resp, None, false);
            let mut names: Vec<&str> = resp.headers.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                ["content-type", "referrer-policy", "x-content-type-options"],
                "{upstream:?}"
            );
        }
    }
}
