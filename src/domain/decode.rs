//! Decoding and validating one message of the `transactions` topic (SPEC §1 "Bad input").
//!
//! A message either decodes into a [`Transaction`] plus the fingerprint of its parsed JSON
//! (used to tell an identical resend from a conflicting one), or is rejected with one of the
//! SPEC's dead-letter reasons. Checks run in field order, so one message has one reason.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3;

use super::event::{EventKind, LineItem, Location, Transaction};
use super::money::{cents_from_number, Cents, MoneyError};

/// Longest accepted id (`transaction_id`, `user_id`, `product_id`, ...), in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most lines one event may carry.
pub const MAX_ITEMS: usize = 1000;
/// Largest accepted `quantity` of one line.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// Why a message went to the dead-letter topic: the SPEC's closed list, used as the
/// `reason` header and as the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    InvalidJson,
    MissingField,
    WrongType,
    InvalidTimestamp,
    OutOfRange,
    UnknownEventType,
    FutureTimestamp,
    ConflictingDuplicate,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::InvalidTimestamp,
        RejectReason::OutOfRange,
        RejectReason::UnknownEventType,
        RejectReason::FutureTimestamp,
        RejectReason::ConflictingDuplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::ConflictingDuplicate => "conflicting_duplicate",
        }
    }
}

/// A rejected message: the reason and a human-readable detail naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl fmt::Display) -> Self {
        Rejection { reason, detail: detail.to_string() }
    }
}

/// A valid event and the fingerprint of its parsed JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T = Transaction> {
    pub tx: T,
    /// Hash of the parsed JSON with key order, whitespace, `null` members and the spelling of
    /// numbers (`2` / `2.0`) aside: two copies with equal fingerprints are the same event.
    pub fingerprint: u64,
}

/// Decodes one message value. `message_ts` is the Kafka message timestamp, when the broker
/// gave one; an event more than one day after it is `future_timestamp`.
pub fn decode(payload: &[u8], message_ts: Option<DateTime<Utc>>) -> Result<Decoded, Rejection> {
    use RejectReason::*;
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(InvalidJson, "empty message"));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(InvalidJson, format_args!("not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| Rejection::new(InvalidJson, "the event is not a JSON object"))?;
    let fields = Fields { obj, path: "" };

    let kind = match fields.opt_str("event_type")? {
        None | Some("purchase") => EventKind::Purchase,
        Some("refund") => EventKind::Refund,
        Some(other) => return Err(Rejection::new(UnknownEventType, format_args!("event_type {}", Quoted(other)))),
    };
    let transaction_id = fields.id("transaction_id")?;
    let original_transaction_id = match kind {
        EventKind::Refund => Some(fields.id("original_transaction_id")?),
        EventKind::Purchase => fields.opt_id("original_transaction_id")?,
    };
    let user_id = fields.id("user_id")?;
    let timestamp = parse_timestamp(fields.req_str("timestamp")?)?;
    if let Some(msg_ts) = message_ts {
        if timestamp > msg_ts + Duration::days(1) {
            return Err(Rejection::new(
                FutureTimestamp,
                format_args!("timestamp {timestamp} is more than 1 day after the message timestamp {msg_ts}"),
            ));
        }
    }
    let items = decode_items(&fields)?;
    let total_cents = fields.money("total_amount")?.ok_or_else(|| fields.missing("total_amount"))?;
    let payment_method = fields.opt_str("payment_method")?.map(str::to_owned);
    let location = match fields.opt_object("location")? {
        None => None,
        Some(loc) => {
            let loc = Fields { obj: loc, path: "location." };
            Some(Location {
                country: loc.req_str("country")?.to_owned(),
                region: loc.opt_str("region")?.map(str::to_owned),
                city: loc.opt_str("city")?.map(str::to_owned),
                timezone: loc.opt_str("timezone")?.map(str::to_owned),
            })
        }
    };

    Ok(Decoded {
        tx: Transaction {
            kind,
            transaction_id,
            original_transaction_id,
            user_id,
            timestamp,
            items,
            total_cents,
            payment_method,
            location,
        },
        fingerprint: fingerprint(&value),
    })
}

/// Parses a message value that must be one JSON object.
pub(crate) fn parse_object(payload: &[u8]) -> Result<Value, Rejection> {
    use RejectReason::InvalidJson;
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(InvalidJson, "empty message"));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(InvalidJson, format_args!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Rejection::new(InvalidJson, "the event is not a JSON object"));
    }
    Ok(value)
}

fn decode_items(fields: &Fields<'_>) -> Result<Vec<LineItem>, Rejection> {
    use RejectReason::*;
    let items = match fields.get("items") {
        None => return Err(fields.missing("items")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(fields.wrong_type("items", "an array")),
    };
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(Rejection::new(
            OutOfRange,
            format_args!("items has {} lines, expected 1 to {MAX_ITEMS}", items.len()),
        ));
    }
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("items[{i}].");
        let obj =
            item.as_object().ok_or_else(|| Rejection::new(WrongType, format_args!("items[{i}] must be an object")))?;
        let line = Fields { obj, path: &path };
        let product_id = line.id("product_id")?;
        let product_name = line.opt_str("product_name")?.map(str::to_owned);
        let category = line.opt_str("category")?.map(str::to_owned);
        let subcategory = line.opt_str("subcategory")?.map(str::to_owned);
        let brand = line.opt_str("brand")?.map(str::to_owned);
        let quantity = line.integer("quantity", 1)?;
        let unit_price_cents = line.money("unit_price")?.ok_or_else(|| line.missing("unit_price"))?;
        let discount_cents = line.money("discount")?.unwrap_or(0);
        let gross = quantity
            .checked_mul(unit_price_cents)
            .ok_or_else(|| Rejection::new(OutOfRange, format_args!("{path}quantity × unit_price is too large")))?;
        if discount_cents > gross {
            return Err(Rejection::new(OutOfRange, format_args!("{path}discount exceeds quantity × unit_price")));
        }
        lines.push(LineItem {
            product_id,
            product_name,
            category,
            subcategory,
            brand,
            quantity,
            unit_price_cents,
            discount_cents,
        });
    }
    Ok(lines)
}

/// Most characters of a message's own text that a rejection's detail quotes.
const MAX_QUOTED_CHARS: usize = 64;

/// A value from the message, quoted in a detail: at most [`MAX_QUOTED_CHARS`] characters, then
/// `…`, so the detail (a DLQ header and a log line) stays small whatever the message holds.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
        }
    }
}

/// Strict RFC 3339: `YYYY-MM-DDTHH:MM:SS[.fff…]` and `Z` or `±HH:MM`; any offset, kept in UTC.
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, Rejection> {
    let bad = || {
        Rejection::new(
            RejectReason::InvalidTimestamp,
            format_args!("timestamp {} is not RFC 3339 with an offset", Quoted(text)),
        )
    };
    if text.len() < 20 || text.as_bytes()[10] != b'T' {
        return Err(bad());
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| bad())
}

/// The members of one JSON object, read with the SPEC's reasons for what is wrong.
pub(crate) struct Fields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    /// Prefix naming where the object sits, e.g. `items[2].`.
    pub(crate) path: &'a str,
}

impl<'a> Fields<'a> {
    /// A member, with `null` counted as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Rejection {
        Rejection::new(RejectReason::MissingField, format_args!("{}{key} is required", self.path))
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Rejection {
        Rejection::new(RejectReason::WrongType, format_args!("{}{key} must be {expected}", self.path))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, Rejection> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, Rejection> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_id(&self, key: &str) -> Result<Option<String>, Rejection> {
        let Some(id) = self.opt_str(key)? else {
            return Ok(None);
        };
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_ID_CHARS {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format_args!("{}{key} has {chars} characters, expected 1 to {MAX_ID_CHARS}", self.path),
            ));
        }
        Ok(Some(id.to_owned()))
    }

    pub(crate) fn id(&self, key: &str) -> Result<String, Rejection> {
        self.opt_id(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, Rejection> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(self.wrong_type(key, "an object")),
        }
    }

    /// A required JSON integer (not `2.0`, not `"2"`) from `min` to [`MAX_QUANTITY`].
    pub(crate) fn integer(&self, key: &str, min: i64) -> Result<i64, Rejection> {
        let value = self.get(key).ok_or_else(|| self.missing(key))?;
        let n = match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
            _ => return Err(self.wrong_type(key, "a JSON integer")),
        };
        if !(min..=MAX_QUANTITY).contains(&n) {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format_args!("{}{key} is {n}, expected {min} to {MAX_QUANTITY}", self.path),
            ));
        }
        Ok(n)
    }

    /// A required boolean.
    pub(crate) fn flag(&self, key: &str) -> Result<bool, Rejection> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.wrong_type(key, "true or false")),
        }
    }

    /// An optional amount of money ≥ 0, rounded to cents.
    fn money(&self, key: &str) -> Result<Option<Cents>, Rejection> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let x = value.as_f64().filter(|_| value.is_number()).ok_or_else(|| self.wrong_type(key, "a number"))?;
        cents_from_number(x).map(Some).map_err(|e| {
            let why = match e {
                MoneyError::Negative => "must not be negative",
                MoneyError::TooLarge => "is too large",
            };
            Rejection::new(RejectReason::OutOfRange, format_args!("{}{key} {why}", self.path))
        })
    }
}

/// Hash of a parsed JSON value, independent of key order, whitespace, `null` members and
/// number spelling. Stable across runs and versions (it is stored in snapshots).
pub fn fingerprint(value: &Value) -> u64 {
    fn feed(h: &mut Xxh3, v: &Value) {
        match v {
            Value::Null => h.update(b"n"),
            Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let x = if x == 0.0 { 0.0 } else { x };
                h.update(b"#");
                h.update(&x.to_bits().to_le_bytes());
            }
            Value::String(s) => {
                h.update(b"s");
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Array(items) => {
                h.update(b"[");
                h.update(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| feed(h, item));
            }
            Value::Object(members) => {
                let mut keys: Vec<&String> = members.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k).collect();
                keys.sort_unstable();
                h.update(b"{");
                h.update(&(keys.len() as u64).to_le_bytes());
                for k in keys {
                    h.update(&(k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    feed(h, &members[k]);
                }
            }
        }
    }
    let mut h = Xxh3::new();
    feed(&mut h, value);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason::*;

    const GOOD: &str = r#"{"transaction_id":"t1","user_id":"u1","timestamp":"2026-11-24T13:45:12.123Z",
        "items":[{"product_id":"p1","quantity":2,"unit_price":10.005,"discount":1}],"total_amount":19.01}"#;

    fn reason(json: &str) -> RejectReason {
        decode(json.as_bytes(), None).unwrap_err().reason
    }

    fn with(key: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        if value == "<absent>" {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = serde_json::from_str(value).unwrap();
        }
        v.to_string()
    }

    fn with_item(key: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        if value == "<absent>" {
            v["items"][0].as_object_mut().unwrap().remove(key);
        } else {
            v["items"][0][key] = serde_json::from_str(value).unwrap();
        }
        v.to_string()
    }

    #[test]
    fn decodes_a_valid_purchase_with_defaults() {
        let d = decode(GOOD.as_bytes(), None).unwrap();
        assert_eq!(d.tx.kind, EventKind::Purchase);
        assert_eq!(d.tx.total_cents, 1901);
        let line = &d.tx.items[0];
        assert_eq!((line.quantity, line.unit_price_cents, line.discount_cents), (2, 1001, 100));
        assert_eq!(line.amount_cents(), 1902);
        assert_eq!(line.category, None);
        assert_eq!(d.tx.timestamp.to_rfc3339(), "2026-11-24T13:45:12.123+00:00");
    }

    #[test]
    fn offsets_are_taken_to_utc() {
        let d = decode(with("timestamp", r#""2026-11-24T23:30:00-05:00""#).as_bytes(), None).unwrap();
        assert_eq!(d.tx.date().to_string(), "2026-11-25");
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        assert_eq!(reason(""), InvalidJson);
        assert_eq!(reason("  \n"), InvalidJson);
        assert_eq!(reason("{not json"), InvalidJson);
        assert_eq!(reason("[1,2]"), InvalidJson);
        assert_eq!(reason("\"text\""), InvalidJson);
        assert_eq!(reason(&with("transaction_id", "<absent>")), MissingField);
        assert_eq!(reason(&with("transaction_id", "null")), MissingField);
        assert_eq!(reason(&with("transaction_id", "7")), WrongType);
        assert_eq!(reason(&with("transaction_id", r#""""#)), OutOfRange);
        assert_eq!(reason(&with("transaction_id", &format!("\"{}\"", "x".repeat(129)))), OutOfRange);
        assert_eq!(reason(&with("user_id", "<absent>")), MissingField);
        assert_eq!(reason(&with("event_type", r#""exchange""#)), UnknownEventType);
        assert_eq!(reason(&with("event_type", "1")), WrongType);
        assert_eq!(reason(&with("event_type", r#""refund""#)), MissingField); // no original id
        assert_eq!(reason(&with("timestamp", r#""2026-11-24 13:45:12Z""#)), InvalidTimestamp);
        assert_eq!(reason(&with("timestamp", r#""2026-11-24T13:45:12""#)), InvalidTimestamp);
        assert_eq!(reason(&with("timestamp", r#""2026-02-30T13:45:12Z""#)), InvalidTimestamp);
        assert_eq!(reason(&with("timestamp", "1732456000")), WrongType);
        assert_eq!(reason(&with("items", "[]")), OutOfRange);
        assert_eq!(reason(&with("items", "{}")), WrongType);
        assert_eq!(reason(&with("items", "<absent>")), MissingField);
        assert_eq!(reason(&with("total_amount", "<absent>")), MissingField);
        assert_eq!(reason(&with("total_amount", r#""19.01""#)), WrongType);
        assert_eq!(reason(&with("total_amount", "-1")), OutOfRange);
        assert_eq!(reason(&with("location", r#""NL""#)), WrongType);
        assert_eq!(reason(&with("location", r#"{"city":"Utrecht"}"#)), MissingField);
        assert_eq!(reason(&with_item("quantity", "2.0")), WrongType);
        assert_eq!(reason(&with_item("quantity", r#""2""#)), WrongType);
        assert_eq!(reason(&with_item("quantity", "0")), OutOfRange);
        assert_eq!(reason(&with_item("quantity", "<absent>")), MissingField);
        assert_eq!(reason(&with_item("unit_price", "-0.5")), OutOfRange);
        assert_eq!(reason(&with_item("discount", "100")), OutOfRange);
        assert_eq!(reason(&with_item("product_id", "<absent>")), MissingField);
        assert_eq!(reason(&with_item("category", "3")), WrongType);
    }

    #[test]
    fn details_quote_at_most_64_characters_of_the_message() {
        let long = "x".repeat(10_000);
        let r = decode(with("event_type", &format!("{long:?}")).as_bytes(), None).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownEventType);
        assert_eq!(r.detail, format!("event_type {:?}…", &long[..64]));
        let r = decode(with("timestamp", &format!("{:?}", "é".repeat(100))).as_bytes(), None).unwrap_err();
        assert_eq!(r.detail, format!("timestamp {:?}… is not RFC 3339 with an offset", "é".repeat(64)));
        assert_eq!(decode(with("event_type", "\"sale\"").as_bytes(), None).unwrap_err().detail, "event_type \"sale\"");
    }

    #[test]
    fn hostile_messages_are_rejected_not_panicked_on() {
        // 10 MB of one string, deep nesting, huge numbers, invalid UTF-8, 1,001 lines.
        let huge = format!("{{\"transaction_id\":\"{}\"}}", "a".repeat(10 << 20));
        assert_eq!(reason(&huge), RejectReason::OutOfRange);
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(reason(&deep), RejectReason::InvalidJson);
        assert_eq!(reason(&with_item("quantity", "18446744073709551616")), RejectReason::WrongType);
        assert_eq!(reason(&with_item("unit_price", "1e308")), RejectReason::OutOfRange);
        assert_eq!(decode(b"{\"transaction_id\":\"\xff\"}", None).unwrap_err().reason, RejectReason::InvalidJson);
        let line = r#"{"product_id":"p","quantity":1,"unit_price":1}"#;
        let many = with("items", &format!("[{}]", vec![line; MAX_ITEMS + 1].join(",")));
        assert_eq!(reason(&many), RejectReason::OutOfRange);
    }

    #[test]
    fn too_many_items_is_out_of_range() {
        let item = r#"{"product_id":"p","quantity":1,"unit_price":1}"#;
        let items = format!("[{}]", vec![item; MAX_ITEMS + 1].join(","));
        assert_eq!(reason(&with("items", &items)), OutOfRange);
    }

    #[test]
    fn future_timestamp_is_strictly_more_than_one_day_after_the_message() {
        let ts: DateTime<Utc> = "2026-11-23T13:45:12.123Z".parse().unwrap();
        assert!(decode(GOOD.as_bytes(), Some(ts)).is_ok(), "exactly one day is accepted");
        let earlier = ts - Duration::milliseconds(1);
        assert_eq!(decode(GOOD.as_bytes(), Some(earlier)).unwrap_err().reason, FutureTimestamp);
    }

    #[test]
    fn nulls_count_as_absent_and_unknown_fields_are_ignored() {
        let d = decode(with("payment_method", "null").as_bytes(), None).unwrap();
        assert_eq!(d.tx.payment_method, None);
        assert!(decode(with("coupon", r#""X""#).as_bytes(), None).is_ok());
    }

    #[test]
    fn fingerprint_ignores_key_order_whitespace_nulls_and_number_spelling() {
        let a = decode(br#"{"a":1,"b":[1,2.50],"user_id":"u","transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","items":[{"product_id":"p","quantity":1,"unit_price":1}],"total_amount":1}"#, None).unwrap();
        let b = decode(br#"{ "total_amount":1.0, "items":[{"unit_price":1,"quantity":1,"product_id":"p"}],"timestamp":"2026-01-01T00:00:00Z",
            "transaction_id":"t","user_id":"u","b":[1.0,2.5],"a":1, "z": null}"#, None).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = decode(br#"{"a":2,"b":[1,2.50],"user_id":"u","transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","items":[{"product_id":"p","quantity":1,"unit_price":1}],"total_amount":1}"#, None).unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
    }
}
