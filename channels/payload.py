"""What every channel's webhook parsing needs: headers, JSON bodies, ids, quantities, times, SKU mapping and
the canonical per-line events. Anything unusable is a PayloadError whose message names the field.

One bad line does not sink its neighbours: a line that makes no valid event (its quantity outside
1..MAX_QUANTITY, an id PostgreSQL cannot hold) raises LineRefused, and a channel's per-line loop collects
those with ``Lines``; if any line was refused, the body's normaliser raises LinesRefused, a PayloadError that
carries the events of the other lines (the gateway publishes them and quarantines the body with the refused
lines' reasons). Code that does not collect sees an ordinary PayloadError: the whole body is quarantined,
as before, and nothing is lost either way. Whole-body problems (not JSON, no order id, an unmapped product)
stay plain PayloadErrors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from channels.connection import Connection
from channels.errors import PayloadError
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import OrderCancelled, OrderPlaced

LineEvent = OrderPlaced | OrderCancelled

LISTINGS_HINT = "add it to that connection's listings"
_TOKEN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)


def header(headers: Mapping[str, str], name: str, *, strings_only: bool = False) -> str | None:
    """`name` from `headers`, ignoring case; with `strings_only`, non-string keys and values are absent."""
    value: str | None = headers.get(name)
    if value is None:
        wanted = name.lower()
        items: Iterable[tuple[Any, str]] = headers.items()
        for key, candidate in items:
            if (isinstance(key, str) or not strings_only) and key.lower() == wanted:
                value = candidate
                break
    return value if isinstance(value, str) or not strings_only else None


def load_json(body: bytes) -> Any:
    """`body` as JSON; PayloadError if it is not, or nests too deep to parse."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from exc


def load_object(body: bytes, what: str) -> dict[str, Any]:
    """`body` as a JSON object; PayloadError "body is not <what>: expected a JSON object" otherwise."""
    parsed = load_json(body)
    if not isinstance(parsed, dict):
        raise PayloadError(f"body is not {what}: expected a JSON object")
    return parsed


def require_object(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object; PayloadError "<what> is missing or not a JSON object" otherwise."""
    if not isinstance(value, dict):
        raise PayloadError(f"{what} is missing or not a JSON object")
    return value


def token_id(value: Any, what: str) -> str:
    """`value` (a string or whole number) as text of 1-64 ASCII letters, digits, '.', '_' or '-'."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not _TOKEN_ID.fullmatch(str(value)):
        raise PayloadError(f"{what} {value!r} is not an id (1-64 letters, digits, '.', '_' or '-')")
    return str(value)


def positive_int(value: Any) -> int | None:
    """`value` if it is a whole number above 0 (a JSON integer, not a boolean), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


@dataclass(frozen=True)
class RefusedLine:
    """A line of a body that makes no valid event: where it is ("order 7 line 2") and why, for a person."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class LineRefused(PayloadError):
    """One line makes no valid event. Inside ``Lines.collect()`` only that line is refused; anywhere else it
    is an ordinary PayloadError and refuses the whole body."""

    def __init__(self, where: str, reason: str) -> None:
        self.line = RefusedLine(where, reason)
        super().__init__(str(self.line))


class LinesRefused(PayloadError):
    """Some lines of a body make no valid event: `refused` says which and why; `events` are the events of
    the other lines, good to publish (none if every line was refused)."""

    def __init__(self, events: Sequence[LineEvent], refused: Sequence[RefusedLine]) -> None:
        self.events = list(events)
        self.refused = list(refused)
        lines = "; ".join(map(str, self.refused))
        if self.events:
            lines = (
                f"{len(self.refused)} line(s) refused, the {len(self.events)} event(s) of the other lines "
                f"kept: {lines}"
            )
        super().__init__(lines)


class Lines:
    """The per-line results of one body: the events of the lines that make one, and the lines refused.

        lines = Lines()
        for item in items:
            ...                          # a PayloadError here still refuses the whole body
            with lines.collect():        # a LineRefused here refuses this line only
                lines.events.append(line_event(...))
        return lines.result()            # the events, or LinesRefused if a line was refused

    ``collect()`` also takes in a LinesRefused from a part with lines of its own (a refund of an order, the
    sale a listed cancellation undoes): its events are kept and its refused lines added.
    """

    def __init__(self) -> None:
        self.events: list[LineEvent] = []
        self.refused: list[RefusedLine] = []
        self._collector = _Collect(self)

    def collect(self) -> AbstractContextManager[None, bool]:
        return self._collector

    def _refuse(self, refused: Iterable[RefusedLine]) -> None:
        # A line refused as a sale is refused again as its cancellation (same place, same reason): once.
        self.refused += [r for r in refused if r not in self.refused]

    def __bool__(self) -> bool:
        """Whether any line was seen (made an event or was refused)."""
        return bool(self.events or self.refused)

    def result(self) -> list[LineEvent]:
        """The events; LinesRefused (carrying them) if any line was refused."""
        if self.refused:
            raise LinesRefused(self.events, self.refused)
        return self.events


class _Collect:
    """``Lines.collect()``: a class, not a generator, as it is entered once per line of every webhook."""

    __slots__ = ("_lines",)

    def __init__(self, lines: Lines) -> None:
        self._lines = lines

    def __enter__(self) -> None:
        return None

    def __exit__(self, _kind: object, exc: BaseException | None, _trace: object) -> bool:
        if isinstance(exc, LineRefused):
            self._lines._refuse([exc.line])
            return True
        if isinstance(exc, LinesRefused):
            self._lines.events += exc.events
            self._lines._refuse(exc.refused)
            return True
        return False


def quantity_problem(value: Any, field: str = "quantity") -> str | None:
    """Why `value` is no quantity of one line (a whole number from 1 to MAX_QUANTITY), or None if it is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{field} {value!r} is not a positive whole number (1 to {MAX_QUANTITY})"
    if value > MAX_QUANTITY:
        return f"{field} {value} is above the largest allowed, {MAX_QUANTITY}"
    return None


def positive_quantity(value: Any, where: str, field: str = "quantity") -> int:
    """`value` as a line's quantity, 1 to MAX_QUANTITY; LineRefused "<where>: <field> <value> is ..." (naming
    the allowed range) otherwise."""
    problem = quantity_problem(value, field)
    if problem is not None:
        raise LineRefused(where, problem)
    quantity: int = value
    return quantity


def parse_iso(text: str, what: str, *, assume_utc: bool = False) -> datetime:
    """`text` as an ISO-8601 time; one without a UTC offset is refused, or read as UTC with `assume_utc`."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise PayloadError(f"{what} {text!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None:
        if not assume_utc:
            raise PayloadError(f"{what} {text!r} has no UTC offset")
        return parsed.replace(tzinfo=UTC)
    return parsed


def iso_time(value: Any, what: str) -> datetime:
    """`value` as an ISO-8601 timestamp string with a UTC offset; PayloadError naming `what` otherwise."""
    if not isinstance(value, str):
        raise PayloadError(f"{what} {value!r} is not an ISO-8601 timestamp string")
    return parse_iso(value, what)


def epoch_seconds(value: Any, what: str) -> datetime:
    """`value` (whole Unix seconds above 0) as a UTC time; PayloadError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PayloadError(f"{what} {value!r} is not a Unix timestamp in seconds")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise PayloadError(f"{what} {value!r} is out of range: {exc}") from exc


def unmapped(connection: Connection, what: str, hint: str = LISTINGS_HINT) -> PayloadError:
    """The PayloadError for a line whose product (`what`, e.g. "line 3: sku 'X'") is no master SKU."""
    return PayloadError(f"{what} is not mapped to a master SKU of connection {connection.id!r}; {hint}")


def master_sku(
    connection: Connection, listing_id: str | None, seller_sku: Any, *, what: str, hint: str = LISTINGS_HINT
) -> str:
    """The master SKU listed as `listing_id`, else `seller_sku` if it is one; else raises unmapped(...)."""
    sku = connection.sku_for_listing(listing_id) if listing_id is not None else None
    if sku is None and isinstance(seller_sku, str) and seller_sku in connection.listings:
        sku = seller_sku
    if sku is None:
        raise unmapped(connection, what, hint)
    return sku


def line_event(
    connection: Connection,
    *,
    channel: str,
    order_id: str,
    line_id: str,
    sku: str,
    quantity: int,
    occurred_at: datetime,
    received_at: datetime,
    where: str,
    cancelled: bool = False,
    cancel_id: str | None = None,
) -> OrderPlaced | OrderCancelled:
    """OrderPlaced ``<conn>:order:<o>:line:<l>``, or if `cancelled` its OrderCancelled (id `cancel_id`,
    default ``<conn>:cancel:<o>:line:<l>``: the whole line). A line that makes no valid event raises
    LineRefused "<where>: <field> <value> ..." naming what is wrong (collect it with ``Lines``)."""
    problem = quantity_problem(quantity)
    if problem is not None:
        raise LineRefused(where, problem)
    sale_id = f"{connection.id}:order:{order_id}:line:{line_id}"
    common: dict[str, Any] = {
        "tenant": connection.tenant,
        "sku": sku,
        "quantity": quantity,
        "connection_id": connection.id,
        "channel": channel,
        "order_id": order_id,
        "line_id": line_id,
        "occurred_at": occurred_at,
        "received_at": received_at,
    }
    try:
        if cancelled:
            cancel_id = cancel_id or f"{connection.id}:cancel:{order_id}:line:{line_id}"
            return OrderCancelled(event_id=cancel_id, sale_event_id=sale_id, **common)
        return OrderPlaced(event_id=sale_id, **common)
    except ValidationError as exc:
        raise LineRefused(where, invalid_field(exc)) from exc


_DERIVED = frozenset({"event_id", "sale_event_id"})  # made of the line's own fields: name those instead


def invalid_field(exc: ValidationError) -> str:
    """The first problem of `exc` for a person: the field, the value given and what is wrong with it."""
    errors = exc.errors()
    error = next((e for e in errors if not _DERIVED & set(map(str, e["loc"]))), errors[0])
    field = ".".join(map(str, error["loc"])) or "value"
    given = error.get("input")
    shown = repr(given)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if isinstance(given, str) and "\x00" in given:
        return f"{field} {shown} contains a NUL character, which the database cannot store"
    return f"{field} {shown} is refused: {error['msg']}"
