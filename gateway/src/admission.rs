//! Admission of a request head, before routing: size limits (RFC 9110 §15.5.15 414,
//! RFC 6585 §5 431), message framing (RFC 9112 §6.1, §6.3: the ambiguities requests are
//! smuggled through), dot segments (RFC 3986 §5.2.4: `.` and `..`, also percent-encoded, would
//! be resolved differently here and upstream) and methods never served (TRACE, CONNECT).
//!
//! [`admit`] is a pure function of the head, so it is property-tested and fuzzed on its own.

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
}

impl Refusal {
    /// After a framing refusal nobody knows where the next request starts.
    pub fn closes_connection(self) -> bool {
        matches!(self, Self::Framing(_))
    }
}

/// Checks a request head; the first problem found, in the order above.
pub fn admit(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    limits: HeadLimits,
) -> Result<(), Refusal> {
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > limits.max_uri_bytes {
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
    if has_dot_segments(uri.path()) {
        return Err(Refusal::DotSegments);
    }
    if method == Method::TRACE || method == Method::CONNECT {
        return Err(Refusal::Method);
    }
    Ok(())
}

/// Conflicting or unsupported message framing, if any (RFC 9112 §6.1: chunked must be the
/// final coding, and a proxy that does not understand a coding must not forward the message;
/// §6.3: Content-Length with Transfer-Encoding is a smuggling attempt).
pub fn framing_problem(h: &HeaderMap) -> Option<&'static str> {
    let te = h.get_all("transfer-encoding");
    te.iter().next()?;
    if h.contains_key("content-length") {
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

/// Whether a path has a `.` or `..` segment, literally or percent-encoded in any mix
/// (`.%2e`, `%2E.`): an upstream that decodes before resolving would climb out of the route.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|segment| {
        let mut dots = 0;
        let mut rest = segment.as_bytes();
        while !rest.is_empty() {
            match rest {
                [b'.', tail @ ..] => rest = tail,
                [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
                _ => return false,
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
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
        ] {
            assert!(has_dot_segments(p), "{p}");
        }
        for p in [
            "/a/b",
            "/a/.../b",
            "/a/.b",
            "/a/b./c",
            "/a/%2e%2e%2e",
            "/",
            "/a/%2f",
        ] {
            assert!(!has_dot_segments(p), "{p}");
        }
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
        ];
        prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
    }

    fn percent_decode(s: &str) -> Vec<u8> {
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

        /// Refused exactly when some segment decodes to `.` or `..`.
        #[test]
        fn a_path_is_refused_iff_a_segment_decodes_to_a_dot_segment(
            segments in prop::collection::vec(segment(), 0..6)
        ) {
            let path = format!("/{}", segments.join("/"));
            let decodes_to_dots = path
                .split('/')
                .any(|s| matches!(percent_decode(s).as_slice(), b"." | b".."));
            prop_assert_eq!(has_dot_segments(&path), decodes_to_dots, "{}", path);
        }

        /// Any head gives admission or one typed refusal; a refused framing closes.
        #[test]
        fn any_head_is_admitted_or_refused_with_a_typed_reason(
            method in prop_oneof![Just("GET".to_string()), Just("TRACE".to_string()), Just("CONNECT".to_string()), "[A-Z]{1,8}"],
            path in "/[ -~]{0,80}",
            headers in prop::collection::vec(
                (prop_oneof![Just("transfer-encoding".to_string()), Just("content-length".to_string()), "[a-z-]{1,12}"], "[ -~]{0,40}"),
                0..8,
            ),
        ) {
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let (uri, h) = head(&path, &pairs);
            match admit(&method, &uri, &h, LIMITS) {
                Ok(()) => {
                    prop_assert!(uri.path().len() <= LIMITS.max_uri_bytes);
                    prop_assert!(!has_dot_segments(uri.path()));
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
