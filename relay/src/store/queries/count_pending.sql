-- outbox-relay: count_pending
SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
FROM outbox.message WHERE status = 'pending'
