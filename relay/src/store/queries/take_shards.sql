-- outbox-relay: take_shards
-- Relay $1 takes up to $3 free or expired shards for $2 seconds; SKIP
-- LOCKED so two relays taking at once never wait on each other.
UPDATE outbox.shard_lease SET
    owner = $1,
    lease_until = now() + make_interval(secs => $2)
WHERE shard IN (
    SELECT shard FROM outbox.shard_lease
    WHERE owner IS NULL OR lease_until < now()
    ORDER BY shard
    LIMIT $3
    FOR UPDATE SKIP LOCKED)
RETURNING shard
