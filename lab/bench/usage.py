"""CPU (% of one core) and peak RSS of named process trees, sampled with psutil during a part of the run;
CPU seconds spent by named trees between two readings (`cpu_by_pid`, `cpu_spent`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psutil
import psycopg

from lab.local.kafka import KafkaEndpoint
from lab.local.postgres import PostgresEndpoint


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (the broker, the database), if this user may see it."""
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except psutil.AccessDenied:
        return None
    return None


def _tree(pid: int, others: set[int]) -> list[psutil.Process]:
    """`pid` and its descendants, leaving out the subtrees of `others` (measured under their own names:
    the services are children of this process)."""
    out: list[psutil.Process] = []
    try:
        todo = [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return out
    while todo:
        proc = todo.pop()
        out.append(proc)
        with contextlib.suppress(psutil.NoSuchProcess):
            todo += [c for c in proc.children() if c.pid not in others]
    return out


def _cpu_rss(pid: int, others: set[int]) -> tuple[dict[int, float], float]:
    cpu: dict[int, float] = {}
    rss = 0.0
    for p in _tree(pid, others):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            cpu[p.pid] = t.user + t.system
            rss += p.memory_info().rss
    return cpu, rss / 2**20


@dataclass
class Usage:
    """CPU (% of one core, averaged over the part) and peak RSS of named process trees."""

    pids: dict[str, int]
    interval_s: float = 0.5
    result: dict[str, dict[str, float]] = field(default_factory=dict)

    def _others(self, pid: int) -> set[int]:
        return set(self.pids.values()) - {pid}

    @asynccontextmanager
    async def measure(self) -> AsyncIterator[None]:
        started = time.monotonic()
        first = {name: _cpu_rss(pid, self._others(pid)) for name, pid in self.pids.items()}
        peak = {name: rss for name, (_, rss) in first.items()}
        last = {name: dict(cpu) for name, (cpu, _) in first.items()}  # a copy: updated as samples come
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)  # the sampling period
                for name, pid in list(self.pids.items()):
                    cpu, rss = await asyncio.to_thread(_cpu_rss, pid, self._others(pid))
                    peak[name] = max(peak.get(name, 0.0), rss)
                    last.setdefault(name, {}).update(
                        cpu
                    )  # keeps the last figure of processes that exit meanwhile

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            stop.set()
            await task
            wall = time.monotonic() - started
            for name in self.pids:
                cpu0 = first[name][0] if name in first else {}
                spent = sum(v - cpu0.get(pid, 0.0) for pid, v in last.get(name, {}).items())
                self.result[name] = {
                    "cpu_s": round(spent, 2),
                    "cpu_pct": round(100 * spent / wall, 1) if wall > 0 else 0.0,
                    "rss_mb_max": round(peak.get(name, 0.0), 1),
                }
            self.result["_wall_s"] = {"cpu_s": round(wall, 1), "cpu_pct": 0.0, "rss_mb_max": 0.0}


def infra_pids(kafka: KafkaEndpoint, pg: PostgresEndpoint) -> dict[str, int]:
    out: dict[str, int] = {"bench (load + simulators)": os.getpid()}
    kafka_port = int(kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    pg_port = psycopg.conninfo.conninfo_to_dict(pg.url).get("port")
    for name, port in (("kafka broker", kafka_port), ("postgresql", int(str(pg_port or 5432)))):
        pid = listening_pid(port)
        if pid is not None:
            out[name] = pid
    return out


def cpu_by_pid(pids: Mapping[str, int]) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) spent so far by each process of each named tree, by pid."""
    others = set(pids.values())
    return {name: _cpu_rss(pid, others - {pid})[0] for name, pid in pids.items()}


def cpu_spent(
    before: Mapping[str, dict[int, float]], after: Mapping[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds each named tree spent between two `cpu_by_pid` readings (a process that exited meanwhile
    is missed: read around work done by long-lived processes)."""
    return {
        name: sum(v - before.get(name, {}).get(pid, 0.0) for pid, v in cpu.items())
        for name, cpu in after.items()
    }
