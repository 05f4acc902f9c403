-- outbox-relay: record_failures
-- One failed attempt per (seq $1, error $2, retry in $3 seconds, dead $4).
UPDATE outbox.message m SET
    attempts = m.attempts + 1,
    last_error = f.error,
    available_at = now() + make_interval(secs => f.delay),
    status = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[])
     AS f(seq, error, delay, dead)
WHERE m.seq = f.seq AND m.status = 'pending'
