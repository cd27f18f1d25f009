"""processor.emit: what each decision publishes, with no database (the serialisation the store keeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from allocation.rules import Policy
from processor.emit import Decision, Outcome, emit, invalid
from schemas import processor_dlq, stock_changed, stock_rejected
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import OrderPlaced, StockObserved
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SALE = OrderPlaced(
    event_id="shop-1:order:1:line:1",
    tenant="acme",
    sku="SKU-1",
    quantity=2,
    connection_id="shop-1",
    channel="shopify",
    order_id="1",
    line_id="1",
    occurred_at=T0,
    received_at=T0,
)


def test_an_applied_sale_publishes_the_new_count_at_its_version() -> None:
    result = emit(Decision(SALE, "applied", after=8, version=3), now=T0)
    assert result.topic == stock_changed.TOPIC
    assert result.payload is not None
    changed = stock_changed.decode(result.payload)
    assert (changed.available, changed.version, changed.cause_event_id) == (8, 3, SALE.event_id)
    assert result.key == b"acme/SKU-1"


def test_a_refused_sale_publishes_a_rejection_naming_why() -> None:
    cases: list[tuple[Outcome, str]] = [("rejected", "out_of_stock"), ("unknown_sku", "unknown_sku")]
    for outcome, reason in cases:
        result = emit(Decision(SALE, outcome, after=1, version=3), now=T0)
        assert result.topic == stock_rejected.TOPIC
        assert result.payload is not None
        assert stock_rejected.decode(result.payload).reason == reason


def test_what_changes_nothing_publishes_nothing() -> None:
    observed = StockObserved(
        event_id="shop-1:observed:1",
        tenant="acme",
        sku="SKU-1",
        quantity=4,
        connection_id="shop-1",
        channel="shopify",
        occurred_at=T0,
        received_at=T0,
    )
    for decision in (Decision(SALE, "stale"), Decision(SALE, "ignored"), Decision(observed, "observed")):
        result = emit(decision)
        assert (result.topic, result.payload) == (None, None)


def test_an_invalid_event_publishes_its_dead_letter_with_the_raw_record() -> None:
    result = invalid(SALE, "the database refused it: X")
    assert result.topic == processor_dlq.TOPIC
    assert result.payload is not None
    letter = processor_dlq.decode(result.payload)
    assert (letter.problem, letter.event_id, letter.reason) == (
        "invalid",
        SALE.event_id,
        "the database refused it: X",
    )


# Generated decisions: the serialised records equal what the schemas' own models make, byte for byte.
def _stamps() -> st.SearchStrategy[datetime]:
    zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))])
    # hypothesis takes naive bounds and attaches one of `zones` to each value it draws
    lo, hi = datetime(2000, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001
    return st.datetimes(min_value=lo, max_value=hi, timezones=zones)


_text = st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=3, max_size=30)


@st.composite
def _sales(draw: st.DrawFn) -> OrderPlaced:
    return OrderPlaced(
        event_id=draw(_text),
        tenant=draw(st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,10}\Z")),
        sku=draw(_text),
        quantity=draw(st.integers(1, MAX_QUANTITY)),
        connection_id=draw(_text),
        channel="shopify",
        order_id=draw(_text),
        line_id=draw(_text),
        occurred_at=draw(_stamps()),
        received_at=draw(_stamps()),
    )


@given(
    sale=_sales(),
    outcome=st.sampled_from(["applied", "rejected", "unknown_sku"]),
    after=st.integers(0, MAX_QUANTITY),
    version=st.integers(1, 2**62),
    policy=st.sampled_from(["mirror", "never_cancel"]),
    now=_stamps(),
)
def test_records_are_the_bytes_the_schema_models_make(
    sale: OrderPlaced, outcome: Outcome, after: int, version: int, policy: Policy, now: datetime
) -> None:
    result = emit(Decision(sale, outcome, after=after, version=version), policy=policy, now=now)
    assert result.payload is not None
    expected: StockChanged | StockRejected
    if outcome == "applied":
        expected = StockChanged(
            tenant=sale.tenant,
            sku=sale.sku,
            available=after,
            version=version,
            cause_event_id=sale.event_id,
            origin_connection_id=sale.connection_id,
            occurred_at=sale.occurred_at,
            received_at=sale.received_at,
            committed_at=now,
            policy=policy,
        )
        assert stock_changed.decode(result.payload) == expected
    else:
        expected = StockRejected(
            tenant=sale.tenant,
            sku=sale.sku,
            requested=sale.quantity,
            available=after,
            version=version,
            reason="unknown_sku" if outcome == "unknown_sku" else "out_of_stock",
            cause_event_id=sale.event_id,
            origin_connection_id=sale.connection_id,
            order_id=sale.order_id,
            occurred_at=sale.occurred_at,
            received_at=sale.received_at,
            rejected_at=now,
            policy=policy,
        )
        assert stock_rejected.decode(result.payload) == expected
    assert result.payload == expected.model_dump_json().encode()
