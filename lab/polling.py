"""The polling baseline of ``stocksync demo``: what the same orders do to a seller who syncs every N minutes.

Pure and in the sale's time (seconds since it opened; the demo plays its sale in real time, so these are
wall-clock seconds), no I/O. Every channel starts showing the physical stock and keeps its own count: it
accepts an order while it shows at least the ordered quantity, and takes the units off its own count. A sync
job runs every ``poll_minutes``: it imports the orders the channels took since its last pass into the master,
computes what is left (never below zero) and writes that number to every channel, one channel after another
(``write_gap_s`` apart), overwriting whatever the channel holds: last write wins. A sale a channel takes
between the job's read and its write to that channel is thereby erased from the channel's count (counted in
``undone_units``), and the channel offers that unit again.

The job's clock does not know about the sale: ``phase_s`` is when its first pass after the opening comes
(0 < phase_s <= the interval; by default a whole interval, i.e. the sale opened just after a pass, the worst
case). A sale opening at a random moment waits half an interval on average (what the demo's headline uses),
and ``by_phase`` plays every phase. A sale shorter than the time to the first pass sees no pass at all: every
channel sells the whole stock, whatever the interval (a 60-second sale against a 5- or 15-minute job, unless
it opened in the last minute before a pass). A pass never takes longer than the interval: the gap between two
channels' writes is at most the interval divided by the number of channels (a job every minute cannot spend
ten seconds on each of nine channels).

An oversell is a unit sold beyond the physical stock; each order that cannot be filled in full from what is
left (orders served first come, first served) needs a cancellation. The units of the orders that can be
filled are the units sold (``units_filled``); sell-through is those over what could have been sold
(``sell_through``: per SKU, the smaller of its stock and the units the buyers asked for).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Order:
    """One buyer's order: `at_s` seconds after the sale opened, on `channel`, for `sku`."""

    at_s: float
    channel: str
    sku: str
    quantity: int


@dataclass
class PollingResult:
    orders: int = 0
    accepted: int = 0  # orders a channel took (filled or not)
    refused: int = 0  # orders a channel refused: it showed less than the quantity
    units_sold: int = 0  # units the channels took, oversold ones included
    units_filled: int = 0  # units of the orders that can be filled from the stock
    oversells: int = 0  # units sold beyond the physical stock
    cancellations: int = 0  # accepted orders that cannot be filled from the stock
    syncs: int = 0  # passes of the sync job that ran during the sale
    undone_units: int = 0  # sales erased from a channel's count by a later write of an older master count
    phase_s: float = 0.0  # when the job's first pass came, seconds after the opening
    oversold_by_sku: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (at_s, oversold units so far)
    cancelled_at: list[float] = field(default_factory=list)  # at_s of each order to cancel, in time order


def demanded(orders: Iterable[Order]) -> dict[str, int]:
    """Units the buyers asked for, per SKU (refused orders included)."""
    out: dict[str, int] = {}
    for o in orders:
        out[o.sku] = out.get(o.sku, 0) + o.quantity
    return out


def sellable(stock: Mapping[str, int], orders: Iterable[Order]) -> int:
    """What a seller could sell at best: per SKU the smaller of its stock and the units asked for."""
    asked = demanded(orders)
    return sum(min(q, asked.get(sku, 0)) for sku, q in stock.items())


def sell_through(units_sold: int, stock: Mapping[str, int], orders: Iterable[Order]) -> float:
    """Units sold over what could be sold (`sellable`); 1.0 when nothing could be."""
    best = sellable(stock, orders)
    return units_sold / best if best else 1.0


def fill(accepted: Iterable[Order], stock: Mapping[str, int]) -> tuple[list[Order], list[Order]]:
    """Accepted orders served in time order from `stock`: (those filled in full, those to cancel)."""
    left = dict(stock)
    filled: list[Order] = []
    cancelled: list[Order] = []
    for order in sorted(accepted, key=lambda o: o.at_s):
        if left.get(order.sku, 0) >= order.quantity:
            left[order.sku] -= order.quantity
            filled.append(order)
        else:
            cancelled.append(order)
    return filled, cancelled


def cancellations_needed(accepted: Iterable[Order], stock: Mapping[str, int]) -> int:
    """Orders that cannot be filled in full when accepted orders are served in time order from `stock`."""
    return len(fill(accepted, stock)[1])


def simulate_polling(
    orders: Iterable[Order],
    stock: Mapping[str, int],
    channels: Iterable[str],
    *,
    poll_minutes: float = 15.0,
    write_gap_s: float = 10.0,
    phase_s: float | None = None,
) -> PollingResult:
    """Play `orders` against channels that sync with the master every `poll_minutes` (see the module); the
    job's first pass comes `phase_s` after the opening (default: a whole interval)."""
    if poll_minutes <= 0:
        raise ValueError(f"poll_minutes must be positive, got {poll_minutes}")
    if write_gap_s < 0:
        raise ValueError(f"write_gap_s must not be negative, got {write_gap_s}")
    period = poll_minutes * 60.0
    first = period if phase_s is None else phase_s
    if not 0 < first <= period:
        raise ValueError(f"phase_s must be above 0 and at most the interval ({period:g} s), got {phase_s}")
    channel_list = list(channels)
    gap = min(write_gap_s, period / max(1, len(channel_list)))
    stream = sorted(orders, key=lambda o: o.at_s)
    unknown = {o.channel for o in stream} - set(channel_list)
    if unknown:
        raise ValueError(f"orders name channels the baseline does not list: {sorted(unknown)}")
    shows = {ch: dict(stock) for ch in channel_list}
    sold = dict.fromkeys(stock, 0)  # units every channel took, per SKU
    imported = dict.fromkeys(stock, 0)  # units the master knows of
    taken_since_read: dict[str, dict[str, int]] = {ch: dict.fromkeys(stock, 0) for ch in channel_list}
    result = PollingResult(orders=len(stream), phase_s=first)
    taken: list[Order] = []
    end = stream[-1].at_s if stream else 0.0

    # Pending writes of the sync job: (at_s, sequence, channel, counts to set); a heap in time order.
    writes: list[tuple[float, int, str, dict[str, int]]] = []
    sequence = 0
    next_sync = first

    def oversold() -> int:
        return sum(max(0, sold[s] - stock[s]) for s in stock)

    def run_until(t: float) -> None:
        nonlocal next_sync, sequence
        while True:
            due_write = writes[0][0] if writes else float("inf")
            if next_sync <= t and next_sync <= due_write:
                imported.update(sold)
                counts = {s: max(0, stock[s] - imported[s]) for s in stock}
                for i, ch in enumerate(channel_list):
                    heapq.heappush(writes, (next_sync + i * gap, sequence, ch, counts))
                    sequence += 1
                taken_since_read.update({ch: dict.fromkeys(stock, 0) for ch in channel_list})
                result.syncs += 1
                next_sync += period
            elif due_write <= t:
                _at, _seq, ch, counts = heapq.heappop(writes)
                result.undone_units += sum(taken_since_read[ch].values())
                taken_since_read[ch] = dict.fromkeys(stock, 0)
                shows[ch] = dict(counts)
            else:
                return

    for order in stream:
        run_until(order.at_s)
        if shows[order.channel].get(order.sku, 0) >= order.quantity:
            shows[order.channel][order.sku] -= order.quantity
            sold[order.sku] = sold.get(order.sku, 0) + order.quantity
            taken_since_read[order.channel][order.sku] = (
                taken_since_read[order.channel].get(order.sku, 0) + order.quantity
            )
            result.accepted += 1
            result.units_sold += order.quantity
            taken.append(order)
            result.timeline.append((order.at_s, oversold()))
        else:
            result.refused += 1
    run_until(end)
    result.oversells = oversold()
    result.oversold_by_sku = {s: max(0, sold[s] - stock[s]) for s in stock}
    filled, cancelled = fill(taken, stock)
    result.cancellations = len(cancelled)
    result.cancelled_at = [o.at_s for o in cancelled]
    result.units_filled = sum(o.quantity for o in filled)
    return result


def by_phase(
    orders: Iterable[Order],
    stock: Mapping[str, int],
    channels: Iterable[str],
    *,
    poll_minutes: float,
    phases: int = 12,
    write_gap_s: float = 10.0,
) -> list[PollingResult]:
    """The same sale with the job's first pass at each of `phases` evenly spaced moments of its interval
    (interval / phases, 2 x interval / phases, ..., the whole interval): the spread of luck a seller has."""
    if phases < 1:
        raise ValueError(f"phases must be 1 or more, got {phases}")
    orders, channels = list(orders), list(channels)
    period = poll_minutes * 60.0
    return [
        simulate_polling(
            orders,
            stock,
            channels,
            poll_minutes=poll_minutes,
            write_gap_s=write_gap_s,
            phase_s=period * k / phases,
        )
        for k in range(1, phases + 1)
    ]
