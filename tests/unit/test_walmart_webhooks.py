"""Walmart event-notification HMAC check and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.errors import PayloadError
from channels.walmart import webhooks
from lab.marketplaces.walmart import notification, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, parent_of, published

CONN = sample_connection("https://marketplace.walmartapis.com", skus=("SKU-1", "SKU-2", "SKU-3"))
SECRET = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PARTNER = CONN.options["partner_id"]


def line(n: int, sku: str = "SKU-1", quantity: Any = "1", status: str = "CREATED") -> dict[str, Any]:
    """An order line as Walmart's order events document it (seller SKU, numeric-string quantity)."""
    return {
        "lineNumber": str(n),
        "sku": CONN.listings[sku].listing_id,
        "productName": sku,
        "quantity": {"unitOfMeasure": "EACH", "measurementValue": quantity},
        "status": status,
        "statusDate": "2026-11-23T11:59:00.000Z",
    }


def po(po_id: str = "1796277083022", lines: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "partnerId": PARTNER,
        "purchaseOrderId": po_id,
        "customerOrderId": "200012345678",
        "orderDate": "2026-11-23T11:58:30.000Z",
        "orderLines": [line(1)] if lines is None else lines,
        **extra,
    }


def event(event_type: str, payload: Any, at: datetime = NOW) -> tuple[bytes, dict[str, str]]:
    return notification(CONN, event_type, payload, at)


def envelope(body: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(body)
    return loaded


# -- signature -------------------------------------------------------------------------------------------


def test_signature_matches_an_independent_computation_of_the_documented_algorithm() -> None:
    body = b'{"source":{"eventType":"PO_CREATED"},"payload":{}}'
    digest = hmac.new(b"client-secret", body, hashlib.sha256).digest()
    as_base64 = base64.b64encode(digest).decode()
    assert webhooks.verify("client-secret", body, {"Authorization": as_base64})
    assert webhooks.sign("client-secret", body) == as_base64
    # the encoding is unpublished: hex (either case) is accepted as well
    assert webhooks.verify("client-secret", body, {"authorization": digest.hex()})
    assert webhooks.verify("client-secret", body, {"Authorization": digest.hex().upper()})
    assert not webhooks.verify("client-secret", body, {"Authorization": hashlib.sha256(body).hexdigest()})


def test_signature_round_trip_and_forgeries() -> None:
    body, headers = event("PO_CREATED", po())
    assert webhooks.verify(SECRET, body, headers)
    flipped = body[:10] + bytes([body[10] ^ 0x01]) + body[11:]
    assert not webhooks.verify(SECRET, flipped, headers)
    assert not webhooks.verify("another-secret", body, headers)
    assert not webhooks.verify("", body, headers)
    assert not webhooks.verify(SECRET, body, {"Content-Type": "application/json"})
    assert not webhooks.verify(SECRET, body, {webhooks.AUTH_HEADER: ""})
    assert not webhooks.verify(
        SECRET, body, {webhooks.AUTH_HEADER: "Bearer " + headers[webhooks.AUTH_HEADER]}
    )
    assert not webhooks.verify(SECRET, body, {webhooks.AUTH_HEADER: "ÿ not ascii"})


def test_no_signed_timestamp_means_no_replay_window() -> None:
    """Walmart signs no time: a week-old delivery still verifies, whatever `now` is (documented)."""
    body, headers = event("PO_CREATED", po(), NOW - timedelta(days=7))
    assert webhooks.verify(SECRET, body, headers, now=NOW)


# -- normalisation ---------------------------------------------------------------------------------------


def test_po_created_gives_one_sale_per_line_with_stable_ids_and_mapped_skus() -> None:
    payload = po("1796277083022", [line(1, "SKU-1", "2"), line(2, "SKU-3", "1")])
    body, headers = event("PO_CREATED", payload)
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.order_id, e.line_id) for e in events] == [
        ("walmart-acme:order:1796277083022:line:1", "SKU-1", 2, "1796277083022", "1"),
        ("walmart-acme:order:1796277083022:line:2", "SKU-3", 1, "1796277083022", "2"),
    ]
    assert {(e.tenant, e.connection_id, e.channel) for e in events} == {("acme", "walmart-acme", "walmart")}
    assert {e.occurred_at for e in events} == {datetime(2026, 11, 23, 11, 58, 30, tzinfo=UTC)}
    # Walmart's second and third attempts carry the same body; a re-sent event (new eventId) the same ids
    again_body, again_headers = event("PO_CREATED", payload, NOW + timedelta(minutes=5))
    assert envelope(again_body)["source"]["eventId"] != envelope(body)["source"]["eventId"]
    again = webhooks.normalise(CONN, again_body, again_headers, NOW + timedelta(minutes=5))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_without_an_order_date_the_event_time_is_used() -> None:
    payload = {k: v for k, v in po().items() if k != "orderDate"}
    (sale,) = webhooks.normalise(CONN, *event("PO_CREATED", payload), NOW)
    assert sale.occurred_at == NOW


def test_orders_api_line_shape_and_master_sku_fallback_are_accepted() -> None:
    orders_api_line = {
        "lineNumber": "4",
        "item": {"productName": "thing", "sku": "SKU-2"},  # master SKU used as seller SKU
        "orderLineQuantity": {"unitOfMeasurement": "EACH", "amount": "3"},
    }
    payload = po(lines={"orderLine": [orders_api_line]}, orderDate=1795000000000)
    (sale,) = webhooks.normalise(CONN, *event("PO_CREATED", payload), NOW)
    assert (sale.sku, sale.quantity, sale.line_id) == ("SKU-2", 3, "4")
    assert sale.occurred_at == datetime.fromtimestamp(1795000000, tz=UTC)


def test_auto_cancelled_lines_restock_and_other_lines_are_skipped() -> None:
    payload = po("77", [line(1, "SKU-1", "2", "CANCELLED"), line(2, "SKU-2", "1", "Acknowledged")])
    body, headers = event("PO_LINE_AUTOCANCELLED", payload, NOW + timedelta(days=4))
    events = webhooks.normalise(CONN, body, headers, NOW)
    cancels = [e for e in events if isinstance(e, OrderCancelled)]
    assert len(cancels) == len(events) == 1
    (cancel,) = cancels
    assert (cancel.event_id, cancel.sale_event_id, cancel.sku, cancel.quantity) == (
        "walmart-acme:cancel:77:line:1",
        "walmart-acme:order:77:line:1",
        "SKU-1",
        2,
    )
    assert cancel.occurred_at == NOW + timedelta(days=4)  # eventTime, not the order date


def test_order_updates_envelope_is_routed_by_sub_event_type() -> None:
    sale = {"subEventType": "PO_CREATED", "order": po("9")}
    assert [e.event_id for e in webhooks.normalise(CONN, *event("ORDER_UPDATES", sale), NOW)] == [
        "walmart-acme:order:9:line:1"
    ]
    fraud = {"meta": {"subEventType": "FRAUD_CANCEL"}, "order": po("9", [line(1, status="Cancelled")])}
    (cancel,) = webhooks.normalise(CONN, *event("ORDER_UPDATES", fraud), NOW)
    assert isinstance(cancel, OrderCancelled)
    assert cancel.sale_event_id == "walmart-acme:order:9:line:1"


def test_intent_to_cancel_changes_nothing_yet() -> None:
    assert webhooks.normalise(CONN, *event("INTENT_TO_CANCEL", po()), NOW) == []
    assert webhooks.normalise(CONN, *event("ORDER_UPDATES", {"subEventType": "INTENT_TO_CANCEL"}), NOW) == []


@pytest.mark.parametrize(
    ("event_type", "payload", "complaint"),
    [
        ("PO_CREATED", po(lines=[{**line(1), "sku": "UNKNOWN"}]), "not mapped"),
        ("PO_CREATED", po(lines=[{**line(1), "sku": ["WM-SKU-1"]}]), "not mapped"),
        ("PO_CREATED", po(lines=[line(1, quantity="0")]), "not a positive whole number"),
        ("PO_CREATED", po(lines=[line(1, quantity="-1")]), "not a positive whole number"),
        ("PO_CREATED", po(lines=[line(1, quantity="1.5")]), "not a positive whole number"),
        ("PO_CREATED", po(lines=[line(1, quantity="²")]), "not a positive whole number"),
        ("PO_CREATED", po(lines=[line(1, quantity=True)]), "not a positive whole number"),
        ("PO_CREATED", po(lines=[{k: v for k, v in line(1).items() if k != "quantity"}]), "positive whole"),
        ("PO_CREATED", po(lines=[{k: v for k, v in line(1).items() if k != "lineNumber"}]), "lineNumber"),
        ("PO_CREATED", po(lines=["WM-SKU-1"]), "not an object"),
        ("PO_CREATED", po(lines=[]), "no order lines"),
        ("PO_CREATED", po(orderDate="2026-11-23T11:58:30"), "no UTC offset"),
        ("PO_CREATED", po(orderDate="soon"), "not an ISO-8601 timestamp"),
        ("PO_CREATED", po(orderDate=10**30), "epoch-milliseconds"),
        ("PO_CREATED", po(purchaseOrderId=None), "purchaseOrderId"),
        ("PO_CREATED", po(purchaseOrderId="../x"), "purchaseOrderId"),
        ("PO_CREATED", po(partnerId="99999999"), "partnerId"),
        ("PO_CREATED", {k: v for k, v in po().items() if k != "orderLines"}, "no 'orderLines' list"),
        ("PO_CREATED", [po()], "'payload' is missing or not a JSON object"),
        ("PO_LINE_AUTOCANCELLED", po(lines=[line(1, status="SHIPPED")]), "no cancelled lines"),
        ("OFFER_UNPUBLISHED", po(), "not handled"),
        ("ORDER_UPDATES", {"subEventType": "SHIPPED", "order": po()}, "not handled"),
        (
            "ORDER_UPDATES",
            {"subEventType": "PO_CREATED", "order": "9"},
            "'payload.order' is missing or not a JSON object",
        ),
    ],
)
def test_unusable_events_are_refused_with_a_reason(event_type: str, payload: Any, complaint: str) -> None:
    body, headers = event(event_type, payload)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


def test_non_json_and_envelope_problems_are_refused() -> None:
    _, headers = event("PO_CREATED", po())
    for body, complaint in [
        (b"{nope", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[]", "not a Walmart notification: expected a JSON object"),
        (b'{"payload": {}}', "'source' is missing or not a JSON object"),
        (b'{"source": {"eventType": "PO_CREATED"}}', "'payload' is missing or not a JSON object"),
    ]:
        with pytest.raises(PayloadError, match=complaint):
            webhooks.normalise(CONN, body, headers, NOW)


# -- nothing but PayloadError escapes --------------------------------------------------------------------

JSON = json_values(max_key=10, allow_nan=True)
KINDS = st.sampled_from(["PO_CREATED", "PO_LINE_AUTOCANCELLED", "INTENT_TO_CANCEL", "ORDER_UPDATES", "X"])


def _outcome(body: bytes) -> None:
    events = published(lambda: webhooks.normalise(CONN, body, {}, NOW))
    if events is None:
        return
    assert isinstance(events, list)
    assert all(isinstance(e, OrderPlaced | OrderCancelled) for e in events)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(payload=JSON, kind=KINDS, wrapped=st.booleans())
def test_arbitrary_json_either_normalises_or_is_a_payload_error(
    payload: Any, kind: str, wrapped: bool
) -> None:
    document = {"source": {"eventType": kind, "eventTime": "2026-11-23T12:00:00Z"}, "payload": payload}
    _outcome(json.dumps(document if wrapped else payload).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(
        [
            ("source", "eventType"),
            ("source", "eventTime"),
            ("payload", "purchaseOrderId"),
            ("payload", "orderDate"),
            ("payload", "partnerId"),
            ("payload", "orderLines"),
            ("payload", "orderLines", 0, "lineNumber"),
            ("payload", "orderLines", 0, "sku"),
            ("payload", "orderLines", 0, "status"),
            ("payload", "orderLines", 0, "quantity"),
            ("payload", "orderLines", 0, "quantity", "measurementValue"),
            ("payload", "orderLines", 1),
        ]
    ),
    value=JSON,
    kind=st.sampled_from(["PO_CREATED", "PO_LINE_AUTOCANCELLED"]),
)
def test_mutated_real_events_either_normalise_or_are_payload_errors(
    path: tuple[Any, ...], value: Any, kind: str
) -> None:
    payload = po("5", [line(1, "SKU-1", "2", "CANCELLED"), line(2, "SKU-2", "1", "CANCELLED")])
    document = copy.deepcopy(envelope(event(kind, payload)[0]))
    parent_of(document, path)[path[-1]] = value
    _outcome(json.dumps(document).encode())


@settings(max_examples=200)
@given(body=st.binary(max_size=200), presented=st.text(max_size=60))
def test_arbitrary_bytes_and_headers_never_crash_verify_or_normalise(body: bytes, presented: str) -> None:
    assert webhooks.verify(SECRET, body, {webhooks.AUTH_HEADER: presented}) is False
    _outcome(body)
