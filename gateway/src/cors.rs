//! CORS (WHATWG Fetch, "CORS protocol"): one pure decision per request. Preflights are answered
//! here, before authentication and before per-subject rate limits, so a browser's preflight on
//! a JWT route (which never carries the token) always gets its answer.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::headers;
use crate::settings::Cors;

/// Hosting domains where anyone can get a subdomain: a wildcard under them is never safe.
const SHARED_HOSTING: &[&str] = &[
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "onrender.com",
    "fly.dev",
    "up.railway.app",
    "herokuapp.com",
    "github.io",
    "web.app",
    "firebaseapp.com",
    "azurewebsites.net",
    "cloudfront.net",
    "amplifyapp.com",
];

/// An allowed origin: exact, or `scheme://*.domain[:port]` matching exactly one more label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Exact(String),
    Subdomain { scheme: String, suffix: String },
}

impl OriginPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "{raw:?} is not an origin like https://app.example.com"
            ));
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "{raw:?} is not an origin like https://app.example.com (no path)"
            ));
        }
        if lower == "null" || rest == "*" {
            return Err(format!("{raw:?} can never be allowed"));
        }
        match rest.strip_prefix("*.") {
            Some(suffix)
                if SHARED_HOSTING.contains(&suffix.split(':').next().unwrap_or(suffix)) =>
            {
                Err(format!(
                    "{raw:?}: every customer of {suffix} gets a name there, so this admits other people's sites; name your own origins (for previews: a wildcard under a domain you own)"
                ))
            }
            Some(suffix) if !suffix.contains('*') && suffix.contains('.') => Ok(Self::Subdomain {
                scheme: scheme.into(),
                suffix: format!(".{suffix}"),
            }),
            Some(_) => Err(format!(
                "{raw:?}: a wildcard must be followed by a domain with a dot"
            )),
            None if rest.contains('*') => {
                Err(format!("{raw:?}: only a leading *. label is allowed"))
            }
            None => Ok(Self::Exact(lower)),
        }
    }

    /// `origin` in any case: patterns are kept in lower case and compared without it (no
    /// lower-cased copy of the origin per request).
    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomain { scheme, suffix } => {
                headers::strip_prefix_ignore_case(origin.as_bytes(), scheme.as_bytes())
                    .and_then(|r| r.strip_prefix(b"://"))
                    .and_then(|host| headers::strip_suffix_ignore_case(host, suffix.as_bytes()))
                    .is_some_and(|label| {
                        !label.is_empty()
                            && label
                                .iter()
                                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            }
        }
    }
}

/// A route's compiled CORS policy, with the response header values it sends built once.
#[derive(Debug, Clone)]
pub struct Policy {
    origins: Vec<OriginPattern>,
    methods: Vec<String>,
    headers: Vec<String>,
    credentials: bool,
    /// `Access-Control-Expose-Headers`, unless there are none.
    expose: Option<HeaderValue>,
    /// `Access-Control-Allow-Methods`, unless there are none (then no preflight passes).
    allow_methods: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers`, unless there are none.
    allow_headers: Option<HeaderValue>,
    /// `Access-Control-Max-Age`.
    max_age: HeaderValue,
}

impl Policy {
    /// The policy of a `[cors.*]` section; else every entry that cannot be used, by its key
    /// under the section (`origins.2`, `methods.0`, `headers.1`, `expose_headers.0`), and why.
    pub fn compile(c: &Cors) -> Result<Self, Vec<(String, String)>> {
        let mut origins = Vec::new();
        let mut refused = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            match OriginPattern::parse(o) {
                // A wildcard with credentials would hand the session of every subdomain's page
                // to any other subdomain.
                Ok(OriginPattern::Subdomain { .. }) if c.credentials => refused.push((
                    format!("origins.{i}"),
                    "credentials are only allowed with exact origins".to_string(),
                )),
                Ok(p) => origins.push(p),
                Err(why) => refused.push((format!("origins.{i}"), why)),
            }
        }
        for (i, m) in c.methods.iter().enumerate() {
            if Method::from_bytes(m.as_bytes()).is_err() {
                refused.push((
                    format!("methods.{i}"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        for (key, names) in [
            ("headers", &c.headers),
            ("expose_headers", &c.expose_headers),
        ] {
            for (i, h) in names.iter().enumerate() {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    refused.push((format!("{key}.{i}"), format!("{h:?} is not a header name")));
                }
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let methods: Vec<String> = c.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        let headers: Vec<String> = c.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        // Methods and header names are tokens (checked above), so their lists are valid values.
        let list = |items: &[String]| match items {
            [] => None,
            _ => HeaderValue::from_str(&items.join(", ")).ok(),
        };
        Ok(Self {
            origins,
            allow_methods: list(&methods),
            allow_headers: list(&headers),
            expose: list(&c.expose_headers),
            max_age: HeaderValue::from(c.max_age_seconds),
            methods,
            headers,
            credentials: c.credentials,
        })
    }

    fn allows_origin(&self, origin: &str) -> bool {
        // The literal "null" origin (sandboxed iframes, file://) is never allowed.
        if origin == "null" {
            return false;
        }
        self.origins.iter().any(|p| p.matches(origin))
    }
}

/// Response headers of a CORS decision, names and values ready to insert.
pub type Headers = Vec<(HeaderName, HeaderValue)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No `Origin`: not a CORS request.
    NotCors,
    /// Answer the preflight with 204 and these headers; never forward it.
    Preflight(Headers),
    /// Answer the preflight with 403: the reason, plus `Vary`.
    PreflightRejected(&'static str),
    /// Forward; add these headers to the response, whatever its status.
    Allowed(Headers),
    /// Forward; the browser will not let the page read the answer. Only `Vary` is added.
    Disallowed,
}

/// `Vary: Origin` as text, for answers built from strings.
pub const VARY: (&str, &str) = ("vary", "Origin");
static ORIGIN: HeaderValue = HeaderValue::from_static(VARY.1);
static PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
static TRUE: HeaderValue = HeaderValue::from_static("true");

/// `Vary: Origin`: every CORS-aware answer carries it so caches keep origins apart.
pub fn vary() -> (HeaderName, HeaderValue) {
    (header::VARY, ORIGIN.clone())
}

pub fn decide(policy: Option<&Policy>, method: &Method, headers: &HeaderMap) -> Outcome {
    let Some(origin_value) = headers.get(header::ORIGIN) else {
        return Outcome::NotCors;
    };
    // An origin that is not even ASCII matches nothing (RFC 6454 serialises origins in ASCII).
    let origin = origin_value.to_str().unwrap_or("null");
    // Only an OPTIONS request can be a preflight: no other asks for the requested method.
    let requested_method = (method == Method::OPTIONS)
        .then(|| headers.get(header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten();
    let preflight = requested_method.is_some();
    let Some(policy) = policy.filter(|p| p.allows_origin(origin)) else {
        return if preflight {
            Outcome::PreflightRejected("origin is not allowed")
        } else {
            Outcome::Disallowed
        };
    };
    // The origin is echoed as the browser sent it (an allowed origin is ASCII).
    // Room for every header a preflight answer adds (6), so the list never grows.
    let mut out: Headers = Vec::with_capacity(6);
    out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin_value.clone()));
    out.push(vary());
    if policy.credentials {
        out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone()));
    }
    if !preflight {
        if let Some(expose) = &policy.expose {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        return Outcome::Allowed(out);
    }
    let wanted = requested_method
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    if !policy.methods.contains(&wanted) {
        return Outcome::PreflightRejected("method is not allowed");
    }
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for h in asked
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
    {
        if !policy.headers.contains(&h) {
            return Outcome::PreflightRejected("request header is not allowed");
        }
    }
    out[1].1 = PREFLIGHT_VARY.clone();
    if let Some(methods) = &policy.allow_methods {
        out.push((header::ACCESS_CONTROL_ALLOW_METHODS, methods.clone()));
    }
    if let Some(allowed) = &policy.allow_headers {
        out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone()));
    }
    out.push((header::ACCESS_CONTROL_MAX_AGE, policy.max_age.clone()));
    Outcome::Preflight(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(origins: &[&str], credentials: bool) -> Policy {
        let c = Cors {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            credentials,
            ..Cors::default()
        };
        Policy::compile(&c).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
        match o {
            Outcome::Preflight(h) | Outcome::Allowed(h) => h
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.to_str().ok()),
            _ => None,
        }
    }

    #[test]
    fn patterns() {
        assert!(OriginPattern::parse("null").is_err());
        assert!(OriginPattern::parse("https://*").is_err());
        assert!(OriginPattern::parse("https://a.com/path").is_err());
        assert!(OriginPattern::parse("https://*.*.com").is_err());
        assert!(OriginPattern::parse("https://*.vercel.app").is_err());
        assert!(OriginPattern::parse("https://*.preview.example.com").is_ok());
        assert!(OriginPattern::parse("https://gatehouse.vercel.app").is_ok());
        let p = OriginPattern::parse("https://*.example.com")
            .unwrap_or(OriginPattern::Exact(String::new()));
        assert!(p.matches("https://app.example.com"));
        assert!(!p.matches("https://example.com"));
        assert!(!p.matches("https://a.b.example.com"));
        assert!(!p.matches("http://app.example.com"));
        assert!(!p.matches("https://app.example.com.evil.com"));
        // Origins match in any case, without a lower-cased copy.
        assert!(p.matches("HTTPS://App.EXAMPLE.com"));
        assert!(!p.matches("HTTPS://App.EXAMPLE.com.evil.com"));
        assert!(!p.matches("HTTP://App.EXAMPLE.com"));
        assert!(!p.matches("https://é.example.com"), "not ASCII: no label");
        let exact = OriginPattern::parse("https://App.Example.com")
            .unwrap_or(OriginPattern::Exact(String::new()));
        assert!(exact.matches("https://app.example.COM"));
        assert!(!exact.matches("https://app.example.co"));
        assert!(!exact.matches("https://app.example.comm"));
    }

    #[test]
    fn simple_requests() {
        let p = policy(&["https://app.example.com"], true);
        assert_eq!(decide(Some(&p), &Method::GET, &req(&[])), Outcome::NotCors);
        let o = decide(
            Some(&p),
            &Method::GET,
            &req(&[("origin", "https://app.example.com")]),
        );
        assert_eq!(
            header(&o, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(header(&o, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&o, "vary"), Some("Origin"));
        assert_eq!(
            decide(
                Some(&p),
                &Method::GET,
                &req(&[("origin", "https://evil.com")])
            ),
            Outcome::Disallowed
        );
        assert_eq!(
            decide(Some(&p), &Method::GET, &req(&[("origin", "null")])),
            Outcome::Disallowed
        );
        assert_eq!(
            decide(
                None,
                &Method::GET,
                &req(&[("origin", "https://app.example.com")])
            ),
            Outcome::Disallowed
        );
    }

    #[test]
    fn preflights() {
        let p = policy(&["https://*.example.com"], false);
        let ok = decide(
            Some(&p),
            &Method::OPTIONS,
            &req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PATCH"),
                (
                    "access-control-request-headers",
                    "Authorization, Content-Type",
                ),
            ]),
        );
        assert!(matches!(ok, Outcome::Preflight(_)), "{ok:?}");
        assert_eq!(header(&ok, "access-control-allow-credentials"), None);
        assert_eq!(header(&ok, "access-control-max-age"), Some("600"));
        let bad_method = decide(
            Some(&p),
            &Method::OPTIONS,
            &req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ]),
        );
        assert_eq!(
            bad_method,
            Outcome::PreflightRejected("method is not allowed")
        );
        let bad_header = decide(
            Some(&p),
            &Method::OPTIONS,
            &req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-evil"),
            ]),
        );
        assert_eq!(
            bad_header,
            Outcome::PreflightRejected("request header is not allowed")
        );
        let null = decide(
            Some(&p),
            &Method::OPTIONS,
            &req(&[("origin", "null"), ("access-control-request-method", "GET")]),
        );
        assert_eq!(null, Outcome::PreflightRejected("origin is not allowed"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn origins() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("null".to_string()),
                "(http|https|ftp|HTTPS)://[a-zA-Z0-9.*:-]{0,24}(/[a-z]{0,3})?",
                "https://[a-z0-9-]{0,8}\\.example\\.com",
                "https://[a-z0-9.-]{0,12}example\\.com(\\.evil\\.com)?(:[0-9]{1,5})?",
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Configured origins: "null", bare wildcards and paths never compile; exact
            /// patterns have no '*'.
            #[test]
            fn any_configured_origin_is_a_pattern_or_a_clear_error(raw in origins()) {
                match OriginPattern::parse(&raw) {
                    Ok(OriginPattern::Exact(o)) => {
                        prop_assert!(!o.contains('*'));
                        prop_assert!(o != "null");
                        prop_assert!(o.starts_with("http://") || o.starts_with("https://"));
                    }
                    Ok(OriginPattern::Subdomain { suffix, .. }) => {
                        prop_assert!(suffix.starts_with('.') && !suffix.contains('*'));
                    }
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            /// Whatever a browser (or an attacker) sends, the decision only ever admits an
            /// origin that a configured pattern matches, never "null", and credentials only
            /// when the policy has them.
            #[test]
            fn any_request_origin_gets_a_decision_that_admits_only_configured_origins(
                origin in origins(),
                preflight in any::<bool>(),
                method in "(GET|POST|PATCH|DELETE|PUT|[A-Z]{1,6})",
                asked in "[A-Za-z-]{0,12}(, ?[A-Za-z-]{0,12}){0,3}",
                credentials in any::<bool>(),
            ) {
                let configured = ["https://app.example.com", "https://*.example.com"];
                let policy = Policy::compile(&Cors {
                    origins: configured.iter().map(|s| s.to_string()).collect(),
                    // Credentials need exact origins (refused by settings otherwise).
                    credentials: false,
                    ..Cors::default()
                });
                prop_assert!(policy.is_ok());
                let mut policy = policy.unwrap_or_else(|_| unreachable!());
                policy.credentials = credentials;
                let mut h = HeaderMap::new();
                if let Ok(v) = http::HeaderValue::from_str(&origin) {
                    h.insert(http::header::ORIGIN, v);
                }
                if preflight {
                    if let Ok(v) = http::HeaderValue::from_str(&method) {
                        h.insert(http::header::ACCESS_CONTROL_REQUEST_METHOD, v);
                    }
                    if let Ok(v) = http::HeaderValue::from_str(&asked) {
                        h.insert(http::header::ACCESS_CONTROL_REQUEST_HEADERS, v);
                    }
                }
                let m = if preflight { Method::OPTIONS } else { Method::GET };
                let outcome = decide(Some(&policy), &m, &h);
                match &outcome {
                    Outcome::Allowed(headers) | Outcome::Preflight(headers) => {
                        let lower = origin.to_ascii_lowercase();
                        prop_assert!(lower != "null");
                        prop_assert!(policy.origins.iter().any(|p| p.matches(&lower)));
                        prop_assert_eq!(
                            headers.iter().any(|(k, _)| *k == "access-control-allow-credentials"),
                            credentials
                        );
                        prop_assert!(headers.iter().any(|(k, v)| *k == "access-control-allow-origin" && *v == origin));
                    }
                    Outcome::NotCors => prop_assert!(!h.contains_key(http::header::ORIGIN)),
                    Outcome::Disallowed | Outcome::PreflightRejected(_) => {}
                }
            }

            /// A subdomain pattern admits exactly one more DNS label.
            #[test]
            fn a_wildcard_admits_exactly_one_label(label in "[a-zA-Z0-9.-]{0,10}") {
                let p = OriginPattern::parse("https://*.example.com");
                prop_assert!(p.is_ok());
                let p = p.unwrap_or(OriginPattern::Exact(String::new()));
                // In the case it came in: matching ignores case.
                let origin = format!("https://{label}.example.com");
                let one_label = !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                prop_assert_eq!(p.matches(&origin), one_label);
            }
        }
    }
}
