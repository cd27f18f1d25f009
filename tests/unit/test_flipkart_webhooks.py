"""Flipkart notification signatures (invented body signature, published FKLOGIN) and normalisation."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.errors import PayloadError
from channels.flipkart import webhooks
from lab.marketplaces.flipkart import sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, mutate, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
SECRET = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
SHIPMENT = "d133588f-b0ac-443b-99b4-7ac8648a0f89"


def item(item_id: str, sku: str = "SKU-1", quantity: int = 1, **extra: object) -> dict[str, object]:
    listing = CONN.listings[sku]
    return {
        "orderItemId": item_id,
        "orderId": "OD108833803073636000",
        "cancellationGroupId": f"grp{item_id}",
        "orderDate": "2026-11-23T17:15:57.000+05:30",
        "paymentType": "COD",
        "status": "APPROVED",
        "quantity": quantity,
        "fsn": listing.inventory_ref,
        "sku": listing.listing_id,
        "listingId": f"LST{listing.inventory_ref}",
        "title": "Lamp",
        **extra,
    }


def created(items: list[Any], **extra: object) -> dict[str, Any]:
    return {
        "eventType": "shipment_created",
        "source": "flipkart",
        "version": "v3",
        "locationId": "LOC1234",
        "timestamp": "2026-11-23T17:16:01+05:30",
        "shipmentId": SHIPMENT,
        "attributes": {"hold": False, "mps": False, "orderItems": items},
        **extra,
    }


def cancelled(items: list[Any], shipment_items: list[Any] | None = None, **extra: object) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "eventType": "shipment_cancelled",
        "source": "flipkart",
        "version": "v3",
        "timestamp": "2026-11-23T18:12:15+05:30",
        "locationId": "LOC1234",
        "shipmentId": SHIPMENT,
        "attributes": {"status": "CANCELLED", "orderItems": items},
        **extra,
    }
    if shipment_items is not None:
        doc["shipment"] = {"shipmentId": SHIPMENT, "orderItems": shipment_items}
    return doc


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def signed(raw: bytes, at: datetime = NOW, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(at.timestamp()))
    # the invented scheme: hex HMAC-SHA256(secret, "<unix seconds>." + raw body)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return {"X-Flipkart-Timestamp": stamp, "X-Flipkart-Signature": digest}


def test_the_body_signature_is_checked_with_a_replay_window() -> None:
    raw = body(created([item("1")]))
    headers = signed(raw)
    assert webhooks.sign(SECRET, headers["X-Flipkart-Timestamp"], raw) == headers["X-Flipkart-Signature"]
    assert webhooks.verify(SECRET, raw, headers, now=NOW)
    assert webhooks.verify(SECRET, raw, headers, now=NOW + timedelta(minutes=4, seconds=59))
    assert not webhooks.verify(SECRET, raw, headers, now=NOW + timedelta(minutes=5, seconds=1))  # stale
    assert not webhooks.verify(SECRET, raw, headers, now=NOW - timedelta(minutes=6))  # from the future
    assert not webhooks.verify(SECRET, bytes([raw[0] ^ 1]) + raw[1:], headers, now=NOW)
    assert not webhooks.verify("another-secret", raw, headers, now=NOW)
    assert not webhooks.verify(SECRET, raw, signed(raw, secret="another-secret"), now=NOW)
    for missing in headers:
        assert not webhooks.verify(SECRET, raw, {k: v for k, v in headers.items() if k != missing}, now=NOW)
    for stamp in ("", "-1", "1.5", "١٧٩٥", "9" * 40, " 1795"):
        assert not webhooks.verify(SECRET, raw, {**headers, "X-Flipkart-Timestamp": stamp}, now=NOW)
    assert not webhooks.verify(SECRET, raw, {**headers, "X-Flipkart-Signature": "é"}, now=NOW)
    assert webhooks.verify(SECRET, raw, signed(raw, at=datetime.now(UTC)))  # now defaults to the clock


def test_the_published_fklogin_scheme_is_available_for_the_gateway() -> None:
    date, url, method = "Mon, 23 Nov 2026 12:00:00 GMT", "https://hooks.example.com/flipkart", "POST"
    # Flipkart: X_Authorization = FKLOGIN base64(app_id + ":" + hex SHA-1(date + url + method + secret))
    digest = hashlib.sha1((date + url + method + "app-secret").encode()).hexdigest()  # noqa: S324
    token = base64.b64encode(f"app-1:{digest}".encode()).decode()
    headers = {"X_Date": date, "X_Authorization": f"FKLOGIN {token}"}
    assert webhooks.fklogin_header("app-1", "app-secret", date, url, method) == headers["X_Authorization"]
    assert webhooks.verify_fklogin("app-1", "app-secret", url, method, headers, now=NOW)
    assert not webhooks.verify_fklogin("app-1", "app-secret", url + "/x", method, headers, now=NOW)
    assert not webhooks.verify_fklogin("app-2", "app-secret", url, method, headers, now=NOW)
    assert not webhooks.verify_fklogin("app-1", "wrong", url, method, headers, now=NOW)
    assert not webhooks.verify_fklogin(
        "app-1", "app-secret", url, method, headers, now=NOW + timedelta(minutes=6)
    )
    naive = datetime(2026, 11, 23, 12, 0)  # noqa: DTZ001 - a naive clock must fail closed, not raise
    assert not webhooks.verify_fklogin("app-1", "app-secret", url, method, headers, now=naive)
    for broken in (
        {"X_Date": date},
        {"X_Authorization": headers["X_Authorization"]},
        {**headers, "X_Date": "yesterday"},
        {**headers, "X_Authorization": token},
        {**headers, "X_Authorization": "FKLOGIN ***"},
        {**headers, "X_Authorization": "FKLOGIN é"},
    ):
        assert not webhooks.verify_fklogin("app-1", "app-secret", url, method, broken, now=NOW)


def test_created_shipments_yield_one_event_per_order_item() -> None:
    doc = created([item("1883380307363600", "SKU-1", 2), item("1883380307363601", "SKU-3")])
    events = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.order_id, e.line_id) for e in events] == [
        (
            "flipkart-acme:order:OD108833803073636000:line:1883380307363600",
            "SKU-1",
            2,
            "OD108833803073636000",
            "1883380307363600",
        ),
        (
            "flipkart-acme:order:OD108833803073636000:line:1883380307363601",
            "SKU-3",
            1,
            "OD108833803073636000",
            "1883380307363601",
        ),
    ]
    assert {e.occurred_at for e in events} == {datetime(2026, 11, 23, 17, 15, 57, tzinfo=IST)}
    assert {e.tenant for e in events} == {"acme"}


def test_an_item_without_order_date_takes_the_notification_time() -> None:
    doc = created([item("1", orderDate=None)])
    [event] = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert event.occurred_at == datetime(2026, 11, 23, 17, 16, 1, tzinfo=IST)


def test_an_expanded_cancellation_restocks_the_cancelled_quantity() -> None:
    doc = cancelled(
        [{"orderItemId": "6452425382623300", "quantity": 1, "reason": "seller_cancellation"}],
        [item("6452425382623300", "SKU-2", 3), item("6452425382623301", "SKU-1")],
    )
    [event] = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert isinstance(event, OrderCancelled)
    assert (event.event_id, event.sale_event_id, event.sku, event.quantity) == (
        "flipkart-acme:cancel:OD108833803073636000:line:6452425382623300",
        "flipkart-acme:order:OD108833803073636000:line:6452425382623300",
        "SKU-2",
        1,
    )
    assert event.occurred_at == datetime(2026, 11, 23, 18, 12, 15, tzinfo=IST)


def test_a_thin_cancellation_must_be_expanded_first() -> None:
    with pytest.raises(PayloadError, match="expand"):
        webhooks.normalise(CONN, body(cancelled([{"orderItemId": "1", "quantity": 1}])), {}, NOW)


@pytest.mark.parametrize("event", ["shipment_packed", "shipment_delivered", "return_completed"])
def test_notifications_that_do_not_move_stock_yield_nothing(event: str) -> None:
    assert webhooks.normalise(CONN, body({"eventType": event, "attributes": {}}), {}, NOW) == []


def test_the_seller_sku_may_be_the_master_sku_itself() -> None:
    doc = created([item("1", sku="SKU-2") | {"sku": "SKU-2"}])
    assert [e.sku for e in webhooks.normalise(CONN, body(doc), {}, NOW)] == ["SKU-2"]


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        (created([item("1") | {"sku": "NOPE"}]), "not mapped"),
        (created([item("1", quantity=0)]), "not a positive whole number"),
        (created([item("1") | {"quantity": "1"}]), "not a positive whole number"),
        (created([item("1") | {"quantity": None}]), "not a positive whole number"),
        (created([]), "no orderItems"),
        (created(["1"]), "not an object"),
        (created([item("1"), item("1")]), "appears twice"),
        (created([item("1") | {"orderId": None}]), "orderId"),
        (created([item("1") | {"orderItemId": "1/2"}]), "not an id"),
        (created([item("1", orderDate="2026-11-23T17:15:57")]), "no UTC offset"),
        (created([item("1", orderDate="soon")]), "not an ISO-8601"),
        (created([item("1", orderDate=None)], timestamp=None), "not an ISO-8601"),
        (created([item("1")], eventType="order_item_created"), "not handled"),
        (created([item("1")], eventType=["shipment_created"]), "not handled"),
        (created([item("1")], attributes=[]), "no orderItems"),
        (cancelled([{"orderItemId": "9", "quantity": 1}], [item("1")]), "not in the attached shipment"),
        (cancelled([{"orderItemId": "1", "quantity": 0}], [item("1")]), "not a positive whole number"),
        (cancelled([{"orderItemId": "1", "quantity": 1}], [item("1")], timestamp="later"), "ISO-8601"),
        (
            cancelled([{"orderItemId": "1", "quantity": 1}], [item("1")], shipmentId="other"),
            "not the notified",
        ),
        (cancelled([{"orderItemId": "1", "quantity": 1}], [{"orderItemId": None}]), "not an id"),
    ],
)
def test_unusable_notifications_are_refused_with_a_reason(doc: dict[str, Any], complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body(doc), {}, NOW)


@pytest.mark.parametrize("raw", [b"{nope", b"\xc3\x28", b"null", b"[" * 100_000])
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        webhooks.normalise(CONN, raw, {}, NOW)


JSON = json_values(max_text=12, max_key=10, max_leaves=25)
REAL = [
    created([item("11", "SKU-1", 2), item("12", "SKU-2")]),
    cancelled([{"orderItemId": "11", "quantity": 1}], [item("11", "SKU-1", 2), item("12", "SKU-2")]),
]


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
@given(st.data(), st.sampled_from(REAL))
def test_mutated_real_notifications_never_escape_as_anything_but_payload_error(
    data: st.DataObject, real: dict[str, Any]
) -> None:
    doc = copy.deepcopy(real)
    mutate(data, doc, JSON)
    _normalises_or_refuses(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200), st.text(max_size=20), st.text(max_size=70))
def test_verify_never_raises(raw: bytes, stamp: str, signature: str) -> None:
    headers = {"X-Flipkart-Timestamp": stamp, "X-Flipkart-Signature": signature}
    assert webhooks.verify(SECRET, raw, headers, now=NOW) in (True, False)
    fk = {"X_Date": stamp, "X_Authorization": f"FKLOGIN {signature}"}
    assert webhooks.verify_fklogin("app-1", "s", "https://x", "POST", fk, now=NOW) in (True, False)
    _normalises_or_refuses(raw)
