-- outbox-relay: replay_dead
-- Dead messages back to pending with a fresh budget: those with ids $1,
-- or all when $1 is NULL.
UPDATE outbox.message SET status = 'pending', attempts = 0, available_at = now()
WHERE status = 'dead' AND ($1::uuid[] IS NULL OR id = ANY($1))
