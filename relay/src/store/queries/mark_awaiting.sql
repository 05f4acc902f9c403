-- outbox-relay: mark_awaiting
-- The acknowledged messages $1 that wait for a confirmation.
UPDATE outbox.message SET
    status = 'awaiting',
    confirm_by = now() + confirm_within,
    published_at = now(),
    last_error = NULL
WHERE seq = ANY($1) AND status = 'pending' AND confirm_within IS NOT NULL
