"""The batch design's own RFM job (../shared/reference/batch-warehouse-guide.md §3.5,
`calculate_rfm_scores` + `_assign_segments`), unchanged in its logic, in Spark local mode,
reading the same JSON-lines events instead of PostgreSQL over JDBC and not writing to
MongoDB. The time includes starting Spark: that is what each scheduled batch run pays.

Usage: python3 pyspark_rfm.py EVENTS.jsonl
"""
import sys
import time
from datetime import datetime

started = time.perf_counter()
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.functions import (col, concat, count, datediff, expr, lit, max, ntile, sum,  # noqa: E402
                                   udf)
from pyspark.sql.types import StringType  # noqa: E402
from pyspark.sql.window import Window  # noqa: E402

spark = (SparkSession.builder.appName("GlobalMart-RFM-Analysis").master("local[2]")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
boot = time.perf_counter() - started

raw = spark.read.json(sys.argv[1])
transactions = (raw.filter(col("event_type") == "purchase")
                .dropDuplicates(["transaction_id"])
                # The batch job read PostgreSQL, which holds valid rows only: drop what the
                # stream's dead-letter queue would have taken (unparseable times, no user).
                .select("user_id", expr("try_to_timestamp(timestamp)").alias("timestamp"), "total_amount")
                .filter(col("timestamp").isNotNull() & col("user_id").isNotNull()))
analysis_date = datetime.now()
rfm = transactions.groupBy("user_id").agg(
    datediff(lit(analysis_date), max("timestamp")).alias("recency"),
    count("*").alias("frequency"),
    sum("total_amount").alias("monetary"),
)
rfm = rfm.withColumn("r_score", ntile(5).over(Window.orderBy(col("recency").desc())))
rfm = rfm.withColumn("f_score", ntile(5).over(Window.orderBy(col("frequency"))))
rfm = rfm.withColumn("m_score", ntile(5).over(Window.orderBy(col("monetary"))))
rfm = rfm.withColumn("rfm_score", concat(col("r_score"), col("f_score"), col("m_score")))


def get_segment(r, f, m):
    if r >= 4 and f >= 4 and m >= 4:
        return "Champions"
    elif r >= 3 and f >= 3 and m >= 3:
        return "Loyal Customers"
    elif r >= 3 and f <= 3 and m <= 3:
        return "Potential Loyalists"
    elif r >= 4 and f == 1:
        return "New Customers"
    elif r <= 2 and f >= 3 and m >= 3:
        return "At Risk"
    elif r <= 2 and f >= 4 and m >= 4:
        return "Cannot Lose Them"
    elif r <= 2 and f <= 2:
        return "Hibernating"
    else:
        return "Lost"


rfm = rfm.withColumn("rfm_segment", udf(get_segment, StringType())(col("r_score"), col("f_score"), col("m_score")))
customers = rfm.count()
segments = rfm.groupBy("rfm_segment").count().collect()
secs = time.perf_counter() - started
print(f"pyspark_rfm: {customers} customers, {len(segments)} segments in {secs:.3f} s (Spark start {boot:.1f} s)")
spark.stop()
