-- outbox-relay: register_relay
-- Records that relay $1 (named $2) is alive; a waiting relay's mark is
-- renewed for $3 seconds with it.
INSERT INTO outbox.relay AS r (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET
    heartbeat_at = now(),
    waiting_until = CASE WHEN r.waiting_until IS NULL THEN NULL
                         ELSE now() + make_interval(secs => $3) END
