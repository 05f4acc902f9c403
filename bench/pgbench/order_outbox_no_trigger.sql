-- The outbox row without the wake-up trigger (indexes, constraints and the
-- generated shard column kept): PGBENCH_PARTS=1.
\set c random(1, 1000)
BEGIN;
INSERT INTO bench_order (customer, sku, qty) VALUES (:c, 'SKU-1', 1);
INSERT INTO message_no_trigger (id, topic, msg_key, payload, header_names, header_values, msg_type, available_at, confirm_within) VALUES (gen_random_uuid(), 'orders', convert_to('key-' || :c, 'UTF8'), convert_to(repeat('x', 200), 'UTF8'), '{}', '{}', NULL, now() + make_interval(secs => 0), NULL);
COMMIT;
