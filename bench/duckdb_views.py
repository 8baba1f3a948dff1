"""The same views computed by DuckDB over the same JSON-lines events (benchmark baseline).

Reads the file, drops malformed lines, deduplicates by transaction_id (first wins), then
computes customer_rfm_analysis (SPEC §3: tie-aware quintiles, segments in SPEC order),
product_performance over the last 30 days (SPEC §4: revenue, units, rank in category) and
daily sales trends (SPEC §5: count, revenue, 7-day moving average). Prints seconds and sizes.

Usage: python3 duckdb_views.py EVENTS.jsonl [THREADS]   (THREADS: 1 by default; 0 = all cores)
"""
import sys
import time

import duckdb

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
started = time.perf_counter()
con = duckdb.connect()
if threads > 0:
    con.execute(f"SET threads = {threads}")  # 1: one core, like martstream's engine
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
con.execute(f"""
CREATE TABLE raw AS
SELECT * FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true,
  columns = {{event_type: 'VARCHAR', transaction_id: 'VARCHAR', user_id: 'VARCHAR', timestamp: 'VARCHAR',
             total_amount: 'DOUBLE', original_transaction_id: 'VARCHAR',
             items: 'STRUCT(product_id VARCHAR, product_name VARCHAR, category VARCHAR, quantity BIGINT, unit_price DOUBLE, discount DOUBLE)[]'}})
""")
con.execute("""
CREATE TABLE ev AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, try_cast(timestamp AS TIMESTAMPTZ) AS ts, row_number() OVER (PARTITION BY transaction_id) AS rn
  FROM raw
  WHERE event_type IN ('purchase', 'refund') AND user_id IS NOT NULL AND transaction_id IS NOT NULL
) WHERE rn = 1 AND ts IS NOT NULL
""")
as_of = con.execute("SELECT max(ts) FROM ev").fetchone()[0]
rfm = con.execute("""
WITH c AS (
  SELECT user_id,
    count(*) FILTER (WHERE event_type = 'purchase') AS frequency,
    sum(CASE WHEN event_type = 'purchase' THEN total_amount ELSE -total_amount END) AS monetary,
    max(ts) FILTER (WHERE event_type = 'purchase') AS last_purchase
  FROM ev GROUP BY user_id HAVING count(*) FILTER (WHERE event_type = 'purchase') >= 1
), r AS (
  SELECT *, date_diff('day', CAST(last_purchase AS DATE), CAST(? AS DATE)) AS recency FROM c
), s AS (
  SELECT *,
    1 + floor(5 * (rank() OVER (ORDER BY recency DESC) - 1) / count(*) OVER ()) AS r_score,
    1 + floor(5 * (rank() OVER (ORDER BY frequency) - 1) / count(*) OVER ()) AS f_score,
    1 + floor(5 * (rank() OVER (ORDER BY monetary) - 1) / count(*) OVER ()) AS m_score
  FROM r
)
SELECT *, CASE
  WHEN r_score >= 4 AND f_score >= 4 AND m_score >= 4 THEN 'Champions'
  WHEN r_score <= 2 AND f_score >= 4 AND m_score >= 4 THEN 'Cannot Lose Them'
  WHEN r_score <= 2 AND f_score >= 3 AND m_score >= 3 THEN 'At Risk'
  WHEN r_score >= 3 AND f_score >= 3 AND m_score >= 3 THEN 'Loyal Customers'
  WHEN r_score >= 4 AND f_score = 1 AND m_score = 1 THEN 'New Customers'
  WHEN r_score >= 3 AND f_score <= 3 AND m_score <= 3 THEN 'Potential Loyalists'
  WHEN r_score = 1 AND f_score <= 2 AND m_score <= 2 THEN 'Lost'
  WHEN r_score <= 2 AND f_score <= 2 AND m_score <= 3 THEN 'Hibernating'
  ELSE 'Need Attention' END AS rfm_segment
FROM s
""", [as_of]).fetchall()
products = con.execute("""
WITH lines AS (
  SELECT e.event_type, e.ts, UNNEST(e.items) AS it FROM ev e
  WHERE CAST(e.ts AS DATE) > CAST(? AS DATE) - INTERVAL 30 DAY
), p AS (
  SELECT it.product_id AS product_id, any_value(it.category) AS category,
    sum(CASE WHEN event_type = 'purchase' THEN it.quantity ELSE -it.quantity END) AS units_sold,
    sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE -1 END * (it.quantity * it.unit_price - coalesce(it.discount, 0))) AS revenue,
    count(DISTINCT CAST(ts AS DATE)) FILTER (WHERE event_type = 'purchase') AS days_sold
  FROM lines GROUP BY 1
)
SELECT *, row_number() OVER (PARTITION BY category ORDER BY revenue DESC, product_id) AS rank_in_category FROM p
""", [as_of]).fetchall()
trends = con.execute("""
WITH d AS (
  SELECT CAST(ts AS DATE) AS day,
    count(*) FILTER (WHERE event_type = 'purchase') AS transaction_count,
    sum(CASE WHEN event_type = 'purchase' THEN total_amount ELSE -total_amount END) AS revenue
  FROM ev GROUP BY 1
)
SELECT *, avg(revenue) OVER (ORDER BY day RANGE BETWEEN INTERVAL 6 DAY PRECEDING AND CURRENT ROW) AS revenue_7day_ma FROM d
""").fetchall()
secs = time.perf_counter() - started
print(f"duckdb_views ({threads} thread{'s' if threads != 1 else ''}): {len(rfm)} customers, {len(products)} products, {len(trends)} days in {secs:.3f} s")
