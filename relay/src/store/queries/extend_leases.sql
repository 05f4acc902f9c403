-- outbox-relay: extend_leases
-- Extends every lease relay $1 holds by $2 seconds; returns their shards.
UPDATE outbox.shard_lease SET lease_until = now() + make_interval(secs => $2)
WHERE owner = $1
RETURNING shard
