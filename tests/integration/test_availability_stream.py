"""The availability stream (server-sent events) on a real gateway, broker and database (issue 16).

Records are produced straight to the test's stock.changed topic, each SKU always to the same partition (as
the processor keys them). The client is a real HTTP client reading the event stream line by line. To know
that everything produced before some moment has reached the client, the test writes a *fence*: one record
per partition, of SKUs of its own; records of a partition are sent in offset order, so once every fence has
arrived, everything produced before it has too (or was rightly left out). Nothing waits by sleeping."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestServer
from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from channels.connection import ConnectionRegistry, TenantToken, token_digest
from ingest import availability
from ingest.app import build_app
from ingest.availability import HUB, Change, Stream, decode_cursor, encode_cursor
from ingest.settings import IngestSettings
from lab.local.process import eventually
from schemas import TOPICS, stock_changed
from schemas.base import partition_key
from schemas.stock_changed import StockChanged
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.integration

ACME, GLOBEX = "tok-acme-0123456789", "tok-globex-0123456789"
DEADLINE_S = 30.0


# -- the client ----------------------------------------------------------------------------------------------


@dataclass
class Block:
    """One event-stream block: its comment lines and fields."""

    comments: list[str] = field(default_factory=list)
    id: str | None = None
    event: str | None = None
    data: str | None = None


class SseClient:
    """Reads an event stream as a browser's EventSource would: blocks end at a blank line; the last id seen
    is what it would send as Last-Event-ID."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None

    async def block(self) -> Block | None:
        """The next block; None once the server ended the stream."""
        block, seen = Block(), False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return block if seen else None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if seen:
                    if block.id is not None:
                        self.last_id = block.id
                    return block
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                block.comments.append(value)
            elif name == "id":
                block.id = value
            elif name == "event":
                block.event = value
            elif name == "data":
                block.data = value

    async def changes_until(
        self, wanted: Iterable[str], *, timeout_s: float = DEADLINE_S
    ) -> list[dict[str, Any]]:
        """Every change received until each SKU of `wanted` has come (the fence's included), in order."""
        missing, got = set(wanted), []
        async with asyncio.timeout(timeout_s):
            while missing:
                block = await self.block()
                assert block is not None, f"the stream ended while waiting for {sorted(missing)}"
                if block.event is None:
                    continue
                assert block.event == "availability", block
                assert block.id is not None, block
                assert block.data is not None, block
                change = json.loads(block.data)
                got.append(change)
                missing.discard(change["sku"])
        return got

    async def ended(self, *, timeout_s: float = DEADLINE_S) -> list[str]:
        """Read to the end of the stream; the comments of its last blocks."""
        comments: list[str] = []
        async with asyncio.timeout(timeout_s):
            while (block := await self.block()) is not None:
                comments += block.comments
        return comments


# -- the gateway and the topic -------------------------------------------------------------------------------


@dataclass
class Gateway:
    server: TestServer
    session: aiohttp.ClientSession
    kafka: KafkaSettings
    producer: Producer
    fences: int = 0
    opened: list[aiohttp.ClientResponse] = field(default_factory=list)

    @property
    def hub(self) -> availability.Hub:
        return self.server.app[HUB]

    async def connect(
        self, token: str = ACME, *, skus: Iterable[str] = (), last_id: str | None = None
    ) -> SseClient:
        headers = {"Authorization": f"Bearer {token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        response = await self.session.get(
            self.server.make_url("/v1/availability/stream"),
            params=[("sku", s) for s in skus],
            headers=headers,
        )
        self.opened.append(response)
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        client = SseClient(response)
        async with asyncio.timeout(DEADLINE_S):
            first = await client.block()
        assert first is not None
        assert first.comments == ["connected"], first
        assert first.id is not None
        assert first.event is None
        assert first.data is None
        return client

    async def produce(self, changes: Iterable[tuple[str, str, int, int]]) -> None:
        """(tenant, sku, version, master count) records, each SKU to its own fixed partition; returns once
        the broker has them all."""
        topic = self.kafka.topic(stock_changed.TOPIC)
        failed: list[str] = []
        lock = threading.Lock()

        def report(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                with lock:
                    failed.append(err.str())

        for tenant, sku, version, available in changes:
            now = datetime.now(UTC)
            record = StockChanged(
                tenant=tenant,
                sku=sku,
                available=available,
                version=version,
                cause_event_id=f"test:{tenant}:{sku}:{version}",
                origin_connection_id=None,
                occurred_at=now,
                received_at=now,
                committed_at=now,
                policy="never_cancel",
            )
            self.producer.produce(
                topic,
                record.model_dump_json().encode(),
                partition_key(tenant, sku),
                partition=partition_of(sku, self.kafka.partitions),
                on_delivery=report,
            )
        left = await asyncio.to_thread(self.producer.flush, DEADLINE_S)
        assert not failed, failed
        assert left == 0, f"{left} records not acknowledged in {DEADLINE_S:.0f} s"

    def next_fence(self, ahead: int = 1) -> set[str]:
        """The SKUs of the fence `ahead` rounds from now (to name them in a stream's filter beforehand)."""
        return {f"FENCE-{self.fences + ahead}-{p}" for p in range(self.kafka.partitions)}

    async def fence(self, tenant: str = "acme") -> set[str]:
        """One record in every partition, of SKUs no other record has; their names."""
        names = self.next_fence()
        self.fences += 1
        await self.produce((tenant, name, 1, 1) for name in sorted(names))
        return names


def partition_of(sku: str, partitions: int) -> int:
    if sku.startswith("FENCE-"):
        return int(sku.rsplit("-", 1)[1])
    return zlib.crc32(sku.encode()) % partitions


def is_fence(change: dict[str, Any]) -> bool:
    return str(change["sku"]).startswith("FENCE-")


def versions(changes: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(c["sku"], c["version"]) for c in changes if not is_fence(c)]


@pytest.fixture
async def gateway(kafka: KafkaSettings, database_url: str) -> AsyncIterator[Gateway]:
    ensure_topics(kafka, TOPICS)
    registry = ConnectionRegistry(
        [],
        [
            TenantToken(id="acme", admin_token_sha256=token_digest(ACME)),
            TenantToken(id="globex", admin_token_sha256=token_digest(GLOBEX)),
        ],
    )
    settings = IngestSettings(
        kafka=kafka, postgres=PostgresSettings(database_url=database_url), connections_table=False
    )
    server = TestServer(build_app(settings, connections=registry))
    await server.start_server()
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE_S))
    gateway = Gateway(server, session, kafka, producer)
    try:
        yield gateway
    finally:
        for response in gateway.opened:
            response.close()
        await session.close()
        await server.close()
        await asyncio.to_thread(producer.flush, 5)


# -- tests ---------------------------------------------------------------------------------------------------


async def test_a_client_that_reconnects_gets_exactly_what_it_missed(gateway: Gateway) -> None:
    """Connect, get part of a burst, leave; more changes come meanwhile; reconnecting with the last id
    received gives exactly the changes not yet received: none twice, none missing."""
    stream = await gateway.connect()
    first = [("acme", f"B1-{i:02}", 1, i) for i in range(40)]
    noise = [("globex", f"B1-{i:02}", 1, i) for i in range(10)]  # the same SKU names, another tenant
    await gateway.produce(first + noise)
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S):
        while len(got) < 15:
            block = await stream.block()
            assert block is not None
            if block.data is not None:
                got.append(json.loads(block.data))
    before = versions(got)
    stream.response.close()  # whatever the server wrote after the 15th was never read
    await eventually(lambda: not gateway.hub.streams, what="the stream to end with its client")

    second = [("acme", f"B2-{i:02}", 1, 100 + i) for i in range(10)]
    await gateway.produce([*second, ("globex", "B2-00", 1, 1)])
    assert stream.last_id is not None
    again = await gateway.connect(last_id=stream.last_id)
    fence = await gateway.fence()
    after = versions(await again.changes_until(fence))

    assert not set(before) & set(after), "a change reached the client twice"
    assert sorted(before + after) == sorted((sku, v) for _, sku, v, _ in first + second)


async def test_resuming_reads_across_an_idle_reader_and_a_quiet_stream(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared reader stops once no stream needs it; a cursor is a topic position, so resuming still
    gives what was missed. A client that got no change at all resumes from its connected id."""
    monkeypatch.setattr(availability, "TAIL_IDLE_S", 0.2)
    quiet = await gateway.connect(skus=["NOT-YET"])
    connected_id = quiet.last_id
    assert connected_id is not None
    quiet.response.close()
    await eventually(lambda: gateway.hub.tail is None, what="the idle reader to stop")

    await gateway.produce([("acme", "NOT-YET", 3, 9), ("acme", "OTHER", 1, 1)])
    fence = gateway.next_fence()
    resumed = await gateway.connect(skus=["NOT-YET", *fence], last_id=connected_id)
    assert gateway.hub.tail is not None
    assert gateway.hub.tail.running
    assert await gateway.fence() == fence
    got = await resumed.changes_until(fence)
    assert versions(got) == [("NOT-YET", 3)]
    assert got[0]["available"] == 9


async def test_a_new_stream_starts_at_the_live_end(gateway: Gateway) -> None:
    await gateway.produce([("acme", "OLD", 1, 5)])
    stream = await gateway.connect()
    await gateway.produce([("acme", "NEW", 1, 6)])
    got = await stream.changes_until(await gateway.fence())
    assert versions(got) == [("NEW", 1)]


async def test_streams_carry_their_tenant_and_skus_only(gateway: Gateway, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO allocation_policies (tenant, sku, policy, buffer) "
            "VALUES ('acme', 'SKU-2', 'never_cancel', 1)"
        )
        db.execute(
            "INSERT INTO allocations (tenant, sku, connection_id, channel, granted) "
            "VALUES ('acme', 'SKU-2', 'shop-a', 'shopify', 4), ('acme', 'SKU-2', 'shop-b', 'ebay', 2)"
        )
    fences = gateway.next_fence()
    acme = await gateway.connect(skus=["SKU-2", "SKU-4", *fences])
    globex = await gateway.connect(GLOBEX)
    everything = await gateway.connect()
    changes = [("acme", f"SKU-{i}", 1, 10 + i) for i in range(1, 6)] + [
        ("globex", f"SKU-{i}", 1, i) for i in (2, 7)
    ]
    await gateway.produce(changes)
    assert await gateway.fence() == fences
    globex_fence = await gateway.fence("globex")

    got = await acme.changes_until(fences)
    assert sorted(versions(got)) == [("SKU-2", 1), ("SKU-4", 1)]
    [sku2] = [c for c in got if c["sku"] == "SKU-2"]
    # master 12, buffer 1, grants 4 + 2: an agent may see 5, which is limited stock
    assert (sku2["available"], sku2["status"]) == (5, "limited_stock")
    assert set(sku2) == {"sku", "available", "status", "version", "as_of"}
    assert datetime.fromisoformat(sku2["as_of"]).tzinfo is not None

    assert sorted(versions(await globex.changes_until(globex_fence))) == [("SKU-2", 1), ("SKU-7", 1)]
    all_acme = await everything.changes_until(fences)
    assert sorted(versions(all_acme)) == [(f"SKU-{i}", 1) for i in range(1, 6)]
    assert [c["available"] for c in all_acme if c["sku"] == "SKU-3"] == [13]


async def test_a_sku_is_never_sent_at_a_version_it_already_had(gateway: Gateway) -> None:
    """On one connection, live or from a resumed gap, a SKU's versions only go up: re-emitted records (the
    processor re-emits after a redelivery) and older versions are not sent; a slow reader gets the
    newest version rather than every one."""
    first, second = gateway.next_fence(1), gateway.next_fence(2)
    stream = await gateway.connect(skus=["HOT", *first, *second])
    await gateway.produce([("acme", "HOT", v, 100 - v) for v in range(1, 31)])
    await gateway.fence()
    got = [v for _, v in versions(await stream.changes_until(first))]
    assert got[-1] == 30
    assert got == sorted(set(got)), f"versions not strictly increasing: {got}"
    await gateway.produce([("acme", "HOT", 29, 71), ("acme", "HOT", 30, 70), ("acme", "HOT", 2, 98)])
    await gateway.produce([("acme", "HOT", 31, 69)])
    await gateway.fence()
    assert versions(await stream.changes_until(second)) == [("HOT", 31)]

    stream.response.close()
    assert stream.last_id is not None
    await gateway.produce([("acme", "HOT", v, 100 - v) for v in (32, 33, 32, 33, 31)])
    third = gateway.next_fence()
    resumed = await gateway.connect(skus=["HOT", *third], last_id=stream.last_id)
    await gateway.fence()
    after = [v for _, v in versions(await resumed.changes_until(third))]
    assert after in ([32, 33], [33]), after


async def test_a_malformed_or_foreign_last_event_id_is_400_and_a_lost_one_410(gateway: Gateway) -> None:
    url = gateway.server.make_url("/v1/availability/stream")
    partitions = gateway.kafka.partitions
    whole = {p: 0 for p in range(partitions)}
    for bad, problem in (
        ("not base64!", "outside base64url"),
        (encode_text("garbage"), "'garbage' is not 'partition:offset'"),
        (encode_text("0:1,0:2"), "partition 0 appears twice"),
        (encode_text("0:-1"), "not 'partition:offset'"),
        ("x" * 5000, "5000 characters long"),
        (encode_cursor({**whole, 99: 0}), "names partition 99"),
        (encode_cursor({**whole, 1: 10**9}), "partition 1 offset 1000000000 is past"),
    ):
        resp = await gateway.session.get(
            url, headers={"Authorization": f"Bearer {ACME}", "Last-Event-ID": bad}
        )
        assert resp.status == 400, (bad, await resp.text())
        message = (await resp.json())["error"]
        assert message.startswith("Last-Event-ID must be an id this stream sent"), message
        assert problem in message, message
        assert "Reconnect without the header" in message

    # records deleted by retention: the changes after that id cannot be given any more
    await gateway.produce([("acme", "X", v, 1) for v in range(1, 4)])
    gone = partition_of("X", partitions)
    topic = gateway.kafka.topic(stock_changed.TOPIC)
    admin = AdminClient({"bootstrap.servers": gateway.kafka.bootstrap_servers})
    for future in admin.delete_records([TopicPartition(topic, gone, 2)]).values():
        await asyncio.to_thread(future.result, DEADLINE_S)
    resp = await gateway.session.get(
        url, headers={"Authorization": f"Bearer {ACME}", "Last-Event-ID": encode_cursor(whole)}
    )
    assert resp.status == 410, await resp.text()
    assert "GET /v1/availability" in (await resp.json())["error"]
    assert not gateway.hub.streams
    # an invalid SKU filter is 400 too, before anything starts
    resp = await gateway.session.get(
        url, params={"sku": "A\x01"}, headers={"Authorization": f"Bearer {ACME}"}
    )
    assert resp.status == 400


def encode_text(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_heartbeats_keep_a_quiet_stream_alive(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability, "HEARTBEAT_S", 0.2)
    stream = await gateway.connect(skus=["QUIET"])
    async with asyncio.timeout(DEADLINE_S):
        block = await stream.block()
    assert block is not None
    assert block.comments == ["heartbeat"]
    assert block.data is None


async def test_streams_end_cleanly_when_the_gateway_stops(gateway: Gateway) -> None:
    streams = [await gateway.connect(), await gateway.connect(GLOBEX, skus=["A"])]
    hub = gateway.hub
    tail = hub.tail
    assert tail is not None
    assert tail.running
    assert len(hub.streams) == 2
    closing = asyncio.create_task(gateway.server.close())
    for stream in streams:
        comments = await stream.ended()
        assert any("shutting down: reconnect with Last-Event-ID" in c for c in comments), comments
    async with asyncio.timeout(DEADLINE_S):
        await closing
    assert not running(tail)
    assert hub.tail is None
    assert not hub.streams
    assert not [t for t in threading.enumerate() if t.name.startswith("availability")]


def running(tail: availability.Tail) -> bool:
    return tail.running


# -- one stream's queue, without Kafka -----------------------------------------------------------------------


def change(sku: str, version: int, partition: int, offset: int, tenant: str = "acme") -> Change:
    return Change(tenant, sku, version, partition, offset, json.dumps({"sku": sku, "version": version}))


def test_a_queue_coalesces_per_sku_and_each_cursor_resumes_exactly() -> None:
    tail = {0: 0, 1: 0}
    stream = Stream("acme", None, tail)
    for c in (change("A", 1, 0, 10), change("B", 1, 0, 11), change("A", 2, 0, 12), change("C", 1, 1, 5)):
        stream.offer(c)
    stream.offer(change("A", 1, 0, 13))  # an older version later in the topic (a re-emit): dropped
    stream.offer(change("Z", 1, 0, 14, tenant="globex"))
    assert stream.take(10) == []  # nothing goes before the reader has passed it
    tail.update({0: 15, 1: 6})
    taken = stream.take(10)
    assert [(c.sku, c.version) for c, _ in taken] == [("C", 1), ("B", 1), ("A", 2)]
    cursors = [decode_cursor(cursor) for _, cursor in taken]
    # after C (p1 offset 5): p0 still holds B at 11 -> resume reads p0 from 11, p1 from 6
    assert cursors[0] == {0: 11, 1: 6}
    assert cursors[1] == {0: 12, 1: 6}  # A v1 at 10 is superseded by A v2 at 12, still to come
    assert cursors[2] == {0: 15, 1: 6}
    assert decode_cursor(stream.cursor()) == {0: 15, 1: 6}
    stream.offer(change("A", 2, 0, 20))  # the same version re-emitted: never sent twice
    tail[0] = 21
    assert stream.take(10) == []
    assert decode_cursor(stream.cursor()) == {0: 21, 1: 6}


def test_a_resuming_queue_sends_its_gap_before_what_came_live() -> None:
    tail = {0: 50, 1: 50}
    stream = Stream("acme", frozenset({"A", "B"}), tail)
    stream.begin_gap({0: (40, 50)})
    stream.floor[1] = 60  # the client's cursor is ahead of this reader on partition 1
    stream.offer(change("A", 9, 0, 55))  # live, past the gap: waits for it
    stream.offer(change("B", 3, 1, 58))  # below the client's cursor: it had it already
    assert stream.take(10) == []
    assert decode_cursor(stream.cursor()) == {0: 40, 1: 60}
    stream.offer_gap([change("B", 1, 0, 41), change("A", 7, 0, 42), change("X", 1, 0, 43)], {0: 45})
    taken = stream.take(10)
    assert [(c.sku, c.version) for c, _ in taken] == [("B", 1)]  # A v7 gives way to A v9
    assert decode_cursor(taken[0][1]) == {0: 45, 1: 60}
    stream.offer_gap([], {0: 50})
    tail.update({0: 56, 1: 61})
    assert [(c.sku, c.version, decode_cursor(cur)) for c, cur in stream.take(10)] == [
        ("A", 9, {0: 56, 1: 61})
    ]


def test_a_client_too_far_behind_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(availability, "MAX_PENDING", 3)
    stream = Stream("acme", None, {0: 0})
    for i in range(4):
        stream.offer(change(f"S{i}", 1, 0, i))
    assert stream.closed is not None
    assert "reconnect with Last-Event-ID" in stream.closed


def test_cursors_round_trip() -> None:
    positions = {0: 118, 1: 0, 11: 2**40}
    assert decode_cursor(encode_cursor(positions)) == positions
    assert "=" not in encode_cursor(positions)
