"""What every channel's webhook parsing needs: headers, JSON bodies, ids, quantities, times, SKU mapping and
the canonical per-line events. Anything unusable is a PayloadError whose message names the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from channels.connection import Connection
from channels.errors import PayloadError
from schemas.inventory_events import OrderCancelled, OrderPlaced

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


def positive_quantity(value: Any, where: str, field: str = "quantity") -> int:
    """`value` as a positive whole number; PayloadError "<where>: <field> <value> is not ..." otherwise."""
    quantity = positive_int(value)
    if quantity is None:
        raise PayloadError(f"{where}: {field} {value!r} is not a positive whole number")
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
    default ``<conn>:cancel:<o>:line:<l>``: the whole line). A line that makes no valid event is a
    PayloadError "<where> does not make a valid event: <first problem>"."""
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
        raise PayloadError(f"{where} does not make a valid event: {exc.errors()[0]['msg']}") from exc
