"""What the channel tests share: JSON fuzz strategies and payload mutation, simulators served on loopback
with a connection pointed at them, a clock that only moves when told, and what a normaliser's outcome
publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from hypothesis import strategies as st

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.payload import LinesRefused
from lab.marketplaces.serve import serve
from schemas.inventory_events import ChannelEvent


def json_values(
    *, max_text: int = 20, max_key: int = 12, max_leaves: int = 20, allow_nan: bool = False
) -> st.SearchStrategy[Any]:
    """Any JSON document: scalars (strings up to `max_text`) in lists and objects of at most 4 entries."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=allow_nan)
    return st.recursive(
        scalars | st.text(max_size=max_text),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=max_key), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def paths(node: object, prefix: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    """Every path (keys and list indexes) in `node`, depth first, starting with the empty one."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    """The list or object in `doc` that holds the value at the (non-empty) `path`."""
    for step in path[:-1]:
        doc = doc[step]
    return doc


def mutate(data: st.DataObject, doc: Any, values: st.SearchStrategy[Any]) -> None:
    """Delete one member of `doc` (at a drawn path, if an object holds it) or replace it by a drawn value."""
    path = data.draw(st.sampled_from([p for p in paths(doc) if p]))
    parent = parent_of(doc, path)
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(values)


class FrozenClock:
    """A monotonic clock that only moves when told: budgets are then exact, not timing-dependent."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Simulator(Protocol):
    def app(self) -> web.Application: ...


class AdoptingSimulator(Simulator, Protocol):
    def adopt(self, connection: Connection, *, initial: int) -> None: ...


class SampleConnection(Protocol):
    def __call__(self, base_url: str, *, skus: tuple[str, ...]) -> Connection: ...


Served = AsyncIterator[tuple[Connection, aiohttp.ClientSession]]


@asynccontextmanager
async def serving(simulator: Simulator, draft: Connection) -> Served:
    """`simulator` served on loopback: `draft` pointed at it, and a client session (both closed on exit)."""
    async with serve(simulator.app()) as base_url, aiohttp.ClientSession() as session:
        yield draft.model_copy(update={"api_base_url": base_url}), session


@asynccontextmanager
async def serving_sample(
    simulator: AdoptingSimulator, sample_connection: SampleConnection, skus: tuple[str, ...], *, initial: int
) -> Served:
    """`simulator` served on loopback, stocking `initial` units of each of `skus` of the sample connection to
    it: that connection, and a client session (both closed on exit)."""
    async with serve(simulator.app()) as base_url, aiohttp.ClientSession() as session:
        connection = sample_connection(base_url, skus=skus)
        simulator.adopt(connection, initial=initial)
        yield connection, session


async def assert_burst_is_throttled(client: Any, simulator: Any, requests: int) -> None:
    """Fire `requests` reads at once through a `client` whose budget exceeds the channel's: some must be
    refused 429, retryable with a Retry-After, and the simulator must have counted exactly those."""
    results = await asyncio.gather(
        *(client.get_available(["SKU-1"]) for _ in range(requests)), return_exceptions=True
    )
    throttled = [r for r in results if isinstance(r, ChannelError)]
    assert throttled, "every request of the burst was served"
    assert all(e.status == 429 and e.retryable and e.retry_after_s for e in throttled)
    assert simulator.rate_limited == len(throttled)


def published(normalise: Callable[[], Sequence[ChannelEvent]]) -> Sequence[ChannelEvent] | None:
    """What the gateway publishes of a body: the normaliser's events; with some lines refused (LinesRefused)
    the other lines' events, after checking each refused line says where and why; None if the whole body is
    quarantined (a PayloadError, or every line refused)."""
    try:
        return normalise()
    except LinesRefused as exc:
        refused = exc
    except PayloadError:
        return None
    assert refused.refused, "LinesRefused without a refused line"
    assert all(r.where and r.reason for r in refused.refused), refused.refused
    return refused.events or None
