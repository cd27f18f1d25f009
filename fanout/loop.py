"""One channel's Kafka loop: consume ``stock.changed``, ``stock.rejected`` and ``stock.allocated`` in group
``fanout.<channel>``, gather a coalescing window, deliver, dead-letter what failed to ``fanout.dlq``.

At-least-once: offsets are stored only after every target of the batch was confirmed or dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message
from pydantic import ValidationError

from fanout.delivery import ChannelFanout, Failure, dead_letter
from fanout.plan import Record
from fanout.settings import FanoutSettings
from schemas import fanout_dlq, stock_allocated, stock_changed, stock_rejected
from schemas.base import partition_key
from stocksync import logs
from stocksync.kafka import AsyncProducer

log = logging.getLogger(__name__)

TOPICS: dict[str, Callable[[bytes], Record]] = {
    stock_changed.TOPIC: stock_changed.decode,
    stock_rejected.TOPIC: stock_rejected.decode,
    stock_allocated.TOPIC: stock_allocated.decode,
}


class FanoutWorker:
    """One channel's consumer group: Kafka in, ChannelFanout out, DLQ for what cannot be delivered."""

    def __init__(
        self, settings: FanoutSettings, fanout: ChannelFanout, producer: AsyncProducer, consumer: Consumer
    ) -> None:
        self.settings, self.fanout, self.producer, self.consumer = settings, fanout, producer, consumer
        self.assigned = asyncio.Event()

    @property
    def channel(self) -> str:
        return self.fanout.channel

    def decode(self, messages: list[Message]) -> list[Record]:
        records: list[Record] = []
        prefix = self.settings.kafka.topic_prefix
        for m in messages:
            decode = TOPICS.get((m.topic() or "").removeprefix(prefix))
            try:
                if decode is not None:
                    records.append(decode(m.value() or b""))
            except ValidationError as exc:
                log.error("skipping a record of %s that does not parse: %s", m.topic(), exc)
        return records

    async def handle(self, messages: list[Message]) -> None:
        """Deliver a batch; return once every failure is acknowledged on the dead-letter topic."""
        done = await self.fanout.apply(self.decode(messages))
        if done.failures:
            await self.dead_letter(done.failures)

    async def dead_letter(self, failures: list[Failure]) -> None:
        topic = self.settings.kafka.topic(fanout_dlq.TOPIC)
        letters = [dead_letter(self.channel, f) for f in failures]
        await asyncio.gather(
            *(
                self.producer.send(topic, d.model_dump_json().encode(), key=partition_key(d.tenant, d.sku))
                for d in letters
            )
        )
        self.fanout.metrics.dlq_writes.labels(self.channel).inc(len(letters))
        for d in letters:
            with logs.bound(tenant=d.tenant, sku=d.sku, connection=d.connection_id):
                log.error(
                    "dead-lettered %s/%s=%d for %s after %d attempts: %s",
                    d.tenant,
                    d.sku,
                    d.quantity,
                    d.connection_id,
                    d.attempts,
                    d.last_error,
                )

    async def _gather(self) -> list[Message]:
        """Wait for a first record, then keep gathering for the coalescing window (or until max_batch).

        The first record comes from poll(), which returns as soon as one arrives: consume(n, timeout) would
        wait for n records or the whole timeout, adding that wait to every update at low traffic.
        """
        first = await asyncio.to_thread(self.consumer.poll, 0.2)
        if first is None or first.error():
            return []
        messages = [first]
        deadline = time.monotonic() + self.settings.coalesce_window_s
        while len(messages) < self.settings.max_batch and (left := deadline - time.monotonic()) > 0:
            more = await asyncio.to_thread(
                self.consumer.consume, self.settings.max_batch - len(messages), left
            )
            messages += [m for m in more if not m.error()]
        return messages

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe and loop until `stop`; the consumer is closed by whoever created it."""
        loop = asyncio.get_running_loop()

        def on_assign(_consumer: Any, _partitions: list[Any]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        kafka = self.settings.kafka
        self.consumer.subscribe([kafka.topic(t) for t in TOPICS], on_assign=on_assign)
        while not stop.is_set():
            messages = await self._gather()
            if messages:
                await self.handle(messages)
                for m in messages:
                    self.consumer.store_offsets(m)  # only now: every target confirmed or dead-lettered
            settled = await self.fanout.settle_held(self.settings.capped_settle_s)
            if settled.failures:
                await self.dead_letter(settled.failures)
