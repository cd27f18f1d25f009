"""Fault controls for end-to-end tests: stop a real server and start it again, as an outage does.

``RestartablePostgres`` is the embedded PostgreSQL with ``halt`` (a fast shutdown that keeps the data
directory and the port) and ``resume`` (the same server started again on that data and port), like
``JvmKafkaBroker.halt``/``resume`` for the broker. The command line it restarts with is the one the server
wrote to ``postmaster.opts`` when it started (what ``pg_ctl restart`` reuses).

``ServerThread`` runs those starts and stops on one long-lived thread. A server started here gets a
parent-death signal bound to the *thread* that spawned it (see ``lab.local.process``): started from a
thread that exits, it would be killed with it; started from the event loop's thread, its start-up (seconds of
waiting for it to answer) would stall every coroutine, the simulators and the load generator included. On the
server thread it does neither, and it still dies with this process.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from lab.local.postgres import EmbeddedPostgres, accepts_connections
from lab.local.process import LaunchError, spawn, stop, wait_until

T = TypeVar("T")


class ServerThread:
    """One thread, alive until ``close``, on which servers are started, halted and resumed."""

    def __init__(self) -> None:
        # One worker, never retired before shutdown: every server spawned here has the same parent thread.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stocksync-servers")

    async def run(self, call: Callable[[], T]) -> T:
        """Run `call` (a start, halt or resume) on the server thread; the event loop keeps running."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Let the thread go; stop the servers first: any still running get their parent-death signal."""
        self._pool.shutdown(wait=True)


class RestartablePostgres(EmbeddedPostgres):
    """An embedded PostgreSQL that can be stopped and started again on the same data directory and port."""

    def __init__(self) -> None:
        super().__init__()
        self._argv: list[str] = []

    def start(self, timeout_s: float = 60.0) -> str:
        url = super().start(timeout_s)
        if self.run_dir is None:
            raise LaunchError("PostgreSQL started without a run directory")
        opts = (self.run_dir / "data" / "postmaster.opts").read_text().strip()
        self._argv = shlex.split(opts)
        if not self._argv or not Path(self._argv[0]).name.startswith("postgres"):
            raise LaunchError(f"unexpected postmaster.opts, cannot restart from it: {opts!r}")
        return url

    def halt(self, grace_s: float = 20.0) -> None:
        """Stop the server (fast shutdown: open sessions are ended, the data is checkpointed) and keep its
        data directory and port for `resume`."""
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGINT, grace_s=grace_s)
            self._proc = None

    @property
    def halted(self) -> bool:
        return self._proc is None and self.run_dir is not None

    def resume(self, timeout_s: float = 60.0) -> None:
        """Start the halted server again with the command line it first ran with; wait until it answers."""
        if self._proc is not None:
            return
        if self.run_dir is None or not self._argv:
            raise LaunchError("PostgreSQL was never started here: call start() first")
        user = pwd.getpwnam(os.environ.get("STOCKSYNC_PG_OS_USER", "nobody")) if os.geteuid() == 0 else None
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C", "HOME": str(self.run_dir)}
        log_file = self.run_dir / "postgres.log"
        self._proc = spawn(
            self._argv,
            log_file=log_file,
            env=env,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            death_signal=signal.SIGINT,
        )
        wait_until(
            lambda: accepts_connections(self.url),
            timeout_s=timeout_s,
            proc=self._proc,
            what="PostgreSQL server (restarted)",
            log_file=log_file,
        )
