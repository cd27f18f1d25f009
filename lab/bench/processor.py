"""The bench's processor part, on topics of 8 partitions: one worker process over a pre-filled topic at
batch sizes 1, 100 and 1,000 (with CPU-ms per event of the worker, PostgreSQL and the broker); one and two
workers in one consumer group at batch 1,000; Faust's stream alone (lab.bench.faust_floor); a bare
confluent-kafka consume (the ratio); the same events applied straight into PostgreSQL by apply_batch and by
the set-based ceiling (lab.bench.ceiling)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import AsyncConnection
from rich.console import Console

from lab.bench.ceiling import ceiling_rate
from lab.bench.usage import Usage, cpu_by_pid, cpu_spent
from lab.local.kafka import KafkaEndpoint
from lab.local.postgres import PostgresEndpoint
from lab.local.process import eventually, make_run_dir, spawn, stop, wait_until
from lab.local.traffic import as_records, synthetic_stream
from lab.sandbox import Sandbox, fresh_database, prefixed_topics, sandbox
from processor.settings import ProcessorSettings
from processor.store import apply_batch
from schemas import inventory_events
from schemas.inventory_events import AnyInventoryEvent
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings

PARTITIONS = 8
BATCH = 1000  # the batch size of the ceiling, the floor, the group runs and the CPU figures
WITHIN_S = float(ProcessorSettings.model_fields["batch_within_s"].default)  # the workers' take() wait
VS_CEILING_TARGET = 0.5


def raw_consume_rate(kafka: KafkaSettings, topic: str, expected: int) -> float:
    """Records/s of a bare confluent-kafka consumer reading the whole topic (no decoding, no processing),
    timed from its first record to its last, as the worker is timed from its first commit."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        name = kafka.topic(topic)
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        consumer.assign([TopicPartition(name, p, 0) for p in partitions])
        seen, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            got = sum(1 for m in consumer.consume(10_000, 1.0) if not m.error())
            if got:
                now = time.monotonic()
                first = first or now
                seen, last = seen + got, now
        # the first call's records are counted as arriving at `first`: leave them out of the rate
        return (seen - min(seen, 10_000)) / (last - first) if last > first else float("nan")
    finally:
        consumer.close()


async def apply_rate(url: str, stream: list[AnyInventoryEvent], *, batch: int) -> float:
    """Events/s of apply_batch straight into the database, no Kafka: the database's share of the cost."""
    async with await AsyncConnection.connect(url) as conn:
        started = time.monotonic()
        for i in range(0, len(stream), batch):
            async with conn.transaction():
                await apply_batch(conn, stream[i : i + batch])
        return len(stream) / (time.monotonic() - started)


async def _produce(kafka: KafkaSettings, stream: list[AnyInventoryEvent]) -> None:
    producer = AsyncProducer(producer_config(kafka))
    try:
        await producer.send_batch(kafka.topic(inventory_events.TOPIC), as_records(stream))
    finally:
        await producer.close()


def _fill(producer: Producer, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce `records` in order (idempotent: order kept per partition) and wait until all are acknowledged:
    librdkafka's own loop, much quicker than the workers consume, so the fill barely overlaps their work."""
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then retry this record
                producer.poll(0.01)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} of {len(records)} records not acknowledged by the broker within 60 s")


async def _rate_from_first_commit(
    url: str, measured: int, cpu_pids: Mapping[str, int]
) -> tuple[float, dict[str, float]]:
    """Events/s from the first commit seen in `url`'s ledger until it holds `measured` rows, and the CPU-ms
    per event each of `cpu_pids`' trees spent meanwhile (the rows counted when the clock stopped)."""
    with psycopg.connect(url, autocommit=True) as conn:  # one connection: polling costs the database little

        def applied() -> int:
            row = conn.execute("SELECT count(*) FROM ledger").fetchone()
            return int(row[0]) if row else 0

        await eventually(lambda: applied() > 0, timeout_s=90, what="the first commit", interval_s=0.02)
        started, first = time.monotonic(), applied()
        cpu0 = cpu_by_pid(cpu_pids)
        last = await eventually(
            lambda: (n := applied()) >= measured and n,
            timeout_s=300,
            what=f"{measured} events",
            interval_s=0.05,
        )
        elapsed = time.monotonic() - started
        spent = cpu_spent(cpu0, cpu_by_pid(cpu_pids))
    done = int(last) - first
    if done <= 0 or elapsed <= 0:
        return float("nan"), {}
    return done / elapsed, {name: round(1000 * s / done, 3) for name, s in spent.items()}


def _infra_cpu_pids(infra: Mapping[str, int], workers: Mapping[str, int]) -> dict[str, int]:
    names = {"postgresql": "postgresql", "kafka broker": "kafka_broker"}
    return {**workers, **{key: infra[name] for name, key in names.items() if name in infra}}


async def _worker_rate(
    sandbox_: Sandbox, connections_file: Path, batch: int, measured: int, usage: Usage, infra: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """Events/s of one worker process at batch size `batch` over the pre-filled topic, from its first commit
    to `measured` rows, and the CPU-ms per event of the worker, PostgreSQL and the broker meanwhile."""
    service = sandbox_.stack(connections_file).start(
        "processor",
        "processor",
        PROCESSOR_APP_ID=f"bench-{batch}-{uuid.uuid4().hex[:6]}",
        PROCESSOR_BATCH_MAX=str(batch),
        PROCESSOR_OPS_PORT="0",
    )
    usage.pids["processor"] = service.proc.pid
    pids = _infra_cpu_pids(infra, {"processor": service.proc.pid})
    return await _rate_from_first_commit(sandbox_.database_url, measured, pids)


def _group_holds(admin: AdminClient, kafka: KafkaSettings, group: str, members: int) -> bool:
    """Whether consumer group `group` is stable with `members` members, each holding some of the
    ``inventory.events`` partitions and together all of them."""
    topic = kafka.topic(inventory_events.TOPIC)
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException:
        return False
    if desc.state != ConsumerGroupState.STABLE or len(desc.members) != members:
        return False
    held = [[tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic] for m in desc.members]
    return all(held) and sorted(p for ps in held for p in ps) == list(range(kafka.partitions))


async def _group_rate(
    bootstrap_servers: str,
    server_url: str,
    connections_file: Path,
    stream: list[AnyInventoryEvent],
    *,
    workers: int,
    usage: Usage,
    infra: dict[str, int],
) -> tuple[float, dict[str, float]]:
    """Events/s of `workers` worker processes in one consumer group at batch 1,000, on fresh topics and a
    fresh database: the workers start on an empty topic and hold all its partitions before the stream is
    produced (so no rebalance falls inside the timing); the clock starts at the first commit seen once the
    whole stream is in the topic (so the fill is not timed) and stops at len(stream) rows. Also the CPU-ms
    per event of all workers together, PostgreSQL and the broker in that window."""
    app_id = f"bench-w{workers}-{uuid.uuid4().hex[:6]}"
    records = as_records(stream)
    with (
        fresh_database(server_url, f"bw{workers}") as url,
        prefixed_topics(bootstrap_servers, f"benchw{workers}", partitions=PARTITIONS) as kafka,
    ):
        async with Sandbox(kafka, url) as box:
            pids: dict[str, int] = {}
            for n in range(workers):
                service = box.stack(connections_file).start(
                    "processor",
                    "processor",
                    PROCESSOR_APP_ID=app_id,
                    PROCESSOR_BATCH_MAX=str(BATCH),
                    PROCESSOR_OPS_PORT="0",
                )
                pids[f"processor {n + 1}"] = service.proc.pid
                usage.pids["processor" if n == 0 else f"processor (worker {n + 1})"] = service.proc.pid
            producer = Producer(
                {"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True, "linger.ms": 5}
            )
            admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
            await eventually(
                lambda: asyncio.to_thread(_group_holds, admin, kafka, kafka.group(app_id), workers),
                timeout_s=120,
                what=f"{workers} workers holding the {PARTITIONS} partitions",
                interval_s=0.2,
            )
            await asyncio.to_thread(_fill, producer, kafka.topic(inventory_events.TOPIC), records)
            rate, cpu = await _rate_from_first_commit(url, len(stream), _infra_cpu_pids(infra, pids))
    together = sum(v for k, v in cpu.items() if k.startswith("processor "))
    cpu = {k: v for k, v in cpu.items() if not k.startswith("processor ")}
    return rate, {"processor": round(together, 3), **cpu}


async def _faust_floor(kafka: KafkaSettings, events: int, usage: Usage) -> dict[str, float]:
    """lab.bench.faust_floor as its own process over the pre-filled topic: its result once it has seen
    `events` events."""
    run_dir = make_run_dir("faust-floor")
    out, log_file = run_dir / "floor.json", run_dir / "floor.log"
    argv = [
        sys.executable,
        "-m",
        "lab.bench.faust_floor",
        *("--bootstrap-servers", kafka.bootstrap_servers),
        *("--topic", kafka.topic(inventory_events.TOPIC)),
        *("--partitions", str(kafka.partitions)),
        *("--group", kafka.group(f"bench-floor-{uuid.uuid4().hex[:6]}")),
        *("--events", str(events)),
        *("--batch", str(BATCH)),
        *("--within", str(WITHIN_S)),
        *("--datadir", str(run_dir / "data")),
        *("--out", str(out)),
    ]
    proc = spawn(argv, log_file=log_file, env=dict(os.environ))  # on this thread: it dies with its spawner
    usage.pids["faust floor"] = proc.pid
    try:
        await asyncio.to_thread(
            wait_until, out.exists, timeout_s=120, proc=proc, what="the Faust floor", log_file=log_file
        )
        result: dict[str, float] = json.loads(out.read_text())
        return result
    finally:
        await asyncio.to_thread(stop, proc)
        shutil.rmtree(run_dir, ignore_errors=True)


async def _ceiling(server_url: str, stream: list[AnyInventoryEvent]) -> float:
    with fresh_database(server_url, "bceil") as url:
        return await asyncio.to_thread(ceiling_rate, url, stream, batch=BATCH)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


async def processor_part(
    console: Console,
    kafka_endpoint: KafkaEndpoint,
    pg: PostgresEndpoint,
    connections_file: Path,
    infra: dict[str, int],
    *,
    events: int,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The processor alone, as worker processes (``python -m processor``), over topics of 8 partitions: at
    several batch sizes on the pre-filled topic (each on a fresh database of its own), then one and two
    workers in one group, Faust's stream alone, the raw consume, the apply-only rate and the ceiling."""
    async with sandbox(
        kafka_endpoint.bootstrap_servers, pg.url, label="benchproc", partitions=PARTITIONS
    ) as box:
        kafka = box.kafka
        stream = synthetic_stream(events, skus=500, seed=21)
        await _produce(kafka, stream)
        rows: list[dict[str, Any]] = []
        usage = Usage(dict(infra))
        async with usage.measure():
            for batch, measured in ((1, min(events, 2_000)), (100, events // 2), (BATCH, events)):
                with fresh_database(pg.url, f"bp{batch}") as url:
                    console.print(
                        f"processor: {measured} events, batch size {batch}, {PARTITIONS} partitions"
                    )
                    async with Sandbox(kafka, url) as worker:
                        rate, cpu = await _worker_rate(
                            worker, connections_file, batch, measured, usage, infra
                        )
                    rows.append(
                        {
                            "batch": batch,
                            "events": measured,
                            "events_per_s": round(rate, 1),
                            "cpu_ms_per_event": cpu,
                        }
                    )
            group: dict[int, tuple[float, dict[str, float]]] = {}
            for workers in (1, 2):
                console.print(f"processor: {events} events, {workers} worker(s) in one group, batch {BATCH}")
                group[workers] = await _group_rate(
                    kafka_endpoint.bootstrap_servers,
                    pg.url,
                    connections_file,
                    stream,
                    workers=workers,
                    usage=usage,
                    infra=infra,
                )
            console.print(f"processor: Faust's stream alone over {events} events, take({BATCH})")
            floor = await _faust_floor(kafka, events, usage)
        raws = [
            await asyncio.to_thread(raw_consume_rate, kafka, inventory_events.TOPIC, events) for _ in range(3)
        ]
        raw = statistics.median(raws)
        apply_only = await apply_rate(box.database_url, stream, batch=BATCH)
        console.print(f"processor: the set-based ceiling over {events} events, batch {BATCH} (3 runs)")
        ceilings = [await _ceiling(pg.url, stream) for _ in range(3)]
    ceiling = statistics.median(ceilings)
    best = max(r["events_per_s"] for r in rows)
    at_batch = next(r for r in rows if r["batch"] == BATCH)
    workers_1, workers_2 = round(group[1][0], 1), round(group[2][0], 1)
    return {
        "events_per_s": best,
        "raw_consume_per_s": round(raw, 1),
        "raw_consume_runs": [round(r, 1) for r in raws],
        "ratio": round(best / raw, 4) if raw else None,
        "ratio_target": 0.30,
        "apply_only_per_s": round(apply_only, 1),
        "ceiling_per_s": round(ceiling, 1),
        "ceiling_runs": [round(c, 1) for c in ceilings],
        "vs_ceiling": _ratio(at_batch["events_per_s"], ceiling),
        "vs_ceiling_target": VS_CEILING_TARGET,
        "workers_1_per_s": workers_1,
        "workers_2_per_s": workers_2,
        # like for like: both group runs start on an empty topic and are timed the same way
        "scale_2_workers": _ratio(workers_2, workers_1),
        "workers_cpu_ms_per_event": {"1": group[1][1], "2": group[2][1]},
        "faust_floor_per_s": floor["per_s"],
        "faust_us_per_event": floor["us_per_event"],
        "cpu_ms_per_event": at_batch["cpu_ms_per_event"],
        "partitions": PARTITIONS,
        "batch_within_s": WITHIN_S,
        "by_batch": rows,
        "events": events,
    }, usage.result
