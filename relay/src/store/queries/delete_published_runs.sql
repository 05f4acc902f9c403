-- outbox-relay: delete_published_runs
-- Deletes the acknowledged messages that need no confirmation, given as
-- runs of consecutive seqs $1[i] ..= $2[i]: one index range scan a run,
-- where `delete_published` descends the index once a message.
DELETE FROM outbox.message m
USING unnest($1::bigint[], $2::bigint[]) AS r(lo, hi)
WHERE m.seq BETWEEN r.lo AND r.hi
  AND m.status = 'pending' AND m.confirm_within IS NULL
