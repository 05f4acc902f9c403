-- A cheaper row: index the id only where it is looked up.
--
-- The id is looked up in one place: `outbox::confirm`, completing a message
-- that was enqueued with a confirmation timeout (`confirm_within` set). The
-- unique index over every row made each insert maintain a second B-tree
-- for lookups that never happen for the usual message. Uniqueness itself
-- needs no index: the library generates every id (UUIDv7, 74 random bits
-- per millisecond), the relay never looks a message up by id to publish
-- it, and consumers de-duplicate by id whatever the table holds.
--
-- Building the partial index reads the whole table once while holding off
-- writers; run it when the outbox holds little (docs/deploy.md, "Upgrading
-- the schema").
ALTER TABLE outbox.message DROP CONSTRAINT message_id_key;
CREATE UNIQUE INDEX message_confirm_id ON outbox.message (id)
    WHERE confirm_within IS NOT NULL;
