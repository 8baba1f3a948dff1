//! The transaction event after decoding (SPEC §1): validated, money in cents, time in UTC.

use chrono::{DateTime, NaiveDate, Utc};

use super::money::Cents;

/// `event_type`: a purchase adds money and units, a refund subtracts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventKind {
    Purchase,
    Refund,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Purchase => "purchase",
            EventKind::Refund => "refund",
        }
    }
}

/// `category` when no line of a product ever carried one.
pub const UNCATEGORIZED: &str = "Uncategorized";

/// One valid event of the `transactions` topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub kind: EventKind,
    pub transaction_id: String,
    /// For a refund: the purchase it refunds.
    pub original_transaction_id: Option<String>,
    pub user_id: String,
    pub timestamp: DateTime<Utc>,
    pub items: Vec<LineItem>,
    /// What the customer paid or got back; authoritative for customer and trend money.
    pub total_cents: Cents,
    pub payment_method: Option<String>,
    pub location: Option<Location>,
}

impl Transaction {
    /// The UTC calendar date of the event.
    pub fn date(&self) -> NaiveDate {
        self.timestamp.date_naive()
    }

    /// `+1` for a purchase, `-1` for a refund: the sign of its money and units.
    pub fn sign(&self) -> i64 {
        match self.kind {
            EventKind::Purchase => 1,
            EventKind::Refund => -1,
        }
    }
}

/// One basket line.
#[derive(Debug, Clone, PartialEq)]
pub struct LineItem {
    pub product_id: String,
    pub product_name: Option<String>,
    pub category: Option<String>,
    pub subcategory: Option<String>,
    pub brand: Option<String>,
    pub quantity: i64,
    pub unit_price_cents: Cents,
    pub discount_cents: Cents,
}

impl LineItem {
    /// `quantity × unit_price − discount`, in cents (never negative for a decoded line).
    pub fn amount_cents(&self) -> Cents {
        self.quantity * self.unit_price_cents - self.discount_cents
    }
}

/// Where the purchase happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub country: String,
    pub region: Option<String>,
    pub city: Option<String>,
    pub timezone: Option<String>,
}
