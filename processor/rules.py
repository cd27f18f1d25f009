"""The master rules, in one pure function: what every event of a batch does to the master record.

``decide_batch`` takes a batch in log order, the master rows it touches (read and locked by processor.store
in the batch's transaction) and what the database already knows about the batch (``Known``: which ids were
handled before, what earlier sales took and their cancellations returned, the changes a count may have to
re-apply), and returns one ``Decided`` per event, the ledger rows, the master rows to write and the
idempotency rows to insert. No I/O: processor.store reads before and writes after, a handful of statements
per batch. Every rule is here and nowhere else; stocksync_apply (stocksync/migrations/R_master_rules.sql),
which applied them one event per SQL call until issue 15, is kept only as the oracle that
tests/integration/test_apply_equivalence.py compares this function with, outcome by outcome, ledger row by
ledger row.

The rules, per event:

- **Idempotency.** An id handled before (in processed_events, or only in the ledger after the retention
  pruned its processed_events row) or earlier in the same batch is a ``duplicate`` and changes nothing. One
  only in the ledger gets its processed_events row back, marked ``duplicate``.
- **order_placed** takes ``quantity`` only where that many are available: ``applied``, else ``rejected``
  (``unknown_sku`` for a SKU the master does not know): the count never goes below zero.
- **Sales against counts.** A count says "N units as of time C". A sale surely before C is inside it
  (``stale``, not taken again); "surely" allows for the sale stamp's precision (1 s for a stamp with no
  sub-second part: Shopify's created_at is truncated) and the clock skew tolerated (PROCESSOR_CLOCK_SKEW_S):
  ``occurred_at + precision + skew <= C``. Anything closer is applied on top of the count: the error, if
  any, is one unit too few on the shelf, never a unit sold twice.
- **order_cancelled** restocks only what its sale took (applied, or stale: inside a count) less what earlier
  cancellations of the same sale returned (the restock cap); nothing (``ignored``) for a sale that took
  nothing here. A restock stamped at or before the latest count is inside it (``stale``).
- **stock_received** adds on top; a SKU seen for the first time starts here. At or before the latest count:
  ``stale``.
- **stock_counted** sets the count as of its time C, plus the changes applied before it arrived that
  happened after C (by the sales rule above for sales, strictly after C for restocks and receipts). A count
  older than the latest applied one is ``stale``. A SKU seen for the first time starts here.
- **stock_observed** (a channel's own count) is recorded (``observed``); the master does not change.
- **reservation_held** (an agent checkout's hold, issue 16) takes ``quantity`` like a sale, but only from
  what an agent may hold (allocation.availability: under never_cancel the slack no marketplace was granted,
  with the grants moved by the batch's own sales and cancellations as processor.allocate moves them): else
  ``rejected``. Never ``stale``: a hold is stamped by the gateway as it arrives and applied on top of any
  count (at worst a unit too few on the shelf). The reservation is then ``held`` until its ``expires_at``.
- **reservation_committed** turns a ``held`` reservation into a sale (``applied``; the count does not move
  again, its units left at the hold); ``rejected`` when stamped at or after the hold's expiry, or once the
  hold was released or expired, or for a reservation never held.
- **reservation_released** (by the agent, or ``expired`` by the processor's sweep) gives a ``held``
  reservation's units back (``applied``; ``stale`` when stamped at or before the latest count, like a
  restock) and ends it; nothing (``ignored``) for a committed, ended or unknown one. The quantity is always
  the hold's, whatever the event says. Commit and release name the hold's id as ``sale_event_id`` in the
  ledger.

Every applied change bumps the SKU's version by one; every event gets exactly one ledger row (a duplicate
none), in log order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from allocation.availability import agent_visible
from allocation.rules import Policy, after_cancellation, after_sale
from processor.emit import Decision, Outcome
from schemas.inventory_events import (
    AnyInventoryEvent,
    OrderCancelled,
    OrderPlaced,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    StockCounted,
    StockObserved,
    StockReceived,
    reservation_event_id,
)

__all__ = [
    "Decided",
    "Known",
    "LedgerRow",
    "Master",
    "Movement",
    "Outcome",
    "Reservation",
    "Spend",
    "Verdict",
    "count_window",
    "decide_batch",
    "pg_text",
    "precision",
]

Key = tuple[str, str]  # (tenant, sku)

RESTOCKING = ("order_cancelled", "stock_received", "reservation_released")
TAKING = ("order_placed", "reservation_held")  # kinds a count treats by the sales rule
MOVING = TAKING + RESTOCKING  # the ledger kinds a count may have to re-apply
ABSOLUTE = ("stock_counted", "stock_observed")  # kinds whose quantity is a count: the ledger's absolute
SOLD = ("applied", "rejected", "stale")  # a sale the channel took, whatever the master decided


@dataclass
class Master:
    """One SKU's master row as the batch sees it: as read (``existed``) and as its events leave it."""

    available: int
    version: int
    counted_at: datetime | None = None
    existed: bool = True
    changed: bool = False


class Movement(NamedTuple):
    """An applied change a later count may have to re-apply: its kind, delta and time."""

    kind: str
    delta: int
    occurred_at: datetime


@dataclass
class Reservation:
    """One agent hold as the batch sees it (table ``reservations``)."""

    tenant: str
    sku: str
    quantity: int
    state: str  # held | committed | released | expired
    expires_at: datetime
    connection_id: str | None = None
    existed: bool = True
    changed: bool = False


@dataclass
class Spend:
    """What bounds an agent's holds of one SKU: its policy and buffer, and the marketplace connections'
    grants (connection id -> units) as read before the batch."""

    policy: Policy
    buffer: int = 0
    granted: dict[str, int] = field(default_factory=dict)


@dataclass
class Known:
    """What the database knew before the batch, beyond the master rows (processor.store reads it)."""

    processed: set[str] = field(default_factory=set)
    """Ids with a processed_events row."""
    in_ledger: set[str] = field(default_factory=set)
    """Ids with a ledger row (a superset of what retention left in processed_events, as far as they
    overlap the batch)."""
    sold: dict[str, int] = field(default_factory=dict)
    """Sale id -> units it took (applied or stale), for the sales the batch's cancellations name."""
    returned: dict[str, int] = field(default_factory=dict)
    """Sale id -> units its cancellations already returned (applied or stale)."""
    movements: dict[Key, list[Movement]] = field(default_factory=dict)
    """Per SKU with a count in the batch (every such SKU has a list, maybe empty): the applied sales,
    cancellations and receipts stamped after ``count_window`` before its earliest count, in any order. The
    batch's own applied changes of those SKUs are added as they are decided."""
    reservations: dict[str, Reservation] = field(default_factory=dict)
    """Reservation id -> its row, for the reservations the batch's commits and releases name."""
    spend: dict[Key, Spend] = field(default_factory=dict)
    """Per SKU with a hold in the batch: what bounds an agent's holds."""


class LedgerRow(NamedTuple):
    """One ledger row: the table's columns but its id and applied_at, in LEDGER_COLUMNS' order."""

    event_id: str
    tenant: str
    sku: str
    kind: str
    delta: int | None
    absolute: int | None
    before: int | None
    after: int | None
    version: int | None
    outcome: Outcome
    reason: str | None
    channel: str
    connection_id: str | None
    occurred_at: datetime
    sale_event_id: str | None


LEDGER_COLUMNS = (
    "event_id",
    "tenant",
    "sku",
    "kind",
    "delta",
    "absolute",
    "before",
    "after",
    "version",
    "outcome",
    "reason",
    "channel",
    "connection_id",
    "occurred_at",
    "sale_event_id",
)


@dataclass(frozen=True)
class Decided:
    """What a batch does: a decision per event, ledger rows, the master rows and idempotency rows to write."""

    decisions: list[Decision]
    ledger: list[LedgerRow]
    masters: dict[Key, Master]
    """Every master row the batch touched, as it leaves them (``existed`` / ``changed`` say what to write)."""
    claimed: list[tuple[AnyInventoryEvent, Outcome]]
    """The ids to insert into processed_events, with their outcome, in log order."""
    reservations: dict[str, Reservation] = field(default_factory=dict)
    """Every reservation the batch created or moved (``existed`` / ``changed`` say what to write)."""


class Verdict(NamedTuple):
    """One event's outcome and its ledger figures."""

    outcome: Outcome
    before: int | None = None
    after: int | None = None
    version: int | None = None
    delta: int | None = None
    reason: str | None = None


def precision(t: datetime) -> timedelta:
    """How much later than its stamp an event may have happened: 1 s for a stamp truncated to the second."""
    return timedelta(seconds=1) if t.microsecond == 0 else timedelta(0)


def count_window(skew: timedelta) -> timedelta:
    """How long before a count a sale may be stamped and still not be inside it (precision at most 1 s)."""
    return skew + timedelta(seconds=1)


def pg_text(value: object) -> str:
    """`value` as PostgreSQL's format('%s') writes it (timestamps in UTC, ISO style; NULL as nothing), so a
    reason reads the same as the SQL rules wrote it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        text = utc.strftime("%Y-%m-%d %H:%M:%S")
        if utc.microsecond:
            text += f".{utc.microsecond:06d}".rstrip("0")
        return text + "+00"
    return str(value)


class _Batch:
    """The state a batch threads through its events, in log order."""

    def __init__(self, masters: dict[Key, Master], known: Known, skew: timedelta) -> None:
        self.masters, self.known, self.skew = masters, known, skew
        self.sold = dict(known.sold)
        self.returned = dict(known.returned)
        self.reservations = known.reservations

    def row(self, e: AnyInventoryEvent) -> Master | None:
        return self.masters.get((e.tenant, e.sku))

    @staticmethod
    def bump(m: Master, available: int) -> None:
        m.available, m.version, m.changed = available, m.version + 1, True

    def moved(self, e: AnyInventoryEvent, delta: int) -> None:
        later = self.known.movements.get((e.tenant, e.sku))
        if later is not None:  # a count of this SKU follows in the batch
            later.append(Movement(e.type, delta, e.occurred_at))

    def sale(self, e: OrderPlaced) -> Verdict:
        m, q = self.row(e), e.quantity
        if m is None:
            reason = f"SKU {e.sku} is not in the master record of tenant {e.tenant}"
            return Verdict("unknown_sku", delta=-q, reason=reason)
        window = self.skew + precision(e.occurred_at)
        counted = m.counted_at is not None and m.counted_at >= e.occurred_at + window
        if not counted and m.available >= q:
            before = m.available
            self.bump(m, before - q)
            self.moved(e, -q)
            return Verdict("applied", before, m.available, m.version, -q)
        if counted:
            reason = f"sale at {pg_text(e.occurred_at)} is already in the count as of {pg_text(m.counted_at)}"
            return Verdict("stale", m.available, m.available, m.version, -q, reason)
        reason = f"requested {q}, only {m.available} available"
        return Verdict("rejected", m.available, m.available, m.version, -q, reason)

    def cancellation(self, e: OrderCancelled) -> Verdict:
        m, sale = self.row(e), e.sale_event_id
        sold = self.sold.get(sale)
        back = self.returned.get(sale, 0)
        qty = min(e.quantity, (sold or 0) - back)
        delta = max(qty, 0)
        if sold is None or qty <= 0:
            reason = (
                f"sale {sale} took no stock here (rejected, unknown or not seen): nothing to restock"
                if sold is None
                else f"the {sold} units sale {sale} took are already restocked"
            )
            if m is None:
                return Verdict("ignored", delta=delta, reason=reason)
            return Verdict("ignored", m.available, m.available, m.version, delta, reason)
        if m is not None and (m.counted_at is None or m.counted_at < e.occurred_at):
            before = m.available
            self.bump(m, before + qty)
            self.moved(e, qty)
            self.returned[sale] = back + qty
            partly = (
                f"restocked {qty} of {e.quantity}: sale {sale} took {sold}, {back} of them already restocked"
                if qty < e.quantity
                else None
            )
            return Verdict("applied", before, m.available, m.version, qty, partly)
        self.returned[sale] = back + qty  # inside the count: returned all the same
        counted_at = m.counted_at if m is not None else None
        reason = f"restock at {pg_text(e.occurred_at)} is already in the count as of {pg_text(counted_at)}"
        if m is None:
            return Verdict("stale", delta=delta, reason=reason)
        return Verdict("stale", m.available, m.available, m.version, delta, reason)

    def receipt(self, e: StockReceived) -> Verdict:
        m, q = self.row(e), e.quantity
        if m is None:
            self.masters[(e.tenant, e.sku)] = Master(q, 1, None, existed=False, changed=True)
            self.moved(e, q)
            return Verdict("applied", 0, q, 1, q)
        if m.counted_at is None or m.counted_at < e.occurred_at:
            before = m.available
            self.bump(m, before + q)
            self.moved(e, q)
            return Verdict("applied", before, m.available, m.version, q)
        reason = f"receipt at {pg_text(e.occurred_at)} is already in the count as of {pg_text(m.counted_at)}"
        return Verdict("stale", m.available, m.available, m.version, q, reason)

    def count(self, e: StockCounted) -> Verdict:
        m, at = self.row(e), e.occurred_at
        if m is not None and m.counted_at is not None and m.counted_at >= at:
            reason = f"a newer count (as of {pg_text(m.counted_at)}) is already applied"
            return Verdict("stale", m.available, m.available, m.version, None, reason)
        later = sum(
            mv.delta
            for mv in self.known.movements.get((e.tenant, e.sku), ())
            if (
                mv.occurred_at + self.skew + precision(mv.occurred_at) > at
                if mv.kind in TAKING
                else mv.kind in RESTOCKING and mv.occurred_at > at
            )
        )
        after = max(0, e.quantity + later)
        if m is None:
            m = self.masters[(e.tenant, e.sku)] = Master(after, 1, at, existed=False, changed=True)
            return Verdict("applied", None, after, 1, after)
        before = m.available
        self.bump(m, after)
        m.counted_at = at
        return Verdict("applied", before, after, m.version, after - before)

    def observation(self, e: StockObserved) -> Verdict:
        m = self.row(e)
        if m is None:
            reason = f"{e.channel} shows {e.quantity} of a SKU the master does not know"
            return Verdict("observed", delta=0, reason=reason)
        reason = f"{e.channel} shows {e.quantity}; the master has {m.available}"
        return Verdict("observed", m.available, m.available, m.version, 0, reason)

    def granted(self, e: OrderPlaced | OrderCancelled, outcome: Outcome) -> None:
        """Move a tracked SKU's grants by a sale or cancellation as processor.allocate will (so a later
        hold in the batch sees the slack the allocation step will see)."""
        spend = self.known.spend.get((e.tenant, e.sku))
        if spend is None or e.connection_id not in spend.granted:
            return
        was = spend.granted[e.connection_id]
        if isinstance(e, OrderPlaced) and outcome in SOLD:
            spend.granted[e.connection_id] = after_sale(was, e.quantity)
        elif isinstance(e, OrderCancelled) and outcome == "applied":
            spend.granted[e.connection_id] = after_cancellation(was, e.quantity)

    def hold(self, e: ReservationHeld) -> Verdict:
        m, q = self.row(e), e.quantity
        if m is None:
            reason = f"SKU {e.sku} is not in the master record of tenant {e.tenant}"
            return Verdict("unknown_sku", delta=-q, reason=reason)
        spend = self.known.spend.get((e.tenant, e.sku))
        if spend is None:
            visible = m.available
        else:
            granted = sum(spend.granted.values())
            visible = agent_visible(m.available, policy=spend.policy, buffer=spend.buffer, granted=granted)
        if q > visible:
            reason = f"requested {q}, only {visible} available to agents (the master holds {m.available})"
            return Verdict("rejected", m.available, m.available, m.version, -q, reason)
        before = m.available
        self.bump(m, before - q)
        self.moved(e, -q)
        self.reservations[e.reservation_id] = Reservation(
            e.tenant, e.sku, q, "held", e.expires_at, e.connection_id, existed=False, changed=True
        )
        return Verdict("applied", before, m.available, m.version, -q)

    def commit(self, e: ReservationCommitted) -> Verdict:
        m, r = self.row(e), self.reservations.get(e.reservation_id)
        available, version = (m.available, m.version) if m is not None else (None, None)
        if r is None or r.tenant != e.tenant:
            return Verdict("rejected", available, available, version, 0, f"no hold {e.reservation_id}")
        if r.state != "held":
            reason = f"reservation {e.reservation_id} was {r.state} before this commit"
            return Verdict("rejected", available, available, version, 0, reason)
        if e.occurred_at >= r.expires_at:
            reason = f"reservation {e.reservation_id} expired at {pg_text(r.expires_at)}"
            return Verdict("rejected", available, available, version, 0, reason)
        r.state, r.changed = "committed", True
        return Verdict("applied", available, available, version, 0)

    def release(self, e: ReservationReleased) -> Verdict:
        m, r = self.row(e), self.reservations.get(e.reservation_id)
        available, version = (m.available, m.version) if m is not None else (None, None)
        if r is None or r.tenant != e.tenant or r.state != "held":
            state = "never held" if r is None or r.tenant != e.tenant else r.state
            reason = f"reservation {e.reservation_id} is {state}: nothing to give back"
            return Verdict("ignored", available, available, version, 0, reason)
        r.state, r.changed = e.reason, True
        q = r.quantity
        if m is not None and (m.counted_at is None or m.counted_at < e.occurred_at):
            before = m.available
            self.bump(m, before + q)
            self.moved(e, q)
            return Verdict("applied", before, m.available, m.version, q)
        counted_at = m.counted_at if m is not None else None
        reason = f"release at {pg_text(e.occurred_at)} is already in the count as of {pg_text(counted_at)}"
        return Verdict("stale", available, available, version, q, reason)

    def decide(self, e: AnyInventoryEvent) -> Verdict:
        if isinstance(e, OrderPlaced):
            verdict = self.sale(e)
            if verdict.outcome in ("applied", "stale"):
                self.sold[e.event_id] = e.quantity
            self.granted(e, verdict.outcome)
            return verdict
        if isinstance(e, OrderCancelled):
            verdict = self.cancellation(e)
            self.granted(e, verdict.outcome)
            return verdict
        if isinstance(e, StockReceived):
            return self.receipt(e)
        if isinstance(e, StockCounted):
            return self.count(e)
        if isinstance(e, ReservationHeld):
            return self.hold(e)
        if isinstance(e, ReservationCommitted):
            return self.commit(e)
        if isinstance(e, ReservationReleased):
            return self.release(e)
        return self.observation(e)


def decide_batch(
    events: Sequence[AnyInventoryEvent],
    masters: dict[Key, Master],
    known: Known,
    *,
    skew: timedelta = timedelta(0),
) -> Decided:
    """Decide `events` in log order against `masters` (every touched SKU the master knows, as read and
    locked) and `known`; `masters` and `known.movements` are updated in place."""
    batch = _Batch(masters, known, skew)
    decisions: list[Decision] = []
    ledger: list[LedgerRow] = []
    claimed: list[tuple[AnyInventoryEvent, Outcome]] = []
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen or e.event_id in known.processed:
            decisions.append(Decision(e, "duplicate"))
            continue
        seen.add(e.event_id)
        if e.event_id in known.in_ledger:  # pruned from processed_events, still in the ledger
            claimed.append((e, "duplicate"))
            decisions.append(Decision(e, "duplicate"))
            continue
        v = batch.decide(e)
        absolute = e.quantity if e.type in ABSOLUTE else None
        sale = _names(e)
        ledger.append(
            LedgerRow(
                e.event_id,
                e.tenant,
                e.sku,
                e.type,
                v.delta,
                absolute,
                v.before,
                v.after,
                v.version,
                v.outcome,
                v.reason,
                e.channel,
                e.connection_id,
                e.occurred_at,
                sale,
            )
        )
        claimed.append((e, v.outcome))
        decisions.append(Decision(e, v.outcome, after=v.after, version=v.version))
    touched_reservations = {rid: r for rid, r in batch.reservations.items() if r.changed}
    return Decided(decisions, ledger, masters, claimed, touched_reservations)


def _names(e: AnyInventoryEvent) -> str | None:
    """The earlier event a ledger row points at: a cancellation's sale, a commit's or release's hold."""
    if isinstance(e, OrderCancelled):
        return e.sale_event_id
    if isinstance(e, ReservationCommitted | ReservationReleased):
        return reservation_event_id(e.reservation_id, "hold")
    return None


def touched(events: Iterable[AnyInventoryEvent]) -> list[Key]:
    """The SKUs of `events`, each once, in sorted order (the order their rows are locked in)."""
    return sorted({(e.tenant, e.sku) for e in events})
