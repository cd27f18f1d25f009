"""The pipeline's services as real OS processes (``python -m ingest|processor|fanout``) on local infra.

Used by the end-to-end tests and the demo: each service gets its settings through the environment, logs to
its own file, dies with its parent, and is stopped with SIGTERM (then SIGKILL) when the stack closes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lab.local.process import LaunchError, free_port, log_tail, make_run_dir, spawn, stop, wait_until


@dataclass(frozen=True)
class StackConfig:
    bootstrap_servers: str
    database_url: str
    connections_file: Path
    topic_prefix: str = ""
    partitions: int = 4
    channels: tuple[str, ...] = ("shopify",)
    fanout_together: bool = False  # one fan-out process for every channel instead of one per channel
    # The allocation policy of a tenant that set none (PROCESSOR_DEFAULT_POLICY). The lab's default is mirror,
    # which the end-to-end tests of the fan-out's delivery assert on; the demo, the bench and the
    # allocation tests set policies per tenant (allocation.policy.set_policy).
    default_policy: str = "mirror"


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path
    port: int | None = None

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)


@dataclass
class Stack:
    """The running services; ``start_all`` spawns them (quickly), ``ready`` says when they answer."""

    config: StackConfig
    run_dir: Path = field(default_factory=lambda: make_run_dir("stack"))
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.services['ingest'].port}"

    def env(self, **extra: str) -> dict[str, str]:
        cfg = self.config
        ours = ("KAFKA_", "INGEST_", "PROCESSOR_", "FANOUT_", "DATABASE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=cfg.bootstrap_servers,
            KAFKA_TOPIC_PREFIX=cfg.topic_prefix,
            KAFKA_PARTITIONS=str(cfg.partitions),
            DATABASE_URL=cfg.database_url,
            INGEST_CONNECTIONS_FILE=str(cfg.connections_file),
            FANOUT_CONNECTIONS_FILE=str(cfg.connections_file),
            PROCESSOR_CONNECTIONS_FILE=str(cfg.connections_file),
            PROCESSOR_DEFAULT_POLICY=cfg.default_policy,
            PROCESSOR_DATADIR=str(self.run_dir / "processor-data"),
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    def start(self, name: str, module: str, *args: str, port: int | None = None, **env: str) -> Service:
        """Spawn one service. Call from the main thread: children die with the thread that spawned them."""
        log_file = self.run_dir / f"{name}.log"
        proc = spawn([sys.executable, "-m", module, *args], log_file=log_file, env=self.env(**env))
        service = Service(name, proc, log_file, port)
        self.services[name] = service
        return service

    def start_all(self, *, fanout: bool = True) -> None:
        ingest_port = free_port()
        self.start("ingest", "ingest", port=ingest_port, INGEST_PORT=str(ingest_port))
        ops_port = free_port()
        self.start("processor", "processor", port=ops_port, PROCESSOR_OPS_PORT=str(ops_port))
        if fanout:
            if self.config.fanout_together:
                port = free_port()
                flags = [arg for ch in self.config.channels for arg in ("--channel", ch)]
                self.start("fanout", "fanout", *flags, port=port, FANOUT_PORT=str(port))
                return
            for channel in self.config.channels:
                port = free_port()
                name = f"fanout-{channel}"
                self.start(name, "fanout", "--channel", channel, port=port, FANOUT_PORT=str(port))

    def ready(self) -> bool:
        """True once the gateway answers; raises if any service has exited."""
        for s in self.services.values():
            if s.proc.poll() is not None:
                raise LaunchError(f"{s.name} exited with status {s.proc.returncode}:\n{s.tail()}")
        return _http_ok(f"{self.ingest_url}/healthz")

    def stop_service(self, name: str, *, sig: int = signal.SIGTERM) -> int:
        service = self.services.pop(name)
        return stop(service.proc, sig=sig, grace_s=20.0)

    def close(self) -> None:
        for name in list(self.services):
            self.stop_service(name)
        if os.environ.get("STOCKSYNC_KEEP_LOGS"):
            print(f"service logs kept in {self.run_dir}", file=sys.stderr)  # noqa: T201
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL we built
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def run_stack(config: StackConfig, *, fanout: bool = True, timeout_s: float = 30.0) -> Iterator[Stack]:
    """Start ingest, processor and one fan-out worker per channel; stop them all when the block ends."""
    stack = Stack(config)
    try:
        stack.start_all(fanout=fanout)
        wait_until(stack.ready, timeout_s=timeout_s, what="ingest gateway")
        yield stack
    finally:
        stack.close()
