//! Every message of either input topic is applied or dead-lettered with a reason; nothing
//! panics, and what a rejection carries (its detail, the DLQ's `error` header) stays small
//! whatever the message holds.
#![no_main]

use chrono::{DateTime, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use martstream::domain::session::decode_session;
use martstream::domain::{decode, Engine, Outcome, Rejection, ViewConfig};
use martstream::sink::documents;

/// Longest detail a rejection may carry (it becomes a Kafka header and a log line).
const MAX_DETAIL: usize = 512;

fn check(rejection: &Rejection) {
    assert!(!rejection.detail.is_empty(), "{:?} without a detail", rejection.reason);
    assert!(rejection.detail.len() <= MAX_DETAIL, "detail of {} bytes", rejection.detail.len());
}

fn message_ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let ts = message_ts();
    let mut engine = Engine::new(ViewConfig::default());
    match decode(data, Some(ts)) {
        Ok(event) => {
            assert!(matches!(engine.apply(&event), Outcome::Applied { .. }));
            // An identical resend is dropped, never applied twice.
            assert_eq!(engine.apply(&event), Outcome::Duplicate);
            let changes = engine.flush(ts, true);
            for fact in &changes.facts {
                documents::fact(fact);
            }
            for doc in &changes.rfm {
                documents::rfm(doc, ts);
            }
            for doc in &changes.products.upserts {
                documents::product(doc, ts);
            }
            for doc in &changes.trends.upserts {
                documents::trend(doc, ts);
            }
        }
        Err(rejection) => check(&rejection),
    }
    match decode_session(data, Some(ts)) {
        Ok(session) => {
            assert!(matches!(engine.apply_session(&session, 0), Outcome::Applied { .. }));
            for fact in &engine.flush(ts, true).sessions {
                documents::session(fact);
            }
        }
        Err(rejection) => check(&rejection),
    }
});
