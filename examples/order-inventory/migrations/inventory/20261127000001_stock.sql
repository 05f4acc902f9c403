CREATE TABLE stock (
    sku       text    PRIMARY KEY,
    available integer NOT NULL CHECK (available >= 0)
);

-- One row per order this service decided on: the proof that each order
-- touched stock at most once.
CREATE TABLE reservation (
    order_id   uuid        PRIMARY KEY,
    items      jsonb       NOT NULL,
    status     text        NOT NULL CHECK (status IN ('RESERVED', 'REJECTED')),
    decided_at timestamptz NOT NULL DEFAULT now()
);
