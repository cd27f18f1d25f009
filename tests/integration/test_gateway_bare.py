"""The bench's bare aiohttp app: its own process, driven by the bench's load generator, clocked."""

from __future__ import annotations

import json

import pytest

from lab.bench.gateway import bare_app, clocked
from lab.bench.load import RawHttp, drive

pytestmark = pytest.mark.integration


async def test_the_bare_app_answers_every_webhook_and_its_loop_thread_is_clocked() -> None:
    http = RawHttp("127.0.0.1", 0)
    requests = [http.request("/webhooks/anything", b'{"id": %d}' % n, {}) for n in range(20_000)]
    async with bare_app() as (port, pid):
        client = RawHttp("127.0.0.1", port)
        try:
            status, body = await client.post("/webhooks/x", b"12345", {})
        finally:
            await client.close()
        assert (status, json.loads(body)) == (200, {"status": "accepted", "bytes": 5})
        result = await clocked(pid, drive(port, requests, concurrency=4, warmup_s=0.2, seconds=0.5))
    assert result["webhooks"] > 0
    assert result["non_200"] == 0
    clock = result["loop_thread"]
    assert 0 < clock["on_cpu_share"] <= 1
    assert clock["cpu_ms_per_request"] > 0
