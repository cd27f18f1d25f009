"""Drift classification (pure): each SKU's cause and correction from the master, the channel and the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from channels.connection import Connection, Listing
from reconciler.drift import MasterRow, Rules, classify
from reconciler.report import (
    EDITED_ON_CHANNEL,
    FANOUT_FIXED,
    MISSED_ORDER,
    NOT_LISTED,
    SKIPPED_NOT_LISTED,
    UNKNOWN,
    WOULD_CORRECT,
    Drift,
)

START = datetime(2026, 11, 23, 12, tzinfo=UTC)
LONG_AGO = START - timedelta(hours=1)


def conn(buffer: int = 0, allocation: float = 1.0) -> Connection:
    return Connection(
        id="shop-1",
        tenant="acme",
        channel="shopify",
        webhook_secret="s",
        api_base_url="http://127.0.0.1:9",
        listings={"A": Listing(listing_id="1")},
        safety_buffer=buffer,
        allocation=allocation,
    )


def row(
    available: int, *, version: int = 7, updated_at: datetime = LONG_AGO, paused: bool = False
) -> MasterRow:
    return MasterRow("A", available, version, updated_at, paused)


def rules(*, dry_run: bool = False, pause_on_rejection: bool = True) -> Rules:
    return Rules(START, timedelta(seconds=60), pause_on_rejection, dry_run)


def one(
    shows: dict[str, int],
    master: MasterRow | None,
    *,
    c: Connection | None = None,
    r: Rules | None = None,
    learned: dict[str, int] | None = None,
    before: dict[str, int] | None = None,
) -> list[Drift]:
    return classify(
        c or conn(),
        ["A"],
        shows,
        {"A": master} if master else {},
        r or rules(),
        learned=learned or {},
        shown_before=before or {},
    )


def test_in_sync_is_no_drift() -> None:
    assert one({"A": 10}, row(10)) == []
    assert one({"A": 4}, row(10), c=conn(buffer=2, allocation=0.5)) == []  # (10 - 2) * 0.5


def test_missed_order() -> None:
    [d] = one({"A": 10}, row(8), learned={"A": 2})
    assert (d.channel_value, d.expected, d.cause, d.action) == (10, 8, MISSED_ORDER, "")


def test_missed_order_fixed_by_the_fanout_before_the_correction() -> None:
    [d] = one({"A": 8}, row(8), learned={"A": 2}, before={"A": 10})
    assert (d.channel_value, d.expected, d.cause, d.action) == (10, 8, MISSED_ORDER, FANOUT_FIXED)


def test_edited_on_channel() -> None:
    [d] = one({"A": 15}, row(10))
    assert (d.cause, d.expected, d.master_version) == (EDITED_ON_CHANNEL, 10, 7)


def test_master_moved_moments_ago_is_unknown() -> None:
    [d] = one({"A": 15}, row(10, updated_at=START - timedelta(seconds=5)))
    assert d.cause == UNKNOWN


def test_channel_moved_meanwhile_is_compared_as_shown() -> None:
    # The channel's count moved since the snapshot: the drift is against what it shows now.
    [d] = one({"A": 9}, row(10), learned={"A": 1}, before={"A": 11})
    assert (d.channel_value, d.expected, d.cause) == (9, 10, MISSED_ORDER)


def test_not_listed_is_skipped() -> None:
    [d] = one({}, row(10))
    assert (d.channel_value, d.cause, d.action) == (None, NOT_LISTED, SKIPPED_NOT_LISTED)


def test_not_in_master_is_not_judged() -> None:
    assert one({"A": 3}, None) == []


def test_paused_after_a_refused_sale_shows_zero() -> None:
    [d] = one({"A": 4}, row(4, paused=True))
    assert (d.expected, d.cause) == (0, EDITED_ON_CHANNEL)
    assert one({"A": 4}, row(4, paused=True), r=rules(pause_on_rejection=False)) == []


def test_dry_run_assumes_the_backfill_and_says_what_it_would_do() -> None:
    # The master has not learned the 3 missed sales yet: the dry run expects 10 - 3.
    [d] = one({"A": 10}, row(10), r=rules(dry_run=True), learned={"A": 3})
    assert (d.expected, d.master_available, d.cause, d.action) == (7, 7, MISSED_ORDER, WOULD_CORRECT)
    # A pause is not assumed to hold once the backfill is applied.
    [p] = one({"A": 0}, row(10, paused=True), r=rules(dry_run=True), learned={"A": 3})
    assert (p.expected, p.action) == (7, WOULD_CORRECT)
    [n] = one({}, row(10), r=rules(dry_run=True))
    assert n.action == SKIPPED_NOT_LISTED


def test_under_allocation_the_channel_is_set_to_its_grant_not_the_count() -> None:
    allocated = MasterRow("A", 10, 7, LONG_AGO, False, granted={"shop-1": 3, "other": 4})
    assert one({"A": 3}, allocated) == []  # showing its grant: in sync, whatever the master's count
    [d] = one({"A": 0}, allocated)  # a dead-lettered raise: the grant is brought back
    assert (d.channel_value, d.expected, d.master_available) == (0, 3, 10)
    [d] = one({"A": 10}, allocated)  # showing the whole count would let it sell what others hold
    assert d.expected == 3
    gone = MasterRow("A", 10, 7, LONG_AGO, False, granted={"other": 4})
    assert one({"A": 0}, gone) == []  # a connection with no grant shows nothing
