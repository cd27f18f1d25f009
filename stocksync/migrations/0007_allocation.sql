-- Escrow allocation (allocation/rules.py): per tenant and SKU, what each connection may still sell, kept
-- beside the master record and changed in the same transaction as the events that move it
-- (processor/allocate.py). Invariant under policy never_cancel: sum(granted) <= inventory.available.

-- Policy per tenant (sku = '') or per SKU (overrides the tenant's). No row: never_cancel, no buffer.
CREATE TABLE allocation_policies (
    tenant      text        NOT NULL,
    sku         text        NOT NULL DEFAULT '',
    policy      text        NOT NULL CHECK (policy IN ('never_cancel', 'mirror')),
    buffer      integer     NOT NULL DEFAULT 0 CHECK (buffer >= 0),   -- units shown on no channel
    spread      real        NOT NULL DEFAULT 0.5 CHECK (spread > 0 AND spread <= 1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, sku)
);

-- One row per (tenant, SKU, connection) that ever held a grant.
CREATE TABLE allocations (
    tenant         text             NOT NULL,
    sku            text             NOT NULL,
    connection_id  text             NOT NULL,
    channel        text             NOT NULL,
    granted        integer          NOT NULL DEFAULT 0 CHECK (granted >= 0),
    velocity       double precision NOT NULL DEFAULT 0,   -- recent units sold, decaying (allocation.decay)
    sold_at        timestamptz,                           -- when velocity was last updated
    seq            bigint           NOT NULL DEFAULT 0,   -- the SKU's allocation sequence at the last change
    updated_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, sku, connection_id)
);

-- The audit trail of grants: one row per connection whose grant or write changed, with why.
CREATE TABLE allocation_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text        NOT NULL,
    sku             text        NOT NULL,
    connection_id   text        NOT NULL,
    channel         text        NOT NULL,
    seq             bigint      NOT NULL,
    event_id        text,            -- the last event of the batch that made the change
    available       integer,         -- the master count it was decided on
    granted_before  integer     NOT NULL,
    granted_after   integer     NOT NULL,
    write_quantity  integer,         -- what the connection was asked to show (NULL: no write)
    write_expect    integer,         -- compare-and-set base (NULL: an absolute write)
    reason          text        NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX allocation_log_sku ON allocation_log (tenant, sku, id);

-- The stock.allocated record a batch emitted for a SKU, kept with the batch's last event of that SKU so that
-- a redelivered batch re-emits it unchanged (as processed_events.result does for stock.changed).
ALTER TABLE processed_events ADD COLUMN allotment bytea;
