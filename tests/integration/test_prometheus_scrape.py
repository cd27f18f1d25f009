"""A real Prometheus server (Debian's ``prometheus`` package) scrapes the running pipeline every second while
signed webhooks go through ingest -> processor -> fan-out -> the Shopify simulator; its HTTP API then answers
with the figures the run produced: the webhook counters equal what was sent, and the sync-lag histogram's
quantiles and count equal those computed from the fan-out's own /metrics.
"""

from __future__ import annotations

import json
import signal
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lab.local.process import free_port, log_tail, spawn, stop
from lab.local.stack import Stack
from lab.marketplaces.shopify import order_webhook
from schemas import inventory_events
from schemas.base import partition_key
from schemas.inventory_events import StockCounted
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.metrics import histogram_quantile
from stocksync.settings import KafkaSettings
from tests.deploy.tools import REPO, tool
from tests.fix_stack import ShopifyWorld
from tests.helpers import eventually, group_caught_up

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

RULES = REPO / "deploy" / "prometheus" / "rules"


@dataclass
class Prometheus:
    url: str

    async def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr} returned several series: {result}"
        return float(result[0]["value"][1]) if result else None


def scrape_config(stack: Stack, rules: Path) -> str:
    jobs = {
        "stocksync-ingest": stack.services["ingest"].port,
        "stocksync-processor": stack.services["processor"].port,
        "stocksync-fanout": stack.services["fanout-shopify"].port,
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted(rules.glob("*.yml"))],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ],
    }
    return json.dumps(config)  # YAML is a superset of JSON


@pytest.fixture
async def prometheus(pipeline: Stack, tmp_path: Path) -> AsyncIterator[Prometheus]:
    binary = tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(pipeline, RULES))
    port = free_port()
    log_file = tmp_path / "prometheus.log"
    proc = spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        log_file=log_file,
        death_signal=signal.SIGKILL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log_tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        await eventually(ready, timeout_s=30, what="Prometheus to answer /-/ready")
        yield Prometheus(url)
    finally:
        stop(proc, grace_s=10)


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.text()


def service_url(stack: Stack, name: str) -> str:
    return f"http://127.0.0.1:{stack.services[name].port}"


async def send_orders(stack: Stack, world: ShopifyWorld, numbers: range) -> None:
    url = f"{stack.ingest_url}/webhooks/{world.connection.id}"
    async with aiohttp.ClientSession() as s:
        for n in numbers:
            body, headers = world.simulator.place_order(
                world.connection, n, [("SKU-1", 1)], created_at=datetime.now(UTC)
            )
            async with s.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()


async def send_forged(stack: Stack, world: ShopifyWorld, n: int) -> None:
    """Webhooks for orders Shopify never booked, with a signature that does not match: 401 each."""
    url = f"{stack.ingest_url}/webhooks/{world.connection.id}"
    listing = world.connection.listings["SKU-1"]
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            items = [
                {"id": i, "variant_id": int(listing.listing_id), "sku": "SKU-1", "quantity": 1, "title": "x"}
            ]
            body, headers = order_webhook(world.connection, 9000 + i, items, datetime.now(UTC))
            forged = {
                k: ("Zm9yZ2Vk" if k.lower() == "x-shopify-hmac-sha256" else v) for k, v in headers.items()
            }
            async with s.post(url, data=body, headers=forged) as resp:
                assert resp.status == 401, await resp.text()


def equals(get: Callable[[], Awaitable[float | None]], expected: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await get() == expected

    return check


async def test_prometheus_scrapes_the_pipeline_and_reports_what_the_run_produced(
    pipeline: Stack, prometheus: Prometheus, shopify_world: ShopifyWorld, kafka: KafkaSettings
) -> None:
    sim, item = shopify_world.simulator, shopify_world.item("SKU-1")
    # Every service is ready: Kafka (and PostgreSQL) answer, the consumers hold partitions.
    for name in ("ingest", "processor", "fanout-shopify"):
        await eventually(
            _ok(f"{service_url(pipeline, name)}/readyz"), timeout_s=60, what=f"{name} /readyz 200"
        )

    # The seller's count of 100, straight onto inventory.events.
    now = datetime.now(UTC)
    producer = AsyncProducer(producer_config(kafka))
    try:
        count = StockCounted(
            event_id="admin:count:prom",
            tenant="acme",
            sku="SKU-1",
            quantity=100,
            occurred_at=now,
            received_at=now,
        )
        await producer.send(
            kafka.topic(inventory_events.TOPIC),
            inventory_events.encode(count),
            key=partition_key("acme", "SKU-1"),
        )
    finally:
        await producer.close()
    await eventually(lambda: sim.available.get(item) == 100, timeout_s=30, what="Shopify to show 100")

    # Three waves of signed orders; after each, Prometheus has scraped the new counter value mid-run.
    accepted = 'sum(webhook_requests_total{job="stocksync-ingest",channel="shopify",outcome="accepted"})'
    sent = 0
    for wave in (range(1001, 1006), range(1006, 1016), range(1016, 1031)):
        await send_orders(pipeline, shopify_world, wave)
        sent += len(wave)
        await eventually(
            equals(lambda: prometheus.value(accepted), sent),
            timeout_s=30,
            what=f"Prometheus to see {sent} accepted",
        )
    await send_forged(pipeline, shopify_world, 3)
    await eventually(
        lambda: sim.available.get(item) == 100 - sent, timeout_s=30, what=f"Shopify at {100 - sent}"
    )

    # The run is over once the fan-out committed everything (its histogram is final then); wait until
    # Prometheus's view of the fan-out equals the fan-out's own exposition.
    for topic in ("stock.changed", "stock.rejected"):
        await eventually(
            partial(group_caught_up, kafka, "fanout.shopify", topic),
            timeout_s=30,
            what=f"fanout.shopify to commit all of {topic}",
        )
    status, fanout_text = await fetch(f"{service_url(pipeline, 'fanout-shopify')}/metrics")
    assert status == 200
    status, ingest_text = await fetch(f"{pipeline.ingest_url}/metrics")
    assert status == 200
    confirmations = _sample(fanout_text, "sync_lag_seconds_count", channel="shopify")
    assert confirmations is not None
    assert confirmations >= 2  # the count's update and at least one after the orders (coalescing may merge)
    lag_count = 'sum(sync_lag_seconds_count{job="stocksync-fanout",channel="shopify"})'
    await eventually(
        equals(lambda: prometheus.value(lag_count), confirmations),
        timeout_s=30,
        what=f"Prometheus to hold {confirmations} sync-lag observations",
    )

    # Webhook counters: what the run produced, in Prometheus and in the gateway's own exposition.
    unauthorized = (
        'sum(webhook_requests_total{job="stocksync-ingest",channel="shopify",outcome="unauthorized"})'
    )
    await eventually(equals(lambda: prometheus.value(unauthorized), 3), timeout_s=30, what="3 unauthorized")
    assert await prometheus.value(accepted) == sent
    assert _sample(ingest_text, "webhook_requests_total", channel="shopify", outcome="accepted") == sent
    assert _sample(ingest_text, "webhook_requests_total", channel="shopify", outcome="unauthorized") == 3
    events = 'sum(ingest_events_published_total{job="stocksync-ingest",channel="shopify"})'
    assert await prometheus.value(events) == sent
    applied = 'sum(processor_events_total{job="stocksync-processor",outcome="applied"})'
    await eventually(equals(lambda: prometheus.value(applied), sent + 1), timeout_s=30, what="applied events")

    # The sync-lag quantiles Prometheus computes equal those of the fan-out's own histogram.
    for q in (0.5, 0.99):
        direct = histogram_quantile(fanout_text, "sync_lag_seconds", q, channel="shopify")
        assert direct is not None
        assert 0 < direct < 5, f"p{int(q * 100)} sync lag {direct:.3f} s is not plausible for a loopback run"
        buckets = 'sync_lag_seconds_bucket{job="stocksync-fanout",channel="shopify"}'
        promql = f"histogram_quantile({q}, sum by (le) ({buckets}))"
        scraped = await prometheus.value(promql)
        assert scraped == pytest.approx(direct, rel=1e-9), (q, scraped, direct)

    # The oversell gauge is scraped and zero; the alert rules are loaded and none fires.
    assert await prometheus.value('max(inventory_negative_records{job="stocksync-processor"})') == 0
    rules = (await _json(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert {"SyncLagP99High", "OversellDetected", "DeadLetterQueueDepthHigh"} <= loaded
    firing = [r["name"] for g in rules for r in g["rules"] if r.get("state") == "firing"]
    assert "OversellDetected" not in firing
    assert "SyncLagP99High" not in firing


def _ok(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            status, _ = await fetch(url)
        except aiohttp.ClientError:
            return False
        return status == 200

    return check


async def _json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        body: dict[str, Any] = await resp.json()
        return body


def _sample(exposition: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
