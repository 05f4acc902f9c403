-- The same statement into a table of the same columns and defaults, primary key only.
\set c random(1, 1000)
BEGIN;
INSERT INTO bench_order (customer, sku, qty) VALUES (:c, 'SKU-1', 1);
INSERT INTO bare_message (id, topic, msg_key, payload, header_names, header_values, msg_type, available_at, confirm_within) VALUES (gen_random_uuid(), 'orders', convert_to('key-' || :c, 'UTF8'), convert_to(repeat('x', 200), 'UTF8'), '{}', '{}', NULL, now() + make_interval(secs => 0), NULL);
COMMIT;
