"""Signed outbound webhooks of availability changes to a tenant's subscribers (issue 16): headless storefronts
and AI shopping agents hear of every change without polling.

**What it does.** ``python -m fanout --subscribers`` runs one consumer group, ``fanout.subscribers`` (prefixed
like every group), on ``stock.changed``. A tenant's subscribers are the rows of ``agent_subscribers``
(``stocksync subscribers add|list|remove``): a URL, a secret, and every SKU of the tenant or a list of SKUs.
For every change of such a SKU each subscriber that asked for it is POSTed what agents may see::

    {"tenant": "acme", "sku": "TSHIRT-M", "available": 7, "status": "in_stock", "version": 42,
     "as_of": "2026-05-01T09:30:12.345678+00:00"}

``available`` is ``allocation.availability.agent_visible`` of the master count: under ``never_cancel`` the
units no marketplace was granted (``available - buffer - sum(allocations.granted)``), under ``mirror`` the
count less the buffer; ``status`` is ``allocation.availability.status`` of it (``out_of_stock``,
``limited_stock`` at or below the tenant's threshold, allocation.thresholds, else ``in_stock``). The policy
and buffer are the SKU's or tenant's row of ``allocation_policies`` (``allocation.policy.rules_for``), else
the record's own policy (the processor's default when it applied the change); the grants are read as they
stand when the batch is handled. That is the rule the processor holds a reservation by, so a subscriber is
told what an agent could reserve. The rules and grants of a batch's SKUs are read in three statements at most,
whatever its size. ``version`` is the master record's version of the SKU and ``as_of`` its commit time.

**Signature.** Each request carries ``Content-Type: application/json``, ``X-Stocksync-Timestamp`` (Unix
seconds when the attempt was made), ``X-Stocksync-Signature: sha256=<hex>``, the HMAC-SHA256 with the
subscriber's secret (its UTF-8 bytes) as key of ``<timestamp>.<body>`` (the timestamp's decimal digits, a
full stop, the raw body bytes), and ``X-Stocksync-Delivery``, an id derived from the subscriber, the SKU
and the version: the same on every retry of a delivery and on a resend after a restart. A receiver:

1. reads the raw body bytes as received (before parsing JSON: a re-serialised body does not verify);
2. computes ``hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()`` and
   compares ``"sha256=" + that`` with the header using a constant-time comparison (``hmac.compare_digest``);
3. rejects a timestamp more than 5 minutes from its own clock (a replayed request): every attempt is signed
   afresh, so a genuine retry is never stale;
4. keeps, per SKU, the highest ``version`` it accepted and ignores a body whose version is not higher (and
   may drop a repeated ``X-Stocksync-Delivery``).

**Delivery guarantees.**

- *At least once*: a batch's offsets are stored (and then committed) only once every subscriber's delivery
  of it was answered 2xx or written to the dead-letter topic, and batches are acknowledged in order. After a
  crash, what was not committed is delivered again.
- *Coalesced*: per subscriber and SKU at most one request is in flight and one change waits, the newest: a
  slow subscriber gets the latest version, not every step.
- *Ordered per SKU by version*: a version at or below one already delivered (or dead-lettered) to that
  subscriber is never sent. The versions delivered are kept in memory only: after a restart (or when a
  partition moves to another worker) what was consumed but not committed is sent again, coalesced, so the
  latest version of a SKU may reach a subscriber once more (with the same ``X-Stocksync-Delivery``). There
  is no order across SKUs.
- *Independent subscribers*: each has its own outbox of at most ``FANOUT_SUBSCRIBER_PER_SUBSCRIBER`` SKUs in
  flight, and at most ``FANOUT_SUBSCRIBER_CONCURRENCY`` requests are in flight in all; the group goes on
  consuming while a subscriber retries, so a slow or failing one delays only its own deliveries (and the
  committed offsets).

**Retries.** A timeout, a connection error, 408, 429 and 5xx are retried with exponential backoff and full
jitter (before attempt n+1 a wait drawn from [0, min(cap, base x 2^n)]: by default 5 attempts within about a
minute); ``Retry-After`` (seconds or an HTTP date) on 429 and 503 is waited instead, up to a cap. Any other
answer outside 2xx is not retried (redirects are not followed: register the final URL). After the last
failure the delivery goes to ``fanout.dlq`` as an ``UpdateDeadLettered`` with ``channel`` ``"subscriber"``,
``connection_id`` the subscriber's id, ``quantity`` the available count sent, ``original`` the body,
``original_topic`` ``stock.changed``, the attempts, the last HTTP status and the reason; the subscriber's
next change of that SKU goes out as usual.

**Limits.** Subscribers are re-read every ``FANOUT_SUBSCRIBER_REFRESH_S`` (30 s): a new one hears of the
changes consumed after that (the current state is not sent to it), a removed or disabled one is sent
nothing more and what was waiting for it is dropped. A subscriber that stays down holds the group's
committed offsets back for as long as its retries take (per SKU about a minute, ``PER_SUBSCRIBER`` SKUs at a
time); past ``FANOUT_SUBSCRIBER_MAX_UNSETTLED`` batches not yet acknowledged the worker stops consuming
(every subscriber then waits) until they settle. While PostgreSQL is away the worker consumes nothing new and
retries. A subscriber's dead letter is there to be read (``stocksync dlq list``); the SKU's next change brings
the subscriber up to date, so ``stocksync dlq replay`` leaves a subscriber's letters alone. Secrets are
kept in the table as they are (they sign every request); the command line shows each once.

Metrics on ``FANOUT_PORT``: ``fanout_subscriber_deliveries_total{outcome}``,
``fanout_subscriber_attempts_total{result}``, ``fanout_subscriber_delivery_lag_seconds`` (commit of the
change in the master record to the subscriber's 2xx), ``fanout_subscriber_dead_letters_total``,
``fanout_subscriber_pending_changes``, ``fanout_subscribers``; and the group's ``consumer_lag_records`` and
``fanout_dlq_depth_records`` as the channel workers report them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from allocation.availability import LIMITED_AT, agent_visible, status
from allocation.policy import Rule, granted_sums, rules_for
from allocation.rules import Policy
from allocation.thresholds import limited_at_for
from fanout.dlq import SUBSCRIBER
from fanout.metrics import FanoutMetrics
from fanout.ops import serve_ops
from fanout.settings import FanoutSettings
from schemas import fanout_dlq, stock_changed
from schemas.base import Sku, Tenant, partition_key
from schemas.fanout_dlq import UpdateDeadLettered
from schemas.stock_changed import StockChanged
from stocksync import health, logs
from stocksync.kafka import AsyncProducer, DeliveryError, consumer_config, producer_config
from stocksync.retry import Outcome, RetryPolicy

log = logging.getLogger(__name__)

GROUP = "fanout.subscribers"
"""The consumer group (before the deployment's prefix), named like the channel workers' groups."""
CHANNEL = SUBSCRIBER  # the dead letters' channel: fanout.dlq.replay leaves them alone
"""The ``channel`` of a subscriber's dead letter on ``fanout.dlq``."""
SIGNATURE_TOLERANCE_S = 300
"""How far from its clock a receiver should accept ``X-Stocksync-Timestamp`` (documented, not enforced)."""
MAX_URL_LENGTH = 2048

Key = tuple[str, str]
"""(tenant, sku)"""


class SubscriberSettings(BaseSettings):
    """``FANOUT_SUBSCRIBER_*``, beside the fan-out's own settings (Kafka, PostgreSQL, ports, batching)."""

    model_config = SettingsConfigDict(env_prefix="FANOUT_SUBSCRIBER_", extra="ignore")

    attempts: int = Field(5, ge=1, description="Most tries of one delivery before the dead-letter topic.")
    deadline_s: float = Field(
        60.0, gt=0, description="No new attempt of a delivery starts once a failed one ended past this."
    )
    backoff_base_s: float = Field(
        2.0, gt=0, description="Before attempt n+1 a wait drawn from [0, min(cap, base x 2^n)] seconds."
    )
    backoff_cap_s: float = Field(30.0, gt=0, description="The longest backoff between two attempts.")
    retry_after_cap_s: float = Field(
        30.0, ge=0, description="The longest Retry-After (on 429 and 503) that is waited as asked."
    )
    timeout_s: float = Field(10.0, gt=0, description="One request, connection to the end of the answer.")
    refresh_s: float = Field(30.0, gt=0, description="How often the subscribers are re-read from the table.")
    per_subscriber: int = Field(4, ge=1, description="SKUs in flight at once to one subscriber.")
    concurrency: int = Field(64, ge=1, description="Requests in flight at once, to every subscriber.")
    max_unsettled: int = Field(
        10_000, ge=1, description="Batches consumed and not yet acknowledged before consuming pauses."
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="On stop, how long deliveries under way may finish before they are left."
    )
    fanout: FanoutSettings = Field(default_factory=FanoutSettings)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            deadline_s=self.deadline_s,
            max_attempts=self.attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            retry_after_cap_s=self.retry_after_cap_s,
        )


# ---------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Subscriber:
    """A row of ``agent_subscribers``."""

    id: str
    tenant: str
    url: str
    secret: str = field(repr=False)
    skus: frozenset[str] | None = None  # None: every SKU of the tenant
    enabled: bool = True
    created_at: datetime | None = None

    def wants(self, tenant: str, sku: str) -> bool:
        return self.enabled and tenant == self.tenant and (self.skus is None or sku in self.skus)


_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)
_SKU: TypeAdapter[str] = TypeAdapter(Sku)


def check_url(url: str) -> str:
    """`url` if a subscriber can be sent to it (http or https, with a host); ValueError saying why not."""
    url = url.strip()
    if not url:
        raise ValueError("the URL is empty; give the subscriber's full http(s) URL")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("the URL holds spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if port == 0:
        raise ValueError(f"{url!r} names port 0")
    return url


def check_tenant(tenant: str) -> str:
    try:
        return _TENANT.validate_python(tenant)
    except ValidationError as exc:
        raise ValueError(
            f"{tenant!r} is not a tenant id: lowercase letters, digits, '_' and '-', up to 64, "
            "starting with a letter or digit"
        ) from exc


def check_sku(sku: str) -> str:
    try:
        return _SKU.validate_python(sku)
    except ValidationError as exc:
        raise ValueError(f"{sku!r} is not a SKU: 1 to 128 characters, no control characters") from exc


def new_id() -> str:
    return f"sub_{secrets.token_hex(8)}"


def new_secret() -> str:
    return f"sswh_{secrets.token_urlsafe(32)}"


def _subscriber(row: Sequence[Any]) -> Subscriber:
    sid, tenant, url, secret, skus, enabled, created_at = row
    return Subscriber(
        id=str(sid),
        tenant=str(tenant),
        url=str(url),
        secret=str(secret),
        skus=None if skus is None else frozenset(str(s) for s in skus),
        enabled=bool(enabled),
        created_at=created_at,
    )


_COLUMNS = "id, tenant, url, secret, skus, enabled, created_at"


def add_subscriber(database_url: str, tenant: str, url: str, skus: Iterable[str] | None = None) -> Subscriber:
    """Store a new subscriber with a fresh id and secret (checked first: ValueError says what is wrong)."""
    tenant, url = check_tenant(tenant), check_url(url)
    wanted = None if skus is None else sorted({check_sku(s) for s in skus}) or None
    subscriber = Subscriber(
        id=new_id(),
        tenant=tenant,
        url=url,
        secret=new_secret(),
        skus=None if wanted is None else frozenset(wanted),
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"INSERT INTO agent_subscribers (id, tenant, url, secret, skus) VALUES (%s, %s, %s, %s, %s) "
            f"RETURNING {_COLUMNS}",
            (subscriber.id, tenant, url, subscriber.secret, wanted),
        ).fetchone()
    assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
    return _subscriber(row)


def list_subscribers(database_url: str, tenant: str | None = None) -> list[Subscriber]:
    """Every subscriber (of `tenant`), oldest first; the secrets are in the objects, never printed."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM agent_subscribers WHERE %s::text IS NULL OR tenant = %s "
            "ORDER BY tenant, created_at, id",
            (tenant, tenant),
        ).fetchall()
    return [_subscriber(r) for r in rows]


def remove_subscriber(database_url: str, subscriber_id: str) -> bool:
    """Delete a subscriber; False if there was none with that id."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("DELETE FROM agent_subscribers WHERE id = %s", (subscriber_id,)).rowcount > 0


async def load_subscribers(conn: AsyncConnection) -> list[Subscriber]:
    """The enabled subscribers, for the worker."""
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM agent_subscribers WHERE enabled ORDER BY id")
    return [_subscriber(r) for r in await cur.fetchall()]


# ---------------------------------------------------------------------------------------------------------
# What is sent


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256, keyed by `secret`, of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def delivery_id(subscriber_id: str, tenant: str, sku: str, version: int) -> str:
    """The same for one change to one subscriber, on every attempt and after a restart."""
    digest = hashlib.sha256(f"{subscriber_id}\n{tenant}\n{sku}\n{version}".encode()).hexdigest()
    return f"dlv_{digest[:32]}"


def where(url: str) -> str:
    """scheme://host[:port] of `url`, for logs and errors (its path or query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Change:
    """The newest change of one SKU in a batch, as agents may see it: what every subscriber of it is sent."""

    tenant: str
    sku: str
    version: int
    available: int
    committed_at: datetime
    payload: dict[str, Any]
    body: bytes

    @property
    def key(self) -> Key:
        return (self.tenant, self.sku)


def change_of(record: StockChanged, visible: int, limited_at: int = LIMITED_AT) -> Change:
    payload: dict[str, Any] = {
        "tenant": record.tenant,
        "sku": record.sku,
        "available": visible,
        "status": status(visible, limited_at=limited_at),
        "version": record.version,
        "as_of": record.committed_at.isoformat(),
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Change(record.tenant, record.sku, record.version, visible, record.committed_at, payload, body)


async def agent_counts(conn: AsyncConnection, records: Sequence[StockChanged]) -> dict[Key, tuple[int, int]]:
    """What agents may see of each record's SKU (allocation.availability.agent_visible) and its tenant's
    ``limited_stock`` threshold (allocation.thresholds), set-based: the rules of every SKU (one statement per
    policy the records carry, which stands for the processor's default where no row exists), the sum of each
    SKU's grants and the tenants' thresholds (one statement each)."""
    by_policy: dict[Policy, list[Key]] = {}
    for r in records:
        by_policy.setdefault(r.policy, []).append((r.tenant, r.sku))
    rules: dict[Key, Rule] = {}
    for policy, keys in by_policy.items():
        rules.update(await rules_for(conn, keys, default=policy))
    keys = list(dict.fromkeys((r.tenant, r.sku) for r in records))
    granted = await granted_sums(conn, keys)
    limits = await limited_at_for(conn, (t for t, _ in keys))
    out: dict[Key, tuple[int, int]] = {}
    for r in records:
        key = (r.tenant, r.sku)
        rule = rules[key]
        visible = agent_visible(
            r.available, policy=rule.policy, buffer=rule.buffer, granted=granted.get(key, 0)
        )
        out[key] = (visible, limits[r.tenant])
    return out


# ---------------------------------------------------------------------------------------------------------
# Answers


class WebhookError(Exception):
    """A subscriber's answer outside 2xx; `retryable` and `retry_after_s` as stocksync.retry reads them."""

    def __init__(self, message: str, *, status: int, retryable: bool, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status, self.retryable, self.retry_after_s = status, retryable, retry_after_s


RETRIED = frozenset({408, 429})
"""Besides 5xx: the answers worth another attempt."""


def retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if absent or unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def refusal(subscriber: Subscriber, status: int, text: str, retry_after_header: str | None) -> WebhookError:
    """The error for an answer outside 2xx: 408, 429 and 5xx are retried (429 and 503 after their
    Retry-After); any other (redirects included) is not."""
    retryable = status in RETRIED or status >= 500
    asked = retry_after(retry_after_header, now=datetime.now(UTC)) if status in (429, 503) else None
    hint = " (redirects are not followed: register the final URL)" if 300 <= status < 400 else ""
    detail = f": {text.strip()[:200]}" if text.strip() else ""
    return WebhookError(
        f"subscriber {subscriber.id} at {where(subscriber.url)} answered HTTP {status}{hint}{detail}",
        status=status,
        retryable=retryable,
        retry_after_s=asked,
    )


def attempt_result(exc: BaseException | None) -> str:
    """The `result` label of one attempt (SubscriberMetrics.RESULTS)."""
    if exc is None:
        return "ok"
    if isinstance(exc, WebhookError):
        if exc.status == 429:
            return "rate_limited"
        if exc.status == 408:
            return "timeout"
        return "server_error" if exc.status >= 500 else "client_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "network"


# ---------------------------------------------------------------------------------------------------------
# Metrics


class SubscriberMetrics:
    """Labels: fixed outcome and result sets (no subscriber ids: tenants make them)."""

    OUTCOMES = ("delivered", "dead_lettered", "coalesced", "stale", "dropped")
    RESULTS = ("ok", "rate_limited", "server_error", "client_error", "timeout", "network")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "fanout_subscriber_deliveries_total",
            "Availability changes per subscriber by outcome: delivered (2xx), dead_lettered (retries "
            "exhausted or refused), coalesced (a newer version of the SKU replaced it while it waited), "
            "stale (a version at or below one already sent), dropped (the subscriber was removed).",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "fanout_subscriber_attempts_total",
            "HTTP requests to subscribers by result.",
            ["result"],
            registry=registry,
        )
        self.lag = Histogram(
            "fanout_subscriber_delivery_lag_seconds",
            "From the change's commit in the master record to the subscriber's 2xx.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=registry,
        )
        self.dead_letters = Counter(
            "fanout_subscriber_dead_letters_total",
            "Subscriber deliveries written to the fanout.dlq topic.",
            registry=registry,
        )
        self.pending = Gauge(
            "fanout_subscriber_pending_changes",
            "Changes waiting for or in delivery to a subscriber, over every subscriber.",
            registry=registry,
        )
        self.subscribers = Gauge(
            "fanout_subscribers", "Enabled subscribers this worker sends to.", registry=registry
        )
        for outcome in self.OUTCOMES:
            self.deliveries.labels(outcome)
        for result in self.RESULTS:
            self.attempts.labels(result)


# ---------------------------------------------------------------------------------------------------------
# The courier: HTTP under the retry policy, and the dead-letter topic


class Courier:
    """Sends one change to one subscriber under the retry policy; writes a dead letter when that failed."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: RetryPolicy,
        metrics: SubscriberMetrics,
        producer: AsyncProducer,
        dlq_topic: str,
        *,
        timeout_s: float,
        concurrency: int,
    ) -> None:
        self.session, self.policy, self.metrics = session, policy, metrics
        self.producer, self.dlq_topic = producer, dlq_topic
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.gate = asyncio.Semaphore(concurrency)

    async def _post(self, subscriber: Subscriber, change: Change, delivery: str) -> None:
        async with self.gate:
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Stocksync-Timestamp": str(timestamp),
                "X-Stocksync-Signature": signature(subscriber.secret, timestamp, change.body),
                "X-Stocksync-Delivery": delivery,
            }
            error: BaseException | None = None
            try:
                async with self.session.post(
                    subscriber.url,
                    data=change.body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self.timeout,
                ) as resp:
                    if not 200 <= resp.status < 300:
                        text = (await resp.content.read(300)).decode(errors="replace")
                        error = refusal(subscriber, resp.status, text, resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = exc
            self.metrics.attempts.labels(attempt_result(error)).inc()
            if error is not None:
                raise error

    async def deliver(self, subscriber: Subscriber, change: Change) -> Outcome:
        """POST `change` until a 2xx, a refusal that is not retried, or the policy gives up."""
        delivery = delivery_id(subscriber.id, change.tenant, change.sku, change.version)
        return await self.policy.attempt(lambda: self._post(subscriber, change, delivery))

    async def dead_letter(self, subscriber: Subscriber, change: Change, outcome: Outcome) -> None:
        """Write the failed delivery to the dead-letter topic; return once Kafka acknowledged it (retried
        meanwhile: until then the batch it came from is not acknowledged either)."""
        exc = outcome.error
        letter = UpdateDeadLettered(
            connection_id=subscriber.id,
            channel=CHANNEL,
            tenant=change.tenant,
            sku=change.sku,
            quantity=change.available,
            version=change.version,
            original_topic=stock_changed.TOPIC,
            original=change.payload,
            attempts=max(1, outcome.attempts),
            status=exc.status if isinstance(exc, WebhookError) else None,
            last_error=f"{type(exc).__name__}: {exc}" if exc is not None else "unknown",
            failed_at=datetime.now(UTC),
        )
        value, key = letter.model_dump_json().encode(), partition_key(change.tenant, change.sku)
        wait = 0.5
        while True:
            try:
                await self.producer.send(self.dlq_topic, value, key=key, timeout_s=30.0)
                break
            except (DeliveryError, TimeoutError) as err:
                log.warning("could not write a dead letter to %s (%s); trying again", self.dlq_topic, err)
                await asyncio.sleep(wait)  # backoff before the next try, not a synchronisation
                wait = min(wait * 2, 10.0)
        self.metrics.dead_letters.inc()
        log.error(
            "dead-lettered %s/%s version %d for subscriber %s after %d attempts: %s",
            change.tenant,
            change.sku,
            change.version,
            subscriber.id,
            letter.attempts,
            letter.last_error,
        )


# ---------------------------------------------------------------------------------------------------------
# Bookkeeping: batches (tickets) and per-subscriber outboxes


@dataclass(eq=False)
class Ticket:
    """One consumed batch: the last offset of each (topic, partition) it held, and how many subscriber
    deliveries of it are not yet settled (answered 2xx, dead-lettered, or owed to no one any more)."""

    offsets: dict[tuple[str, int], int]
    waiting: int = 0
    sealed: bool = False  # every delivery of the batch was handed out

    @property
    def settled(self) -> bool:
        return self.sealed and self.waiting == 0


@dataclass(eq=False)
class Item:
    """A change owed to one subscriber, and the batches that wait for it."""

    change: Change
    tickets: list[Ticket] = field(default_factory=list)

    def owe(self, ticket: Ticket) -> None:
        self.tickets.append(ticket)
        ticket.waiting += 1


class Sender(Protocol):
    """What an outbox needs of a courier (Courier; a fake one in unit tests)."""

    async def deliver(self, subscriber: Subscriber, change: Change) -> Outcome: ...

    async def dead_letter(self, subscriber: Subscriber, change: Change, outcome: Outcome) -> None: ...


class Outbox:
    """One subscriber's deliveries: per SKU at most one in flight and one waiting (the newest), at most
    `limit` SKUs in flight; never a version at or below one already settled for that SKU."""

    def __init__(
        self,
        subscriber: Subscriber,
        courier: Sender,
        metrics: SubscriberMetrics,
        *,
        limit: int,
        on_settled: Callable[[], None] = lambda: None,
    ) -> None:
        self.subscriber, self.courier, self.metrics, self.limit = subscriber, courier, metrics, limit
        self.on_settled = on_settled
        self.waiting: dict[Key, Item] = {}
        self.sending: dict[Key, Item] = {}
        self.floor: dict[Key, int] = {}  # the highest version delivered or dead-lettered, per SKU
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def backlog(self) -> int:
        return len(self.waiting) + len(self.sending)

    def offer(self, change: Change, ticket: Ticket, *, superseded: int = 0) -> None:
        """Owe `change` to this subscriber on behalf of `ticket` (its batch); `superseded`: older changes of
        the SKU the batch held, which the subscriber will not get. Call pump() after offering a batch."""
        if superseded:
            self.metrics.deliveries.labels("coalesced").inc(superseded)
        key = change.key
        if change.version <= self.floor.get(key, 0):
            self.metrics.deliveries.labels("stale").inc()
            return
        queued = self.waiting.get(key)
        if queued is not None:
            if change.version > queued.change.version:
                queued.change = change
                self.metrics.deliveries.labels("coalesced").inc()
            else:
                self.metrics.deliveries.labels("stale").inc()
            queued.owe(ticket)  # the newer change it now carries settles this batch too
            return
        current = self.sending.get(key)
        if current is not None and change.version <= current.change.version:
            self.metrics.deliveries.labels("stale").inc()
            current.owe(ticket)
            return
        item = Item(change)
        item.owe(ticket)
        self.waiting[key] = item

    def pump(self) -> None:
        """Start the waiting changes whose SKU has none in flight, up to `limit` in flight."""
        if self.closed:
            return
        free = self.limit - len(self.sending)
        if free <= 0:
            return
        ready = []
        for key in self.waiting:  # at most `limit` of them wait behind one in flight
            if key not in self.sending:
                ready.append(key)
                if len(ready) == free:
                    break
        for key in ready:
            item = self.waiting.pop(key)
            self.sending[key] = item
            task = asyncio.create_task(self._send(key, item), name=f"subscriber {self.subscriber.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, key: Key, item: Item) -> None:
        subscriber, change = self.subscriber, item.change
        with logs.bound(tenant=change.tenant, sku=change.sku, connection=subscriber.id):
            try:
                outcome = await self.courier.deliver(subscriber, change)
            except asyncio.CancelledError:
                raise  # stopping (left unsettled: redelivered) or removed (close() settled it)
            except Exception as exc:  # a bug: dead-letter it rather than stall the batch behind it
                log.exception("delivery to subscriber %s failed unexpectedly", subscriber.id)
                outcome = Outcome(1, exc)
            if outcome.ok:
                self.metrics.deliveries.labels("delivered").inc()
                lag = (datetime.now(UTC) - change.committed_at).total_seconds()
                self.metrics.lag.observe(max(0.0, lag))
            else:
                await self.courier.dead_letter(subscriber, change, outcome)
                self.metrics.deliveries.labels("dead_lettered").inc()
        self.floor[key] = max(self.floor.get(key, 0), change.version)
        self.sending.pop(key, None)
        self._release(item.tickets)
        self.pump()

    def _release(self, tickets: list[Ticket]) -> None:
        for t in tickets:
            t.waiting -= 1
        if tickets:
            self.on_settled()

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel what is in flight, not settling it (its batches stay unacknowledged); return the tasks."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def close(self) -> list[asyncio.Task[None]]:
        """The subscriber is gone: cancel what is in flight, and settle everything owed to it."""
        tasks = self.stop()
        owed = [*self.waiting.values(), *self.sending.values()]
        self.waiting.clear()
        self.sending.clear()
        if owed:
            self.metrics.deliveries.labels("dropped").inc(len(owed))
        self._release([t for item in owed for t in item.tickets])
        return tasks


# ---------------------------------------------------------------------------------------------------------
# The worker


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class SubscriberWorker:
    """The consumer group: batches of ``stock.changed`` in, one outbox per subscriber, offsets stored in
    order once every delivery of a batch settled."""

    def __init__(
        self,
        settings: SubscriberSettings,
        consumer: Consumer,
        courier: Sender,
        pool: AsyncConnectionPool,
        metrics: SubscriberMetrics,
    ) -> None:
        self.settings, self.consumer, self.courier, self.pool, self.metrics = (
            settings,
            consumer,
            courier,
            pool,
            metrics,
        )
        self.kafka = settings.fanout.kafka
        self.outboxes: dict[str, Outbox] = {}
        self.by_tenant: dict[str, list[Outbox]] = {}
        self.tickets: deque[Ticket] = deque()
        self.assigned = asyncio.Event()
        self.orphans: set[asyncio.Task[None]] = set()  # tasks of removed subscribers, being cancelled

    @property
    def subscribers(self) -> dict[str, Subscriber]:
        return {sid: box.subscriber for sid, box in self.outboxes.items()}

    # -- subscribers

    def apply(self, subscribers: Iterable[Subscriber]) -> None:
        """Serve exactly `subscribers` (the enabled ones) from now on."""
        new = {s.id: s for s in subscribers if s.enabled}
        for sid in [sid for sid in self.outboxes if sid not in new]:
            gone = self.outboxes.pop(sid)
            dropped = gone.backlog
            for task in gone.close():
                self.orphans.add(task)
                task.add_done_callback(self.orphans.discard)
            log.info("subscriber %s removed or disabled (%d changes owed to it dropped)", sid, dropped)
        for s in new.values():
            known = self.outboxes.get(s.id)
            if known is None:
                self.outboxes[s.id] = Outbox(
                    s, self.courier, self.metrics, limit=self.settings.per_subscriber
                )
                log.info("subscriber %s of tenant %s added: %s", s.id, s.tenant, where(s.url))
            elif known.subscriber != s:
                known.subscriber = s  # a new URL, secret or SKU list: used from its next delivery
        self.by_tenant = {}
        for box in self.outboxes.values():
            self.by_tenant.setdefault(box.subscriber.tenant, []).append(box)
        self.metrics.subscribers.set(len(self.outboxes))

    async def refresh(self) -> None:
        """Re-read the subscribers from the table (psycopg.Error if PostgreSQL cannot answer)."""
        async with self.pool.connection(timeout=10.0) as conn:
            rows = await load_subscribers(conn)
        self.apply(rows)

    async def _refresh_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, self.settings.refresh_s)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except psycopg.Error as exc:
                log.warning(
                    "could not re-read the subscribers (keeping the %d known): %s", len(self.outboxes), exc
                )

    async def _first_load(self, stop: asyncio.Event) -> bool:
        """Read the subscribers before consuming anything (a change consumed without them would be lost to
        them); retried until it works or `stop`."""
        while not stop.is_set():
            try:
                await self.refresh()
            except psycopg.Error as exc:
                log.warning(
                    "cannot read the subscribers yet (retrying; nothing is consumed meanwhile): %s", exc
                )
                await _wait(stop, 2.0)
            else:
                return True
        return False

    # -- batches

    def decode(self, messages: list[Message]) -> list[StockChanged]:
        out = []
        for m in messages:
            try:
                out.append(stock_changed.decode(m.value() or b""))
            except ValidationError as exc:
                log.error("skipping a record of %s that does not parse: %s", m.topic(), exc)
        return out

    async def _counts(
        self, records: list[StockChanged], stop: asyncio.Event
    ) -> dict[Key, tuple[int, int]] | None:
        """agent_counts, retried while PostgreSQL cannot answer; None if `stop` came first."""
        wait = 0.5
        while not stop.is_set():
            try:
                async with self.pool.connection(timeout=10.0) as conn:
                    return await agent_counts(conn, records)
            except psycopg.Error as exc:
                log.warning("cannot read the allocation rules and grants (retrying): %s", exc)
                await _wait(stop, wait)
                wait = min(wait * 2, 5.0)
        return None

    async def handle(self, messages: list[Message], stop: asyncio.Event) -> bool:
        """Hand every change of the batch to the outboxes of the subscribers that want it; False if `stop`
        came before (the batch is then not acknowledged)."""
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            tp = (m.topic() or "", m.partition() or 0)
            offsets[tp] = max(offsets.get(tp, -1), m.offset() or 0)
        records = self.decode(messages)
        newest: dict[Key, StockChanged] = {}
        seen: Tally[Key] = Tally()
        for r in records:
            key = (r.tenant, r.sku)
            seen[key] += 1
            if key not in newest or r.version > newest[key].version:
                newest[key] = r
        wanted = [
            r
            for r in newest.values()
            if any(box.subscriber.wants(r.tenant, r.sku) for box in self.by_tenant.get(r.tenant, ()))
        ]
        counts: dict[Key, tuple[int, int]] = {}
        if wanted:
            found = await self._counts(wanted, stop)
            if found is None:
                return False
            counts = found
        ticket = Ticket(offsets)
        self.tickets.append(ticket)
        touched: set[str] = set()
        for r in wanted:
            key = (r.tenant, r.sku)
            change = change_of(r, *counts[key])
            for box in self.by_tenant.get(r.tenant, ()):
                if box.subscriber.wants(r.tenant, r.sku):
                    box.offer(change, ticket, superseded=seen[key] - 1)
                    touched.add(box.subscriber.id)
        ticket.sealed = True
        for sid in touched:
            self.outboxes[sid].pump()
        return True

    def store_settled(self) -> None:
        """Store the offsets of the settled batches at the head of the line (in consumption order)."""
        done: dict[tuple[str, int], int] = {}
        while self.tickets and self.tickets[0].settled:
            for tp, offset in self.tickets.popleft().offsets.items():
                done[tp] = max(done.get(tp, -1), offset)
        if not done:
            return
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in done.items()])
        except KafkaException as exc:  # a partition moved to another worker meanwhile: it redelivers
            log.info("could not store some offsets (partitions reassigned?): %s", exc)

    async def _gather(self, *, paused: bool) -> list[Message]:
        """A first record (waiting up to 0.2 s), then more for the coalescing window (or to max_batch)."""
        first = await asyncio.to_thread(self.consumer.poll, 0.2)
        if first is None or first.error():
            return []
        messages = [first]
        fan = self.settings.fanout
        deadline = time.monotonic() + fan.coalesce_window_s
        while not paused and len(messages) < fan.max_batch and (left := deadline - time.monotonic()) > 0:
            more = await asyncio.to_thread(self.consumer.consume, fan.max_batch - len(messages), left)
            messages += [m for m in more if not m.error()]
        return messages

    def _pause(self, paused: bool) -> None:
        try:
            assignment = self.consumer.assignment()
            if paused:
                self.consumer.pause(assignment)
            else:
                self.consumer.resume(assignment)
        except KafkaException as exc:
            log.warning("could not %s the consumer: %s", "pause" if paused else "resume", exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe and deliver until `stop`; the consumer is closed by whoever created it."""
        loop = asyncio.get_running_loop()

        def on_assign(_consumer: Any, _partitions: list[Any]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        self.consumer.subscribe([self.kafka.topic(stock_changed.TOPIC)], on_assign=on_assign)
        if not await self._first_load(stop):
            return
        refresher = asyncio.create_task(self._refresh_every(stop))
        paused = False
        try:
            while not stop.is_set():
                self.store_settled()
                full = len(self.tickets) >= self.settings.max_unsettled
                if full != paused:
                    paused = full
                    self._pause(paused)
                    if paused:
                        log.warning(
                            "%d batches wait for slow subscribers: consuming paused until they settle",
                            len(self.tickets),
                        )
                messages = await self._gather(paused=paused)
                if messages:
                    await self.handle(messages, stop)
                self.metrics.pending.set(sum(box.backlog for box in self.outboxes.values()))
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await self._shut_down()

    async def _shut_down(self) -> None:
        """Let deliveries under way finish for the grace period, store what settled, cancel the rest (it is
        delivered again after the restart)."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while (left := deadline - time.monotonic()) > 0:
            running = [t for box in self.outboxes.values() for t in box.tasks]
            if not running:
                break
            await asyncio.wait(running, timeout=left)
        self.store_settled()
        tasks = [t for box in self.outboxes.values() for t in box.stop()] + list(self.orphans)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.tickets:
            log.info("stopping with %d batches not acknowledged: they are delivered again", len(self.tickets))


# ---------------------------------------------------------------------------------------------------------
# Composition root


@dataclass
class Subscribers:
    """The built worker and its registry; run() serves /metrics, /healthz and /readyz beside it."""

    settings: SubscriberSettings
    worker: SubscriberWorker
    registry: CollectorRegistry
    metrics: SubscriberMetrics
    fanout_metrics: FanoutMetrics

    async def refresh_gauges(self) -> None:
        """The group's lag on stock.changed and the dead-letter topic's depth."""
        kafka = self.settings.fanout.kafka
        group, topic = kafka.group(GROUP), kafka.topic(stock_changed.TOPIC)
        for lag in await asyncio.to_thread(health.consumer_lag, kafka, group, [topic]):
            self.fanout_metrics.consumer_lag.labels(lag.group, lag.topic).set(lag.records)
        depth = await asyncio.to_thread(health.topic_depth, kafka, kafka.topic(fanout_dlq.TOPIC))
        if depth is not None:
            self.fanout_metrics.dlq_depth.set(depth)

    async def run(self, stop: asyncio.Event, *, check_interval_s: float = 15.0) -> None:
        assigned = {"subscribers": self.worker.assigned}
        async with serve_ops(self.settings.fanout, self.registry, assigned=assigned) as port:
            log.info("subscriber webhooks (group %s): metrics on port %d", GROUP, port)
            checks = asyncio.create_task(
                health.every(
                    check_interval_s, "the subscriber group's lag and DLQ checks", self.refresh_gauges
                )
            )
            try:
                await self.worker.run(stop)
            finally:
                checks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checks


@asynccontextmanager
async def build_subscribers(
    settings: SubscriberSettings,
    *,
    producer: AsyncProducer | None = None,
    session: aiohttp.ClientSession | None = None,
    consumer: Consumer | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[Subscribers]:
    """The subscriber worker; what it created is closed when the block ends (what was handed in is not)."""
    registry = registry or CollectorRegistry()
    metrics, fanout_metrics = SubscriberMetrics(registry), FanoutMetrics(registry)
    fan = settings.fanout
    async with AsyncExitStack() as stack:
        if producer is None:
            own_producer = AsyncProducer(producer_config(fan.kafka))
            stack.push_async_callback(own_producer.close)
            producer = own_producer
        if session is None:
            timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        # Opened without waiting: the worker starts while PostgreSQL is away, and waits for it to read.
        pool = AsyncConnectionPool(
            fan.postgres.database_url, min_size=0, max_size=2, open=False, name="fanout-subscribers"
        )
        await pool.open(wait=False)
        stack.push_async_callback(pool.close)
        if consumer is None:
            overrides = {"session.timeout.ms": int(fan.session_timeout_s * 1000)}
            consumer = Consumer(consumer_config(fan.kafka, GROUP, **overrides))
            stack.push_async_callback(asyncio.to_thread, consumer.close)  # commits the stored offsets
        courier = Courier(
            session,
            settings.retry_policy(),
            metrics,
            producer,
            fan.kafka.topic(fanout_dlq.TOPIC),
            timeout_s=settings.timeout_s,
            concurrency=settings.concurrency,
        )
        worker = SubscriberWorker(settings, consumer, courier, pool, metrics)
        yield Subscribers(settings, worker, registry, metrics, fanout_metrics)


async def run_subscribers(settings: SubscriberSettings, stop: asyncio.Event) -> None:
    """Build the subscriber worker and run it until `stop`."""
    async with build_subscribers(settings) as subscribers:
        await subscribers.run(stop)
