-- outbox-relay: free_expired_leases
-- Frees the shards of relays whose lease ran out.
UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL
WHERE owner IS NOT NULL AND lease_until < now()
