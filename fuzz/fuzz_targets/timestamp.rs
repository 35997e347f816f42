//! `parse_rfc3339` on any text (`due_at`): an instant that PostgreSQL can store and the API can
//! write back, or a field error naming the field, never a panic.

#![no_main]

use core_api::domain::{MAX_YEAR, MIN_YEAR, parse_rfc3339, representable};
use libfuzzer_sys::fuzz_target;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let t = match parse_rfc3339(&raw, "due_at") {
        Ok(t) => t,
        Err(e) => {
            assert_eq!(e.field, "due_at");
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert!(representable(t), "{raw:?} gave {t}");
    assert_eq!(t.offset(), UtcOffset::UTC, "{raw:?}");
    assert_eq!(
        t.nanosecond() % 1_000,
        0,
        "{raw:?}: finer than PostgreSQL keeps"
    );

    // The instant sent, truncated to the microsecond, whatever its offset.
    let sent = OffsetDateTime::parse(&raw, &Rfc3339).expect("accepted text is RFC 3339");
    assert!((MIN_YEAR..=MAX_YEAR).contains(&sent.year()), "{raw:?}");
    let lost = sent - t;
    assert!(
        lost >= Duration::ZERO && lost < Duration::microseconds(1),
        "{raw:?} became {t}"
    );

    // What is stored can be written back as RFC 3339, and reads back as the same instant.
    let text = t
        .format(&Rfc3339)
        .expect("a stored instant formats as RFC 3339");
    let back = OffsetDateTime::parse(&text, &Rfc3339).expect("our RFC 3339 parses");
    assert_eq!(back, t, "{raw:?} → {text}");
    // A client that sends back what it read gets the same instant, within the input range.
    if (MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
        assert_eq!(parse_rfc3339(&text, "due_at").ok(), Some(t), "{text}");
    }
});
