"""Drift classification, decided without I/O: given what the master holds, what the channel shows (now and
before the backfill was published) and the connection's settings, each SKU's drift, cause and correction.

The correction is always the master's allowance (master wins); in a dry run the allowance assumes the
backfill that run would have published, and the action says what would be done.

For a SKU under allocation (policy never_cancel) the allowance is the connection's grant, not the count:
the grant bounds what the channel shows plus its sales the master has not heard of, and the backfill that
runs first has just told the master every order up to now, so setting the channel to its grant is exact
(the settlement an absolute write cannot make on its own, allocation/rules.py). This is also what brings
back a grant whose write the fan-out had to dead-letter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from channels.connection import Connection, channel_quantity
from reconciler.report import (
    EDITED_ON_CHANNEL,
    FANOUT_FIXED,
    MISSED_ORDER,
    NOT_LISTED,
    SKIPPED_NOT_LISTED,
    UNKNOWN,
    WOULD_CORRECT,
    Drift,
)


@dataclass(frozen=True)
class MasterRow:
    """What the master says about one SKU (reconciler/store.py reads it)."""

    sku: str
    available: int
    version: int
    updated_at: datetime
    paused: bool  # the newest decision about the SKU was a refused sale (fan-out shows 0 until it changes)
    granted: dict[str, int] | None = None  # never_cancel: each connection's grant; None: mirrored


@dataclass(frozen=True)
class Rules:
    """The run's view: when it started, how long the fan-out may take, pausing, dry run."""

    started_at: datetime
    fanout_grace: timedelta
    pause_on_rejection: bool
    dry_run: bool


def expected(row: MasterRow, conn: Connection, rules: Rules, learning: int | None) -> tuple[int, int]:
    """(the master's count to compare with, what the connection should show); `learning` is the net sold
    this run learns about the SKU (None: nothing)."""
    available = row.available
    if row.granted is not None:
        # the grant as the processor holds it now (a dry run does not move grants by the orders it learns)
        return available, row.granted.get(conn.id, 0)
    if rules.dry_run and learning is not None:
        available = max(0, available - learning)  # as if the backfill were applied
    paused = row.paused and rules.pause_on_rejection and not (rules.dry_run and learning is not None)
    shows = (
        0 if paused else channel_quantity(available, buffer=conn.safety_buffer, allocation=conn.allocation)
    )
    return available, shows


def classify(
    conn: Connection,
    skus: list[str],
    shows: Mapping[str, int],
    master: Mapping[str, MasterRow],
    rules: Rules,
    *,
    learned: Mapping[str, int],
    shown_before: Mapping[str, int],
) -> list[Drift]:
    """The drifts of `skus` on `conn`; `learned`: net sold per SKU of the connection's tenant that this run
    backfills (from any connection). A SKU the master does not hold is skipped: nothing says what to show."""
    drifts: list[Drift] = []
    for sku in skus:
        row = master.get(sku)
        if row is None:
            continue
        learning = learned.get(sku)
        available, allowed = expected(row, conn, rules, learning)
        value = shows.get(sku)
        if value == allowed:
            before = shown_before.get(sku)
            if learning is not None and before is not None and before != allowed:
                # Wrong before the run; right now because the fan-out delivered the backfilled change.
                drifts.append(Drift(sku, before, allowed, available, row.version, MISSED_ORDER, FANOUT_FIXED))
            continue
        if value is None:
            cause = NOT_LISTED
        elif learning is not None:
            cause = MISSED_ORDER
        elif rules.started_at - row.updated_at > rules.fanout_grace:
            cause = EDITED_ON_CHANNEL
        else:
            cause = UNKNOWN  # the master changed moments ago: the fan-out may still be on its way
        action = SKIPPED_NOT_LISTED if value is None else (WOULD_CORRECT if rules.dry_run else "")
        drifts.append(Drift(sku, value, allowed, available, row.version, cause, action))
    return drifts
