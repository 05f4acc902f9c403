-- outbox-relay: count_live_relays
-- Relays heard from within the last lease ($1 seconds).
SELECT count(*) FROM outbox.relay
WHERE heartbeat_at > now() - make_interval(secs => $1)
