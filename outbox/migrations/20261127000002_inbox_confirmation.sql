-- Idempotent consumers and end-to-end confirmation.

-- Message ids a consumer has processed. The row is inserted in the same
-- transaction as the consumer's effect, so a redelivered message finds it
-- and is skipped: the effect happens once.
CREATE TABLE outbox.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_received_at ON outbox.inbox (received_at);

-- Messages a consumer could not process (malformed, unknown type, or
-- rejected by its handler), parked so the consumer can move on.
CREATE TABLE outbox.parked (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint     NOT NULL,
    message_id  uuid,
    msg_key     bytea,
    payload     bytea,
    error       text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);

-- End-to-end confirmation: a message enqueued with a confirmation timeout
-- becomes 'awaiting' once published, 'completed' when the reply arrives,
-- and is sent again by the sweeper if the reply is overdue.
ALTER TABLE outbox.message
    ADD COLUMN confirm_within interval,
    ADD COLUMN confirm_by     timestamptz,
    ADD COLUMN completed_at   timestamptz,
    ADD COLUMN resends        integer NOT NULL DEFAULT 0;
ALTER TABLE outbox.message DROP CONSTRAINT message_status_check;
ALTER TABLE outbox.message ADD CONSTRAINT message_status_check
    CHECK (status IN ('pending', 'published', 'awaiting', 'completed', 'dead'));
CREATE INDEX message_awaiting ON outbox.message (confirm_by) WHERE status = 'awaiting';

-- Retention now covers completed messages too.
DROP INDEX outbox.message_published_at;
CREATE INDEX message_done_at ON outbox.message (published_at)
    WHERE status IN ('published', 'completed');
