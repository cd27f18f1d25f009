-- Master record, idempotency store and audit ledger.

CREATE TABLE inventory (
    tenant      text        NOT NULL,
    sku         text        NOT NULL,
    available   integer     NOT NULL CONSTRAINT inventory_never_negative CHECK (available >= 0),
    version     bigint      NOT NULL DEFAULT 0,
    counted_at  timestamptz,  -- as-of time of the latest applied absolute count
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, sku)
);

-- One row per event ever handled: the idempotency key, and the result to re-emit on redelivery.
CREATE TABLE processed_events (
    event_id      text        PRIMARY KEY,
    tenant        text        NOT NULL,
    sku           text        NOT NULL,
    outcome       text        NOT NULL,
    result_topic  text,
    result        jsonb,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_processed_at ON processed_events (processed_at);

-- Append-only audit trail: answers "why is SKU X at 7?". Exactly one row per handled event.
CREATE TABLE ledger (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       text        NOT NULL CONSTRAINT ledger_one_row_per_event UNIQUE,
    tenant         text        NOT NULL,
    sku            text        NOT NULL,
    kind           text        NOT NULL,
    delta          integer,
    absolute       integer,
    before         integer,
    after          integer,
    version        bigint,
    outcome        text        NOT NULL,
    reason         text,
    channel        text,
    connection_id  text,
    occurred_at    timestamptz NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_by_sku ON ledger (tenant, sku, id);
