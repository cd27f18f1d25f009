"""Applying a batch so that one bad event can neither lose nor stall its neighbours.

A batch is first applied whole, in one transaction. If that fails on an error caused by an event's own
content (``EVENT_ERRORS``: the database refused a value, or deciding its outcome raised), the batch is applied
again in one transaction with a savepoint per event: an event that fails alone is rolled back to its savepoint
and recorded ``invalid`` (ledger, processed_events, a ``processor.dlq`` record), and every other event is
applied as usual, in log order. Any other error (the database is gone, the schema is missing) is not the
event's fault and propagates: the caller retries the whole batch and acknowledges nothing meanwhile.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from pydantic import ValidationError

from processor.allocate import AllocationConfig
from processor.emit import Result, invalid
from processor.store import DEFAULT_SKEW, apply_batch, record_invalid
from schemas import inventory_events
from schemas.inventory_events import AnyInventoryEvent

log = logging.getLogger(__name__)

EVENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.DataError,  # a value the database cannot hold: integer out of range, NUL in text, ...
    psycopg.IntegrityError,  # a constraint the event breaks (a unique race is transient: see below)
    ValueError,  # deciding or serialising the outcome refused the event (pydantic's ValidationError too)
    TypeError,
    ArithmeticError,
    LookupError,
)


def decode_all(
    raw_values: list[bytes],
) -> tuple[list[inventory_events.AnyInventoryEvent], list[tuple[bytes, str]]]:
    """The canonical events of a batch, and the records that are none (with why)."""
    events, undecodable = [], []
    for raw in raw_values:
        try:
            events.append(inventory_events.decode(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()[:3]
            )
            undecodable.append((raw, f"not a canonical inventory event: {problems}"[:1000]))
    return events, undecodable


def _event_error(exc: BaseException) -> bool:
    # Two workers claiming the same id during a rebalance: retried whole by the caller, not isolated.
    return isinstance(exc, EVENT_ERRORS) and not isinstance(exc, UniqueViolation)


def describe(exc: BaseException) -> str:
    """A stable, one-line reason (the same on a replay): the error's class and its first line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    source = "the database refused it" if isinstance(exc, psycopg.Error) else "it could not be applied"
    return f"{source}: {type(exc).__name__}: {first}"[:1000]


async def apply_isolating(
    conn: AsyncConnection,
    events: list[AnyInventoryEvent],
    *,
    skew: timedelta = DEFAULT_SKEW,
    allocation: AllocationConfig | None = None,
) -> list[Result]:
    """Apply `events` in order and commit; one Result per event, ``invalid`` for each event that cannot be
    applied. `conn` must not be inside a transaction. Raises only errors that are not an event's fault."""
    try:
        async with conn.transaction():
            return await apply_batch(conn, events, skew=skew, allocation=allocation)
    except Exception as exc:
        if not _event_error(exc):
            raise
        log.warning(
            "a batch of %d events failed (%s); applying them one by one to isolate the cause",
            len(events),
            describe(exc),
        )
    results: list[Result] = []
    async with conn.transaction():
        for event in events:
            try:
                async with conn.transaction():
                    results += await apply_batch(conn, [event], skew=skew, allocation=allocation)
                continue
            except Exception as exc:
                if not _event_error(exc):
                    raise
                reason = describe(exc)
            log.error(
                "event %s (%s of %s/%s) cannot be applied and is dead-lettered: %s",
                event.event_id,
                event.type,
                event.tenant,
                event.sku,
                reason,
            )
            results.append(await _invalid(conn, event, reason))
    return results


async def _invalid(conn: AsyncConnection, event: AnyInventoryEvent, reason: str) -> Result:
    try:
        async with conn.transaction():
            return await record_invalid(conn, event, reason)
    except Exception as exc:
        if not _event_error(exc):
            raise
        # Not even the ledger can hold it: the dead letter alone keeps it (a redelivery dead-letters again).
        log.error("event %s cannot be recorded in the ledger either: %s", event.event_id, describe(exc))
        return invalid(event, reason)
