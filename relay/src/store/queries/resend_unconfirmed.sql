-- outbox-relay: resend_unconfirmed
-- Sends overdue messages again, ahead of their key as its oldest.
UPDATE outbox.message SET
    status = 'pending',
    resends = resends + 1,
    confirm_by = NULL,
    available_at = now()
WHERE status = 'awaiting' AND confirm_by < now()
