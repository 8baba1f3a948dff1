//! The operational database's side of a reconciliation: per-customer and per-day figures of
//! the rows dated before a cut, streamed (memory follows the customers, not the rows), and
//! the schema's migrations.

use std::time::Duration;

use futures::{Stream, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::config::PostgresConfig;
use crate::domain::product::{ProductAttributes, ProductDay};
use crate::domain::reconcile::{day_start_us, CustomerFigures, FactLine};
use crate::domain::trends::{Bucket, Granularity};
use crate::domain::EventKind;

/// The schema (`migrations/`), embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL url is invalid: {0}")]
    Url(String),
    #[error("PostgreSQL at {host}: {reason}")]
    Query { host: String, reason: String },
    #[error("PostgreSQL migration failed: {0}")]
    Migrate(String),
}

/// A lazily connected pool: the service starts and consumes without PostgreSQL; a run that
/// cannot connect fails (and is retried), nothing else.
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    host: String,
}

impl Postgres {
    pub fn connect_lazy(config: &PostgresConfig) -> Result<Self, PgError> {
        let options: PgConnectOptions = config.url.parse().map_err(|e: sqlx::Error| PgError::Url(first_line(&e)))?;
        let host = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
            .connect_lazy_with(options);
        Ok(Postgres { pool, host })
    }

    fn fail(&self, e: impl std::fmt::Display) -> PgError {
        PgError::Query { host: self.host.clone(), reason: first_line(&e) }
    }

    pub async fn migrate(&self) -> Result<(), PgError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| PgError::Migrate(first_line(&e)))
    }

    /// Per customer with any row dated before `cutoff_day`: purchases, net cents, first and
    /// last purchase (microseconds), streamed in no particular order.
    pub fn customers(
        &self,
        cutoff_day: i32,
    ) -> impl Stream<Item = Result<(String, CustomerFigures), PgError>> + Send + '_ {
        let sql = r#"
            SELECT user_id,
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                   (100 * coalesce(sum(CASE WHEN event_type = 'purchase' THEN total_amount ELSE -total_amount END), 0))::bigint AS net_cents,
                   (extract(epoch FROM min("timestamp") FILTER (WHERE event_type = 'purchase')) * 1000000)::bigint AS first_us,
                   (extract(epoch FROM max("timestamp") FILTER (WHERE event_type = 'purchase')) * 1000000)::bigint AS last_us
            FROM transactions
            WHERE "timestamp" < to_timestamp($1::double precision / 1000000)
            GROUP BY user_id"#;
        sqlx::query(sql).bind(day_start_us(cutoff_day) as f64).fetch(&self.pool).map_err(|e| self.fail(e)).and_then(
            move |row| async move {
                let figures = CustomerFigures {
                    purchases: row.try_get("purchases").map_err(|e| self.fail(e))?,
                    monetary: row.try_get("net_cents").map_err(|e| self.fail(e))?,
                    first_purchase_us: row.try_get("first_us").map_err(|e| self.fail(e))?,
                    last_purchase_us: row.try_get("last_us").map_err(|e| self.fail(e))?,
                };
                Ok((row.try_get("user_id").map_err(|e| self.fail(e))?, figures))
            },
        )
    }

    /// Per day number in `from_day..to_day` with rows: the day's bucket.
    pub async fn days(&self, from_day: i32, to_day: i32) -> Result<Vec<(i32, Bucket)>, PgError> {
        self.buckets(Granularity::Daily, from_day, to_day).await
    }

    /// Per ISO week (`Weekly`, keyed by its Monday's day number) or month (`Monthly`, keyed
    /// by its first day's number) with rows dated in `from_day..to_day`: the bucket.
    pub async fn periods(&self, g: Granularity, from_day: i32, to_day: i32) -> Result<Vec<(i32, Bucket)>, PgError> {
        self.buckets(g, from_day, to_day).await
    }

    /// Per period of `g` with rows dated in `from_day..to_day`, keyed by its first day's
    /// number: purchases, refunds and their money.
    async fn buckets(&self, g: Granularity, from_day: i32, to_day: i32) -> Result<Vec<(i32, Bucket)>, PgError> {
        let unit = match g {
            Granularity::Daily => "day",
            Granularity::Weekly => "week",
            Granularity::Monthly => "month",
        };
        let sql = format!(
            r#"
            SELECT (date_trunc('{unit}', "timestamp" AT TIME ZONE 'UTC')::date - date '1970-01-01') AS day,
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                   (100 * coalesce(sum(total_amount) FILTER (WHERE event_type = 'purchase'), 0))::bigint AS purchase_cents,
                   count(*) FILTER (WHERE event_type = 'refund') AS refunds,
                   (100 * coalesce(sum(total_amount) FILTER (WHERE event_type = 'refund'), 0))::bigint AS refund_cents
            FROM transactions
            WHERE "timestamp" >= to_timestamp($1::double precision / 1000000)
              AND "timestamp" < to_timestamp($2::double precision / 1000000)
            GROUP BY 1"#
        );
        let rows = sqlx::query(&sql)
            .bind(day_start_us(from_day) as f64)
            .bind(day_start_us(to_day) as f64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter().map(|row| Ok((row.try_get("day").map_err(|e| self.fail(e))?, self.bucket(row)?))).collect()
    }

    /// A product's name, category, subcategory and brand columns.
    fn attributes(&self, row: &sqlx::postgres::PgRow) -> Result<ProductAttributes, PgError> {
        let text = |c: &str| row.try_get::<Option<String>, _>(c).map_err(|e| self.fail(e));
        Ok(ProductAttributes {
            name: text("name")?,
            category: text("category")?,
            subcategory: text("subcategory")?,
            brand: text("brand")?,
        })
    }

    fn bucket(&self, row: &sqlx::postgres::PgRow) -> Result<Bucket, PgError> {
        Ok(Bucket {
            purchases: row.try_get("purchases").map_err(|e| self.fail(e))?,
            purchase_cents: row.try_get("purchase_cents").map_err(|e| self.fail(e))?,
            refunds: row.try_get("refunds").map_err(|e| self.fail(e))?,
            refund_cents: row.try_get("refund_cents").map_err(|e| self.fail(e))?,
        })
    }

    /// Per (product, day number in `from_day..to_day`) with lines: the product's bucket of
    /// that date (SPEC §4's sums), with its attributes in `products`.
    pub async fn product_days(
        &self,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<(String, i32, ProductDay, ProductAttributes)>, PgError> {
        let sql = r#"
            SELECT i.product_id,
                   ((t."timestamp" AT TIME ZONE 'UTC')::date - date '1970-01-01') AS day,
                   coalesce(sum(CASE WHEN t.event_type = 'purchase' THEN i.quantity ELSE -i.quantity END), 0)::bigint AS units,
                   (100 * coalesce(sum(CASE WHEN t.event_type = 'purchase' THEN 1 ELSE -1 END
                                       * (i.quantity * i.unit_price - i.discount)), 0))::bigint AS revenue,
                   count(DISTINCT t.transaction_id) FILTER (WHERE t.event_type = 'purchase') AS orders,
                   count(*) FILTER (WHERE t.event_type = 'purchase') AS purchase_lines,
                   min(p.name) AS name, min(p.category) AS category,
                   min(p.subcategory) AS subcategory, min(p.brand) AS brand
            FROM transactions t
            JOIN transaction_items i ON i.transaction_id = t.transaction_id
            LEFT JOIN products p ON p.product_id = i.product_id
            WHERE t."timestamp" >= to_timestamp($1::double precision / 1000000)
              AND t."timestamp" < to_timestamp($2::double precision / 1000000)
            GROUP BY 1, 2"#;
        let rows = sqlx::query(sql)
            .bind(day_start_us(from_day) as f64)
            .bind(day_start_us(to_day) as f64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                let get = |c: &str| row.try_get::<i64, _>(c).map_err(|e| self.fail(e));
                let text = |c: &str| row.try_get::<Option<String>, _>(c).map_err(|e| self.fail(e));
                let day = ProductDay {
                    units: get("units")?,
                    revenue: get("revenue")?,
                    orders: get("orders")?,
                    purchase_lines: get("purchase_lines")?,
                };
                let attributes = self.attributes(row)?;
                Ok((
                    text("product_id")?.unwrap_or_default(),
                    row.try_get("day").map_err(|e| self.fail(e))?,
                    day,
                    attributes,
                ))
            })
            .collect()
    }

    /// The customers with a line of one of these products on that day number.
    pub async fn customers_with_lines(&self, product_days: &[(String, i32)]) -> Result<Vec<String>, PgError> {
        if product_days.is_empty() {
            return Ok(Vec::new());
        }
        let (products, days): (Vec<String>, Vec<i32>) = product_days.iter().cloned().unzip();
        let sql = r#"
            SELECT DISTINCT t.user_id
            FROM UNNEST($1::text[], $2::int[]) AS d(product_id, day)
            JOIN transaction_items i ON i.product_id = d.product_id
            JOIN transactions t ON t.transaction_id = i.transaction_id
             AND t."timestamp" >= to_timestamp(d.day::double precision * 86400)
             AND t."timestamp" < to_timestamp((d.day + 1)::double precision * 86400)"#;
        let rows = sqlx::query(sql).bind(products).bind(days).fetch_all(&self.pool).await.map_err(|e| self.fail(e))?;
        rows.iter().map(|row| row.try_get("user_id").map_err(|e| self.fail(e))).collect()
    }

    /// Every purchase and refund line of `customers` dated before `cutoff_day`, numbered as
    /// facts are (`<transaction_id>:<0-based line index>`, lines in `line_no` order), with
    /// the product's attributes.
    pub async fn fact_lines(
        &self,
        customers: &[String],
        cutoff_day: i32,
    ) -> Result<Vec<(FactLine, ProductAttributes)>, PgError> {
        let sql = r#"
            SELECT t.transaction_id, t.user_id, t.event_type, t.payment_method, i.product_id, i.quantity,
                   (row_number() OVER (PARTITION BY t.transaction_id ORDER BY i.line_no) - 1)::bigint AS line,
                   (extract(epoch FROM t."timestamp") * 1000)::bigint AS at_ms,
                   (100 * i.unit_price)::bigint AS unit_price_cents, (100 * i.discount)::bigint AS discount_cents,
                   p.name, p.category, p.subcategory, p.brand
            FROM transactions t
            JOIN transaction_items i ON i.transaction_id = t.transaction_id
            LEFT JOIN products p ON p.product_id = i.product_id
            WHERE t.user_id = ANY($1)
              AND t."timestamp" < to_timestamp($2::double precision / 1000000)"#;
        let rows = sqlx::query(sql)
            .bind(customers)
            .bind(day_start_us(cutoff_day) as f64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                let text = |c: &str| row.try_get::<Option<String>, _>(c).map_err(|e| self.fail(e));
                let int = |c: &str| row.try_get::<i64, _>(c).map_err(|e| self.fail(e));
                let transaction_id = text("transaction_id")?.unwrap_or_default();
                let kind = if text("event_type")?.as_deref() == Some("refund") {
                    EventKind::Refund
                } else {
                    EventKind::Purchase
                };
                let line = FactLine {
                    kind,
                    sale_id: format!("{transaction_id}:{}", int("line")?),
                    transaction_id,
                    customer_id: text("user_id")?.unwrap_or_default(),
                    product_id: text("product_id")?.unwrap_or_default(),
                    at_ms: int("at_ms")?,
                    quantity: i64::from(row.try_get::<i32, _>("quantity").map_err(|e| self.fail(e))?),
                    unit_price_cents: int("unit_price_cents")?,
                    discount_cents: int("discount_cents")?,
                    payment_method: text("payment_method")?,
                };
                let attributes = self.attributes(row)?;
                Ok((line, attributes))
            })
            .collect()
    }

    /// The bare aggregate the per-customer comparison rides on, counted and discarded: the
    /// baseline of the reconciliation benchmark.
    pub async fn count_customer_rows(&self, cutoff_day: i32) -> Result<u64, PgError> {
        let n = self.customers(cutoff_day).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await?;
        Ok(n)
    }
}

fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}
