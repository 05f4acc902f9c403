-- outbox-relay: give_back_shards
-- Relay $1 gives back the shards $2.
UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL
WHERE owner = $1 AND shard = ANY($2)
