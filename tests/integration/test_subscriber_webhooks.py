"""Signed availability webhooks to subscribers (fanout/subscribers.py) on a real Kafka and PostgreSQL: the
worker runs in-process against an aiohttp server standing for the subscribers, which verifies every request
the way a receiver should. ``stock.changed`` records are produced straight to the test's topic."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

import schemas
from allocation.policy import set_policy
from cli.subscribers import subscribers_app
from fanout.settings import FanoutSettings
from fanout.subscribers import (
    Courier,
    Subscriber,
    SubscriberMetrics,
    Subscribers,
    SubscriberSettings,
    WebhookError,
    add_subscriber,
    build_subscribers,
    change_of,
    list_subscribers,
    remove_subscriber,
)
from schemas import fanout_dlq, stock_changed
from schemas.base import partition_key
from schemas.fanout_dlq import UpdateDeadLettered
from schemas.stock_changed import StockChanged
from stocksync.kafka import AsyncProducer, ensure_topics, producer_config, read_to_end
from stocksync.retry import RetryPolicy
from stocksync.settings import KafkaSettings, PostgresSettings
from tests.helpers import eventually, group_caught_up

pytestmark = pytest.mark.integration

TOLERANCE_S = 300


@dataclass
class Received:
    version: int
    payload: dict[str, Any]
    headers: dict[str, str]
    valid: bool


@dataclass
class Endpoint:
    """One subscriber's URL path: its secret once known, scripted answers, and what it received."""

    secret: str = ""
    answers: list[int] = field(default_factory=list)  # then `otherwise`
    otherwise: int = 200
    retry_after: list[str] = field(default_factory=list)  # sent with the 429s and 503s, in order
    gate: asyncio.Event | None = None  # while set to an unset event, answers wait for it
    received: list[Received] = field(default_factory=list)

    def versions(self, sku: str | None = None) -> list[int]:
        return [r.version for r in self.received if sku is None or r.payload["sku"] == sku]


class Receivers:
    """An aiohttp server whose every path is one subscriber. Each request is verified as a receiver does:
    the HMAC of "<timestamp>.<raw body>" with the secret, compared in constant time, and a timestamp
    within 5 minutes of the clock."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        self.server = TestServer(app)

    def url(self, name: str) -> str:
        self.endpoints.setdefault(name, Endpoint())
        return str(self.server.make_url(f"/{name}"))

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["name"]]
        body = await request.read()  # the raw bytes, before any parsing
        stamp = request.headers.get("X-Stocksync-Timestamp", "")
        expected = hmac.new(endpoint.secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(request.headers.get("X-Stocksync-Signature", ""), f"sha256={expected}")
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= TOLERANCE_S
        payload = json.loads(body)
        endpoint.received.append(
            Received(payload["version"], payload, dict(request.headers), signed and fresh)
        )
        if endpoint.gate is not None:
            await endpoint.gate.wait()
        status = endpoint.answers.pop(0) if endpoint.answers else endpoint.otherwise
        headers = {}
        if status in (429, 503) and endpoint.retry_after:
            headers["Retry-After"] = endpoint.retry_after.pop(0)
        return web.Response(status=status, text="" if status < 300 else f"answered {status}", headers=headers)


@asynccontextmanager
async def receivers() -> AsyncIterator[Receivers]:
    r = Receivers()
    async with r.server:
        yield r


def settings(kafka: KafkaSettings, database_url: str) -> SubscriberSettings:
    """Retries in milliseconds, the table re-read every 0.2 s."""
    return SubscriberSettings(
        fanout=FanoutSettings(
            kafka=kafka, postgres=PostgresSettings(database_url=database_url), port=0, session_timeout_s=6.0
        ),
        attempts=5,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        deadline_s=30.0,
        refresh_s=0.2,
        timeout_s=10.0,
    )


@asynccontextmanager
async def worker(kafka: KafkaSettings, database_url: str) -> AsyncIterator[Subscribers]:
    """The worker running in-process until the block ends (then stopped and awaited)."""
    ensure_topics(kafka, schemas.TOPICS)
    stop = asyncio.Event()
    async with build_subscribers(settings(kafka, database_url)) as subs:
        task = asyncio.create_task(subs.run(stop, check_interval_s=60.0))
        try:
            yield subs
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def subscribe(database_url: str, to: Receivers, name: str, tenant: str, skus: list[str] | None = None) -> str:
    s = add_subscriber(database_url, tenant, to.url(name), skus)
    to.endpoints[name].secret = s.secret
    return s.id


async def known(subs: Subscribers, *ids: str, gone: tuple[str, ...] = ()) -> None:
    def check() -> bool:
        current = subs.worker.subscribers
        return all(i in current for i in ids) and not any(i in current for i in gone)

    await eventually(check, timeout_s=15, what=f"the worker to serve {ids} and not {gone}")


class Stock:
    """Produces stock.changed records of the test's topic, keyed as the processor keys them."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.producer = AsyncProducer(producer_config(kafka))

    async def changed(
        self, tenant: str, sku: str, version: int, available: int, policy: str = "mirror"
    ) -> StockChanged:
        now = datetime.now(UTC)
        record = StockChanged.model_validate(
            {
                "tenant": tenant,
                "sku": sku,
                "available": available,
                "version": version,
                "cause_event_id": f"test:{tenant}:{sku}:{version}",
                "origin_connection_id": None,
                "occurred_at": now,
                "received_at": now,
                "committed_at": now,
                "policy": policy,
            }
        )
        await self.producer.send(
            self.kafka.topic(stock_changed.TOPIC),
            record.model_dump_json().encode(),
            key=partition_key(tenant, sku),
        )
        return record

    async def close(self) -> None:
        await self.producer.close()


@asynccontextmanager
async def stock(kafka: KafkaSettings) -> AsyncIterator[Stock]:
    s = Stock(kafka)
    try:
        yield s
    finally:
        await s.close()


def sample(subs: Subscribers, name: str, labels: dict[str, str] | None = None) -> float:
    return subs.registry.get_sample_value(name, labels or {}) or 0.0


def dead_letters(kafka: KafkaSettings) -> list[UpdateDeadLettered]:
    return [fanout_dlq.decode(m.value() or b"") for m in read_to_end(kafka, fanout_dlq.TOPIC)]


async def caught_up(kafka: KafkaSettings) -> bool:
    """The group's committed offsets reached the end of stock.changed."""
    return await asyncio.to_thread(group_caught_up, kafka, "fanout.subscribers", stock_changed.TOPIC)


def grant(database_url: str, tenant: str, sku: str, grants: dict[str, int]) -> None:
    with psycopg.connect(database_url) as conn:
        for connection_id, granted in grants.items():
            conn.execute(
                "INSERT INTO allocations (tenant, sku, connection_id, channel, granted) "
                "VALUES (%s, %s, %s, 'shopify', %s)",
                (tenant, sku, connection_id, granted),
            )


async def test_each_subscriber_gets_its_tenants_changes_signed_as_agents_may_see_them(
    kafka: KafkaSettings, database_url: str
) -> None:
    # SKU B is allocated: agents see the slack, 10 - buffer 1 - granted (3 + 2) = 4 units.
    set_policy(database_url, "acme", "never_cancel", sku="B", buffer=1)
    grant(database_url, "acme", "B", {"shop-1": 3, "amazon-1": 2})
    async with receivers() as to, stock(kafka) as produce:
        every = subscribe(database_url, to, "every", "acme")
        only_a = subscribe(database_url, to, "only-a", "acme", ["A"])
        other = subscribe(database_url, to, "other", "globex")
        async with worker(kafka, database_url) as subs:
            await known(subs, every, only_a, other)
            a = await produce.changed("acme", "A", 1, 7)
            await produce.changed("acme", "B", 4, 10, policy="never_cancel")
            await produce.changed("globex", "A", 2, 0)
            await eventually(
                lambda: (
                    len(to.endpoints["every"].received) == 2
                    and to.endpoints["only-a"].received
                    and to.endpoints["other"].received
                ),
                timeout_s=30,
                what="every subscriber's changes",
            )
    got = {r.payload["sku"]: r for r in to.endpoints["every"].received}
    assert got["A"].payload == {
        "tenant": "acme",
        "sku": "A",
        "available": 7,
        "status": "in_stock",
        "version": 1,
        "as_of": a.committed_at.isoformat(),
    }
    assert {k: got["B"].payload[k] for k in ("available", "status", "version")} == {
        "available": 4,
        "status": "limited_stock",
        "version": 4,
    }
    assert [r.payload["sku"] for r in to.endpoints["only-a"].received] == ["A"]
    assert [(r.payload["tenant"], r.payload["status"]) for r in to.endpoints["other"].received] == [
        ("globex", "out_of_stock")
    ]
    for endpoint in to.endpoints.values():
        for r in endpoint.received:
            assert r.valid, r.headers
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers["X-Stocksync-Delivery"].startswith("dlv_")
    assert sample(subs, "fanout_subscriber_deliveries_total", {"outcome": "delivered"}) == 4
    assert sample(subs, "fanout_subscriber_delivery_lag_seconds_count") == 4


async def test_a_slow_subscriber_gets_the_newest_version_and_never_an_older_one(
    kafka: KafkaSettings, database_url: str
) -> None:
    async with receivers() as to, stock(kafka) as produce:
        slow = subscribe(database_url, to, "slow", "acme")
        to.endpoints["slow"].gate = gate = asyncio.Event()
        async with worker(kafka, database_url) as subs:
            await known(subs, slow)
            await produce.changed("acme", "A", 1, 10)
            await eventually(lambda: to.endpoints["slow"].received, timeout_s=30, what="version 1 to arrive")
            for version in (2, 3, 4):  # while version 1 waits for its answer
                await produce.changed("acme", "A", version, 10 - version)
            await eventually(
                lambda: sample(subs, "fanout_subscriber_deliveries_total", {"outcome": "coalesced"}) == 2,
                timeout_s=30,
                what="versions 2 and 3 to be replaced by 4",
            )
            gate.set()
            await eventually(
                lambda: to.endpoints["slow"].versions() == [1, 4], timeout_s=30, what="version 4 to arrive"
            )
            await produce.changed("acme", "A", 3, 7)  # an older version after a newer (a redelivery)
            await produce.changed("acme", "A", 5, 5)
            await eventually(
                lambda: len(to.endpoints["slow"].received) >= 3, timeout_s=30, what="version 5 to arrive"
            )
            assert to.endpoints["slow"].versions() == [1, 4, 5]
            skipped = [
                sample(subs, "fanout_subscriber_deliveries_total", {"outcome": o})
                for o in ("coalesced", "stale")
            ]
            assert sum(skipped) == 3  # versions 2 and 3, then the late 3 (stale, or coalesced with 5)
            await eventually(
                lambda: caught_up(kafka),
                timeout_s=30,
                what="the group's offsets to reach the end once everything was delivered",
            )


async def test_a_subscriber_that_fails_twice_gets_the_change_on_the_third_attempt(
    kafka: KafkaSettings, database_url: str
) -> None:
    async with receivers() as to, stock(kafka) as produce:
        flaky = subscribe(database_url, to, "flaky", "acme")
        to.endpoints["flaky"].answers = [500, 500]
        async with worker(kafka, database_url) as subs:
            await known(subs, flaky)
            await produce.changed("acme", "A", 1, 3)
            await eventually(
                lambda: sample(subs, "fanout_subscriber_deliveries_total", {"outcome": "delivered"}) == 1,
                timeout_s=30,
                what="the delivery after two 500s",
            )
            assert sample(subs, "fanout_subscriber_attempts_total", {"result": "server_error"}) == 2
            assert sample(subs, "fanout_subscriber_attempts_total", {"result": "ok"}) == 1
    received = to.endpoints["flaky"].received
    assert [r.version for r in received] == [1, 1, 1]
    assert all(r.valid for r in received)
    assert len({r.headers["X-Stocksync-Delivery"] for r in received}) == 1  # one delivery, three attempts
    assert await asyncio.to_thread(dead_letters, kafka) == []


async def test_a_failing_subscriber_is_dead_lettered_without_holding_up_a_healthy_one(
    kafka: KafkaSettings, database_url: str
) -> None:
    async with receivers() as to, stock(kafka) as produce:
        broken = subscribe(database_url, to, "broken", "acme")
        healthy = subscribe(database_url, to, "healthy", "acme")
        to.endpoints["broken"].otherwise = 500
        to.endpoints["broken"].gate = gate = asyncio.Event()  # it answers nothing until the test says so
        async with worker(kafka, database_url) as subs:
            await known(subs, broken, healthy)
            await produce.changed("acme", "A", 1, 9)
            await produce.changed("acme", "B", 1, 4)
            await eventually(
                lambda: sorted(r.payload["sku"] for r in to.endpoints["healthy"].received) == ["A", "B"],
                timeout_s=30,
                what="the healthy subscriber's deliveries while the other hangs",
            )
            # At least once: nothing is acknowledged while a subscriber of the batch is still owed it.
            assert not await caught_up(kafka)
            gate.set()

            async def both_letters() -> list[UpdateDeadLettered]:
                found = await asyncio.to_thread(dead_letters, kafka)
                return found if len(found) == 2 else []

            letters = await eventually(both_letters, timeout_s=30, what="both dead letters")
            await eventually(
                lambda: caught_up(kafka),
                timeout_s=30,
                what="the offsets once every subscriber was delivered or dead-lettered",
            )
            assert sample(subs, "fanout_subscriber_dead_letters_total") == 2
    by_sku = {d.sku: d for d in letters}
    assert set(by_sku) == {"A", "B"}
    a = by_sku["A"]
    assert (a.connection_id, a.channel, a.tenant, a.quantity, a.version) == (
        broken,
        "subscriber",
        "acme",
        9,
        1,
    )
    assert a.original_topic == "stock.changed"
    assert a.original["sku"] == "A"
    assert a.original["available"] == 9
    assert a.original["status"] == "in_stock"
    assert a.attempts == 5
    assert a.status == 500
    assert "answered HTTP 500" in a.last_error
    assert len(to.endpoints["broken"].versions("A")) == 5


async def test_removed_subscribers_stop_and_new_ones_start_without_a_restart(
    kafka: KafkaSettings, database_url: str
) -> None:
    async with receivers() as to, stock(kafka) as produce:
        stays = subscribe(database_url, to, "stays", "acme")
        leaves = subscribe(database_url, to, "leaves", "acme")
        async with worker(kafka, database_url) as subs:
            await known(subs, stays, leaves)
            await produce.changed("acme", "A", 1, 9)
            await eventually(
                lambda: to.endpoints["stays"].received and to.endpoints["leaves"].received,
                timeout_s=30,
                what="version 1 at both",
            )
            assert remove_subscriber(database_url, leaves)
            joins = subscribe(database_url, to, "joins", "acme")
            await known(subs, stays, joins, gone=(leaves,))
            await produce.changed("acme", "A", 2, 8)
            await eventually(
                lambda: (
                    to.endpoints["stays"].versions() == [1, 2] and to.endpoints["joins"].versions() == [2]
                ),
                timeout_s=30,
                what="version 2 at the subscribers that remain",
            )
    assert to.endpoints["leaves"].versions() == [1]


async def test_retry_after_is_waited_and_a_refusal_is_not_retried(kafka: KafkaSettings) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(deadline_s=60, max_attempts=5, backoff_base_s=2, retry_after_cap_s=30, sleep=record)
    registry = CollectorRegistry()
    producer = AsyncProducer(producer_config(kafka))
    change = change_of(
        StockChanged.model_validate(
            {
                "tenant": "acme",
                "sku": "A",
                "available": 3,
                "version": 1,
                "cause_event_id": "test:a",
                "origin_connection_id": None,
                "occurred_at": datetime.now(UTC),
                "received_at": datetime.now(UTC),
                "committed_at": datetime.now(UTC),
            }
        ),
        3,
    )
    try:
        async with receivers() as to, aiohttp.ClientSession() as session:
            courier = Courier(
                session, policy, SubscriberMetrics(registry), producer, "unused", timeout_s=5, concurrency=4
            )
            to.endpoints["busy"] = Endpoint(secret="s1", answers=[429, 503], retry_after=["7", "120"])
            to.endpoints["gone"] = Endpoint(secret="s2", otherwise=404)
            busy = Subscriber("sub_busy", "acme", to.url("busy"), "s1")
            gone = Subscriber("sub_gone", "acme", to.url("gone"), "s2")
            outcome = await courier.deliver(busy, change)
            assert outcome.ok
            assert outcome.attempts == 3
            assert waits == [7.0, 30.0]  # as asked, the second capped at retry_after_cap_s
            assert all(r.valid for r in to.endpoints["busy"].received)
            outcome = await courier.deliver(gone, change)
    finally:
        await producer.close()
    assert isinstance(outcome.error, WebhookError)
    assert outcome.error.status == 404
    assert outcome.attempts == 1
    assert len(to.endpoints["gone"].received) == 1
    assert waits == [7.0, 30.0]  # a 404 is not retried


def cli(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        subscribers_app, list(args), env={"DATABASE_URL": database_url, "COLUMNS": "200"}
    )


def test_the_command_line_adds_lists_and_removes_subscribers(database_url: str) -> None:
    added = cli(database_url, "add", "--tenant", "acme", "--url", "https://agent.example/h", "--sku", "A")
    assert added.exit_code == 0, added.output
    [subscriber] = list_subscribers(database_url, "acme")
    assert subscriber.id in added.output
    assert subscriber.secret in added.output
    assert "shown only now" in added.output
    assert subscriber.skus == frozenset({"A"})
    assert subscriber.url == "https://agent.example/h"
    everything = cli(database_url, "add", "--tenant", "acme", "--url", "http://127.0.0.1:9/x")
    assert everything.exit_code == 0, everything.output
    listed = cli(database_url, "list", "--tenant", "acme")
    assert listed.exit_code == 0, listed.output
    assert subscriber.id in listed.output
    assert "(every SKU)" in listed.output
    assert all(s.secret not in listed.output for s in list_subscribers(database_url))
    assert "sswh_" not in listed.output
    removed = cli(database_url, "remove", subscriber.id)
    assert removed.exit_code == 0, removed.output
    assert [s.id for s in list_subscribers(database_url)] != []
    assert subscriber.id not in {s.id for s in list_subscribers(database_url)}
    again = cli(database_url, "remove", subscriber.id)
    assert again.exit_code == 1
    assert "no subscriber" in again.output
    bad = cli(database_url, "add", "--tenant", "acme", "--url", "ftp://agent.example/h")
    assert bad.exit_code == 2
    assert "not an http:// or https:// URL" in bad.output
    assert len(list_subscribers(database_url)) == 1
