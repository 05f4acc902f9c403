-- outbox-relay: count_dead
SELECT count(*) FROM outbox.message WHERE status = 'dead'
