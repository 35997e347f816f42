//! Admission of a request head, before routing: size limits (RFC 9110 §15.5.15 414,
//! RFC 6585 §5 431), message framing (RFC 9112 §6.1, §6.3: the ambiguities requests are
//! smuggled through), dot segments (RFC 3986 §5.2.4: `.` and `..`, also percent-encoded, next
//! to an encoded slash or backslash, or with `;` parameters, would be resolved differently here
//! and upstream), methods never served (TRACE, CONNECT) and request-target forms never served
//! (RFC 9112 §3.2: only origin-form, absolute-form http(s) and `OPTIONS *`).
//!
//! [`admit`] is a pure function of the head, so it is property-tested and fuzzed on its own.
//! It checks the request-target as received (`target`, Pingora's `raw_path()`: the bytes that
//! are forwarded) as well as the parsed `Uri` that routing reads, so the two cannot disagree.

use std::borrow::Cow;

use http::{HeaderMap, Method, Uri};

/// The limits a head must fit.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
}

/// Why a head is refused; `rejection.rs` maps each to its status, problem type and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RFC 9110 §15.5.15: 414.
    UriTooLong {
        max: usize,
    },
    /// Ambiguous framing: the connection must be closed after the answer.
    Framing(&'static str),
    /// RFC 6585 §5: 431.
    HeadersTooLarge {
        max: usize,
    },
    DotSegments,
    Method,
    /// Authority-form, another scheme, or a target that is not a path.
    TargetForm,
}

impl Refusal {
    /// After a framing refusal nobody knows where the next request starts.
    pub fn closes_connection(self) -> bool {
        matches!(self, Self::Framing(_))
    }
}

/// Checks a request head; the first problem found, in the order above. `target` is the
/// request-target as received, which is what goes upstream (Pingora keeps an absolute-form or
/// unusual target verbatim and gives `uri` only its path, or `/`).
pub fn admit(
    method: &Method,
    uri: &Uri,
    target: &[u8],
    headers: &HeaderMap,
    limits: HeadLimits,
) -> Result<(), Refusal> {
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    // An absolute-form authority is in `target` only: without this, a Host-less request with
    // a megabyte of authority passed the 414 limit.
    if uri_len.max(target.len()) > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong {
            max: limits.max_uri_bytes,
        });
    }
    if let Some(why) = framing_problem(headers) {
        return Err(Refusal::Framing(why));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge {
            max: limits.max_header_bytes,
        });
    }
    let target_path = target.split(|b| *b == b'?').next().unwrap_or(target);
    let uri_path = uri.path().as_bytes();
    if has_dot_segments(target_path) || (uri_path != target_path && has_dot_segments(uri_path)) {
        return Err(Refusal::DotSegments);
    }
    if method == Method::TRACE || method == Method::CONNECT {
        return Err(Refusal::Method);
    }
    if !served_target_form(method, target) {
        return Err(Refusal::TargetForm);
    }
    Ok(())
}

/// RFC 9112 §3.2: origin-form (`/path`); absolute-form (§3.2.2, which servers must accept)
/// with an `http` or `https` URI and an authority; asterisk-form for OPTIONS (§3.2.4). Any
/// other target (a bare `api/x`, `mailto:x`, `foo://h/x`) is one Pingora forwards verbatim
/// while routing reads `/`: the gateway and the upstream would judge different requests.
fn served_target_form(method: &Method, target: &[u8]) -> bool {
    match target {
        [b'/', ..] => true,
        b"*" => method == Method::OPTIONS,
        _ => {
            let Some(colon) = target.iter().position(|b| *b == b':') else {
                return false;
            };
            let (scheme, rest) = target.split_at(colon);
            (scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https"))
                && rest
                    .strip_prefix(b"://")
                    .and_then(|authority| authority.first())
                    .is_some_and(|b| !matches!(b, b'/' | b'?' | b'#'))
        }
    }
}

/// Conflicting or unsupported message framing, if any (RFC 9112 §6.1: chunked must be the
/// final coding, and a proxy that does not understand a coding must not forward the message;
/// §6.3: Content-Length with Transfer-Encoding is a smuggling attempt).
pub fn framing_problem(h: &HeaderMap) -> Option<&'static str> {
    let te = h.get_all(http::header::TRANSFER_ENCODING);
    te.iter().next()?;
    if h.contains_key(http::header::CONTENT_LENGTH) {
        return Some("Content-Length and Transfer-Encoding together are not accepted.");
    }
    let mut codings = Vec::new();
    for value in te {
        let Ok(value) = value.to_str() else {
            return Some("Only Transfer-Encoding: chunked is accepted.");
        };
        codings.extend(value.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
        return Some("Only Transfer-Encoding: chunked is accepted.");
    }
    None
}

/// Whether a path has a `.` or `..` segment (RFC 3986 §5.2.4) as some upstream could see it:
/// percent-decoded once (`%2e%2e`, `.%2E`), split on `/` and also on `\` (IIS, Windows
/// servers and Spring treat it as `/`, encoded as `%5C` too), so that `..%2f` is a `..`
/// segment for an upstream that decodes before it splits; and with `;` path parameters
/// ignored (RFC 3986 §3.3; Tomcat and Spring strip them, so `..;x` is `..` there). An
/// upstream resolving any of these would climb out of the route the gateway chose.
pub fn has_dot_segments(path: &[u8]) -> bool {
    // A dot segment needs a `.`, sent as it is or percent-encoded: most paths have neither.
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return false;
    }
    percent_decode(path)
        .split(|b| matches!(b, b'/' | b'\\'))
        .any(|segment| {
            let name = segment.split(|b| *b == b';').next().unwrap_or(segment);
            name == b"." || name == b".."
        })
}

/// RFC 3986 §2.1 percent-decoding, once; a `%` without two hex digits stays as it is.
fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let Some((hi, lo)) = s
                .get(i + 1)
                .and_then(|&h| hex(h))
                .zip(s.get(i + 2).and_then(|&l| hex(l)))
        {
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_uri_bytes: 64,
        max_header_bytes: 256,
    };

    fn head(path: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
        let uri = path.parse::<Uri>().unwrap_or_default();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        (uri, h)
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2E/b",
            "/.",
            // Found by fuzz/fuzz_targets/request_head.rs: `..` then an encoded slash or
            // backslash, which an upstream that decodes before it splits reads as `../`.
            "/api/used4e5f6a7z/..%2f%5c",
            "/api/users/alice/..%2fbob/tasks",
            "/a/%2e%2E%2F/b",
            "/a/..%5cb",
            "/a/..\\b",
            "/a/.\\b",
            // Path parameters: Tomcat and Spring read `..;x` as `..`.
            "/api/users/alice/..;x/bob",
            "/a/.;/b",
            "/a/%2e%2e%3bx/b",
        ] {
            assert!(has_dot_segments(p.as_bytes()), "{p}");
        }
        for p in [
            "/a/b",
            "/a/.../b",
            "/a/.b",
            "/a/b./c",
            "/a/%2e%2e%2e",
            "/",
            "/a/%2f",
            "/a/...;x/b",
            "/a/;x/b",
            "/a/b.;/c",
            "/a/%252e%252e/b",
            "/a/%2/b",
            "/a/%",
            "/a/%%2e",
        ] {
            assert!(!has_dot_segments(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn the_target_as_received_is_measured_and_must_be_a_served_form() {
        let admit_target = |method: &Method, target: &str, uri: &str| {
            let uri = uri.parse::<Uri>().unwrap_or_default();
            admit(method, &uri, target.as_bytes(), &HeaderMap::new(), LIMITS)
        };
        // Found by fuzz/fuzz_targets/request_head.rs: Pingora gives the Uri of an
        // absolute-form target only its path, so a long authority passed the limit.
        let long = format!("http://{}/x?y", "a".repeat(70));
        assert_eq!(
            admit_target(&Method::GET, &long, "/x?y"),
            Err(Refusal::UriTooLong { max: 64 })
        );
        assert_eq!(admit_target(&Method::GET, "http://h/x?y", "/x?y"), Ok(()));
        assert_eq!(admit_target(&Method::GET, "HTTPS://h:8443", "/"), Ok(()));
        assert_eq!(admit_target(&Method::OPTIONS, "*", "/"), Ok(()));
        // Pingora anchors these to `/` for routing and forwards them verbatim.
        for target in [
            "api/x",
            "mailto:x",
            "foo://h/x",
            "http:/x",
            "http:///x",
            "*",
            "",
        ] {
            assert_eq!(
                admit_target(&Method::GET, target, "/"),
                Err(Refusal::TargetForm),
                "{target:?}"
            );
        }
        // The forwarded target is checked for dot segments too, not only the parsed path.
        assert_eq!(
            admit_target(&Method::GET, "http://h/a/%2e%2e/b", "/b"),
            Err(Refusal::DotSegments)
        );
    }

    #[test]
    fn framing_ambiguities_are_refused() {
        let (_, h) = head(
            "/",
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
        );
        assert!(framing_problem(&h).is_some());
        let (_, h) = head("/", &[("transfer-encoding", "gzip, chunked")]);
        assert!(framing_problem(&h).is_some());
        let (_, h) = head(
            "/",
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert!(framing_problem(&h).is_some());
        let (_, h) = head("/", &[("transfer-encoding", "Chunked")]);
        assert_eq!(framing_problem(&h), None);
    }

    /// Segments glued from dot-ish pieces, so that mixes like `.%2e` come up often.
    fn segment() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("."),
            Just("%2e"),
            Just("%2E"),
            Just("%2"),
            Just("%"),
            Just("e"),
            Just("a"),
            Just("%2f"),
            Just("%5C"),
            Just("\\"),
            Just(";"),
            Just("%3b"),
        ];
        prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
    }

    fn oracle_decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit()
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Refused exactly when, decoded once, some segment between `/` or `\` is `.` or
        /// `..` once its `;` parameters are dropped.
        #[test]
        fn a_path_is_refused_iff_a_segment_decodes_to_a_dot_segment(
            segments in prop::collection::vec(segment(), 0..6)
        ) {
            let path = format!("/{}", segments.join("/"));
            let decodes_to_dots = String::from_utf8_lossy(&oracle_decode(&path))
                .split(['/', '\\'])
                .any(|s| matches!(s.split(';').next(), Some("." | "..")));
            prop_assert_eq!(has_dot_segments(path.as_bytes()), decodes_to_dots, "{}", path);
        }

        /// Any head gives admission or one typed refusal; a refused framing closes.
        #[test]
        fn any_head_is_admitted_or_refused_with_a_typed_reason(
            method in prop_oneof![Just("GET".to_string()), Just("TRACE".to_string()), Just("CONNECT".to_string()), "[A-Z]{1,8}"],
            path in prop_oneof![
                "/[ -~]{0,80}",
                "(http|HTTPS|ftp)://[a-z.:]{0,70}(/[ -~]{0,40})?",
                "[a-z*:/]{0,10}",
            ],
            headers in prop::collection::vec(
                (prop_oneof![Just("transfer-encoding".to_string()), Just("content-length".to_string()), "[a-z-]{1,12}"], "[ -~]{0,40}"),
                0..8,
            ),
        ) {
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let (uri, h) = head(&path, &pairs);
            match admit(&method, &uri, path.as_bytes(), &h, LIMITS) {
                Ok(()) => {
                    prop_assert!(uri.path().len() <= LIMITS.max_uri_bytes);
                    prop_assert!(path.len() <= LIMITS.max_uri_bytes);
                    let lower = path.to_ascii_lowercase();
                    prop_assert!(
                        path.starts_with('/')
                            || (path == "*" && method == Method::OPTIONS)
                            || lower.starts_with("http://")
                            || lower.starts_with("https://"),
                        "{}", path
                    );
                    prop_assert!(!has_dot_segments(uri.path().as_bytes()));
                    prop_assert!(method != Method::TRACE && method != Method::CONNECT);
                    // Admitted framing is unambiguous: no CL+TE, only chunked.
                    prop_assert!(!(h.contains_key("transfer-encoding") && h.contains_key("content-length")));
                }
                Err(r) => {
                    prop_assert_eq!(r.closes_connection(), matches!(r, Refusal::Framing(_)));
                    let answer = crate::rejection::Rejection::from(r);
                    prop_assert!((400..500).contains(&answer.status()));
                    prop_assert!(answer.problem().detail.is_some_and(|d| !d.is_empty()));
                }
            }
        }
    }
}
