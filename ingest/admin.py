"""The seller's admin API on the gateway: record stock counts and receipts, read a SKU's master record.

    POST /v1/stock/{tenant}/{sku}/counts     {"quantity": 12, "as_of": "...", "count_id": "..."}
    POST /v1/stock/{tenant}/{sku}/receipts   {"quantity": 5, "received_at": "...", "receipt_id": "...",
                                              "reference": "PO-1"}
    GET  /v1/stock/{tenant}/{sku}

Every call carries ``Authorization: Bearer <token>``; a token acts only for its own tenant (401 unknown
token, 403 another tenant's path: nothing published, nothing read). Counts and receipts become
``StockCounted`` / ``StockReceived`` events published like webhooks (acks=all before the 202, 503 if Kafka
does not acknowledge in time); the processor applies them. Their ids come from ``count_id`` /
``receipt_id`` or the ``Idempotency-Key`` header, so a retried request is applied once; without either, each
request is a new event.

Bad requests: a body that is not JSON at all is 400; a JSON body whose content is refused (a quantity outside
its range: a count 0..2147483647, a receipt 1..2147483647; a wrong type, an unknown field, a time without a
UTC offset) is 422, with an error naming each field and what it allows, e.g. ``quantity: must be a whole
number between 0 and 2147483647 (got 3000000000)``. An invalid tenant or SKU in the path is 400.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from ingest.answers import body_as, error
from ingest.state import CONNECTIONS, METRICS, POOL, PRODUCER, SETTINGS, publish_all
from schemas.base import Count, Quantity, Sku, Tenant
from schemas.inventory_events import TOPIC, StockCounted, StockReceived, encode, headers, key
from stocksync.kafka import DeliveryError

log = logging.getLogger(__name__)

RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
_sku: TypeAdapter[str] = TypeAdapter(Sku)
_tenant: TypeAdapter[str] = TypeAdapter(Tenant)


class CountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Count
    as_of: AwareDatetime | None = Field(None, description="When the count was taken; default: now.")
    count_id: RequestId | None = None


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Quantity
    received_at: AwareDatetime | None = Field(None, description="When the goods arrived; default: now.")
    receipt_id: RequestId | None = None
    reference: str | None = Field(None, max_length=200)


class AdminApi:
    """Handlers over the gateway's shared pieces (ingest.state; ingest.app owns their lifetimes)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    # -- shared checks -------------------------------------------------------------------------------------

    def _authorise(self, request: web.Request, action: str) -> tuple[str, str] | web.Response:
        """(tenant, sku) from the path once the token is shown to belong to that tenant; else the answer."""
        metrics = self.app[METRICS]
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.admin.labels(action, "unauthorized").inc()
            return error(
                401, "missing bearer token: send 'Authorization: Bearer <your tenant's admin token>'"
            )
        owner = self.app[CONNECTIONS].current.tenant_for_token(token.strip())
        if owner is None:
            metrics.admin.labels(action, "unauthorized").inc()
            return error(401, "unknown admin token: check it, or issue one with `stocksync tenants add`")
        tenant, sku = request.match_info["tenant"], request.match_info["sku"]
        if tenant != owner:
            metrics.admin.labels(action, "forbidden").inc()
            log.warning("admin token of tenant %s used on tenant %s's SKU %s: refused", owner, tenant, sku)
            return error(403, f"this token belongs to tenant {owner!r}; it cannot act for tenant {tenant!r}")
        try:
            _tenant.validate_python(tenant)
            _sku.validate_python(sku)
        except ValidationError as exc:
            metrics.admin.labels(action, "invalid").inc()
            return error(400, f"invalid tenant or SKU in the path: {exc.errors()[0]['msg']}")
        return tenant, sku

    async def _body(self, request: web.Request, model: type[CountIn] | type[ReceiptIn], action: str) -> Any:
        """The body as `model`; else the answer: 400 if it is not JSON, 422 if its content is refused."""
        body = body_as(model, await request.read())
        if isinstance(body, web.Response):
            self.app[METRICS].admin.labels(action, "invalid").inc()
        return body

    async def _publish(self, action: str, event: StockCounted | StockReceived) -> web.Response:
        settings, metrics = self.app[SETTINGS], self.app[METRICS]
        record = (
            settings.kafka.topic(TOPIC),
            key(event),
            encode(event),
            headers(event),
        )
        try:
            await publish_all(self.app[PRODUCER], [record], settings.ack_timeout_s)
        except (TimeoutError, DeliveryError) as exc:
            metrics.admin.labels(action, "unavailable").inc()
            log.warning("admin %s for %s/%s not stored in Kafka: %r", action, event.tenant, event.sku, exc)
            return error(503, "event store unavailable; nothing was recorded, retry later")
        metrics.admin.labels(action, "accepted").inc()
        return web.json_response(
            {"status": "accepted", "event_id": event.event_id, "note": "applied by the processor shortly"},
            status=202,
            headers={"Location": f"/v1/stock/{event.tenant}/{event.sku}"},
        )

    @staticmethod
    def _request_id(request: web.Request, given: str | None) -> str:
        return given or request.headers.get("Idempotency-Key", "").strip()[:100] or uuid.uuid4().hex

    # -- handlers ------------------------------------------------------------------------------------------

    async def record_count(self, request: web.Request) -> web.Response:
        who = self._authorise(request, "count")
        if isinstance(who, web.Response):
            return who
        body = await self._body(request, CountIn, "count")
        if isinstance(body, web.Response):
            return body
        tenant, sku = who
        now = datetime.now(UTC)
        event = StockCounted(
            event_id=f"admin:{tenant}:count:{self._request_id(request, body.count_id)}",
            tenant=tenant,
            sku=sku,
            quantity=body.quantity,
            occurred_at=body.as_of or now,
            received_at=now,
        )
        return await self._publish("count", event)

    async def record_receipt(self, request: web.Request) -> web.Response:
        who = self._authorise(request, "receipt")
        if isinstance(who, web.Response):
            return who
        body = await self._body(request, ReceiptIn, "receipt")
        if isinstance(body, web.Response):
            return body
        tenant, sku = who
        now = datetime.now(UTC)
        event = StockReceived(
            event_id=f"admin:{tenant}:receipt:{self._request_id(request, body.receipt_id)}",
            tenant=tenant,
            sku=sku,
            quantity=body.quantity,
            reference=body.reference,
            occurred_at=body.received_at or now,
            received_at=now,
        )
        return await self._publish("receipt", event)

    async def read_sku(self, request: web.Request) -> web.Response:
        who = self._authorise(request, "read")
        if isinstance(who, web.Response):
            return who
        tenant, sku = who
        pool: AsyncConnectionPool = self.app[POOL]
        try:
            async with pool.connection(timeout=2.0) as db, db.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT available, version, updated_at, counted_at FROM inventory"
                    " WHERE tenant = %s AND sku = %s",
                    (tenant, sku),
                )
                record = await cur.fetchone()
                await cur.execute(
                    "SELECT event_id, kind, delta, outcome, occurred_at, applied_at FROM ledger"
                    " WHERE tenant = %s AND sku = %s AND outcome = 'applied' ORDER BY id DESC LIMIT 1",
                    (tenant, sku),
                )
                last = await cur.fetchone()
        except (PoolTimeout, OSError) as exc:
            self.app[METRICS].admin.labels("read", "unavailable").inc()
            log.warning("admin read of %s/%s: master record unreachable: %s", tenant, sku, exc)
            return error(503, "the master record (PostgreSQL) is unreachable; retry later")
        if record is None:
            self.app[METRICS].admin.labels("read", "not_found").inc()
            return error(404, f"tenant {tenant!r} has no SKU {sku!r}: record a count or a receipt first")
        self.app[METRICS].admin.labels("read", "ok").inc()
        return web.json_response(
            {
                "tenant": tenant,
                "sku": sku,
                "available": record["available"],
                "version": record["version"],
                "updated_at": record["updated_at"].isoformat(),
                "counted_at": record["counted_at"].isoformat() if record["counted_at"] else None,
                "last_change": None
                if last is None
                else {
                    "event_id": last["event_id"],
                    "kind": last["kind"],
                    "delta": last["delta"],
                    "occurred_at": last["occurred_at"].isoformat(),
                    "applied_at": last["applied_at"].isoformat(),
                },
            }
        )


def add_routes(app: web.Application) -> None:
    api = AdminApi(app)
    app.router.add_post("/v1/stock/{tenant}/{sku}/counts", api.record_count)
    app.router.add_post("/v1/stock/{tenant}/{sku}/receipts", api.record_receipt)
    app.router.add_get("/v1/stock/{tenant}/{sku}", api.read_sku)
