//! View documents as BSON: the batch design's collection names and field names, instants as
//! BSON dates, money as doubles of `cents / 100`, scores and counts as integers.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, DateTime as BsonDateTime, Document};

use crate::domain::money::to_units;
use crate::domain::rfm::RfmDoc;

/// `customer_rfm_analysis`: one document per customer with ≥ 1 purchase.
pub const CUSTOMER_RFM: &str = "customer_rfm_analysis";

/// An index of the batch design: collection, name, keys (field, direction), unique.
pub struct IndexSpec {
    pub collection: &'static str,
    pub name: &'static str,
    pub keys: &'static [(&'static str, i32)],
    pub unique: bool,
}

/// The batch design's indexes on the collections martstream writes.
pub const INDEXES: &[IndexSpec] = &[
    IndexSpec { collection: CUSTOMER_RFM, name: "idx_customer", keys: &[("customer_id", 1)], unique: false },
    IndexSpec { collection: CUSTOMER_RFM, name: "idx_segment", keys: &[("rfm_segment", 1)], unique: false },
];

pub fn date(t: DateTime<Utc>) -> Bson {
    Bson::DateTime(BsonDateTime::from_millis(t.timestamp_millis()))
}

/// An integer field: Int32 when it fits (what dashboards see as a plain number).
pub fn int(x: i64) -> Bson {
    i32::try_from(x).map_or(Bson::Int64(x), Bson::Int32)
}

pub fn opt_double(x: Option<f64>) -> Bson {
    x.map_or(Bson::Null, Bson::Double)
}

/// The natural id of a document and its full content.
pub fn rfm(d: &RfmDoc, written_at: DateTime<Utc>) -> (Bson, Document) {
    let id = Bson::String(d.customer_id.clone());
    let body = doc! {
        "_id": id.clone(),
        "customer_id": &d.customer_id,
        "first_purchase_at": date(d.first_purchase_at),
        "last_purchase_at": date(d.last_purchase_at),
        "recency": int(d.recency),
        "frequency": int(d.frequency),
        "monetary": to_units(d.monetary_cents),
        "avg_order_value": opt_double(d.avg_order_value()),
        "r_score": i32::from(d.r_score),
        "f_score": i32::from(d.f_score),
        "m_score": i32::from(d.m_score),
        "rfm_score": d.rfm_score(),
        "rfm_segment": &d.rfm_segment,
        "analysis_date": date(d.analysis_date),
        "updated_at": date(written_at),
    };
    (id, body)
}
