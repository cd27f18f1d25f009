"""JSON log lines carry the pipeline's correlation keys; /readyz answers 503 naming the failing check."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lab.local.process import free_port
from stocksync import health, logs
from stocksync.settings import KafkaSettings


def record(message: str, **extra: str) -> logging.LogRecord:
    rec = logging.LogRecord("fanout.worker", logging.WARNING, __file__, 1, message, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_bound_and_explicit_keys() -> None:
    formatter = logs.JsonFormatter("fanout")
    with logs.bound(tenant="acme", sku="SKU-1", connection="shop-acme"):
        line = json.loads(formatter.format(record("dead-lettered", event_id="e-1", sku="SKU-2")))
    assert line["service"] == "fanout"
    assert line["level"] == "WARNING"
    assert line["message"] == "dead-lettered"
    assert (line["event_id"], line["tenant"], line["sku"], line["connection"]) == (
        "e-1",
        "acme",
        "SKU-2",
        "shop-acme",
    )
    outside = json.loads(formatter.format(record("plain")))
    assert not {"event_id", "tenant", "sku", "connection"} & set(outside)


def test_unknown_log_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log keys"), logs.bound(order="1"):
        pass


async def test_readyz_is_503_with_the_failing_check_named() -> None:
    async def fine() -> str | None:
        return None

    async def broken() -> str | None:
        return "PostgreSQL did not answer"

    app = web.Application()
    app.router.add_get("/readyz", health.Readiness({"kafka": fine, "postgres": broken}).handle)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
    assert body == {"status": "not ready", "checks": {"kafka": "ok", "postgres": "PostgreSQL did not answer"}}


async def test_kafka_check_reports_an_unreachable_broker() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    problem = await health.kafka_check(settings, timeout_s=0.5)()
    assert problem is not None
    assert f"127.0.0.1:{settings.bootstrap_servers.split(':')[1]}" in problem
