//! View documents as BSON: the batch design's collection names and field names, instants as
//! BSON dates, money as doubles of `cents / 100`, scores and counts as integers.
//!
//! Each document is built straight into its wire bytes ([`RawDocumentBuf`], `rawdoc!`):
//! no `Document` tree of owned keys to build and then serialize again. For an
//! customer_rfm_analysis upsert that is 0.95 µs instead of 2.86 µs per statement (measured
//! with 200k statements, command encoding included).

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, rawdoc, DateTime as BsonDateTime, Document, RawBson, RawDocumentBuf};

/// A document's natural `_id` and its whole content (which carries the `_id` too).
pub type Raw = (RawBson, RawDocumentBuf);

use crate::domain::money::to_units;
use crate::domain::product::ProductDoc;
use crate::domain::rfm::RfmDoc;
use crate::domain::trends::TrendDoc;
use crate::domain::warehouse::{DimCustomer, DimProduct, Fact};
use crate::domain::Location;

/// `customer_rfm_analysis`: one document per customer with ≥ 1 purchase.
pub const CUSTOMER_RFM: &str = "customer_rfm_analysis";
/// `product_performance`: one document per product with a line in the window.
pub const PRODUCT_PERFORMANCE: &str = "product_performance";
/// `sales_trends`: one document per (trend_type, period) with an event, within retention.
pub const SALES_TRENDS: &str = "sales_trends";
/// The star schema.
pub const FACT_SALES: &str = "fact_sales";
pub const FACT_RETURNS: &str = "fact_returns";
pub const DIM_PRODUCT: &str = "dim_product";
pub const DIM_CUSTOMER: &str = "dim_customer";
pub const DIM_LOCATION: &str = "dim_location";
pub const DIM_DATE: &str = "dim_date";
pub const DIM_TIME: &str = "dim_time";
pub const FACT_CUSTOMER_SESSIONS: &str = "fact_customer_sessions";

/// Every collection martstream writes (what a backfill's `--swap` promotes).
pub const ALL_COLLECTIONS: [&str; 12] = [
    CUSTOMER_RFM,
    PRODUCT_PERFORMANCE,
    SALES_TRENDS,
    FACT_SALES,
    FACT_RETURNS,
    DIM_PRODUCT,
    DIM_CUSTOMER,
    DIM_LOCATION,
    DIM_DATE,
    DIM_TIME,
    FACT_CUSTOMER_SESSIONS,
    "reconciliation_reports",
];

/// An index of the batch design: collection, name, keys (field, direction), unique.
pub struct IndexSpec {
    pub collection: &'static str,
    pub name: &'static str,
    pub keys: &'static [(&'static str, i32)],
    pub unique: bool,
}

/// An index row of the table below.
const fn ix(
    collection: &'static str,
    name: &'static str,
    keys: &'static [(&'static str, i32)],
    unique: bool,
) -> IndexSpec {
    IndexSpec { collection, name, keys, unique }
}

/// The batch design's indexes on the collections martstream writes.
pub const INDEXES: &[IndexSpec] = &[
    ix(CUSTOMER_RFM, "idx_customer", &[("customer_id", 1)], false),
    ix(CUSTOMER_RFM, "idx_segment", &[("rfm_segment", 1)], false),
    ix(PRODUCT_PERFORMANCE, "idx_product", &[("product_id", 1)], false),
    ix(PRODUCT_PERFORMANCE, "idx_category", &[("category", 1)], false),
    ix(PRODUCT_PERFORMANCE, "idx_revenue", &[("total_revenue", -1)], false),
    ix(SALES_TRENDS, "idx_date", &[("date", 1)], false),
    ix(SALES_TRENDS, "idx_trend_date", &[("trend_type", 1), ("date", 1)], false),
    ix(FACT_SALES, "idx_date", &[("date_key", 1)], false),
    ix(FACT_SALES, "idx_product", &[("product_key", 1)], false),
    ix(FACT_SALES, "idx_customer", &[("customer_key", 1)], false),
    ix(FACT_SALES, "idx_location", &[("location_key", 1)], false),
    ix(FACT_SALES, "idx_date_product", &[("date_key", 1), ("product_key", 1)], false),
    ix(FACT_RETURNS, "idx_date", &[("date_key", 1)], false),
    ix(FACT_RETURNS, "idx_product", &[("product_key", 1)], false),
    ix(FACT_RETURNS, "idx_customer", &[("customer_key", 1)], false),
    ix(DIM_PRODUCT, "idx_product_id", &[("product_id", 1)], true),
    ix(DIM_PRODUCT, "idx_category", &[("category", 1)], false),
    ix(DIM_CUSTOMER, "idx_customer_id", &[("customer_id", 1)], true),
    ix(DIM_CUSTOMER, "idx_segment", &[("customer_segment", 1)], false),
    ix(DIM_DATE, "idx_date", &[("full_date", 1)], true),
    ix(DIM_LOCATION, "idx_country", &[("country", 1)], false),
    ix(FACT_CUSTOMER_SESSIONS, "idx_customer", &[("customer_key", 1)], false),
    ix(FACT_CUSTOMER_SESSIONS, "idx_date", &[("date_key", 1)], false),
    ix(FACT_CUSTOMER_SESSIONS, "idx_abandoned", &[("cart_abandoned", 1)], false),
];

/// The batch design's validator of `fact_sales` (also applied to `fact_returns`, which has
/// the same shape).
pub fn fact_validator() -> Document {
    doc! {
        "$jsonSchema": {
            "bsonType": "object",
            "required": ["sale_id", "date_key", "product_key", "customer_key", "total_amount"],
            "properties": {
                "sale_id": { "bsonType": "string" },
                "date_key": { "bsonType": "int" },
                "product_key": { "bsonType": "int" },
                "customer_key": { "bsonType": "int" },
                "location_key": { "bsonType": "int" },
                "quantity": { "bsonType": "int", "minimum": 1 },
                "unit_price": { "bsonType": "double", "minimum": 0 },
                "total_amount": { "bsonType": "double", "minimum": 0 }
            }
        }
    }
}

pub fn date(t: DateTime<Utc>) -> RawBson {
    RawBson::DateTime(BsonDateTime::from_millis(t.timestamp_millis()))
}

/// An integer field: Int32 when it fits (what dashboards see as a plain number).
pub fn int(x: i64) -> RawBson {
    i32::try_from(x).map_or(RawBson::Int64(x), RawBson::Int32)
}

pub fn opt_double(x: Option<f64>) -> RawBson {
    x.map_or(RawBson::Null, RawBson::Double)
}

/// The natural id of a document and its full content.
pub fn rfm(d: &RfmDoc, written_at: DateTime<Utc>) -> Raw {
    let id = RawBson::String(d.customer_id.clone());
    let body = rawdoc! {
        "_id": id.clone(),
        "customer_id": d.customer_id.as_str(),
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
        "rfm_segment": d.rfm_segment.as_str(),
        "analysis_date": date(d.analysis_date),
        "updated_at": date(written_at),
    };
    (id, body)
}

pub fn opt_string(x: Option<&str>) -> RawBson {
    x.map_or(RawBson::Null, |s| RawBson::String(s.to_owned()))
}

pub fn product(d: &ProductDoc, written_at: DateTime<Utc>) -> Raw {
    let id = RawBson::String(d.product_id.clone());
    let body = rawdoc! {
        "_id": id.clone(),
        "product_id": d.product_id.as_str(),
        "product_name": opt_string(d.product_name.as_deref()),
        "category": d.category.as_str(),
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

pub fn trend(d: &TrendDoc, written_at: DateTime<Utc>) -> Raw {
    let id = RawBson::String(d.id());
    let b = &d.bucket;
    let mut body = rawdoc! {
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
            body.append("year", year);
            body.append("week", week as i32);
        }
        (crate::domain::trends::Granularity::Monthly, Some((year, month))) => {
            body.append("year", year);
            body.append("month", month as i32);
        }
        _ => {}
    }
    if let Some(x) = &d.daily {
        body.append("revenue_7day_ma", x.revenue_7day_ma());
        body.append("transactions_7day_ma", x.transactions_7day_ma());
        body.append("prev_day_revenue", opt_double(x.prev_day_revenue_cents.map(to_units)));
        body.append("revenue_growth_pct", opt_double(d.revenue_growth_pct()));
        body.append("sessions", int(x.sessions.sessions));
        body.append("cart_abandonment_rate", opt_double(x.sessions.cart_abandonment_rate()));
    }
    body.append("analysis_date", date(d.analysis_date));
    body.append("updated_at", date(written_at));
    (id, body)
}

pub fn fact(f: &Fact) -> Raw {
    let sale_id = f.sale_id();
    let body = rawdoc! {
        "_id": sale_id.as_str(),
        "sale_id": sale_id.as_str(),
        "transaction_id": &*f.transaction_id,
        "timestamp": date(f.timestamp),
        "date_key": f.date_key,
        "time_key": f.time_key,
        "product_key": f.product_key,
        "customer_key": f.customer_key,
        "location_key": f.location_key,
        "quantity": i32::try_from(f.quantity).unwrap_or(i32::MAX),
        "unit_price": to_units(f.unit_price_cents),
        "discount_amount": to_units(f.discount_cents),
        "total_amount": to_units(f.total_cents),
        "payment_method": opt_string(f.payment_method.as_deref()),
    };
    (RawBson::String(sale_id), body)
}

pub fn dim_product(p: &DimProduct) -> Raw {
    let id = RawBson::String(p.product_id.clone());
    let body = rawdoc! {
        "_id": id.clone(),
        "product_key": p.product_key,
        "product_id": p.product_id.as_str(),
        "product_name": opt_string(p.product_name.as_deref()),
        "category": p.category.as_str(),
        "subcategory": opt_string(p.subcategory.as_deref()),
        "brand": opt_string(p.brand.as_deref()),
    };
    (id, body)
}

pub fn dim_customer(c: &DimCustomer) -> Raw {
    let id = RawBson::String(c.customer_id.clone());
    let body = rawdoc! {
        "_id": id.clone(),
        "customer_key": c.customer_key,
        "customer_id": c.customer_id.as_str(),
        "customer_segment": opt_string(c.customer_segment.as_deref()),
        "lifetime_value": to_units(c.lifetime_value_cents),
    };
    (id, body)
}

pub fn dim_location(key: i32, l: &Location) -> Raw {
    let body = rawdoc! {
        "_id": key,
        "location_key": key,
        "country": l.country.as_str(),
        "region": opt_string(l.region.as_deref()),
        "city": opt_string(l.city.as_deref()),
        "timezone": opt_string(l.timezone.as_deref()),
    };
    (RawBson::Int32(key), body)
}

pub fn dim_date(d: chrono::NaiveDate) -> Raw {
    use chrono::Datelike;
    let key = crate::domain::calendar::date_key(d);
    let midnight = d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let weekday = d.weekday().num_days_from_monday() as i32;
    let body = rawdoc! {
        "_id": key,
        "date_key": key,
        "full_date": date(midnight),
        "day": d.day() as i32,
        "month": d.month() as i32,
        "year": d.year(),
        "quarter": (d.month0() / 3 + 1) as i32,
        "week_of_year": d.iso_week().week() as i32,
        "day_of_week": weekday,
        "is_weekend": weekday >= 5,
        "is_holiday": false,
    };
    (RawBson::Int32(key), body)
}

/// The 1440 rows of `dim_time`.
pub fn dim_time() -> Vec<Raw> {
    use crate::domain::calendar::{business_hour, time_of_day};
    (0..24u32)
        .flat_map(|h| (0..60u32).map(move |m| (h, m)))
        .map(|(h, m)| {
            let key = (h * 100 + m) as i32;
            let body = rawdoc! {
                "_id": key,
                "time_key": key,
                "hour": h as i32,
                "minute": m as i32,
                "time_of_day": time_of_day(h),
                "business_hour": business_hour(h),
            };
            (RawBson::Int32(key), body)
        })
        .collect()
}

pub fn session(f: &crate::domain::session::SessionFact) -> Raw {
    let s = &f.session;
    let id = RawBson::String(s.session_id.clone());
    let body = rawdoc! {
        "_id": id.clone(),
        "session_id": s.session_id.as_str(),
        "customer_key": f.customer_key,
        "date_key": f.date_key,
        "session_start_time": date(s.session_start),
        "session_end_time": date(s.session_end),
        "duration_minutes": s.duration_minutes(),
        "page_views": int(s.page_views),
        "products_viewed": int(s.products_viewed),
        "cart_adds": int(s.cart_adds),
        "cart_removes": int(s.cart_removes),
        "purchase_completed": s.purchase_completed,
        "cart_abandoned": s.cart_abandoned(),
    };
    (id, body)
}
