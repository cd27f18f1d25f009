"""ingest.openapi: the document describes exactly the gateway's /v1 routes, and its request bodies are the
models the handlers validate with."""

from __future__ import annotations

import json

from channels.connection import ConnectionRegistry
from ingest.app import build_app
from ingest.openapi import document
from ingest.settings import IngestSettings

METHODS = {"GET", "POST", "DELETE", "PUT", "PATCH"}


def test_every_v1_route_of_the_gateway_is_documented_and_nothing_else() -> None:
    app = build_app(IngestSettings(connections_table=False), connections=ConnectionRegistry([]))
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method in METHODS
    }
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert routed == documented


def test_the_document_is_json_and_its_references_resolve() -> None:
    doc = document()
    text = json.dumps(doc)
    names = set(doc["components"]["schemas"])
    refs = {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}
    assert refs <= names, refs - names
    hold = doc["components"]["schemas"]["HoldIn"]
    assert set(hold["required"]) == {"sku", "quantity", "idempotency_key"}
    assert hold["properties"]["ttl_s"]["maximum"] == 86_400
