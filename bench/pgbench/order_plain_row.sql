-- The floor: the order plus any second row of the same width.
\set c random(1, 1000)
BEGIN;
INSERT INTO bench_order (customer, sku, qty) VALUES (:c, 'SKU-1', 1);
INSERT INTO bench_plain (topic, msg_key, payload) VALUES ('orders', convert_to('key-' || :c, 'UTF8'), convert_to(repeat('x', 200), 'UTF8'));
COMMIT;
