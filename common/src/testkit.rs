//! Test support shared by the integration tests of both services (feature `testkit`, enabled
//! only as a dev-dependency, so release binaries never contain it): an HTTP answer reduced to
//! what tests look at, with the problem+json (RFC 9457) assertions both services need.

#![allow(clippy::expect_used)]

use serde_json::Value;

/// A response: status, protocol version, headers, body as text and as JSON (`Null` if not
/// JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Reads the whole answer.
    pub async fn from(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let version = r.version();
        let headers = r.headers().clone();
        let text = r.text().await.expect("response body");
        Self {
            status,
            version,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem body without its per-request id (which must equal the `X-Request-Id`
    /// header), for pinning whole bodies.
    pub fn problem(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some(crate::problem::CONTENT_TYPE),
            "{}",
            self.text
        );
        let mut v = self.body.clone();
        let id = v.as_object_mut().and_then(|o| o.remove("request_id"));
        assert!(
            id.is_some_and(|id| id.as_str() == self.header("x-request-id")),
            "request_id matches the X-Request-Id header: {}",
            self.text
        );
        v
    }

    /// A problem+json answer with this status and type.
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.problem()["type"], kind, "{}", self.text);
    }
}
