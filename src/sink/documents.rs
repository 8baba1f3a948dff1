//! View documents as BSON: the batch design's collection names and field names, instants as
//! BSON dates, money as doubles of `cents / 100`, scores and counts as integers.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, DateTime as BsonDateTime, Document};

use crate::domain::money::to_units;
use crate::domain::product::ProductDoc;
use crate::domain::rfm::RfmDoc;
use crate::domain::trends::TrendDoc;

/// `customer_rfm_analysis`: one document per customer with ≥ 1 purchase.
pub const CUSTOMER_RFM: &str = "customer_rfm_analysis";
/// `product_performance`: one document per product with a line in the window.
pub const PRODUCT_PERFORMANCE: &str = "product_performance";
/// `sales_trends`: one document per (trend_type, period) with an event, within retention.
pub const SALES_TRENDS: &str = "sales_trends";

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
    IndexSpec { collection: PRODUCT_PERFORMANCE, name: "idx_product", keys: &[("product_id", 1)], unique: false },
    IndexSpec { collection: PRODUCT_PERFORMANCE, name: "idx_category", keys: &[("category", 1)], unique: false },
    IndexSpec { collection: PRODUCT_PERFORMANCE, name: "idx_revenue", keys: &[("total_revenue", -1)], unique: false },
    IndexSpec { collection: SALES_TRENDS, name: "idx_date", keys: &[("date", 1)], unique: false },
    IndexSpec {
        collection: SALES_TRENDS,
        name: "idx_trend_date",
        keys: &[("trend_type", 1), ("date", 1)],
        unique: false,
    },
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

pub fn opt_string(x: Option<&str>) -> Bson {
    x.map_or(Bson::Null, |s| Bson::String(s.to_owned()))
}

pub fn product(d: &ProductDoc, written_at: DateTime<Utc>) -> (Bson, Document) {
    let id = Bson::String(d.product_id.clone());
    let body = doc! {
        "_id": id.clone(),
        "product_id": &d.product_id,
        "product_name": opt_string(d.product_name.as_deref()),
        "category": &d.category,
        "units_sold": int(d.units_sold),
        "order_count": int(d.order_count),
        "total_revenue": to_units(d.total_revenue_cents),
        "avg_price": opt_double(d.avg_price()),
        "days_sold": int(d.days_sold),
        "revenue_per_day": opt_double(d.revenue_per_day()),
        "rank_in_category": int(d.rank_in_category),
        "performance_score": d.performance_score(),
        "is_rising_star": d.is_rising_star,
        "trend_type": opt_string(d.trend_type()),
        "analysis_period_days": int(d.analysis_period_days),
        "analysis_date": date(d.analysis_date),
        "updated_at": date(written_at),
    };
    (id, body)
}

pub fn trend(d: &TrendDoc, written_at: DateTime<Utc>) -> (Bson, Document) {
    let id = Bson::String(d.id());
    let b = &d.bucket;
    let mut body = doc! {
        "_id": id.clone(),
        "trend_type": d.granularity.as_str(),
        "date": d.date.format("%Y-%m-%d").to_string(),
        "transaction_count": int(b.purchases),
        "total_revenue": to_units(b.revenue()),
        "avg_transaction_value": opt_double(d.avg_transaction_value()),
        "refund_count": int(b.refunds),
        "refund_amount": to_units(b.refund_cents),
    };
    match (d.granularity, d.year_and_number()) {
        (crate::domain::trends::Granularity::Weekly, Some((year, week))) => {
            body.insert("year", year);
            body.insert("week", week as i32);
        }
        (crate::domain::trends::Granularity::Monthly, Some((year, month))) => {
            body.insert("year", year);
            body.insert("month", month as i32);
        }
        _ => {}
    }
    if let Some(x) = &d.daily {
        body.insert("revenue_7day_ma", x.revenue_7day_ma());
        body.insert("transactions_7day_ma", x.transactions_7day_ma());
        body.insert("prev_day_revenue", opt_double(x.prev_day_revenue_cents.map(to_units)));
        body.insert("revenue_growth_pct", opt_double(d.revenue_growth_pct()));
    }
    body.insert("analysis_date", date(d.analysis_date));
    body.insert("updated_at", date(written_at));
    (id, body)
}
