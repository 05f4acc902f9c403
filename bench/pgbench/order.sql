-- The business transaction alone.
\set c random(1, 1000)
BEGIN;
INSERT INTO bench_order (customer, sku, qty) VALUES (:c, 'SKU-1', 1);
COMMIT;
