"""Child processes for local infrastructure: bound to our lifetime, in run directories swept when orphaned.

Contract: a server started here dies with the process (or thread) that started it, even if that one is
SIGKILLed (Linux parent-death signal), and its run directory is removed on a clean stop or by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")
RUN_ROOT = Path(tempfile.gettempdir()) / "stocksync-run"


class LaunchError(RuntimeError):
    """A local server could not be started; the message says why and what to do."""


def _parent_death_signal(sig: int) -> Callable[[], None]:
    def set_signal() -> None:
        # Runs in the child between fork and exec, after any uid change (which would clear it).
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return set_signal


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphaned_run_dirs() -> list[Path]:
    """Remove run directories whose owning process is gone (a previous run killed with SIGKILL)."""
    removed: list[Path] = []
    if not RUN_ROOT.is_dir():
        return removed
    for d in RUN_ROOT.iterdir():
        owner = d.name.split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def make_run_dir(kind: str) -> Path:
    """A fresh directory named after our pid, so a later run can tell whether its owner is still alive."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    RUN_ROOT.chmod(0o1777)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{kind}-", dir=RUN_ROOT))


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    death_signal: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
    user: int | None = None,
    group: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with output to `log_file`, killed with `death_signal` if we die first."""
    log = log_file.open("ab")
    try:
        return subprocess.Popen(  # noqa: S603 - argv built by this package, never from input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            preexec_fn=_parent_death_signal(death_signal),  # only prctl: no locks
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> int:
    """Ask the process to stop with `sig`; SIGKILL it if it has not exited after `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout_s: float = ..., what: str, interval_s: float = ...
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T], *, timeout_s: float = ..., what: str, interval_s: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any], *, timeout_s: float = 30.0, what: str, interval_s: float = 0.05
) -> Any:
    """Poll `check` until it returns a truthy value; raise AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        result = check()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last
        await asyncio.sleep(interval_s)  # a polling interval, bounded by the deadline above
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last value: {last!r})")


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str,
    log_file: Path | None = None,
    interval_s: float = 0.1,
) -> None:
    """Poll `ready` until it is true; fail early, with the log tail, if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_file) if log_file else ""
            raise LaunchError(f"{what} exited with status {proc.returncode} before it was ready.\n{tail}")
        if time.monotonic() >= deadline:
            tail = log_tail(log_file) if log_file else ""
            raise LaunchError(f"{what} was not ready after {timeout_s:.0f} s.\n{tail}")
        time.sleep(interval_s)
