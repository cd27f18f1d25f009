"""Daily caps of a connection's channel (eBay: 250 revisions per listing per day; Etsy and TikTok: about
10,000 calls a day), tracked per UTC day, and which writes are worth spending them on.

A channel with a daily cap cannot be sent every decrement of a hot SKU all day. Each cap is paced: a bucket
that refills at the cap's daily rate and saves up a quarter of it. While more than half of that is saved
up, every change is sent (a quiet listing, or the start of a burst, stays exact). Below it, a mirrored count
is sent only when it crosses a threshold (``worth_a_write``): to or from zero, into the low-stock band
(where each unit matters), or after moving by a fifth since the last write. Allocation writes
(never_cancel) are always worth one: they are raises of a connection that sold out, few by construction.
Once a day's cap is spent, only zeros are sent (a listing that must stop selling); everything else waits
for the next day, which the reconciler or the next change catches up. A count held back is sent anyway once
its listing has had no newer change for FANOUT_CAPPED_SETTLE_S (``ChannelFanout.settle_held``): one write
after a burst, so a paced channel ends at the master's count, not at the last threshold it crossed.

The counts live in the process (a restart starts the day's count again; the channel's own 429 remains the
backstop), exported as ``fanout_daily_budget_remaining``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from channels.ratelimit import TokenBucket
from fanout.plan import Target

DAY_S = 86_400.0

LOW_STOCK = 5  # at or below this, every change of a mirrored count is sent
STEP = 0.2  # above it, a change of at least this share of the last written count


def worth_a_write(target: Target, last: int | None) -> bool:
    """Whether a capped channel should spend a write on `target`, given the count it last confirmed."""
    if target.allocated or last is None or target.quantity == 0 or last == 0:
        return True
    if target.quantity <= LOW_STOCK:
        return True
    return abs(target.quantity - last) >= STEP * last


@dataclass
class DailyBudget:
    """One connection's spending against its channel's daily caps (None: the channel has none)."""

    calls_per_day: int | None
    writes_per_listing_per_day: int | None
    today: Callable[[], date] = field(default=lambda: datetime.now(UTC).date())
    clock: Callable[[], float] = time.monotonic
    day: date | None = None
    calls: int = 0
    writes: Counter[str] = field(default_factory=Counter)
    _calls_pace: TokenBucket | None = None
    _listing_pace: dict[str, TokenBucket] = field(default_factory=dict)

    def _pace(self, cap: int) -> TokenBucket:
        return TokenBucket(cap / DAY_S, max(1.0, cap / 4), clock=self.clock)

    def _listing(self, sku: str) -> TokenBucket | None:
        cap = self.writes_per_listing_per_day
        if cap is None:
            return None
        if sku not in self._listing_pace:
            self._listing_pace[sku] = self._pace(cap)
        return self._listing_pace[sku]

    def pressed(self, sku: str) -> bool:
        """Whether the paced budget of the connection or the listing is below half of what it saves up."""
        if self.calls_per_day is not None:
            self._calls_pace = self._calls_pace or self._pace(self.calls_per_day)
            if self._calls_pace.level() < self._calls_pace.burst / 2:
                return True
        listing = self._listing(sku)
        return listing is not None and listing.level() < listing.burst / 2

    @property
    def capped(self) -> bool:
        return self.calls_per_day is not None or self.writes_per_listing_per_day is not None

    def _roll(self) -> None:
        if self.day != (day := self.today()):
            self.day, self.calls, self.writes = day, 0, Counter()

    def spend_call(self) -> None:
        self._roll()
        self.calls += 1
        if self.calls_per_day is not None:
            self._calls_pace = self._calls_pace or self._pace(self.calls_per_day)
            self._calls_pace.take()

    def spend_write(self, sku: str) -> None:
        self._roll()
        self.writes[sku] += 1
        listing = self._listing(sku)
        if listing is not None:
            listing.take()

    def calls_left(self) -> int | None:
        self._roll()
        return None if self.calls_per_day is None else max(0, self.calls_per_day - self.calls)

    def writes_left(self, sku: str) -> int | None:
        self._roll()
        cap = self.writes_per_listing_per_day
        return None if cap is None else max(0, cap - self.writes[sku])

    def fewest_writes_left(self) -> int | None:
        """The writes left today of the listing revised most (None: no per-listing cap)."""
        self._roll()
        cap = self.writes_per_listing_per_day
        return None if cap is None else max(0, cap - max(self.writes.values(), default=0))

    def allows(self, target: Target, last: int | None) -> bool:
        """Whether to send `target` now: always without caps; with caps, every change while the paced
        budget is saved up, a write worth it (`worth_a_write`) when it runs low, and a zero even after the
        day's cap is spent."""
        if not self.capped:
            return True
        if target.quantity == 0 and not target.allocated:
            return True
        if self.spent(target.sku):
            return False
        return not self.pressed(target.sku) or worth_a_write(target, last)

    def spent(self, sku: str) -> bool:
        """Whether today's cap of the connection's calls or of this listing's writes is used up."""
        return self.calls_left() == 0 or self.writes_left(sku) == 0
