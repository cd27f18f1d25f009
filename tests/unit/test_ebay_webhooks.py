"""eBay notification signature (ECDSA/SHA-1 via X-EBAY-SIGNATURE) and normalisation (pure, no I/O)."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.ebay import webhooks
from channels.errors import PayloadError
from lab.marketplaces.ebay import order_notification, sample_connection
from tests.channel_kit import json_values, parent_of, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
OTHER = sample_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id="ebay-other")
PEM = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def line(n: int, sku: str = "SKU-1", quantity: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "lineItemId": str(10_000 + n),
        "legacyItemId": CONN.listings[sku].listing_id,
        "sku": sku,
        "quantity": quantity,
        **extra,
    }


def notification(
    items: list[dict[str, Any]], order_id: str = "27-00077-00001"
) -> tuple[bytes, dict[str, str]]:
    return order_notification(CONN, order_id, items, NOW)


def signature_header(private_key: ec.EllipticCurvePrivateKey, body: bytes, **override: Any) -> str:
    """X-EBAY-SIGNATURE built straight from eBay's description, independent of webhooks.sign."""
    der = private_key.sign(body, ec.ECDSA(hashes.SHA1()))  # noqa: S303 - eBay's documented digest
    fields = {"alg": "ecdsa", "kid": "kid-1", "signature": base64.b64encode(der).decode(), "digest": "SHA1"}
    fields.update(override)
    return base64.b64encode(json.dumps(fields).encode()).decode()


def pem_of(private_key: ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_signature_from_the_documented_algorithm_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = b'{"metadata":{"topic":"ORDER_CONFIRMATION"},"notification":{"notificationId":"n-1"}}'
    headers = {"X-EBAY-SIGNATURE": signature_header(key, body)}
    assert webhooks.verify(pem_of(key), body, headers)
    # getPublicKey returns the PEM on one line; header names are case-insensitive in HTTP.
    one_line = "".join(pem_of(key).splitlines())
    assert webhooks.verify(one_line, body, {"x-ebay-signature": headers["X-EBAY-SIGNATURE"]})
    assert not webhooks.verify(pem_of(key), body + b" ", headers)


def test_sign_produces_what_ebay_documents() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = b'{"a": 1}'
    info = json.loads(base64.b64decode(webhooks.sign(key, body, kid="k-9")))
    assert (info["alg"], info["kid"], info["digest"]) == ("ecdsa", "k-9", "SHA1")
    # Raises InvalidSignature (failing the test) unless it is a DER ECDSA/SHA-1 signature over the body.
    key.public_key().verify(
        base64.b64decode(info["signature"]),
        body,
        ec.ECDSA(hashes.SHA1()),  # noqa: S303 - eBay's documented digest
    )


def test_forgeries_are_rejected() -> None:
    body, headers = notification([line(1)])
    assert webhooks.verify(PEM, body, headers)
    flipped = bytes([body[0] ^ 0x01]) + body[1:]
    assert not webhooks.verify(PEM, flipped, headers)
    assert not webhooks.verify(OTHER.webhook_secret.get_secret_value(), body, headers)
    assert not webhooks.verify(PEM, body, {})
    assert not webhooks.verify(PEM, body, {"Content-Type": "application/json"})
    assert not webhooks.verify("not a pem", body, headers)
    assert not webhooks.verify("", body, headers)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "%%% not base64 %%%",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1, 2]").decode(),
        base64.b64encode(b'{"alg": "ecdsa", "kid": "k", "digest": "SHA1"}').decode(),
        base64.b64encode(b'{"alg": "ecdsa", "kid": "k", "digest": "SHA1", "signature": "!!"}').decode(),
    ],
)
def test_malformed_signature_headers_are_rejected(header: str) -> None:
    body, _ = notification([line(1)])
    assert not webhooks.verify(PEM, body, {"X-EBAY-SIGNATURE": header})


@pytest.mark.parametrize("override", [{"alg": "rsa"}, {"digest": "SHA256"}, {"kid": None}])
def test_wrong_algorithm_fields_are_rejected(override: dict[str, Any]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = b"{}"
    headers = {"X-EBAY-SIGNATURE": signature_header(key, body, **override)}
    assert not webhooks.verify(pem_of(key), body, headers)


def test_one_event_per_line_with_stable_ids() -> None:
    body, headers = notification([line(1, "SKU-1", 2), line(2, "SKU-2", 5)])
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert [(e.event_id, e.sku, e.quantity, e.tenant, e.channel) for e in events] == [
        ("ebay-acme:order:27-00077-00001:line:10001", "SKU-1", 2, "acme", "ebay"),
        ("ebay-acme:order:27-00077-00001:line:10002", "SKU-2", 5, "acme", "ebay"),
    ]
    assert {e.occurred_at for e in events} == {NOW}
    assert {(e.order_id, e.connection_id) for e in events} == {("27-00077-00001", "ebay-acme")}
    # A redelivery (new notificationId, later receipt) yields the same event ids.
    again_body, again_headers = notification([line(1, "SKU-1", 2), line(2, "SKU-2", 5)])
    again = webhooks.normalise(CONN, again_body, again_headers, datetime.now(UTC))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_sku_found_by_seller_sku_when_listing_unknown() -> None:
    body, headers = notification([{"lineItemId": "1", "legacyItemId": "999", "sku": "SKU-3", "quantity": 1}])
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-3"]


@pytest.mark.parametrize(
    ("items", "complaint"),
    [
        ([{"lineItemId": "1", "legacyItemId": "999", "sku": "NOPE", "quantity": 1}], "not mapped"),
        ([line(1, quantity=0)], "not a positive whole number"),
        ([line(1, quantity=-2)], "not a positive whole number"),
        ([line(1, quantity=True)], "not a positive whole number"),
        ([line(1, quantity="3")], "not a positive whole number"),
        ([{"lineItemId": "1", "legacyItemId": CONN.listings["SKU-1"].listing_id}], "not a positive whole"),
        ([{"legacyItemId": "1", "quantity": 1}], "lineItemId"),
        (["not an object"], "not a JSON object"),
        ([], "no line items"),
    ],
)
def test_unusable_lines_are_refused_with_a_reason(items: list[Any], complaint: str) -> None:
    body, headers = notification(items)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


def _edited(edit: Any) -> bytes:
    body, _ = notification([line(1)])
    payload = json.loads(body)
    edit(payload)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{nope", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (_edited(lambda p: p["metadata"].update(topic="ITEM_MARKED_SHIPPED")), "not handled"),
        (_edited(lambda p: p.pop("metadata")), "'metadata'"),
        (_edited(lambda p: p.pop("notification")), "'notification'"),
        (_edited(lambda p: p["notification"].update(eventDate="2026-11-23T12:00:00")), "no UTC offset"),
        (_edited(lambda p: p["notification"].update(eventDate="yesterday")), "not an ISO-8601"),
        (_edited(lambda p: p["notification"].update(eventDate=17)), "not an ISO-8601"),
        (_edited(lambda p: p["notification"].update(data=[])), "'notification.data'"),
        (_edited(lambda p: p["notification"]["data"].pop("orderId")), "orderId"),
        (_edited(lambda p: p["notification"]["data"].update(orderId="x" * 500)), "orderId"),
        (_edited(lambda p: p["notification"]["data"].update(lineItems={"a": 1})), "not a list"),
    ],
)
def test_unusable_notifications_are_refused_with_a_reason(body: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, {}, NOW)


JSON = json_values()
REALISTIC = json.loads(notification([line(1, "SKU-1", 2), line(2, "SKU-2", 1)])[0])
PATHS: list[tuple[Any, ...]] = [
    ("metadata",),
    ("metadata", "topic"),
    ("notification",),
    ("notification", "eventDate"),
    ("notification", "data"),
    ("notification", "data", "orderId"),
    ("notification", "data", "lineItems"),
    ("notification", "data", "lineItems", 0),
    ("notification", "data", "lineItems", 0, "lineItemId"),
    ("notification", "data", "lineItems", 0, "legacyItemId"),
    ("notification", "data", "lineItems", 0, "sku"),
    ("notification", "data", "lineItems", 1, "quantity"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    payload = copy.deepcopy(REALISTIC)
    path = draw(st.sampled_from(PATHS))
    parent_of(payload, path)[path[-1]] = draw(JSON)
    return json.dumps(payload).encode()


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), mutated(), st.binary(max_size=64)))
def test_normalise_returns_events_or_payload_error(body: bytes) -> None:
    events = published(lambda: webhooks.normalise(CONN, body, {}, NOW))
    if events is None:
        return
    assert events
    assert all(e.sku in CONN.listings and e.quantity > 0 for e in events)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.binary(max_size=64))
def test_verify_never_raises(header: str, body: bytes) -> None:
    assert webhooks.verify(PEM, body, {"X-EBAY-SIGNATURE": header}) is False
