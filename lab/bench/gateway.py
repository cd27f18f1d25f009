"""The bench's gateway part: the ingest process alone, closed loop, open loop, the Kafka-only ack floor and
a py-spy-profiled run; on a sandbox of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from channels.connection import Connection
from lab.bench.config import BenchConfig
from lab.bench.load import drive, prepared_orders
from lab.bench.profile import profile_gateway, py_spy
from lab.bench.stats import ms
from lab.bench.usage import Usage
from lab.local.kafka import KafkaEndpoint
from lab.local.process import free_port, wait_until
from lab.sandbox import sandbox
from schemas import inventory_events
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings

SATURATION_CEILING_PER_S = 9_000


async def kafka_ack_floor(
    kafka: KafkaSettings, *, rate: float, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """The gateway's durable-ack path without the gateway: this process produces records of a webhook's
    size at `rate` (open loop, same producer settings) and times produce -> broker acknowledgement."""
    producer = AsyncProducer(producer_config(kafka))
    topic = kafka.topic(inventory_events.TOPIC)
    value = b"x" * 450  # about one canonical OrderPlaced
    acks: list[float] = []
    start = time.perf_counter()
    total = int(rate * (warmup_s + seconds))

    async def one(i: int) -> None:
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)  # the open loop's schedule
        await producer.send(topic, value, key=f"floor/{i % 50}".encode())
        if due >= start + warmup_s:
            acks.append(time.perf_counter() - due)

    try:
        await asyncio.gather(*(one(i) for i in range(total)))
    finally:
        await producer.close()
    return {"rate_per_s": rate, "records": len(acks), "ack_p50_ms": ms(acks, 50), "ack_p99_ms": ms(acks, 99)}


async def gateway_part(
    console: Console,
    config: BenchConfig,
    kafka_endpoint: KafkaEndpoint,
    server_url: str,
    connections_file: Path,
    connection: Connection,
    skus: tuple[str, ...],
    infra: dict[str, int],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The ingest process alone: a closed loop (saturation), an open loop at the target rate, the same rate
    produced straight to Kafka (the durable-ack floor), and a profiled run of the open loop; on a sandbox
    (fresh database and topics) on `server_url`."""
    warmup, seconds, rate = config.gateway_warmup_s, config.gateway_seconds, config.gateway_rate
    window = warmup + seconds
    async with sandbox(kafka_endpoint.bootstrap_servers, server_url, label="benchgw") as box:
        kafka, stack = box.kafka, box.stack(connections_file)
        port = free_port()
        service = stack.start("ingest", "ingest", port=port, INGEST_PORT=str(port))
        await asyncio.to_thread(wait_until, stack.ready, timeout_s=60, what="the gateway")
        console.print(
            f"gateway: closed loop, {config.concurrency} concurrent senders, {warmup:.0f} s warm-up, "
            f"{seconds:.0f} s measured (ingest process alone)"
        )
        usage = Usage({"ingest": service.proc.pid, **infra})
        closed = prepared_orders(connection, skus, 10_000_000, int(SATURATION_CEILING_PER_S * window))
        async with usage.measure():
            result = await drive(
                port, closed, concurrency=config.concurrency, warmup_s=warmup, seconds=seconds
            )
        del closed
        result["what"] = "ingest process alone; signed Shopify orders/create, one line each"

        console.print(f"gateway: open loop at {rate:,.0f} webhooks/s over {config.concurrency} connections")
        result["paced"] = await drive(
            port,
            prepared_orders(connection, skus, 20_000_000, int(rate * window) + 1),
            concurrency=config.concurrency,
            warmup_s=warmup,
            seconds=seconds,
            rate=rate,
        )
        console.print(
            f"Kafka alone: this process producing {rate:,.0f} records/s with the gateway's settings"
        )
        result["kafka_ack_floor"] = await kafka_ack_floor(kafka, rate=rate, warmup_s=warmup, seconds=seconds)

        spy = py_spy() if config.profile else None
        if config.profile and spy is None:
            console.print("[yellow]no py-spy found (pip install py-spy): the gateway is not profiled[/]")
        if spy is not None:
            console.print(f"gateway: profiling the open loop with py-spy for {seconds:.0f} s (not measured)")
            profiled = drive(
                port,
                prepared_orders(connection, skus, 30_000_000, int(rate * seconds) + 1),
                concurrency=config.concurrency,
                warmup_s=0.0,
                seconds=seconds,
                rate=rate,
            )
            profile = await profile_gateway(spy, service.proc.pid, seconds, profiled, config.profile_out)
            if profile is not None:
                result["profile"] = profile
        return result, usage.result
