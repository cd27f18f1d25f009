"""A real Kafka broker for the session (see lab.local.kafka for how it is found or started), and
per-test settings whose topic prefix isolates each test; that test's topics are deleted afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

import pytest

from lab.local import KafkaEndpoint, local_kafka
from lab.sandbox import prefixed_topics
from stocksync.settings import KafkaSettings


def announce(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so every run shows which real servers it used."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[infra] {line}")


class Described(Protocol):
    def describe(self) -> str: ...


E = TypeVar("E", bound=Described)


def announced(config: pytest.Config, server: AbstractContextManager[E]) -> Iterator[E]:
    """Enter `server`, saying which real server started and stopped, and how long each took."""
    started = time.monotonic()
    with server as endpoint:
        announce(config, f"started {endpoint.describe()} in {time.monotonic() - started:.1f} s")
        yield endpoint
        stopping = time.monotonic()
    announce(config, f"stopped {endpoint.describe()} in {time.monotonic() - stopping:.1f} s")


@pytest.fixture(scope="session")
def kafka_endpoint(pytestconfig: pytest.Config) -> Iterator[KafkaEndpoint]:
    yield from announced(pytestconfig, local_kafka(partitions=4))


@pytest.fixture
def kafka(kafka_endpoint: KafkaEndpoint) -> Iterator[KafkaSettings]:
    """Settings with a topic prefix of this test's own (no topic created yet); its topics deleted after."""
    with prefixed_topics(kafka_endpoint.bootstrap_servers, "t", topics=()) as settings:
        yield settings
