-- outbox-relay: clean_up_inbox
-- At most $2 inbox entries older than $1 seconds.
DELETE FROM outbox.inbox WHERE (consumer, message_id) IN (
    SELECT consumer, message_id FROM outbox.inbox
    WHERE received_at < now() - make_interval(secs => $1)
    LIMIT $2)
