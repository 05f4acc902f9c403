-- outbox-relay: count_completed
SELECT count(*) FROM outbox.message WHERE status = 'completed'
