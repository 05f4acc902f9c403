-- outbox-relay: release_leases
-- Relay $1 gives back every shard it holds.
UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL
WHERE owner = $1
