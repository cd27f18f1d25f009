-- Stock receipts, and the tables behind the gateway's admin API and connection management.
--
-- stocksync_apply learns 'stock_received' (units added on top of the master count; a first receipt creates
-- the SKU), and a count now re-applies receipts that happened after its as-of time like sales and restocks.

-- Tenants of the admin API: only a SHA-256 of each bearer token is kept (`stocksync tenants add` prints the
-- token once).
CREATE TABLE tenants (
    id                  text        PRIMARY KEY,
    admin_token_sha256  text        NOT NULL CONSTRAINT tenants_token_is_sha256 CHECK (admin_token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Channel connections managed with `stocksync connections add|import` (the services also read a TOML file).
-- `config` is the whole connection as JSON, secrets included: restrict access to this table accordingly.
CREATE TABLE connections (
    id          text        PRIMARY KEY,
    tenant      text        NOT NULL,
    channel     text        NOT NULL,
    config      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_by_tenant ON connections (tenant);

CREATE OR REPLACE FUNCTION stocksync_apply(
    p_kind           text,         -- order_placed | order_cancelled | stock_received | stock_counted
    p_event_id       text,
    p_tenant         text,
    p_sku            text,
    p_quantity       integer,
    p_occurred_at    timestamptz,
    p_channel        text,
    p_connection_id  text,
    p_sale_event_id  text          -- order_cancelled: the sale being undone
) RETURNS stocksync_applied
LANGUAGE plpgsql AS $$
DECLARE
    r         stocksync_applied;
    cur       inventory%ROWTYPE;
    v_delta   integer;
    v_later   integer;
BEGIN
    INSERT INTO processed_events (event_id, tenant, sku, outcome)
    VALUES (p_event_id, p_tenant, p_sku, 'pending')
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        r.outcome := 'duplicate';
        RETURN r;
    END IF;
    -- Older than the processed_events retention but still in the ledger: a duplicate all the same.
    IF EXISTS (SELECT 1 FROM ledger WHERE event_id = p_event_id) THEN
        UPDATE processed_events SET outcome = 'duplicate' WHERE event_id = p_event_id;
        r.outcome := 'duplicate';
        RETURN r;
    END IF;

    IF p_kind = 'order_placed' THEN
        v_delta := -p_quantity;
        UPDATE inventory
           SET available = available - p_quantity, version = version + 1, updated_at = now()
         WHERE tenant = p_tenant AND sku = p_sku AND available >= p_quantity
           AND (counted_at IS NULL OR counted_at < p_occurred_at)
        RETURNING available + p_quantity, available, version INTO r.before, r.after, r.version;
        IF FOUND THEN
            r.outcome := 'applied';
        ELSE
            SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
            IF NOT FOUND THEN
                r.outcome := 'unknown_sku';
                r.reason := format('SKU %s is not in the master record of tenant %s', p_sku, p_tenant);
            ELSE
                r.before := cur.available; r.after := cur.available; r.version := cur.version;
                IF cur.counted_at >= p_occurred_at THEN
                    r.outcome := 'stale';
                    r.reason := format('sale at %s is already in the count as of %s', p_occurred_at, cur.counted_at);
                ELSE
                    r.outcome := 'rejected';
                    r.reason := format('requested %s, only %s available', p_quantity, cur.available);
                END IF;
            END IF;
        END IF;

    ELSIF p_kind = 'order_cancelled' THEN
        v_delta := p_quantity;
        -- Restock only what a sale actually took: applied directly, or already inside a count (stale).
        IF NOT EXISTS (SELECT 1 FROM ledger
                        WHERE event_id = p_sale_event_id AND outcome IN ('applied', 'stale')) THEN
            SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
            r.before := cur.available; r.after := cur.available; r.version := cur.version;
            r.outcome := 'ignored';
            r.reason := format('sale %s took no stock here (rejected, unknown or not seen): nothing to restock',
                               p_sale_event_id);
        ELSE
            UPDATE inventory
               SET available = available + p_quantity, version = version + 1, updated_at = now()
             WHERE tenant = p_tenant AND sku = p_sku
               AND (counted_at IS NULL OR counted_at < p_occurred_at)
            RETURNING available - p_quantity, available, version INTO r.before, r.after, r.version;
            IF FOUND THEN
                r.outcome := 'applied';
            ELSE
                SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
                r.before := cur.available; r.after := cur.available; r.version := cur.version;
                r.outcome := 'stale';
                r.reason := format('restock at %s is already in the count as of %s', p_occurred_at, cur.counted_at);
            END IF;
        END IF;

    ELSIF p_kind = 'stock_received' THEN
        -- Goods received into the warehouse: added on top; a SKU seen for the first time starts here.
        v_delta := p_quantity;
        INSERT INTO inventory AS i (tenant, sku, available, version)
        VALUES (p_tenant, p_sku, p_quantity, 1)
        ON CONFLICT (tenant, sku) DO UPDATE
           SET available = i.available + EXCLUDED.available, version = i.version + 1, updated_at = now()
         WHERE i.counted_at IS NULL OR i.counted_at < p_occurred_at
        RETURNING available - p_quantity, available, version INTO r.before, r.after, r.version;
        IF FOUND THEN
            r.outcome := 'applied';
        ELSE
            SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
            r.before := cur.available; r.after := cur.available; r.version := cur.version;
            r.outcome := 'stale';
            r.reason := format('receipt at %s is already in the count as of %s', p_occurred_at, cur.counted_at);
        END IF;

    ELSIF p_kind = 'stock_counted' THEN
        SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku FOR UPDATE;
        IF FOUND AND cur.counted_at >= p_occurred_at THEN
            r.before := cur.available; r.after := cur.available; r.version := cur.version;
            r.outcome := 'stale';
            r.reason := format('a newer count (as of %s) is already applied', cur.counted_at);
        ELSE
            -- The count is as of p_occurred_at: changes that happened after it and were applied before it
            -- arrived are not in it, so they are applied again on top of it.
            SELECT COALESCE(sum(delta), 0) INTO v_later FROM ledger
             WHERE tenant = p_tenant AND sku = p_sku AND outcome = 'applied'
               AND kind IN ('order_placed', 'order_cancelled', 'stock_received')
               AND occurred_at > p_occurred_at;
            r.before := cur.available;
            r.after := greatest(0, p_quantity + v_later);
            INSERT INTO inventory AS i (tenant, sku, available, version, counted_at)
            VALUES (p_tenant, p_sku, r.after, 1, p_occurred_at)
            ON CONFLICT (tenant, sku) DO UPDATE
               SET available = EXCLUDED.available, version = i.version + 1,
                   counted_at = EXCLUDED.counted_at, updated_at = now()
            RETURNING version INTO r.version;
            r.outcome := 'applied';
            v_delta := r.after - COALESCE(r.before, 0);
        END IF;

    ELSE
        RAISE EXCEPTION 'stocksync_apply: unknown event kind %', p_kind;
    END IF;

    INSERT INTO ledger (event_id, tenant, sku, kind, delta, absolute, before, after, version, outcome, reason,
                        channel, connection_id, occurred_at)
    VALUES (p_event_id, p_tenant, p_sku, p_kind, v_delta,
            CASE WHEN p_kind = 'stock_counted' THEN p_quantity END,
            r.before, r.after, r.version, r.outcome, r.reason, p_channel, p_connection_id, p_occurred_at);
    UPDATE processed_events SET outcome = r.outcome WHERE event_id = p_event_id;
    RETURN r;
END
$$;
