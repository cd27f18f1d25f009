"""One bad line does not sink its neighbours: the payload helpers that refuse a line (and only that line), and
every channel's normaliser given an order with one line of 3,000,000,000 units (above PostgreSQL's integer)
and one valid line: the valid line's event comes out, the other line is refused with a reason that names the
field, the value and the range."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from channels.errors import PayloadError
from channels.payload import (
    LineRefused,
    Lines,
    LinesRefused,
    RefusedLine,
    line_event,
    positive_quantity,
    quantity_problem,
)
from channels.registry import SPECS
from lab.local.process import free_port
from lab.marketplaces import BUILDERS
from lab.marketplaces.serve import serve
from lab.marketplaces.shopify import sample_connection
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import OrderPlaced

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TOO_MANY = 3_000_000_000
CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2"))


def sale(line_id: str, quantity: int, **extra: Any) -> OrderPlaced:
    event = line_event(
        CONN,
        channel="shopify",
        order_id="7",
        line_id=line_id,
        sku="SKU-1",
        quantity=quantity,
        occurred_at=NOW,
        received_at=NOW,
        where=f"line {line_id}",
        **extra,
    )
    assert isinstance(event, OrderPlaced)
    return event


# -- the helpers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1, None),
        (MAX_QUANTITY, None),
        (MAX_QUANTITY + 1, f"quantity {MAX_QUANTITY + 1} is above the largest allowed, {MAX_QUANTITY}"),
        (TOO_MANY, f"quantity 3000000000 is above the largest allowed, {MAX_QUANTITY}"),
        (0, f"quantity 0 is not a positive whole number (1 to {MAX_QUANTITY})"),
        (-2, f"quantity -2 is not a positive whole number (1 to {MAX_QUANTITY})"),
        ("3", f"quantity '3' is not a positive whole number (1 to {MAX_QUANTITY})"),
        (1.0, f"quantity 1.0 is not a positive whole number (1 to {MAX_QUANTITY})"),
        (True, f"quantity True is not a positive whole number (1 to {MAX_QUANTITY})"),
        (None, f"quantity None is not a positive whole number (1 to {MAX_QUANTITY})"),
    ],
)
def test_a_quantity_is_a_whole_number_from_1_to_the_largest_integer(value: Any, problem: str | None) -> None:
    assert quantity_problem(value) == problem
    if problem is None:
        assert positive_quantity(value, "line 2") == value
    else:
        with pytest.raises(LineRefused) as refused:
            positive_quantity(value, "line 2")
        assert refused.value.line == RefusedLine("line 2", problem)
        assert str(refused.value) == f"line 2: {problem}"


def test_line_event_refuses_a_line_it_cannot_make_naming_field_value_and_range() -> None:
    assert sale("1", MAX_QUANTITY).quantity == MAX_QUANTITY
    with pytest.raises(
        LineRefused, match=f"^line 2: quantity 3000000000 is above the largest allowed, {MAX_QUANTITY}$"
    ):
        sale("2", TOO_MANY)
    with pytest.raises(LineRefused) as refused:
        sale("a\x00b", 1)  # PostgreSQL text cannot hold a NUL
    assert refused.value.line.where == "line a\x00b"
    assert refused.value.line.reason == (
        "line_id 'a\\x00b' contains a NUL character, which the database cannot store"
    )
    assert isinstance(refused.value, PayloadError)  # outside Lines.collect() it refuses the whole body


def test_lines_keep_the_good_lines_and_name_each_refused_one() -> None:
    lines = Lines()
    assert not lines
    for line_id, quantity in (("1", 2), ("2", TOO_MANY), ("3", 0), ("4", 1)):
        with lines.collect():
            lines.events.append(sale(line_id, quantity))
    assert lines
    with pytest.raises(LinesRefused) as raised:
        lines.result()
    exc = raised.value
    assert [e.line_id for e in exc.events] == ["1", "4"]
    assert [r.where for r in exc.refused] == ["line 2", "line 3"]
    assert str(exc) == (
        "2 line(s) refused, the 2 event(s) of the other lines kept: "
        f"line 2: quantity 3000000000 is above the largest allowed, {MAX_QUANTITY}; "
        f"line 3: quantity 0 is not a positive whole number (1 to {MAX_QUANTITY})"
    )


def test_lines_without_a_refusal_are_just_the_events_and_other_errors_pass_through() -> None:
    lines = Lines()
    with lines.collect():
        lines.events.append(sale("1", 2))
    assert [e.line_id for e in lines.result()] == ["1"]
    with pytest.raises(PayloadError, match="not mapped"), lines.collect():
        raise PayloadError("line 9: sku 'X' is not mapped")  # a whole-body problem is not collected


def test_a_part_with_refused_lines_is_merged_and_a_line_refused_twice_is_named_once() -> None:
    part = Lines()
    with part.collect():
        part.events.append(sale("1", 2))
    with part.collect():
        part.events.append(sale("2", TOO_MANY))
    whole = Lines()
    for _ in range(2):  # e.g. a listed cancellation: the sale pass and the cancellation pass
        with whole.collect():
            whole.events += part.result()
    with pytest.raises(LinesRefused) as raised:
        whole.result()
    assert [e.line_id for e in raised.value.events] == ["1", "1"]
    assert raised.value.refused == [
        RefusedLine("line 2", f"quantity 3000000000 is above the largest allowed, {MAX_QUANTITY}")
    ]


def test_every_line_refused_carries_no_events_and_reads_as_the_lines_reasons() -> None:
    lines = Lines()
    with lines.collect():
        lines.events.append(sale("1", 0))
    with pytest.raises(LinesRefused, match=r"^line 1: quantity 0 is not a positive whole number") as raised:
        lines.result()
    assert raised.value.events == []


# -- every channel's normaliser ------------------------------------------------------------------------------


def _in_message(mutate: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Amazon: the order is inside the SNS envelope's Message (a JSON string)."""

    def apply(doc: dict[str, Any]) -> None:
        message = json.loads(doc["Message"])
        mutate(message["Payload"]["OrderChangeNotification"]["Summary"]["OrderItems"][0])
        doc["Message"] = json.dumps(message)

    return apply


def _first(
    *path: str | int, key: str = "quantity", value: Any = TOO_MANY
) -> Callable[[dict[str, Any]], None]:
    """Sets `key` of the first line (at `path` in the expanded body) to `value`."""

    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for step in path:
            node = node[step]
        node[key] = value

    return apply


# How to give the SKU-1 line of each channel's (expanded) body 3,000,000,000 units.
TOO_LARGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "shopify": _first("line_items", 0),
    "amazon": _in_message(lambda item: item.update(Quantity=TOO_MANY)),
    "ebay": _first("notification", "data", "lineItems", 0),
    "etsy": _first("receipt", "transactions", 0),
    "woocommerce": _first("line_items", 0),
    "walmart": _first("payload", "orderLines", 0, "quantity", key="measurementValue", value=str(TOO_MANY)),
    "tiktok": _first("order", "line_items", 0),  # a line without quantity is one unit; this one says more
    "bigcommerce": _first("products", 0),
    "flipkart": _first("attributes", "orderItems", 0),
}


def test_every_channel_is_covered() -> None:
    assert set(TOO_LARGE) == set(SPECS) == set(BUILDERS)


async def _expanded(channel: str) -> tuple[Any, bytes, dict[str, str]]:
    """A signed order of 2 x SKU-1 and 1 x SKU-2 from the channel's simulator, expanded if the channel is
    thin (its simulator serves the order on loopback)."""
    make_connection, make_simulator = BUILDERS[channel]
    port = free_port()
    connection = make_connection(
        f"http://127.0.0.1:{port}", skus=("SKU-1", "SKU-2"), conn_id=f"{channel}-b", tenant="acme"
    )
    simulator = make_simulator(connection)
    body, headers = simulator.place_order(connection, 77, [("SKU-1", 2), ("SKU-2", 1)], NOW)
    expand = SPECS[channel].expand
    if expand is not None:
        async with serve(simulator.app(), port=port), aiohttp.ClientSession() as session:
            body = await expand(session, connection, body, headers)
    return connection, body, headers


@pytest.mark.parametrize("channel", sorted(TOO_LARGE))
def test_each_channel_refuses_only_the_line_above_the_largest_quantity(channel: str) -> None:
    connection, body, headers = asyncio.run(_expanded(channel))
    normalise = SPECS[channel].normalise
    fine = normalise(connection, body, headers, NOW)
    assert sorted((e.sku, e.quantity) for e in fine if e.sku == "SKU-2") == [("SKU-2", 1)]

    doc = json.loads(body)
    TOO_LARGE[channel](doc)
    with pytest.raises(LinesRefused) as raised:
        normalise(connection, json.dumps(doc).encode(), headers, NOW)
    exc = raised.value
    [refused] = exc.refused
    field = "Quantity" if channel == "amazon" else "quantity"  # the channel's own name for it
    assert refused.reason == f"{field} 3000000000 is above the largest allowed, {MAX_QUANTITY}"
    assert refused.where  # names the line: "line 7701", "order 77 line 1", "transaction 1", ...
    assert exc.events, "the valid line was lost with the bad one"
    assert {e.sku for e in exc.events} <= {"SKU-1", "SKU-2"}
    assert ("SKU-2", 1) in {(e.sku, e.quantity) for e in exc.events}
    assert all(e.quantity <= MAX_QUANTITY for e in exc.events)
