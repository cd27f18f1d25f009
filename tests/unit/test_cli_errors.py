"""The CLI's error boundary (cli/errors.py) without services: what each known error becomes, exit statuses,
``--debug``, and the operator commands working where the lab is not installed."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from psycopg import errors as pg_errors
from typer.testing import CliRunner

import cli.main
from cli.errors import EXIT_BUG, EXIT_FAILED, EXIT_USAGE, explain
from cli.main import app
from stocksync.kafka import TopicReadError


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops:hunter2@db.example:6543/stock")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.delenv("STOCKSYNC_DEBUG", raising=False)


def test_postgres_unreachable_names_host_and_port_never_the_password() -> None:
    answer = explain(psycopg.OperationalError("connection failed: password hunter2 refused\nmore detail"))
    assert answer is not None
    assert answer.code == EXIT_FAILED
    assert answer.text.startswith("PostgreSQL at db.example:6543 (DATABASE_URL)")
    assert "hunter2" not in answer.text
    assert "Check DATABASE_URL" in answer.text
    assert len(answer.text.splitlines()) == 2


def test_a_missing_table_says_run_migrate() -> None:
    answer = explain(pg_errors.UndefinedTable('relation "ledger" does not exist'))
    assert answer is not None
    assert "stocksync migrate" in answer.text


def test_kafka_unreachable_and_missing_topic() -> None:
    down = explain(KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure")))
    assert down is not None
    assert "Kafka at kafka.example:9092 (KAFKA_BOOTSTRAP_SERVERS) is unreachable" in down.text
    missing = explain(TopicReadError("topic inventory.events does not exist on kafka.example:9092"))
    assert missing is not None
    assert "stocksync topics" in missing.text


def test_a_known_error_is_found_behind_its_wrappers() -> None:
    outer = ExceptionGroup("tasks", [RuntimeError("wrapped")])
    outer.__cause__ = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
    answer = explain(outer)
    assert answer is not None
    assert "Kafka" in answer.text
    assert explain(RuntimeError("a bug")) is None


def test_the_boundary_answers_and_debug_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_schema(url: str) -> list[str]:
        raise pg_errors.UndefinedTable('relation "schema_migrations" does not exist')

    monkeypatch.setattr(cli.main, "apply_migrations", no_schema)
    answered = CliRunner().invoke(app, ["migrate"])
    assert answered.exit_code == EXIT_FAILED
    assert "stocksync migrate" in answered.output
    assert "Traceback" not in answered.output
    raised = CliRunner().invoke(app, ["--debug", "migrate"])
    assert isinstance(raised.exception, pg_errors.UndefinedTable)


def test_an_unexpected_error_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(url: str) -> list[str]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.main, "apply_migrations", bug)
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == EXIT_BUG
    assert "unexpected error: ZeroDivisionError: a bug" in result.output
    assert "--debug" in result.output


def test_a_bad_argument_stays_a_usage_error() -> None:
    assert CliRunner().invoke(app, ["audit"]).exit_code == EXIT_USAGE
    assert CliRunner().invoke(app, ["replay", "--batch", "many"]).exit_code == EXIT_USAGE


def test_help_and_lab_commands_without_the_lab() -> None:
    def without_lab(*argv: str) -> subprocess.CompletedProcess[str]:
        code = (
            "import sys; sys.modules['lab'] = None; sys.argv = ['stocksync', *sys.argv[1:]]\n"
            "from cli.main import main; main()"
        )
        return subprocess.run(  # noqa: S603
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
        )

    helped = without_lab("--help")
    assert helped.returncode == 0, helped.stderr
    assert "migrate" in helped.stdout
    lab = without_lab("infra")
    assert lab.returncode == EXIT_USAGE
    assert "pip install -e '.[lab]'" in lab.stderr
    assert len(lab.stderr.strip().splitlines()) == 1
