//! Request ids: accept a caller's `X-Request-Id` only when it is short and plain (so it can be
//! logged without escaping games), otherwise mint a new one.

pub const HEADER: &str = "x-request-id";

const MAX_LEN: usize = 128;

/// Returns the incoming id when it is acceptable, else a fresh UUID v4.
pub fn accept_or_generate(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(raw) if is_acceptable(raw) => String::from_utf8_lossy(raw).into_owned(),
        _ => generate(),
    }
}

pub fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn is_acceptable(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_LEN
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_ids_and_replaces_hostile_ones() {
        assert_eq!(accept_or_generate(Some(b"abc-123")), "abc-123");
        let replaced = accept_or_generate(Some(b"evil\nline"));
        assert_ne!(replaced, "evil\nline");
        assert_eq!(replaced.len(), 36);
        assert_eq!(accept_or_generate(Some(&[b'a'; 129])).len(), 36);
        assert_eq!(accept_or_generate(None).len(), 36);
    }
}
