"""Test helpers: wait on a condition with a deadline (never a bare sleep), read a topic to its end."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from stocksync.local.process import eventually
from stocksync.settings import KafkaSettings

__all__ = ["eventually", "group_caught_up", "read_topic"]


SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _leadership_settling(exc: BaseException) -> bool:
    # A new topic's leader can be named in metadata a moment before the broker itself acts as one.
    return isinstance(exc, KafkaException) and (exc.args[0].retriable() or exc.args[0].code() in SETTLING)


def _end_offset(consumer: Consumer, tp: TopicPartition) -> int:
    """The partition's high watermark, asked again while leadership is still settling."""
    for attempt in Retrying(
        retry=retry_if_exception(_leadership_settling),
        stop=stop_after_delay(10),
        wait=wait_fixed(0.1),
        reraise=True,
    ):
        with attempt:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
    raise AssertionError("unreachable: Retrying either returns or re-raises")


def read_topic(settings: KafkaSettings, topic: str, *, timeout_s: float = 20.0) -> list[Message]:
    """Every record of the (unprefixed) topic, up to its end offsets at the time of the call."""
    name = settings.topic(topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {p: _end_offset(consumer, TopicPartition(name, p)) for p in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(name, p, 0) for p in pending])
        records: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {name} to its end within {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(msg)
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                pending.discard(msg.partition() or 0)
        return records
    finally:
        consumer.close()


def group_caught_up(settings: KafkaSettings, group: str, topic: str) -> bool:
    """True when the consumer group's committed offsets reached the end of every partition of the topic."""
    name = settings.topic(topic)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group(group)})
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        tps = [TopicPartition(name, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        for tp in tps:
            end = consumer.get_watermark_offsets(tp, timeout=10)[1]
            if end > 0 and committed.get(tp.partition, -1) < end:
                return False
        return True
    finally:
        consumer.close()
