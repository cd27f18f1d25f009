"""One sandbox on shared servers: a fresh migrated database, topics under a unique prefix, stacks of services.

``sandbox(bootstrap, server_url, label=...)`` makes all three and removes them on exit, failure included: the
stacks stop first (off the event loop, which may be serving simulators to a stopping fan-out), then the
topics are deleted and the database dropped. ``Sandbox(kafka, database_url)`` alone stops only its stacks,
for callers (the test fixtures) whose database and topics come and go on their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from lab.local.postgres import create_database, drop_database
from lab.local.process import wait_until
from lab.local.stack import Stack, StackConfig
from schemas import TOPICS
from stocksync.db import migrate
from stocksync.kafka import delete_prefixed_topics, ensure_topics
from stocksync.settings import KafkaSettings


@contextmanager
def fresh_database(server_url: str, label: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database on the server (every migration applied unless `migrated` is False), its URL;
    dropped with its connections when the block ends."""
    name, url = create_database(server_url, label)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        drop_database(server_url, name)


@contextmanager
def prefixed_topics(
    bootstrap_servers: str, label: str, *, topics: Iterable[str] = TOPICS, partitions: int = 4
) -> Iterator[KafkaSettings]:
    """Settings with a unique topic prefix and `topics` created under it; every topic with that prefix
    is deleted when the block ends."""
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=f"{label}-{uuid.uuid4().hex[:8]}.",
        partitions=partitions,
    )
    try:
        ensure_topics(kafka, topics)
        yield kafka
    finally:
        delete_prefixed_topics(kafka)


@dataclass
class Sandbox:
    """Stacks of services on one set of topics and one database; all stopped when the sandbox closes."""

    kafka: KafkaSettings
    database_url: str
    stacks: list[Stack] = field(default_factory=list)

    def stack(self, config: StackConfig | Path, *, run_dir: Path | None = None) -> Stack:
        """An unstarted stack on the sandbox's topics (created here if missing) and database. A path is a
        connections file for the default services (one fan-out process per channel, Shopify)."""
        if isinstance(config, Path):
            config = StackConfig(
                self.kafka.bootstrap_servers,
                self.database_url,
                config,
                self.kafka.topic_prefix,
                self.kafka.partitions,
            )
        ensure_topics(self.kafka, TOPICS)
        stack = Stack(config) if run_dir is None else Stack(config, run_dir=run_dir)
        self.stacks.append(stack)
        return stack

    async def start(
        self,
        config: StackConfig | Path,
        *,
        fanout: bool = True,
        ready_timeout_s: float = 60.0,
        run_dir: Path | None = None,
    ) -> Stack:
        """A stack with the gateway, the processor and (unless `fanout` is False) the fan-out started,
        returned once the gateway answers; raises if a service exits first."""
        stack = self.stack(config, run_dir=run_dir)
        stack.start_all(fanout=fanout)  # here, on the caller's thread: children die with their spawner's
        await asyncio.to_thread(wait_until, stack.ready, timeout_s=ready_timeout_s, what="the ingest gateway")
        return stack

    def close(self) -> None:
        """Stop every stack, the newest first."""
        while self.stacks:
            self.stacks.pop().close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)


@asynccontextmanager
async def sandbox(
    bootstrap_servers: str, server_url: str, *, label: str, partitions: int = 4
) -> AsyncIterator[Sandbox]:
    """A fresh migrated database named after `label`, the pipeline's topics under a `label`-prefix, and a
    Sandbox for stacks on them; stacks stopped, topics deleted and database dropped when the block ends."""
    with (
        fresh_database(server_url, label) as database_url,
        prefixed_topics(bootstrap_servers, label, partitions=partitions) as kafka,
    ):
        async with Sandbox(kafka, database_url) as box:
            yield box
