"""BigCommerce webhook authentication and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.bigcommerce import webhooks
from channels.errors import PayloadError
from lab.marketplaces.bigcommerce import order_webhook, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, mutate, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3", "SKU-4"))
SECRET = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
AT = datetime(2026, 11, 23, 11, 59, 30, tzinfo=UTC)


def line(line_id: int, sku: str = "SKU-1", quantity: int = 1, **extra: object) -> dict[str, object]:
    listing = CONN.listings[sku]
    return {
        "id": line_id,
        "order_id": 250,
        "product_id": int(listing.inventory_ref or 0),
        "variant_id": int(listing.listing_id),
        "name": "High-top sneaker",
        "sku": f"bc-{sku}",
        "quantity": quantity,
        **extra,
    }


def hook(scope: str = webhooks.CREATED, *, status: dict[str, int] | None = None) -> dict[str, Any]:
    body, _ = order_webhook(CONN, scope, 250, AT, status=status)
    doc: dict[str, Any] = json.loads(body)
    return doc


def expanded(lines: list[Any], scope: str = webhooks.CREATED, **extra: Any) -> dict[str, Any]:
    return {**hook(scope, status=extra.pop("status", None)), "products": lines, **extra}


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_the_subscription_header_authenticates_and_nothing_else_does() -> None:
    raw, headers = order_webhook(CONN, webhooks.CREATED, 250, AT)
    # BigCommerce sends the subscription's custom headers verbatim: the secret itself is the credential
    assert headers["X-Webhook-Secret"] == SECRET
    assert webhooks.verify(SECRET, raw, headers)
    assert webhooks.verify(SECRET, raw, {"X-Webhook-Secret": SECRET, "X-Other": "x"})
    assert not webhooks.verify("another-secret", raw, headers)
    assert not webhooks.verify(SECRET, raw, {})
    assert not webhooks.verify(SECRET, raw, {"X-Webhook-Secret": ""})
    assert not webhooks.verify(SECRET, raw, {"X-Webhook-Secret": SECRET + " "})
    assert not webhooks.verify(SECRET, raw, {"X-Webhook-Secret": "é" + SECRET[1:]})
    assert not webhooks.verify("", raw, {"X-Webhook-Secret": ""})
    # the body is not signed: a flipped byte still verifies, which is why ids, not trust, absorb replays
    assert webhooks.verify(SECRET, bytes([raw[0] ^ 1]) + raw[1:], headers)


def test_created_orders_yield_one_event_per_product_line() -> None:
    doc = expanded([line(11, "SKU-1", 2), line(12, "SKU-4", 5)])
    events = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.tenant, e.order_id, e.line_id) for e in events] == [
        ("bigcommerce-acme:order:250:line:11", "SKU-1", 2, "acme", "250", "11"),
        ("bigcommerce-acme:order:250:line:12", "SKU-4", 5, "acme", "250", "12"),
    ]
    assert {e.occurred_at for e in events} == {AT}
    assert [e.event_id for e in webhooks.normalise(CONN, body(doc), {}, datetime.now(UTC))] == [
        e.event_id for e in events
    ]


@pytest.mark.parametrize("new_status", [4, 5])
def test_refunded_or_cancelled_orders_restock_every_line(new_status: int) -> None:
    status = {"previous_status_id": 11, "new_status_id": new_status}
    doc = expanded([line(11, "SKU-2", 3)], webhooks.STATUS_UPDATED, status=status)
    [event] = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert isinstance(event, OrderCancelled)
    assert (event.event_id, event.sale_event_id, event.sku, event.quantity) == (
        "bigcommerce-acme:cancel:250:line:11",
        "bigcommerce-acme:order:250:line:11",
        "SKU-2",
        3,
    )


@pytest.mark.parametrize(
    "doc",
    [
        hook(webhooks.STATUS_UPDATED, status={"previous_status_id": 11, "new_status_id": 2}),
        hook("store/order/updated"),
        hook("store/order/archived"),
    ],
)
def test_order_changes_that_do_not_move_stock_yield_nothing(doc: dict[str, Any]) -> None:
    assert webhooks.normalise(CONN, body(doc), {}, NOW) == []


def test_the_sku_field_is_a_fallback_only_when_it_is_a_master_sku() -> None:
    doc = expanded([{"id": 1, "variant_id": 99999, "sku": "SKU-3", "quantity": 1}])
    assert [e.sku for e in webhooks.normalise(CONN, body(doc), {}, NOW)] == ["SKU-3"]


def test_a_thin_webhook_must_be_expanded_first() -> None:
    with pytest.raises(PayloadError, match="expand"):
        webhooks.normalise(CONN, body(hook()), {}, NOW)


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        (expanded([{"id": 1, "variant_id": 1, "sku": "NOPE", "quantity": 1}]), "not mapped"),
        (expanded([line(1, quantity=0)]), "not a positive whole number"),
        (expanded([line(1, quantity=-1)]), "not a positive whole number"),
        (expanded([{**line(1), "quantity": "1"}]), "not a positive whole number"),
        (expanded([{**line(1), "quantity": 1.0}]), "not a positive whole number"),
        (expanded([]), "no product lines"),
        (expanded([line(1), line(1)]), "appears twice"),
        (expanded([line(1, order_id=251)]), "belongs to order"),
        (expanded([line(1)], created_at="2026-11-23T12:00:00"), "not a Unix timestamp"),
        (expanded([line(1)], created_at=-5), "not a Unix timestamp"),
        (expanded([line(1)], scope="store/product/updated"), "not handled"),
        (expanded([line(1)], data={"type": "product", "id": 250}), "not an order reference"),
        (expanded([line(1)], data={"type": "order", "id": None}), "not an id"),
        (expanded([line(1)], webhooks.STATUS_UPDATED, data={"type": "order", "id": 250}), "new_status_id"),
        (expanded(["x"]), "not an object"),
        (expanded({"id": 1}), "no product lines"),  # type: ignore[arg-type]
    ],
)
def test_unusable_webhooks_are_refused_with_a_reason(doc: dict[str, Any], complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body(doc), {}, NOW)


@pytest.mark.parametrize("raw", [b"{nope", b"\xff", b'"order"', b"[" * 100_000])
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        webhooks.normalise(CONN, raw, {}, NOW)


JSON = json_values(max_text=12, max_key=10, max_leaves=25)


def _normalises_or_refuses(raw: bytes) -> None:
    events = published(lambda: webhooks.normalise(CONN, raw, {}, NOW))
    if events is None:
        return
    assert isinstance(events, list)


@settings(max_examples=300, deadline=None, database=None)
@given(JSON)
def test_arbitrary_json_never_escapes_as_anything_but_payload_error(doc: object) -> None:
    _normalises_or_refuses(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None, database=None)
@given(st.data(), st.sampled_from([None, 4, 5]))
def test_mutated_real_webhooks_never_escape_as_anything_but_payload_error(
    data: st.DataObject, cancel: int | None
) -> None:
    scope, status = (
        (webhooks.CREATED, None)
        if cancel is None
        else (webhooks.STATUS_UPDATED, {"previous_status_id": 11, "new_status_id": cancel})
    )
    doc = expanded([line(11, "SKU-1", 2), line(12, "SKU-3", 1)], scope, status=status)
    mutate(data, doc, JSON)
    _normalises_or_refuses(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_payload_error(raw: bytes) -> None:
    _normalises_or_refuses(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([webhooks.SECRET_HEADER, "X-Other", "Authorization"]), st.text(max_size=60)
    ),
    st.binary(max_size=64),
)
def test_verify_never_raises_and_accepts_only_the_secret(headers: dict[str, str], raw: bytes) -> None:
    assert webhooks.verify(SECRET, raw, headers) is (headers.get(webhooks.SECRET_HEADER) == SECRET)
