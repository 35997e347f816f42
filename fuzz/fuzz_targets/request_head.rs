//! Any bytes as an HTTP/1.1 request head, parsed the way Pingora 0.9.1 parses one (httparse,
//! the request-line escape retry, `pingora_http::RequestHeader`), then through what the proxy
//! runs on it before anything is forwarded: `admission::admit`, `routing::select`,
//! `routing::path_claim_holds` and `cors::decide`. Nothing may panic, and what is admitted
//! must hold what admission promises, checked here with oracles written independently of it.

#![no_main]

use std::sync::LazyLock;

use gateway::admission::{self, HeadLimits, Refusal};
use gateway::cors::{self, Outcome, Policy};
use gateway::routing;
use gateway::settings::{Cors, Route};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};
use pingora_http::RequestHeader;
use regex::bytes::Regex;

/// Small limits, so that inputs of a few hundred bytes reach both sides of each.
const LIMITS: HeadLimits = HeadLimits {
    max_uri_bytes: 256,
    max_header_bytes: 1024,
};

/// httparse's header array in Pingora (`MAX_HEADERS`); more headers are a parse error.
const MAX_HEADERS: usize = 256;

const SUB: &str = "0190a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
const CLAIM_RULE: &str = "/api/users/{sub}/";
const USERS: &str = "/api/users/";

struct Fixture {
    routes: Vec<Route>,
    /// CORS policy per route (index-aligned with `routes`).
    cors: Vec<Option<Policy>>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let route = |prefix: &str, host: Option<&str>, methods: &[&str], path_claim: bool| Route {
        prefix: prefix.into(),
        host: host.map(String::from),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        upstream: "core-api".into(),
        path_claim: path_claim.then(|| CLAIM_RULE.into()),
        ..Route::default()
    };
    let exact = Policy::compile(&Cors {
        origins: vec![
            "https://app.example.com".into(),
            "http://localhost:3000".into(),
        ],
        credentials: true,
        ..Cors::default()
    })
    .expect("exact policy compiles");
    let wildcard = Policy::compile(&Cors {
        origins: vec!["https://*.preview.example.com".into()],
        credentials: false,
        ..Cors::default()
    })
    .expect("wildcard policy compiles");
    Fixture {
        routes: vec![
            route("/auth/", None, &["POST"], false),
            route("/.well-known/jwks.json", None, &["GET"], false),
            route(USERS, None, &[], true),
            route("/api/", None, &[], false),
            route(
                "/admin/",
                Some("admin.example.com"),
                &["GET", "DELETE"],
                false,
            ),
        ],
        cors: vec![Some(exact.clone()), None, Some(wildcard), Some(exact), None],
    }
});

fuzz_target!(|data: &[u8]| {
    let Some(req) = parse_head(data) else {
        return;
    };
    match admission::admit(&req.method, &req.uri, req.raw_path(), &req.headers, LIMITS) {
        Err(refusal) => {
            // The one mapping to HTTP (rejection.rs) gives every refusal a 4xx problem.
            let rejection = gateway::rejection::Rejection::from(refusal);
            assert!((400..500).contains(&rejection.status()), "{refusal:?}");
            let body = rejection.problem().to_bytes();
            assert!(!body.is_empty() && !rejection.reason().is_empty());
            assert_eq!(
                refusal.closes_connection(),
                matches!(refusal, Refusal::Framing(_))
            );
        }
        Ok(()) => {
            check_admitted(&req);
            check_routing_and_cors(&req);
        }
    }
});

/// What admission promises about every head it lets through.
fn check_admitted(req: &RequestHeader) {
    // The request-target as it goes upstream (raw bytes) and as the proxy reads it.
    let raw = req.raw_path();
    assert!(
        raw.len() <= LIMITS.max_uri_bytes,
        "admitted a {}-byte request-target: {:?}",
        raw.len(),
        String::from_utf8_lossy(raw)
    );
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    assert!(uri_len <= LIMITS.max_uri_bytes);

    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    assert!(header_bytes <= LIMITS.max_header_bytes);

    assert!(
        !decodes_to_dot_segment(req.uri.path().as_bytes()),
        "admitted a dot segment: {:?}",
        req.uri.path()
    );
    assert!(
        !decodes_to_dot_segment(path_of(raw)),
        "admitted a dot segment in the raw target: {:?}",
        String::from_utf8_lossy(raw)
    );

    assert!(req.method != Method::TRACE && req.method != Method::CONNECT);
    // RFC 9112 §3.2: origin-form, absolute-form http(s) with an authority, OPTIONS *.
    let lower = raw.to_ascii_lowercase();
    let authority_first = |rest: &[u8]| rest.first().is_some_and(|b| !b"/?#".contains(b));
    assert!(
        raw.first() == Some(&b'/')
            || (raw == b"*" && req.method == Method::OPTIONS)
            || lower.strip_prefix(b"http://").is_some_and(authority_first)
            || lower.strip_prefix(b"https://").is_some_and(authority_first),
        "admitted the request-target {:?}",
        String::from_utf8_lossy(raw)
    );
    check_framing(&req.headers);
}

/// RFC 9112 §6.1/§6.3: no Content-Length next to Transfer-Encoding; a Transfer-Encoding is
/// exactly one coding, chunked, in whatever list spelling (RFC 9110 §5.6.1), and Pingora's own
/// reading of it (the last token of the last field line) agrees that the body is chunked.
fn check_framing(headers: &HeaderMap) {
    let te: Vec<&HeaderValue> = headers.get_all("transfer-encoding").iter().collect();
    if te.is_empty() {
        return;
    }
    assert!(!headers.contains_key("content-length"), "admitted CL + TE");
    let codings: Vec<&[u8]> = te
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(trim_ows)
        .filter(|c| !c.is_empty())
        .collect();
    assert!(
        codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"),
        "admitted Transfer-Encoding {te:?}"
    );
    let last = te[te.len() - 1].as_bytes();
    let pingora_last_token = trim_ows(last.rsplit(|b| *b == b',').next().unwrap_or(last));
    assert!(
        pingora_last_token.eq_ignore_ascii_case(b"chunked"),
        "admitted Transfer-Encoding {te:?} that Pingora does not read as chunked"
    );
}

fn check_routing_and_cors(req: &RequestHeader) {
    let fx = &*FIXTURE;
    let path = req.uri.path();
    let host = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host());
    let Some(index) = routing::select(fx.routes.iter(), host, &req.method, path) else {
        // No route: then no unrestricted route whose prefix matches takes this method.
        for r in &fx.routes {
            assert!(
                !(r.host.is_none()
                    && path.starts_with(r.prefix.as_str())
                    && (r.methods.is_empty()
                        || req.method == Method::OPTIONS
                        || r.methods.iter().any(|m| m == req.method.as_str()))),
                "{path:?} {} found no route, but {:?} takes it",
                req.method,
                r.prefix
            );
        }
        return;
    };
    let route = &fx.routes[index];
    assert!(path.starts_with(route.prefix.as_str()));
    assert!(
        route.methods.is_empty()
            || req.method == Method::OPTIONS
            || route
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(req.method.as_str()))
    );
    if let Some(want) = &route.host {
        let host = host.expect("a host-restricted route needs a host");
        assert!(host.to_ascii_lowercase().starts_with(want.as_str()));
    }
    // Longest prefix wins.
    for r in &fx.routes {
        if r.host.is_none() && path.starts_with(r.prefix.as_str()) && r.methods.is_empty() {
            assert!(r.prefix.len() <= route.prefix.len());
        }
    }

    // The path claim: a path under /api/users/ passes only with the subject's own segment.
    if route.path_claim.is_some() && routing::path_claim_holds(CLAIM_RULE, path, SUB) {
        if let Some(rest) = path.strip_prefix(USERS) {
            assert_eq!(rest.split('/').next(), Some(SUB), "claim held for {path:?}");
        }
    }

    check_cors(fx.cors[index].as_ref(), req);
}

fn check_cors(policy: Option<&Policy>, req: &RequestHeader) {
    let h = &req.headers;
    let outcome = cors::decide(policy, &req.method, h);
    let origin = h.get(http::header::ORIGIN);
    let acrm = h.get(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    let preflight = req.method == Method::OPTIONS && acrm.is_some();
    let (answer, is_preflight) = match &outcome {
        Outcome::NotCors => {
            assert!(origin.is_none());
            return;
        }
        Outcome::Disallowed => {
            assert!(origin.is_some() && !preflight);
            return;
        }
        Outcome::PreflightRejected(why) => {
            assert!(origin.is_some() && preflight && !why.is_empty());
            return;
        }
        Outcome::Allowed(answer) => (answer, false),
        Outcome::Preflight(answer) => (answer, true),
    };
    assert_eq!(is_preflight, preflight);
    let policy = policy.expect("a CORS answer needs a policy");
    let origin = origin
        .and_then(|o| o.to_str().ok())
        .expect("origin is text");
    assert!(
        origin_allowed(policy, origin),
        "allowed origin {origin:?} that no configured pattern names"
    );
    let get = |name: &str| answer.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
    assert_eq!(
        get("access-control-allow-origin").map(String::as_str),
        Some(origin)
    );
    assert!(get("vary").is_some());
    // Credentials only from the policy that has them (the exact-origin one).
    let credentialed = get("access-control-allow-credentials").is_some();
    assert_eq!(credentialed, origin_allowed_exactly(origin));
    // Every answer header must be writable as a response header.
    for (name, value) in answer {
        assert!(
            HeaderValue::from_str(value).is_ok(),
            "{name}: {value:?} is not a header value"
        );
    }
    if is_preflight {
        let wanted = acrm
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_ascii_uppercase();
        assert!(
            ["GET", "POST", "PATCH", "DELETE"].contains(&wanted.as_str()),
            "preflight allowed method {wanted:?}"
        );
        let asked = h
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        for name in asked.split(',').map(|s| s.trim().to_ascii_lowercase()) {
            assert!(
                name.is_empty()
                    || ["authorization", "content-type", "x-request-id"].contains(&name.as_str()),
                "preflight allowed request header {name:?}"
            );
        }
    }
}

/// Which configured origin the fixture's policies name, spelled out by hand.
fn origin_allowed(_policy: &Policy, origin: &str) -> bool {
    origin_allowed_exactly(origin) || {
        let lower = origin.to_ascii_lowercase();
        lower
            .strip_prefix("https://")
            .and_then(|host| host.strip_suffix(".preview.example.com"))
            .is_some_and(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    }
}

fn origin_allowed_exactly(origin: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    lower == "https://app.example.com" || lower == "http://localhost:3000"
}

/// Whether some path segment, percent-decoded once, is `.` or `..` to an upstream that splits
/// segments on `/` or `\` and drops `;` parameters (Tomcat, Spring, IIS, nginx decoding
/// before it resolves): those upstreams would climb out of the route the gateway chose.
fn decodes_to_dot_segment(path: &[u8]) -> bool {
    let decoded = percent_decode(path);
    decoded
        .split(|b| matches!(b, b'/' | b'\\'))
        .map(|seg| seg.split(|b| *b == b';').next().unwrap_or(seg))
        .any(|name| name == b"." || name == b"..")
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The path of a raw request-target: origin-form up to `?`; absolute-form after its
/// authority; nothing for authority-form and `*`.
fn path_of(target: &[u8]) -> &[u8] {
    let target = target.split(|b| *b == b'?').next().unwrap_or(target);
    if target.first() == Some(&b'/') {
        return target;
    }
    let Some(start) = target.windows(3).position(|w| w == b"://") else {
        return b"";
    };
    let after = &target[start + 3..];
    match after.iter().position(|b| *b == b'/') {
        Some(p) => &after[p..],
        None => b"",
    }
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

/// httparse as Pingora calls it, with Pingora's retry: on a bad token in the request line it
/// percent-encodes the target's illegal bytes and parses again. A head cut short gets its
/// final blank line, so mutations that drop it still reach admission.
fn parse_head(data: &[u8]) -> Option<RequestHeader> {
    let mut buf = data.to_vec();
    let mut completed = false;
    for _ in 0..4 {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let mut head = RequestHeader::build(
                    req.method.unwrap_or(""),
                    req.path.unwrap_or("").as_bytes(),
                    Some(req.headers.len()),
                )
                .ok()?;
                for h in req.headers.iter() {
                    // Pingora stores httparse's value bytes unchecked; they must be valid.
                    let value = HeaderValue::from_bytes(h.value)
                        .expect("httparse only passes valid header values");
                    head.append_header(h.name.to_string(), value).ok()?;
                }
                return Some(head);
            }
            Ok(httparse::Status::Partial) if !completed => {
                completed = true;
                buf.extend_from_slice(b"\r\n\r\n");
            }
            Err(httparse::Error::Token | httparse::Error::Version) => {
                buf = escape_illegal_request_line(&buf)?;
            }
            _ => return None,
        }
    }
    None
}

// Copied from pingora-core 0.9.1 (src/protocols/http/v1/server.rs, Apache-2.0): the request
// line Pingora retries with when httparse refuses a byte in the target.
static REQUEST_LINE_REGEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\w+ (?P<uri>.+) HTTP/\d(?:\.\d)?").expect("Pingora's request-line regex")
});
const URI_ESC_CHARSET: &AsciiSet = &CONTROLS.add(b' ').add(b'<').add(b'>').add(b'"');

fn escape_illegal_request_line(buf: &[u8]) -> Option<Vec<u8>> {
    let captures = REQUEST_LINE_REGEX.captures(buf)?;
    let uri = captures.name("uri")?;
    let mut new_buf = Vec::with_capacity(buf.len() + 32);
    new_buf.extend_from_slice(&buf[..uri.start()]);
    for s in percent_encode(uri.as_bytes(), URI_ESC_CHARSET) {
        new_buf.extend_from_slice(s.as_bytes());
    }
    if new_buf.len() == uri.end() {
        return None;
    }
    new_buf.extend_from_slice(&buf[uri.end()..]);
    Some(new_buf)
}
