-- outbox-relay: set_waiting
-- Marks relay $1 as waiting for work for $2 seconds, or as busy ($2 NULL).
UPDATE outbox.relay SET waiting_until = now() + make_interval(secs => $2)
WHERE id = $1
