"""Readiness shared by the services: ``/readyz`` answers 200 only when every check of the service passes.

``/healthz`` says the process is alive (the event loop answers); ``/readyz`` says it can do its work: Kafka
answers a metadata request, PostgreSQL answers ``SELECT 1``, the consumer has partitions. Each check has a
short deadline so a probe never hangs, and the 503 body names the failing check and what to look at.

Also here: consumer-group lag and topic depth read from the broker (committed offsets against the high
watermarks), which the processor and fan-out export as gauges on a schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from aiohttp import web
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg_pool import AsyncConnectionPool

from stocksync.kafka import watermarks
from stocksync.settings import KafkaSettings

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[str | None]]
"""A readiness check: returns None when fine, else what is wrong (and what to do)."""


def kafka_check(settings: KafkaSettings, *, timeout_s: float = 2.0) -> Check:
    """Kafka answers a metadata request within `timeout_s` (one admin client, kept for the process)."""
    admin: list[AdminClient] = []

    async def check() -> str | None:
        if not admin:
            admin.append(AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0}))
        try:
            meta = await asyncio.to_thread(admin[0].list_topics, timeout=timeout_s)
        except KafkaException as exc:
            return f"Kafka at {settings.bootstrap_servers} did not answer a metadata request: {exc}"
        if not meta.brokers:
            return f"Kafka at {settings.bootstrap_servers} reports no brokers"
        return None

    return check


def postgres_check(pool: AsyncConnectionPool, *, timeout_s: float = 2.0) -> Check:
    """PostgreSQL answers ``SELECT 1`` on a pooled connection within `timeout_s`."""

    async def check() -> str | None:
        try:
            async with asyncio.timeout(timeout_s), pool.connection(timeout=timeout_s) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError, OSError) as exc:
            return f"PostgreSQL did not answer SELECT 1 within {timeout_s} s: {type(exc).__name__}: {exc}"
        return None

    return check


def assignment_check(assigned: Callable[[], bool], what: str) -> Check:
    """The consumer (`what`) has joined its group and holds partitions."""

    async def check() -> str | None:
        if assigned():
            return None
        return (
            f"{what} has no partitions assigned yet (joining its group, rebalancing, or more workers than "
            "partitions)"
        )

    return check


@dataclass
class Readiness:
    """Named checks run together for ``/readyz``."""

    checks: dict[str, Check] = field(default_factory=dict)

    async def problems(self) -> dict[str, str | None]:
        names = list(self.checks)
        results = await asyncio.gather(*(self.checks[n]() for n in names), return_exceptions=True)
        out: dict[str, str | None] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                out[name] = f"the check itself failed: {type(result).__name__}: {result}"
            else:
                out[name] = result
        return out

    async def handle(self, _request: web.Request) -> web.Response:
        problems = await self.problems()
        failing = {k: v for k, v in problems.items() if v is not None}
        body = {
            "status": "not ready" if failing else "ready",
            "checks": {k: ("ok" if v is None else v) for k, v in problems.items()},
        }
        if failing:
            log.warning("not ready: %s", "; ".join(f"{k}: {v}" for k, v in failing.items()))
        return web.json_response(body, status=503 if failing else 200)


async def healthz(_request: web.Request) -> web.Response:
    """Alive: the event loop answers. Used by liveness probes; says nothing about dependencies."""
    return web.json_response({"status": "ok"})


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    records: int


def _lag_consumer(settings: KafkaSettings, group: str) -> Consumer:
    # A consumer that never subscribes does not join the group: it only reads the group's committed offsets.
    return Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )


def consumer_lag(
    settings: KafkaSettings, group: str, topics: Iterable[str], *, timeout_s: float = 5.0
) -> list[GroupLag]:
    """Records of each topic (full names) not yet committed by `group` (full name); blocking."""
    consumer = _lag_consumer(settings, group)
    try:
        out = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
            lag = 0
            for tp in tps:
                low, high = watermarks(consumer, tp, timeout_s=timeout_s)
                done = committed.get(tp.partition, -1)
                lag += max(0, high - (done if done >= 0 else low))
            out.append(GroupLag(group, topic, lag))
        return out
    finally:
        consumer.close()


def topic_depth(settings: KafkaSettings, topic: str, *, timeout_s: float = 5.0) -> int | None:
    """Records retained in `topic` (full name): high minus low watermarks, summed; None if it is missing."""
    consumer = _lag_consumer(settings, f"{topic}.depth-probe")
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        total = 0
        for p in meta.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, p), timeout_s=timeout_s)
            total += max(0, high - low)
        return total
    finally:
        consumer.close()


async def every(interval_s: float, what: str, job: Callable[[], Awaitable[None]]) -> None:
    """Run `job` now and then every `interval_s` until cancelled; a failing run is logged, not fatal."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed; trying again in %.0f s", what, interval_s)
        await asyncio.sleep(interval_s)  # the schedule itself, not a synchronisation
