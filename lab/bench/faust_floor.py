"""``python -m lab.bench.faust_floor --out FILE …``: what Faust's stream alone costs per event (bench floor).

A Faust app that consumes one topic with ``stream.take(batch, within=…)`` as the processor's Faust agent did
(raw bytes, memory store, earliest offsets, a consumer group of its own) and does nothing with the values: the
per-event price of Faust's stream, beside the processor that now takes batches from librdkafka directly.
From its first batch to `--events` events it times the wall clock and this process's CPU, then writes
``{"events", "elapsed_s", "per_s", "cpu_s", "us_per_event"}`` to `--out` (the first batch's events arrive at
the clock's start, so they are left out of the rate) and keeps consuming until it is stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faust


def _write(out: Path, result: dict[str, float]) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)  # the bench waits for the file: it appears whole


def build_floor(
    *,
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    group: str,
    events: int,
    batch: int,
    within_s: float,
    datadir: Path,
    out: Path,
) -> faust.App:
    """The floor's Faust app: built here, connected only when its worker starts."""
    brokers = ";".join(f"kafka://{b.strip()}" for b in bootstrap_servers.split(","))
    app = faust.App(
        group,
        broker=brokers,
        store="memory://",
        datadir=str(datadir),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    source = app.topic(
        topic,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source, name="faust-floor")
    async def floor(stream: faust.StreamT[bytes]) -> None:
        seen, first, started, cpu0 = 0, 0, 0.0, 0.0
        done = False
        async for values in stream.take(batch, within=within_s):
            now = time.perf_counter()
            if not seen:
                first, started, cpu0 = len(values), now, time.process_time()
            seen += len(values)
            if seen >= events and not done:
                done = True
                elapsed, cpu = now - started, time.process_time() - cpu0
                counted = seen - first
                _write(
                    out,
                    {
                        "events": counted,
                        "elapsed_s": round(elapsed, 4),
                        "per_s": round(counted / elapsed, 1) if elapsed > 0 else float("nan"),
                        "cpu_s": round(cpu, 4),
                        "us_per_event": round(1e6 * cpu / counted, 2) if counted else float("nan"),
                    },
                )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.faust_floor", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="the full topic name (prefix included)")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--group", required=True, help="the Faust app id: a consumer group of its own")
    parser.add_argument("--events", type=int, required=True, help="stop the clock at this many events")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--within", type=float, default=0.02, help="take()'s longest wait to fill a batch")
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    app = build_floor(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        partitions=args.partitions,
        group=args.group,
        events=args.events,
        batch=args.batch,
        within_s=args.within,
        datadir=args.datadir,
        out=args.out,
    )
    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "warn"]
    app.main()  # Faust's CLI reads sys.argv; runs until SIGTERM


if __name__ == "__main__":
    main()
