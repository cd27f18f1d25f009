"""The CLI's one error boundary: a failure of PostgreSQL, Kafka, the lab or the settings becomes one or two
plain lines on stderr (what failed, what to do) and a non-zero exit; the traceback only with ``--debug``.

Exit status: 0 done; 1 an operational failure (a service unreachable or refusing, a missing table or topic);
2 a bad argument or setting (click's usage errors too) or local infrastructure that cannot start; 70 an
unexpected error (a bug: ``--debug`` shows where).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import typer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError
from typer.core import TyperGroup

from channels.connection import ConnectionsFileError
from stocksync.kafka import DeliveryError, TopicReadError
from stocksync.settings import KafkaSettings, PostgresSettings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 70  # EX_SOFTWARE

KAFKA_PROBE_S = 5.0
LAB_MODULES = {"lab", "matplotlib", "psutil", "testcontainers", "docker"}
LAB_HINT = "pip install -e '.[lab]' from a checkout (`make` does it)"

_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError._MSG_TIMED_OUT,
}


class LabMissing(RuntimeError):
    """A lab command ran where the lab package or its extra's dependencies are not installed."""

    def __init__(self, command: str, module: str | None) -> None:
        super().__init__(f"`stocksync {command}` needs the lab ({module} is not installed): {LAB_HINT}")


@dataclass(frozen=True)
class Answer:
    """What the operator reads instead of a traceback, and the exit status."""

    text: str
    code: int = EXIT_FAILED


def kafka_reachable(settings: KafkaSettings, timeout_s: float = KAFKA_PROBE_S) -> KafkaSettings:
    """Return `settings` once the cluster answers a metadata request within `timeout_s`; raise the
    KafkaException otherwise (librdkafka would otherwise wait its full, longer timeouts, and log)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})
    admin.list_topics(timeout=timeout_s)
    return settings


def _database_url() -> str:
    try:
        return PostgresSettings().database_url
    except ValidationError:
        return ""


def _postgres() -> tuple[str, str]:
    """``"PostgreSQL at host:port (DATABASE_URL)"`` and the URL's password (to keep it out of messages)."""
    url = _database_url()
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        parts = {}
    where = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"
    return f"PostgreSQL at {where} (DATABASE_URL)", str(parts.get("password") or "")


def _kafka() -> str:
    try:
        servers = KafkaSettings().bootstrap_servers
    except ValidationError:
        servers = "?"
    return f"Kafka at {servers} (KAFKA_BOOTSTRAP_SERVERS)"


def _first_line(exc: BaseException, secret: str = "") -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = (lines[0] if lines else type(exc).__name__)[:300]
    return text.replace(secret, "***") if secret else text


def _about_postgres(exc: psycopg.Error) -> Answer:
    service, secret = _postgres()
    detail = _first_line(exc, secret).removeprefix("connection failed: ")
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedFunction | pg_errors.UndefinedColumn):
        return Answer(f"{service} lacks this version's schema ({detail}).\nRun `stocksync migrate`.")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return Answer(f"{service} refused: {detail}\nCheck the user in DATABASE_URL and its grants.")
    if isinstance(exc, psycopg.OperationalError):
        return Answer(
            f"{service} is unreachable or refused the connection: {detail}\n"
            "Check DATABASE_URL, or start the server (`stocksync infra` starts one locally; then migrate)."
        )
    return Answer(f"{service} failed: {detail}\nCheck DATABASE_URL (and `stocksync migrate`).")


def _about_kafka(exc: KafkaException) -> Answer:
    service = _kafka()
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    detail = err.str() if err is not None else _first_line(exc)
    if err is not None and err.code() in _UNREACHABLE:
        return Answer(
            f"{service} is unreachable: {detail}\n"
            "Start it or check KAFKA_BOOTSTRAP_SERVERS (`stocksync infra` starts one locally)."
        )
    if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return Answer(f"{service}: a topic is missing ({detail}).\nRun `stocksync topics`.")
    return Answer(f"{service} failed: {detail}\nCheck KAFKA_BOOTSTRAP_SERVERS and KAFKA_TOPIC_PREFIX.")


def _about_settings(exc: ValidationError) -> Answer:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or exc.title}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)  # the input may be a secret
    )
    return Answer(f"invalid setting or argument ({exc.title}): {problems}", EXIT_USAGE)


def explain(exc: BaseException) -> Answer | None:
    """The answer for a known operational error (looked for in `exc`, its causes and its group), else None."""
    for e in _chain(exc):
        if isinstance(e, LabMissing):
            return Answer(str(e), EXIT_USAGE)
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in LAB_MODULES:
            return Answer(f"this command needs the lab ({e.name} is not installed): {LAB_HINT}", EXIT_USAGE)
        if isinstance(e, psycopg.Error):
            return _about_postgres(e)
        if isinstance(e, KafkaException):
            return _about_kafka(e)
        if isinstance(e, TopicReadError | DeliveryError):
            hint = "Run `stocksync topics`." if "does not exist" in str(e) else "Check the cluster's health."
            return Answer(f"{_kafka()}: {_first_line(e)}\n{hint}")
        if _is_launch_error(e):
            return Answer(f"could not start local infrastructure: {_first_line(e)}", EXIT_USAGE)
        if isinstance(e, ConnectionsFileError):
            return Answer(str(e).strip(), EXIT_USAGE)
        if isinstance(e, ValidationError):
            return _about_settings(e)
        if isinstance(e, OSError):
            return Answer(_first_line(e))
    return None


def _is_launch_error(exc: BaseException) -> bool:
    """A ``lab.local`` LaunchError, recognised without importing the lab (which may not be installed)."""
    process = sys.modules.get("lab.local.process")
    launch_error = getattr(process, "LaunchError", None)
    return isinstance(launch_error, type) and isinstance(exc, launch_error)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the members of an exception group, then the causes and contexts, each once, outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)


class BoundaryGroup(TyperGroup):
    """The root command group: every command runs inside ``invoke``, so its errors are answered here."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored click) Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own: a chosen exit status, a usage error (exit 2), Ctrl-C
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            answer = explain(exc) or Answer(
                f"unexpected error: {type(exc).__name__}: {_first_line(exc, _postgres()[1])}\n"
                "Run again with --debug (or STOCKSYNC_DEBUG=1) for the traceback, and report it.",
                EXIT_BUG,
            )
            typer.echo(answer.text, err=True)
            raise typer.Exit(answer.code) from None
