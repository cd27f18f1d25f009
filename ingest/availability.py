"""Availability for storefronts and AI shopping agents (issue 16): a read API and a server-sent-events stream.

    GET /v1/availability/{sku}              -> 200 {"sku", "available", "status", "version", "as_of"}
    GET /v1/availability?sku=A&sku=B        -> 200 {"items": [...as above...], "unknown": ["B"]}  (1-100 SKUs)
    GET /v1/availability/stream[?sku=A...]  -> 200 text/event-stream, one ``event: availability`` per change

The tenant is always the bearer token's (ingest.auth): another tenant's SKU is simply not found, and a stream
carries only the token's tenant. ``available`` is what an agent may see and hold
(allocation.availability.agent_visible: the allocation's slack under ``never_cancel``, the count less the
buffer under ``mirror``) from the master count, the SKU's rule (allocation.policy.rules_for) and the sum of
its marketplace grants; ``status`` is ``in_stock``, ``limited_stock`` (at most the tenant's threshold,
allocation.thresholds; LIMITED_AT by default) or ``out_of_stock``; ``version`` is the master record's per-SKU
version; ``as_of`` is the master record's ``updated_at`` (read API) or the change's ``committed_at`` (stream).
A batch read is two SQL statements whatever the number of SKUs (and one for the tenant's threshold). A SKU
literally named ``stream`` is read with the batch form.

The stream is fed from ``stock.changed``. Each message is::

    id: <cursor>
    event: availability
    data: {"sku": "SKU-1", "available": 7, "status": "in_stock", "version": 42, "as_of": "..."}

**The cursor** is base64url (unpadded) of ``partition:next_offset`` pairs over every partition of the topic,
e.g. ``0:118,1:97,2:120,3:88``: for each partition, the offset below which every record has been dealt with
for this client — sent, superseded by a newer version of the same SKU that was sent or is still to come,
or not the client's (another tenant, a SKU outside its filter, an older version than one it got). Records
of one partition are sent in offset order (a SKU lives in one partition), and each message's cursor is
computed after taking that message from the queue: for each partition, the offset of the oldest change
still queued, else how far this stream has read it. So on ``Last-Event-ID: <cursor>`` the new stream reads
from exactly those offsets: everything at or above them was not sent on the old connection, everything
below was. A client therefore misses no change and gets no message twice, whichever gateway process it
reconnects to (a cursor ahead of this process's reader is honoured by skipping up to it). An ``id:`` line
also follows the ``: connected`` comment and any heartbeat whose position moved, so even a client that got
no message resumes from where it was; by the event-stream rules an ``id:`` without ``data:`` updates the
client's last event id and dispatches nothing. A stream without Last-Event-ID starts where this process's
reader of the topic is: the live end.

**Consumption.** One shared *tail* per gateway process: a confluent-kafka consumer assigned (no group, no
commits) to every partition from its end, started by the first stream and stopped 30 s after the last one
left (a gateway nobody streams from reads nothing). It reads batches off the event loop, skips by key the
records of tenants nobody streams, decodes the rest once, computes their availability with one pair of SQL
statements per batch, and hands each change to the matching streams without waiting for them. A resuming
client also gets a short-lived consumer, ``assign()``-ed at its cursor's offsets, that reads only the gap up
to where the tail was when the stream joined and is closed then; at most GAP_READERS gaps are read at once
(others wait their turn), so a reconnect storm does not open hundreds of consumers. Blocking calls of
confluent-kafka run on a small thread pool of this module's, never on the event loop.

**Coalescing.** A stream queues at most one change per SKU: a newer version replaces the queued one, so a
client that reads slower than changes come gets each SKU's latest state, not its history. Within one
connection a SKU is never sent at a version at or below one already sent (the processor re-emits a
change after a redelivery). A client more than MAX_PENDING SKUs behind is disconnected with a comment
saying so; its reconnect with Last-Event-ID resumes exactly.

**Limits.** MAX_STREAMS streams per process (503 beyond); 1-100 SKUs per request. A cursor older than the
topic's retention is answered 410 (read the current state, then connect without Last-Event-ID). A change
re-emitted after a processor redelivery can reach a client again across a reconnect (same ``version``; a
client keeps the highest version per SKU, as every reader of stock.changed does). Partitions added to the
topic are read after the tail restarts (no streams for 30 s, or a gateway restart). A client's disconnect is
noticed within CHECK_S. The gateway has no PROCESSOR_DEFAULT_POLICY: a SKU whose tenant set no policy is
read as ``never_cancel``, which shows the same units as ``mirror`` (a mirrored SKU holds no grants).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import psycopg
from aiohttp import web
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import TypeAdapter, ValidationError

from allocation.availability import LIMITED_AT, agent_visible, status
from allocation.policy import Key, Rule, granted_sums, rules_for
from allocation.thresholds import limited_at_for
from ingest.answers import error
from ingest.auth import tenant_of
from ingest.state import POOL, SETTINGS
from schemas import stock_changed
from schemas.base import Sku
from stocksync.kafka import watermarks
from stocksync.settings import KafkaSettings

log = logging.getLogger(__name__)

MAX_SKUS = 100
"""SKUs one request may name (read or stream filter)."""
MAX_STREAMS = 1000
"""Streams one gateway process serves at once."""
MAX_PENDING = 10_000
"""SKUs a stream may have queued before its client counts as gone (it is disconnected and may resume)."""
GAP_READERS = 4
"""Resuming streams whose gap is read at once; the others wait their turn."""
HEARTBEAT_S = 15.0
"""A comment is sent after this long without a message, so proxies keep the connection and clients know."""
CHECK_S = 1.0
"""How often an idle stream looks whether its client is still connected."""
TAIL_IDLE_S = 30.0
"""The shared reader stops this long after its last stream ended."""
POLL_S = 0.5
BATCH = 500
SEND_BATCH = 200
KAFKA_TIMEOUT_S = 5.0
GAP_STALL_S = 15.0
"""A gap read that makes no progress this long ends the stream (the client may resume)."""
DB_RETRY_S = 1.0
MAX_CURSOR_CHARS = 4096

_sku: TypeAdapter[str] = TypeAdapter(Sku)
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_CURSOR_PAIR = re.compile(r"([0-9]{1,6}):([0-9]{1,19})")
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each message on at once
}
CURSOR_HELP = (
    "Last-Event-ID must be an id this stream sent: base64url of 'partition:offset' pairs joined by ','. "
    "Reconnect without the header to start at the live end"
)
SHUTTING_DOWN = "the gateway is shutting down: reconnect with Last-Event-ID to resume where you left off"
RESUME = "reconnect with Last-Event-ID to resume"
GAP_FAILED = "the gateway could not read the changes you missed: reconnect with Last-Event-ID to retry"

P = ParamSpec("P")
T = TypeVar("T")


class Unavailable(RuntimeError):
    """Kafka cannot serve a stream now; answered 503 before the stream starts."""


# -- what is shown -------------------------------------------------------------------------------------------


def shown(
    sku: str,
    available: int,
    version: int,
    as_of: datetime,
    rule: Rule,
    granted: int,
    limited_at: int = LIMITED_AT,
) -> dict[str, Any]:
    """The availability of one SKU as the API and the stream show it (`limited_at`: the tenant's
    ``limited_stock`` threshold, allocation.thresholds)."""
    visible = agent_visible(available, policy=rule.policy, buffer=rule.buffer, granted=granted)
    return {
        "sku": sku,
        "available": visible,
        "status": status(visible, limited_at=limited_at),
        "version": version,
        "as_of": as_of.isoformat(),
    }


async def _rules_and_grants(
    conn: AsyncConnection, keys: Iterable[Key]
) -> tuple[dict[Key, Rule], dict[Key, int], dict[str, int]]:
    """The rule of each (tenant, sku), the sum of its grants (0 where none) and each tenant's
    ``limited_stock`` threshold: three statements."""
    keys = list(dict.fromkeys(keys))
    granted = await granted_sums(conn, keys)
    return await rules_for(conn, keys), granted, await limited_at_for(conn, (t for t, _ in keys))


def _invalid_skus(skus: Sequence[str]) -> web.Response | None:
    for sku in skus:
        try:
            _sku.validate_python(sku)
        except ValidationError:
            return error(
                400,
                f"invalid SKU {sku!r}: a SKU is 1 to 128 characters with no control characters",
                sku=sku,
            )
    return None


def _named_skus(request: web.Request, *, required: bool) -> list[str] | web.Response:
    """The distinct ``sku`` query parameters in their order; else the 400 answer."""
    skus = list(dict.fromkeys(request.query.getall("sku", [])))
    if required and not skus:
        return error(400, "name the SKUs to read: ?sku=A&sku=B (1 to 100); one SKU: /v1/availability/{sku}")
    if len(skus) > MAX_SKUS:
        return error(400, f"{len(skus)} SKUs named; at most {MAX_SKUS} per request: split the list")
    return _invalid_skus(skus) or skus


def _unavailable(message: str) -> web.Response:
    answer = error(503, message)
    answer.headers["Retry-After"] = "5"
    return answer


# -- read ----------------------------------------------------------------------------------------------------


async def _read(request: web.Request, tenant: str, skus: list[str]) -> list[dict[str, Any]] | web.Response:
    """The availability of those of `skus` the tenant has, or the 503 answer."""
    pool: AsyncConnectionPool = request.app[POOL]
    try:
        async with pool.connection(timeout=2.0) as conn:
            cur = await conn.execute(
                "SELECT i.sku, i.available, i.version, i.updated_at, "
                "COALESCE((SELECT sum(a.granted) FROM allocations a"
                " WHERE a.tenant = i.tenant AND a.sku = i.sku), 0) "
                "FROM inventory i WHERE i.tenant = %s AND i.sku = ANY(%s)",
                (tenant, skus),
            )
            rows = await cur.fetchall()
            rules = await rules_for(conn, [(tenant, str(row[0])) for row in rows]) if rows else {}
            limited_at = (await limited_at_for(conn, [tenant]))[tenant]
    except (PoolTimeout, psycopg.OperationalError, OSError) as exc:
        log.warning("availability read for tenant %s: master record unreachable: %s", tenant, exc)
        return _unavailable("the master record (PostgreSQL) is unreachable; retry shortly")
    return [
        shown(sku, int(available), int(version), as_of, rules[tenant, sku], int(granted), limited_at)
        for sku, available, version, as_of, granted in rows
    ]


async def read_one(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    if isinstance(tenant, web.Response):
        return tenant
    sku = request.match_info["sku"]
    invalid = _invalid_skus([sku])
    if invalid is not None:
        return invalid
    found = await _read(request, tenant, [sku])
    if isinstance(found, web.Response):
        return found
    if not found:
        return error(
            404,
            f"no SKU {sku!r} for this token's tenant: SKUs are case-sensitive; the seller records a SKU "
            "with a stock count or receipt",
            sku=sku,
        )
    return web.json_response(found[0])


async def read_many(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    if isinstance(tenant, web.Response):
        return tenant
    skus = _named_skus(request, required=True)
    if isinstance(skus, web.Response):
        return skus
    found = await _read(request, tenant, skus)
    if isinstance(found, web.Response):
        return found
    by_sku = {item["sku"]: item for item in found}
    return web.json_response(
        {"items": [by_sku[s] for s in skus if s in by_sku], "unknown": [s for s in skus if s not in by_sku]}
    )


# -- cursors -------------------------------------------------------------------------------------------------


class BadCursor(ValueError):
    """A Last-Event-ID that is no cursor; the message says what is wrong with it."""


def encode_cursor(positions: Mapping[int, int]) -> str:
    text = ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> dict[int, int]:
    """Partition -> next offset, from a cursor; BadCursor if it is none."""
    if len(raw) > MAX_CURSOR_CHARS:
        raise BadCursor(f"it is {len(raw)} characters long")
    if not _CURSOR_TEXT.fullmatch(raw):
        raise BadCursor("it has characters outside base64url (A-Z a-z 0-9 - _)")
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise BadCursor("it does not decode to text") from None
    positions: dict[int, int] = {}
    for pair in text.split(","):
        match = _CURSOR_PAIR.fullmatch(pair)
        if match is None:
            raise BadCursor(f"{pair!r} is not 'partition:offset'")
        partition, offset = int(match[1]), int(match[2])
        if partition in positions:
            raise BadCursor(f"partition {partition} appears twice")
        positions[partition] = offset
    return positions


def _cursor_problem(
    cursor: Mapping[int, int], bounds: Mapping[int, tuple[int, int]], topic: str
) -> web.Response | None:
    """The answer to a cursor the topic cannot resume (400 not from it, 410 past retention), else None."""
    for partition, offset in sorted(cursor.items()):
        if partition not in bounds:
            return error(400, f"{CURSOR_HELP}: it names partition {partition}, which {topic} does not have")
        low, high = bounds[partition]
        if offset > high:
            return error(
                400, f"{CURSOR_HELP}: partition {partition} offset {offset} is past {topic}'s end ({high})"
            )
        if offset < low:
            return error(
                410,
                f"the changes after this Last-Event-ID are no longer kept ({topic} partition {partition} now "
                f"starts at {low}): read the current state with GET /v1/availability, then connect without "
                "Last-Event-ID",
            )
    return None


# -- one stream ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One stock.changed record as a stream sends it: where it is in the topic, and its event's data."""

    tenant: str
    sku: str
    version: int
    partition: int
    offset: int
    data: str


class Stream:
    """One client's queue: at most one change per SKU, sent in offset order per partition.

    ``position(p)``: every record of partition p below it has been taken in (queued, dropped as not the
    client's or stale). While a resuming stream's gap is read, that is how far the gap reader got; after,
    how far the tail got (but not below the client's cursor, ``floor``)."""

    def __init__(self, tenant: str, skus: frozenset[str] | None, tail_positions: dict[int, int]) -> None:
        self.tenant, self.skus = tenant, skus
        self.partitions = tuple(sorted(tail_positions))
        self._tail = tail_positions  # the tail's own dict: how far it has read, updated as it reads
        self.floor: dict[int, int] = {}
        self.gapping: dict[int, int] = {}
        self._gap_end: dict[int, int] = {}
        self.pending: dict[str, Change] = {}
        self.sent: dict[str, int] = {}
        self.closed: str | None = None
        self.wake = asyncio.Event()
        self.ended = asyncio.Event()
        self._drained = asyncio.Event()

    def begin_gap(self, ranges: Mapping[int, tuple[int, int]]) -> None:
        """Partitions whose records [start, end) come from a gap reader; the tail's records from `end` wait
        in the queue until then."""
        for p, (start, end) in ranges.items():
            self.gapping[p], self._gap_end[p] = start, end

    def position(self, p: int) -> int:
        if p in self.gapping:
            return self.gapping[p]
        return max(self.floor.get(p, 0), self._tail.get(p, 0))

    def offer(self, change: Change) -> None:
        """A change from the tail."""
        if change.offset >= self.floor.get(change.partition, 0):
            self._take_in(change)

    def offer_gap(self, changes: Iterable[Change], read_to: Mapping[int, int]) -> None:
        """Changes from the gap reader, which has read each partition of `read_to` up to that offset."""
        for change in changes:
            self._take_in(change)
        for p, offset in read_to.items():
            if p not in self.gapping:
                continue
            if offset >= self._gap_end[p]:
                del self.gapping[p]
            else:
                self.gapping[p] = offset
        self.wake.set()

    def _take_in(self, change: Change) -> None:
        if self.closed is not None or change.tenant != self.tenant:
            return
        if self.skus is not None and change.sku not in self.skus:
            return
        if change.version <= self.sent.get(change.sku, 0):
            return  # a re-emitted or older change: never sent twice, never backwards
        queued = self.pending.get(change.sku)
        if queued is not None and queued.version >= change.version:
            return  # coalesced: the queued one is newer
        # The kept change's own offset stands for the SKU: a resume from below it reads it again.
        self.pending[change.sku] = change
        if len(self.pending) > MAX_PENDING:
            self.close(f"this client fell more than {MAX_PENDING} SKUs behind: {RESUME}")
        self.wake.set()

    def take(self, limit: int) -> list[tuple[Change, str]]:
        """Up to `limit` changes to send now, in order, each with the cursor that follows it."""
        if not self.pending:
            return []
        positions = {p: self.position(p) for p in self.partitions}
        queues: dict[int, list[Change]] = {}
        for change in self.pending.values():
            queues.setdefault(change.partition, []).append(change)
        for queue in queues.values():
            queue.sort(key=lambda c: c.offset)
        heads = dict.fromkeys(queues, 0)
        # A change may go once every record of its partition below it was taken in.
        ready = [(q[0].offset, p) for p, q in queues.items() if q[0].offset < positions.get(p, 0)]
        heapq.heapify(ready)
        out: list[tuple[Change, str]] = []
        while ready and len(out) < limit:
            _, p = heapq.heappop(ready)
            queue = queues[p]
            change = queue[heads[p]]
            heads[p] += 1
            del self.pending[change.sku]
            self.sent[change.sku] = change.version
            if heads[p] < len(queue) and queue[heads[p]].offset < positions[p]:
                heapq.heappush(ready, (queue[heads[p]].offset, p))
            cursor = {
                q: min(position, queues[q][heads[q]].offset)
                if q in queues and heads[q] < len(queues[q])
                else position
                for q, position in positions.items()
            }
            out.append((change, encode_cursor(cursor)))
        if len(self.pending) <= MAX_PENDING // 2:
            self._drained.set()
        return out

    def cursor(self) -> str:
        """Where a client that got everything sent so far resumes."""
        positions = {p: self.position(p) for p in self.partitions}
        for change in self.pending.values():
            if change.offset < positions[change.partition]:
                positions[change.partition] = change.offset
        return encode_cursor(positions)

    async def room(self) -> None:
        """Return once the queue is at most half full (or the stream ended): the gap reader's pace."""
        while len(self.pending) > MAX_PENDING // 2 and self.closed is None:
            self._drained.clear()
            await self._drained.wait()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.wake.set()
        self.ended.set()
        self._drained.set()


# -- Kafka ---------------------------------------------------------------------------------------------------


async def _off_loop(executor: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call on `executor`. If the caller is cancelled meanwhile, the call is still awaited
    before the cancellation goes on, so no client is closed while a thread is using it."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, lambda: fn(*args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _consumer(kafka: KafkaSettings, role: str) -> Consumer:
    """A consumer that joins no group and commits nothing (partitions are assigned at explicit offsets)."""
    return Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": kafka.group(f"availability-{role}-{uuid.uuid4().hex[:12]}"),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Never jump silently: a position the topic no longer holds is an error, not a skip.
            "auto.offset.reset": "error",
            "logger": log,
        }
    )


def _bounds(consumer: Consumer, topic: str, servers: str) -> dict[int, tuple[int, int]]:
    """Partition -> (low, high) watermark of `topic`; Unavailable if Kafka cannot say within
    KAFKA_TIMEOUT_S (a leader being elected is waited for that long)."""
    try:
        meta = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise Unavailable(
                f"the topic {topic} does not exist on {servers}: create it with `stocksync topics`"
            )
        bounds = {}
        bounds = {
            p: watermarks(consumer, TopicPartition(topic, p), timeout_s=KAFKA_TIMEOUT_S)
            for p in sorted(meta.partitions)
        }
    except KafkaException as exc:
        raise Unavailable(f"Kafka at {servers} did not answer ({exc.args[0].str()}); retry shortly") from exc
    return bounds


def _poll_batch(consumer: Consumer, limit: int, timeout_s: float) -> list[Message]:
    """Wait up to `timeout_s` for a record, then take what else is already fetched (up to `limit`)."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)]


def _where(message: Message) -> tuple[int, int] | None:
    p, o = message.partition(), message.offset()
    return None if p is None or o is None else (p, o)


def _key_tenant(message: Message) -> str:
    return (message.key() or b"").partition(b"/")[0].decode(errors="replace")


class _Broken(RuntimeError):
    """The records read can no longer be told complete (a position the topic no longer holds, a fatal
    client error, a gap that does not come)."""


def _read_position(message: Message) -> tuple[int, int] | None:
    """(partition, offset) of a record; None for a passing error event (logged); _Broken if reading can no
    longer be told complete."""
    err = message.error()
    if err is not None:
        if err.fatal() or err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            raise _Broken(err.str())
        log.warning("availability stream: %s", err.str())
        return None
    return _where(message)


async def _changes(
    pool: AsyncConnectionPool, messages: Sequence[Message], stop: asyncio.Event, who: str
) -> list[Change] | None:
    """The changes in `messages` with their availability; None if `stop` is set while PostgreSQL is away
    (then retried every DB_RETRY_S)."""
    records: list[tuple[int, int, stock_changed.StockChanged]] = []
    for message in messages:
        where = _where(message)
        if where is None:
            continue
        try:
            record = stock_changed.decode(message.value() or b"")
        except ValidationError as exc:
            log.warning(
                "%s: record at partition %d offset %d is no stock_changed, skipped: %s", who, *where, exc
            )
            continue
        if record.tenant != _key_tenant(message):
            log.warning(
                "%s: record at partition %d offset %d has another tenant than its key, skipped", who, *where
            )
            continue
        records.append((*where, record))
    if not records:
        return []
    failing = False
    while True:
        try:
            async with pool.connection(timeout=2.0) as conn:
                rules, granted, limits = await _rules_and_grants(
                    conn, ((r.tenant, r.sku) for *_, r in records)
                )
            break
        except (PoolTimeout, psycopg.OperationalError, OSError) as exc:
            if not failing:
                log.warning("%s: PostgreSQL unreachable, changes wait until it answers: %s", who, exc)
            failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DB_RETRY_S):
                    await stop.wait()
            if stop.is_set():
                return None
    if failing:
        log.info("%s: PostgreSQL answers again", who)
    out = []
    for p, o, r in records:
        key = (r.tenant, r.sku)
        data = shown(
            r.sku, r.available, r.version, r.committed_at, rules[key], granted.get(key, 0), limits[r.tenant]
        )
        out.append(Change(r.tenant, r.sku, r.version, p, o, json.dumps(data, separators=(",", ":"))))
    return out


class Tail:
    """The process's one reader of stock.changed, from the end, handing each change to the live streams."""

    def __init__(self, kafka: KafkaSettings, pool: AsyncConnectionPool, executor: ThreadPoolExecutor) -> None:
        self.kafka, self.pool, self.executor = kafka, pool, executor
        self.topic = kafka.topic(stock_changed.TOPIC)
        self.positions: dict[int, int] = {}
        self.running = False
        self._subscribers: dict[str, set[Stream]] = {}
        self._lock = asyncio.Lock()  # held while a batch is delivered: a stream joins between batches
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = await _off_loop(self.executor, _consumer, self.kafka, "tail")
        try:
            bounds = await _off_loop(
                self.executor, _bounds, consumer, self.topic, self.kafka.bootstrap_servers
            )
            await _off_loop(
                self.executor,
                consumer.assign,
                [TopicPartition(self.topic, p, high) for p, (_, high) in bounds.items()],
            )
        except BaseException:
            await _off_loop(self.executor, consumer.close)
            raise
        self.positions.update({p: high for p, (_, high) in bounds.items()})
        self.running = True
        self._task = asyncio.create_task(self._run(consumer), name="availability-tail")
        log.info(
            "availability stream: reading %s from its end (%s)", self.topic, encode_cursor(self.positions)
        )

    async def add(self, stream: Stream) -> dict[int, int]:
        """Join `stream` between two batches; the positions it joins at (it gets every change from there)."""
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                await self._lock.acquire()
        except TimeoutError:
            raise Unavailable(
                "the availability stream is held up (is PostgreSQL reachable?); retry shortly"
            ) from None
        try:
            if not self.running:
                raise Unavailable("the availability stream's reader of Kafka stopped; retry shortly")
            self._subscribers.setdefault(stream.tenant, set()).add(stream)
            return dict(self.positions)
        finally:
            self._lock.release()

    def remove(self, stream: Stream) -> None:
        streams = self._subscribers.get(stream.tenant)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._subscribers[stream.tenant]

    async def _run(self, consumer: Consumer) -> None:
        reason = SHUTTING_DOWN
        try:
            while not self._stopping.is_set():
                messages = await _off_loop(self.executor, _poll_batch, consumer, BATCH, POLL_S)
                if messages:
                    await self._deliver(messages)
        except (KafkaException, _Broken) as exc:
            log.error(
                "availability stream: reading %s failed, streams end (clients resume): %s", self.topic, exc
            )
            reason = "the gateway lost its place in stock.changed: reconnect with Last-Event-ID to resume"
        except Exception:
            log.exception(
                "availability stream: the reader of %s failed; streams end (clients resume)", self.topic
            )
            reason = "the gateway's reader of stock.changed failed: reconnect with Last-Event-ID to resume"
        finally:
            self.running = False
            for streams in list(self._subscribers.values()):
                for stream in list(streams):
                    stream.close(reason)
            await _off_loop(self.executor, consumer.close)

    async def _deliver(self, messages: list[Message]) -> None:
        async with self._lock:
            wanted: list[Message] = []
            reached: dict[int, int] = {}
            for message in messages:
                where = _read_position(message)
                if where is None:
                    continue
                reached[where[0]] = where[1] + 1
                if _key_tenant(message) in self._subscribers:
                    wanted.append(message)
            changes = (
                await _changes(self.pool, wanted, self._stopping, "availability stream") if wanted else []
            )
            if changes is None:
                return  # stopping: these positions were not delivered, and the streams are ending anyway
            for change in changes:
                for stream in tuple(self._subscribers.get(change.tenant, ())):
                    stream.offer(change)
            for p, offset in reached.items():
                if offset > self.positions.get(p, 0):
                    self.positions[p] = offset

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.shield(self._task)


class GapReader:
    """A short-lived consumer that reads a resuming stream's records between its cursor and the tail."""

    def __init__(self, hub: Hub, consumer: Consumer) -> None:
        self.hub, self._consumer = hub, consumer
        self.topic = hub.kafka.topic(stock_changed.TOPIC)
        self._closed = False

    @classmethod
    async def open(cls, hub: Hub) -> GapReader:
        """A reader holding one of the hub's GAP_READERS places (waits for one) until it is closed."""
        await hub.gap_readers.acquire()
        try:
            return cls(hub, await _off_loop(hub.executor, _consumer, hub.kafka, "gap"))
        except BaseException:
            hub.gap_readers.release()
            raise

    async def bounds(self) -> dict[int, tuple[int, int]]:
        return await _off_loop(
            self.hub.executor, _bounds, self._consumer, self.topic, self.hub.kafka.bootstrap_servers
        )

    async def read(self, stream: Stream, ranges: Mapping[int, tuple[int, int]]) -> None:
        """Feed `stream` the records of each partition's [start, end); end the stream if that fails. The
        consumer is closed (and its place given up) as soon as the gap is read."""
        try:
            await self._catch_up(stream, ranges)
        except (KafkaException, _Broken) as exc:
            log.warning("availability stream: reading a resuming client's gap failed: %s", exc)
            stream.close(GAP_FAILED)
        except Exception:
            log.exception("availability stream: reading a resuming client's gap failed")
            stream.close(GAP_FAILED)
        finally:
            await self.close()

    async def _catch_up(self, stream: Stream, ranges: Mapping[int, tuple[int, int]]) -> None:
        executor = self.hub.executor
        await _off_loop(
            executor,
            self._consumer.assign,
            [TopicPartition(self.topic, p, start) for p, (start, _) in ranges.items()],
        )
        progress = {p: start for p, (start, _) in ranges.items()}
        still = set(ranges)
        quiet_since = time.monotonic()
        while still and stream.closed is None:
            await stream.room()
            messages = await _off_loop(executor, _poll_batch, self._consumer, BATCH, POLL_S)
            mine: list[Message] = []
            reached: dict[int, int] = {}
            for message in messages:
                where = _read_position(message)
                if where is None or where[0] not in still or where[1] < progress[where[0]]:
                    continue
                p, offset = where
                if offset >= ranges[p][1]:
                    continue  # the tail's part
                progress[p] = reached[p] = offset + 1
                if progress[p] >= ranges[p][1]:
                    still.discard(p)
                if _key_tenant(message) == stream.tenant:
                    mine.append(message)
            if not reached:
                if time.monotonic() - quiet_since > GAP_STALL_S:
                    raise _Broken(f"no record of the gap came within {GAP_STALL_S:.0f} s")
                continue
            quiet_since = time.monotonic()
            changes = await _changes(self.hub.pool, mine, stream.ended, "availability gap") if mine else []
            if changes is None:
                return
            stream.offer_gap(changes, reached)

    async def close(self) -> None:
        """Close the consumer and give the place up (once; the gap's end or the stream's, whichever first)."""
        if not self._closed:
            self._closed = True
            try:
                await _off_loop(self.hub.executor, self._consumer.close)
            finally:
                self.hub.gap_readers.release()


# -- the streams of a process --------------------------------------------------------------------------------


class Hub:
    """The process's streams and its one tail (started by the first stream, stopped when idle)."""

    def __init__(self, kafka: KafkaSettings, pool: AsyncConnectionPool) -> None:
        self.kafka, self.pool = kafka, pool
        self.streams: set[Stream] = set()
        self.executor = ThreadPoolExecutor(max_workers=GAP_READERS + 2, thread_name_prefix="availability")
        self.gap_readers = asyncio.Semaphore(GAP_READERS)
        self.closing = False
        self.tail: Tail | None = None
        self._lock = asyncio.Lock()
        self._users = 0
        self._idle: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Tail]:
        """The running tail (started if need be) for as long as the block runs; Unavailable if Kafka
        cannot be read."""
        async with self._lock:
            if self.closing:
                raise Unavailable(SHUTTING_DOWN)
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            if self.tail is None or not self.tail.running:
                if self.tail is not None:
                    await self.tail.stop()
                self.tail = None
                started = Tail(self.kafka, self.pool, self.executor)
                await started.start()
                self.tail = started
            tail = self.tail
            self._users += 1
        try:
            yield tail
        finally:
            self._users -= 1
            if self._users == 0 and not self.closing:
                self._idle = asyncio.create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        await asyncio.sleep(TAIL_IDLE_S)  # how long an unused tail is kept, not a synchronisation
        async with self._lock:
            if self._users == 0 and self.tail is not None:
                await self.tail.stop()
                self.tail = None
                log.info("availability stream: no client for %.0f s, stopped reading Kafka", TAIL_IDLE_S)

    def end_streams(self) -> None:
        """App shutdown, first step: every stream ends now (its client may resume elsewhere)."""
        self.closing = True
        for stream in list(self.streams):
            stream.close(SHUTTING_DOWN)

    async def stop(self) -> None:
        """App shutdown, last step (streams have ended): the tail and the threads stop."""
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
            await asyncio.wait([self._idle])
        async with self._lock:
            if self.tail is not None:
                await self.tail.stop()
                self.tail = None
        await asyncio.to_thread(self.executor.shutdown)


HUB = web.AppKey("availability_hub", Hub)


def _event(change: Change, cursor: str) -> str:
    return f"id: {cursor}\nevent: availability\ndata: {change.data}\n\n"


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pump(request: web.Request, response: web.StreamResponse, stream: Stream) -> None:
    """Write the stream's changes until it ends or the client leaves; heartbeats while quiet."""
    last_id = stream.cursor()
    await response.write(f": connected\nid: {last_id}\n\n".encode())
    last_write = time.monotonic()
    while stream.closed is None:
        stream.wake.clear()
        batch = stream.take(SEND_BATCH)
        if batch:
            await response.write("".join(_event(change, cursor) for change, cursor in batch).encode())
            last_id, last_write = batch[-1][1], time.monotonic()
            continue
        if _gone(request):
            return
        quiet = time.monotonic() - last_write
        if quiet >= HEARTBEAT_S:
            cursor = stream.cursor()
            moved = f"id: {cursor}\n" if cursor != last_id else ""
            await response.write(f": heartbeat\n{moved}\n".encode())
            last_id, last_write = cursor, time.monotonic()
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(CHECK_S, HEARTBEAT_S - quiet)):
                await stream.wake.wait()
    await response.write(f": {stream.closed}\n\n".encode())


async def stream_changes(request: web.Request) -> web.StreamResponse:
    tenant = tenant_of(request)
    if isinstance(tenant, web.Response):
        return tenant
    skus = _named_skus(request, required=False)
    if isinstance(skus, web.Response):
        return skus
    cursor: dict[int, int] | None = None
    raw = request.headers.get("Last-Event-ID", "").strip()
    if raw:
        try:
            cursor = decode_cursor(raw)
        except BadCursor as exc:
            return error(400, f"{CURSOR_HELP}: {exc}")
    hub = request.app[HUB]
    if len(hub.streams) >= MAX_STREAMS:
        return _unavailable(f"this gateway serves {MAX_STREAMS} streams already; retry shortly")
    try:
        async with hub.lease() as tail:
            stream = Stream(tenant, frozenset(skus) or None, tail.positions)
            if cursor is None:
                return await _serve(request, hub, tail, stream)
            return await _resume(request, hub, tail, stream, cursor)
    except Unavailable as exc:
        return _unavailable(str(exc))


async def _resume(
    request: web.Request, hub: Hub, tail: Tail, stream: Stream, cursor: dict[int, int]
) -> web.StreamResponse:
    reader = await GapReader.open(hub)
    try:
        bounds = await reader.bounds()
        problem = _cursor_problem(cursor, bounds, tail.topic)
        if problem is not None:
            return problem
        return await _serve(request, hub, tail, stream, reader=reader, cursor=cursor, bounds=bounds)
    finally:
        await reader.close()


async def _serve(
    request: web.Request,
    hub: Hub,
    tail: Tail,
    stream: Stream,
    *,
    reader: GapReader | None = None,
    cursor: Mapping[int, int] | None = None,
    bounds: Mapping[int, tuple[int, int]] | None = None,
) -> web.StreamResponse:
    joined_at = await tail.add(stream)
    hub.streams.add(stream)
    gap: asyncio.Task[None] | None = None
    try:
        ranges: dict[int, tuple[int, int]] = {}
        if reader is not None and cursor is not None and bounds is not None:
            for p, joined in joined_at.items():
                start = cursor.get(p, bounds.get(p, (0, 0))[0])  # a partition added since: from its start
                if start < joined:
                    ranges[p] = (start, joined)
                else:
                    stream.floor[p] = start
            stream.begin_gap(ranges)
        if reader is not None and not ranges:
            await reader.close()  # nothing to catch up on: its place goes to the next resuming client
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if reader is not None and ranges:
            gap = asyncio.create_task(reader.read(stream, ranges), name="availability-gap")
        with contextlib.suppress(ConnectionError):
            await _pump(request, response, stream)
        return response
    finally:
        stream.close("ended")
        tail.remove(stream)
        hub.streams.discard(stream)
        if gap is not None:
            await asyncio.wait([gap])  # it sees the stream ended at its next step and closes its consumer


def add_routes(app: web.Application) -> None:
    """The read API and the stream, and the stream's shared reader for the app's lifetime."""

    async def hub(app: web.Application) -> AsyncIterator[None]:
        app[HUB] = served = Hub(app[SETTINGS].kafka, app[POOL])
        yield
        await served.stop()

    async def end_streams(app: web.Application) -> None:
        if HUB in app:
            app[HUB].end_streams()

    app.cleanup_ctx.append(hub)
    app.on_shutdown.append(end_streams)
    # The stream first: "stream" would otherwise be taken for a SKU.
    app.router.add_get("/v1/availability/stream", stream_changes)
    app.router.add_get("/v1/availability/{sku}", read_one)
    app.router.add_get("/v1/availability", read_many)
