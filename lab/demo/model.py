"""The flash sale: its options, the seller's stock and the buyers' orders (deterministic for a seed), what a
storefront shows, and the tallies of an event-driven run (one per policy)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from allocation.rules import Policy
from channels.connection import Listing
from lab.marketplaces import Marketplace
from lab.polling import Order

TENANT = "demo"  # the prefix of the runs' tenants
POLICY_RUNS: tuple[Policy, ...] = ("never_cancel", "mirror")  # played one after the other, in this order
POLL_MINUTES: tuple[float, ...] = (1.0, 5.0, 15.0)  # the polling baseline's intervals
REAL_TIME_LIMIT_S = 90.0  # the longest sale the default demo is meant to play
TARGET_SELL_THROUGH = 0.97  # under never_cancel, with 0 orders to cancel
FIRST_ORDER_ID = 500_000
# A channel redelivers a webhook the gateway answered 503 (a thin payload's order could not be fetched yet,
# e.g. the channel's API said 429) with growing delays; here seconds instead of the channels' minutes.
DELIVERIES = 10
FIRST_REDELIVERY_S = 0.5


def tenant_of(policy: Policy) -> str:
    """The tenant of the run under `policy` (its own connections, simulators and master records)."""
    return f"{TENANT}-{'nc' if policy == 'never_cancel' else policy}"


@dataclass(frozen=True)
class DemoOptions:
    """The sale: `skus`, `orders`, lasting `sale_minutes` by its own clock, played in `seconds` of wall
    time (the same by default: real time). `poll_minutes`, if given, adds an interval to the polling
    baseline's 1, 5 and 15 minutes."""

    skus: int = 20
    orders: int = 2000
    seconds: float = 60.0  # wall-clock seconds the sale is played in
    sale_minutes: float = 1.0  # how long the sale lasts by its own clock
    poll_minutes: float | None = None  # an extra polling interval, beside POLL_MINUTES
    seed: int = 8
    out: Path = Path("reports")

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive, got {value}"
            for name, value in (
                ("skus", self.skus),
                ("orders", self.orders),
                ("seconds", self.seconds),
                ("sale_minutes", self.sale_minutes),
                ("poll_minutes", 1 if self.poll_minutes is None else self.poll_minutes),
            )
            if value <= 0
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def sale_s(self) -> float:
        return self.sale_minutes * 60.0

    @property
    def compression(self) -> float:
        """Sale seconds per wall-clock second: 1 in real time, above 1 when the sale is played faster."""
        return self.sale_s / self.seconds

    @property
    def real_time(self) -> bool:
        return abs(self.compression - 1.0) < 1e-9

    def clock_warning(self) -> str | None:
        """Why these figures are not a real-time sale's, or None when they are."""
        if self.real_time:
            return None
        faster = self.compression > 1
        factor = f"{self.compression if faster else 1 / self.compression:.3g}x"
        return (
            f"not real time: {self.sale_minutes:g} min of sale played in {self.seconds:g} s ({factor} "
            f"{'faster' if faster else 'slower'} than the sale's clock). The channels' API budgets and the "
            f"pipeline keep the wall clock, so by the sale's clock propagation looks {factor} "
            f"{'slower' if faster else 'faster'} than it is: the event-driven figures are not a real sale's"
        )

    @property
    def poll_intervals(self) -> tuple[float, ...]:
        """The polling baseline's intervals, minutes: 1, 5, 15 and `poll_minutes` if it is another."""
        extra = () if self.poll_minutes is None or self.poll_minutes in POLL_MINUTES else (self.poll_minutes,)
        return tuple(sorted((*POLL_MINUTES, *extra)))


def poll_key(minutes: float) -> str:
    """The key of a polling interval in ``demo.json``: ``1m``, ``5m``, ``15m``, ``2.5m``."""
    return f"{minutes:g}m"


def flash_sale(options: DemoOptions, channels: list[str]) -> tuple[dict[str, int], list[Order]]:
    """The seller's stock (small, 5 to 40 units a SKU) and the buyers' orders, deterministic for the seed.

    Orders come early (a flash sale opens with a rush, then thins out), most of them for a few popular SKUs
    (Zipf weights), on any of the channels; one in ten asks for 2 units and one in thirty for 3.
    """
    rnd = random.Random(options.seed)  # noqa: S311 - reproducible demo traffic, not secrets
    skus = [f"FLASH-{n:02d}" for n in range(options.skus)]
    stock = {sku: rnd.randint(5, 40) for sku in skus}
    weights = [1 / (rank + 1) for rank in range(len(skus))]
    sale_s = options.sale_s
    orders = []
    for _ in range(options.orders):
        roll = rnd.random()
        orders.append(
            Order(
                at_s=round(sale_s * rnd.random() ** 1.3, 3),
                channel=rnd.choice(channels),
                sku=rnd.choices(skus, weights)[0],
                quantity=3 if roll < 1 / 30 else 2 if roll < 0.1 else 1,
            )
        )
    orders.sort(key=lambda o: o.at_s)
    return stock, orders


def count_key(channel: str, sku: str, listing: Listing) -> str:
    """The key under which `channel`'s simulator keeps its own count of `sku` (each API names it its way)."""
    if channel == "ebay":
        return sku
    if channel in ("shopify", "tiktok"):
        return listing.inventory_ref or ""
    if channel == "etsy":
        return listing.inventory_ref or sku
    if channel == "woocommerce" and listing.inventory_ref:
        return listing.inventory_ref.partition("/")[2]
    return listing.listing_id  # amazon, walmart, bigcommerce, flipkart; woocommerce without variations


def shown(market: Marketplace, sku: str) -> int:
    """What the storefront shows buyers now: the simulator's own count (no API call spent on it)."""
    available: dict[str, int] = getattr(market.simulator, "available", {})
    return available.get(count_key(market.channel, sku, market.connection.listings[sku]), 0)


@dataclass
class ChannelTally:
    offered: int = 0
    refused: int = 0  # the storefront showed fewer units than ordered
    taken: int = 0  # the storefront took the order and posted its webhook
    applied: int = 0
    rejected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls: int = 0
    rate_limited: int = 0
    dlq: int = 0


@dataclass
class EventDriven:
    policy: Policy = "never_cancel"
    tenant: str = ""
    orders: int = 0
    accepted: int = 0  # taken by a storefront and applied by the master
    rejected: int = 0  # taken by a storefront and refused by the master
    refused_by_channel: int = 0
    units_sold: int = 0  # units the master applied
    sellable: int = 0  # per SKU the smaller of its stock and the units asked for, summed
    oversells: int = 0
    cancellations_needed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    outbound_calls: int = 0
    rate_limited: int = 0
    dlq: int = 0
    webhooks_not_accepted: int = 0
    dlq_replayed: int = 0
    skus_out_of_sync: list[str] = field(default_factory=list)
    per_channel: dict[str, ChannelTally] = field(default_factory=dict)
    cancelled_at: list[float] = field(default_factory=list)  # sale seconds of each order to cancel
    left_by_sku: dict[str, int] = field(default_factory=dict)  # the master's count at the end
    stranded: dict[str, int] = field(default_factory=dict)  # never_cancel: units granted at the end, per SKU
    refused_by_sku: dict[str, int] = field(default_factory=dict)  # buyers a storefront turned away, per SKU
    sold_by_sku: dict[str, int] = field(default_factory=dict)  # units the master applied, per SKU
    sale_s: float = 0.0  # wall-clock seconds from the first order offered to the last

    @property
    def taken(self) -> int:
        return self.accepted + self.rejected

    @property
    def sell_through(self) -> float:
        return self.units_sold / self.sellable if self.sellable else 1.0
