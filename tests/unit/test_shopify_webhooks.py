"""Shopify webhook signature and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from channels.errors import PayloadError
from channels.shopify import webhooks
from channels.shopify.simulator import order_webhook, sample_connection

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SECRET = CONN.webhook_secret.get_secret_value()


def line(n: int, sku: str = "SKU-1", quantity: int = 1, **extra: object) -> dict[str, object]:
    return {
        "id": n,
        "variant_id": int(CONN.listings[sku].listing_id),
        "sku": sku,
        "quantity": quantity,
        **extra,
    }


def test_signature_round_trip_and_forgeries() -> None:
    body, headers = order_webhook(CONN, 1, [line(11)], NOW)
    assert webhooks.verify(SECRET, body, headers)
    assert not webhooks.verify("another-secret", body, headers)
    assert not webhooks.verify(SECRET, body + b" ", headers)
    assert not webhooks.verify(
        SECRET, body, {k: v for k, v in headers.items() if k != webhooks.SIGNATURE_HEADER}
    )


def test_one_event_per_line_with_stable_ids() -> None:
    body, headers = order_webhook(CONN, 77, [line(1, "SKU-1", 2), line(2, "SKU-2", 5)], NOW)
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert [(e.event_id, e.sku, e.quantity, e.tenant) for e in events] == [
        ("shop-acme:order:77:line:1", "SKU-1", 2, "acme"),
        ("shop-acme:order:77:line:2", "SKU-2", 5, "acme"),
    ]
    again = webhooks.normalise(CONN, body, headers, datetime.now(UTC))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_sku_found_by_sku_field_when_variant_unknown() -> None:
    body, headers = order_webhook(
        CONN, 5, [{"id": 1, "variant_id": 999999, "sku": "SKU-3", "quantity": 1}], NOW
    )
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-3"]


@pytest.mark.parametrize(
    ("items", "complaint"),
    [
        ([{"id": 1, "variant_id": 1, "sku": "NOPE", "quantity": 1}], "not mapped"),
        ([line(1, quantity=0)], "not a positive whole number"),
        ([line(1, quantity=-2)], "not a positive whole number"),
        ([{"id": 1, "variant_id": 4001, "sku": "SKU-1"}], "not a positive whole number"),
        ([], "no line items"),
    ],
)
def test_unusable_orders_are_refused_with_a_reason(items: list[dict[str, object]], complaint: str) -> None:
    body, headers = order_webhook(CONN, 9, items, NOW)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


def test_non_json_and_unhandled_topics_are_refused() -> None:
    body, headers = order_webhook(CONN, 9, [line(1)], NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"{nope", headers, NOW)
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(CONN, body, {**headers, webhooks.TOPIC_HEADER: "products/update"}, NOW)
    naive = json.loads(body)
    naive["created_at"] = "2026-11-23T12:00:00"
    with pytest.raises(PayloadError, match="no UTC offset"):
        webhooks.normalise(CONN, json.dumps(naive).encode(), headers, NOW)


def test_absurd_nesting_and_odd_types_are_payload_errors() -> None:
    _body, headers = order_webhook(CONN, 9, [line(1)], NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"[" * 100_000 + b"]" * 100_000, headers, NOW)
    odd = json.dumps(
        {
            "id": 9,
            "created_at": NOW.isoformat(),
            "line_items": [{"id": 1, "variant_id": 999999, "sku": ["SKU-1"], "quantity": 1}],
        }
    ).encode()
    with pytest.raises(PayloadError, match="not mapped"):
        webhooks.normalise(CONN, odd, headers, NOW)
