"""The gateway's OpenAPI 3.1 document, served at ``GET /v1/openapi.json``: the tenant-scoped APIs (admin
stock, availability, the availability stream, reservations). Request bodies are the pydantic models the
handlers validate with, so the document cannot drift from what is accepted; tests/unit/test_openapi.py
requires every ``/v1`` route of the app to be documented and nothing else."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ingest import admin, reservations

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


class Error(BaseModel):
    error: str


class Availability(BaseModel):
    sku: str
    available: int
    status: str
    version: int
    as_of: str


class Reservation(BaseModel):
    reservation_id: str
    sku: str
    quantity: int
    state: str
    expires_at: str


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _answers(ok: tuple[str, str, str | None], *errors: tuple[str, str]) -> dict[str, Any]:
    status, description, model = ok
    out: dict[str, Any] = {status: {"description": description}}
    if model is not None:
        out[status]["content"] = _json(model)
    for code, why in (("401", "missing or unknown bearer token"), *errors):
        out[code] = {"description": why, "content": _json("Error")}
    return out


RID = {"name": "reservation_id", "in": "path", "required": True, "schema": {"type": "string"}}
SKU = {"name": "sku", "in": "path", "required": True, "schema": {"type": "string"}}
TENANT = {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    """The OpenAPI document (a plain dict, JSON-serialisable)."""
    schemas = {
        "Error": _schema(Error),
        "Availability": _schema(Availability),
        "Reservation": _schema(Reservation),
        "HoldIn": _schema(reservations.HoldIn),
        "CountIn": _schema(admin.CountIn),
        "ReceiptIn": _schema(admin.ReceiptIn),
    }
    unavailable = ("503", "Kafka or PostgreSQL unavailable, or no decision in time: repeat the same call")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stocksync gateway",
            "version": "1",
            "description": "Availability for storefronts and AI shopping agents, check-and-reserve, and the "
            "seller's stock admin. Every call carries `Authorization: Bearer <tenant token>` and acts for "
            "that tenant only.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": BEARER,
        "paths": {
            "/v1/availability/{sku}": {
                "get": {
                    "summary": "What agents may see of one SKU: count, status, master version, as-of time",
                    "parameters": [SKU],
                    "responses": _answers(
                        ("200", "the SKU's availability", "Availability"),
                        ("404", "no such SKU for this tenant"),
                        unavailable,
                    ),
                }
            },
            "/v1/availability": {
                "get": {
                    "summary": "Availability of up to 100 SKUs (`?sku=A&sku=B`)",
                    "parameters": [
                        {
                            "name": "sku",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
                            "style": "form",
                            "explode": True,
                        }
                    ],
                    "responses": _answers(
                        ("200", "`items` (availability per known SKU) and `unknown` (SKU names)", None),
                        ("400", "no SKU, more than 100, or an invalid one"),
                        unavailable,
                    ),
                }
            },
            "/v1/availability/stream": {
                "get": {
                    "summary": "Server-sent events of availability changes (`event: availability`, data as "
                    "Availability); resume with the `Last-Event-ID` header",
                    "parameters": [
                        {
                            "name": "sku",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "array", "items": {"type": "string"}},
                            "style": "form",
                            "explode": True,
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": _answers(
                        ("200", "text/event-stream", None),
                        ("400", "a malformed Last-Event-ID or SKU"),
                        (
                            "410",
                            "the Last-Event-ID is older than the topic keeps: read the SKUs again, then "
                            "stream without it",
                        ),
                        ("503", "Kafka unavailable"),
                    ),
                }
            },
            "/v1/reservations": {
                "post": {
                    "summary": "Hold units for an agent checkout until `ttl_s` passes (same key, same hold)",
                    "requestBody": {"required": True, "content": _json("HoldIn")},
                    "responses": _answers(
                        ("201", "held", "Reservation"),
                        ("404", "no such SKU for this tenant"),
                        ("409", "the units are not there for agents"),
                        ("422", "an invalid body, or a key reused for another request"),
                        unavailable,
                    ),
                }
            },
            "/v1/reservations/{reservation_id}": {
                "get": {
                    "summary": "A reservation as it stands",
                    "parameters": [RID],
                    "responses": _answers(("200", "the reservation", "Reservation"), ("404", "not found")),
                },
                "delete": {
                    "summary": "Release a hold: its units return to stock (an expired one already did)",
                    "parameters": [RID],
                    "responses": _answers(
                        ("200", "released (or expired before)", "Reservation"),
                        ("404", "not found"),
                        ("409", "already committed: a sale now"),
                        unavailable,
                    ),
                },
            },
            "/v1/reservations/{reservation_id}/commit": {
                "post": {
                    "summary": "Turn a live hold into a sale",
                    "parameters": [RID],
                    "responses": _answers(
                        ("200", "committed", "Reservation"),
                        ("404", "not found"),
                        ("409", "expired or released first"),
                        unavailable,
                    ),
                }
            },
            "/v1/stock/{tenant}/{sku}": {
                "get": {
                    "summary": "The seller's master record of a SKU (admin)",
                    "parameters": [TENANT, SKU],
                    "responses": _answers(
                        ("200", "the master record and its last change", None),
                        ("403", "another tenant's path"),
                        ("404", "no such SKU"),
                        unavailable,
                    ),
                }
            },
            "/v1/stock/{tenant}/{sku}/counts": {
                "post": {
                    "summary": "Record a stock count as of a time (admin)",
                    "parameters": [TENANT, SKU],
                    "requestBody": {"required": True, "content": _json("CountIn")},
                    "responses": _answers(
                        ("202", "published; applied by the processor shortly", None),
                        ("403", "another tenant's path"),
                        ("422", "an invalid body"),
                        unavailable,
                    ),
                }
            },
            "/v1/stock/{tenant}/{sku}/receipts": {
                "post": {
                    "summary": "Record goods received (admin)",
                    "parameters": [TENANT, SKU],
                    "requestBody": {"required": True, "content": _json("ReceiptIn")},
                    "responses": _answers(
                        ("202", "published; applied by the processor shortly", None),
                        ("403", "another tenant's path"),
                        ("422", "an invalid body"),
                        unavailable,
                    ),
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
    }


def add_routes(app: web.Application) -> None:
    served = document()

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(served)

    app.router.add_get("/v1/openapi.json", openapi)
