"""processor.app._observe: a batch's refusals are one log line at INFO (counts and the first few named), each
refusal a line at DEBUG; the metrics count every outcome."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from processor.app import REFUSED_NAMED, _observe
from processor.emit import Outcome, Result
from processor.metrics import ProcessorMetrics
from schemas.inventory_events import OrderPlaced

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _sale(n: int) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"shop-1:order:{n}:line:1",
        tenant="acme",
        sku=f"SKU-{n}",
        quantity=1,
        connection_id="shop-1",
        channel="shopify",
        order_id=str(n),
        line_id="1",
        occurred_at=T0,
        received_at=T0,
    )


def test_refusals_are_one_info_line_naming_the_first_few_and_a_debug_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[Outcome] = [
        "applied",
        "rejected",
        "rejected",
        "unknown_sku",
        "applied",
        "rejected",
        "rejected",
    ]
    results = [Result(_sale(n), outcome, None, None) for n, outcome in enumerate(outcomes)]
    registry = CollectorRegistry()
    with caplog.at_level(logging.DEBUG, logger="processor.app"):
        _observe(results, ProcessorMetrics(registry))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(info) == 1
    assert "4 rejected" in info[0]
    assert "1 unknown_sku" in info[0]
    assert f"and {5 - REFUSED_NAMED} more" in info[0]
    assert "shop-1:order:1:line:1 of acme/SKU-1 (rejected)" in info[0]
    assert len(debug) == 5
    assert registry.get_sample_value("processor_events_total", {"outcome": "rejected"}) == 4
    assert registry.get_sample_value("processor_oversells_prevented_total") == 4


def test_a_batch_with_nothing_refused_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    results = [Result(_sale(n), "applied", None, None) for n in range(3)]
    with caplog.at_level(logging.DEBUG, logger="processor.app"):
        _observe(results, ProcessorMetrics(CollectorRegistry()))
    assert caplog.records == []
