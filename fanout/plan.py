"""What each channel connection should show, decided without I/O.

Two policies (allocation/rules.py). ``mirror`` SKUs: every connection shows the master count of
``stock.changed`` (paused at 0 on ``stock.rejected``). ``never_cancel`` SKUs: ``stock.changed`` and
``stock.rejected`` are not written at all (a channel counts its own sales down); only the writes of
``stock.allocated`` are, each to the connection it names.

Coalescing: of many records about one SKU only the newest matters. Mirror records take precedence by
(version, kind): a ``stock.rejected`` carries the version the master had when it refused the sale, so at equal
version it comes after the ``stock.changed`` that produced that version, and the next change (a higher
version) comes after it. Allocation writes go by the SKU's allocation `seq`, per connection: the newest
record that writes to a connection (a later record may grant it nothing new). A target at or below what a
connection last confirmed is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from channels.connection import channel_quantity
from schemas.stock_allocated import StockAllocated
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Record = StockChanged | StockRejected | StockAllocated
Precedence = tuple[int, int]
"""Which of two records about a SKU is newer: (master version, 0 for a change / 1 for a rejection at it)."""


def precedence_of(record: Record) -> Precedence:
    if isinstance(record, StockChanged):
        return (record.version, 0)
    if isinstance(record, StockAllocated):
        return (record.seq, 2)
    return (record.version or 0, 1)


def latest_per_sku(records: Iterable[Record]) -> list[Record]:
    """The newest mirror record per (tenant, sku) and every allocation record, in first-seen order of the
    SKUs (allocation records are coalesced per connection by `coalesce`)."""
    latest: dict[tuple[str, str], Record] = {}
    allocated: list[Record] = []
    for r in records:
        if isinstance(r, StockAllocated):
            allocated.append(r)
            continue
        key = (r.tenant, r.sku)
        if key not in latest or precedence_of(r) > precedence_of(latest[key]):
            latest[key] = r
    return [*latest.values(), *allocated]


@dataclass(frozen=True)
class Target:
    """One SKU's quantity for one connection, and why."""

    connection_id: str
    sku: str
    quantity: int
    precedence: Precedence
    cause: Record
    # Allocation writes (cause: StockAllocated): the compare-and-set base, None for an absolute set.
    expect: int | None = None

    @property
    def paused(self) -> bool:
        return isinstance(self.cause, StockRejected)

    @property
    def allocated(self) -> bool:
        return isinstance(self.cause, StockAllocated)

    @property
    def seq(self) -> int:
        return self.precedence[0]


def target_for(
    record: Record, connection_id: str, *, buffer: int, allocation: float, pause_on_rejection: bool
) -> Target | None:
    """The target a record sets for a connection; None when a rejection should not pause the listing, for
    the records of a ``never_cancel`` SKU (only its allocation writes are sent) and for an allocation record
    that writes nothing to this connection."""
    if isinstance(record, StockAllocated):
        allotment = record.connections.get(connection_id)
        if allotment is None or allotment.write is None:
            return None
        return Target(
            connection_id, record.sku, allotment.write, precedence_of(record), record, expect=allotment.expect
        )
    if record.policy == "never_cancel":
        return None
    if isinstance(record, StockChanged):
        quantity = channel_quantity(record.available, buffer=buffer, allocation=allocation)
    elif pause_on_rejection:
        # A refused sale means some channel showed stock that was not there: show none until the next change.
        quantity = 0
    else:
        return None
    return Target(connection_id, record.sku, quantity, precedence_of(record), record)


def coalesce(targets: Iterable[Target]) -> list[Target]:
    """One target per (connection, SKU). Mirror counts and absolute allocation sets: the newest (an absolute
    raise is only made to a connection whose grant is 0, so a newer one implies the older was shown and sold).
    Compare-and-set raises add up: the first's base plus every raise, so that none is lost; if the channel
    has sold since, the fan-out re-bases the sum on what it shows (allocation.cas_retarget)."""
    groups: dict[tuple[str, str], list[Target]] = {}
    for t in targets:
        groups.setdefault((t.connection_id, t.sku), []).append(t)
    out = []
    for group in groups.values():
        allocated = sorted((t for t in group if t.allocated), key=lambda t: t.precedence)
        if not allocated:
            out.append(max(group, key=lambda t: t.precedence))
            continue
        raises = [t for t in allocated if t.expect is not None]
        newest = allocated[-1]
        if not raises or newest.expect is None:
            out.append(newest)
            continue
        base = raises[0].expect or 0
        total = sum(t.quantity - (t.expect or 0) for t in raises)
        out.append(replace(newest, quantity=base + total, expect=base))
    return out


def exposure_order(targets: list[Target], shows: dict[str, int]) -> list[Target]:
    """`targets` in the order a connection with a tight budget should send them: largest exposure first
    (what it shows now, `shows`, minus what the target lets it sell: a count to bring down before the
    channel sells what is not there), then the connections that show nothing (stocked out while units are
    granted to them), then the rest."""
    return sorted(targets, key=lambda t: (-(shows.get(t.sku, 0) - t.quantity), shows.get(t.sku, 0) != 0))
