-- The fan-out's journal of allocation writes (fanout/journal.py): a write is claimed here before it is sent,
-- so a redelivered stock.allocated record never sends a raise twice (which would show its units twice).
CREATE TABLE allocation_writes (
    connection_id  text        NOT NULL,
    tenant         text        NOT NULL,
    sku            text        NOT NULL,
    seq            bigint      NOT NULL,   -- the highest allocation seq claimed for this listing
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, tenant, sku)
);
