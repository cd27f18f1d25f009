"""Amazon SNS signature and ORDER_CHANGE normalisation (pure functions, no I/O).

The signing vectors are built here from the documented algorithm (string to sign assembled by hand,
PKCS#1 v1.5 with SHA1/SHA256 from ``cryptography``), with a key and certificate made by this module.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.amazon import webhooks
from channels.errors import PayloadError
from lab.marketplaces.amazon import (
    AmazonSimulator,
    SnsSigner,
    order_change_notification,
    sample_connection,
    sns_subscription_confirmation,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, published

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TS = "2026-11-23T12:00:00.000Z"


def make_identity(cn: str) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


KEY, CERT = make_identity("sns.us-east-1.amazonaws.com")
OTHER_KEY, OTHER_CERT = make_identity("sns.eu-west-1.amazonaws.com")
CONN = sample_connection(
    "http://127.0.0.1:1",
    skus=("SKU-1", "SKU-2", "SKU-3"),
    signer=SnsSigner(KEY, CERT, "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"),
)
TOPIC = CONN.options["sns_topic_arn"]
SELLER = CONN.options["seller_id"]


def item(n: int, sku: str = "SKU-1", quantity: int = 1, **extra: object) -> dict[str, object]:
    return {
        "OrderItemId": f"5550000000000{n}",
        "SellerSKU": CONN.listings[sku].listing_id,
        "SupplySourceId": None,
        "Quantity": quantity,
        "QuantityShipped": 0,
        "IsBuyerRequestedCancel": False,
        **extra,
    }


def notification(status: str = "Unshipped", items: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    return order_change_notification(
        seller_id=SELLER,
        marketplace_id="ATVPDKIKX0DER",
        amazon_order="113-5573831-8921017",
        status=status,
        items=items if items is not None else [item(1)],
        purchased_at=NOW - timedelta(minutes=3),
        changed_at=NOW - timedelta(minutes=1),
        **kw,
    )


def signed(
    message: str,
    *,
    version: str = "2",
    key: rsa.RSAPrivateKey = KEY,
    timestamp: str = TS,
    subject: str | None = None,
    topic: str = TOPIC,
) -> tuple[bytes, dict[str, str]]:
    """An SNS Notification signed by hand: "name\\nvalue\\n" in byte order, PKCS#1 v1.5 RSA."""
    message_id = str(uuid.uuid4())
    to_sign = f"Message\n{message}\nMessageId\n{message_id}\n"
    if subject is not None:
        to_sign += f"Subject\n{subject}\n"
    to_sign += f"Timestamp\n{timestamp}\nTopicArn\n{topic}\nType\nNotification\n"
    # SignatureVersion 1 is SHA1withRSA by definition; SNS still sends it by default.
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    signature = base64.b64encode(key.sign(to_sign.encode(), padding.PKCS1v15(), digest)).decode()
    envelope: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": message,
        "Timestamp": timestamp,
        "SignatureVersion": version,
        "Signature": signature,
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    if subject is not None:
        envelope["Subject"] = subject
    headers = {
        "x-amz-sns-message-type": "Notification",
        "x-amz-sns-message-id": message_id,
        "x-amz-sns-topic-arn": topic,
        "Content-Type": "text/plain; charset=UTF-8",
    }
    return json.dumps(envelope).encode(), headers


def unsigned(message: Any, **envelope: Any) -> tuple[bytes, dict[str, str]]:
    """An SNS envelope for normalise (which runs after verify and does not re-check the signature)."""
    body = {"Type": "Notification", "MessageId": "m-1", "TopicArn": TOPIC, "Timestamp": TS, **envelope}
    body["Message"] = message if isinstance(message, str) else json.dumps(message)
    return json.dumps(body).encode(), {"x-amz-sns-message-type": str(body["Type"])}


MESSAGE = json.dumps(notification())


# --- signature ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_hand_signed_vectors_are_accepted(version: str) -> None:
    body, headers = signed(MESSAGE, version=version)
    assert webhooks.verify(CERT, body, headers, now=NOW)


def test_subject_is_signed_when_present() -> None:
    body, headers = signed(MESSAGE, subject="ORDER_CHANGE")
    assert webhooks.verify(CERT, body, headers, now=NOW)
    without = json.loads(body)
    del without["Subject"]
    assert not webhooks.verify(CERT, json.dumps(without).encode(), headers, now=NOW)


def test_sign_matches_the_hand_built_string() -> None:
    body, _ = signed(MESSAGE, version="1")
    envelope = json.loads(body)
    # PKCS#1 v1.5 is deterministic: the same key and string give the same signature.
    assert webhooks.sign(KEY, envelope) == envelope["Signature"]


def test_forgeries_and_malformed_requests_are_refused() -> None:
    body, headers = signed(MESSAGE)
    assert not webhooks.verify(OTHER_CERT, body, headers, now=NOW)
    flipped = bytearray(body)
    at = body.index(b"Unshipped")
    flipped[at] = ord("u")
    assert not webhooks.verify(CERT, bytes(flipped), headers, now=NOW)
    tampered = json.loads(body)
    tampered["Message"] = tampered["Message"].replace('"Quantity": 1', '"Quantity": 9')
    assert tampered["Message"] != json.loads(body)["Message"]
    assert not webhooks.verify(CERT, json.dumps(tampered).encode(), headers, now=NOW)
    assert not webhooks.verify(CERT, body[:-1], headers, now=NOW)
    assert not webhooks.verify(CERT, body, {}, now=NOW)
    assert not webhooks.verify(
        CERT, body, {k: v for k, v in headers.items() if k != "x-amz-sns-message-type"}, now=NOW
    )
    assert not webhooks.verify(
        CERT, body, {**headers, "x-amz-sns-message-type": "SubscriptionConfirmation"}, now=NOW
    )
    assert not webhooks.verify(
        CERT, body, {**headers, "x-amz-sns-topic-arn": "arn:aws:sns:x:1:other"}, now=NOW
    )
    assert not webhooks.verify("not a certificate", body, headers, now=NOW)
    assert not webhooks.verify("", body, headers, now=NOW)
    assert not webhooks.verify(CERT, b"[" * 100_000 + b"]" * 100_000, headers, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("SignatureVersion", "3"),
        ("SignatureVersion", None),
        ("Signature", "***not base64***"),
        ("Signature", ""),
        ("Timestamp", "yesterday"),
        ("Timestamp", "2026-11-23T12:00:00"),
        ("Type", "Surprise"),
        ("MessageId", 7),
    ],
)
def test_bad_envelope_fields_are_refused(field: str, value: object) -> None:
    body, headers = signed(MESSAGE)
    envelope = json.loads(body)
    envelope[field] = value
    assert not webhooks.verify(CERT, json.dumps(envelope).encode(), headers, now=NOW)


def test_version_must_match_the_hash_used() -> None:
    body, headers = signed(MESSAGE, version="1")
    envelope = json.loads(body)
    envelope["SignatureVersion"] = "2"
    assert not webhooks.verify(CERT, json.dumps(envelope).encode(), headers, now=NOW)


def test_replay_window_is_five_minutes_either_way() -> None:
    body, headers = signed(MESSAGE)
    assert webhooks.verify(CERT, body, headers, now=NOW + timedelta(minutes=4, seconds=59))
    assert webhooks.verify(CERT, body, headers, now=NOW - timedelta(minutes=4, seconds=59))
    assert not webhooks.verify(CERT, body, headers, now=NOW + timedelta(minutes=5, seconds=1))
    assert not webhooks.verify(CERT, body, headers, now=NOW - timedelta(minutes=5, seconds=1))
    assert not webhooks.verify(CERT, body, headers, now=datetime(2026, 11, 23, 12, 0))  # noqa: DTZ001


def test_rotation_any_pinned_certificate_verifies_and_headers_are_case_insensitive() -> None:
    body, headers = signed(MESSAGE, key=OTHER_KEY)
    assert webhooks.verify(CERT + OTHER_CERT, body, headers, now=NOW)
    assert not webhooks.verify(CERT, body, headers, now=NOW)
    shouted = {k.title(): v for k, v in headers.items()}
    assert webhooks.verify(OTHER_CERT, body, shouted, now=NOW)


def test_signed_subscription_confirmation_passes_verify_and_normalise_explains() -> None:
    signer = SnsSigner(KEY, CERT, "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem")
    body, headers = sns_subscription_confirmation(signer, TOPIC, NOW, signature_version="1")
    assert webhooks.verify(CERT, body, headers, now=NOW)
    assert not webhooks.verify(OTHER_CERT, body, headers, now=NOW)
    url = json.loads(body)["SubscribeURL"]
    with pytest.raises(PayloadError, match="confirm the subscription") as info:
        webhooks.normalise(CONN, body, headers, NOW)
    assert url in str(info.value)
    stranger, stranger_headers = sns_subscription_confirmation(signer, "arn:aws:sns:us-east-1:1:theirs", NOW)
    with pytest.raises(PayloadError, match="do not confirm"):
        webhooks.normalise(CONN, stranger, stranger_headers, NOW)


def test_simulator_notifications_verify_with_the_connection_secret() -> None:
    sim = AmazonSimulator(access_token="")
    conn = sample_connection("http://127.0.0.1:1", skus=("SKU-1",))
    sim.adopt(conn, initial=5)
    body, headers = sim.place_order(conn, 42, [("SKU-1", 2)], NOW)
    assert webhooks.verify(conn.webhook_secret.get_secret_value(), body, headers, now=NOW)
    assert sim.available["AZ-SKU-1"] == 3
    assert [e.sku for e in webhooks.normalise(conn, body, headers, NOW)] == ["SKU-1"]


# --- normalisation -----------------------------------------------------------------------------------------


def test_one_sale_per_item_with_stable_ids() -> None:
    message = notification(items=[item(1, "SKU-1", 2), item(2, "SKU-2", 5)])
    body, headers = signed(json.dumps(message))
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.tenant, e.channel) for e in events] == [
        ("amazon-acme:order:113-5573831-8921017:line:55500000000001", "SKU-1", 2, "acme", "amazon"),
        ("amazon-acme:order:113-5573831-8921017:line:55500000000002", "SKU-2", 5, "acme", "amazon"),
    ]
    assert {e.occurred_at for e in events} == {NOW - timedelta(minutes=3)}  # PurchaseDate
    assert {e.received_at for e in events} == {NOW}
    pending = webhooks.normalise(CONN, *unsigned(notification("Pending", message_items(message))), NOW)
    assert [e.event_id for e in pending] == [e.event_id for e in events]


def message_items(message: dict[str, Any]) -> list[Any]:
    items: list[Any] = message["Payload"]["OrderChangeNotification"]["Summary"]["OrderItems"]
    return items


def test_cancellation_restocks_each_sale() -> None:
    body, headers = unsigned(notification("Canceled", [item(1, "SKU-3", 4)]))
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, OrderCancelled)
    assert event.event_id == "amazon-acme:cancel:113-5573831-8921017:line:55500000000001"
    assert event.sale_event_id == "amazon-acme:order:113-5573831-8921017:line:55500000000001"
    assert (event.sku, event.quantity, event.occurred_at) == ("SKU-3", 4, NOW - timedelta(minutes=1))


def test_buyer_cancel_request_is_not_a_cancellation() -> None:
    message = notification(
        "Unshipped", [item(1, IsBuyerRequestedCancel=True)], change_type="BuyerRequestedChange"
    )
    events = webhooks.normalise(CONN, *unsigned(message), NOW)
    assert [type(e) for e in events] == [OrderPlaced]


@pytest.mark.parametrize("status", sorted(webhooks.NO_STOCK_CHANGE_STATUSES))
def test_statuses_that_move_no_stock_give_no_events(status: str) -> None:
    assert webhooks.normalise(CONN, *unsigned(notification(status)), NOW) == []


def test_fba_orders_give_no_events() -> None:
    assert webhooks.normalise(CONN, *unsigned(notification(fulfillment_type="AFN")), NOW) == []


def test_master_sku_is_accepted_as_seller_sku_when_no_listing_matches() -> None:
    body, headers = unsigned(notification(items=[item(1) | {"SellerSKU": "SKU-2"}]))
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-2"]


def test_missing_purchase_date_falls_back_to_the_change_time() -> None:
    message = notification()
    message["Payload"]["OrderChangeNotification"]["Summary"]["PurchaseDate"] = None
    [event] = webhooks.normalise(CONN, *unsigned(message), NOW)
    assert event.occurred_at == NOW - timedelta(minutes=1)


def _set(path: tuple[str, ...], value: object) -> dict[str, Any]:
    message = notification()
    target: Any = message
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return message


_DELETE = object()
_CHANGE = ("Payload", "OrderChangeNotification")
_SUMMARY = (*_CHANGE, "Summary")


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (notification(items=[item(1) | {"SellerSKU": "NOPE"}]), "not mapped"),
        (notification(items=[item(1) | {"SellerSKU": None}]), "SellerSKU"),
        (notification(items=[item(1, quantity=0)]), "not a positive whole number"),
        (notification(items=[item(1, quantity=-2)]), "not a positive whole number"),
        (notification(items=[item(1) | {"Quantity": "2"}]), "not a positive whole number"),
        (notification(items=[item(1) | {"Quantity": True}]), "not a positive whole number"),
        (notification(items=[{"OrderItemId": "1", "SellerSKU": "AZ-SKU-1"}]), "not a positive whole number"),
        (notification(items=[{"SellerSKU": "AZ-SKU-1", "Quantity": 1}]), "OrderItemId"),
        (notification(items=["item"]), "not an object"),
        (notification(items=[]), "OrderItems is missing or empty"),
        (notification("Exploded"), "not a known Amazon order status"),
        (_set((*_SUMMARY, "PurchaseDate"), "2026-11-23T12:00:00"), "no UTC offset"),
        (_set((*_SUMMARY, "PurchaseDate"), "soon"), "not an ISO-8601"),
        (_set((*_SUMMARY, "OrderItems"), _DELETE), "OrderItems"),
        (_set(_SUMMARY, _DELETE), "Summary"),
        (_set((*_CHANGE, "AmazonOrderId"), 113), "AmazonOrderId"),
        (_set((*_CHANGE, "SellerId"), "A0THERSELLER00"), "not this connection's seller"),
        (_set(_CHANGE, _DELETE), "OrderChangeNotification"),
        (_set(("Payload",), []), "OrderChangeNotification"),
        (_set(("NotificationType",), "ANY_OFFER_CHANGED"), "only ORDER_CHANGE"),
        ([1, 2], "expected a JSON object"),
        ("{not json", "not JSON"),
    ],
)
def test_unusable_notifications_are_refused_with_a_reason(message: Any, complaint: str) -> None:
    body, headers = unsigned(message)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{nope", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (json.dumps({"Type": "Notification", "TopicArn": TOPIC}).encode(), "Message is missing"),
        (
            json.dumps({"Type": "Notification", "TopicArn": TOPIC, "Message": 5}).encode(),
            "Message is missing",
        ),
        (json.dumps({"Type": "Notification", "TopicArn": "arn:x"}).encode(), "not this connection's topic"),
        (json.dumps({"Type": "Weird", "TopicArn": TOPIC}).encode(), "not handled"),
        (
            json.dumps({"Type": "UnsubscribeConfirmation", "TopicArn": TOPIC, "SubscribeURL": "u"}).encode(),
            "unsubscribed",
        ),
    ],
)
def test_unusable_envelopes_are_refused_with_a_reason(body: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, {}, NOW)


def test_a_connection_without_a_pinned_topic_refuses_notifications() -> None:
    loose = CONN.model_copy(
        update={"options": {k: v for k, v in CONN.options.items() if k != "sns_topic_arn"}}
    )
    with pytest.raises(PayloadError, match="sns_topic_arn"):
        webhooks.normalise(loose, *unsigned(notification()), NOW)


# --- fuzz ------------------------------------------------------------------------------------------------

JSON = json_values()
REALISTIC = notification(items=[item(1, "SKU-1", 2), item(2, "SKU-2", 1)])
KEYS = st.sampled_from(
    [
        "Payload",
        "OrderChangeNotification",
        "Summary",
        "OrderItems",
        "OrderStatus",
        "Quantity",
        "SellerSKU",
        "OrderItemId",
        "AmazonOrderId",
        "PurchaseDate",
        "OrderChangeTrigger",
        "TimeOfOrderChange",
        "EventTime",
        "NotificationType",
        "SellerId",
        "FulfillmentType",
    ]
)


def _mutate(value: Any, key: str, replacement: Any, delete: bool) -> bool:
    """Replace (or delete) the first `key` found depth-first in `value`; True if one was found."""
    if isinstance(value, dict):
        if key in value:
            if delete:
                del value[key]
            else:
                value[key] = replacement
            return True
        return any(_mutate(v, key, replacement, delete) for v in value.values())
    if isinstance(value, list):
        return any(_mutate(v, key, replacement, delete) for v in value)
    return False


def _outcome(body: bytes) -> None:
    headers = {"x-amz-sns-message-type": "Notification"}
    events = published(lambda: webhooks.normalise(CONN, body, headers, NOW))
    if events is None:
        return
    assert all(isinstance(e, OrderPlaced | OrderCancelled) for e in events)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(JSON)
def test_fuzz_arbitrary_bodies_and_messages(value: Any) -> None:
    _outcome(json.dumps(value).encode())
    _outcome(unsigned(value)[0])
    if isinstance(value, dict):
        _outcome(json.dumps({"Type": "Notification", "TopicArn": TOPIC, **value}).encode())


@FUZZ
@given(st.lists(st.tuples(KEYS, JSON, st.booleans()), min_size=1, max_size=4))
def test_fuzz_mutated_realistic_notifications(mutations: list[tuple[str, Any, bool]]) -> None:
    message = copy.deepcopy(REALISTIC)
    for key, replacement, delete in mutations:
        _mutate(message, key, replacement, delete)
    _outcome(unsigned(message)[0])


@FUZZ
@given(st.binary(max_size=200), st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=4))
def test_fuzz_verify_never_raises(body: bytes, headers: dict[str, str]) -> None:
    assert webhooks.verify(CERT, body, headers, now=NOW) is False


@FUZZ
@given(KEYS | st.sampled_from(["Signature", "Timestamp", "Type", "Message"]), JSON)
def test_fuzz_verify_on_mutated_envelopes(key: str, replacement: Any) -> None:
    body, headers = signed(MESSAGE)
    envelope = json.loads(body)
    envelope[key] = replacement
    original = json.loads(body).get(key)
    result = webhooks.verify(CERT, json.dumps(envelope).encode(), headers, now=NOW)
    if key in ("Signature", "Timestamp", "Type", "Message") and replacement != original:
        assert result is False
    else:
        assert isinstance(result, bool)
