CREATE TABLE orders (
    id          uuid        PRIMARY KEY,
    customer    text        NOT NULL,
    items       jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'PENDING'
                CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    reason      text,
    -- The OrderPlaced message, confirmed when inventory's reply arrives.
    message_id  uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz
);
