-- The reconciliation reads PostgreSQL as a least-privilege login, martstream_reader:
-- SELECT on the operational tables, nothing else. The role is the operator's (scripts/stack
-- creates it); when it exists, the schema's owner grants it here.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'martstream_reader') THEN
    GRANT SELECT ON customers, products, transactions, transaction_items TO martstream_reader;
  END IF;
END
$$;
