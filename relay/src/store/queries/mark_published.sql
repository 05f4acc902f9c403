-- outbox-relay: mark_published
-- Keeps the acknowledged messages $1 as published (until retention), or
-- as awaiting their confirmation.
UPDATE outbox.message SET
    status = CASE WHEN confirm_within IS NULL THEN 'published' ELSE 'awaiting' END,
    confirm_by = now() + confirm_within,
    published_at = now(),
    last_error = NULL
WHERE seq = ANY($1) AND status = 'pending'
