-- outbox-relay: heartbeat
-- Records that relay $1 is alive without registering it again; a waiting
-- relay's mark is renewed for $2 seconds with it.
UPDATE outbox.relay SET
    heartbeat_at = now(),
    waiting_until = CASE WHEN waiting_until IS NULL THEN NULL
                         ELSE now() + make_interval(secs => $2) END
WHERE id = $1
