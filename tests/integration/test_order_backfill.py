"""Every channel's order-list backfill against its simulator: the same event ids as the webhooks, `since`
honoured, a wrong token refused, every HTTP call charged to the budget. Simulators on loopback only."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import aiohttp
import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from channels.connection import Connection
from channels.errors import ChannelError
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.registry import SPECS
from channels.spec import OrderBatch
from lab.marketplaces import BUILDERS, Marketplace, marketplaces
from schemas.inventory_events import OrderCancelled, OrderPlaced

pytestmark = pytest.mark.integration

SKUS = ("BF-TEE", "BF-MUG", "BF-CAP")
PAGE = 3
ORDERS = 7  # three pages of PAGE
STEP = timedelta(seconds=1)

Event = OrderPlaced | OrderCancelled


class CountingBudget(TokenBucket):
    """The channel's budget with a burst of one, so pacing is visible; counts acquisitions and waits."""

    def __init__(self, rate_per_s: float) -> None:
        super().__init__(rate_per_s, 1.0)
        self.acquired = 0
        self.waited = 0.0

    async def acquire(self, n: float = 1.0) -> float:
        waited = await super().acquire(n)
        self.acquired += 1
        self.waited += waited
        return waited


@dataclass
class Charges:
    """Checks, as each request leaves the session, that a budget acquisition paid for it."""

    budget: CountingBudget
    requests: int = 0
    unpaid: list[str] = field(default_factory=list)

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_start(
            _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
        ) -> None:
            self.requests += 1
            if self.requests > self.budget.acquired:
                self.unpaid.append(f"{params.method} {params.url}")

        config.on_request_start.append(on_start)
        return config


def paged(connection: Connection) -> Connection:
    return connection.model_copy(update={"options": {**connection.options, PAGE_SIZE_OPTION: str(PAGE)}})


def key(event: Event) -> tuple[str, str, str, int]:
    return (type(event).__name__, event.event_id, event.sku, event.quantity)


async def webhook_events(
    session: aiohttp.ClientSession, market: Marketplace, body: bytes, raw_headers: dict[str, str]
) -> list[Event]:
    """What the gateway makes of one order's webhook: verify, expand if the channel's are thin, normalise."""
    adapter, connection = SPECS[market.channel], market.connection
    headers = CIMultiDict(raw_headers)
    assert adapter.verify_for(connection)(connection.webhook_secret.get_secret_value(), body, headers)
    if adapter.expand is not None:
        body = await adapter.expand(session, connection, body, headers)
    events = adapter.normalise(connection, body, headers, datetime.now(UTC))
    assert all(isinstance(e, OrderPlaced | OrderCancelled) for e in events), "orders only"
    return [e for e in events if isinstance(e, OrderPlaced | OrderCancelled)]


async def backfill(
    session: aiohttp.ClientSession, connection: Connection, since: datetime, budget: TokenBucket
) -> list[OrderBatch]:
    source = SPECS[connection.channel].list_orders
    received_at = datetime.now(UTC)
    return [b async for b in source(session, connection, since, budget=budget, received_at=received_at)]


def budget_for(channel: str) -> CountingBudget:
    rate: float = importlib.import_module(f"channels.{channel}").RATE_LIMIT_PER_S
    return CountingBudget(rate)


@pytest.fixture
def t0() -> datetime:
    """A minute ago, taken when the test starts: orders a STEP apart from here are inside the replay windows
    of webhooks that sign their order time (Amazon, Flipkart: 5 min), and before now, where some order
    lists (eBay's) end their window."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


@pytest.fixture(params=sorted(BUILDERS))
async def market(request: pytest.FixtureRequest) -> AsyncIterator[Marketplace]:
    channel: str = request.param
    async with marketplaces(SKUS, tenant="backfill", channels=(channel,)) as markets:
        yield markets[channel]


async def test_order_list_gives_the_webhooks_event_ids_page_by_page(
    market: Marketplace, t0: datetime
) -> None:
    connection = paged(market.connection)
    async with aiohttp.ClientSession() as session:
        expected: list[Event] = []
        for n in range(ORDERS):
            lines = [(SKUS[n % 3], 1 + n % 2)] + ([(SKUS[(n + 1) % 3], 2)] if n % 3 == 0 else [])
            body, headers = market.simulator.place_order(market.connection, 5000 + n, lines, t0 + n * STEP)
            expected.extend(await webhook_events(session, market, body, headers))

    budget = budget_for(market.channel)
    charges = Charges(budget)
    async with aiohttp.ClientSession(trace_configs=[charges.trace()]) as session:
        batches = await backfill(session, connection, t0 - timedelta(hours=1), budget)

    listed = [e for b in batches for e in b.events]
    assert sorted(map(key, listed)) == sorted(map(key, expected))
    assert len({e.event_id for e in listed}) == len(listed), "an order came back on two pages"
    assert [b.rejected for b in batches] == [[] for _ in batches]
    assert len([b for b in batches if b.events]) >= 3, f"{PAGE} orders a page should take three pages"
    marks = [b.high_water for b in batches if b.events]
    assert all(m is not None for m in marks)
    assert marks == sorted(marks), "pages must come oldest first"  # type: ignore[type-var]
    assert marks[-1] == t0 + (ORDERS - 1) * STEP
    # every request that left the session was paid for first, and the burst of one made the budget wait
    assert charges.unpaid == []
    assert charges.requests == budget.acquired >= 3
    assert budget.waited > 0


async def test_since_excludes_older_orders(market: Marketplace, t0: datetime) -> None:
    for n in range(5):
        market.simulator.place_order(market.connection, 6000 + n, [(SKUS[0], 1)], t0 + n * STEP)
    budget = budget_for(market.channel)
    async with aiohttp.ClientSession() as session:
        batches = await backfill(session, paged(market.connection), t0 + 3 * STEP, budget)
    orders = {e.order_id for b in batches for e in b.events}
    assert len(orders) == 2, f"only the orders of seconds 3 and 4 are at or after since, got {orders}"
    assert all(e.occurred_at >= t0 + 3 * STEP for b in batches for e in b.events)
    async with aiohttp.ClientSession() as session:
        later = await backfill(session, market.connection, t0 + 5 * STEP, budget)
    assert [e for b in later for e in b.events] == []


async def test_a_wrong_access_token_raises_channel_error(market: Marketplace, t0: datetime) -> None:
    market.simulator.place_order(market.connection, 7000, [(SKUS[1], 1)], t0)
    token = market.connection.access_token.get_secret_value()
    # the same shape (a client can tell nothing from it), but not the token the channel issued
    forged = token[:-1] + ("x" if token[-1] != "x" else "y")
    wrong = market.connection.model_copy(update={"access_token": SecretStr(forged)})
    budget = budget_for(market.channel)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ChannelError) as caught:
            await backfill(session, wrong, t0 - timedelta(hours=1), budget)
    assert caught.value.status in (401, 403)
    assert not caught.value.retryable
    assert market.connection.id in str(caught.value), "the error must name the connection"
