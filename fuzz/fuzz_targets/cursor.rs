//! `Cursor::decode` on any text (the `cursor` query parameter): a position in the storable
//! range or a field error, never a panic; and every position the API can hand out survives
//! `encode` → `decode` unchanged.

#![no_main]

use core_api::domain::{Cursor, representable};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match Cursor::decode(&raw) {
        Ok(c) => {
            assert!(representable(c.created_at), "{raw:?}");
            // PostgreSQL keeps microseconds; a cursor never claims more.
            assert_eq!(c.created_at.nanosecond() % 1_000, 0, "{raw:?}");
            round_trips(&c);
        }
        Err(e) => assert_eq!(e.field, "cursor"),
    }

    // The same bytes read as a position the API could have written: microseconds since the
    // epoch (kept in the representable range) and an id.
    if data.len() >= 24 {
        let micros = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let id = Uuid::from_bytes(data[8..24].try_into().expect("16 bytes"));
        let Ok(created_at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        else {
            return;
        };
        if representable(created_at) {
            round_trips(&Cursor { created_at, id });
        }
    }
});

fn round_trips(c: &Cursor) {
    let text = c.encode();
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{text:?} is not URL-safe"
    );
    let again = Cursor::decode(&text).expect("an encoded cursor decodes");
    assert_eq!((again.created_at, again.id), (c.created_at, c.id));
}
