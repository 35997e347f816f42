//! Every way the gateway answers a request itself instead of forwarding it, and the one mapping
//! of each to what the client, Prometheus and the access log see: status, problem+json type,
//! title and detail (RFC 9457), extra headers, `rejections_total{reason}` (plus
//! `rate_limited_total{limit}` for 429s) and the access log's `decision` and `limit`.
//!
//! Building a `Rejection` never allocates; the body and headers are made only when one is
//! written.

use std::sync::Arc;

use gatehouse_common::jwt;
use gatehouse_common::problem::Problem;
use pingora::{ErrorSource, ErrorType};

use crate::admission::Refusal;
use crate::limits::Named;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone)]
pub enum Rejection {
    /// The request head: size, framing, dot segments, method (`admission.rs`).
    Head(Refusal),
    /// No route for this host, method and path.
    NoRoute,
    /// A CORS preflight the route's policy refuses, and why.
    Preflight(&'static str),
    /// The declared `Content-Length`, or the body as it streamed, is over the route's limit.
    BodyTooLarge {
        max: usize,
    },
    /// The named limit refused the request.
    RateLimited {
        limit: Arc<Named>,
        retry_after_secs: u64,
    },
    /// A JWT route and no `Authorization: Bearer` token.
    MissingToken,
    InvalidToken(jwt::Rejection),
    /// The path names another subject than the verified token (`routes.path_claim`).
    PathClaim,
    /// Every target of the route's upstream is down or ejected.
    NoHealthyTarget,
    /// Connecting to (or talking to) the upstream failed.
    UpstreamUnavailable,
    /// The upstream did not answer within its read/write timeouts or `total_timeout_ms`.
    UpstreamTimeout,
    /// A response still streaming when `total_timeout_ms` ran out (it is cut).
    ResponseDeadline,
    /// The client's request could not be read (Pingora refused it).
    Malformed,
    Internal,
    /// Any other status Pingora asked for.
    Status(u16),
}

impl From<Refusal> for Rejection {
    fn from(r: Refusal) -> Self {
        Self::Head(r)
    }
}

impl From<jwt::Rejection> for Rejection {
    fn from(r: jwt::Rejection) -> Self {
        Self::InvalidToken(r)
    }
}

/// `WWW-Authenticate` on 401s (RFC 6750 §3).
const BEARER: &str = "Bearer realm=\"gatehouse\"";
const BEARER_INVALID: &str = "Bearer realm=\"gatehouse\", error=\"invalid_token\"";

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Self::Head(Refusal::UriTooLong { .. }) => 414,
            Self::Head(Refusal::Framing(_) | Refusal::DotSegments | Refusal::TargetForm) => 400,
            Self::Head(Refusal::HeadersTooLarge { .. }) => 431,
            Self::Head(Refusal::Method) => 405,
            Self::NoRoute => 404,
            Self::Preflight(_) | Self::PathClaim => 403,
            Self::BodyTooLarge { .. } => 413,
            Self::RateLimited { .. } => 429,
            Self::MissingToken | Self::InvalidToken(_) => 401,
            Self::NoHealthyTarget => 503,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout | Self::ResponseDeadline => 504,
            Self::Malformed => 400,
            Self::Internal => 500,
            Self::Status(s) => *s,
        }
    }

    /// The problem+json body (type, title, detail); the caller adds the request id.
    pub fn problem(&self) -> Problem {
        let p = |kind, title| Problem::new(self.status(), kind, title);
        match self {
            Self::Head(Refusal::UriTooLong { max }) => p("uri_too_long", "URI too long")
                .detail(format!("The request target must be at most {max} bytes.")),
            Self::Head(Refusal::Framing(why)) => {
                p("malformed_request", "Malformed request").detail(*why)
            }
            Self::Head(Refusal::HeadersTooLarge { max }) => {
                p("headers_too_large", "Request header fields too large")
                    .detail(format!("The request headers must be at most {max} bytes."))
            }
            Self::Head(Refusal::DotSegments) => p("malformed_request", "Malformed request")
                .detail("Dot segments are not allowed in paths."),
            Self::Head(Refusal::Method) => p("method_not_allowed", "Method not allowed")
                .detail("TRACE and CONNECT are not served."),
            Self::Head(Refusal::TargetForm) => p("malformed_request", "Malformed request").detail(
                "The request target must be a path, an absolute http(s) URL, or * for OPTIONS.",
            ),
            Self::NoRoute => p("not_found", "Not found").detail("No route for this path."),
            Self::Preflight(why) => p("cors_rejected", "CORS preflight rejected")
                .detail(format!("The preflight was refused: {why}.")),
            Self::BodyTooLarge { max } => p("payload_too_large", "Payload too large")
                .detail(format!("The request body must be at most {max} bytes.")),
            Self::RateLimited { .. } => p("rate_limited", "Too many requests")
                .detail("Too many requests; retry after the time in Retry-After."),
            Self::MissingToken => p("unauthorized", "Authentication required")
                .detail("Send an access token as 'Authorization: Bearer <token>'."),
            Self::InvalidToken(jwt::Rejection::Expired) => {
                p("token_expired", "Access token expired").detail("Refresh the access token.")
            }
            Self::InvalidToken(r) => {
                p("invalid_token", "Invalid access token").detail(r.to_string())
            }
            Self::PathClaim => {
                p("forbidden", "Forbidden").detail("You may only access your own resources.")
            }
            Self::NoHealthyTarget | Self::UpstreamUnavailable => {
                p("upstream_unavailable", "Upstream unavailable").detail(
                    "The service behind the gateway is not reachable right now; retry shortly.",
                )
            }
            Self::UpstreamTimeout | Self::ResponseDeadline => {
                p("upstream_timeout", "Upstream timed out")
                    .detail("The service behind the gateway did not answer in time.")
            }
            Self::Malformed => {
                p("malformed_request", "Malformed request").detail("Malformed request")
            }
            Self::Internal => {
                p("internal_error", "Internal server error").detail("Internal server error")
            }
            Self::Status(_) => p("error", "Error").detail("Error"),
        }
    }

    /// Headers besides the problem body's, CORS and the security headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MissingToken => vec![("www-authenticate", BEARER.into())],
            Self::InvalidToken(_) => vec![("www-authenticate", BEARER_INVALID.into())],
            // draft-ietf-httpapi-ratelimit-headers; Retry-After: RFC 9110 §10.2.3.
            Self::RateLimited {
                limit,
                retry_after_secs,
            } => crate::limits::headers(limit.burst, *retry_after_secs),
            // Caches must keep the answers for different origins apart.
            Self::Preflight(_) => vec![(crate::cors::VARY.0, crate::cors::VARY.1.into())],
            Self::NoHealthyTarget | Self::UpstreamUnavailable => vec![("retry-after", "2".into())],
            _ => Vec::new(),
        }
    }

    /// The label of `rejections_total{reason}` and the access log's `decision`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Head(Refusal::UriTooLong { .. }) => "uri_too_long",
            Self::Head(Refusal::Framing(_)) => "framing",
            Self::Head(Refusal::HeadersTooLarge { .. }) => "headers_too_large",
            Self::Head(Refusal::DotSegments) => "dot_segments",
            Self::Head(Refusal::Method) => "method",
            Self::Head(Refusal::TargetForm) => "target_form",
            Self::NoRoute => "no_route",
            Self::Preflight(_) => "cors",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::PathClaim => "path_claim",
            Self::ResponseDeadline => "upstream_total_timeout",
            Self::NoHealthyTarget
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::Malformed
            | Self::Internal
            | Self::Status(_) => "upstream_error",
        }
    }

    /// The limit that fired, for `rate_limited_total{limit}` and the access log's `limit`.
    pub fn limit(&self) -> Option<&str> {
        match self {
            Self::RateLimited { limit, .. } => Some(limit.name.as_str()),
            _ => None,
        }
    }

    /// A refusal by the edge's own rules (counted in `rejections_total`); the others are
    /// failures of the upstream or of the connection (`upstream_errors_total`, the log).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Head(_)
                | Self::NoRoute
                | Self::Preflight(_)
                | Self::BodyTooLarge { .. }
                | Self::RateLimited { .. }
                | Self::MissingToken
                | Self::InvalidToken(_)
                | Self::PathClaim
        )
    }

    /// The connection must close after the answer: after ambiguous framing nobody knows where
    /// the next request starts (RFC 9112 §6.3).
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::Head(r) if r.closes_connection())
    }

    /// A failed proxy attempt as a rejection; `None` when the client went away (nothing to
    /// answer).
    pub fn from_proxy_error(etype: &ErrorType, source: &ErrorSource) -> Option<Self> {
        use ErrorType::*;
        Some(match (etype, source) {
            (HTTPStatus(code), _) => Self::Status(*code),
            (ConnectTimedout | ConnectRefused | ConnectError | ConnectNoRoute, _) => {
                Self::UpstreamUnavailable
            }
            (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => Self::UpstreamTimeout,
            (_, ErrorSource::Upstream) => Self::UpstreamUnavailable,
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => return None,
            (_, ErrorSource::Downstream) => Self::Malformed,
            (_, _) => Self::Internal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Limit;

    fn limited(name: &str) -> Rejection {
        Rejection::RateLimited {
            limit: Arc::new(Named::new(name, &Limit::default())),
            retry_after_secs: 3,
        }
    }

    #[test]
    fn a_429_names_its_limit_and_carries_the_ratelimit_headers() {
        let r = limited("auth");
        assert_eq!(
            (r.status(), r.reason(), r.limit()),
            (429, "rate_limited", Some("auth"))
        );
        let h = r.headers();
        assert!(h.contains(&("retry-after", "3".into())), "{h:?}");
        assert!(h.contains(&("ratelimit-limit", "20".into())), "{h:?}");
        assert!(h.contains(&("ratelimit-reset", "3".into())), "{h:?}");
        assert_eq!(r.problem().kind, "rate_limited");
        assert!(r.is_refusal());
    }

    #[test]
    fn every_401_challenges_and_an_expired_token_says_so() {
        let missing = Rejection::MissingToken;
        assert_eq!(missing.headers(), vec![("www-authenticate", BEARER.into())]);
        let expired = Rejection::from(jwt::Rejection::Expired);
        assert_eq!(expired.problem().kind, "token_expired");
        assert_eq!(expired.reason(), "invalid_token");
        assert_eq!(expired.headers()[0].1, BEARER_INVALID);
        let forged = Rejection::from(jwt::Rejection::BadSignature);
        assert_eq!(forged.problem().kind, "invalid_token");
        assert_eq!(forged.status(), 401);
    }

    #[test]
    fn head_refusals_keep_their_labels_and_framing_closes() {
        let framing = Rejection::from(Refusal::Framing("x"));
        assert!(framing.closes_connection());
        assert_eq!((framing.status(), framing.reason()), (400, "framing"));
        let long = Rejection::from(Refusal::UriTooLong { max: 10 });
        assert!(!long.closes_connection());
        assert_eq!((long.status(), long.reason()), (414, "uri_too_long"));
    }

    #[test]
    fn upstream_failures_are_not_refusals_and_ask_for_a_retry() {
        let r = Rejection::from_proxy_error(&ErrorType::ConnectRefused, &ErrorSource::Upstream);
        assert!(matches!(r, Some(Rejection::UpstreamUnavailable)));
        let r = Rejection::NoHealthyTarget;
        assert_eq!(
            (r.status(), r.reason(), r.is_refusal()),
            (503, "upstream_error", false)
        );
        assert_eq!(r.headers(), vec![("retry-after", "2".into())]);
        let gone =
            Rejection::from_proxy_error(&ErrorType::ConnectionClosed, &ErrorSource::Downstream);
        assert!(gone.is_none(), "a client that left gets no answer");
        let t = Rejection::from_proxy_error(&ErrorType::ReadTimedout, &ErrorSource::Upstream);
        assert!(matches!(t, Some(Rejection::UpstreamTimeout)));
    }
}
