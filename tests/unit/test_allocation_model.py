"""Model-based check of invariant 9 (no order to cancel) for one SKU: the real ``allocation`` rules driven
through random interleavings of everything that can happen between the master and up to nine storefronts.

What is modelled, and the real component each action stands for:

* **The master** (``processor/store.py`` + ``processor/allocate.py``): holds ``available`` (the seller's
  count, 1..40 units, plus up to three receipts) and each connection's ``granted``. A delivered sale webhook
  is applied once per event id (a duplicate changes nothing, invariant 2): applied when ``available >= q``,
  *rejected* otherwise. A rejection is an order a storefront took that the seller must cancel, the failure
  this file is about. Either way the selling connection's grant becomes ``after_sale(granted, q)`` (it did
  sell them). Then, under ``never_cancel``, ``allocate`` re-decides the grants from ``Holder``s (mode, grant,
  and, when the run draws it, the sales velocity decayed on the model's clock) and every ``Write`` it returns
  is queued for the fan-out tagged with the SKU's next ``seq``. The master also runs ``allocate`` when the
  seller's count is recorded (every grant 0) and after each receipt. Under ``mirror`` (today's behaviour)
  every change queues ``mirror``'s absolute writes for every connection instead: each shows the whole count.
* **The storefronts**: 1 to 9 connections, each drawn ``absolute`` (a plain set: most channels), ``cas``
  (Shopify's ``changeFromQuantity``) or ``relative`` (an adjustment by the raise: no channel today, but the
  rules allow it). A buyer ordering 1..3 units gets them if the storefront shows that many
  (its count drops at once, as a marketplace's does) and the sale's webhook is on its way; buyers come in
  bursts of up to four orders.
* **Webhooks** (gateway -> Kafka -> processor): any pending webhook may be delivered at any time (arbitrary
  delay and reordering), and a delivered one may stay pending to be delivered again (at-least-once).
* **The fan-out** (``fanout/``, one queue per connection): any queued write may be sent, in any order: it
  succeeds, or fails and stays queued (any later step may retry it), or fails its last attempt and is
  dead-lettered. As the real fan-out does with a record's precedence, a connection never applies a write
  whose ``seq`` is at or below the highest it applied (an older write arriving late is skipped). An absolute
  write sets the count. A compare-and-set write sets it if the storefront shows ``expect``; otherwise the
  channel answers ``CHANGE_FROM_QUANTITY_STALE`` and the retry, which reads the count first, shows
  ``cas_retarget(expect, shows, quantity)``. A relative write adds ``quantity - expect``. An absolute channel
  applies any write as a set.

Checked after every step, for every policy: the storefronts never took more units than the seller ever had
(the count plus the receipts), never show more than what is left of it (else the buyers alone, ordering what
is shown, make them take more: the oversell found a few steps earlier), and the master never rejected a sale.
Under ``never_cancel`` also the escrow invariant that implies it: ``sum(granted) <= available``, and for
every connection what it shows plus its sales the master has not processed yet ``<= granted``.

The same checker must fail the ``mirror`` policy (so it can fail), and ``never_cancel`` with one of its
guarantees switched off (compare-and-set written as a plain set; an absolute connection raised while it has
units left); those tests assert hypothesis finds the oversell. One more variant documents an assumption of
the rules rather than a guarantee they give: a write takes effect at most once. A call that times out after
the channel applied it, then sent again (the retry policy retries timeouts), shows units twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from allocation.rules import (
    WRITE_MODES,
    Holder,
    Policy,
    Write,
    WriteMode,
    after_sale,
    allocate,
    cas_retarget,
    decay,
    mirror,
)

MAX_CHANNELS = 9
MAX_RECEIPTS = 3
MAX_BURST = 4  # orders, deliveries or writes in one step
MAX_ATTEMPTS = 5  # a failed write is dead-lettered when its attempt number reaches this


def seen(what: str) -> None:
    """Count a case the search reached (pytest --hypothesis-show-statistics lists them)."""
    if currently_in_test_context():
        event(what)


@dataclass(frozen=True)
class Queued:
    """A write waiting in one connection's fan-out queue: the master's decision `seq` it came from."""

    seq: int
    write: Write


@dataclass(frozen=True)
class Webhook:
    event_id: str
    connection_id: str
    quantity: int


class Storefronts(RuleBasedStateMachine):
    """One SKU: the master, its connections' storefronts, the webhooks and the fan-out queues between them."""

    policy: ClassVar[Policy] = "never_cancel"
    # The guarantees the rules rely on. A variant switches one off to show the checker notices.
    cas_as_absolute: ClassVar[bool] = False  # the fan-out ignores `expect` (sets the count outright)
    rules_see_cas: ClassVar[bool] = False  # the rules think every connection can compare-and-set
    writes_once: ClassVar[bool] = True  # False: a write may take effect while the fan-out sees a failure
    check_grants: ClassVar[bool] = True  # also check the escrow invariant itself (never_cancel only)

    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[str, WriteMode] = {}
        self.stock_in = 0  # the seller's count plus every receipt: what the storefronts may ever sell
        self.available = 0
        self.granted: dict[str, int] = {}
        self.velocity: dict[str, float] = {}
        self.sold_at: dict[str, float | None] = {}
        self.use_velocity = False
        self.now = 0.0
        self.seq = 0
        self.rejected = 0
        self.shows: dict[str, int] = {}
        self.taken: dict[str, int] = {}
        self.unheard: dict[str, int] = {}  # units taken whose webhook the master has not processed
        self.webhooks: dict[str, Webhook] = {}  # pending (possibly again, as a duplicate)
        self.processed: set[str] = set()
        self.queues: dict[str, list[Queued]] = {}
        self.applied_seq: dict[str, int] = {}
        self.next_event = 0
        self.receipts = 0

    # -- the master -------------------------------------------------------------------------------------

    def holders(self) -> list[Holder]:
        out = []
        for cid, mode in self.modes.items():
            velocity = 0.0
            sold_at = self.sold_at[cid]
            if self.use_velocity and sold_at is not None:
                velocity = decay(self.velocity[cid], self.now - sold_at)
            rules_mode: WriteMode = "cas" if self.rules_see_cas else mode
            out.append(Holder(cid, rules_mode, self.granted[cid], velocity=velocity))
        return out

    def decide(self) -> None:
        """The master's decision after a change: new grants and the writes that raise them (never_cancel), or
        every connection set to the whole count (mirror); the writes go out tagged with the next seq."""
        if self.policy == "never_cancel":
            alloc = allocate(self.available, self.holders(), buffer=0)
            self.granted = dict(alloc.granted)
            writes = alloc.writes
        else:
            writes = mirror(self.available, [Holder(cid, "absolute") for cid in self.modes])
        if writes:
            self.seq += 1
            for w in writes:
                self.queues[w.connection_id].append(Queued(self.seq, w))

    def process(self, hook: Webhook) -> None:
        """A sale webhook reaches the processor: applied or rejected, the grant drops; then re-decide."""
        if hook.event_id in self.processed:
            seen("duplicate webhook")
            return  # a duplicate: the stored result is re-emitted, nothing changes
        self.processed.add(hook.event_id)
        cid, q = hook.connection_id, hook.quantity
        self.unheard[cid] -= q
        changed = self.available >= q
        if changed:
            self.available -= q
        else:
            self.rejected += q
            seen("sale rejected")
        self.granted[cid] = after_sale(self.granted[cid], q)
        sold_at = self.sold_at[cid]
        elapsed = self.now - sold_at if sold_at is not None else 0.0
        self.velocity[cid] = decay(self.velocity[cid], elapsed) + q
        self.sold_at[cid] = self.now
        if changed or self.policy == "never_cancel":
            self.decide()

    # -- the fan-out --------------------------------------------------------------------------------------

    def take_effect(self, cid: str, w: Write) -> None:
        """What the channel shows once it accepted write `w` (the CAS retry reads its count and retargets)."""
        mode = self.modes[cid]
        if w.expect is None or mode == "absolute" or self.cas_as_absolute:
            self.shows[cid] = w.quantity  # a set
        elif mode == "relative":
            self.shows[cid] += w.delta  # an adjustment by the raise
        elif self.shows[cid] == w.expect:
            self.shows[cid] = w.quantity  # a compare-and-set that matched
        else:
            seen("compare-and-set retargeted")
            self.shows[cid] = cas_retarget(w.expect, self.shows[cid], w.quantity)

    def queued(self) -> list[str]:
        return [cid for cid, q in self.queues.items() if q]

    # -- the rules ------------------------------------------------------------------------------------------

    @initialize(
        modes=st.lists(st.sampled_from(WRITE_MODES), min_size=1, max_size=MAX_CHANNELS),
        stock=st.integers(1, 40),
        use_velocity=st.booleans(),
    )
    def seller_counts(self, modes: list[WriteMode], stock: int, use_velocity: bool) -> None:
        """The seller records the count; the master makes its first decision with every grant at 0."""
        for i, mode in enumerate(modes):
            cid = f"c{i}-{mode}"
            self.modes[cid] = mode
            self.granted[cid] = self.shows[cid] = self.taken[cid] = self.unheard[cid] = 0
            self.velocity[cid], self.sold_at[cid] = 0.0, None
            self.queues[cid], self.applied_seq[cid] = [], 0
        self.stock_in = self.available = stock
        self.use_velocity = use_velocity
        self.decide()

    def order(self, cid: str, quantity: int) -> None:
        """A buyer orders `quantity` on storefront `cid`: taken if it shows that many (a storefront refuses
        more than it shows, which changes nothing); the webhook of the sale is now on its way."""
        if self.shows[cid] < quantity:
            return
        self.shows[cid] -= quantity
        self.taken[cid] += quantity
        self.unheard[cid] += quantity
        self.next_event += 1
        event_id = f"e{self.next_event}"
        self.webhooks[event_id] = Webhook(event_id, cid, quantity)

    def showing(self) -> list[str]:
        return [cid for cid, n in self.shows.items() if n > 0]

    @precondition(lambda self: bool(self.showing()))
    @rule(
        orders=st.lists(
            st.tuples(st.integers(0, MAX_CHANNELS - 1), st.integers(1, 3)), min_size=1, max_size=MAX_BURST
        )
    )
    def buyers_order(self, orders: list[tuple[int, int]]) -> None:
        """A burst of buyers, each ordering 1..3 units (no more than shown: a refused order changes nothing)
        on a storefront that shows some, before anything else happens."""
        for channel, quantity in orders:
            if showing := self.showing():
                cid = showing[channel % len(showing)]
                self.order(cid, min(quantity, self.shows[cid]))

    def deliver(self, pick: int, *, again: bool) -> None:
        """Pending webhook `pick` reaches the processor; `again`: it will be delivered again (a duplicate)."""
        event_id = list(self.webhooks)[pick % len(self.webhooks)]
        hook = self.webhooks[event_id] if again else self.webhooks.pop(event_id)
        self.process(hook)

    @precondition(lambda self: bool(self.webhooks))
    @rule(deliveries=st.lists(st.tuples(st.integers(0, 63), st.booleans()), min_size=1, max_size=MAX_BURST))
    def webhooks_delivered(self, deliveries: list[tuple[int, bool]]) -> None:
        """Pending webhooks are delivered, any of them, in any order, however late; one delivered with
        `again` set stays pending and will be delivered again (at-least-once delivery)."""
        for pick, again in deliveries:
            if self.webhooks:
                self.deliver(pick, again=again)

    def attempt(self, connection: int, pick: int) -> tuple[str, Queued] | None:
        """One queued write the fan-out sends now (any connection, any order in its queue); None: it is older
        than what the connection already applied, so it is skipped (dropped from the queue)."""
        waiting = self.queued()
        cid = waiting[connection % len(waiting)]
        queue = self.queues[cid]
        item = queue[pick % len(queue)]
        if item.seq <= self.applied_seq[cid]:
            queue.remove(item)
            seen("older write skipped")
            return None
        return cid, item

    def write_succeeds(self, connection: int, pick: int) -> None:
        """The channel accepts a queued write (a compare-and-set one after its retry if it was stale)."""
        if (sent := self.attempt(connection, pick)) is not None:
            cid, item = sent
            self.queues[cid].remove(item)
            self.applied_seq[cid] = item.seq
            self.take_effect(cid, item.write)

    @precondition(lambda self: bool(self.queued()))
    @rule(
        sends=st.lists(
            st.tuples(st.integers(0, MAX_CHANNELS - 1), st.integers(0, 63)), min_size=1, max_size=MAX_BURST
        )
    )
    def fanout_writes_succeed(self, sends: list[tuple[int, int]]) -> None:
        """Queued writes succeed, on any connections, in any order within a connection's queue."""
        for connection, pick in sends:
            if self.queued():
                self.write_succeeds(connection, pick)

    @precondition(lambda self: bool(self.queued()))
    @rule(
        connection=st.integers(0, MAX_CHANNELS - 1),
        pick=st.integers(0, 63),
        attempt=st.integers(1, MAX_ATTEMPTS),
    )
    def fanout_write_fails(self, connection: int, pick: int, attempt: int) -> None:
        """A queued write fails: it stays queued to be retried later (any later step may apply it), or, when
        this was its last attempt, it is dead-lettered."""
        if (sent := self.attempt(connection, pick)) is not None and attempt == MAX_ATTEMPTS:
            cid, item = sent
            self.queues[cid].remove(item)
            seen("write dead-lettered")

    @precondition(lambda self: not self.writes_once and bool(self.queued()))
    @rule(connection=st.integers(0, MAX_CHANNELS - 1), pick=st.integers(0, 63))
    def fanout_write_times_out_after_taking_effect(self, connection: int, pick: int) -> None:
        """(Only when `writes_once` is off.) The channel applies the write but its answer is lost: the fan-out
        saw a timeout, so the write stays queued and will be sent again."""
        if (sent := self.attempt(connection, pick)) is not None:
            cid, item = sent
            self.take_effect(cid, item.write)

    @precondition(lambda self: self.receipts < MAX_RECEIPTS)
    @rule(units=st.integers(1, 10))
    def stock_received(self, units: int) -> None:
        """A receipt adds units to the master; the master re-decides. (A few per run, so that most runs still
        sell the stock down to its last units, where an oversell happens.)"""
        self.receipts += 1
        self.available += units
        self.stock_in += units
        self.decide()

    def settled(self) -> bool:
        """Nothing left to happen but time: no write queued, no webhook pending, nothing shown, no receipt."""
        return not (self.queued() or self.webhooks or self.showing() or self.receipts < MAX_RECEIPTS)

    @precondition(lambda self: self.use_velocity or self.settled())
    @rule(seconds=st.sampled_from([1.0, 30.0, 60.0, 600.0]))
    def time_passes(self, seconds: float) -> None:
        """Recent sales count for less (the velocity half-life is a minute), when the run uses velocity. (Also
        the one step left once the run has settled.)"""
        self.now += seconds

    # -- the invariants -----------------------------------------------------------------------------------

    def describe(self) -> str:
        return (
            f"stock {self.stock_in}, available {self.available}, granted {self.granted}, shows {self.shows}, "
            f"taken {self.taken}, unheard {self.unheard}, rejected {self.rejected}"
        )

    @invariant()
    def no_order_to_cancel(self) -> None:
        sold = sum(self.taken.values())
        assert sold <= self.stock_in, (
            f"the storefronts took {sold} units of {self.stock_in}: {self.describe()}"
        )
        assert self.rejected == 0, f"the master rejected {self.rejected} sold units: {self.describe()}"
        shown = sum(self.shows.values())
        assert sold + shown <= self.stock_in, (
            f"the storefronts took {sold} and show {shown} units of {self.stock_in} (buyers ordering what "
            f"they show would make them take more): {self.describe()}"
        )

    @invariant()
    def escrow(self) -> None:
        if self.policy != "never_cancel" or not self.check_grants:
            return
        total = sum(self.granted.values())
        assert total <= self.available, f"grants {total} exceed available: {self.describe()}"
        for cid, granted in self.granted.items():
            exposed = self.shows[cid] + self.unheard[cid]
            assert exposed <= granted, (
                f"{cid} may sell {exposed} with a grant of {granted}: {self.describe()}"
            )


# STOCKSYNC_MODEL_EXAMPLES / _STEPS: a longer search, with fresh random runs each time (the default is the
# same derandomized 200 runs of up to 60 steps on every machine: a few seconds).
DEEP = "STOCKSYNC_MODEL_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("STOCKSYNC_MODEL_EXAMPLES", "200"))
STEPS = int(os.environ.get("STOCKSYNC_MODEL_STEPS", "60"))

SEARCH = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=not DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Searching for a counter-example that must exist: stop at the first one. Shrinking a state machine takes far
# longer than finding the failure (tens of seconds); STOCKSYNC_MODEL_SHRINK=1 shrinks it to read it.
SHRINK = bool(os.environ.get("STOCKSYNC_MODEL_SHRINK"))
FIND = settings(
    SEARCH,
    max_examples=300,
    stateful_step_count=50,
    derandomize=True,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
)


def test_never_cancel_keeps_the_invariant_in_every_run() -> None:
    run_state_machine_as_test(Storefronts, settings=SEARCH)


class Mirror(Storefronts):
    policy: ClassVar[Policy] = "mirror"


class CasWrittenAbsolutely(Storefronts):
    """Guarantee off: the fan-out sends `quantity` without ``changeFromQuantity``, so a raise overwrites the
    sales the master has not heard of yet."""

    cas_as_absolute = True
    check_grants = False  # the search finds the oversell itself


class AbsoluteRaisedWithUnitsLeft(Storefronts):
    """Guarantee off: the rules are told every connection can compare-and-set, so they raise an absolute
    connection whose grant is not 0, and the channel applies the write as a plain set."""

    rules_see_cas = True
    check_grants = False


class WritesTakeEffectTwice(Storefronts):
    """Assumption off: a write may take effect at the channel and still be sent again."""

    writes_once = False
    check_grants = False


def find_counterexample(machine: type[Storefronts]) -> str:
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(machine, settings=FIND)
    return str(failure.value)


def test_mirror_fails_the_same_check() -> None:
    """Today's behaviour fails the very checker never_cancel passes: every channel shows the whole count, so
    together they show (and their buyers take) more than the stock."""
    assert "the storefronts took" in find_counterexample(Mirror)


@pytest.mark.parametrize("machine", [CasWrittenAbsolutely, AbsoluteRaisedWithUnitsLeft])
def test_never_cancel_with_a_guarantee_switched_off_oversells(machine: type[Storefronts]) -> None:
    """The checker notices each guarantee: without it the same search finds an oversell."""
    assert "the storefronts took" in find_counterexample(machine)


def test_a_write_that_takes_effect_twice_oversells() -> None:
    """An assumption of the rules, not a guarantee they give: a write takes effect at most once. A call that
    times out after the channel applied it, sent again, shows units a second time."""
    assert "the storefronts took" in find_counterexample(WritesTakeEffectTwice)


# -- the same counter-examples, by hand and carried through to the oversell --------------------------------


def checked(machine: Storefronts) -> Storefronts:
    machine.no_order_to_cancel()
    machine.escrow()
    return machine


def buyers_take_everything_shown(machine: Storefronts, *, check: bool) -> None:
    for cid in machine.modes:
        while machine.shows[cid] > 0:
            machine.order(cid, min(3, machine.shows[cid]))
            if check:
                checked(machine)


def fanout_succeeds(machine: Storefronts, *, check: bool) -> None:
    while machine.queued():
        machine.write_succeeds(0, 0)
        if check:
            checked(machine)


def webhooks_arrive(machine: Storefronts) -> None:
    while machine.webhooks:
        checked(machine).deliver(0, again=False)
    checked(machine)


def test_mirror_oversells_one_unit_on_two_channels() -> None:
    machine = Mirror()
    machine.seller_counts(modes=["absolute", "absolute"], stock=1, use_velocity=False)
    fanout_succeeds(machine, check=False)
    assert machine.shows == {"c0-absolute": 1, "c1-absolute": 1}
    buyers_take_everything_shown(machine, check=False)
    assert sum(machine.taken.values()) == 2
    machine.deliver(0, again=False)
    machine.deliver(0, again=False)
    assert machine.rejected == 1  # an order the seller must cancel


def test_never_cancel_grants_one_unit_to_one_channel() -> None:
    machine = checked(Storefronts())
    machine.seller_counts(modes=["absolute", "absolute"], stock=1, use_velocity=False)
    fanout_succeeds(machine, check=True)
    assert sorted(machine.shows.values()) == [0, 1]
    buyers_take_everything_shown(machine, check=True)
    webhooks_arrive(machine)
    assert machine.available == 0
    assert machine.rejected == 0


def raised_between_sell_outs(machine: Storefronts, mode: WriteMode, *, check: bool) -> None:
    """One channel, 1 unit; twice: the raise reaches it, its buyers take all it shows (the webhooks are slow),
    2 more units are received, the master raises it again (hypothesis' shrunk counter-example)."""
    machine.seller_counts(modes=[mode], stock=1, use_velocity=False)
    for _ in range(2):
        fanout_succeeds(machine, check=check)
        buyers_take_everything_shown(machine, check=check)
        machine.stock_received(units=2)
        if check:
            checked(machine)


@pytest.mark.parametrize(
    ("machine", "mode"),
    [(CasWrittenAbsolutely, "cas"), (AbsoluteRaisedWithUnitsLeft, "absolute")],
)
def test_a_switched_off_guarantee_oversells_when_raised_between_sell_outs(
    machine: type[Storefronts], mode: WriteMode
) -> None:
    """Each raise is a set that forgets the units sold since the last one: 1 + 2 units taken of 5 (the master
    has heard of none), and the third raise shows 3 more."""
    m = machine()
    raised_between_sell_outs(m, mode, check=False)
    fanout_succeeds(m, check=False)
    assert m.shows == {f"c0-{mode}": 3}
    buyers_take_everything_shown(m, check=False)
    assert (sum(m.taken.values()), m.stock_in) == (6, 5)
    assert m.rejected == 0  # not yet: the webhooks are still on their way
    while m.webhooks:
        m.deliver(0, again=False)
    assert m.rejected == 3  # the order of 3 that found 2 units left: the seller cancels it


@pytest.mark.parametrize("mode", ["cas", "absolute"])
def test_never_cancel_keeps_the_invariant_when_raised_between_sell_outs(mode: WriteMode) -> None:
    machine = checked(Storefronts())
    raised_between_sell_outs(machine, mode, check=True)
    webhooks_arrive(machine)
    fanout_succeeds(machine, check=True)
    buyers_take_everything_shown(machine, check=True)
    webhooks_arrive(machine)
    assert machine.rejected == 0


def test_a_write_that_takes_effect_twice_oversells_by_hand() -> None:
    machine = WritesTakeEffectTwice()
    machine.seller_counts(modes=["absolute"], stock=1, use_velocity=False)
    machine.fanout_write_times_out_after_taking_effect(connection=0, pick=0)  # shows 1, the write stays
    machine.order("c0-absolute", 1)
    machine.fanout_write_times_out_after_taking_effect(connection=0, pick=0)  # shows 1 again
    machine.order("c0-absolute", 1)
    assert sum(machine.taken.values()) == 2
