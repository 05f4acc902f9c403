-- The outbox schema. Everything lives in the `outbox` schema so it never
-- collides with the application's own tables or its own sqlx migration
-- history (ours is recorded in outbox._sqlx_migrations).

-- One row per message a service owes the broker, written in the service's
-- own transaction.
CREATE TABLE outbox.message (
    -- Insertion order; the relay publishes messages of one key in this order.
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Public, time-ordered id (UUIDv7), carried in the `outbox-id` header.
    id            uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    -- Kafka record key and ordering key. NULL: no ordering promise.
    msg_key       bytea,
    -- NULL is a Kafka tombstone (for compacted topics).
    payload       bytea,
    header_names  text[]      NOT NULL DEFAULT '{}',
    header_values bytea[]     NOT NULL DEFAULT '{}',
    msg_type      text,
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'published', 'dead')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Not before: the enqueue delay, later the retry backoff.
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    published_at  timestamptz,
    -- Relays own shards, not rows: a key always maps to the same shard, so
    -- exactly one relay publishes a given key at a time.
    shard         smallint    NOT NULL GENERATED ALWAYS AS
                  (get_byte(sha256(COALESCE(msg_key, uuid_send(id))), 0)) STORED,
    CHECK (cardinality(header_names) = cardinality(header_values))
);

-- The relay's scan: oldest pending first.
CREATE INDEX message_pending_seq ON outbox.message (seq) WHERE status = 'pending';
-- Messages told to wait (a delay, or a retry's backoff): the keys they
-- block. A message that was never delayed has available_at = created_at
-- (both the transaction's now()), so this index stays as small as the set
-- of waiting messages, whatever the backlog.
CREATE INDEX message_waiting ON outbox.message (msg_key, seq)
    WHERE status = 'pending' AND available_at > created_at;
-- Retention cleanup of published messages.
CREATE INDEX message_published_at ON outbox.message (published_at) WHERE status = 'published';
-- Visibility of dead letters.
CREATE INDEX message_dead_seq ON outbox.message (seq) WHERE status = 'dead';

-- Shard leases: a relay publishes only the messages of shards it holds.
-- A lease that is not renewed expires and the shard goes to another relay.
CREATE TABLE outbox.shard_lease (
    shard       smallint    PRIMARY KEY CHECK (shard BETWEEN 0 AND 255),
    owner       uuid,
    lease_until timestamptz
);
INSERT INTO outbox.shard_lease (shard) SELECT g FROM generate_series(0, 255) AS g;

-- Live relays, so each can take its fair share of shards.
CREATE TABLE outbox.relay (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Wake relays at commit time. Statement-level, and PostgreSQL folds
-- identical notifications of one transaction, so a batch insert costs one.
CREATE FUNCTION outbox.notify_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_message', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER message_notify AFTER INSERT ON outbox.message
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_message();
