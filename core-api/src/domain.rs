//! Parsed input values. Each is built once at the boundary and cannot hold an invalid value
//! afterwards ("parse, don't validate"); handlers work only with these.

use std::fmt;

use gatehouse_common::problem::FieldError;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 256;
pub const TITLE_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 4000;
const EMAIL_MAX_BYTES: usize = 254;

/// A syntactically valid e-mail address, trimmed and lower-cased (the unique form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        let err = |m: &str| FieldError::new("email", m);
        if trimmed.is_empty() {
            return Err(err("must not be empty"));
        }
        if trimmed.len() > EMAIL_MAX_BYTES {
            return Err(err("must be at most 254 characters"));
        }
        let ok = email_address::EmailAddress::parse_with_options(
            trimmed,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .is_ok();
        if !ok || !trimmed.rsplit('@').next().is_some_and(|d| d.contains('.')) {
            return Err(err("must be an e-mail address like name@example.com"));
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    /// For values read back from the database, which only ever holds parsed addresses.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that satisfies the length rules (SECURITY.md: at least 8 characters, at least
/// 64 accepted, no composition rules). Redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: String, field: &str) -> Result<Self, FieldError> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(FieldError::new(field, "must be at least 8 characters"));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(FieldError::new(field, "must be at most 256 characters"));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Task title: trimmed, 1–200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTitle(String);

impl TaskTitle {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let t = raw.trim();
        let n = t.chars().count();
        if n == 0 {
            return Err(FieldError::new("title", "must not be empty"));
        }
        if n > TITLE_MAX_CHARS {
            return Err(FieldError::new("title", "must be at most 200 characters"));
        }
        if t.chars().any(char::is_control) {
            return Err(FieldError::new(
                "title",
                "must not contain control characters",
            ));
        }
        Ok(Self(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Task description: at most 4000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDescription(String);

impl TaskDescription {
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        if raw.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(FieldError::new(
                "description",
                "must be at most 4000 characters",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An RFC 3339 timestamp.
pub fn parse_rfc3339(raw: &str, field: &str) -> Result<OffsetDateTime, FieldError> {
    OffsetDateTime::parse(raw.trim(), &Rfc3339).map_err(|_| {
        FieldError::new(
            field,
            "must be an RFC 3339 date-time like 2026-01-31T17:00:00Z",
        )
    })
}

/// Collects the outcome of several field parses, so one response lists every problem.
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

impl Fields {
    pub fn take<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ")
                .map(|e| e.0)
                .ok()
                .as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_length_rules_count_characters() {
        assert!(Password::parse("short".into(), "password").is_err());
        assert!(Password::parse("12345678".into(), "password").is_ok());
        assert!(Password::parse("é".repeat(256), "password").is_ok());
        assert!(Password::parse("x".repeat(257), "password").is_err());
        assert!(
            !format!("{:?}", Password::parse("hunter22hunter".into(), "p").ok()).contains("hunter")
        );
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(
            TaskTitle::parse("  Buy milk ").map(|t| t.0).ok().as_deref(),
            Some("Buy milk")
        );
        assert!(TaskTitle::parse("   ").is_err());
        assert!(TaskTitle::parse(&"x".repeat(200)).is_ok());
        assert!(TaskTitle::parse(&"x".repeat(201)).is_err());
        assert!(TaskTitle::parse("a\u{0}b").is_err());
    }
}
