-- Notify only while a relay waits for work.
--
-- pg_notify takes a database-wide lock when the notifying transaction
-- commits and holds it until the commit record is flushed, so transactions
-- that notify commit one at a time: with the trigger notifying on every
-- insert, 16 writers committed at about a third of their rate without it.
-- A relay that is busy publishing does not need waking, so it marks itself
-- waiting only when it runs out of work (and unmarks itself when it falls
-- behind); only then do inserts notify. The mark lasts one shard lease and
-- is renewed with it, so a relay killed while waiting stops costing
-- writers a notification each within a lease.
ALTER TABLE outbox.relay ADD COLUMN waiting_until timestamptz;

CREATE OR REPLACE FUNCTION outbox.notify_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox.relay WHERE waiting_until > now()) THEN
        PERFORM pg_notify('outbox_message', '');
    END IF;
    RETURN NULL;
END
$$;
