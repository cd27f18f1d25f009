"""The fault matrix (issue 12): a steady burst of signed orders from two tenants' Shopify stores while one
fault is applied per phase; after each, every acknowledged order is applied exactly once, the master equals
its count before the phase minus the acknowledged units, nothing is negative, both consumer groups are caught
up and each store shows the master's count. How long that took after the fault ended is the time to recover.

Faults, in the order they run: kill -9 of the processor; PostgreSQL stopped (fast shutdown) for 10 s and
started again on the same data and port; the Kafka broker stopped for 10 s and started again; kill -9 of the
fan-out; one store answering 503 to every call for 30 s; and a poison pair produced straight to
inventory.events among the live orders (garbage bytes, and a schema-valid receipt of 2,147,483,647 units that
overflows PostgreSQL's integer on top of a SKU's stock). The poison phase runs last: it asserts that the two
records are isolated and their neighbours applied, which a processor that loses the batch cannot meet, and
losses there must not spill into the other phases' counts. A killed service stays down for 3 s (a
supervisor's restart delay) before it is started again.

This module starts a Kafka broker and a PostgreSQL server of its own (whatever KAFKA_BOOTSTRAP_SERVERS or
DATABASE_URL say), since it stops them. It writes reports/fault-matrix.json and prints the table at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from confluent_kafka import KafkaException

from channels.connection import to_toml
from lab.local.faults import RestartablePostgres, ServerThread
from lab.local.kafka import JvmKafkaBroker, ensure_broker_jars
from lab.local.postgres import create_database, server_version
from lab.local.stack import Stack, StackConfig
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces.serve import serve
from lab.marketplaces.shopify import ShopifySimulator, sample_connection
from schemas import TOPICS, inventory_events, processor_dlq
from schemas.base import partition_key
from schemas.inventory_events import StockReceived
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, TopicReadError, ensure_topics, producer_config, read_to_end
from stocksync.settings import KafkaSettings
from tests.e2e.fault_kit import (
    Burst,
    Key,
    Settlement,
    Store,
    Tally,
    World,
    counting_503,
    order_numbers,
    project_root,
)
from tests.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TENANTS = ("acme", "globex")
SKUS = ("SKU-1", "SKU-2", "SKU-3", "SKU-4")  # the same names in both tenants: isolation is tested too
START = 50_000  # per SKU: plenty, so every acknowledged order must be applied
RATE_PER_S = 100.0  # orders per second, both stores together
LEAD_IN_S = 4.0  # burst before each fault begins
ORDER_DEADLINE_S = 60.0  # a channel gives an order's webhook up after this
RECOVER_TIMEOUT_S = 120.0
QUIET_TIMEOUT_S = 90.0
KILL_DOWN_S = 3.0
GARBAGE = b"\x00\xff{not an inventory event\x81"  # the undecodable poison record
# What reading Kafka or PostgreSQL may raise while a server is still coming back: not settled yet.
LOOK_ERRORS = (KafkaException, TopicReadError, psycopg.Error)
REPORT = project_root() / "reports" / "fault-matrix.json"


def say(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture (like tests.fix_kafka.announce, without its tag)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


# -- the faults ---------------------------------------------------------------------------------------------


class Fault:
    name = ""
    title = ""
    hold_s = 0.0

    async def begin(self, world: World) -> None:
        """Apply the fault."""

    async def end(self, world: World) -> None:
        """Take it away (start again what was stopped); returns once that is done."""

    def unmet(self, world: World) -> list[str]:
        """The fault's own conditions for "recovered" that do not hold yet (blocking)."""
        return []

    def figures(self, world: World) -> dict[str, Any]:
        return {}


class KillService(Fault):
    hold_s = KILL_DOWN_S

    def __init__(self, name: str, title: str, service: str) -> None:
        self.name, self.title, self.service = name, title, service

    async def begin(self, world: World) -> None:
        world.kill(self.service)

    async def end(self, world: World) -> None:
        world.restart(self.service)


class StopPostgres(Fault):
    name, title, hold_s = "postgres-stop", "PostgreSQL stopped 10 s, restarted", 10.0

    async def begin(self, world: World) -> None:
        await world.servers.run(world.postgres.halt)

    async def end(self, world: World) -> None:
        await world.servers.run(world.postgres.resume)


class StopBroker(Fault):
    name, title, hold_s = "broker-stop", "Kafka broker stopped 10 s, restarted", 10.0

    async def begin(self, world: World) -> None:
        await world.servers.run(world.broker.halt)

    async def end(self, world: World) -> None:
        await world.servers.run(world.broker.resume)


class ChannelOutage(Fault):
    name, title, hold_s = "channel-503", "a store answering 503 for 30 s", 30.0

    async def begin(self, world: World) -> None:
        world.store("acme").simulator.fail_for(503, self.hold_s)

    async def end(self, world: World) -> None:
        # The simulator's outage ends by itself at the deadline fail_for set; this only makes sure of it.
        world.store("acme").simulator.failing_until = 0.0


class Poison(Fault):
    name, title, hold_s = "poison", "poison records in the stream", LEAD_IN_S
    TENANT, SKU = "acme", "SKU-1"

    def __init__(self) -> None:
        self.receipt_id = f"admin:receipt:fault-matrix-poison-{uuid.uuid4().hex[:8]}"

    async def begin(self, world: World) -> None:
        now = datetime.now(UTC)
        receipt = StockReceived(
            event_id=self.receipt_id,
            tenant=self.TENANT,
            sku=self.SKU,
            quantity=2_147_483_647,  # PostgreSQL's integer maximum: on top of any stock it overflows
            reference="fault matrix: a receipt the database cannot apply",
            occurred_at=now,
            received_at=now,
        )
        key = partition_key(self.TENANT, self.SKU)  # the live orders' partition
        topic = world.kafka.topic(inventory_events.TOPIC)
        producer = AsyncProducer(producer_config(world.kafka))
        try:
            await producer.send(topic, GARBAGE, key=key)
            await producer.send(topic, inventory_events.encode(receipt), key=key)
        finally:
            await producer.close()

    def unmet(self, world: World) -> list[str]:
        found = world.outcomes([self.receipt_id]).get(self.receipt_id)
        problems = []
        if found is None:
            problems.append(f"the poison receipt {self.receipt_id} has no ledger row")
        else:
            ledger_outcome, reason, processed = found
            if ledger_outcome != "invalid" or not reason:
                problems.append(
                    f"the poison receipt's ledger row is {ledger_outcome!r} ({reason!r}), not invalid"
                )
            if processed != "invalid":
                problems.append(
                    f"the poison receipt's processed_events outcome is {processed!r}, not invalid"
                )
        letters = self.dead_letters(world)
        if not any(d.problem == "invalid" and d.event_id == self.receipt_id and d.reason for d in letters):
            problems.append("no dead letter on processor.dlq for the poison receipt, with its reason")
        if not any(
            d.problem == "undecodable" and base64.b64decode(d.value_b64) == GARBAGE and d.reason
            for d in letters
        ):
            problems.append("no dead letter on processor.dlq keeps the undecodable record, with its reason")
        return problems

    def dead_letters(self, world: World) -> list[processor_dlq.EventDeadLettered]:
        records = read_to_end(world.kafka, processor_dlq.TOPIC, timeout_s=10, missing_ok=True)
        return [processor_dlq.decode(m.value() or b"") for m in records]

    def figures(self, world: World) -> dict[str, Any]:
        found = world.outcomes([self.receipt_id]).get(self.receipt_id)
        letters: list[tuple[str, str | None, str]]
        try:
            letters = [(d.problem, d.event_id, d.reason) for d in self.dead_letters(world)]
        except LOOK_ERRORS as exc:
            letters = [("unreadable", None, str(exc))]
        return {
            "poison_receipt": self.receipt_id,
            "poison_receipt_outcome": found[0] if found else None,
            "poison_receipt_reason": found[1] if found else None,
            "processor_dlq": letters,
        }


FAULTS: list[Fault] = [
    KillService("processor-kill", "kill -9 of the processor", "processor"),
    StopPostgres(),
    StopBroker(),
    KillService("fanout-kill", "kill -9 of the fan-out", "fanout-shopify"),
    ChannelOutage(),
    Poison(),
]


# -- the world ----------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    fault: str
    title: str
    orders_sent: int = 0
    acknowledged: int = 0
    applied: int = 0
    lost: int = 0
    duplicated_units: int = 0
    gateway_503s: int = 0
    channel_503s: int = 0
    gave_up: int = 0
    refused: int = 0
    applied_unacknowledged: int = 0
    units_acknowledged: int = 0
    fault_s: float = 0.0
    recover_s: float | None = None
    passed: bool = False
    failure: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Matrix:
    world: World
    results: list[PhaseResult] = field(default_factory=list)
    orders: Iterator[int] = field(default_factory=order_numbers)
    acked_units: dict[Key, int] = field(default_factory=dict)  # every phase's acknowledged units
    final: dict[str, Any] = field(default_factory=dict)

    def conclude(self) -> None:
        """After the last phase: the master against its seed minus every acknowledged unit (blocking)."""
        world = self.world
        try:
            master, shown = world.master(), world.shown()
        except LOOK_ERRORS as exc:
            self.final = {"error": f"could not read the master: {exc}"}
            return
        expected = {key: n - self.acked_units.get(key, 0) for key, n in world.initial.items()}
        self.final = {
            "master_equals_seed_minus_acknowledged": master == expected,
            "stores_equal_master": shown == master,
            "master": {f"{t}/{sku}": n for (t, sku), n in sorted(master.items())},
            "differences": {
                f"{t}/{sku}": {"expected": n, "master": master.get((t, sku)), "store": shown.get((t, sku))}
                for (t, sku), n in sorted(expected.items())
                if master.get((t, sku)) != n or shown.get((t, sku)) != n
            },
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Matrix]:
    began = time.monotonic()
    servers = ServerThread()
    libs, version = await asyncio.to_thread(ensure_broker_jars)
    broker = JvmKafkaBroker(libs, version, partitions=4, heap="512m")
    postgres = RestartablePostgres()
    found: Matrix | None = None
    try:
        async with AsyncExitStack() as scope:
            await servers.run(broker.start)
            say(
                pytestconfig,
                f"[infra] started Apache Kafka {version} (jvm, pid {broker.pid}) at {broker.bootstrap} "
                "for the fault matrix",
            )
            await servers.run(postgres.start)
            pg_version = await asyncio.to_thread(server_version, postgres.url)
            say(
                pytestconfig,
                f"[infra] started PostgreSQL {pg_version} (embedded, pid {postgres.pid}) at "
                f"{postgres.url.rsplit('@', 1)[-1]} for the fault matrix",
            )
            _name, database_url = await asyncio.to_thread(create_database, postgres.url, "faults")
            await asyncio.to_thread(migrate, database_url)
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="faults.", partitions=4)
            await asyncio.to_thread(ensure_topics, kafka, TOPICS)

            stores = []
            for tenant in TENANTS:
                simulator, tally = ShopifySimulator(access_token=""), Tally()
                base_url = await scope.enter_async_context(serve(counting_503(simulator.app(), tally)))
                connection = sample_connection(base_url, skus=SKUS, conn_id=f"shop-{tenant}", tenant=tenant)
                simulator.access_token = connection.access_token.get_secret_value()
                store = Store(tenant, connection, simulator, tally)
                for sku in SKUS:
                    simulator.available[store.item(sku)] = 0
                stores.append(store)
            connections = tmp_path_factory.mktemp("fault-matrix") / "connections.toml"
            connections.write_text(to_toml([s.connection for s in stores]))
            stack = Stack(
                StackConfig(
                    bootstrap_servers=kafka.bootstrap_servers,
                    database_url=database_url,
                    connections_file=connections,
                    topic_prefix=kafka.topic_prefix,
                    partitions=kafka.partitions,
                )
            )
            # stopped off the event loop, which keeps serving the stores to the stopping fan-out
            scope.push_async_callback(asyncio.to_thread, stack.close)
            session = await scope.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
            )
            world = World(servers, broker, postgres, kafka, database_url, stack, stores, SKUS, session)
            world.start_ingest()
            world.start_processor()
            world.start_fanout()
            await eventually(stack.ready, timeout_s=60, what="the ingest gateway to answer /healthz")
            await seed(world)
            say(pytestconfig, f"[fault matrix] pipeline up and seeded in {time.monotonic() - began:.1f} s")
            found = Matrix(world)
            yield found
            await asyncio.to_thread(found.conclude)
    finally:
        stopping = time.monotonic()
        try:
            await servers.run(postgres.stop)
        finally:
            try:
                await servers.run(broker.stop)
            finally:
                servers.close()
        say(
            pytestconfig,
            f"[infra] stopped the fault matrix's PostgreSQL and Kafka in {time.monotonic() - stopping:.1f} s",
        )
        if found is not None:
            report(pytestconfig, found, time.monotonic() - began, version)


async def seed(world: World) -> None:
    # event ids are global (processed_events is keyed by id alone): each tenant's counts get ids of their own
    counts = [
        e for t in TENANTS for e in stock_counts(t, dict.fromkeys(SKUS, START), tag=f"fault-matrix-{t}")
    ]
    producer = AsyncProducer(producer_config(world.kafka))
    try:
        await producer.send_batch(world.kafka.topic(inventory_events.TOPIC), as_records(counts))
    finally:
        await producer.close()
    world.initial = {(t, sku): START for t in TENANTS for sku in SKUS}
    await eventually(
        lambda: asyncio.to_thread(lambda: world.master() == world.initial),
        timeout_s=60,
        what="the seeded master",
    )
    await eventually(lambda: world.shown() == world.initial, timeout_s=60, what="the seed on both stores")


# -- one phase ----------------------------------------------------------------------------------------------


def quiet(world: World) -> bool:
    """Nothing in flight: both groups caught up and each store showing the master (blocking)."""
    try:
        return world.processor_caught_up() and world.fanout_caught_up() and world.shown() == world.master()
    except LOOK_ERRORS:
        return False


async def run_phase(matrix: Matrix, fault: Fault, result: PhaseResult) -> None:
    """One phase: settled start, burst, fault, recovery; its figures go into `result`."""
    world = matrix.world
    repaired = await world.repair()  # what an earlier phase that failed half-way left stopped
    if repaired:
        result.extra["repaired_before_phase"] = repaired
    await eventually(
        lambda: asyncio.to_thread(quiet, world),
        timeout_s=QUIET_TIMEOUT_S,
        interval_s=0.25,
        what=f"the pipeline to be settled before the {fault.name} phase",
    )
    start: dict[Key, int] = await asyncio.to_thread(world.master)
    channel_503s = sum(s.answered_503 for s in world.stores)
    burst = Burst(
        world.session,
        world.stack.ingest_url,
        world.stores,
        world.skus,
        rate_per_s=RATE_PER_S,
        order_ids=matrix.orders,
        rng=random.Random(fault.name),
        deadline_s=ORDER_DEADLINE_S,
    )
    last: list[Settlement] = []

    def look() -> bool:
        try:
            problems = world.services_alive() + fault.unmet(world)
            seen = world.settlement(burst, start, extra=lambda: problems)
        except LOOK_ERRORS as exc:  # a server still coming back: look again
            seen = Settlement(in_flight=burst.in_flight, extra=[f"could not look: {exc}"])
        last[:] = [seen]
        return seen.ok

    burst.start()
    try:
        await asyncio.sleep(LEAD_IN_S)  # the burst runs on its own before the fault (holding, not waiting)
        began = time.monotonic()
        await fault.begin(world)
        await asyncio.sleep(fault.hold_s)  # holding the fault for its stated duration
        await fault.end(world)
        ended = time.monotonic()
        result.fault_s = round(ended - began, 1)
        burst.stop()
        try:
            await eventually(
                lambda: asyncio.to_thread(look),
                timeout_s=RECOVER_TIMEOUT_S,
                interval_s=0.25,
                what=f"recovery after the {fault.name} fault",
            )
            result.recover_s = round(time.monotonic() - ended, 1)
        except AssertionError:
            result.failure = f"not recovered {RECOVER_TIMEOUT_S:.0f} s after the fault: " + (
                last[0].describe() if last else "no look completed"
            )
    finally:
        await burst.close()
    final = last[0] if last else None
    acked = [o for o in burst.orders if o.acked]
    failed_lines = (
        set(final.missing) | set(final.not_applied) if final else {e for o in acked for e in o.event_ids}
    )
    result.orders_sent = len(burst.orders)
    result.acknowledged = len(acked)
    result.lost = sum(1 for o in acked if failed_lines & set(o.event_ids))
    result.applied = result.acknowledged - result.lost
    result.duplicated_units = sum(final.duplicated_units.values()) if final else 0
    result.gateway_503s = sum(o.answered_503 for o in burst.orders)
    result.channel_503s = sum(s.answered_503 for s in world.stores) - channel_503s
    result.gave_up = sum(1 for o in burst.orders if o.gave_up)
    result.refused = sum(1 for o in burst.orders if o.refused is not None)
    result.units_acknowledged = sum(q for o in acked for _e, _s, q in o.lines)
    for o in acked:
        for _event_id, sku, quantity in o.lines:
            key = (o.tenant, sku)
            matrix.acked_units[key] = matrix.acked_units.get(key, 0) + quantity
    unexpected = [o.order_id for o in acked if o.acked_events != o.event_ids]
    if unexpected and not result.failure:
        result.failure = f"{len(unexpected)} acknowledged orders published other events than their lines"
    given_up_lines = [e for o in burst.orders if o.gave_up for e in o.event_ids]
    landed = await asyncio.to_thread(world.outcomes, given_up_lines)
    result.applied_unacknowledged = sum(1 for v in landed.values() if v[0] == "applied")
    result.extra.update(await asyncio.to_thread(fault.figures, world))
    if result.refused and not result.failure:
        codes = sorted({o.refused for o in burst.orders if o.refused is not None})
        result.failure = f"{result.refused} orders answered neither 200 nor 503 ({codes})"
    if result.acknowledged == 0 and not result.failure:
        result.failure = "no order was acknowledged"
    result.passed = not result.failure


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_every_acknowledged_order_applied_once_and_every_store_converges(
    matrix: Matrix, fault: Fault, pytestconfig: pytest.Config
) -> None:
    result = PhaseResult(fault.name, fault.title)
    matrix.results.append(result)
    try:
        await run_phase(matrix, fault, result)
    except BaseException as exc:
        result.failure = result.failure or f"the phase raised {exc!r}"
        raise
    finally:
        say(pytestconfig, "[fault matrix] " + row(result))
    assert result.passed, f"{fault.title}: {result.failure}"
    assert result.lost == 0
    assert result.duplicated_units == 0


# -- the report ---------------------------------------------------------------------------------------------

COLUMNS = (
    ("fault", 38),
    ("result", 6),
    ("sent", 6),
    ("acked", 6),
    ("applied", 7),
    ("lost", 5),
    ("dup", 4),
    ("503 gw", 7),
    ("503 ch", 7),
    ("recover", 8),
)


def cells(r: PhaseResult) -> list[str]:
    recover = f"{r.recover_s:.1f} s" if r.recover_s is not None else "never"
    return [
        r.title,
        "ok" if r.passed else "FAILED",
        f"{r.orders_sent:,}",
        f"{r.acknowledged:,}",
        f"{r.applied:,}",
        f"{r.lost:,}",
        f"{r.duplicated_units:,}",
        f"{r.gateway_503s:,}",
        f"{r.channel_503s:,}",
        recover,
    ]


def row(r: PhaseResult) -> str:
    parts = [
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, (_, w)) in enumerate(zip(cells(r), COLUMNS, strict=True))
    ]
    return "  ".join(parts)


def report(config: pytest.Config, matrix: Matrix, duration_s: float, kafka_version: str) -> None:
    world = matrix.world
    body = {
        "generated_at": datetime.now(UTC).isoformat(),
        "duration_s": round(duration_s, 1),
        "cpus": os.cpu_count(),
        "kafka": kafka_version,
        "rate_per_s": RATE_PER_S,
        "lead_in_s": LEAD_IN_S,
        "order_deadline_s": ORDER_DEADLINE_S,
        "tenants": list(TENANTS),
        "skus": list(SKUS),
        "start_per_sku": START,
        "definitions": {
            "acknowledged": "orders the gateway answered 200 (after retries of 503s with the same order id)",
            "applied": "acknowledged orders whose every line has one ledger row and processed_events row, "
            "both 'applied'",
            "lost": "acknowledged orders with a line not applied",
            "duplicated_units": "units the master lost beyond the applied lines (an effect applied twice)",
            "gateway_503s": "webhook deliveries the gateway answered 503",
            "channel_503s": "fan-out calls the stores answered 503",
            "recover_s": "from the end of the fault (the burst stops then) until every check holds",
        },
        "phases": [asdict(r) for r in matrix.results],
        "totals": {
            "orders_sent": sum(r.orders_sent for r in matrix.results),
            "acknowledged": sum(r.acknowledged for r in matrix.results),
            "applied": sum(r.applied for r in matrix.results),
            "lost": sum(r.lost for r in matrix.results),
            "duplicated_units": sum(r.duplicated_units for r in matrix.results),
        },
        "final": matrix.final,
        "stores": [s.connection.id for s in world.stores],
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(body, indent=2) + "\n")
    header = "  ".join(n.ljust(w) if i == 0 else n.rjust(w) for i, (n, w) in enumerate(COLUMNS))
    say(config, "")
    say(
        config,
        f"fault matrix: {RATE_PER_S:.0f} orders/s from 2 stores, {len(SKUS)} SKUs each "
        f"({duration_s:.0f} s in all; {_relative(REPORT)})",
    )
    say(config, header)
    say(config, "-" * len(header))
    for r in matrix.results:
        say(config, row(r))
        if r.failure:
            say(config, f"    {r.failure[:600]}")
    final = matrix.final
    if "error" in final:
        say(config, f"after the last phase: {final['error']}")
    elif final:
        yes = {True: "yes", False: "NO"}
        say(
            config,
            "after the last phase: master = seed - every acknowledged unit: "
            f"{yes[final['master_equals_seed_minus_acknowledged']]}; "
            f"every store shows the master: {yes[final['stores_equal_master']]}",
        )


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
