"""Every ``stocksync`` command with no PostgreSQL and no Kafka reachable answers in a few plain lines that
name the missing service, exits non-zero and prints no traceback (the CLI's boundary, cli/errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from cli.main import app
from lab.local.process import free_port

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).parent / "stocksync")
PASSWORD = "not-to-be-shown"
# They start their own Kafka and PostgreSQL (and run for minutes): no outside service to find missing.
STARTS_ITS_OWN_INFRA = {"demo", "bench", "infra"}


def commands() -> list[tuple[str, ...]]:
    """Every leaf command of the app as its path of names (``("dlq", "list")``): new ones come in by
    themselves."""
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        children = getattr(command, "commands", None)
        if children is None:
            found.append(path)
            return
        for name, child in sorted(children.items()):
            walk(child, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def minimal_args(path: tuple[str, ...], *, database_url: str, empty_file: Path) -> list[str]:
    """Values for the command's required arguments and options (and prompted ones, so none waits)."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    by_name = {
        "into": database_url,
        "channel": "shopify",
        "policy": "never_cancel",
        "api_base_url": "http://127.0.0.1:1",
        "id": "shop-x",
        "webhook_secret": "s",
        "file": str(empty_file),  # a connections file: empty is valid
        "url": "http://127.0.0.1:1",  # a subscriber's URL (checked before PostgreSQL is reached)
    }
    args: list[str] = []
    for param in command.params:
        if not (param.required or getattr(param, "prompt", None)):
            continue
        value = by_name.get(param.name or "", "x")
        if param.param_type_name == "argument":
            args.append(value)
        else:
            args += [param.opts[0], value]
    return args


@pytest.fixture(scope="module")
def closed() -> dict[str, str]:
    """An environment whose DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS point at ports nobody listens on."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "DATABASE_", "RECONCILER_", "FANOUT_", "INGEST_", "STOCKSYNC_"))
    }
    pg, kafka = free_port(), free_port()
    return {
        **env,
        "DATABASE_URL": f"postgresql://stocksync:{PASSWORD}@127.0.0.1:{pg}/stocksync",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "COLUMNS": "200",
    }


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [EXE, *argv],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_the_enumeration_finds_the_commands() -> None:
    found = {" ".join(p) for p in commands()}
    assert {"migrate", "topics", "audit", "replay", "reconcile", "dlq list", "connections add"} <= found
    assert found >= STARTS_ITS_OWN_INFRA


def test_every_command_names_the_missing_service_in_a_few_lines(
    closed: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    runs = [p for p in commands() if p[0] not in STARTS_ITS_OWN_INFRA]
    argvs = [[*p, *minimal_args(p, database_url=closed["DATABASE_URL"], empty_file=empty)] for p in runs]
    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        results = list(pool.map(lambda argv: run(argv, closed), argvs))
    for argv, done in zip(argvs, results, strict=True):
        out = done.stdout + done.stderr
        said = f"stocksync {' '.join(argv)} (exit {done.returncode}):\n{out}"
        assert done.returncode != 0, said
        assert "Traceback" not in out, said
        assert "╭" not in out, said  # no rich panel: neither a traceback frame nor a usage box
        assert "│" not in out, said
        assert len(out.strip().splitlines()) <= 3, said
        assert "PostgreSQL" in out or "Kafka" in out, said
        assert PASSWORD not in out, said


def test_debug_shows_the_traceback(closed: dict[str, str]) -> None:
    done = run(["--debug", "migrate"], closed)
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "OperationalError" in done.stderr
