"""A lean HTTP/1.1 load generator: signed Shopify orders prepared as raw bytes, sent over keep-alive
asyncio streams in a closed or an open loop (ack time counted from when a request was due)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from channels.connection import Connection
from lab.bench.stats import ms
from lab.marketplaces.shopify import order_webhook


class RawHttp:
    """One keep-alive HTTP/1.1 connection to the gateway (requests one at a time, no pipelining)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """The raw bytes of a POST of `body` to `path` (prepared before a measurement, sent by `send`)."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        start = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{head}\r\n"
        return start.encode() + body

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        return await self.send(self.request(path, body, headers))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one prepared request; return the status and body of its answer."""
        if self.writer is None or self.reader is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()


def shopify_order(connection: Connection, order_id: int, sku: str) -> tuple[bytes, dict[str, str]]:
    """A signed Shopify orders/create webhook for one unit of `sku` (line id order_id * 100 + 1)."""
    line = {
        "id": order_id * 100 + 1,
        "variant_id": int(connection.listings[sku].listing_id),
        "sku": sku,
        "quantity": 1,
    }
    body, headers = order_webhook(connection, order_id, [line], datetime.now(UTC))
    headers["Content-Type"] = "application/json"
    return body, headers


def shopify_event_id(connection: Connection, order_id: int) -> str:
    return f"{connection.id}:order:{order_id}:line:{order_id * 100 + 1}"


def prepared_orders(connection: Connection, skus: tuple[str, ...], first_id: int, count: int) -> list[bytes]:
    """`count` signed orders/create webhooks as raw requests, built before the clock starts, so that the
    load generator spends the shared CPU on sending, not on JSON and HMAC."""
    http = RawHttp("127.0.0.1", 0)
    path = f"/webhooks/{connection.id}"
    return [
        http.request(path, *shopify_order(connection, n, skus[n % len(skus)]))
        for n in range(first_id, first_id + count)
    ]


async def drive(
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    rate: float | None = None,
) -> dict[str, Any]:
    """Post `requests` over `concurrency` keep-alive connections; only the window after the warm-up counts.

    Closed loop (`rate` None): every sender posts its next request as soon as the last was answered: the
    gateway's saturation throughput, and latency that includes queueing behind 64 requests in flight.
    Open loop: request i is due `i / rate` s after the start; its ack time is measured from when it was due,
    so a gateway that falls behind is charged for the wait (no coordinated omission). Requests run out:
    the open loop fails (its window would be short of load); the closed loop starts again from the first
    (a box faster than the requests were sized for: the gateway keeps no memory of ids, the bare app reads
    nothing) and reports how many were sent again as ``requests_reused``.
    """
    queue = iter(requests) if rate is not None else itertools.cycle(requests)
    sent = [0]
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + seconds)
    acks: list[float] = []
    statuses: Counter[int] = Counter()
    due_at = itertools.count()

    async def sender() -> None:
        client = RawHttp("127.0.0.1", port)
        try:
            while True:
                t0 = time.perf_counter()
                if rate is not None:
                    t0 = start + next(due_at) / rate
                    if (wait := t0 - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)  # the open loop's schedule
                if t0 >= window[1]:
                    return
                request = next(queue, None)
                if request is None:
                    raise RuntimeError(f"prepared {len(requests)} requests, too few for the window")
                sent[0] += 1
                status, _ = await client.send(request)
                t1 = time.perf_counter()
                if t0 >= window[0] and t1 <= window[1]:
                    acks.append(t1 - t0)
                    statuses[status] += 1
        finally:
            await client.close()

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    ok = statuses.get(200, 0)
    return {
        "mode": "closed loop" if rate is None else f"open {rate:,.0f}/s",
        "offered_per_s": rate,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "webhooks": sum(statuses.values()),
        "webhooks_per_s": round(ok / seconds, 1),
        "ack_p50_ms": ms(acks, 50),
        "ack_p90_ms": ms(acks, 90),
        "ack_p99_ms": ms(acks, 99),
        "ack_max_ms": round(max(acks) * 1000, 1) if acks else None,
        "ack_mean_ms": round(statistics.fmean(acks) * 1000, 2) if acks else None,
        "non_200": sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "requests_reused": max(0, sent[0] - len(requests)),
    }
