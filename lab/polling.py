"""The polling baseline of ``stocksync demo``: what the same orders do to a seller who syncs every N minutes.

Pure and in simulated time, no I/O. Every channel starts showing the physical stock and keeps its own count:
it accepts an order while it shows at least the ordered quantity, and takes the units off its own count.
Every ``poll_minutes`` a sync job imports the orders the channels took since its last pass into the master,
computes what is left (never below zero) and writes that number to every channel, one channel after another
(``write_gap_s`` apart), overwriting whatever the channel holds: last write wins. A sale a channel takes
between the job's read and its write to that channel is thereby erased from the channel's count (counted in
``undone_units``), and the channel offers that unit again.

An oversell is a unit sold beyond the physical stock; each order that cannot be filled in full from what is
left (orders served first come, first served) needs a cancellation.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Order:
    """One buyer's order: `at_s` simulated seconds after the sale opened, on `channel`, for `sku`."""

    at_s: float
    channel: str
    sku: str
    quantity: int


@dataclass
class PollingResult:
    orders: int = 0
    accepted: int = 0  # orders a channel took
    refused: int = 0  # orders a channel refused: it showed less than the quantity
    units_sold: int = 0
    oversells: int = 0  # units sold beyond the physical stock
    cancellations: int = 0  # accepted orders that cannot be filled from the stock
    syncs: int = 0  # passes of the sync job that ran during the sale
    undone_units: int = 0  # sales erased from a channel's count by a later write of an older master count
    oversold_by_sku: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (at_s, oversold units so far)


def cancellations_needed(accepted: Iterable[Order], stock: Mapping[str, int]) -> int:
    """Orders that cannot be filled in full when accepted orders are served in time order from `stock`."""
    left = dict(stock)
    cancelled = 0
    for order in sorted(accepted, key=lambda o: o.at_s):
        if left.get(order.sku, 0) >= order.quantity:
            left[order.sku] -= order.quantity
        else:
            cancelled += 1
    return cancelled


def simulate_polling(
    orders: Iterable[Order],
    stock: Mapping[str, int],
    channels: Iterable[str],
    *,
    poll_minutes: float = 15.0,
    write_gap_s: float = 10.0,
) -> PollingResult:
    """Play `orders` against channels that sync with the master every `poll_minutes` (see the module)."""
    if poll_minutes <= 0:
        raise ValueError(f"poll_minutes must be positive, got {poll_minutes}")
    if write_gap_s < 0:
        raise ValueError(f"write_gap_s must not be negative, got {write_gap_s}")
    channel_list = list(channels)
    stream = sorted(orders, key=lambda o: o.at_s)
    unknown = {o.channel for o in stream} - set(channel_list)
    if unknown:
        raise ValueError(f"orders name channels the baseline does not list: {sorted(unknown)}")
    shows = {ch: dict(stock) for ch in channel_list}
    sold = dict.fromkeys(stock, 0)  # units every channel took, per SKU
    imported = dict.fromkeys(stock, 0)  # units the master knows of
    taken_since_read: dict[str, dict[str, int]] = {ch: dict.fromkeys(stock, 0) for ch in channel_list}
    result = PollingResult(orders=len(stream))
    taken: list[Order] = []
    end = stream[-1].at_s if stream else 0.0
    period = poll_minutes * 60.0

    # Pending writes of the sync job: (at_s, sequence, channel, counts to set); a heap in time order.
    writes: list[tuple[float, int, str, dict[str, int]]] = []
    sequence = 0
    next_sync = period

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
                    heapq.heappush(writes, (next_sync + i * write_gap_s, sequence, ch, counts))
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
    result.cancellations = cancellations_needed(taken, stock)
    return result
