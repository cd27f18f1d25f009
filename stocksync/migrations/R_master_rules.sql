-- The master record's rules as one SQL call per inventory event: stocksync_apply. Since issue 15 the processor
-- no longer calls it: processor/rules.py decides a whole batch in one pure function and processor/store.py
-- reads and writes in a handful of set-based statements. This definition is kept as the oracle that
-- tests/integration/test_apply_equivalence.py runs beside the batch apply on random streams (identical
-- outcomes, ledgers, master rows and idempotency rows required); change a rule in both places or that test
-- fails. A repeatable migration (stocksync/db.py): re-applied, after every versioned migration, whenever this
-- file's checksum changes. The versioned files 0002, 0003 and 0005 hold earlier definitions, kept as history.
--
-- Per event: claim the id in processed_events (ON CONFLICT DO NOTHING: a claimed id is a duplicate and
-- changes nothing), apply the change with a conditional UPDATE (a sale only where available >= quantity,
-- so a count can never go negative), bump the SKU's version and append exactly one ledger row.
--
-- Sales against counts, when the timestamps cannot tell the order: a count says "N units as of time C"; a
-- sale stamped before C is inside that count (recorded 'stale', not applied again), one after it is not.
-- A channel's timestamp may be truncated to whole seconds (Shopify's created_at: the sale happened in
-- [t, t + 1 s)) and clocks disagree by up to p_skew. A sale is taken as already counted only when it surely
-- happened before the count: occurred_at + precision + p_skew <= C, where precision is 1 s for a stamp with
-- no sub-second part and 0 otherwise. Anything closer is applied on top of the count (and, when the count
-- arrives after the sale, subtracted from it again): the error, if any, is one unit too few on the shelf,
-- never a unit sold twice. Restocks and receipts keep the strict rule (stamped after C: applied); a stamp
-- truncated to the second only moves it earlier, so they cannot add what the count already holds.

DROP FUNCTION IF EXISTS stocksync_apply(text, text, text, text, integer, timestamptz, text, text, text);

-- How much later than its stamp an event may have happened: 1 s for a stamp truncated to whole seconds.
CREATE OR REPLACE FUNCTION stocksync_precision(t timestamptz) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN date_trunc('second', t) = t THEN interval '1 second' ELSE interval '0' END
$$;

CREATE OR REPLACE FUNCTION stocksync_apply(
    p_kind           text,         -- order_placed | order_cancelled | stock_received | stock_counted
                                   -- | stock_observed
    p_event_id       text,
    p_tenant         text,
    p_sku            text,
    p_quantity       integer,
    p_occurred_at    timestamptz,
    p_channel        text,
    p_connection_id  text,
    p_sale_event_id  text,         -- order_cancelled: the sale being undone
    p_skew           interval      -- clock skew tolerated between a channel and the counting system
) RETURNS stocksync_applied
LANGUAGE plpgsql AS $$
DECLARE
    r         stocksync_applied;
    cur       inventory%ROWTYPE;
    v_delta   integer;
    v_later   integer;
    v_sold    integer;
    v_back    integer;
    v_qty     integer;
    v_window  interval := p_skew + stocksync_precision(p_occurred_at);
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
           AND (counted_at IS NULL OR counted_at < p_occurred_at + v_window)
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
                IF cur.counted_at >= p_occurred_at + v_window THEN
                    r.outcome := 'stale';
                    r.reason := format('sale at %s is already in the count as of %s', p_occurred_at, cur.counted_at);
                ELSE
                    r.outcome := 'rejected';
                    r.reason := format('requested %s, only %s available', p_quantity, cur.available);
                END IF;
            END IF;
        END IF;

    ELSIF p_kind = 'order_cancelled' THEN
        -- Restock only what a sale actually took (applied directly, or already inside a count: stale), less
        -- what earlier restocks of the same sale returned.
        SELECT -delta INTO v_sold FROM ledger
         WHERE event_id = p_sale_event_id AND kind = 'order_placed' AND outcome IN ('applied', 'stale');
        SELECT COALESCE(sum(delta), 0) INTO v_back FROM ledger
         WHERE sale_event_id = p_sale_event_id AND kind = 'order_cancelled' AND outcome IN ('applied', 'stale');
        v_qty := least(p_quantity, COALESCE(v_sold, 0) - v_back);
        v_delta := greatest(v_qty, 0);
        IF v_sold IS NULL OR v_qty <= 0 THEN
            SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
            r.before := cur.available; r.after := cur.available; r.version := cur.version;
            r.outcome := 'ignored';
            r.reason := CASE WHEN v_sold IS NULL
                THEN format('sale %s took no stock here (rejected, unknown or not seen): nothing to restock',
                            p_sale_event_id)
                ELSE format('the %s units sale %s took are already restocked', v_sold, p_sale_event_id) END;
        ELSE
            UPDATE inventory
               SET available = available + v_qty, version = version + 1, updated_at = now()
             WHERE tenant = p_tenant AND sku = p_sku
               AND (counted_at IS NULL OR counted_at < p_occurred_at)
            RETURNING available - v_qty, available, version INTO r.before, r.after, r.version;
            IF FOUND THEN
                r.outcome := 'applied';
                IF v_qty < p_quantity THEN
                    r.reason := format('restocked %s of %s: sale %s took %s, %s of them already restocked',
                                       v_qty, p_quantity, p_sale_event_id, v_sold, v_back);
                END IF;
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
            -- A sale that may have happened after the count (the rule above) is taken as not in it.
            SELECT COALESCE(sum(delta), 0) INTO v_later FROM ledger
             WHERE tenant = p_tenant AND sku = p_sku AND outcome = 'applied'
               AND CASE WHEN kind = 'order_placed'
                        THEN occurred_at + p_skew + stocksync_precision(occurred_at) > p_occurred_at
                        ELSE kind IN ('order_cancelled', 'stock_received') AND occurred_at > p_occurred_at
                   END;
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

    ELSIF p_kind = 'stock_observed' THEN
        -- A drift signal: recorded beside the master's count, which does not change.
        v_delta := 0;
        SELECT * INTO cur FROM inventory WHERE tenant = p_tenant AND sku = p_sku;
        r.before := cur.available; r.after := cur.available; r.version := cur.version;
        r.outcome := 'observed';
        r.reason := CASE WHEN cur.available IS NULL
            THEN format('%s shows %s of a SKU the master does not know', p_channel, p_quantity)
            ELSE format('%s shows %s; the master has %s', p_channel, p_quantity, cur.available) END;

    ELSE
        RAISE EXCEPTION 'stocksync_apply: unknown event kind %', p_kind;
    END IF;

    INSERT INTO ledger (event_id, tenant, sku, kind, delta, absolute, before, after, version, outcome, reason,
                        channel, connection_id, occurred_at, sale_event_id)
    VALUES (p_event_id, p_tenant, p_sku, p_kind, v_delta,
            CASE WHEN p_kind IN ('stock_counted', 'stock_observed') THEN p_quantity END,
            r.before, r.after, r.version, r.outcome, r.reason, p_channel, p_connection_id, p_occurred_at,
            p_sale_event_id);
    UPDATE processed_events SET outcome = r.outcome WHERE event_id = p_event_id;
    RETURN r;
END
$$;
