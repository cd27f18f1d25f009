-- The reconciler's state: how far each connection's order list has been backfilled, and a record of runs.

-- Orders created or changed before `listed_until` were listed and their events acknowledged by Kafka; the
-- next run lists from there (less a small overlap: order lists are eventually consistent, and a re-listed
-- order is a duplicate in the processor).
CREATE TABLE reconcile_checkpoints (
    connection_id  text        PRIMARY KEY,
    listed_until   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per reconcile run (dry runs too): when, what it found, whether it finished; the JSON report's
-- totals, so `stocksync reconcile` runs can be compared without the report files.
CREATE TABLE reconcile_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       text        NOT NULL UNIQUE,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    dry_run      boolean     NOT NULL,
    ok           boolean     NOT NULL,
    totals       jsonb       NOT NULL
);
CREATE INDEX reconcile_runs_started_at ON reconcile_runs (started_at);
