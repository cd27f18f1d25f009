"""The fault matrix's world and load: its own Kafka broker and PostgreSQL server (so it may stop them), the
pipeline's services as processes, two tenants each with a Shopify store of its own, and a steady stream of
signed orders delivered as a channel delivers webhooks (a 503 is delivered again with the same order id,
after the Retry-After, until it is accepted or its deadline passes).

What "settled" means after a fault is ``World.settlement``: every order the gateway acknowledged is in the
ledger exactly once and applied, the master equals what it was minus the acknowledged units, nothing is
negative, both consumer groups have committed every offset, and each store shows the master's count.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler

from channels.connection import Connection
from lab.local.faults import RestartablePostgres, ServerThread
from lab.local.kafka import JvmKafkaBroker
from lab.local.process import free_port
from lab.local.stack import Stack
from lab.marketplaces.shopify import ShopifySimulator, order_webhook
from schemas import inventory_events, stock_changed, stock_rejected
from stocksync.settings import KafkaSettings
from tests.helpers import group_caught_up

Key = tuple[str, str]  # (tenant, sku)


@dataclass
class Tally:
    count: int = 0


def counting_503(app: web.Application, tally: Tally) -> web.Application:
    """`app` with every 503 it answers counted in `tally`."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if response.status == 503:
            tally.count += 1
        return response

    app.middlewares.append(count)
    return app


@dataclass
class Store:
    """One tenant's Shopify store: the simulator, the connection to it, and the 503s it answered."""

    tenant: str
    connection: Connection
    simulator: ShopifySimulator
    tally: Tally

    @property
    def answered_503(self) -> int:
        return self.tally.count

    def item(self, sku: str) -> str:
        ref = self.connection.listings[sku].inventory_ref
        assert ref is not None
        return ref


@dataclass
class Order:
    """One order as the channel delivers it, and what became of its deliveries."""

    order_id: int
    tenant: str
    connection_id: str
    lines: tuple[tuple[str, str, int], ...]  # (event id, sku, quantity)
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    answered_503: int = 0
    network_errors: int = 0
    acked: bool = False
    gave_up: bool = False
    refused: int | None = None  # a final answer other than 200 or 503
    acked_events: tuple[str, ...] = ()

    @property
    def event_ids(self) -> tuple[str, ...]:
        return tuple(line[0] for line in self.lines)


class Burst:
    """Orders at a steady rate across the stores until ``stop``; each delivered by a task of its own."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ingest_url: str,
        stores: list[Store],
        skus: tuple[str, ...],
        *,
        rate_per_s: float,
        order_ids: Iterator[int],
        rng: random.Random,
        deadline_s: float,
    ) -> None:
        self.session, self.ingest_url, self.stores, self.skus = session, ingest_url, stores, skus
        self.rate_per_s, self.order_ids, self.rng, self.deadline_s = rate_per_s, order_ids, rng, deadline_s
        self.orders: list[Order] = []
        self._stopped = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._generator: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._generator = asyncio.create_task(self._generate())

    def stop(self) -> None:
        """No new orders from now on; deliveries already started go on (retries included)."""
        self._stopped = True

    @property
    def in_flight(self) -> int:
        return len(self._deliveries) + (0 if self._generator is None or self._generator.done() else 1)

    async def close(self) -> None:
        self.stop()
        tasks = [t for t in (self._generator, *self._deliveries) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _order(self) -> Order:
        store = self.rng.choice(self.stores)
        order_id = next(self.order_ids)
        skus = self.rng.sample(self.skus, 1 if self.rng.random() < 0.8 else 2)
        items: list[dict[str, Any]] = []
        lines = []
        for n, sku in enumerate(skus, start=1):
            quantity, line_id = self.rng.choice((1, 1, 1, 2, 3)), order_id * 100 + n
            listing = store.connection.listings[sku]
            items.append(
                {
                    "id": line_id,
                    "variant_id": int(listing.listing_id),
                    "sku": sku,
                    "quantity": quantity,
                    "title": sku,
                }
            )
            lines.append((f"{store.connection.id}:order:{order_id}:line:{line_id}", sku, quantity))
        body, headers = order_webhook(store.connection, order_id, items, datetime.now(UTC))
        return Order(order_id, store.tenant, store.connection.id, tuple(lines), body, headers)

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        started, n = loop.time(), 0
        while not self._stopped:
            delay = started + n / self.rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronisation
                continue
            order = self._order()
            self.orders.append(order)
            task = asyncio.create_task(self._deliver(order))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
            n += 1

    async def _deliver(self, order: Order) -> None:
        loop = asyncio.get_running_loop()
        url = f"{self.ingest_url}/webhooks/{order.connection_id}"
        deadline = loop.time() + self.deadline_s
        timeout = aiohttp.ClientTimeout(total=15)
        while True:
            order.attempts += 1
            retry_after = 1.0
            try:
                async with self.session.post(
                    url, data=order.body, headers=order.headers, timeout=timeout
                ) as resp:
                    if resp.status == 200:
                        answer = await resp.json()
                        order.acked_events = tuple(answer.get("events", ()))
                        order.acked = True
                        return
                    if resp.status != 503:
                        order.refused = resp.status
                        return
                    order.answered_503 += 1
                    retry_after = float(resp.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError):
                order.network_errors += 1
            if loop.time() >= deadline:
                order.gave_up = True
                return
            # The channel's redelivery delay: what Retry-After asks, within 0.5-5 s.
            await asyncio.sleep(min(5.0, max(0.5, retry_after)))


@dataclass
class Settlement:
    """One look at the whole system after a fault: what still differs from the settled state."""

    in_flight: int
    missing: list[str] = field(default_factory=list)  # acknowledged lines with no ledger row
    not_applied: dict[str, str] = field(default_factory=dict)  # acknowledged lines: event id -> outcome
    duplicated_units: dict[Key, int] = field(default_factory=dict)  # taken beyond the applied lines
    master_off: dict[Key, tuple[int, int | None]] = field(default_factory=dict)  # expected, actual
    negative: int = 0
    channel_off: dict[Key, tuple[int | None, int | None]] = field(default_factory=dict)  # master, shown
    processor_behind: bool = False
    fanout_behind: bool = False
    extra: list[str] = field(default_factory=list)  # a fault's own conditions not met yet

    @property
    def ok(self) -> bool:
        return not (
            self.in_flight
            or self.missing
            or self.not_applied
            or self.duplicated_units
            or self.master_off
            or self.negative
            or self.channel_off
            or self.processor_behind
            or self.fanout_behind
            or self.extra
        )

    def describe(self) -> str:
        parts = []
        if self.in_flight:
            parts.append(f"{self.in_flight} deliveries still in flight")
        if self.missing:
            parts.append(f"{len(self.missing)} acknowledged lines not in the ledger, e.g. {self.missing[:3]}")
        if self.not_applied:
            sample = dict(list(self.not_applied.items())[:3])
            parts.append(f"{len(self.not_applied)} acknowledged lines not applied, e.g. {sample}")
        if self.duplicated_units:
            parts.append(f"units taken beyond the applied lines: {self.duplicated_units}")
        if self.master_off:
            parts.append(f"master (expected, actual): {self.master_off}")
        if self.negative:
            parts.append(f"{self.negative} master records below zero")
        if self.channel_off:
            parts.append(f"stores differ from the master (master, shown): {self.channel_off}")
        if self.processor_behind:
            parts.append("the processor group has not committed every offset of inventory.events")
        if self.fanout_behind:
            parts.append("the fan-out group has not committed every offset of stock.changed/rejected")
        parts.extend(self.extra)
        return "; ".join(parts) or "settled"


@dataclass
class World:
    servers: ServerThread
    broker: JvmKafkaBroker
    postgres: RestartablePostgres
    kafka: KafkaSettings
    database_url: str
    stack: Stack
    stores: list[Store]
    skus: tuple[str, ...]
    session: aiohttp.ClientSession
    initial: dict[Key, int] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)  # every acknowledged line's event id, all phases

    def store(self, tenant: str) -> Store:
        return next(s for s in self.stores if s.tenant == tenant)

    # -- the services ------------------------------------------------------------------------------------

    def start_ingest(self) -> None:
        port = free_port()
        self.stack.start("ingest", "ingest", port=port, INGEST_PORT=str(port))

    def start_processor(self) -> None:
        port = free_port()
        self.stack.start(
            "processor",
            "processor",
            port=port,
            PROCESSOR_OPS_PORT=str(port),
            PROCESSOR_SESSION_TIMEOUT_S="6",
        )

    def start_fanout(self) -> None:
        port = free_port()
        self.stack.start(
            "fanout-shopify",
            "fanout",
            "--channel",
            "shopify",
            port=port,
            FANOUT_PORT=str(port),
            FANOUT_SESSION_TIMEOUT_S="6",
        )

    def restart(self, name: str) -> None:
        starts = {"ingest": self.start_ingest, "processor": self.start_processor}
        starts["fanout-shopify"] = self.start_fanout
        starts[name]()

    async def repair(self) -> list[str]:
        """Start again whatever is stopped (after a phase that failed half-way); what was restarted."""
        repaired = []
        if self.postgres.halted:
            await self.servers.run(self.postgres.resume)
            repaired.append("postgres")
        if self.broker.pid is None:
            await self.servers.run(self.broker.resume)
            repaired.append("kafka")
        for name in ("ingest", "processor", "fanout-shopify"):
            if name not in self.stack.services:
                self.restart(name)
                repaired.append(name)
        return repaired

    def kill(self, name: str) -> None:
        """kill -9 of one service."""
        code = self.stack.stop_service(name, sig=signal.SIGKILL)
        assert code == -signal.SIGKILL, f"{name} had already exited with {code}"

    def services_alive(self) -> list[str]:
        """Problems: services that exited on their own."""
        return [
            f"{s.name} exited with {s.proc.returncode}:\n{s.tail(20)}"
            for s in self.stack.services.values()
            if s.proc.poll() is not None
        ]

    # -- what the system holds -----------------------------------------------------------------------------

    def master(self) -> dict[Key, int]:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            rows = conn.execute("SELECT tenant, sku, available FROM inventory").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def shown(self) -> dict[Key, int | None]:
        return {
            (store.tenant, sku): store.simulator.available.get(store.item(sku))
            for store in self.stores
            for sku in self.skus
        }

    def outcomes(self, event_ids: Iterable[str]) -> dict[str, tuple[str, str | None, str | None]]:
        """For each id with a ledger row: (ledger outcome, ledger reason, processed_events outcome)."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return _outcomes(conn, event_ids)

    def snapshot(
        self, event_ids: Iterable[str]
    ) -> tuple[dict[str, tuple[str, str | None, str | None]], dict[Key, int]]:
        """`outcomes` and the master, read in one snapshot (REPEATABLE READ) so they agree."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                outcomes = _outcomes(conn, event_ids)
                rows = conn.execute("SELECT tenant, sku, available FROM inventory").fetchall()
        return outcomes, {(r[0], r[1]): int(r[2]) for r in rows}

    def ledger_rows(self, event_ids: Iterable[str]) -> int:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM ledger WHERE event_id = ANY(%s)", (list(event_ids),)
            ).fetchone()
        return int(row[0]) if row else 0

    def applied_unacknowledged(self) -> list[str]:
        """Sales applied in the master that no 200 ever acknowledged (a delivery given up that landed)."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT event_id FROM ledger WHERE kind = 'order_placed' AND outcome = 'applied'"
            ).fetchall()
        return sorted(r[0] for r in rows if r[0] not in self.acknowledged)

    def processor_caught_up(self) -> bool:
        return group_caught_up(self.kafka, "stocksync-processor", inventory_events.TOPIC)

    def fanout_caught_up(self) -> bool:
        return all(
            group_caught_up(self.kafka, "fanout.shopify", topic)
            for topic in (stock_changed.TOPIC, stock_rejected.TOPIC)
        )

    def settlement(
        self,
        burst: Burst,
        start: dict[Key, int],
        extra: Callable[[], list[str]] | None = None,
    ) -> Settlement:
        """Blocking (database and broker reads): call it off the event loop."""
        seen = Settlement(in_flight=burst.in_flight)
        acked = [o for o in burst.orders if o.acked]
        lines = [(event_id, (o.tenant, sku), quantity) for o in acked for event_id, sku, quantity in o.lines]
        outcomes, master = self.snapshot(line[0] for line in lines)
        acked_units: dict[Key, int] = {}
        applied_units: dict[Key, int] = {}
        for event_id, key, quantity in lines:
            acked_units[key] = acked_units.get(key, 0) + quantity
            found = outcomes.get(event_id)
            if found is None:
                seen.missing.append(event_id)
            elif found[0] != "applied" or found[2] != "applied":
                seen.not_applied[event_id] = f"ledger {found[0]}, processed_events {found[2]}"
            else:
                applied_units[key] = applied_units.get(key, 0) + quantity
        for key, before in start.items():
            actual = master.get(key)
            expected = before - acked_units.get(key, 0)
            if actual != expected:
                seen.master_off[key] = (expected, actual)
            beyond = (before - applied_units.get(key, 0)) - (actual if actual is not None else before)
            if beyond > 0:
                seen.duplicated_units[key] = beyond
        seen.negative = sum(1 for v in master.values() if v < 0)
        for key, count in self.shown().items():
            if count != master.get(key):
                seen.channel_off[key] = (master.get(key), count)
        seen.processor_behind = not self.processor_caught_up()
        seen.fanout_behind = not self.fanout_caught_up()
        if extra is not None:
            seen.extra = extra()
        return seen


def _outcomes(
    conn: psycopg.Connection[Any], event_ids: Iterable[str]
) -> dict[str, tuple[str, str | None, str | None]]:
    rows = conn.execute(
        "SELECT l.event_id, l.outcome, l.reason, p.outcome FROM ledger l "
        "LEFT JOIN processed_events p ON p.event_id = l.event_id WHERE l.event_id = ANY(%s)",
        (list(event_ids),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def order_numbers(start: int = 1_000_000) -> Iterator[int]:
    n = start
    while True:
        yield n
        n += 1


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]
