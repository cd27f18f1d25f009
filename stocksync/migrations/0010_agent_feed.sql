-- The availability feed for AI shopping agents (issue 16; `stocksync feed`, cli/feed.py).

-- Per tenant, the most units agents may see at which a SKU is `limited_stock` (allocation/thresholds.py);
-- a tenant with no row uses allocation.availability.LIMITED_AT.
CREATE TABLE agent_thresholds (
    tenant      text        PRIMARY KEY,
    limited_at  integer     NOT NULL CHECK (limited_at >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The status each SKU had in the last export of a tenant's feed in a format that wrote it: a delta export
-- writes only the SKUs whose status differs from this. Written in the transaction that read the statuses;
-- a SKU gone from the master record loses its row.
CREATE TABLE feed_state (
    tenant       text        NOT NULL,
    format       text        NOT NULL,
    sku          text        NOT NULL,
    status       text        NOT NULL,
    exported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, format, sku)
);
