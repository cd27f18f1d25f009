"""Fan-out delivery with a fake inventory client (no network): retries, compare-and-set, bulk and single
paths, and dead letters that carry the real attempt count."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from channels.connection import Connection, Listing
from channels.errors import ChannelError, CompareMismatch
from channels.ratelimit import TokenBucket
from fanout.delivery import ChannelFanout, ConnectionSync, Delivery, dead_letter
from fanout.metrics import FanoutMetrics
from fanout.plan import Target, target_for
from schemas.stock_changed import StockChanged
from stocksync.retry import RetryPolicy

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def busy(retry_after_s: float | None = None) -> ChannelError:
    return ChannelError("HTTP 429", status=429, retryable=True, retry_after_s=retry_after_s)


def refused() -> ChannelError:
    return ChannelError("HTTP 422: unknown listing", status=422, retryable=False)


@dataclass
class FakeClient:
    """An InventoryClient whose calls fail with the scripted errors, in order, then succeed."""

    errors: list[BaseException] = field(default_factory=list)
    singles: list[tuple[str, int, int | None]] = field(default_factory=list)
    bulks: list[list[tuple[str, int]]] = field(default_factory=list)

    def _next(self) -> None:
        if self.errors:
            raise self.errors.pop(0)

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        self.singles.append((sku, quantity, change_from))
        self._next()

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        self.bulks.append(list(items))
        self._next()

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        return {}


class Waits:
    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


def connection(*skus: str) -> Connection:
    return Connection(
        id="shop-1",
        tenant="acme",
        channel="shopify",
        webhook_secret="s",
        api_base_url="http://127.0.0.1:9",
        listings={s: Listing(listing_id=f"gid-{s}") for s in skus},
    )


def change(sku: str, version: int, available: int) -> StockChanged:
    return StockChanged(
        tenant="acme",
        sku=sku,
        available=available,
        version=version,
        cause_event_id=f"e-{sku}-{version}",
        origin_connection_id=None,
        occurred_at=NOW,
        received_at=NOW,
        committed_at=NOW,
    )


def target(sku: str, version: int, available: int) -> Target:
    t = target_for(
        change(sku, version, available), "shop-1", buffer=0, allocation=1.0, pause_on_rejection=True
    )
    assert t is not None
    return t


def setup(
    client: FakeClient, *skus: str, max_batch: int = 100, max_attempts: int = 5, deadline_s: float = 60
) -> tuple[Delivery, ConnectionSync, Waits, CollectorRegistry]:
    registry, waits = CollectorRegistry(), Waits()
    policy = RetryPolicy(deadline_s=deadline_s, max_attempts=max_attempts, sleep=waits)
    sync = ConnectionSync(connection(*skus), client, TokenBucket(1000, 1000), max_batch)
    return Delivery("shopify", policy, FanoutMetrics(registry)), sync, waits, registry


def calls(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("fanout_channel_calls_total", {"channel": "shopify", "result": result})
    return value or 0.0


async def test_single_write_confirmed_first_time() -> None:
    client = FakeClient()
    delivery, sync, _waits, registry = setup(client, "A")
    done = await delivery.push(sync, [target("A", 3, 7)])
    assert [t.sku for t in done.confirmed] == ["A"]
    assert done.failures == []
    assert client.singles == [("A", 7, None)]
    assert sync.confirmed["A"] == ((3, 0), 7)
    assert calls(registry, "ok") == 1


async def test_single_write_compares_against_the_last_confirmed_count() -> None:
    client = FakeClient()
    delivery, sync, _waits, _registry = setup(client, "A")
    await delivery.push(sync, [target("A", 3, 7)])
    await delivery.push(sync, [target("A", 4, 6)])
    assert client.singles == [("A", 7, None), ("A", 6, 7)]


async def test_retryable_failure_then_success() -> None:
    client = FakeClient([busy(), TimeoutError()])
    delivery, sync, waits, registry = setup(client, "A")
    done = await delivery.push(sync, [target("A", 1, 5)])
    assert len(done.confirmed) == 1
    assert not done.failures
    assert len(client.singles) == 3
    assert len(waits.taken) == 2
    assert calls(registry, "rate_limited") == 1
    assert calls(registry, "network") == 1
    assert calls(registry, "ok") == 1


async def test_permanent_failure_is_dead_lettered_after_one_attempt() -> None:
    client = FakeClient([refused()])
    delivery, sync, waits, _registry = setup(client, "A")
    done = await delivery.push(sync, [target("A", 2, 5)])
    assert done.confirmed == []
    assert len(done.failures) == 1
    failure = done.failures[0]
    assert failure.attempts == 1
    assert waits.taken == []
    assert "A" not in sync.confirmed
    letter = dead_letter("shopify", failure)
    assert (letter.sku, letter.quantity, letter.version, letter.attempts, letter.status) == (
        "A",
        5,
        2,
        1,
        422,
    )
    assert letter.original_topic == "stock.changed"
    assert letter.connection_id == "shop-1"


async def test_retries_exhausted_carry_the_real_attempt_count() -> None:
    client = FakeClient([busy(0.0) for _ in range(10)])
    delivery, sync, _waits, _registry = setup(client, "A", max_attempts=4)
    done = await delivery.push(sync, [target("A", 2, 5)])
    assert [f.attempts for f in done.failures] == [4]
    assert len(client.singles) == 4
    assert dead_letter("shopify", done.failures[0]).attempts == 4


async def test_compare_mismatch_writes_again_against_the_channels_count() -> None:
    client = FakeClient([CompareMismatch("moved", current=3)])
    delivery, sync, _waits, registry = setup(client, "A")
    await delivery.push(sync, [target("A", 1, 8)])
    client.errors.append(CompareMismatch("moved", current=3))
    done = await delivery.push(sync, [target("A", 2, 9)])
    # Never more than the channel holds now: min(9, 3), compared against what it showed.
    assert client.singles[-2:] == [("A", 9, 3), ("A", 3, 3)]
    assert len(done.confirmed) == 1
    assert sync.confirmed["A"] == ((2, 0), 3)
    assert calls(registry, "conflict") == 2


async def test_compare_mismatch_then_failure_counts_both_writes() -> None:
    client = FakeClient([CompareMismatch("moved", current=2), busy(0.0), refused()])
    delivery, sync, _waits, _registry = setup(client, "A")
    done = await delivery.push(sync, [target("A", 1, 8)])
    assert [f.attempts for f in done.failures] == [3]


async def test_bulk_writes_in_batches_of_max_batch() -> None:
    client = FakeClient()
    delivery, sync, _waits, _registry = setup(client, "A", "B", "C", max_batch=2)
    done = await delivery.push(sync, [target("A", 1, 1), target("B", 1, 2), target("C", 1, 3)])
    assert client.bulks == [[("A", 1), ("B", 2)], [("C", 3)]]
    assert client.singles == []
    assert sorted(t.sku for t in done.confirmed) == ["A", "B", "C"]
    assert set(sync.confirmed) == {"A", "B", "C"}


async def test_a_failed_bulk_call_fails_its_batch_only() -> None:
    client = FakeClient([refused()])
    delivery, sync, _waits, _registry = setup(client, "A", "B", "C", max_batch=2)
    done = await delivery.push(sync, [target("A", 1, 1), target("B", 1, 2), target("C", 1, 3)])
    assert sorted(f.target.sku for f in done.failures) == ["A", "B"]
    assert all(f.attempts == 1 for f in done.failures)
    assert [t.sku for t in done.confirmed] == ["C"]
    assert set(sync.confirmed) == {"C"}


async def test_max_batch_one_uses_single_writes() -> None:
    client = FakeClient()
    delivery, sync, _waits, _registry = setup(client, "A", "B", max_batch=1)
    await delivery.push(sync, [target("A", 1, 1), target("B", 1, 2)])
    assert client.bulks == []
    assert [s[0] for s in client.singles] == ["A", "B"]


async def test_retry_after_is_honoured_within_the_deadline() -> None:
    client = FakeClient([busy(2.0)])
    delivery, sync, waits, _registry = setup(client, "A", deadline_s=10)
    done = await delivery.push(sync, [target("A", 1, 4)])
    assert waits.taken == [2.0]
    assert len(done.confirmed) == 1

    client = FakeClient([busy(30.0), busy(30.0)])
    delivery, sync, waits, _registry = setup(client, "A", deadline_s=0)
    done = await delivery.push(sync, [target("A", 1, 4)])
    # Past the deadline no new attempt starts: dead-lettered with the one attempt made.
    assert waits.taken == []
    assert [f.attempts for f in done.failures] == [1]


async def test_channel_fanout_coalesces_skips_confirmed_and_reports() -> None:
    client = FakeClient()
    delivery, sync, _waits, registry = setup(client, "A", "B")
    fanout = ChannelFanout(delivery, [sync], delivery.metrics, pause_on_rejection=True)
    done = await fanout.apply([change("A", 1, 5), change("A", 2, 4), change("B", 1, 9), change("Z", 1, 1)])
    assert sorted((t.sku, t.quantity) for t in done.confirmed) == [("A", 4), ("B", 9)]
    assert client.bulks == [[("A", 4), ("B", 9)]]
    again = await fanout.apply([change("A", 2, 4)])  # already confirmed at that version: nothing to send
    assert again.confirmed == []
    assert len(client.bulks) == 1
    assert registry.get_sample_value("fanout_coalesced_total", {"channel": "shopify"}) == 1
