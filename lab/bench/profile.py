"""Sample a running process with py-spy while a load runs; self time per function and per package."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from lab.local.process import make_run_dir


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_profile(raw: str, *, top: int = 15) -> dict[str, Any]:
    """Self time per function and per package from py-spy's collapsed stacks (``--format raw``)."""
    by_function: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        by_function[leaf] += n
        where = leaf.partition("(")[2]
        package = "other"
        for marker in ("site-packages/", "lib/python3.11/", "/work/main/", "/"):
            if marker in where:
                package = where.split(marker, 1)[1].split("/", 1)[0].split(".py")[0]
                break
        by_package[package] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": k, "pct": round(100 * v / total, 1)} for k, v in counter.most_common(top)]

    return {"samples": total, "self_by_function": share(by_function), "self_by_package": share(by_package)}


def _keep_profile(raw: Path, out: Path) -> dict[str, Any] | None:
    if not raw.exists():
        return None
    text = raw.read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return {**summarise_profile(text), "collapsed_stacks": str(out)}


async def profile_gateway(
    spy: str, pid: int, seconds: float, load: Awaitable[dict[str, Any]], out: Path
) -> dict[str, Any] | None:
    """Sample the gateway with py-spy while `load` runs (a run of its own, so that the sampling does not
    disturb the measured ones); summarise its self time per function and package."""
    raw = make_run_dir("benchprof") / "profile.txt"
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250"]
    argv += ["--nonblocking", "--format", "raw", "--output", str(raw)]
    profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603, ASYNC220
    try:
        await load
        await asyncio.to_thread(profiler.wait, 30)
        return await asyncio.to_thread(_keep_profile, raw, out)
    finally:
        if profiler.poll() is None:
            profiler.kill()
        shutil.rmtree(raw.parent, ignore_errors=True)
