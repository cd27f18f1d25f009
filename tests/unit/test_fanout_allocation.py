"""The fan-out under allocation (pure, fake clients): which records become writes, how compare-and-set raises
coalesce and re-base, the order a tight budget sends them in, daily caps, and the stock-out gauge."""

from __future__ import annotations

from datetime import UTC, date, datetime

from channels.errors import CompareMismatch
from fanout.budget import DailyBudget, worth_a_write
from fanout.delivery import ChannelFanout, Delivered, Exposure
from fanout.plan import Target, coalesce, exposure_order, target_for
from schemas.stock_allocated import Allotment, StockAllocated
from schemas.stock_changed import StockChanged
from tests.unit.test_fanout_delivery import FakeClient, busy, change, setup

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def allocated(sku: str, seq: int, **writes: tuple[int, int | None] | int) -> StockAllocated:
    """A stock.allocated record; each keyword is a connection: its grant, or (write, expect) to raise it."""
    connections = {}
    for cid, spec in writes.items():
        if isinstance(spec, tuple):
            write, expect = spec
            connections[cid.replace("_", "-")] = Allotment(
                channel="shopify", granted=write, write=write, expect=expect
            )
        else:
            connections[cid.replace("_", "-")] = Allotment(channel="shopify", granted=spec)
    return StockAllocated(
        tenant="acme",
        sku=sku,
        seq=seq,
        available=20,
        version=seq,
        slack=3,
        connections=connections,
        cause_event_id=f"e-{seq}",
        received_at=NOW,
        committed_at=NOW,
    )


def target(record: StockAllocated | StockChanged, cid: str = "shop-1") -> Target | None:
    return target_for(record, cid, buffer=0, allocation=1.0, pause_on_rejection=True)


def test_only_allocation_writes_reach_a_never_cancel_sku() -> None:
    never_cancel = change("A", 3, 9).model_copy(update={"policy": "never_cancel"})
    assert target(never_cancel) is None  # the channel counts its own sales down
    assert target(change("A", 3, 9)) is not None  # a mirrored SKU still shows the master count
    assert target(allocated("A", 4, shop_1=2)) is None  # a grant with no write: nothing to send
    raise_it = target(allocated("A", 5, shop_1=(6, 2)))
    assert raise_it is not None
    assert (raise_it.quantity, raise_it.expect, raise_it.seq) == (6, 2, 5)
    assert target(allocated("A", 5, other=(6, 2))) is None


def test_compare_and_set_raises_add_up_when_coalesced_and_absolute_sets_keep_the_newest() -> None:
    first, second = target(allocated("A", 5, shop_1=(5, 2))), target(allocated("A", 8, shop_1=(6, 4)))
    assert first is not None
    assert second is not None
    [both] = coalesce([second, first])
    assert (both.quantity, both.expect, both.seq) == (2 + 3 + 2, 2, 8)  # the first base plus both raises
    a1, a2 = target(allocated("B", 2, shop_1=(3, None))), target(allocated("B", 6, shop_1=(4, None)))
    assert a1 is not None
    assert a2 is not None
    [newest] = coalesce([a1, a2])
    assert (newest.quantity, newest.expect, newest.seq) == (4, None, 6)


async def test_a_stale_base_is_re_based_on_what_the_channel_shows() -> None:
    # The grant was 4 (expect) and is raised by 3; the channel sold 1 unheard of and shows 3.
    client = FakeClient(errors=[CompareMismatch("stale", current=3)])
    delivery, sync, _w, _r = setup(client, "A")
    t = target(allocated("A", 7, shop_1=(7, 4)))
    assert t is not None
    assert await delivery.single(sync, t, "ref") is None
    assert client.singles == [("A", 7, 4), ("A", 6, 3)]  # 3 shown + 3 raised: with the 1 sold, the grant 7
    assert sync.allocated == {"A": 7}
    assert not sync.due(t)


def test_a_tight_budget_sends_the_largest_exposure_first() -> None:
    down = target(change("A", 3, 2))  # shows 10, may sell 2: exposure 8
    refill = target(allocated("B", 4, shop_1=(3, None)))  # shows 0, raise to 3
    small = target(change("C", 3, 9))  # shows 10, may sell 9: exposure 1
    assert down is not None
    assert refill is not None
    assert small is not None
    order = exposure_order([refill, small, down], {"A": 10, "B": 0, "C": 10})
    assert [t.sku for t in order] == ["A", "C", "B"]


def test_capped_channels_get_threshold_crossings_and_zeros_only() -> None:
    t = target(change("A", 3, 97))
    assert t is not None
    assert not worth_a_write(t, 100)  # 3 % down from 100: not worth one of 250 daily revisions
    assert worth_a_write(t, 130)  # a fifth or more
    low = target(change("A", 4, 4))
    assert low is not None
    assert worth_a_write(low, 5)
    zero = target(change("A", 5, 0))
    assert zero is not None
    assert worth_a_write(zero, 1)

    day, now = [date(2026, 12, 2)], [0.0]
    budget = DailyBudget(None, 40, today=lambda: day[0], clock=lambda: now[0])
    assert budget.allows(t, 100)  # a quiet listing: every change is sent while the paced budget is saved up
    for _ in range(6):  # a burst spends the 10 saved up (a quarter of 40) below half
        budget.spend_write("A")
    assert budget.pressed("A")
    assert not budget.allows(t, 100)  # now only threshold crossings
    assert budget.allows(low, 5)
    now[0] += 86_400 / 40 * 5  # the pace refills
    assert not budget.pressed("A")
    for _ in range(34):
        budget.spend_write("A")
    assert budget.writes_left("A") == 0
    assert not budget.allows(low, 5)  # the day's cap is spent
    assert budget.allows(zero, 1)  # a listing that must stop selling is always sent
    day[0] = date(2026, 12, 3)
    assert budget.writes_left("A") == 40
    assert DailyBudget(None, None).allows(t, 100)  # no caps: every change


def test_stock_out_while_available_is_counted_in_listing_seconds() -> None:
    exposure = Exposure()
    exposure.update(allocated("A", 1, shop_1=0), {"shop-1"}, now=100.0)  # no grant, 20 available
    assert exposure.out_since == {("shop-1", "acme", "A"): 100.0}
    exposure.update(allocated("A", 2, shop_1=(2, None)), {"shop-1"}, now=102.5)
    assert exposure.out_since == {}
    assert exposure.take_stockout_seconds() == 2.5
    assert exposure.granted_total() == 2
    assert exposure.slack_total() == 3


async def test_fanout_metrics_follow_the_allocation_records() -> None:
    delivery, sync, _w, registry = setup(FakeClient(), "A")
    fanout = ChannelFanout(delivery, [sync], delivery.metrics, pause_on_rejection=True)
    done = await fanout.apply([allocated("A", 1, shop_1=(4, 0))])
    assert [t.quantity for t in done.confirmed] == [4]
    assert registry.get_sample_value("allocation_granted_units", {"channel": "shopify"}) == 4
    assert registry.get_sample_value("allocation_slack_units", {"channel": "shopify"}) == 3


class LandedThenTimedOut(FakeClient):
    """A channel that applied the write but whose answer never came back (then the buyers' sales happen)."""

    def __init__(self, shows_after: int) -> None:
        super().__init__(errors=[TimeoutError("no answer")])
        self.shows_after = shows_after
        self.reads = 0

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        self.reads += 1
        return dict.fromkeys(skus, self.shows_after)


async def test_a_raise_that_landed_before_a_timeout_is_not_sent_again() -> None:
    client = LandedThenTimedOut(shows_after=2)  # set to 3, one sold since: re-sending 3 would show it twice
    delivery, sync, _w, _r = setup(client, "A")
    t = target(allocated("A", 3, shop_1=(3, None)))
    assert t is not None
    assert await delivery.single(sync, t, "ref") is None
    assert client.singles == [("A", 3, None)]
    assert client.reads == 1
    assert sync.allocated == {"A": 3}


async def test_a_raise_refused_with_a_429_is_retried_without_a_read() -> None:
    client = FakeClient(errors=[busy()])
    delivery, sync, _w, _r = setup(client, "A")
    t = target(allocated("A", 3, shop_1=(3, None)))
    assert t is not None
    assert await delivery.single(sync, t, "ref") is None
    assert client.singles == [("A", 3, None), ("A", 3, None)]


async def test_a_count_held_back_from_a_capped_channel_is_sent_once_the_listing_is_quiet() -> None:
    client = FakeClient()
    delivery, sync, _w, registry = setup(client, "A", max_batch=1)
    sync.daily = DailyBudget(None, 40)
    for _ in range(6):
        sync.daily.spend_write("A")  # a burst has spent the pace: only threshold crossings go out now
    sync.confirmed["A"] = ((1, 0), 100)
    fanout = ChannelFanout(delivery, [sync], delivery.metrics, pause_on_rejection=True)
    done = await fanout.apply([change("A", 2, 97)])
    assert done.confirmed == []
    assert registry.get_sample_value("fanout_held_back_total", {"channel": "shopify"}) == 1
    assert await fanout.settle_held(quiet_s=3600) == Delivered()  # not quiet long enough
    settled = await fanout.settle_held(quiet_s=0)
    assert [t.quantity for t in settled.confirmed] == [97]
    assert client.singles == [("A", 97, 100)]
    assert fanout.held == {}


async def test_a_bulk_retry_leaves_out_only_the_raise_that_landed() -> None:
    # One bulk call carries an absolute raise of A and a mirrored count of B; its answer is lost after the
    # channel applied it. The retry must not send A again, and must still send B.
    client = LandedThenTimedOut(shows_after=2)
    delivery, sync, _w, _r = setup(client, "A", "B")
    raise_a = target(allocated("A", 3, shop_1=(3, None)))
    count_b = target(change("B", 4, 9))
    assert raise_a is not None
    assert count_b is not None
    done = await delivery.bulk(sync, [raise_a, count_b], "ref")
    assert len(done.confirmed) == 2
    assert client.bulks == [[("A", 3), ("B", 9)], [("B", 9)]]
