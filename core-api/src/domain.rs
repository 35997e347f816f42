//! Parsed input values. Each is built once at the boundary and cannot hold an invalid value
//! afterwards ("parse, don't validate"); handlers work only with these.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_common::problem::FieldError;
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

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

/// A password that satisfies the length rules (docs/security.md: at least 8 characters, at least
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

/// Task title: at most 200 characters as sent, no control characters, stored trimmed and
/// never empty once trimmed. The length is counted before trimming so that the rule is the
/// OpenAPI document's `maxLength` exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTitle(String);

impl TaskTitle {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.chars().count() > TITLE_MAX_CHARS {
            return Err(FieldError::new("title", "must be at most 200 characters"));
        }
        let t = raw.trim();
        if t.is_empty() {
            return Err(FieldError::new("title", "must not be empty"));
        }
        // On the title as sent, as the OpenAPI pattern says: trimming would otherwise let a
        // leading tab or trailing line feed (both Cc and white space) through.
        if raw.chars().any(char::is_control) {
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

/// Task description: at most 4000 characters, no control characters other than tab and line
/// breaks. PostgreSQL's `text` cannot hold NUL at all; the other C0/C1 controls are refused so
/// that a stored description can never carry terminal escapes into someone's log viewer.
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
        if raw
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            return Err(FieldError::new(
                "description",
                "must not contain control characters other than tab and line breaks",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// First and last year a client may write in a timestamp. Whatever the offset, the instant
/// then falls in UTC years 0000–9999: what RFC 3339 (four-digit years) can write back, what
/// the `time` crate converts to UTC without overflowing, and well inside PostgreSQL's
/// `timestamptz` range. The OpenAPI document states the same rule as a pattern.
pub const MIN_YEAR: i32 = 1;
pub const MAX_YEAR: i32 = 9998;

/// Whether an instant (already in UTC) can be stored and written back as RFC 3339: the range
/// a stored timestamp or a cursor position must stay in.
pub fn representable(t: OffsetDateTime) -> bool {
    (0..=9999).contains(&t.year())
}

/// An RFC 3339 date-time with a year from 0001 to 9998, as an instant in UTC truncated to
/// microseconds (PostgreSQL's precision, so that what is stored is what is returned).
pub fn parse_rfc3339(raw: &str, field: &str) -> Result<OffsetDateTime, FieldError> {
    let parsed = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        FieldError::new(
            field,
            "must be an RFC 3339 date-time like 2026-01-31T17:00:00Z",
        )
    })?;
    if !(MIN_YEAR..=MAX_YEAR).contains(&parsed.year()) {
        return Err(FieldError::new(
            field,
            "must be a date-time in the years 0001 to 9998",
        ));
    }
    // The year bound keeps the UTC conversion in range; checked anyway, never a panic.
    let utc = parsed
        .checked_to_offset(UtcOffset::UTC)
        .filter(|t| representable(*t))
        .ok_or_else(|| FieldError::new(field, "must be a date-time in the years 0001 to 9998"))?;
    let micros = utc.nanosecond() / 1_000 * 1_000;
    utc.replace_nanosecond(micros)
        .map_err(|_| FieldError::new(field, "is not a valid date-time"))
}

/// Keyset position: the last item's `(created_at, id)`, opaque to clients.
pub struct Cursor {
    pub created_at: OffsetDateTime,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let micros = self.created_at.unix_timestamp_nanos() / 1_000;
        URL_SAFE_NO_PAD.encode(format!("{micros}.{}", self.id))
    }

    /// Any text gives a position in the storable range or a field error.
    pub fn decode(raw: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::new("cursor", "is not a cursor returned by this API");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, id) = text.split_once('.').ok_or_else(bad)?;
        let micros: i128 = micros.parse().map_err(|_| bad())?;
        let created_at = micros
            .checked_mul(1_000)
            .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
            .filter(|t| representable(*t))
            .ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Self { created_at, id })
    }
}

/// A valid new task.
#[derive(Debug)]
pub struct NewTask {
    pub title: TaskTitle,
    pub description: Option<TaskDescription>,
    pub due_at: Option<OffsetDateTime>,
}

/// Valid changes to a task: `None` leaves a field alone; for the nullable ones `Some(None)`
/// clears it.
#[derive(Debug)]
pub struct TaskChanges {
    pub title: Option<TaskTitle>,
    pub completed: Option<bool>,
    pub description: Option<Option<TaskDescription>>,
    pub due_at: Option<Option<OffsetDateTime>>,
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
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            id: Uuid::nil(),
        };
        let d = Cursor::decode(&c.encode()).ok();
        assert_eq!(d.map(|d| (d.created_at, d.id)), Some((c.created_at, c.id)));
        assert!(Cursor::decode("not-a-cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("12.nope")).is_err());
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
        assert!(TaskTitle::parse("\tBuy milk").is_err());
        assert!(TaskTitle::parse("Buy milk\n").is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use time::format_description::well_known::Rfc3339;

        /// Strings that look like RFC 3339 date-times, with every part allowed to be out of
        /// range, plus arbitrary text.
        fn timestamps() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})",
                "(0000|0001|9998|9999)-(01|12)-(01|31)T(00|23):(00|59):(00|59|60)(\\.9{1,10})?(Z|[+-](00|23):(00|01|59))",
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_timestamp_is_a_storable_servable_instant_or_a_field_error(raw in timestamps()) {
                match parse_rfc3339(&raw, "due_at") {
                    Ok(t) => {
                        prop_assert!(representable(t));
                        prop_assert_eq!(t.offset(), UtcOffset::UTC);
                        prop_assert_eq!(t.nanosecond() % 1_000, 0);
                        // What is stored can always be written back.
                        prop_assert!(t.format(&Rfc3339).is_ok());
                    }
                    Err(e) => prop_assert_eq!(e.field, "due_at"),
                }
            }

            #[test]
            fn any_cursor_text_decodes_to_a_representable_position_or_a_field_error(
                raw in prop_oneof![
                    any::<String>(),
                    (any::<i128>(), any::<u128>()).prop_map(|(m, id)| URL_SAFE_NO_PAD.encode(format!("{m}.{}", Uuid::from_u128(id)))),
                    "[0-9-]{1,40}\\.[0-9a-f-]{1,40}".prop_map(|t| URL_SAFE_NO_PAD.encode(t)),
                ]
            ) {
                match Cursor::decode(&raw) {
                    Ok(c) => prop_assert!(representable(c.created_at)),
                    Err(e) => prop_assert_eq!(e.field, "cursor"),
                }
            }

            #[test]
            fn cursors_round_trip_for_every_storable_instant(
                micros in -62_167_219_200_000_000i64..253_402_300_800_000_000i64,
                id in any::<u128>(),
            ) {
                let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let c = Cursor { created_at, id: Uuid::from_u128(id) };
                let back = Cursor::decode(&c.encode());
                prop_assert!(back.is_ok());
                let back = back.unwrap_or(c);
                prop_assert_eq!(back.created_at, created_at);
                prop_assert_eq!(back.id, Uuid::from_u128(id));
            }

            #[test]
            fn any_title_is_trimmed_bounded_and_printable_or_a_field_error(raw in any::<String>()) {
                match TaskTitle::parse(&raw) {
                    Ok(t) => {
                        let s = t.as_str();
                        prop_assert!(!s.is_empty());
                        prop_assert_eq!(s, s.trim());
                        prop_assert!(s.chars().count() <= TITLE_MAX_CHARS);
                        prop_assert!(!s.chars().any(char::is_control));
                    }
                    Err(e) => prop_assert_eq!(e.field, "title"),
                }
            }

            #[test]
            fn any_description_is_storable_or_a_field_error(raw in any::<String>()) {
                match TaskDescription::parse(raw) {
                    Ok(d) => {
                        prop_assert!(!d.as_str().contains('\0'));
                        prop_assert!(d.as_str().chars().count() <= DESCRIPTION_MAX_CHARS);
                    }
                    Err(e) => prop_assert_eq!(e.field, "description"),
                }
            }

            #[test]
            fn any_email_is_normalised_or_a_field_error(raw in prop_oneof![any::<String>(), "[a-zA-Z0-9.+\x00-\x1f]{1,20}@[a-z0-9.-]{1,20}"]) {
                match Email::parse(&raw) {
                    Ok(e) => {
                        prop_assert_eq!(e.as_str(), e.as_str().trim().to_lowercase());
                        prop_assert!(e.as_str().len() <= 254);
                        prop_assert!(!e.as_str().chars().any(char::is_control));
                    }
                    Err(e) => prop_assert_eq!(e.field, "email"),
                }
            }

            #[test]
            fn any_password_is_accepted_by_length_alone(raw in any::<String>()) {
                let n = raw.chars().count();
                prop_assert_eq!(
                    Password::parse(raw, "password").is_ok(),
                    (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&n)
                );
            }
        }
    }
}
