"""Local servers stop and are cleaned up when their owner ends, even when it is interrupted or killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.local.process import RUN_ROOT, sweep_orphaned_run_dirs
from tests.helpers import eventually

pytestmark = pytest.mark.integration

OWNER = textwrap.dedent(
    """
    import sys
    from lab.local import local_kafka, local_postgres
    with local_postgres() as pg, local_kafka() as kafka:
        print(pg.source.split("pid ")[1], kafka.source.split("pid ")[1], flush=True)
        sys.stdin.read()
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_dirs_of(pid: int) -> list[Path]:
    return sorted(RUN_ROOT.glob(f"{pid}-*")) if RUN_ROOT.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
async def test_servers_die_with_their_owner(sig: signal.Signals) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("DATABASE_URL"):
        pytest.skip("external servers are configured: nothing is launched to clean up")
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    owner = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter; reaped with a deadline below
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().decode()  # blocks until both servers are up
        pg_pid, kafka_pid = (int(p) for p in line.split())
        assert alive(pg_pid)
        assert alive(kafka_pid)
        assert len(run_dirs_of(owner.pid)) == 2
        owner.send_signal(sig)
        await eventually(
            lambda: not alive(pg_pid) and not alive(kafka_pid), timeout_s=40, what="both servers to exit"
        )
        await eventually(lambda: owner.poll() is not None, timeout_s=40, what="the owner to exit")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pipe in (owner.stdin, owner.stdout):
            if pipe is not None:
                pipe.close()
    if sig == signal.SIGINT:
        assert run_dirs_of(owner.pid) == []  # a clean stop removes its own directories
    else:
        left = run_dirs_of(owner.pid)
        assert len(left) == 2  # nobody was left to clean up ...
        assert set(left) <= set(sweep_orphaned_run_dirs())  # ... so the next start sweeps them
        assert run_dirs_of(owner.pid) == []
