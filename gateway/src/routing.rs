//! Route selection: longest matching path prefix, optionally restricted to a host and methods;
//! and the path-claim rule (`/api/users/{sub}/…` must carry the verified subject).

use std::cell::LazyCell;

use http::Method;

use crate::settings::Route;

/// Index of the route for this request, or `None` (404 at the edge). `host` gives the
/// request's host; it is asked only when a route restricted to a host matches the path, so a
/// configuration without host routes never reads or parses it.
pub fn select<'a, 'h>(
    routes: impl IntoIterator<Item = &'a Route>,
    host: impl FnOnce() -> Option<&'h str>,
    method: &Method,
    path: &str,
) -> Option<usize> {
    let host = LazyCell::new(|| host().map(host_name));
    routes
        .into_iter()
        .enumerate()
        .filter(|(_, r)| path.starts_with(r.prefix.as_str()))
        .filter(|(_, r)| match &r.host {
            None => true,
            Some(want) => host.is_some_and(|h| host_name(want).eq_ignore_ascii_case(h)),
        })
        .filter(|(_, r)| {
            // RFC 9110 §9.1: methods are case-sensitive (`post` is not POST).
            r.methods.is_empty()
                || method == Method::OPTIONS
                || r.methods.iter().any(|m| m == method.as_str())
        })
        .max_by_key(|(_, r)| (r.prefix.len(), r.host.is_some()))
        .map(|(i, _)| i)
}

/// The name part of a `Host` value (RFC 9110 §7.2): without the port, IPv6 literals without
/// their brackets, without a trailing root dot. Compared case-insensitively by the caller.
fn host_name(h: &str) -> &str {
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Whether `path` honours `rule` (e.g. `/api/users/{sub}/`) for subject `sub`. A path that does
/// not reach the claimed segment is not restricted by the rule.
pub fn path_claim_holds(rule: &str, path: &str, sub: &str) -> bool {
    let Some((before, after)) = rule.split_once("{sub}") else {
        return true;
    };
    let Some(rest) = path.strip_prefix(before) else {
        return true;
    };
    let segment_end = rest.find('/').unwrap_or(rest.len());
    let segment = &rest[..segment_end];
    let tail_ok = after.is_empty()
        || rest[segment_end..].starts_with(after)
        || rest[segment_end..].is_empty();
    // Percent-encoded or differently-cased segments never equal a canonical UUID `sub`.
    segment == sub && tail_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Route;

    fn route(prefix: &str, methods: &[&str], host: Option<&str>) -> Route {
        Route {
            prefix: prefix.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            host: host.map(String::from),
            upstream: "u".into(),
            ..Route::default()
        }
    }

    /// `super::select` with the host already known.
    fn select(routes: &[Route], host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        super::select(routes, || host, method, path)
    }

    #[test]
    fn the_host_is_read_only_for_a_host_route_on_the_path() {
        let asked = std::cell::Cell::new(0);
        let host = || {
            asked.set(asked.get() + 1);
            Some("api.example.com")
        };
        let open = vec![route("/", &[], None), route("/api/", &[], None)];
        assert_eq!(super::select(&open, host, &Method::GET, "/api/x"), Some(1));
        assert_eq!(asked.get(), 0, "no route is restricted to a host");
        let hosted = vec![
            route("/", &[], None),
            route("/api/", &[], Some("api.example.com")),
        ];
        assert_eq!(
            super::select(&hosted, host, &Method::GET, "/other"),
            Some(0)
        );
        assert_eq!(asked.get(), 0, "the host route does not match the path");
        assert_eq!(
            super::select(&hosted, host, &Method::GET, "/api/x"),
            Some(1)
        );
        assert_eq!(asked.get(), 1, "asked once");
    }

    #[test]
    fn longest_prefix_wins_and_methods_filter() {
        let routes = vec![
            route("/api/", &[], None),
            route("/api/users/", &["GET"], None),
            route("/auth/", &["POST"], None),
        ];
        assert_eq!(
            select(&routes, None, &Method::GET, "/api/users/1/tasks"),
            Some(1)
        );
        assert_eq!(
            select(&routes, None, &Method::POST, "/api/users/1/tasks"),
            Some(0)
        );
        assert_eq!(select(&routes, None, &Method::GET, "/auth/login"), None);
        assert_eq!(
            select(&routes, None, &Method::OPTIONS, "/auth/login"),
            Some(2),
            "preflights reach their route"
        );
        assert_eq!(select(&routes, None, &Method::GET, "/other"), None);
    }

    #[test]
    fn host_restriction() {
        let routes = vec![
            route("/", &[], Some("api.example.com")),
            route("/", &[], None),
        ];
        assert_eq!(
            select(&routes, Some("API.example.com:443"), &Method::GET, "/x"),
            Some(0)
        );
        assert_eq!(
            select(&routes, Some("other.example.com"), &Method::GET, "/x"),
            Some(1)
        );
        // A trailing root dot, and IPv6 literals with or without a port.
        assert_eq!(
            select(&routes, Some("api.example.com."), &Method::GET, "/x"),
            Some(0)
        );
        let v6 = vec![
            route("/", &[], Some("[2001:db8::1]")),
            route("/", &[], None),
        ];
        for host in ["[2001:db8::1]:8443", "[2001:db8::1]"] {
            assert_eq!(
                select(&v6, Some(host), &Method::GET, "/x"),
                Some(0),
                "{host}"
            );
        }
        assert_eq!(
            select(&v6, Some("[2001:db8::2]"), &Method::GET, "/x"),
            Some(1)
        );
    }

    #[test]
    fn methods_are_case_sensitive() {
        let routes = vec![route("/auth/", &["POST"], None)];
        let lower = Method::from_bytes(b"post").unwrap_or(Method::GET);
        assert_eq!(select(&routes, None, &lower, "/auth/login"), None);
        assert_eq!(select(&routes, None, &Method::POST, "/auth/login"), Some(0));
    }

    #[test]
    fn path_claims() {
        let rule = "/api/users/{sub}/";
        assert!(path_claim_holds(rule, "/api/users/abc/tasks", "abc"));
        assert!(path_claim_holds(rule, "/api/users/abc", "abc"));
        assert!(!path_claim_holds(rule, "/api/users/abd/tasks", "abc"));
        assert!(!path_claim_holds(rule, "/api/users/ABC/tasks", "abc"));
        assert!(!path_claim_holds(rule, "/api/users//tasks", "abc"));
        assert!(!path_claim_holds(rule, "/api/users/%61bc/tasks", "abc"));
        assert!(
            path_claim_holds(rule, "/api/me", "abc"),
            "other paths are not restricted"
        );
    }
}
