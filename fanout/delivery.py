"""Delivery of targets to one channel's connections: the client calls under the retry policy, single
compare-and-set writes or bulk calls, and the dead-letter record of what still failed.

Knows nothing about Kafka. Every call returns what it did (the targets the channel confirmed, the failures
with their real attempt counts); a connection's ``confirmed`` moves only on the channel's 2xx.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from allocation.rules import cas_retarget
from channels.connection import Connection
from channels.errors import ChannelError, CompareMismatch
from channels.ratelimit import TokenBucket
from channels.spec import InventoryClient
from fanout.budget import DailyBudget
from fanout.journal import WriteJournal
from fanout.metrics import FanoutMetrics
from fanout.plan import (
    Precedence,
    Record,
    Target,
    coalesce,
    exposure_order,
    latest_per_sku,
    target_for,
)
from schemas import stock_allocated, stock_changed, stock_rejected
from schemas.fanout_dlq import UpdateDeadLettered
from schemas.stock_allocated import StockAllocated
from stocksync.retry import Outcome, RetryPolicy


def call_result(exc: BaseException | None) -> str:
    """The `result` label of one channel call (fanout.metrics.RESULTS)."""
    if exc is None:
        return "ok"
    if isinstance(exc, CompareMismatch):
        return "conflict"
    if isinstance(exc, ChannelError) and exc.status is not None:
        return (
            "rate_limited" if exc.status == 429 else "server_error" if exc.status >= 500 else "client_error"
        )
    return "network" if not isinstance(exc, ChannelError) else "client_error"


@dataclass
class ConnectionSync:
    """One connection's client, budget, and what it last confirmed per SKU."""

    connection: Connection
    client: InventoryClient
    bucket: TokenBucket
    max_batch: int
    confirmed: dict[str, tuple[Precedence, int]] = field(default_factory=dict)
    # never_cancel SKUs: the highest allocation seq whose write the channel confirmed
    allocated: dict[str, int] = field(default_factory=dict)
    daily: DailyBudget = field(default_factory=lambda: DailyBudget(None, None))

    def due(self, target: Target) -> bool:
        if target.allocated:
            return target.seq > self.allocated.get(target.sku, 0)
        last = self.confirmed.get(target.sku)
        return last is None or target.precedence > last[0]

    def confirm(self, target: Target, quantity: int) -> None:
        """The channel confirmed that it shows `quantity` for `target`."""
        self.daily.spend_write(target.sku)
        if target.allocated:
            self.allocated[target.sku] = target.seq
            previous = self.confirmed.get(target.sku)
            self.confirmed[target.sku] = (previous[0] if previous else (0, 0), quantity)
        else:
            self.confirmed[target.sku] = (target.precedence, quantity)

    def shows(self) -> dict[str, int]:
        """What the connection showed at its last confirmed write, per SKU."""
        return {sku: quantity for sku, (_p, quantity) in self.confirmed.items()}


def may_have_landed(exc: BaseException) -> bool:
    """Whether a failed write may still have taken effect: no answer (a timeout, a dropped connection) or a
    server error; a 4xx (429 included) is a refusal."""
    if isinstance(exc, CompareMismatch):
        return False
    if isinstance(exc, ChannelError) and exc.status is not None:
        return exc.status >= 500
    return True


class OnceOnly:
    """Keeps an allocation raise from taking effect twice when a retry follows a failure that may have
    landed (the retry policy retries timeouts and 5xx): before such a retry the channel's counts are read,
    and a raise that shows it landed is not sent again. An absolute raise goes only to a connection that
    showed nothing, so any count above 0 means it landed; a compare-and-set raise landed if the channel
    shows more than its base. (If the channel sold every raised unit before the read, the raise is sent
    again; the window is the retry's backoff. allocation/rules.py assumes a write takes effect once.)"""

    def __init__(self, client: InventoryClient, targets: list[Target]) -> None:
        self.client = client
        self.raises = {t.sku: t for t in targets if t.allocated}
        self.ambiguous = False
        self.done: set[str] = set()

    async def check(self) -> None:
        """After a failure that may have landed: read the channel and record the raises that did."""
        pending = [sku for sku in self.raises if sku not in self.done]
        if not (self.ambiguous and pending):
            return
        for sku, count in (await self.client.get_available(pending)).items():
            t = self.raises.get(sku)
            if t is not None and count > (t.expect or 0):
                self.done.add(sku)

    def left(self, targets: list[Target]) -> list[Target]:
        """`targets` less the raises known to have landed (whatever else they hold is sent)."""
        return [t for t in targets if t.sku not in self.done]

    async def sent(self, call: Awaitable[None]) -> None:
        try:
            await call
        except BaseException as exc:
            self.ambiguous = self.ambiguous or may_have_landed(exc)
            raise


@dataclass(frozen=True)
class Failure:
    """A target the channel did not confirm: the last error after `attempts` calls."""

    target: Target
    attempts: int
    error: BaseException


@dataclass(frozen=True)
class Delivered:
    """What a push did: the targets the channel confirmed, and the failures."""

    confirmed: list[Target] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __add__(self, other: Delivered) -> Delivered:
        return Delivered(self.confirmed + other.confirmed, self.failures + other.failures)

    @staticmethod
    def merge(parts: Iterable[Delivered]) -> Delivered:
        out = Delivered()
        for p in parts:
            out += p
        return out


class Delivery:
    """Sends targets to the connections of one channel under one retry policy."""

    def __init__(self, channel: str, policy: RetryPolicy, metrics: FanoutMetrics) -> None:
        self.channel, self.policy, self.metrics = channel, policy, metrics

    async def _send(self, sync: ConnectionSync, send: Callable[[], Awaitable[None]]) -> Outcome:
        """Run `send` under the policy; each attempt's result and budget wait go to the metrics (the client
        charges the connection's budget for each HTTP request `send` makes)."""

        async def measured() -> None:
            sync.daily.spend_call()
            waited_before = sync.bucket.waited_s
            try:
                await send()
            except BaseException as exc:
                self.metrics.calls.labels(self.channel, call_result(exc)).inc()
                raise
            finally:
                if waited := sync.bucket.waited_s - waited_before:
                    self.metrics.rate_limit_wait.labels(self.channel).inc(waited)
            self.metrics.calls.labels(self.channel, "ok").inc()

        return await self.policy.attempt(measured)

    async def single(self, sync: ConnectionSync, target: Target, reference: str) -> Failure | None:
        """One compare-and-set write (against the allocation's base, or what the connection last confirmed);
        None once confirmed."""
        last = sync.confirmed.get(target.sku)
        base = target.expect if target.allocated else last[1] if last else None
        quantity = target.quantity
        once = OnceOnly(sync.client, [target])

        async def write() -> None:
            await once.check()
            if once.left([target]):
                await once.sent(
                    sync.client.set_available(target.sku, quantity, change_from=base, reference=reference)
                )

        first = await self._send(sync, write)
        attempts, error = first.attempts, first.error
        if isinstance(error, CompareMismatch):
            # The channel's count moved without us (a sale we have not heard of yet, or an edit). An
            # allocation raise is re-based on what it shows (allocation.cas_retarget keeps its grant); a
            # mirror count never shows more than it holds now, and the master's next change or the
            # reconciler settles the rest.
            current = error.current
            if current is not None and target.allocated and target.expect is not None:
                quantity = cas_retarget(target.expect, current, target.quantity)
            elif current is not None:
                quantity = min(quantity, current)
            again = await self._send(
                sync,
                lambda: sync.client.set_available(
                    target.sku, quantity, change_from=current, reference=reference
                ),
            )
            attempts, error = attempts + again.attempts, again.error
        if error is not None:
            return Failure(target, attempts, error)
        sync.confirm(target, quantity)
        return None

    async def bulk(self, sync: ConnectionSync, targets: list[Target], reference: str) -> Delivered:
        """One bulk call for `targets` (at most the connection's max_batch): all confirmed or all failed."""
        once = OnceOnly(sync.client, targets)

        async def write() -> None:
            await once.check()
            if left := once.left(targets):
                await once.sent(
                    sync.client.set_many([(t.sku, t.quantity) for t in left], reference=reference)
                )

        outcome = await self._send(sync, write)
        if outcome.error is not None:
            return Delivered(failures=[Failure(t, outcome.attempts, outcome.error) for t in targets])
        for t in targets:
            sync.confirm(t, t.quantity)
        return Delivered(confirmed=list(targets))

    async def push(self, sync: ConnectionSync, targets: list[Target]) -> Delivered:
        """Send `targets` to one connection, in their order: single compare-and-set writes (always for an
        allocation raise with a base, which a bulk call cannot carry), or bulk calls for several."""
        singles = [t for t in targets if t.allocated and t.expect is not None]
        rest = [t for t in targets if not (t.allocated and t.expect is not None)]
        if len(rest) == 1 or sync.max_batch == 1:
            singles, rest = targets, []
        done = Delivered()
        for t in singles:
            ref = f"stocksync://{t.cause.tenant}/{t.sku}?version={t.precedence[0]}"
            failure = await self.single(sync, t, ref)
            done += Delivered(failures=[failure]) if failure else Delivered(confirmed=[t])
        if rest:
            reference = f"stocksync://{sync.connection.tenant}/batch-{int(time.time() * 1000)}"
            step = sync.max_batch
            done += Delivered.merge(
                [await self.bulk(sync, rest[i : i + step], reference) for i in range(0, len(rest), step)]
            )
        return done


class ChannelFanout:
    """Makes every connection of one channel show the newest of a batch of records."""

    def __init__(
        self,
        delivery: Delivery,
        syncs: list[ConnectionSync],
        metrics: FanoutMetrics,
        *,
        pause_on_rejection: bool,
        journal: WriteJournal | None = None,
    ) -> None:
        self.delivery, self.syncs, self.metrics = delivery, syncs, metrics
        self.pause_on_rejection = pause_on_rejection
        self.journal = journal  # None: allocation writes are sent unclaimed (tests without PostgreSQL)
        self.channel = delivery.channel
        self.exposure = Exposure()
        # Counts held back from a capped channel (fanout.budget): the newest per (connection, SKU), and when
        # it was held. `settle_held` sends each once its listing has gone quiet.
        self.held: dict[tuple[str, str], tuple[Target, float]] = {}

    def plan(self, latest: list[Record]) -> list[tuple[ConnectionSync, list[Target]]]:
        """Each connection's targets that are due (newer than what it last confirmed), one per SKU, largest
        exposure first (fanout.plan.exposure_order)."""
        per_sync: list[tuple[ConnectionSync, list[Target]]] = []
        for sync in self.syncs:
            conn = sync.connection
            targets = []
            for record in latest:
                if record.tenant != conn.tenant or record.sku not in conn.listings:
                    continue
                target = target_for(
                    record,
                    conn.id,
                    buffer=conn.safety_buffer,
                    allocation=conn.allocation,
                    pause_on_rejection=self.pause_on_rejection,
                )
                if target is not None and sync.due(target):
                    targets.append(target)
            shows = sync.shows()
            ordered = exposure_order(coalesce(targets), shows)
            sent = [t for t in ordered if sync.daily.allows(t, shows.get(t.sku))]
            now, going = time.monotonic(), {id(t) for t in sent}
            for t in ordered:
                key = (conn.id, t.sku)
                if id(t) in going:
                    self.held.pop(key, None)
                else:
                    self.held[key] = (t, now)
            if held := len(ordered) - len(sent):
                self.metrics.held_back.labels(self.channel).inc(held)
            if sent:
                per_sync.append((sync, sent))
        return per_sync

    async def settle_held(self, quiet_s: float) -> Delivered:
        """Send the counts held back from a capped channel whose listing has had no newer target for
        `quiet_s`: one write per listing after a burst, so a paced channel ends at the master's count
        instead of the last threshold it crossed (unless the day's cap is spent)."""
        now = time.monotonic()
        syncs = {s.connection.id: s for s in self.syncs}
        due: dict[str, list[Target]] = {}
        for (cid, sku), (t, at) in list(self.held.items()):
            if now - at < quiet_s:
                continue
            del self.held[(cid, sku)]
            sync = syncs.get(cid)
            if sync is not None and sync.due(t) and not sync.daily.spent(sku):
                due.setdefault(cid, []).append(t)
        if not due:
            return Delivered()
        return Delivered.merge(
            await asyncio.gather(*(self.claimed_push(syncs[cid], ts) for cid, ts in due.items()))
        )

    async def apply(self, records: list[Record]) -> Delivered:
        """Coalesce `records`, push every connection's targets concurrently; return what was delivered."""
        latest = latest_per_sku(records)
        self.metrics.coalesced.labels(self.channel).inc(len(records) - len(latest))
        self.observe_allocations(records)
        pushes = [self.claimed_push(sync, targets) for sync, targets in self.plan(latest)]
        done = Delivered.merge(await asyncio.gather(*pushes))
        for sync in self.syncs:
            for cap, left in (
                ("calls", sync.daily.calls_left()),
                ("listing_writes", sync.daily.fewest_writes_left()),
            ):
                if left is not None:
                    self.metrics.daily_left.labels(self.channel, sync.connection.id, cap).set(left)
        now = datetime.now(UTC)
        for t in done.confirmed:
            self.metrics.sync_lag.labels(self.channel).observe(
                max(0.0, (now - t.cause.received_at).total_seconds())
            )
        return done

    async def claimed_push(self, sync: ConnectionSync, targets: list[Target]) -> Delivered:
        """Push `targets`, their allocation writes claimed in the journal first (fanout/journal.py): a write
        an earlier delivery claimed is not sent again."""
        allocated = [t for t in targets if t.allocated]
        if self.journal is None or not allocated:
            return await self.delivery.push(sync, targets)
        try:
            claimed, already = await self.journal.claim(allocated)
        except psycopg.Error as exc:
            failed = Delivered(failures=[Failure(t, 1, exc) for t in allocated])
            rest = [t for t in targets if not t.allocated]
            return failed + (await self.delivery.push(sync, rest) if rest else Delivered())
        for t in already:
            sync.allocated[t.sku] = max(t.seq, sync.allocated.get(t.sku, 0))
        keep = set(map(id, claimed))
        return await self.delivery.push(sync, [t for t in targets if not t.allocated or id(t) in keep])

    def observe_allocations(self, records: list[Record]) -> None:
        """Grants, slack and stock-outs of this channel's connections, from the allocation records."""
        mine = {sync.connection.id for sync in self.syncs}
        seen = [r for r in records if isinstance(r, StockAllocated)]
        if not seen:
            return
        for r in sorted(seen, key=lambda r: r.seq):
            self.exposure.update(r, mine, time.monotonic())
        self.metrics.granted.labels(self.channel).set(self.exposure.granted_total())
        self.metrics.slack.labels(self.channel).set(self.exposure.slack_total())
        self.metrics.stocked_out.labels(self.channel).set(len(self.exposure.out_since))
        self.metrics.stockout_seconds.labels(self.channel).inc(self.exposure.take_stockout_seconds())


class Exposure:
    """What the allocation records say of one channel's connections: the grant of each (connection, SKU),
    each SKU's slack, and since when a listing has had no grant while the master held units."""

    def __init__(self) -> None:
        self.grants: dict[tuple[str, str, str], int] = {}
        self.slacks: dict[tuple[str, str], int] = {}
        self.out_since: dict[tuple[str, str, str], float] = {}
        self._seconds = 0.0

    def update(self, record: StockAllocated, connections: set[str], now: float) -> None:
        self.slacks[(record.tenant, record.sku)] = record.slack
        for cid, allotment in record.connections.items():
            if cid not in connections:
                continue
            key = (cid, record.tenant, record.sku)
            self.grants[key] = allotment.granted
            out = allotment.granted == 0 and record.available > 0
            since = self.out_since.pop(key, None)
            if since is not None:
                self._seconds += now - since
            if out:
                self.out_since[key] = now

    def granted_total(self) -> int:
        return sum(self.grants.values())

    def slack_total(self) -> int:
        return sum(max(0, s) for s in self.slacks.values())

    def take_stockout_seconds(self) -> float:
        """Listing-seconds of stock-out that ended or were observed since the last call."""
        seconds, self._seconds = self._seconds, 0.0
        return seconds


def dead_letter(channel: str, failure: Failure) -> UpdateDeadLettered:
    """The ``fanout.dlq`` record of a failed target (enough to replay it: see fanout/dlq.py)."""
    t, exc = failure.target, failure.error
    return UpdateDeadLettered(
        connection_id=t.connection_id,
        channel=channel,
        tenant=t.cause.tenant,
        sku=t.sku,
        quantity=t.quantity,
        version=t.precedence[0],
        original_topic={
            "stock_changed": stock_changed.TOPIC,
            "stock_rejected": stock_rejected.TOPIC,
            "stock_allocated": stock_allocated.TOPIC,
        }[t.cause.type],
        original=t.cause.model_dump(mode="json"),
        attempts=failure.attempts,
        status=exc.status if isinstance(exc, ChannelError) else None,
        last_error=f"{type(exc).__name__}: {exc}",
        failed_at=datetime.now(UTC),
    )
