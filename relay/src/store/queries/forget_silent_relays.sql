-- outbox-relay: forget_silent_relays
-- Forgets relays not heard from for $1 seconds.
DELETE FROM outbox.relay WHERE heartbeat_at < now() - make_interval(secs => $1)
