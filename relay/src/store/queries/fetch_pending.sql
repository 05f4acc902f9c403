-- outbox-relay: fetch_pending
-- Up to $2 pending messages of the shards in the bit mask $1 that may be
-- published now, in seq order, after seq $5, leaving out the seqs $3 and
-- the keys $4. See RelayStore::fetch_pending for why it is written so.
WITH delayed AS MATERIALIZED (
    SELECT DISTINCT ON (msg_key) msg_key, seq AS from_seq
    FROM outbox.message
    WHERE status = 'pending' AND available_at > created_at
      AND msg_key IS NOT NULL
    ORDER BY msg_key, seq)
SELECT c.seq, c.id, c.topic, c.msg_key, c.payload, c.header_names,
       c.header_values, c.msg_type, c.created_at, c.attempts
FROM outbox.message c
WHERE c.status = 'pending' AND get_bit($1, c.shard) = 1
  AND c.available_at - now() <= interval '0'
  AND NOT EXISTS (
      SELECT 1 FROM delayed d
      WHERE d.msg_key = c.msg_key AND d.from_seq < c.seq)
  AND c.seq > $5
  AND c.seq <> ALL($3)
  AND (c.msg_key IS NULL OR c.msg_key <> ALL($4))
ORDER BY c.seq
LIMIT $2
