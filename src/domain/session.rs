//! Browsing sessions from the `customer_sessions` topic: one summary event per session,
//! decoded with the same dead-letter reasons as transactions, and the
//! `fact_customer_sessions` rows they become.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::decode::{fingerprint, parse_timestamp, Decoded, Fields, RejectReason, Rejection};

/// One valid session summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub session_start: DateTime<Utc>,
    pub session_end: DateTime<Utc>,
    pub page_views: i64,
    pub products_viewed: i64,
    pub cart_adds: i64,
    pub cart_removes: i64,
    pub purchase_completed: bool,
}

impl Session {
    /// Something was put in the cart and nothing was bought.
    pub fn cart_abandoned(&self) -> bool {
        self.cart_adds > 0 && !self.purchase_completed
    }

    pub fn duration_minutes(&self) -> f64 {
        (self.session_end - self.session_start).num_milliseconds() as f64 / 60_000.0
    }
}

/// A `fact_customer_sessions` row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionFact {
    pub session: Session,
    pub customer_key: i32,
    pub date_key: i32,
}

/// Decodes one message of the sessions topic; `fingerprint` identifies its content.
pub fn decode_session(payload: &[u8], message_ts: Option<DateTime<Utc>>) -> Result<Decoded<Session>, Rejection> {
    use RejectReason::*;
    let value: Value = super::decode::parse_object(payload)?;
    let fields = Fields { obj: value.as_object().expect("parse_object returns objects"), path: "" };
    let session_id = fields.id("session_id")?;
    let user_id = fields.id("user_id")?;
    let session_start = parse_timestamp(fields.req_str("session_start")?)?;
    let session_end = parse_timestamp(fields.req_str("session_end")?)?;
    if session_end < session_start {
        return Err(Rejection::new(OutOfRange, "session_end is before session_start"));
    }
    if let Some(msg_ts) = message_ts {
        if session_end > msg_ts + chrono::Duration::days(1) {
            return Err(Rejection::new(
                FutureTimestamp,
                format_args!("session_end {session_end} is more than 1 day after the message timestamp {msg_ts}"),
            ));
        }
    }
    let count = |key: &str| fields.integer(key, 0);
    let session = Session {
        session_id,
        user_id,
        session_start,
        session_end,
        page_views: count("page_views")?,
        products_viewed: count("products_viewed")?,
        cart_adds: count("cart_adds")?,
        cart_removes: count("cart_removes")?,
        purchase_completed: fields.flag("purchase_completed")?,
    };
    Ok(Decoded { tx: session, fingerprint: fingerprint(&value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"session_id":"s1","user_id":"u1","session_start":"2026-11-24T10:00:00Z",
        "session_end":"2026-11-24T10:30:30Z","page_views":12,"products_viewed":5,"cart_adds":2,"cart_removes":1,
        "purchase_completed":false}"#;

    fn reason(edit: impl Fn(&mut Value)) -> RejectReason {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        edit(&mut v);
        decode_session(v.to_string().as_bytes(), None).unwrap_err().reason
    }

    #[test]
    fn decodes_a_session() {
        let s = decode_session(GOOD.as_bytes(), None).unwrap().tx;
        assert!(s.cart_abandoned());
        assert_eq!(s.duration_minutes(), 30.5);
    }

    #[test]
    fn bad_sessions_have_their_reason() {
        use RejectReason::*;
        assert_eq!(decode_session(b"nope", None).unwrap_err().reason, InvalidJson);
        assert_eq!(reason(|v| drop(v.as_object_mut().unwrap().remove("session_id"))), MissingField);
        assert_eq!(reason(|v| v["page_views"] = "3".into()), WrongType);
        assert_eq!(reason(|v| v["page_views"] = (-1).into()), OutOfRange);
        assert_eq!(reason(|v| v["purchase_completed"] = 1.into()), WrongType);
        assert_eq!(reason(|v| v["session_end"] = "2026-11-24T09:00:00Z".into()), OutOfRange);
        assert_eq!(reason(|v| v["session_start"] = "yesterday".into()), InvalidTimestamp);
        let ts: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        assert_eq!(decode_session(GOOD.as_bytes(), Some(ts)).unwrap_err().reason, FutureTimestamp);
    }
}
