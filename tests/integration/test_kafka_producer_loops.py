"""AsyncProducer serves delivery reports on the awaiting loop: sends from several loops, failures, close."""

from __future__ import annotations

import asyncio
import threading

import pytest
from confluent_kafka import Message

from lab.local.process import free_port
from stocksync.kafka import AsyncProducer, DeliveryError, ensure_topics, producer_config
from stocksync.settings import KafkaSettings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


async def test_sends_from_two_event_loops_on_one_producer_each_resolve_on_their_own_loop(
    kafka: KafkaSettings,
) -> None:
    """A report served while another loop polls is handed to its own loop; none is lost or resolved twice."""
    ensure_topics(kafka, ["probe"])
    topic = kafka.topic("probe")
    producer = AsyncProducer(producer_config(kafka))
    results: dict[str, list[Message]] = {}

    async def burst(name: str) -> None:
        loop = asyncio.get_running_loop()
        sends = [producer.send(topic, f"{name}-{i}".encode(), key=name.encode()) for i in range(200)]
        results[name] = list(await asyncio.gather(*sends))
        assert asyncio.get_running_loop() is loop

    other = threading.Thread(target=lambda: asyncio.run(burst("thread")))
    other.start()
    try:
        await burst("main")
    finally:
        await asyncio.to_thread(other.join, 30)
        await producer.close()
    assert not other.is_alive()
    for name in ("main", "thread"):
        assert [m.value() for m in results[name]] == [f"{name}-{i}".encode() for i in range(200)]
        assert all(m.offset() is not None for m in results[name])
    stored = [r.value() or b"" for r in read_topic(kafka, "probe")]
    assert sorted(stored) == sorted(m.value() or b"" for ms in results.values() for m in ms)


async def test_a_record_no_broker_takes_fails_with_delivery_error_and_the_producer_closes() -> None:
    """No broker at the address: the send is reported failed after message.timeout.ms, not left hanging."""
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    producer = AsyncProducer(producer_config(nowhere, **{"message.timeout.ms": 500, "log_level": 0}))
    try:
        with pytest.raises(DeliveryError, match="did not store the record"):
            await asyncio.wait_for(producer.send("probe", b"lost"), 10)
        with pytest.raises(TimeoutError):
            await producer.send("probe", b"also lost", timeout_s=0.05)
    finally:
        await asyncio.wait_for(producer.close(timeout_s=2), 10)


async def test_send_all_returns_once_every_record_of_several_topics_is_stored_in_order(
    kafka: KafkaSettings,
) -> None:
    """One await for a batch over two topics: every record is there, in its order per topic."""
    ensure_topics(kafka, ["probe-a", "probe-b"])
    producer = AsyncProducer(producer_config(kafka))
    records = [
        (kafka.topic("probe-a" if i % 3 else "probe-b"), b"one-key", f"record-{i}".encode())
        for i in range(500)
    ]
    try:
        await producer.send_all(records)
        await producer.send_all([])  # nothing to send: returns at once
    finally:
        await producer.close()
    for name in ("probe-a", "probe-b"):
        expected = [v for t, _k, v in records if t == kafka.topic(name)]
        assert [r.value() for r in read_topic(kafka, name)] == expected


async def test_send_all_raises_delivery_error_when_a_record_is_not_stored() -> None:
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    producer = AsyncProducer(producer_config(nowhere, **{"message.timeout.ms": 500, "log_level": 0}))
    try:
        with pytest.raises(DeliveryError, match=r"did not store 3 record\(s\)"):
            await asyncio.wait_for(producer.send_all([("probe", None, b"x")] * 3), 10)
    finally:
        await asyncio.wait_for(producer.close(timeout_s=2), 10)
