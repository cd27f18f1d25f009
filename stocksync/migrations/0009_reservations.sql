-- Holds of agent checkouts (issue 16). The processor writes a row in the batch that decides each step (hold,
-- commit, release, expiry), under the lock of the SKU's master row; the gateway reads it to answer, and the
-- processor's sweep finds the holds past their expiry here. The ledger keeps every step; this is the state.
CREATE TABLE reservations (
    tenant          text        NOT NULL,
    reservation_id  text        NOT NULL,
    sku             text        NOT NULL,
    quantity        integer     NOT NULL CHECK (quantity > 0),
    state           text        NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    expires_at      timestamptz NOT NULL,
    connection_id   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, reservation_id)
);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE state = 'held';
