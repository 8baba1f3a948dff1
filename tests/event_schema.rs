//! The shipped JSON Schema of the transaction event agrees with the decoder: generated valid
//! events pass both, and every malformed kind a schema can express fails both.

use loadtest::{GenConfig, Generator, Label};
use serde_json::Value;

fn schema() -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topics/transactions.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str::<Value>(&text).unwrap()).unwrap()
}

#[test]
fn sample_events_validate_against_the_schema_and_the_decoder() {
    let schema = schema();
    let cfg = GenConfig { events: 3000, malformed_rate: 0.05, ..GenConfig::default() };
    let (mut valid, mut rejected) = (0, 0);
    for m in Generator::new(cfg) {
        let decoded = martstream::domain::decode(m.payload.as_bytes(), None);
        let parsed: Option<Value> = serde_json::from_str(&m.payload).ok();
        match m.label {
            Label::Valid | Label::Duplicate | Label::Conflicting => {
                assert!(schema.is_valid(parsed.as_ref().unwrap()), "schema rejects a valid event: {}", m.payload);
                assert!(decoded.is_ok(), "decoder rejects a valid event: {}", m.payload);
                valid += 1;
            }
            // Beyond a schema: JSON syntax and time relative to the message timestamp.
            Label::Malformed("invalid_json") | Label::Malformed("future_timestamp") => {}
            Label::Malformed(reason) => {
                assert!(!schema.is_valid(parsed.as_ref().unwrap()), "schema accepts a {reason} event: {}", m.payload);
                assert_eq!(decoded.unwrap_err().reason.as_str(), reason);
                rejected += 1;
            }
        }
    }
    assert!(valid > 2500 && rejected > 50, "valid {valid}, rejected {rejected}");
}

#[test]
fn the_schema_rejects_what_the_spec_forbids() {
    let schema = schema();
    let ok = r#"{"event_type":"purchase","transaction_id":"t","user_id":"u","timestamp":"2026-11-24T13:45:12.123+02:00","items":[{"product_id":"p","quantity":2,"unit_price":1.5,"discount":null}],"total_amount":3,"location":null}"#;
    let good: Value = serde_json::from_str(ok).unwrap();
    assert!(schema.is_valid(&good));
    for (pointer, bad) in [
        ("/timestamp", r#""2026-11-24 13:45:12Z""#),
        ("/timestamp", r#""2026-11-24T13:45:12""#),
        ("/items/0/quantity", "2.5"),
        ("/items/0/quantity", r#""2""#),
        ("/items", "[]"),
        ("/event_type", r#""exchange""#),
        ("/event_type", r#""refund""#),
        ("/user_id", r#""""#),
        ("/total_amount", "-1"),
    ] {
        let mut v = good.clone();
        *v.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = serde_json::from_str(bad).unwrap();
        assert!(!schema.is_valid(&v), "{pointer} = {bad} should be invalid");
    }
}

#[test]
fn session_summaries_validate_against_their_schema_and_the_decoder() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topics/customer_sessions.schema.json")).unwrap();
    let schema = jsonschema::validator_for(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
    let messages = loadtest::sessions(&GenConfig::default(), 2000);
    let mut rejected = 0;
    for m in &messages {
        let v: Value = serde_json::from_str(&m.payload).unwrap();
        let decoded = martstream::domain::session::decode_session(m.payload.as_bytes(), None);
        match m.label {
            Label::Malformed(reason) => {
                assert!(!schema.is_valid(&v), "{}", m.payload);
                assert_eq!(decoded.unwrap_err().reason.as_str(), reason);
                rejected += 1;
            }
            _ => {
                assert!(schema.is_valid(&v), "{}", m.payload);
                assert!(decoded.is_ok(), "{}", m.payload);
            }
        }
    }
    assert!(rejected > 10);
}
