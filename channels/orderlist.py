"""What every channel's ``orders.list_orders`` shares: the page size a connection asks for, one budgeted
HTTP call that turns every failure into a ChannelError naming the connection, the page's high water, and
how one listed order's events (or its refusal) join the page."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError, error_for_status
from channels.payload import LineEvent, LinesRefused
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch

PAGE_SIZE_OPTION = "orders_page_size"


def page_size(connection: Connection, *, default: int, maximum: int) -> int:
    """Orders per page: the connection's ``options.orders_page_size`` if set (1..`maximum`), else `default`.
    A value that is not a whole number in range raises ValueError naming the connection and the bounds."""
    raw = connection.options.get(PAGE_SIZE_OPTION)
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= maximum:
        raise ValueError(
            f"connection {connection.id!r}: options.{PAGE_SIZE_OPTION} = {raw!r} must be a whole number "
            f"from 1 to {maximum} ({connection.channel}'s largest page); fix it in the connections file"
        )
    return size


def require_aware(since: datetime) -> datetime:
    """`since` itself; ValueError if it has no UTC offset (a channel's time filter needs one)."""
    if since.tzinfo is None:
        raise ValueError(f"since {since.isoformat()} has no UTC offset; pass an aware datetime")
    return since


def _hint(status: int) -> str:
    if status in (401, 403):
        return "check the connection's access token and that it may read orders"
    if status == 429:
        return "over the channel's rate limit; lower the connection's rate_limit_per_s or retry later"
    if status >= 500:
        return "the channel is failing; the next run retries from the same checkpoint"
    return "the request was refused; check the connection's api_base_url and settings"


@dataclass(frozen=True)
class Answer:
    """A successful order-list response: its JSON body (None for an empty one, e.g. 204) and headers."""

    body: Any
    headers: CIMultiDictProxy[str]


async def fetch(
    session: aiohttp.ClientSession,
    connection: Connection,
    method: str,
    url: str,
    *,
    budget: TokenBucket,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    json_body: Any = None,
) -> Answer:
    """One order-list call charged to `budget` first. Anything but a 2xx JSON (or empty) answer raises
    ChannelError naming the connection and what to do (retryable for 429, 409, 5xx and network failures)."""
    await budget.acquire()
    where = f"{connection.channel} order list for connection {connection.id!r}"
    try:
        async with session.request(method, url, headers=headers, params=params, json=json_body) as resp:
            text = await resp.text()
            if not 200 <= resp.status < 300:
                base = error_for_status(
                    connection.channel, resp.status, text, resp.headers.get("Retry-After")
                )
                raise ChannelError(
                    f"{where}: {base}; {_hint(resp.status)}",
                    status=base.status,
                    retryable=base.retryable,
                    retry_after_s=base.retry_after_s,
                )
            answer_headers = resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChannelError(
            f"{where}: {url} could not be reached ({exc!r}); check api_base_url, the next run retries",
            status=None,
            retryable=True,
        ) from exc
    if resp.status == 204 or not text.strip():
        return Answer(None, answer_headers)
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChannelError(
            f"{where}: the answer is not JSON ({exc}): {text[:200]!r}", status=resp.status, retryable=True
        ) from exc
    return Answer(body, answer_headers)


def high_water(times: Iterable[datetime]) -> datetime | None:
    """The newest of `times`, or None if there are none."""
    return max(times, default=None)


def as_json(value: Any) -> bytes:
    """An order as the channel returned it, as JSON bytes for the quarantine topic."""
    return json.dumps(value, sort_keys=True, default=str).encode()


@contextmanager
def one_order(batch: OrderBatch, listed: Any, what: str = "") -> Iterator[list[LineEvent]]:
    """One listed order: add its events to the yielded list (``with one_order(batch, order) as events:
    events += webhooks.order_events(...)``); they join `batch` when the block ends. A PayloadError refuses
    the order: it goes to ``batch.rejected`` with the reason (prefixed with `what`), none of its events kept.
    A LinesRefused keeps the events of its valid lines and rejects the order with the refused lines' reasons,
    so the reconciler publishes those events and quarantines the order beside them."""
    events: list[LineEvent] = []
    try:
        yield events
    except LinesRefused as exc:
        batch.events += [*events, *exc.events]
        batch.rejected.append((as_json(listed), f"{what}{exc}"))
    except PayloadError as exc:
        batch.rejected.append((as_json(listed), f"{what}{exc}"))
    else:
        batch.events += events
