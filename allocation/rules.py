"""Escrow allocation: what each connection may still sell of one SKU, and the only writes that keep it.

The invariant (policy ``never_cancel``), per tenant and SKU::

    sum over connections c of granted[c]  <=  available

``granted[c]`` bounds the units connection c can still sell that the master has not heard of: what it shows
now plus its sales whose webhooks are still on their way. Every order a storefront takes is one of those
units, so the channels together can never take more orders than the master holds, and the master never
has to refuse (and the seller cancel) an order a marketplace took. This is O'Neil's escrow (1986) and
Barbara and Garcia-Molina's demarcation protocol applied to storefronts: each channel sells from its own
share with no round trip, and shares move only through steps that keep the sum within the stock.

What keeps it, step by step (``processor/allocate.py`` runs these inside the master's transaction):

* **A sale the master hears of** from c: ``available -q`` and ``granted[c] -q``: both sides drop by q.
  Rejected and stale sales lower the grant too (the channel did sell them).
* **A cancellation** of a sale on c: ``available +q``; ``granted[c] +q``, since a marketplace puts a
  cancelled order's units back on its own count.
* **A raise** spends only slack, ``available - buffer - sum(granted)``, and only through a write that cannot
  let c sell more than its new grant whatever it sold unheard of (``Write``):

  - *compare-and-set* (Shopify ``changeFromQuantity``): show ``E + d`` if the channel shows E, its grant
    (no sale unheard of). If it shows Q instead, ``cas_retarget`` shows ``min(Q, E) + d``: the E - Q units
    sold unheard of plus what it now shows make E + d, its new grant.
  - *relative* (an adjustment by +d): the channel's count grows by d whatever it sold: grant + d.
  - *absolute* (every other channel): a set cannot tell what it overwrites, so it is sent only to a
    connection whose grant is 0: it shows nothing and has no sale unheard of, so showing N makes its grant
    exactly N. A connection with units left sells them down first; it costs no write (and none of a daily
    budget) until it is empty.

* **No write ever lowers a grant.** An absolute write below what a channel shows cannot take back what it
  sold meanwhile; the reconciler, after reading every order up to now, is the one that may set a channel to
  its grant (``reconciler/drift.py``).
* **A count or a receipt** moves ``available``; grants are only ever raised within it. A count below the sum
  of grants (units lost in the warehouse) is the one case no allocation can cover: the units are gone.

How the slack is split: a share `spread` (half by default, rounded up) of the sellable units (``available``
less the SKU's buffer) is spread over the active connections by score, the seller's weight
(``Connection.allocation``) times one plus its recent sales velocity (units, decaying with a half-life),
less each connection's own safety buffer; the largest deficits are filled first. The rest is a reserve
that refills whichever connections sell out, so the last units follow the buyers instead of waiting on a
channel whose buyers went elsewhere.

Policy ``mirror`` (the behaviour before allocation, ``mirror``): every connection shows the whole count (less
its buffer, times its share), written absolutely: fast, and, as tests/unit/test_allocation_model.py shows,
able to oversell during any lag.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["never_cancel", "mirror"]
POLICIES: tuple[Policy, ...] = ("never_cancel", "mirror")
DEFAULT_POLICY: Policy = "never_cancel"

WriteMode = Literal["absolute", "cas", "relative"]
WRITE_MODES: tuple[WriteMode, ...] = ("absolute", "cas", "relative")

DEFAULT_SPREAD = 0.5
"""The share of the sellable units spread over the connections at any time; the rest is the reserve that
refills the connections that sell out (a connection whose count is set absolutely can be refilled only once
it is empty, so units given to a channel whose buyers stop coming would otherwise be stranded there)."""

VELOCITY_HALF_LIFE_S = 60.0
"""How fast a connection's recent sales stop counting toward its share: half as much a minute later."""


@dataclass(frozen=True)
class Holder:
    """One connection's share of one SKU, as the master holds it."""

    connection_id: str
    mode: WriteMode
    granted: int = 0
    weight: float = 1.0  # the seller's share for this connection (Connection.allocation)
    buffer: int = 0  # units held back from this connection (Connection.safety_buffer)
    velocity: float = 0.0  # recent units sold (decayed, see `decay`)
    # False: no longer configured, disabled or no longer listing the SKU: keeps its grant (it may still
    # sell what it shows), never raised.
    active: bool = True

    @property
    def score(self) -> float:
        return self.weight * (1.0 + self.velocity)


@dataclass(frozen=True)
class Write:
    """A write that raises one connection's grant: make it show `quantity`.

    `expect` is what it shows if it sold nothing unheard of (its grant before the raise) for
    compare-and-set and relative writes (the raise is ``quantity - expect``); None for an absolute write,
    which is only made to a connection whose grant was 0."""

    connection_id: str
    quantity: int
    expect: int | None = None

    @property
    def delta(self) -> int:
        return self.quantity - (self.expect or 0)


@dataclass(frozen=True)
class Allocation:
    """The grants after a decision and the writes that raise them; `pool` is what may be granted."""

    granted: dict[str, int]
    writes: tuple[Write, ...] = ()
    pool: int = 0
    targets: dict[str, int] = field(default_factory=dict)

    @property
    def slack(self) -> int:
        """Sellable units granted to no connection (negative: the grants exceed the stock)."""
        return self.pool - sum(self.granted.values())


def decay(velocity: float, elapsed_s: float, half_life_s: float = VELOCITY_HALF_LIFE_S) -> float:
    """`velocity` `elapsed_s` later: halved every `half_life_s`."""
    if elapsed_s <= 0:
        return velocity
    return float(velocity * 0.5 ** (elapsed_s / half_life_s))


def shares(total: int, scores: Mapping[str, float]) -> dict[str, int]:
    """`total` units split by score, whole units (largest remainder; ties to the higher score, then id)."""
    if not scores or total <= 0:
        return {k: 0 for k in scores}
    weight = sum(max(0.0, s) for s in scores.values())
    quota = {
        k: total * max(0.0, s) / weight if weight > 0 else total / len(scores) for k, s in scores.items()
    }
    out = {k: math.floor(q) for k, q in quota.items()}
    left = total - sum(out.values())
    for k in sorted(scores, key=lambda k: (-(quota[k] - out[k]), -scores[k], k))[:left]:
        out[k] += 1
    return out


def after_sale(granted: int, quantity: int) -> int:
    """A connection's grant once the master heard of a sale of `quantity` it took (the sale was one of the
    units the grant bounded; a grant never goes below 0 even if the channel sold beyond it)."""
    return max(0, granted - quantity)


def after_cancellation(granted: int, quantity: int) -> int:
    """A connection's grant once the master heard that it cancelled a sale of `quantity` (a marketplace puts
    the units back on its own count, so it may sell them again)."""
    return granted + quantity


def raisable(holder: Holder, granted: int) -> bool:
    """Whether a write can raise this connection now without letting it sell more than its grant."""
    return holder.active and (holder.mode != "absolute" or granted == 0)


def allocate(
    available: int, holders: Iterable[Holder], *, buffer: int = 0, spread: float = DEFAULT_SPREAD
) -> Allocation:
    """The grants and raises for one SKU after a change (``never_cancel``); see the module docstring."""
    holders = list(holders)
    pool = max(0, available - buffer)
    granted = {h.connection_id: max(0, h.granted) for h in holders}
    active = [h for h in holders if h.active]
    scores = {h.connection_id: h.score for h in active}
    shown = math.ceil(pool * spread)
    targets = {
        h.connection_id: max(0, n - h.buffer)
        for h, n in zip(active, shares(shown, scores).values(), strict=True)
    }
    slack = pool - sum(granted.values())
    raise_by: dict[str, int] = {}
    if slack > 0:
        by_deficit = sorted(
            (h for h in active if raisable(h, granted[h.connection_id])),
            key=lambda h: (-(targets[h.connection_id] - granted[h.connection_id]), -h.score, h.connection_id),
        )
        for h in by_deficit:
            want = targets[h.connection_id] - granted[h.connection_id]
            if want > 0 and slack > 0:
                raise_by[h.connection_id] = min(want, slack)
                slack -= raise_by[h.connection_id]
    writes = []
    for h in holders:
        d = raise_by.get(h.connection_id, 0)
        if d <= 0:
            continue
        before = granted[h.connection_id]
        granted[h.connection_id] = before + d
        expect = None if h.mode == "absolute" else before
        writes.append(Write(h.connection_id, before + d, expect))
    return Allocation(granted, tuple(writes), pool, targets)


def mirror(available: int, holders: Iterable[Holder], *, buffer: int = 0) -> tuple[Write, ...]:
    """Policy ``mirror``: every active connection shows the whole count (less the buffers, times its
    share), written absolutely. Keeps no invariant: what the channels may sell adds up to many times the
    stock while a change propagates."""
    return tuple(
        Write(h.connection_id, math.floor(max(0, available - buffer - h.buffer) * h.weight))
        for h in holders
        if h.active
    )


def cas_retarget(expect: int, current: int, quantity: int) -> int:
    """What a compare-and-set raise shows when the channel shows `current` instead of `expect`: its own
    count (never more than `expect`: units it put back itself are not ours to count on) plus the raise."""
    return max(0, min(current, expect) + (quantity - expect))
