//! The stages a request passes before it is forwarded, in order: admit the head, route, CORS,
//! declared body size, per-client and global limits, then on JWT routes authenticate, the path
//! claim and per-subject limits. Each is a plain function of the request and the compiled
//! configuration that returns the one [`Rejection`] that stops the request; `proxy.rs` only
//! calls them in sequence and writes the answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use gatehouse_common::jwt::{self, AccessClaims};
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::admission::{self, HeadLimits};
use crate::cors::{self, Outcome};
use crate::jwks::Jwks;
use crate::limits::{Bucket, RedisLimits, Verdict};
use crate::rejection::Rejection;
use crate::routing;
use crate::runtime::RouteRt;
use crate::settings::LimitKey;

/// Size, framing, dot segments, method and target form of the request head (RFC 9112,
/// RFC 3986). `target` is the request-target as received (what is forwarded).
pub fn admit_head(
    limits: HeadLimits,
    method: &Method,
    uri: &Uri,
    target: &[u8],
    headers: &HeaderMap,
) -> Result<(), Rejection> {
    Ok(admission::admit(method, uri, target, headers, limits)?)
}

/// The index of the route for this host (the `Host` header, else the URI's authority, as in
/// HTTP/2), method and path.
pub fn route(
    routes: &[RouteRt],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<usize, Rejection> {
    let host = || {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(uri.host())
    };
    routing::select(routes.iter().map(|r| &r.cfg), host, method, uri.path())
        .ok_or(Rejection::NoRoute)
}

/// What CORS lets through: a preflight answered here, or a request forwarded with these
/// response headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Cors {
    Preflight(cors::Headers),
    Forward(cors::Headers),
}

/// The route's CORS decision. Runs before authentication: a preflight never carries
/// credentials and must not meet auth or per-subject limits.
pub fn cors(route: &RouteRt, method: &Method, headers: &HeaderMap) -> Result<Cors, Rejection> {
    match cors::decide(route.cors.as_ref(), method, headers) {
        Outcome::Preflight(h) => Ok(Cors::Preflight(h)),
        Outcome::PreflightRejected(why) => Err(Rejection::Preflight(why)),
        Outcome::Allowed(h) => Ok(Cors::Forward(h)),
        // The page may not read the answer; `Vary` keeps caches from mixing origins.
        Outcome::Disallowed => Ok(Cors::Forward(vec![cors::vary()])),
        Outcome::NotCors => Ok(Cors::Forward(Vec::new())),
    }
}

/// A declared `Content-Length` over the route's limit is refused before anything is read
/// (bodies without one are counted as they stream, in `request_body_filter`).
pub fn declared_body(route: &RouteRt, headers: &HeaderMap) -> Result<(), Rejection> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.body_limit as u64) {
        return Err(Rejection::BodyTooLarge {
            max: route.body_limit,
        });
    }
    Ok(())
}

/// The first of the route's `key` limits that refuses this request, by client network
/// (`ip`), verified `subject`, or one bucket (`global`).
pub async fn limit(
    route: &RouteRt,
    redis: Option<&RedisLimits>,
    key: LimitKey,
    ip: Option<IpAddr>,
    subject: Option<&HeaderValue>,
) -> Result<(), Rejection> {
    for l in route.limits.iter().filter(|l| l.key == key) {
        let bucket = match key {
            LimitKey::Ip => l.client_bucket(ip),
            LimitKey::Subject => match subject {
                Some(subject) => Bucket::Subject(subject.clone()),
                None => continue,
            },
            LimitKey::Global => Bucket::Shared,
        };
        let verdict = match l.check_now(&bucket, redis) {
            Ok(verdict) => verdict,
            Err(redis) => l.check_shared(&bucket, redis).await,
        };
        if let Verdict::Limited {
            retry_after_secs, ..
        } = verdict
        {
            return Err(Rejection::RateLimited {
                limit: l.clone(),
                retry_after_secs,
            });
        }
    }
    Ok(())
}

/// The bearer token of `Authorization` as received, unchecked (RFC 6750 §2.1: `Bearer`,
/// case-insensitive, one or more spaces, the token; blanks around it ignored). A header value
/// holds no control character but tab, so `trim_ascii` trims spaces and tabs.
fn raw_bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    crate::headers::strip_prefix_ignore_case(value, b"bearer ").map(<[u8]>::trim_ascii)
}

/// A bearer token as `HeaderValue::to_str` would pass it (visible ASCII, spaces and tabs),
/// and not empty.
fn checked_token(token: &[u8]) -> Option<&str> {
    let visible = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b);
    if token.is_empty() || !token.iter().all(visible) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// The verified claims of the request's bearer token. The verified-token cache is asked first,
/// with the token's bytes as received: its entries are verified tokens, so a hit means the
/// bytes are one (a client reusing its access token costs neither a check of its ~300
/// characters nor a signature), and bytes [`checked_token`] would refuse can never hit.
/// Otherwise the token is checked and verified; a key we do not have, or a signature that fails
/// under the key we have for its kid (the issuer may have replaced it), lets the JWKS be fetched
/// again (single-flight, at most once per `min_refetch_seconds`) before the token is refused.
pub async fn authenticate(
    jwks: &Jwks,
    headers: &HeaderMap,
) -> Result<Arc<AccessClaims>, Rejection> {
    let raw = raw_bearer(headers).ok_or(Rejection::MissingToken)?;
    let verifier = jwks.verifier();
    let claims = match verifier.verify_cached(raw) {
        Some(verdict) => verdict?,
        None => {
            let token = checked_token(raw).ok_or(Rejection::MissingToken)?;
            let rejected_at = Instant::now();
            match verifier.verify(token) {
                // Boxed: a rare path whose state would otherwise be part of every request's
                // future.
                Err(jwt::Rejection::UnknownKey | jwt::Rejection::BadSignature)
                    if Box::pin(jwks.refetch_after_rejection(rejected_at)).await =>
                {
                    verifier.verify(token)?
                }
                other => other?,
            }
        }
    };
    forwardable(claims)
}

/// The subject travels upstream as `X-User-Id`: one that cannot be a header value (control
/// characters, non-ASCII) is refused here rather than failing the forward with a 5xx.
fn forwardable(claims: Arc<AccessClaims>) -> Result<Arc<AccessClaims>, Rejection> {
    if claims.sub_header().is_none() {
        return Err(jwt::Rejection::Malformed.into());
    }
    Ok(claims)
}

/// `routes.path_claim`: the path's `{sub}` segment must be the verified subject.
pub fn path_claim(route: &RouteRt, path: &str, sub: &str) -> Result<(), Rejection> {
    match &route.cfg.path_claim {
        Some(rule) if !routing::path_claim_holds(rule, path, sub) => Err(Rejection::PathClaim),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map as headers;
    use crate::settings::{Cors as CorsSettings, Limit, Route};
    use std::sync::Arc;

    fn route(cfg: Route, limits: &[(&str, Limit)]) -> RouteRt {
        RouteRt::for_tests(
            cfg,
            limits
                .iter()
                .map(|(n, l)| Arc::new(crate::limits::Named::new(n, l)))
                .collect(),
        )
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap_or_default()
    }

    /// The token `authenticate` verifies when the cache does not hold it.
    fn bearer(h: &HeaderMap) -> Result<&str, Rejection> {
        raw_bearer(h)
            .and_then(checked_token)
            .ok_or(Rejection::MissingToken)
    }

    #[test]
    fn bearer_tokens_are_found_case_insensitively_and_empty_ones_refused() {
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])).ok(),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "BEARER\tx y")])).ok(),
            None,
            "the scheme ends at a space"
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer a\tb\t")])).ok(),
            Some("a\tb")
        );
        for bad in [
            "Bearer ",
            "Bearer \t ",
            "Basic abc",
            "abc",
            "Bearer",
            "Bearerabc",
        ] {
            let h = headers(&[("authorization", bad)]);
            assert!(matches!(bearer(&h), Err(Rejection::MissingToken)), "{bad}");
        }
        assert!(matches!(
            bearer(&HeaderMap::new()),
            Err(Rejection::MissingToken)
        ));
        // Bytes `HeaderValue::to_str` refuses (obs-text, even as valid UTF-8) are no token.
        let mut h = HeaderMap::new();
        let v =
            http::HeaderValue::from_bytes("Bearer é".as_bytes()).unwrap_or_else(|_| unreachable!());
        h.insert(http::header::AUTHORIZATION, v);
        assert!(matches!(bearer(&h), Err(Rejection::MissingToken)));
    }

    #[test]
    fn a_declared_body_over_the_route_limit_is_refused_with_the_limit() {
        let mut r = route(Route::default(), &[]);
        r.body_limit = 10;
        assert!(declared_body(&r, &headers(&[("content-length", "10")])).is_ok());
        assert!(declared_body(&r, &HeaderMap::new()).is_ok());
        assert!(matches!(
            declared_body(&r, &headers(&[("content-length", "11")])),
            Err(Rejection::BodyTooLarge { max: 10 })
        ));
    }

    #[test]
    fn path_claims_hold_only_for_the_subject() {
        let r = route(
            Route {
                path_claim: Some("/api/users/{sub}/".into()),
                ..Route::default()
            },
            &[],
        );
        assert!(path_claim(&r, "/api/users/abc/tasks", "abc").is_ok());
        assert!(matches!(
            path_claim(&r, "/api/users/abd/tasks", "abc"),
            Err(Rejection::PathClaim)
        ));
        let open = route(Route::default(), &[]);
        assert!(path_claim(&open, "/api/users/abd/tasks", "abc").is_ok());
    }

    #[tokio::test]
    async fn the_limit_that_fires_is_named() {
        let tight = Limit {
            per_second: 1,
            per_minute: 0,
            burst: 1,
            ..Limit::default()
        };
        let by_sub = Limit {
            key: LimitKey::Subject,
            ..tight.clone()
        };
        let r = route(Route::default(), &[("tight", tight), ("by_sub", by_sub)]);
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(limit(&r, None, LimitKey::Ip, ip, None).await.is_ok());
        let Err(refused) = limit(&r, None, LimitKey::Ip, ip, None).await else {
            panic!("the second request within the burst of 1 must be refused");
        };
        assert_eq!(refused.limit(), Some("tight"));
        // Another client, and the per-subject limit, have buckets of their own.
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(limit(&r, None, LimitKey::Ip, other, None).await.is_ok());
        let u1 = HeaderValue::from_static("u1");
        assert!(
            limit(&r, None, LimitKey::Subject, None, Some(&u1))
                .await
                .is_ok()
        );
        let refused = limit(&r, None, LimitKey::Subject, None, Some(&u1))
            .await
            .err();
        assert_eq!(refused.as_ref().and_then(Rejection::limit), Some("by_sub"));
    }

    /// `request_filter`'s future holds this stage's future inline, and `async_trait` moves it
    /// into a new box on every request: the Redis round trip (kilobytes of state with its
    /// timeout) is boxed where it is awaited, so the stage stays small whether or not a limit is
    /// shared (240 bytes in a debug build; 3 936 with the round trip inline).
    #[test]
    fn the_limit_stage_future_stays_small() {
        let r = route(Route::default(), &[]);
        let size = std::mem::size_of_val(&limit(&r, None, LimitKey::Ip, None, None));
        assert!(size <= 512, "{size} bytes");
    }

    #[test]
    fn cors_answers_preflights_refuses_bad_ones_and_varies_on_origin() {
        let policy = CorsSettings {
            origins: vec!["https://app.example.com".into()],
            ..CorsSettings::default()
        };
        let mut r = route(Route::default(), &[]);
        r.cors = cors::Policy::compile(&policy).ok();
        let preflight = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            cors(&r, &Method::OPTIONS, &preflight),
            Ok(Cors::Preflight(_))
        ));
        let foreign = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            cors(&r, &Method::OPTIONS, &foreign),
            Err(Rejection::Preflight(_))
        ));
        let simple = headers(&[("origin", "https://evil.example")]);
        assert_eq!(
            cors(&r, &Method::GET, &simple).ok(),
            Some(Cors::Forward(vec![cors::vary()]))
        );
        assert_eq!(
            cors(&r, &Method::GET, &HeaderMap::new()).ok(),
            Some(Cors::Forward(Vec::new()))
        );
    }

    #[test]
    fn routing_and_head_admission_refuse_with_their_reasons() {
        let routes = [route(
            Route {
                prefix: "/api/".into(),
                ..Route::default()
            },
            &[],
        )];
        let limits = HeadLimits {
            max_uri_bytes: 64,
            max_header_bytes: 1024,
        };
        let h = HeaderMap::new();
        assert_eq!(
            route_of(&routes, "/api/x", &h),
            Ok(0),
            "the longest matching prefix"
        );
        assert_eq!(route_of(&routes, "/other", &h), Err("no_route"));
        let refused = admit_head(limits, &Method::TRACE, &uri("/api/x"), b"/api/x", &h).err();
        assert_eq!(refused.map(|r| r.reason()), Some("method"));
        let refused = admit_head(limits, &Method::GET, &uri("/api/../x"), b"/api/../x", &h).err();
        assert_eq!(refused.map(|r| r.status()), Some(400));
    }

    fn route_of(routes: &[RouteRt], path: &str, h: &HeaderMap) -> Result<usize, &'static str> {
        super::route(routes, &Method::GET, &uri(path), h).map_err(|r| r.reason())
    }
}
