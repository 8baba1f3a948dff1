//! Decoding and validating one message of the `transactions` topic (SPEC §1 "Bad input").
//!
//! A message either decodes into a [`Transaction`] plus the fingerprint of its parsed JSON
//! (used to tell an identical resend from a conflicting one), or is rejected with one of the
//! SPEC's dead-letter reasons. Checks run in field order, so one message has one reason.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use super::event::{EventKind, LineItem, Location, Transaction};
use super::money::{cents_from_number, Cents, MoneyError};
use scan::{Num, Val};

mod scan;

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

    /// A valid event whose id was already applied with different content.
    pub fn conflicting(id: &str) -> Self {
        Rejection::new(
            RejectReason::ConflictingDuplicate,
            format_args!("{id:?} was already applied with different content"),
        )
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
///
/// One pass over the JSON ([`scan`]): the members the checks read are kept, borrowed from
/// the message, and the fingerprint is computed as the parser goes; then the checks run
/// in the SPEC's field order, whatever the message's.
pub fn decode(payload: &[u8], message_ts: Option<DateTime<Utc>>) -> Result<Decoded, Rejection> {
    let (event, fingerprint) = scan::read::<scan::Obj<scan::RawEvent>>(non_empty(payload)?).map_err(not_json)?;
    checked(event, fingerprint, message_ts)
}

/// The SPEC's checks of an event's members, in its field order.
fn checked(
    event: scan::Obj<scan::RawEvent<'_>>,
    fingerprint: u64,
    message_ts: Option<DateTime<Utc>>,
) -> Result<Decoded, Rejection> {
    use RejectReason::*;
    let scan::Obj::Is(mut event) = event else { return Err(not_an_object()) };
    let top = At("");

    let kind = match top.opt_str("event_type", &event.event_type)? {
        None | Some("purchase") => EventKind::Purchase,
        Some("refund") => EventKind::Refund,
        Some(other) => return Err(Rejection::new(UnknownEventType, format_args!("event_type {}", Quoted(other)))),
    };
    let transaction_id = top.id("transaction_id", &event.transaction_id)?;
    let original_transaction_id = match kind {
        EventKind::Refund => Some(top.id("original_transaction_id", &event.original_transaction_id)?),
        EventKind::Purchase => top.opt_id("original_transaction_id", &event.original_transaction_id)?,
    };
    let user_id = top.id("user_id", &event.user_id)?;
    let timestamp = parse_timestamp(top.req_str("timestamp", &event.timestamp)?)?;
    if let Some(msg_ts) = message_ts {
        if timestamp > msg_ts + Duration::days(1) {
            return Err(Rejection::new(
                FutureTimestamp,
                format_args!("timestamp {timestamp} is more than 1 day after the message timestamp {msg_ts}"),
            ));
        }
    }
    let items = decode_items(std::mem::take(&mut event.items))?;
    let total_cents = top.money("total_amount", &event.total_amount)?.ok_or_else(|| top.missing("total_amount"))?;
    let payment_method = top.opt_str("payment_method", &event.payment_method)?.map(str::to_owned);
    let location = match &event.location {
        scan::Obj::Null => None,
        scan::Obj::Not => return Err(top.wrong_type("location", "an object")),
        scan::Obj::Is(loc) => {
            let at = At("location.");
            Some(Location {
                country: at.req_str("country", &loc.country)?.to_owned(),
                region: at.opt_str("region", &loc.region)?.map(str::to_owned),
                city: at.opt_str("city", &loc.city)?.map(str::to_owned),
                timezone: at.opt_str("timezone", &loc.timezone)?.map(str::to_owned),
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
        fingerprint,
    })
}

fn non_empty(payload: &[u8]) -> Result<&[u8], Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(RejectReason::InvalidJson, "empty message"));
    }
    Ok(payload)
}

fn not_json(e: serde_json::Error) -> Rejection {
    Rejection::new(RejectReason::InvalidJson, format_args!("not valid JSON: {e}"))
}

fn not_an_object() -> Rejection {
    Rejection::new(RejectReason::InvalidJson, "the event is not a JSON object")
}

/// Parses a message value that must be one JSON object.
pub(crate) fn parse_object(payload: &[u8]) -> Result<Value, Rejection> {
    let value: Value = serde_json::from_slice(non_empty(payload)?).map_err(not_json)?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    Ok(value)
}

/// An event's lines, checked one by one as they are read: the valid ones, the first
/// rejection, and how many there were.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    lines: Vec<LineItem>,
    first_error: Option<Rejection>,
    pub(crate) count: usize,
}

impl Lines {
    /// Whether the next line is still to be checked: no line was bad and there are not
    /// too many yet.
    pub(crate) fn checking(&self) -> bool {
        self.first_error.is_none() && self.count < MAX_ITEMS
    }

    /// Checks line number `self.count`.
    pub(crate) fn check(&mut self, line: &scan::Obj<scan::RawLine<'_>>) {
        let i = self.count;
        let checked = match line {
            scan::Obj::Is(raw) => decode_line(raw).map_err(|mut r| {
                // The checks name the member; the line's place goes in front.
                r.detail = format!("items[{i}].{}", r.detail);
                r
            }),
            _ => Err(Rejection::new(RejectReason::WrongType, format_args!("items[{i}] must be an object"))),
        };
        match checked {
            Ok(line) => self.lines.push(line),
            Err(r) => self.first_error = Some(r),
        }
    }
}

fn decode_items(items: scan::Items) -> Result<Vec<LineItem>, Rejection> {
    let top = At("");
    let Lines { lines, first_error, count } = match items {
        scan::Items::Null => return Err(top.missing("items")),
        scan::Items::Not => return Err(top.wrong_type("items", "an array")),
        scan::Items::Lines(lines) => lines,
    };
    if count == 0 || count > MAX_ITEMS {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format_args!("items has {count} lines, expected 1 to {MAX_ITEMS}"),
        ));
    }
    match first_error {
        Some(r) => Err(r),
        None => Ok(lines),
    }
}

fn decode_line(raw: &scan::RawLine<'_>) -> Result<LineItem, Rejection> {
    use RejectReason::*;
    let line = At("");
    let product_id = line.id("product_id", &raw.product_id)?;
    let product_name = line.opt_str("product_name", &raw.product_name)?.map(str::to_owned);
    let category = line.opt_str("category", &raw.category)?.map(str::to_owned);
    let subcategory = line.opt_str("subcategory", &raw.subcategory)?.map(str::to_owned);
    let brand = line.opt_str("brand", &raw.brand)?.map(str::to_owned);
    let quantity = line.integer("quantity", &raw.quantity, 1)?;
    let unit_price_cents = line.money("unit_price", &raw.unit_price)?.ok_or_else(|| line.missing("unit_price"))?;
    let discount_cents = line.money("discount", &raw.discount)?.unwrap_or(0);
    let gross = quantity
        .checked_mul(unit_price_cents)
        .ok_or_else(|| Rejection::new(OutOfRange, "quantity × unit_price is too large"))?;
    if discount_cents > gross {
        return Err(Rejection::new(OutOfRange, "discount exceeds quantity × unit_price"));
    }
    Ok(LineItem { product_id, product_name, category, subcategory, brand, quantity, unit_price_cents, discount_cents })
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

/// The SPEC's checks of one member's value, with the reasons for what is wrong; `.0` is the
/// prefix naming where the object sits, e.g. `location.`.
pub(crate) struct At<'p>(pub(crate) &'p str);

impl At<'_> {
    fn missing(&self, key: &str) -> Rejection {
        Rejection::new(RejectReason::MissingField, format_args!("{}{key} is required", self.0))
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Rejection {
        Rejection::new(RejectReason::WrongType, format_args!("{}{key} must be {expected}", self.0))
    }

    fn opt_str<'v>(&self, key: &str, v: &'v Val<'_>) -> Result<Option<&'v str>, Rejection> {
        match v {
            Val::Null => Ok(None),
            Val::Str(s) => Ok(Some(s)),
            _ => Err(self.wrong_type(key, "a string")),
        }
    }

    pub(crate) fn req_str<'v>(&self, key: &str, v: &'v Val<'_>) -> Result<&'v str, Rejection> {
        self.opt_str(key, v)?.ok_or_else(|| self.missing(key))
    }

    fn opt_id(&self, key: &str, v: &Val<'_>) -> Result<Option<String>, Rejection> {
        let Some(id) = self.opt_str(key, v)? else {
            return Ok(None);
        };
        // A string has at most as many characters as bytes, and at least one if it has any:
        // the characters are counted only when the bytes leave it open.
        if !(1..=MAX_ID_CHARS).contains(&id.len()) {
            let chars = id.chars().count();
            if chars == 0 || chars > MAX_ID_CHARS {
                return Err(Rejection::new(
                    RejectReason::OutOfRange,
                    format_args!("{}{key} has {chars} characters, expected 1 to {MAX_ID_CHARS}", self.0),
                ));
            }
        }
        Ok(Some(id.to_owned()))
    }

    pub(crate) fn id(&self, key: &str, v: &Val<'_>) -> Result<String, Rejection> {
        self.opt_id(key, v)?.ok_or_else(|| self.missing(key))
    }

    /// A required JSON integer (not `2.0`, not `"2"`) from `min` to [`MAX_QUANTITY`].
    pub(crate) fn integer(&self, key: &str, v: &Val<'_>, min: i64) -> Result<i64, Rejection> {
        let n = match v {
            Val::Null => return Err(self.missing(key)),
            Val::Num(n) => n.as_integer().ok_or_else(|| self.wrong_type(key, "a JSON integer"))?,
            _ => return Err(self.wrong_type(key, "a JSON integer")),
        };
        if !(min..=MAX_QUANTITY).contains(&n) {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format_args!("{}{key} is {n}, expected {min} to {MAX_QUANTITY}", self.0),
            ));
        }
        Ok(n)
    }

    /// A required boolean.
    pub(crate) fn flag(&self, key: &str, v: &Val<'_>) -> Result<bool, Rejection> {
        match v {
            Val::Null => Err(self.missing(key)),
            Val::Bool(b) => Ok(*b),
            _ => Err(self.wrong_type(key, "true or false")),
        }
    }

    /// An optional amount of money ≥ 0, rounded to cents.
    fn money(&self, key: &str, v: &Val<'_>) -> Result<Option<Cents>, Rejection> {
        let x = match v {
            Val::Null => return Ok(None),
            Val::Num(n) => n.as_f64(),
            _ => return Err(self.wrong_type(key, "a number")),
        };
        cents_from_number(x).map(Some).map_err(|e| {
            let why = match e {
                MoneyError::Negative => "must not be negative",
                MoneyError::TooLarge => "is too large",
            };
            Rejection::new(RejectReason::OutOfRange, format_args!("{}{key} {why}", self.0))
        })
    }
}

/// The members of one parsed JSON object (the sessions topic's decoder reads these), checked
/// as [`At`] checks them.
pub(crate) struct Fields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    /// Prefix naming where the object sits, e.g. `items[2].`.
    pub(crate) path: &'a str,
}

impl<'a> Fields<'a> {
    /// A member's value as the checks read it, with `null` counted as absent.
    pub(crate) fn get(&self, key: &str) -> Val<'a> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Val::Null,
            Some(Value::Bool(b)) => Val::Bool(*b),
            Some(Value::Number(n)) => Val::Num(match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Num::U(u),
                (None, Some(i)) => Num::I(i),
                (None, None) => Num::F(n.as_f64().unwrap_or(f64::NAN)),
            }),
            Some(Value::String(s)) => Val::Str(Cow::Borrowed(s)),
            Some(Value::Array(_)) => Val::Array,
            Some(Value::Object(_)) => Val::Object,
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, Rejection> {
        match self.obj.get(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(At(self.path).req_str(key, &self.get(key)).expect_err("not a string")),
        }
    }

    pub(crate) fn id(&self, key: &str) -> Result<String, Rejection> {
        At(self.path).id(key, &self.get(key))
    }

    pub(crate) fn integer(&self, key: &str, min: i64) -> Result<i64, Rejection> {
        At(self.path).integer(key, &self.get(key), min)
    }

    pub(crate) fn flag(&self, key: &str) -> Result<bool, Rejection> {
        At(self.path).flag(key, &self.get(key))
    }
}

/// The fingerprint of a parsed JSON value: the same as [`decode`] computes in its one pass
/// (the definition is in [`scan`]). Stable across runs; a snapshot stores it, so a change
/// of its definition changes the snapshot format.
pub fn fingerprint(value: &Value) -> u64 {
    match value {
        Value::Null => scan::hash_null(),
        Value::Bool(b) => scan::hash_bool(*b),
        Value::Number(n) => scan::hash_num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => scan::hash_str(s),
        Value::Array(items) => scan::hash_array(&items.iter().map(fingerprint).collect::<Vec<_>>()),
        Value::Object(members) => {
            let mut members: scan::Members =
                members.iter().map(|(k, v)| (scan::hash_key(k), fingerprint(v), v.is_null())).collect();
            scan::hash_object(&mut members)
        }
    }
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

    #[test]
    fn fingerprint_takes_the_last_of_a_repeated_key() {
        let fp = |json: &str| fingerprint(&serde_json::from_str::<Value>(json).unwrap());
        let scan_fp = |json: &str| scan::read::<Val>(json.as_bytes()).map(|(_, h)| h).unwrap();
        assert_eq!(scan_fp(r#"{"a":1,"b":{"c":[1,null]},"a":2}"#), fp(r#"{"b":{"c":[1,null]},"a":2}"#));
        assert_eq!(scan_fp(r#"{"a":1,"a":null}"#), fp("{}"));
        assert_ne!(scan_fp(r#"{"a":[null]}"#), fp(r#"{"a":[]}"#), "a null element is an element");
        assert_ne!(scan_fp(r#"{"a":"1"}"#), fp(r#"{"a":1}"#));
    }
}

/// The one-pass reader against the DOM it replaced: for any message, the same event and
/// fingerprint, or the same reason and detail.
#[cfg(test)]
mod against_the_dom {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::scan::{Items, Obj, RawEvent, RawLine, RawLocation};
    use super::*;

    /// The DOM path: serde_json's `Value`, its members read as the checks read them, and
    /// [`fingerprint`] over it.
    fn decode_with_dom(payload: &[u8], message_ts: Option<DateTime<Utc>>) -> Result<Decoded, Rejection> {
        let value: Value = serde_json::from_slice(non_empty(payload)?).map_err(not_json)?;
        checked(obj(&value, raw_event), fingerprint(&value), message_ts)
    }

    fn obj<'a, T>(v: &'a Value, read: impl Fn(&Fields<'a>) -> T) -> Obj<T> {
        match v {
            Value::Null => Obj::Null,
            Value::Object(obj) => Obj::Is(read(&Fields { obj, path: "" })),
            _ => Obj::Not,
        }
    }

    fn raw_event<'a>(f: &Fields<'a>) -> RawEvent<'a> {
        RawEvent {
            event_type: f.get("event_type"),
            transaction_id: f.get("transaction_id"),
            original_transaction_id: f.get("original_transaction_id"),
            user_id: f.get("user_id"),
            timestamp: f.get("timestamp"),
            total_amount: f.get("total_amount"),
            payment_method: f.get("payment_method"),
            items: match f.obj.get("items") {
                None | Some(Value::Null) => Items::Null,
                Some(Value::Array(lines)) => {
                    let mut read = Lines::default();
                    for line in lines {
                        if read.checking() {
                            read.check(&obj(line, raw_line));
                        }
                        read.count += 1;
                    }
                    Items::Lines(read)
                }
                Some(_) => Items::Not,
            },
            location: f.obj.get("location").map_or(Obj::Null, |l| obj(l, raw_location)),
        }
    }

    fn raw_line<'a>(f: &Fields<'a>) -> RawLine<'a> {
        RawLine {
            product_id: f.get("product_id"),
            product_name: f.get("product_name"),
            category: f.get("category"),
            subcategory: f.get("subcategory"),
            brand: f.get("brand"),
            quantity: f.get("quantity"),
            unit_price: f.get("unit_price"),
            discount: f.get("discount"),
        }
    }

    fn raw_location<'a>(f: &Fields<'a>) -> RawLocation<'a> {
        RawLocation {
            country: f.get("country"),
            region: f.get("region"),
            city: f.get("city"),
            timezone: f.get("timezone"),
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..4).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::sample::select(vec![2.0, -0.0, 0.5, 19.995, 10.005, 1e13, 1e308, -1.5]).prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "purchase",
                "refund",
                "exchange",
                "t1",
                "",
                "a\"b\\c",
                "é",
                "2026-11-24T13:45:12Z",
                "2026-11-24 13:45:12Z",
                "2026-11-24T13:45:12.5+02:00",
            ])
            .prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::from),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]|items|quantity", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A member: mostly a value of the right kind, sometimes absent or anything at all.
    fn member(good: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![8 => good.prop_map(Some), 1 => Just(None), 2 => any_value().prop_map(Some)]
    }

    fn object(members: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> impl Strategy<Value = Value> {
        let (keys, values): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        (values, prop::option::of(("[x-z]{1,2}", any_value()))).prop_map(move |(values, extra)| {
            let mut obj: serde_json::Map<String, Value> =
                keys.iter().zip(values).filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect();
            obj.extend(extra);
            Value::Object(obj)
        })
    }

    fn text(options: &[&'static str]) -> BoxedStrategy<Option<Value>> {
        member(prop::sample::select(options.to_vec()).prop_map(Value::from)).boxed()
    }

    fn number(options: Vec<f64>) -> BoxedStrategy<Option<Value>> {
        member(prop::sample::select(options).prop_map(|f| json!(f))).boxed()
    }

    fn line() -> impl Strategy<Value = Value> {
        object(vec![
            ("product_id", text(&["p1", "p2", ""])),
            ("product_name", text(&["Lamp"])),
            ("category", text(&["Home", "Toys"])),
            ("subcategory", text(&["Light"])),
            ("brand", text(&["Acme"])),
            ("quantity", member(prop::sample::select(vec![1i64, 2, 3, 0]).prop_map(Value::from)).boxed()),
            ("unit_price", number(vec![10.005, 3.0, 0.5])),
            ("discount", number(vec![0.0, 1.0, 100.0])),
        ])
    }

    fn event() -> impl Strategy<Value = Value> {
        let location = object(vec![
            ("country", text(&["NL", "US"])),
            ("region", text(&["Utrecht"])),
            ("city", text(&["Utrecht"])),
            ("timezone", text(&["Europe/Amsterdam"])),
        ]);
        object(vec![
            ("event_type", text(&["purchase", "refund", "Purchase"])),
            ("transaction_id", text(&["t1", "t2"])),
            ("original_transaction_id", text(&["t0"])),
            ("user_id", text(&["u1", "u2"])),
            ("timestamp", text(&["2026-11-24T13:45:12.123Z", "2026-11-30T00:00:00+01:00", "2026-02-30T13:45:12Z"])),
            ("items", member(prop::collection::vec(line(), 1..4).prop_map(Value::Array)).boxed()),
            ("total_amount", number(vec![19.01, 0.0, 5.0])),
            ("payment_method", text(&["card"])),
            ("location", member(location).boxed()),
        ])
    }

    /// The JSON text of `v` with members shuffled, repeated keys (an earlier value that the
    /// last one overrides, or a later one that overrides it), escapes and whitespace, by `seed`.
    fn write(v: &Value, seed: &mut u64, out: &mut String) {
        let mut next = |n: u64| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        };
        if next(4) == 0 {
            out.push_str(" \n");
        }
        match v {
            Value::Object(members) => {
                let mut order: Vec<(&String, &Value)> = members.iter().collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, next(i as u64 + 1) as usize);
                }
                let mut parts = Vec::new();
                for (key, value) in order {
                    let mut part = String::new();
                    write_str(key, next(5) == 0, &mut part);
                    part.push(':');
                    let mut inner = next(u64::MAX);
                    write(value, &mut inner, &mut part);
                    match next(10) {
                        0 => parts.push(format!("{}:17", serde_json::to_string(key).unwrap())),
                        1 => {
                            parts.push(part);
                            part = format!("{}:null", serde_json::to_string(key).unwrap());
                        }
                        _ => {}
                    }
                    parts.push(part);
                }
                out.push('{');
                out.push_str(&parts.join(","));
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let mut inner = next(u64::MAX);
                    write(item, &mut inner, out);
                }
                out.push(']');
            }
            Value::String(s) => write_str(s, next(3) == 0, out),
            other => out.push_str(&other.to_string()),
        }
    }

    /// A JSON string, with its first `a`..`z` written as a `\u` escape when `escape`.
    fn write_str(s: &str, escape: bool, out: &mut String) {
        let quoted = serde_json::to_string(s).unwrap();
        match quoted.find(|c: char| c.is_ascii_lowercase()).filter(|_| escape) {
            Some(at) => {
                let c = quoted.as_bytes()[at];
                out.push_str(&quoted[..at]);
                out.push_str(&format!("\\u{c:04x}"));
                out.push_str(&quoted[at + 1..]);
            }
            None => out.push_str(&quoted),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn one_pass_decodes_as_the_dom_does(value in prop_oneof![10 => event(), 1 => any_value()], seed: u64, late: bool) {
            let mut text = String::new();
            write(&value, &mut seed.clone(), &mut text);
            let ts: Option<DateTime<Utc>> = late.then(|| "2026-11-23T00:00:00Z".parse().unwrap());
            prop_assert_eq!(decode(text.as_bytes(), ts), decode_with_dom(text.as_bytes(), ts), "{}", text);
        }

        #[test]
        fn broken_text_is_rejected_as_the_dom_rejects_it(value in event(), seed: u64, cut in 0usize..400) {
            let mut text = String::new();
            write(&value, &mut seed.clone(), &mut text);
            let text = &text.as_bytes()[..cut.min(text.len())];
            prop_assert_eq!(decode(text, None), decode_with_dom(text, None));
        }
    }
}
