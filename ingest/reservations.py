"""Check-and-reserve for agent checkouts (issue 16): hold units, commit the hold as a sale, release it.

    POST   /v1/reservations  {"sku": "SKU-1", "quantity": 2, "ttl_s": 600, "idempotency_key": "k1"}
           -> 201 {"reservation_id", "sku", "quantity", "state": "held", "expires_at"}
           -> 409 the units are not there for agents; 404 unknown SKU; 422 a key reused for another request
    POST   /v1/reservations/{id}/commit   -> 200 {"state": "committed", ...}; 409 expired or released
    DELETE /v1/reservations/{id}          -> 200 {"state": "released" | "expired", ...}; 409 already committed
    GET    /v1/reservations/{id}          -> 200 the reservation as it stands

Every step is an event on ``inventory.events`` keyed by the SKU (same ordering, idempotency and ledger as a
sale): the gateway publishes it (acks=all), then waits for the processor's decision, which the processor
announces at commit on PostgreSQL's ``LISTEN``/``NOTIFY`` channel ``stocksync_reservations`` (the event id as
payload); the answer is read from the committed rows. A notification missed (the listening connection was
being re-established) costs a poll of the outcome every half second, never a lost answer. A step not decided
within INGEST_RESERVATION_WAIT_S is answered 503: it stays recorded, and the same call again returns its
answer.

Ids are derived, not drawn: the reservation id is ``rsv_`` and 32 hex digits of SHA-256 over the tenant and
the idempotency key, and each step's event id is ``rsv:<id>:hold|commit|release`` — the same request twice
is one reservation, a commit or a release happens once, and an agent's release racing the processor's expiry
sweep applies once. A tenant's token acts only on its own reservations: another tenant's id is not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from ingest.answers import body_as, error
from ingest.auth import tenant_of
from ingest.state import METRICS, POOL, PRODUCER, SETTINGS, publish_all
from schemas.base import Quantity, Sku
from schemas.inventory_events import (
    TOPIC,
    ReservationCommitted,
    ReservationEvent,
    ReservationHeld,
    ReservationReleased,
    encode,
    headers,
    key,
    reservation_event_id,
)
from stocksync.db import RESERVATIONS_CHANNEL
from stocksync.kafka import DeliveryError

log = logging.getLogger(__name__)

IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
POLL_S = 0.5  # while waiting, the outcome is also read this often (a notification may have been missed)
MAX_TTL_S = 86_400


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    quantity: Quantity
    ttl_s: int = Field(900, ge=1, le=MAX_TTL_S, description="Seconds the hold lasts unless committed.")
    idempotency_key: IdempotencyKey


def reservation_id(tenant: str, idempotency_key: str) -> str:
    """The reservation id of a tenant's idempotency key: the same key, the same reservation."""
    return "rsv_" + hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:32]


class Decisions:
    """Waits for the processor's decisions: one LISTEN connection per gateway process, re-established with
    backoff when it drops; waiters also poll, so a notification missed meanwhile delays an answer only."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

    def expect(self, event_id: str) -> asyncio.Future[None]:
        """A future resolved when the processor announces `event_id` (register before publishing)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event_id, set()).add(future)
        return future

    def forget(self, event_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(event_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiting[event_id]

    def _announced(self, event_id: str) -> None:
        for future in self._waiting.pop(event_id, set()):
            if not future.done():
                future.set_result(None)

    async def listen(self) -> None:
        """Serve notifications until cancelled; reconnect (1 s, doubling to 30 s) whenever the connection
        fails."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((psycopg.OperationalError, OSError)),
            wait=wait_exponential(multiplier=1, max=30),
            before_sleep=lambda state: log.warning(
                "reservation decisions: listening connection lost (%s); reconnecting",
                state.outcome.exception() if state.outcome else "?",
            ),
        ):
            with attempt:
                conn = await AsyncConnection.connect(self._url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {RESERVATIONS_CHANNEL}")
                    log.info("reservation decisions: listening on %s", RESERVATIONS_CHANNEL)
                    async for note in conn.notifies():
                        self._announced(note.payload)


DECISIONS = web.AppKey("reservation_decisions", Decisions)


class ReservationsApi:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    # -- reading -------------------------------------------------------------------------------------------

    async def _row(self, tenant: str, rid: str) -> dict[str, Any] | None:
        pool: AsyncConnectionPool = self.app[POOL]
        async with pool.connection(timeout=2.0) as db, db.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT reservation_id, sku, quantity, state, expires_at, created_at, updated_at "
                "FROM reservations WHERE tenant = %s AND reservation_id = %s",
                (tenant, rid),
            )
            return await cur.fetchone()

    async def _decision(self, event_id: str) -> dict[str, Any] | None:
        """The committed outcome of a step (processed_events) and its ledger row's figures, or None."""
        pool: AsyncConnectionPool = self.app[POOL]
        async with pool.connection(timeout=2.0) as db, db.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT p.outcome, l.sku, l.delta, l.after, l.reason FROM processed_events p "
                "LEFT JOIN ledger l ON l.event_id = p.event_id WHERE p.event_id = %s",
                (event_id,),
            )
            return await cur.fetchone()

    # -- publishing and waiting ----------------------------------------------------------------------------

    async def _decide(self, event: ReservationEvent) -> dict[str, Any] | web.Response:
        """Publish `event` unless it was decided before, and wait for its decision; else the 503 answer."""
        settings, decisions = self.app[SETTINGS], self.app[DECISIONS]
        future = decisions.expect(event.event_id)
        try:
            decided = await self._decision(event.event_id)
            if decided is not None:
                return decided
            record = (settings.kafka.topic(TOPIC), key(event), encode(event), headers(event))
            try:
                await publish_all(self.app[PRODUCER], [record], settings.ack_timeout_s)
            except (TimeoutError, DeliveryError) as exc:
                log.warning("reservation step %s not stored in Kafka: %r", event.event_id, exc)
                return error(503, "event store unavailable; nothing was recorded, retry later")
            deadline = time.monotonic() + settings.reservation_wait_s
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(POLL_S, left))
                decided = await self._decision(event.event_id)
                if decided is not None:
                    return decided
            return error(
                503,
                f"recorded, but not decided within {settings.reservation_wait_s:g} s (the processor is "
                "behind or down); repeat the same call to get its answer",
                event_id=event.event_id,
            )
        finally:
            decisions.forget(event.event_id, future)

    # -- handlers ------------------------------------------------------------------------------------------

    async def _guarded(self, request: web.Request, action: str, handler: Any) -> web.Response:
        """Authorise, time, count and answer one call; the database unreachable is a 503."""
        started = time.perf_counter()
        metrics = self.app[METRICS]
        tenant = tenant_of(request)
        if isinstance(tenant, web.Response):
            metrics.reservations.labels(action, "unauthorized").inc()
            return tenant
        try:
            answer: web.Response = await handler(request, tenant)
        except (PoolTimeout, psycopg.OperationalError, OSError) as exc:
            log.warning("reservation %s for tenant %s: master record unreachable: %s", action, tenant, exc)
            answer = error(503, "the master record (PostgreSQL) is unreachable; retry later")
        metrics.reservations.labels(action, str(answer.status)).inc()
        metrics.reservation_seconds.labels(action).observe(time.perf_counter() - started)
        return answer

    async def hold(self, request: web.Request) -> web.Response:
        return await self._guarded(request, "hold", self._hold)

    async def commit(self, request: web.Request) -> web.Response:
        return await self._guarded(request, "commit", self._commit)

    async def release(self, request: web.Request) -> web.Response:
        return await self._guarded(request, "release", self._release)

    async def read(self, request: web.Request) -> web.Response:
        return await self._guarded(request, "read", self._read)

    async def _hold(self, request: web.Request, tenant: str) -> web.Response:
        body = body_as(HoldIn, await request.read(), refused="invalid reservation")
        if isinstance(body, web.Response):
            return body
        rid = reservation_id(tenant, body.idempotency_key)
        event_id = reservation_event_id(rid, "hold")
        now = datetime.now(UTC)
        event = ReservationHeld(
            event_id=event_id,
            tenant=tenant,
            sku=body.sku,
            quantity=body.quantity,
            reservation_id=rid,
            expires_at=now + timedelta(seconds=body.ttl_s),
            connection_id="agent",
            occurred_at=now,
            received_at=now,
        )
        decided = await self._decide(event)
        if isinstance(decided, web.Response):
            return decided
        if decided["outcome"] == "invalid":
            return error(500, f"the hold could not be applied: {decided['reason']}", reservation_id=rid)
        asked = (body.sku, body.quantity)
        if decided["delta"] is not None and (decided["sku"], -decided["delta"]) != asked:
            return error(
                422,
                f"idempotency_key {body.idempotency_key!r} was used for another request "
                f"({-(decided['delta'] or 0)} of {decided['sku']}); use a new key for a new reservation",
            )
        outcome = decided["outcome"]
        if outcome == "unknown_sku":
            return error(404, f"tenant {tenant!r} has no SKU {body.sku!r}")
        if outcome != "applied":
            return error(
                409,
                f"not reserved: {decided['reason'] or outcome}",
                reservation_id=rid,
                available=decided["after"],
            )
        row = await self._row(tenant, rid)
        if row is None:  # decided and committed, so the row is there; a database restored from before?
            return error(503, "the reservation was decided but cannot be read back; retry the same call")
        return web.json_response(_public(row), status=201, headers={"Location": f"/v1/reservations/{rid}"})

    async def _named(self, request: web.Request, tenant: str) -> dict[str, Any] | web.Response:
        rid = request.match_info["reservation_id"]
        row = await self._row(tenant, rid)
        if row is None:
            return error(404, f"no reservation {rid!r} for tenant {tenant!r}")
        return row

    async def _step(
        self, request: web.Request, tenant: str, step: Literal["commit", "release"]
    ) -> tuple[dict[str, Any], dict[str, Any]] | web.Response:
        """Publish a commit or release of the named reservation and wait for its decision; (decision, the
        reservation as it stands after it), else the answer to send."""
        row = await self._named(request, tenant)
        if isinstance(row, web.Response):
            return row
        rid, now = row["reservation_id"], datetime.now(UTC)
        fields: dict[str, Any] = {
            "event_id": reservation_event_id(rid, step),
            "tenant": tenant,
            "sku": row["sku"],
            "quantity": row["quantity"],
            "reservation_id": rid,
            "connection_id": "agent",
            "occurred_at": now,
            "received_at": now,
        }
        event: ReservationEvent = (
            ReservationCommitted(**fields)
            if step == "commit"
            else ReservationReleased(reason="released", **fields)
        )
        decided = await self._decide(event)
        if isinstance(decided, web.Response):
            return decided
        return decided, await self._row(tenant, rid) or row

    async def _commit(self, request: web.Request, tenant: str) -> web.Response:
        done = await self._step(request, tenant, "commit")
        if isinstance(done, web.Response):
            return done
        decided, after = done
        if decided["outcome"] != "applied":
            return error(409, f"not committed: {decided['reason'] or decided['outcome']}", **_public(after))
        return web.json_response(_public(after))

    async def _release(self, request: web.Request, tenant: str) -> web.Response:
        done = await self._step(request, tenant, "release")
        if isinstance(done, web.Response):
            return done
        _decided, after = done
        if after["state"] == "committed":
            return error(409, "already committed: a sale now; cancel the order to restock", **_public(after))
        return web.json_response(_public(after))

    async def _read(self, request: web.Request, tenant: str) -> web.Response:
        row = await self._named(request, tenant)
        if isinstance(row, web.Response):
            return row
        return web.json_response(_public(row))


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "reservation_id": row["reservation_id"],
        "sku": row["sku"],
        "quantity": row["quantity"],
        "state": row["state"],
        "expires_at": row["expires_at"].isoformat(),
    }


def add_routes(app: web.Application) -> None:
    """The reservation API, and the listener that serves its waits for the app's lifetime."""
    api = ReservationsApi(app)

    async def decisions(app: web.Application) -> AsyncIterator[None]:
        app[DECISIONS] = served = Decisions(app[SETTINGS].postgres.database_url)
        task = asyncio.create_task(served.listen())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(decisions)
    app.router.add_post("/v1/reservations", api.hold)
    # Any id reaches the handler, so an unknown or malformed one is answered 404 in JSON like the rest.
    app.router.add_post("/v1/reservations/{reservation_id}/commit", api.commit)
    app.router.add_delete("/v1/reservations/{reservation_id}", api.release)
    app.router.add_get("/v1/reservations/{reservation_id}", api.read)
