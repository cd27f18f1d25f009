"""Kafka plumbing over confluent-kafka: a durable async producer, consumer configs, topic creation.

The producer is idempotent with ``acks=all``; ``send`` resolves only once the broker acknowledged the
record, so a caller that awaits it may tell the outside world the record is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from stocksync.settings import KafkaSettings

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.001
"""How often a loop with sends waiting serves delivery reports: about the most it adds to an acknowledgement.
uvloop's timers count whole milliseconds: a shorter interval would poll on every pass of the loop."""


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a record; the caller must not report it as stored."""


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,  # implies acks=all and retries without duplicates or reordering
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 30_000,
        **overrides,
    }


def consumer_config(settings: KafkaSettings, group: str, **overrides: Any) -> dict[str, Any]:
    """At-least-once: offsets are stored only after the side effect, then committed in the background."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group(group),
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        **overrides,
    }


class AsyncProducer:
    """An idempotent producer whose ``send`` is awaitable and completes on the broker's acknowledgement.

    Delivery reports are served on the event loop that awaits them: while a loop has sends waiting, it calls
    librdkafka's ``poll(0)`` every ``poll_interval_s`` and resolves what that served in the same callback.
    A background thread that served them had to take the GIL from the busy loop once per record, then queue
    the results behind the loop's other work: in ``make bench``'s closed loop on 2 cores that hand-off
    alone took 3.6 ms at the median and 28 ms at p99, and the GIL ping-pong cost the loop CPU. librdkafka's
    own threads still do the network I/O; a loop with nothing waiting polls nothing.
    """

    def __init__(self, config: Mapping[str, Any], *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self._producer = Producer(dict(config))
        self._interval = poll_interval_s
        self._closed = False
        self._lock = threading.Lock()
        # Reports served so far and not yet resolved: by whichever loop polled, or by flush() on its thread.
        self._ready: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        # Per loop, read and written on that loop's thread only: sends awaiting a report, poll scheduled.
        self._waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
        self._polling: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def _poll_later(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop not in self._polling:
            self._polling.add(loop)
            loop.call_later(self._interval, self._poll_on, loop)

    def _poll_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`'s thread: serve the reports librdkafka has, resolve this loop's, hand on the others'."""
        self._polling.discard(loop)
        if self._closed:
            return
        self._producer.poll(0)
        with self._lock:
            ready, self._ready = self._ready, []
        elsewhere = []
        for target, resolve in ready:
            if target is loop:
                resolve()
            else:
                elsewhere.append((target, resolve))
        if elsewhere:
            self._hand_over(elsewhere)
        if self._waiting.get(loop):
            self._poll_later(loop)

    def _dispatch(self) -> None:
        """Hand every delivery result gathered so far to its event loop (from any thread)."""
        with self._lock:
            ready, self._ready = self._ready, []
        self._hand_over(ready)

    @staticmethod
    def _hand_over(ready: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}
        for loop, resolve in ready:
            by_loop.setdefault(loop, []).append(resolve)
        for loop, resolves in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits those sends any more
                loop.call_soon_threadsafe(_run_all, resolves)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Message:
        """Produce one record; return its metadata once acknowledged by all in-sync replicas."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            # Runs inside poll() or flush(), on whichever thread called it.
            def resolve() -> None:
                self._waiting[loop] -= 1
                if done.done():
                    return
                if err is not None:
                    done.set_exception(
                        DeliveryError(f"Kafka did not store the record in {topic}: {err.str()}")
                    )
                else:
                    done.set_result(msg)

            with self._lock:
                self._ready.append((loop, resolve))

        try:
            self._producer.produce(
                topic,
                value=value,
                key=key,
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
                on_delivery=on_delivery,
            )
        except BufferError as exc:
            raise DeliveryError("the producer's local queue is full; the broker is not keeping up") from exc
        except KafkaException as exc:
            raise DeliveryError(f"Kafka refused the record for {topic}: {exc}") from exc
        # Polled until its report is resolved, even if the caller stops waiting (a timeout): librdkafka
        # reports every record, at the latest after message.timeout.ms.
        self._waiting[loop] = self._waiting.get(loop, 0) + 1
        self._poll_later(loop)
        if timeout_s is None:
            return await done
        return await asyncio.wait_for(asyncio.shield(done), timeout_s)

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Produce (topic, key, value) records in their order and return once all are acknowledged; a
        record Kafka did not store raises DeliveryError (once every record was reported). One future for
        the lot, not one per record: what a batch's results cost to publish is librdkafka's work."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        # Counted where librdkafka reports (under the lock: flush() may serve reports on another thread); the
        # loop is handed one callback for the lot, when the last record produced is reported.
        expected, reported = [len(records)], [0]
        failed: list[str] = []

        def finish() -> None:
            self._waiting[loop] -= expected[0]
            if done.done():
                return
            if failed:
                done.set_exception(DeliveryError(f"Kafka did not store {len(failed)} record(s): {failed[0]}"))
            else:
                done.set_result(None)

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    failed.append(f"{msg.topic() or '?'}: {err.str()}")
                reported[0] += 1
                if reported[0] == expected[0]:
                    self._ready.append((loop, finish))

        produced = 0
        try:
            for topic, key, value in records:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                produced += 1
        except BufferError as exc:
            done.cancel()  # nobody awaits the reports of what was produced
            raise DeliveryError("the producer's local queue is full; the broker is not keeping up") from exc
        except KafkaException as exc:
            done.cancel()
            raise DeliveryError(f"Kafka refused a record: {exc}") from exc
        finally:
            # What was produced is reported and polled for, whether or not the rest could be.
            self._waiting[loop] = self._waiting.get(loop, 0) + produced
            with self._lock:
                expected[0] = produced
                if produced and reported[0] == produced:  # all reported already (by a flush elsewhere)
                    self._ready.append((loop, finish))
            if produced:
                self._poll_later(loop)
        await done

    async def send_batch(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes]], *, max_in_flight: int = 50_000
    ) -> int:
        """Produce (key, value) records in their order (the idempotent producer keeps it per partition)
        and return once all are acknowledged; `max_in_flight` bounds what is queued at once."""
        batch: list[Awaitable[Message]] = []
        sent = 0
        for key, value in records:
            batch.append(self.send(topic, value, key=key))
            if len(batch) >= max_in_flight:
                await asyncio.gather(*batch)
                sent, batch = sent + len(batch), []
        await asyncio.gather(*batch)
        return sent + len(batch)

    async def flush(self, timeout_s: float = 10.0) -> int:
        left = await asyncio.to_thread(self._producer.flush, timeout_s)
        self._dispatch()  # the results flush() served on its own thread
        return int(left)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued within `timeout_s`; then drop the rest, which nobody was told is stored
        (their senders got an error or a timeout), and release the client's threads and connections."""
        try:
            left = await self.flush(timeout_s)
            if left:
                log.warning("dropping %d records Kafka never acknowledged (their callers were told so)", left)
                self._producer.purge(in_queue=True, in_flight=True)
                await self.flush(1.0)
        finally:
            self._closed = True
            await asyncio.to_thread(self._producer.close)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


def _admin(settings: KafkaSettings) -> AdminClient:
    # Short-lived utility client: failures surface through its futures, so its log stays quiet
    # (otherwise it reports reconnect attempts until garbage-collected, even after the work is done).
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})


def ensure_topics(settings: KafkaSettings, names: Iterable[str], *, timeout_s: float = 30.0) -> list[str]:
    """Create the named topics (prefixed) if missing; return the ones created. Safe to call repeatedly."""
    admin = _admin(settings)
    wanted = [settings.topic(n) for n in names]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=settings.partitions, replication_factor=settings.replication_factor)
            for t in missing
        ],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, missing, timeout_s)
    return created


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Return once every partition of `topics` has a leader: created is not yet usable."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(timeout=timeout_s).topics
        led = all(
            t in meta
            and meta[t].error is None
            and meta[t].partitions
            and all(p.leader >= 0 for p in meta[t].partitions.values())
            for t in topics
        )
        if led:
            return
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"topics {topics} have no leaders yet"))
        time.sleep(0.05)  # polling the cluster's metadata, bounded by the deadline


def delete_topics(settings: KafkaSettings, topics: Iterable[str], *, timeout_s: float = 30.0) -> None:
    """Delete the given (already prefixed) topics; missing ones are ignored."""
    admin = _admin(settings)
    names = list(topics)
    if not names:
        return
    for fut in admin.delete_topics(names, operation_timeout=timeout_s).values():
        try:
            fut.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def delete_prefixed_topics(settings: KafkaSettings, *, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic that starts with the settings' (non-empty) prefix; return their names."""
    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a topic prefix: that would be every topic")
    admin = _admin(settings)
    mine = [t for t in admin.list_topics(timeout=timeout_s).topics if t.startswith(settings.topic_prefix)]
    delete_topics(settings, mine, timeout_s=timeout_s)
    return mine


class TopicReadError(RuntimeError):
    """A topic could not be read to its end; the message says which and why."""


_SETTLING = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
)


def leadership_settling(exc: BaseException) -> bool:
    """A passing state worth asking again: a leader being elected, a new topic's leader named in metadata a
    moment before the broker acts as one, a broker briefly fenced by its controller on a loaded box."""
    return isinstance(exc, KafkaException) and (exc.args[0].retriable() or exc.args[0].code() in _SETTLING)


def watermarks(consumer: Consumer, tp: TopicPartition, *, timeout_s: float = 10.0) -> tuple[int, int]:
    """(low, high) watermark of one partition, asked again while leadership settles (up to `timeout_s`);
    anything else, or a leader still missing after `timeout_s`, raises the KafkaException."""
    for attempt in Retrying(
        retry=retry_if_exception(leadership_settling),
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(0.1),
        reraise=True,
    ):
        with attempt:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            return int(low), int(high)
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def read_to_end(
    settings: KafkaSettings, topic: str, *, timeout_s: float = 30.0, missing_ok: bool = False
) -> list[Message]:
    """Every retained record of the (unprefixed) topic, up to the end offsets seen at the call, per partition
    in log order. Joins no group and commits nothing. A missing topic is an error unless `missing_ok`."""
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
        meta = consumer.list_topics(name, timeout=10).topics.get(name)
        if meta is None or meta.error is not None:
            if missing_ok:
                return []
            raise TopicReadError(f"topic {name} does not exist on {settings.bootstrap_servers}")
        bounds = {p: watermarks(consumer, TopicPartition(name, p)) for p in meta.partitions}
        pending = {p for p, (low, high) in bounds.items() if high > low}
        consumer.assign([TopicPartition(name, p, bounds[p][0]) for p in pending])
        records: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TopicReadError(f"could not read {name} to its end within {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            if partition in pending and offset < bounds[partition][1]:
                records.append(msg)
            if offset + 1 >= bounds[partition][1]:
                pending.discard(partition)
        return records
    finally:
        consumer.close()
