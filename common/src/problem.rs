//! RFC 9457 problem details: the one error body both services answer with.

use serde::Serialize;

/// Media type of every error body (RFC 9457 §3).
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field-level validation error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem+json body. `type` is a stable slug (a relative URI reference, RFC 9457 §3.1.1)
/// that clients match on; `title` is the human summary of that slug; `detail` explains this
/// occurrence. Never carries internals: causes go to the log under the same `request_id`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: u16, kind: &'static str, title: &'static str) -> Self {
        Self {
            kind,
            title,
            status,
            detail: None,
            request_id: None,
            errors: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// Serialised body. Serialising plain strings and numbers cannot fail; the fallback only
    /// keeps this total.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"type":"internal_error","title":"Internal server error","status":500}"#.to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_rfc9457_members_and_omits_empty_ones() {
        let p = Problem::new(404, "not_found", "Not found").request_id("r1");
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"type":"not_found","title":"Not found","status":404,"request_id":"r1"})
        );
    }
}
