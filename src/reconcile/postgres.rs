//! The operational database's side of a reconciliation: per-customer and per-day figures of
//! the rows dated before a cut, streamed (memory follows the customers, not the rows), and
//! the schema's migrations.

use std::time::Duration;

use futures::{Stream, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::config::PostgresConfig;
use crate::domain::reconcile::{day_start_us, CustomerFigures};
use crate::domain::trends::Bucket;

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
        let sql = r#"
            SELECT (("timestamp" AT TIME ZONE 'UTC')::date - date '1970-01-01') AS day,
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                   (100 * coalesce(sum(total_amount) FILTER (WHERE event_type = 'purchase'), 0))::bigint AS purchase_cents,
                   count(*) FILTER (WHERE event_type = 'refund') AS refunds,
                   (100 * coalesce(sum(total_amount) FILTER (WHERE event_type = 'refund'), 0))::bigint AS refund_cents
            FROM transactions
            WHERE "timestamp" >= to_timestamp($1::double precision / 1000000)
              AND "timestamp" < to_timestamp($2::double precision / 1000000)
            GROUP BY 1"#;
        let rows = sqlx::query(sql)
            .bind(day_start_us(from_day) as f64)
            .bind(day_start_us(to_day) as f64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                let bucket = Bucket {
                    purchases: row.try_get("purchases").map_err(|e| self.fail(e))?,
                    purchase_cents: row.try_get("purchase_cents").map_err(|e| self.fail(e))?,
                    refunds: row.try_get("refunds").map_err(|e| self.fail(e))?,
                    refund_cents: row.try_get("refund_cents").map_err(|e| self.fail(e))?,
                };
                Ok((row.try_get("day").map_err(|e| self.fail(e))?, bucket))
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
