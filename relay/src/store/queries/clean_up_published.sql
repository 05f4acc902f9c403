-- outbox-relay: clean_up_published
-- At most $2 published or completed messages older than $1 seconds.
DELETE FROM outbox.message WHERE seq IN (
    SELECT seq FROM outbox.message
    WHERE status IN ('published', 'completed')
      AND published_at < now() - make_interval(secs => $1)
    LIMIT $2)
