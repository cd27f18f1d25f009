"""Test helpers: wait on a condition with a deadline (never a bare sleep), read a topic to its end."""

from __future__ import annotations

from confluent_kafka import Consumer, Message, TopicPartition

from lab.local.process import eventually
from stocksync.kafka import read_to_end, watermarks
from stocksync.settings import KafkaSettings

__all__ = ["eventually", "group_caught_up", "read_topic"]


def read_topic(settings: KafkaSettings, topic: str, *, timeout_s: float = 20.0) -> list[Message]:
    """Every record of the (unprefixed) topic, up to its end offsets at the time of the call."""
    return read_to_end(settings, topic, timeout_s=timeout_s)


def group_caught_up(settings: KafkaSettings, group: str, topic: str) -> bool:
    """True when the consumer group's committed offsets reached the end of every partition of the topic."""
    name = settings.topic(topic)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group(group)})
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        tps = [TopicPartition(name, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        for tp in tps:
            end = watermarks(consumer, tp)[1]
            if end > 0 and committed.get(tp.partition, -1) < end:
                return False
        return True
    finally:
        consumer.close()
