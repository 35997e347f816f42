//! Cookie transport of the refresh token, for browser front ends on the API's own site: the
//! request header that opts in, the `Set-Cookie` values that hand the token over (HttpOnly, so
//! page scripts never see it) and reading it back from `Cookie`. `docs/frontend.md` has the
//! design and its threat model.
//!
//! A client that sends `Refresh-Token-Transport: cookie` to `/auth/login`, `/auth/refresh` or
//! `/auth/logout` gets the refresh token as a cookie instead of in the body, and may leave it
//! out of the body of the next refresh or logout: the cookie is read instead. The cookie alone
//! is never enough: without the header it is ignored. A cross-origin page can only send that
//! header after a CORS preflight the gateway approved (WHATWG Fetch, "CORS-safelisted request
//! header"), and SameSite=Strict keeps the cookie off requests from other sites; together
//! they are the CSRF defence (OWASP CSRF cheat sheet, "custom request headers").

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use gatehouse_common::problem::FieldError;

/// The request header that chooses the transport: `cookie` or `body` (the default).
pub const TRANSPORT_HEADER: &str = "refresh-token-transport";

/// `__Secure-` (RFC 6265bis §4.1.3.1): browsers accept the cookie only with `Secure` from an
/// https origin, so a network attacker on plain HTTP can neither set nor overwrite it.
pub const NAME: &str = "__Secure-gatehouse_refresh";

/// A cookie has one `Path`; the token is needed on exactly these two, so it is set once for
/// each (RFC 6265 §5.1.4: `/auth/refresh` does not match `/auth/logout`). Login and
/// registration never receive it.
pub const PATHS: [&str; 2] = ["/auth/refresh", "/auth/logout"];

/// Where the client wants its refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In the JSON body, as before (native apps, scripts, cross-site front ends).
    Body,
    /// In an HttpOnly cookie; the body carries no refresh token.
    Cookie,
}

impl Transport {
    /// The transport a request asks for. An unknown value is a 422 for the header, so a typo
    /// never silently falls back to putting the token where page scripts can read it.
    pub fn of(headers: &HeaderMap) -> Result<Self, FieldError> {
        let mut values = headers.get_all(TRANSPORT_HEADER).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return if headers.contains_key(TRANSPORT_HEADER) {
                Err(bad_header("must be sent once"))
            } else {
                Ok(Self::Body)
            };
        };
        match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
            Ok(v) if v == "cookie" => Ok(Self::Cookie),
            Ok(v) if v == "body" => Ok(Self::Body),
            _ => Err(bad_header("must be cookie or body")),
        }
    }
}

fn bad_header(message: &str) -> FieldError {
    FieldError::new("Refresh-Token-Transport", message)
}

/// What the request's cookies hold under [`NAME`].
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    None,
    One(String),
    /// More than one: the API sets exactly one per path, so another came from somewhere else,
    /// such as a sibling subdomain setting `Domain=` cookies for the whole site ("cookie
    /// tossing", RFC 6265 §8.6). Which one is the user's cannot be told: neither is used.
    Ambiguous,
}

/// The refresh token in the request's cookies. HTTP/2 may split `Cookie` into several fields
/// (RFC 9113 §8.2.3).
pub fn read(headers: &HeaderMap) -> Presented {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == NAME)
        .map(|(_, value)| value.trim().trim_matches('"').to_string());
    match (found.next(), found.next()) {
        (None, _) => Presented::None,
        (Some(one), None) => Presented::One(one),
        (Some(_), Some(_)) => Presented::Ambiguous,
    }
}

/// Hands `token` over for `max_age_seconds`: one cookie per path in [`PATHS`]. No `Domain`,
/// so it is a host-only cookie of the API's host (RFC 6265 §5.3 step 6).
pub fn set(headers: &mut HeaderMap, token: &str, max_age_seconds: i64) {
    for path in PATHS {
        let value = format!(
            "{NAME}={token}; Path={path}; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
            max_age_seconds.max(0)
        );
        // The token is base64url (refresh::looks_valid), always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(SET_COOKIE, v);
        }
    }
}

/// Removes the cookie on both paths (RFC 6265 §5.3 step 11: `Max-Age=0` expires it).
pub fn clear(headers: &mut HeaderMap) {
    set(headers, "", 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn transport_is_chosen_by_the_header_only() {
        assert_eq!(Transport::of(&headers(&[])).ok(), Some(Transport::Body));
        assert_eq!(
            Transport::of(&headers(&[(TRANSPORT_HEADER, " Cookie ")])).ok(),
            Some(Transport::Cookie)
        );
        assert_eq!(
            Transport::of(&headers(&[(TRANSPORT_HEADER, "body")])).ok(),
            Some(Transport::Body)
        );
        assert!(Transport::of(&headers(&[(TRANSPORT_HEADER, "cookies")])).is_err());
        assert!(
            Transport::of(&headers(&[
                (TRANSPORT_HEADER, "cookie"),
                (TRANSPORT_HEADER, "cookie")
            ]))
            .is_err()
        );
    }

    #[test]
    fn one_cookie_of_that_name_is_read_two_are_neither() {
        assert_eq!(
            read(&headers(&[(
                "cookie",
                "a=1; __Secure-gatehouse_refresh=tok ; b=2"
            )])),
            Presented::One("tok".into())
        );
        let two = headers(&[
            ("cookie", "a=1; __Secure-gatehouse_refresh=first"),
            ("cookie", "__Secure-gatehouse_refresh=second"),
        ]);
        assert_eq!(read(&two), Presented::Ambiguous);
        assert_eq!(
            read(&headers(&[("cookie", "gatehouse_refresh=x")])),
            Presented::None
        );
        assert_eq!(read(&headers(&[("cookie", "garbage")])), Presented::None);
        assert_eq!(read(&headers(&[])), Presented::None);
    }

    #[test]
    fn set_and_clear_scope_the_cookie_to_refresh_and_logout() {
        let mut h = HeaderMap::new();
        set(&mut h, "tok", 60);
        clear(&mut h);
        let all: Vec<_> = h
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            all,
            [
                "__Secure-gatehouse_refresh=tok; Path=/auth/refresh; Max-Age=60; Secure; HttpOnly; SameSite=Strict",
                "__Secure-gatehouse_refresh=tok; Path=/auth/logout; Max-Age=60; Secure; HttpOnly; SameSite=Strict",
                "__Secure-gatehouse_refresh=; Path=/auth/refresh; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
                "__Secure-gatehouse_refresh=; Path=/auth/logout; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
            ]
        );
    }
}
