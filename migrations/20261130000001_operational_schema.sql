-- The operational database's schema (system of record; the batch design read `transactions`
-- from it). martstream reads it for the nightly reconciliation; the load generator writes it.
-- Money is numeric(12,2), instants are timestamptz.

CREATE TABLE IF NOT EXISTS customers (
    customer_id   text PRIMARY KEY,
    name          text,
    email         text,
    country       text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS products (
    product_id    text PRIMARY KEY,
    name          text,
    category      text,
    subcategory   text,
    brand         text,
    price         numeric(12,2),
    cost          numeric(12,2),
    supplier      text
);

CREATE TABLE IF NOT EXISTS transactions (
    transaction_id          text PRIMARY KEY,
    user_id                 text NOT NULL,
    "timestamp"             timestamptz NOT NULL,
    total_amount            numeric(12,2) NOT NULL CHECK (total_amount >= 0),
    payment_method          text,
    event_type              text NOT NULL DEFAULT 'purchase' CHECK (event_type IN ('purchase', 'refund')),
    original_transaction_id text
);

-- The reconciliation's two scans: per customer and per day, before a cutoff.
CREATE INDEX IF NOT EXISTS transactions_timestamp ON transactions ("timestamp");
CREATE INDEX IF NOT EXISTS transactions_user_id ON transactions (user_id);

CREATE TABLE IF NOT EXISTS transaction_items (
    transaction_id  text NOT NULL REFERENCES transactions (transaction_id) ON DELETE CASCADE,
    line_no         integer NOT NULL,
    product_id      text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity >= 1),
    unit_price      numeric(12,2) NOT NULL,
    discount        numeric(12,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (transaction_id, line_no)
);
