-- outbox-relay: count_awaiting
SELECT count(*), count(*) FILTER (WHERE confirm_by < now())
FROM outbox.message WHERE status = 'awaiting'
