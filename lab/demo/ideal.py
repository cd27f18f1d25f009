"""The allocation rules alone: never_cancel on the demo's orders with instant propagation.

Pure, no I/O: every sale reaches the master the moment a storefront takes it, the allocation step
(``allocation.rules.allocate``, as ``processor/allocate.py`` runs it: a sale lowers the connection's grant and
adds to its velocity, then the slack is re-split) runs after each one, and every write is shown at once. What
the pipeline sells below this is the cost of its latency and the channels' budgets; what this sells below
the best (per SKU the smaller of stock and units asked) is the rules' own: units granted to channels whose
buyers stop coming, and buyers who come to a channel granted nothing (or fewer units than they order).

It decides per sale where the processor decides per batch, so it is a reference, not a bound: the pipeline
may sell a unit more or less.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from allocation.rules import DEFAULT_SPREAD, Holder, after_sale, allocate, cas_retarget, decay
from channels.registry import SPECS
from lab.polling import Order


@dataclass
class Instant:
    units_sold: int = 0
    accepted: int = 0
    refused: int = 0
    refused_while_stock: int = 0  # refused while the master still held at least the units ordered
    left_by_sku: dict[str, int] = field(default_factory=dict)
    granted_at_end_by_sku: dict[str, int] = field(default_factory=dict)


def instant_never_cancel(
    stock: Mapping[str, int],
    orders: Iterable[Order],
    channels: Iterable[str],
    *,
    spread: float = DEFAULT_SPREAD,
) -> Instant:
    """Play `orders` under never_cancel with instant propagation (see the module); every connection weighs 1
    and holds back nothing, as the demo's do."""
    chans = list(channels)
    mode = {c: SPECS[c].write_mode if c in SPECS else "absolute" for c in chans}
    available = dict(stock)
    granted = {s: dict.fromkeys(chans, 0) for s in stock}
    velocity = {s: dict.fromkeys(chans, 0.0) for s in stock}
    sold_at: dict[str, dict[str, float]] = {s: {} for s in stock}
    shows = {s: dict.fromkeys(chans, 0) for s in stock}
    out = Instant()

    def recent(s: str, c: str, now: float) -> float:
        return decay(velocity[s][c], now - sold_at[s][c]) if c in sold_at[s] else 0.0

    def decide(s: str, now: float) -> None:
        holders = [Holder(c, mode[c], granted[s][c], velocity=recent(s, c, now)) for c in chans]
        alloc = allocate(available[s], holders, spread=spread)
        for w in alloc.writes:
            current = shows[s][w.connection_id]
            shows[s][w.connection_id] = (
                w.quantity if w.expect is None else cas_retarget(w.expect, current, w.quantity)
            )
        granted[s] = dict(alloc.granted)

    for s in stock:
        decide(s, 0.0)
    for o in sorted(orders, key=lambda o: o.at_s):
        s, c = o.sku, o.channel
        if s not in stock or c not in shows[s]:
            out.refused += 1
            continue
        if shows[s][c] < o.quantity:
            out.refused += 1
            out.refused_while_stock += available[s] >= o.quantity
            continue
        shows[s][c] -= o.quantity
        available[s] -= o.quantity
        out.units_sold += o.quantity
        out.accepted += 1
        granted[s][c] = after_sale(granted[s][c], o.quantity)
        velocity[s][c] = recent(s, c, o.at_s) + o.quantity
        sold_at[s][c] = o.at_s
        decide(s, o.at_s)
    out.left_by_sku = available
    out.granted_at_end_by_sku = {s: sum(g.values()) for s, g in granted.items()}
    return out
