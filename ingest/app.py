"""The gateway's aiohttp application: ``POST /webhooks/{connection_id}``, health and metrics.

Contract: 200 only after every event of the webhook is acknowledged by Kafka (acks=all); if Kafka does not
acknowledge within ``ack_timeout_s`` the answer is 503 so the channel retries (ids make retries harmless).
401 forged/missing signature (or a signature header sent twice), 404 unknown connection, 413 body too large,
all with nothing published. A signed but unusable body is answered 200 after its raw bytes are durable in the
quarantine topic. A signed body with some lines that make no valid event (a quantity outside 1..2^31-1) is
answered 200 once the other lines' events and one quarantine record of the body, naming each refused line
and why, are all durable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from channels.connection import Connection, ConnectionRegistry
from channels.errors import ChannelError, PayloadError
from channels.payload import LinesRefused, RefusedLine
from channels.registry import SPECS
from ingest import admin, availability, openapi, reservations
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from ingest.state import CONNECTIONS, HTTP, METRICS, POOL, PRODUCER, SETTINGS, Directory, publish_all
from schemas import inventory_events, quarantine
from stocksync import health, logs
from stocksync.kafka import AsyncProducer, DeliveryError, producer_config
from stocksync.metrics import metrics_handler

log = logging.getLogger(__name__)


Record = tuple[str, bytes, bytes, dict[str, str]]


def _error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _accepted(events: Sequence[inventory_events.ChannelEvent]) -> web.Response:
    """``web.json_response({"status": "accepted", "events": ids})`` to the byte, written without the encoder
    json.dumps sets up for every dict (it showed in the gateway's profile); ids escaped as json.dumps does."""
    ids = ", ".join([encode_basestring_ascii(e.event_id) for e in events])
    return web.Response(text=f'{{"status": "accepted", "events": [{ids}]}}', content_type="application/json")


def _quarantine_record(
    request: web.Request, connection: Connection, body: bytes, reason: str, now: datetime
) -> Record:
    """The ingest.quarantine record of `body`: verbatim, with its headers (no Authorization) and `reason`."""
    record = quarantine.WebhookQuarantined(
        connection_id=connection.id,
        channel=connection.channel,
        reason=reason,
        headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
        body_b64=base64.b64encode(body).decode(),
        received_at=now,
    )
    topic = request.app[SETTINGS].kafka.topic(quarantine.TOPIC)
    return topic, connection.id.encode(), record.model_dump_json().encode(), {"channel": connection.channel}


def _refused_lines(refused: list[RefusedLine]) -> list[dict[str, str]]:
    return [{"line": r.where, "reason": r.reason} for r in refused]


async def _quarantine(
    request: web.Request,
    connection: Connection,
    body: bytes,
    reason: str,
    now: datetime,
    refused: list[RefusedLine] | None = None,
) -> web.Response:
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    record = _quarantine_record(request, connection, body, reason, now)
    try:
        await publish_all(request.app[PRODUCER], [record], settings.ack_timeout_s)
    except (TimeoutError, DeliveryError) as exc:
        metrics.outcome(connection.channel, "unavailable")
        log.warning("quarantine write failed for connection %s: %s", connection.id, exc)
        return _error(503, "event store unavailable; retry later", reason=str(exc))
    metrics.outcome(connection.channel, "quarantined")
    answer: dict[str, object] = {"status": "quarantined", "reason": reason}
    if refused:
        metrics.lines_quarantined.labels(connection.channel).inc(len(refused))
        answer["refused"] = _refused_lines(refused)
    log.warning("quarantined webhook for connection %s: %s", connection.id, reason)
    return web.json_response(answer)


async def _unusable(
    request: web.Request,
    connection: Connection,
    body: bytes,
    exc: Exception,
    step: str,
    started: float,
    now: datetime,
) -> web.Response:
    """A signed body that cannot become events: quarantined with the reason (200 once durable). A
    PayloadError says what is wrong with it; anything else is a bug in our code, logged with its trace."""
    channel = connection.channel
    refused = exc.refused if isinstance(exc, LinesRefused) else None
    if isinstance(exc, PayloadError):
        reason = str(exc)
    else:
        log.exception("the %s %s failed on a webhook for %s; quarantined", channel, step, connection.id)
        problem = f"{type(exc).__name__}: {exc}"
        reason = f"the {channel} {step} failed on this body ({problem}); kept for inspection"
    response = await _quarantine(request, connection, body, reason, now, refused)
    request.app[METRICS].answered(channel, time.perf_counter() - started)
    return response


async def webhook(request: web.Request) -> web.Response:
    """Every log line of this request carries the connection id (JSON logs: the ``connection`` key)."""
    with logs.bound(connection=request.match_info["connection_id"]):
        return await _webhook(request)


async def _webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    now = datetime.now(UTC)
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    connection_id = request.match_info["connection_id"]
    connection = request.app[CONNECTIONS].current.get(connection_id)
    if connection is None or not connection.enabled:
        metrics.outcome("unknown", "unknown_connection")
        return _error(
            404, f"no enabled connection {connection_id!r}: check the webhook URL set on the channel"
        )
    channel = connection.channel
    adapter = SPECS.get(channel)
    if adapter is None:
        metrics.outcome(channel, "unknown_connection")
        return _error(404, f"channel {channel!r} has no webhook support in this version")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.outcome(channel, "too_large")
        return _error(413, f"body larger than {settings.max_body_bytes} bytes; raise INGEST_MAX_BODY_BYTES")
    for name in adapter.auth_headers:
        # Checks read one copy of a header; which one is an accident of the code, so two are never accepted.
        if len(request.headers.getall(name, ())) > 1:
            metrics.outcome(channel, "unauthorized")
            return _error(401, f"more than one {name} header; send exactly one")
    if adapter.ping is not None and adapter.ping(body, request.headers):
        metrics.outcome(channel, "ping")
        return web.json_response({"status": "ok", "note": "set-up ping acknowledged; nothing published"})
    if not adapter.verify_for(connection)(
        connection.webhook_secret.get_secret_value(), body, request.headers
    ):
        metrics.outcome(channel, "unauthorized")
        return _error(401, "signature missing or invalid for this connection; check its webhook secret")
    if adapter.expand is not None:
        try:
            body = await adapter.expand(request.app[HTTP], connection, body, request.headers)
        except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
            metrics.outcome(channel, "unavailable")
            log.warning(
                "could not fetch the order behind a %s webhook for %s: %s", channel, connection_id, exc
            )
            return web.json_response(
                {"error": f"could not fetch the order from {channel}; not accepted, retry later"},
                status=503,
                headers={"Retry-After": "30"},
            )
        except Exception as exc:  # noqa: BLE001 - unusable (PayloadError) or a bug: either way keep the body
            return await _unusable(request, connection, body, exc, "order fetch", started, now)
    refused: list[RefusedLine] = []
    try:
        events: Sequence[inventory_events.ChannelEvent] = adapter.normalise(
            connection, body, request.headers, now
        )
    except LinesRefused as exc:
        if not exc.events:  # every line refused: the body is quarantined with each line's reason
            return await _unusable(request, connection, body, exc, "normaliser", started, now)
        events, refused = exc.events, exc.refused
    except Exception as exc:  # noqa: BLE001 - unusable (PayloadError) or a bug: either way keep the body
        return await _unusable(request, connection, body, exc, "normaliser", started, now)
    topic = settings.kafka.topic(inventory_events.TOPIC)
    records: list[Record] = [
        (
            topic,
            inventory_events.key(e),
            inventory_events.encode(e),
            inventory_events.headers(e),
        )
        for e in events
    ]
    if refused:
        # The other lines are published and the body quarantined in one durable step: 200 only once both are.
        reason = f"{len(refused)} line(s) refused, the other lines published: " + "; ".join(map(str, refused))
        records.append(_quarantine_record(request, connection, body, reason, now))
    try:
        await publish_all(request.app[PRODUCER], records, settings.ack_timeout_s)
    except (TimeoutError, DeliveryError) as exc:
        metrics.outcome(channel, "unavailable")
        log.warning("webhook for %s not stored in Kafka: %r", connection_id, exc)
        return web.json_response(
            {"error": "event store unavailable; the webhook was not accepted, retry later"},
            status=503,
            headers={"Retry-After": "5"},
        )
    metrics.published(channel, len(events))
    metrics.answered(channel, time.perf_counter() - started)
    if refused:
        answer: dict[str, object] = {"status": "accepted", "events": [e.event_id for e in events]}
        # Counted as quarantined: part of the webhook is in the quarantine topic and needs a person.
        metrics.outcome(channel, "quarantined")
        metrics.lines_quarantined.labels(channel).inc(len(refused))
        log.warning("webhook for %s: published its other lines, quarantined %s", connection_id, reason)
        answer["refused"] = _refused_lines(refused)
        return web.json_response(answer)
    metrics.outcome(channel, "accepted")
    return _accepted(events)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    settings: IngestSettings,
    *,
    connections: ConnectionRegistry,
    producer: AsyncProducer | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The gateway; the only place that knows the real Kafka producer (pass one in to share it)."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    registry = registry or CollectorRegistry()
    app[SETTINGS] = settings
    app[CONNECTIONS] = directory = Directory(connections)
    app[METRICS] = IngestMetrics(registry)

    async def kafka_producer(app: web.Application) -> AsyncIterator[None]:
        if producer is not None:
            app[PRODUCER] = producer
            yield
            return
        # A record not acknowledged within the ack timeout was answered 503: let librdkafka give it up then
        # too, rather than deliver it later beside the channel's retry.
        own = AsyncProducer(
            producer_config(settings.kafka, **{"message.timeout.ms": int(settings.ack_timeout_s * 1000)})
        )
        app[PRODUCER] = own
        try:
            yield
        finally:
            # Handlers have answered by now: what is still queued was answered 503, so wait only briefly.
            await own.close(timeout_s=max(1.0, settings.ack_timeout_s))

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=min(3.0, settings.ack_timeout_s * 1.5))
        ) as s:
            app[HTTP] = s
            yield

    async def database(app: web.Application) -> AsyncIterator[None]:
        # Only the admin API reads the database, so the gateway starts (and takes webhooks) without it: the
        # pool connects in the background and a read that finds no connection in time is answered 503.
        pool = AsyncConnectionPool(
            settings.postgres.database_url, min_size=1, max_size=4, open=False, name="ingest-admin"
        )
        await pool.open(wait=False)
        app[POOL] = pool
        yield
        await pool.close()

    async def refresh_connections(app: web.Application) -> AsyncIterator[None]:
        task = None
        if settings.connections_table:
            task = asyncio.create_task(
                directory.refresh_forever(
                    settings.connections_file, settings.postgres.database_url, settings.connections_refresh_s
                )
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(kafka_producer)
    app.cleanup_ctx.append(http_session)
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(refresh_connections)
    app.router.add_post("/webhooks/{connection_id}", webhook)
    app.router.add_get("/healthz", healthz)
    # /readyz: Kafka answers a metadata request (the gateway needs nothing else to accept webhooks)
    app.router.add_get("/readyz", health.Readiness({"kafka": health.kafka_check(settings.kafka)}).handle)
    app.router.add_get("/metrics", metrics_handler(registry))
    admin.add_routes(app)
    availability.add_routes(app)
    reservations.add_routes(app)
    openapi.add_routes(app)
    return app
