"""processor.emit: what each decision publishes, with no database (the serialisation the store keeps)."""

from __future__ import annotations

from datetime import UTC, datetime

from processor.emit import Decision, Outcome, emit, invalid
from schemas import processor_dlq, stock_changed, stock_rejected
from schemas.inventory_events import OrderPlaced, StockObserved

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
