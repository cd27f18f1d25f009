"""Canonical events: frozen, strict, discriminated by type."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import inventory_events
from schemas.base import partition_key
from schemas.inventory_events import OrderPlaced, StockCounted

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def sale(**overrides: object) -> OrderPlaced:
    fields: dict[str, object] = dict(
        event_id="c1:order:1:line:1",
        tenant="acme",
        sku="SKU-1",
        quantity=1,
        connection_id="c1",
        channel="shopify",
        order_id="1",
        line_id="1",
        occurred_at=NOW,
        received_at=NOW,
    )
    fields.update(overrides)
    return OrderPlaced.model_validate(fields)


def test_round_trip_keeps_the_type() -> None:
    count = StockCounted(
        event_id="admin:1", tenant="acme", sku="SKU-1", quantity=0, occurred_at=NOW, received_at=NOW
    )
    for event in (sale(), count):
        assert inventory_events.decode(inventory_events.encode(event)) == event


@pytest.mark.parametrize(
    "overrides",
    [
        {"quantity": 0},
        {"quantity": -1},
        {"tenant": "a/b"},
        {"occurred_at": datetime(2026, 1, 1)},  # noqa: DTZ001 - the naive time is the point
        {"sku": ""},
    ],
)
def test_invalid_fields_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        sale(**overrides)


def test_unknown_fields_and_mutation_are_refused() -> None:
    raw = inventory_events.encode(sale()).replace(b'"sku"', b'"extra":1,"sku"')
    with pytest.raises(ValidationError):
        inventory_events.decode(raw)
    with pytest.raises(ValidationError):
        sale().quantity = 5  # type: ignore[misc]


def test_partition_key_is_tenant_slash_sku() -> None:
    assert partition_key("acme", "SKU/1") == b"acme/SKU/1"
