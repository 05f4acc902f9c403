-- outbox-relay: dead_letter_unconfirmed
-- Gives up on overdue messages already re-sent $1 times.
UPDATE outbox.message SET
    status = 'dead',
    last_error = format('no confirmation after %s re-sends', resends)
WHERE status = 'awaiting' AND confirm_by < now() AND resends >= $1
