-- outbox-relay: delete_published
-- Deletes the acknowledged messages $1 that need no confirmation.
DELETE FROM outbox.message
WHERE seq = ANY($1) AND status = 'pending' AND confirm_within IS NULL
