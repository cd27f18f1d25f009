"""The multi-channel part of ``stocksync bench``: sync lag per channel, all nine simulators at once.

Two load levels over the same pipeline (gateway, processor, one fan-out process for every channel):
50 orders a minute as signed webhooks through the gateway, and 2,000 orders a second for two seconds put on
``inventory.events`` directly (one load generator on this machine cannot push that many webhooks). Sync lag
is the fan-out's own histogram (gateway arrival of the cause → channel confirmed), per channel and level.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from channels.connection import to_toml
from schemas import TOPICS, inventory_events
from schemas.inventory_events import OrderPlaced, StockCounted
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, delete_prefixed_topics, ensure_topics, producer_config
from stocksync.local.kafka import KafkaEndpoint
from stocksync.local.marketplaces import marketplaces
from stocksync.local.postgres import PostgresEndpoint, create_database, drop_database
from stocksync.local.process import eventually, make_run_dir, wait_until
from stocksync.local.stack import Stack, StackConfig
from stocksync.local.traffic import as_records
from stocksync.metrics import histogram_quantile
from stocksync.settings import KafkaSettings

SKUS = tuple(f"MC-{n:02d}" for n in range(10))
START = 1_000_000


async def _metrics(session: aiohttp.ClientSession, stack: Stack) -> str:
    async with session.get(f"http://127.0.0.1:{stack.services['fanout'].port}/metrics") as resp:
        return await resp.text()


def _confirmed(exposition: str) -> dict[str, float]:
    """Updates each channel confirmed so far (the sync-lag histogram's count)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "sync_lag_seconds":
            for s in family.samples:
                if s.name == "sync_lag_seconds_count":
                    out[s.labels["channel"]] = s.value
    return out


async def _quiet(session: aiohttp.ClientSession, stack: Stack, *, settle_s: float = 2.0) -> None:
    """Wait until no channel confirms anything new for `settle_s` (the load has fully propagated)."""
    last, since = _confirmed(await _metrics(session, stack)), time.monotonic()

    async def settled() -> bool:
        nonlocal last, since
        now = _confirmed(await _metrics(session, stack))
        if now != last:
            last, since = now, time.monotonic()
        return time.monotonic() - since >= settle_s

    await eventually(settled, timeout_s=180, what="fan-out to go quiet", interval_s=0.25)


def _lags(after: str, before: str, channels: list[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for ch in channels:
        p50 = histogram_quantile(after, "sync_lag_seconds", 0.5, since=before, channel=ch)
        p99 = histogram_quantile(after, "sync_lag_seconds", 0.99, since=before, channel=ch)
        out[ch] = {
            "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        }
    return out


async def run_multichannel(
    console: Console,
    kafka_endpoint: KafkaEndpoint,
    pg: PostgresEndpoint,
    *,
    slow_orders: int = 50,
    slow_seconds: float = 60.0,
    fast_per_s: int = 2000,
    fast_seconds: float = 2.0,
) -> dict[str, Any]:
    name, url = create_database(pg.url, "multi")
    kafka = KafkaSettings(
        bootstrap_servers=kafka_endpoint.bootstrap_servers,
        topic_prefix=f"multi-{uuid.uuid4().hex[:6]}.",
        partitions=4,
    )
    try:
        migrate(url)
        ensure_topics(kafka, TOPICS)
        run_dir = make_run_dir("multibench")
        async with marketplaces(SKUS, tenant="multi") as markets, aiohttp.ClientSession() as session:
            connections = run_dir / "connections.toml"
            connections.write_text(to_toml(m.connection for m in markets.values()))
            stack = Stack(
                StackConfig(
                    kafka.bootstrap_servers,
                    url,
                    Path(connections),
                    kafka.topic_prefix,
                    4,
                    channels=tuple(markets),
                    fanout_together=True,
                ),
                run_dir=run_dir,
            )
            producer = AsyncProducer(producer_config(kafka))
            try:
                stack.start_all()
                await asyncio.to_thread(wait_until, stack.ready, timeout_s=60, what="the gateway")
                now = datetime.now(UTC)
                seed = [
                    StockCounted(
                        event_id=f"admin:count:{s}",
                        tenant="multi",
                        sku=s,
                        quantity=START,
                        occurred_at=now,
                        received_at=now,
                    )
                    for s in SKUS
                ]
                await producer.send_batch(kafka.topic(inventory_events.TOPIC), as_records(seed))

                async def seeded() -> bool:
                    counts = _confirmed(await _metrics(session, stack))
                    return all(counts.get(ch, 0) >= len(SKUS) for ch in markets)

                await eventually(seeded, timeout_s=120, what="the seed counts on all nine channels")
                results: dict[str, Any] = {"channels": list(markets)}

                console.print(
                    f"multi-channel: {slow_orders} webhooks over {slow_seconds:.0f} s across 9 channels"
                )
                before = await _metrics(session, stack)
                cycle = itertools.cycle(markets.values())
                started = time.monotonic()
                for n in range(slow_orders):
                    market = next(cycle)
                    body, headers = market.simulator.place_order(
                        market.connection, 70_000 + n, [(SKUS[n % 10], 1)], datetime.now(UTC)
                    )
                    for _ in range(
                        10
                    ):  # a 503 (thin payload not fetchable yet) is redelivered, as channels do
                        url_ = f"{stack.ingest_url}/webhooks/{market.connection.id}"
                        async with session.post(url_, data=body, headers=headers) as resp:
                            if resp.status != 503:
                                break
                        await asyncio.sleep(0.5)
                    await asyncio.sleep(
                        max(0.0, started + (n + 1) * slow_seconds / slow_orders - time.monotonic())
                    )
                await _quiet(session, stack)
                results["orders_per_minute_50"] = _lags(await _metrics(session, stack), before, list(markets))

                console.print(
                    f"multi-channel: {fast_per_s} orders/s for {fast_seconds:.0f} s (produced directly)"
                )
                before = await _metrics(session, stack)
                conn_ids = [m.connection.id for m in markets.values()]
                for second in range(int(fast_seconds)):
                    tick = time.monotonic()
                    at = datetime.now(UTC)
                    burst = [
                        OrderPlaced(
                            event_id=f"{conn_ids[i % 9]}:order:fast-{second}-{i}:line:1",
                            tenant="multi",
                            sku=SKUS[i % 10],
                            quantity=1,
                            connection_id=conn_ids[i % 9],
                            channel=next(iter(markets.values())).channel,
                            order_id=f"fast-{second}-{i}",
                            line_id="1",
                            occurred_at=at,
                            received_at=at,
                        )
                        for i in range(fast_per_s)
                    ]
                    await producer.send_batch(kafka.topic(inventory_events.TOPIC), as_records(burst))
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # pacing the load
                await _quiet(session, stack)
                results["orders_per_second_2000"] = _lags(
                    await _metrics(session, stack), before, list(markets)
                )
                results["rate_limited_by_simulators"] = {
                    ch: m.simulator.rate_limited for ch, m in markets.items()
                }
                return results
            finally:
                await producer.close()
                await asyncio.to_thread(stack.close)
    finally:
        delete_prefixed_topics(kafka)
        drop_database(pg.url, name)
