"""The bench's agent part (issue 16): check-and-reserve round trips through a real gateway and processor.

On a sandbox of its own (fresh database and topics; a gateway and a processor process, no fan-out), one
tenant with ample stock of a few SKUs: an open loop of holds (``POST /v1/reservations``) at AGENT_RATE
requests/s, then the same rate of commits of those holds (``POST /v1/reservations/{id}/commit``), each timed
from when it was due until its answer (lab.bench.load.drive: requests built before the clock starts, no
coordinated omission); meanwhile a client of the tenant's availability stream times each message from its
change's commit (``as_of``) to its arrival. A round trip is the gateway publishing the step (acks=all), the
processor deciding it in a batch and committing, PostgreSQL's NOTIFY waking the gateway, and the gateway
reading the decision back.
Target: p99 <= 50 ms at 100 requests/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from rich.console import Console

from channels.connection import TenantToken, to_toml, token_digest
from ingest.reservations import reservation_id
from lab.bench.load import RawHttp, drive
from lab.bench.stats import ms
from lab.local.kafka import KafkaEndpoint
from lab.local.process import wait_until
from lab.sandbox import sandbox

AGENT_RATE = 100.0
AGENT_P99_TARGET_MS = 50.0
TENANT, TOKEN = "bench-agent", "tok-bench-agent-0123456789"
AGENT_SKUS = tuple(f"AG-{n:02d}" for n in range(20))


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - a loopback URL built here
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _stream_lags(base: str, lags: list[float], listening: asyncio.Event) -> None:
    """Read the tenant's availability stream; each message's lag from its change's commit (``as_of``) to
    its arrival here, in seconds (same machine, same clock)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http,
        http.get(f"{base}/v1/availability/stream", headers=headers) as resp,
    ):
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(": connected"):
                listening.set()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                lags.append((datetime.now(UTC) - datetime.fromisoformat(data["as_of"])).total_seconds())


def _requests(port: int, count: int, *, commit: bool, first: int = 0) -> list[bytes]:
    http = RawHttp("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    out = []
    for n in range(first, first + count):
        key = f"bench-{n}"
        if commit:
            out.append(http.request(f"/v1/reservations/{reservation_id(TENANT, key)}/commit", b"", headers))
        else:
            body = {
                "sku": AGENT_SKUS[n % len(AGENT_SKUS)],
                "quantity": 1,
                "ttl_s": 600,
                "idempotency_key": key,
            }
            out.append(http.request("/v1/reservations", json.dumps(body).encode(), headers))
    return out


async def agent_part(
    console: Console, kafka_endpoint: KafkaEndpoint, server_url: str, run_dir: Path, *, seconds: float = 10.0
) -> dict[str, Any]:
    """Holds, then commits of them, each at AGENT_RATE/s in an open loop; their ack times and statuses."""
    warmup = 2.0
    count = int(AGENT_RATE * (warmup + seconds)) + 1
    path = run_dir / "agent-connections.toml"
    path.write_text(to_toml([], [TenantToken(id=TENANT, admin_token_sha256=token_digest(TOKEN))]))
    async with sandbox(kafka_endpoint.bootstrap_servers, server_url, label="benchagent") as box:
        with psycopg.connect(box.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO inventory (tenant, sku, available, version) "
                "SELECT %s, sku, 1000000, 1 FROM unnest(%s::text[]) AS sku",
                (TENANT, list(AGENT_SKUS)),
            )
        stack = await box.start(path, fanout=False)
        port, ops = stack.services["ingest"].port, stack.services["processor"].port
        if port is None:
            raise RuntimeError("the gateway of the agent part has no port")
        # the gateway answers before the processor holds its partitions (the group's first join): wait
        await asyncio.to_thread(
            wait_until, lambda: _ready(f"http://127.0.0.1:{ops}/readyz"), timeout_s=60, what="the processor"
        )
        result: dict[str, Any] = {"rate_per_s": AGENT_RATE, "p99_target_ms": AGENT_P99_TARGET_MS}
        # holds, commits of them, then holds again with a client of the availability stream attached (its
        # lag from each change's commit; and what serving it costs the round trips)
        phases = (("hold", "hold", False), ("commit", "commit", False), ("hold_streamed", "hold", True))
        for n, (name, step, streamed) in enumerate(phases):
            lags: list[float] = []
            stream = None
            if streamed:
                listening = asyncio.Event()
                stream = asyncio.create_task(_stream_lags(f"http://127.0.0.1:{port}", lags, listening))
                await asyncio.wait_for(listening.wait(), 30)
            console.print(
                f"agent: {step}s at {AGENT_RATE:,.0f}/s{' with a stream client' if streamed else ''}, "
                f"{warmup:.0f} s warm-up, {seconds:.0f} s measured"
            )
            run = await drive(
                port,
                _requests(port, count, commit=step == "commit", first=0 if n < 2 else count),
                concurrency=32,
                warmup_s=warmup,
                seconds=seconds,
                rate=AGENT_RATE,
            )
            result[name] = {
                k: run[k]
                for k in ("webhooks", "ack_p50_ms", "ack_p90_ms", "ack_p99_ms", "ack_max_ms", "statuses")
            }
            if stream is not None:
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
                result["sse"] = {
                    "messages": len(lags),
                    "lag_p50_ms": ms(lags, 50),
                    "lag_p99_ms": ms(lags, 99),
                    "lag_max_ms": round(max(lags) * 1000, 1) if lags else None,
                }
        result["meets_target"] = all(
            result[step]["ack_p99_ms"] is not None and result[step]["ack_p99_ms"] <= AGENT_P99_TARGET_MS
            for step in ("hold", "commit")
        )
        return result
