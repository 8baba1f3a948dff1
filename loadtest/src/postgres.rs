//! The same transactions into PostgreSQL (the operational database martstream reconciles
//! against), and drift between it and Kafka: purchases missing from Kafka, purchases missing
//! from PostgreSQL, purchases whose amount differs, purchases whose first line has one unit
//! more in PostgreSQL (same amount: only the product figures and the facts show it). Every
//! drifted purchase belongs to a different customer, so a reconciliation must count exactly
//! what was injected.

use std::collections::HashSet;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::{Label, Message};

/// The schema (martstream's `migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How much drift to inject, among valid purchases dated before `before`.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub missing_in_kafka: usize,
    pub missing_in_postgres: usize,
    pub amount: usize,
    pub lines: usize,
    pub before: Option<DateTime<Utc>>,
}

/// What was injected: the transaction ids of each kind.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    pub missing_in_kafka: HashSet<String>,
    pub missing_in_postgres: HashSet<String>,
    pub amount: HashSet<String>,
    pub lines: HashSet<String>,
    customers: HashSet<String>,
}

/// Where one message goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub to_kafka: bool,
    /// The row to write, when it goes to PostgreSQL (amount drift already applied).
    pub to_postgres: Option<Value>,
}

impl Injected {
    /// Decides a message's route, choosing drift on the way (deterministic: the first
    /// qualifying purchases of new customers).
    pub fn route(&mut self, drift: &Drift, m: &Message) -> Route {
        let parsed: Option<Value> = serde_json::from_str(&m.payload).ok();
        let id = parsed.as_ref().and_then(|v| v["transaction_id"].as_str()).map(str::to_owned);
        if let Some(id) = &id {
            // Any later copy of an id held back from Kafka stays back too (a resend would
            // otherwise be its first arrival).
            if self.missing_in_kafka.contains(id) {
                return Route { to_kafka: false, to_postgres: None };
            }
        }
        let (Label::Valid, Some(mut v), Some(id)) = (&m.label, parsed, id) else {
            return Route { to_kafka: true, to_postgres: None };
        };
        let purchase = v["event_type"].as_str().unwrap_or("purchase") == "purchase";
        let user = v["user_id"].as_str().unwrap_or_default().to_owned();
        let early = drift.before.is_none_or(|b| {
            v["timestamp"].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()).is_some_and(|t| t < b)
        });
        if purchase && early && !self.customers.contains(&user) {
            if self.missing_in_kafka.len() < drift.missing_in_kafka {
                self.customers.insert(user);
                self.missing_in_kafka.insert(id);
                return Route { to_kafka: false, to_postgres: Some(v) };
            }
            if self.missing_in_postgres.len() < drift.missing_in_postgres {
                self.customers.insert(user);
                self.missing_in_postgres.insert(id);
                return Route { to_kafka: true, to_postgres: None };
            }
            if self.amount.len() < drift.amount {
                self.customers.insert(user);
                self.amount.insert(id);
                let cents = (v["total_amount"].as_f64().unwrap_or(0.0) * 100.0).round() as i64 + 1_00;
                v["total_amount"] = crate::money(cents);
                return Route { to_kafka: true, to_postgres: Some(v) };
            }
            let first = v["items"].get(0).and_then(|l| l["quantity"].as_i64());
            if let (true, Some(q)) = (self.lines.len() < drift.lines, first) {
                self.customers.insert(user);
                self.lines.insert(id);
                v["items"][0]["quantity"] = (q + 1).into();
                return Route { to_kafka: true, to_postgres: Some(v) };
            }
        }
        Route { to_kafka: true, to_postgres: Some(v) }
    }

    pub fn summary(&self) -> String {
        format!(
            "drift: {} missing in Kafka, {} missing in PostgreSQL, {} amounts differ, {} lines differ",
            self.missing_in_kafka.len(),
            self.missing_in_postgres.len(),
            self.amount.len(),
            self.lines.len()
        )
    }
}

/// Writes transactions (valid events as JSON) in batches; ids already present are skipped.
pub struct Writer {
    pool: PgPool,
    batch: Vec<Value>,
    pub written: u64,
}

const BATCH: usize = 5000;

impl Writer {
    /// Connects and applies the schema.
    pub async fn connect(url: &str) -> Result<Writer> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
        MIGRATOR.run(&pool).await.context("applying the schema")?;
        Ok(Writer { pool, batch: Vec::with_capacity(BATCH), written: 0 })
    }

    pub async fn add(&mut self, v: Value) -> Result<()> {
        self.batch.push(v);
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let s = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
        let n = |v: &Value| v.as_f64().map(|x| format!("{x:.2}"));
        let mut tx: [Vec<Option<String>>; 7] = Default::default();
        let mut items: [Vec<Option<String>>; 6] = Default::default();
        let mut products: [Vec<Option<String>>; 5] = Default::default();
        let mut customers: [Vec<Option<String>>; 2] = Default::default();
        for v in &self.batch {
            let id = s(v, "transaction_id");
            let row = [
                id.clone(),
                s(v, "user_id"),
                s(v, "timestamp"),
                n(&v["total_amount"]),
                s(v, "payment_method"),
                Some(s(v, "event_type").unwrap_or_else(|| "purchase".into())),
                s(v, "original_transaction_id"),
            ];
            for (col, x) in tx.iter_mut().zip(row) {
                col.push(x);
            }
            customers[0].push(s(v, "user_id"));
            customers[1].push(v["location"]["country"].as_str().map(str::to_owned));
            for (i, line) in v["items"].as_array().into_iter().flatten().enumerate() {
                let row = [
                    id.clone(),
                    Some(i.to_string()),
                    s(line, "product_id"),
                    line["quantity"].as_i64().map(|q| q.to_string()),
                    n(&line["unit_price"]),
                    Some(n(&line["discount"]).unwrap_or_else(|| "0".into())),
                ];
                for (col, x) in items.iter_mut().zip(row) {
                    col.push(x);
                }
                let row = [
                    s(line, "product_id"),
                    s(line, "product_name"),
                    s(line, "category"),
                    s(line, "subcategory"),
                    s(line, "brand"),
                ];
                for (col, x) in products.iter_mut().zip(row) {
                    col.push(x);
                }
            }
        }
        let mut t = self.pool.begin().await?;
        let [c0, c1] = customers;
        sqlx::query(
            "INSERT INTO customers (customer_id, country) SELECT DISTINCT ON (c) c, k FROM UNNEST($1::text[], $2::text[]) AS u(c, k) ON CONFLICT DO NOTHING",
        )
        .bind(c0)
        .bind(c1)
        .execute(&mut *t)
        .await?;
        let [p0, p1, p2, p3, p4] = products;
        sqlx::query(
            "INSERT INTO products (product_id, name, category, subcategory, brand) \
             SELECT DISTINCT ON (p) p, n, c, s, b FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(p, n, c, s, b) \
             ON CONFLICT DO NOTHING",
        )
        .bind(p0)
        .bind(p1)
        .bind(p2)
        .bind(p3)
        .bind(p4)
        .execute(&mut *t)
        .await?;
        let [t0, t1, t2, t3, t4, t5, t6] = tx;
        let inserted = sqlx::query(
            "INSERT INTO transactions (transaction_id, user_id, \"timestamp\", total_amount, payment_method, event_type, original_transaction_id) \
             SELECT a, b, c::timestamptz, d::numeric, e, f, g FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u(a, b, c, d, e, f, g) \
             ON CONFLICT DO NOTHING",
        )
        .bind(t0)
        .bind(t1)
        .bind(t2)
        .bind(t3)
        .bind(t4)
        .bind(t5)
        .bind(t6)
        .execute(&mut *t)
        .await?
        .rows_affected();
        let [i0, i1, i2, i3, i4, i5] = items;
        sqlx::query(
            "INSERT INTO transaction_items (transaction_id, line_no, product_id, quantity, unit_price, discount) \
             SELECT a, b::int, c, d::int, e::numeric, f::numeric FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(a, b, c, d, e, f) \
             ON CONFLICT DO NOTHING",
        )
        .bind(i0)
        .bind(i1)
        .bind(i2)
        .bind(i3)
        .bind(i4)
        .bind(i5)
        .execute(&mut *t)
        .await?;
        t.commit().await?;
        self.written += inserted;
        self.batch.clear();
        Ok(())
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://****{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}
