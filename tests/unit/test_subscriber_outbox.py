"""The subscriber worker's pure parts (fanout/subscribers.py): signature, delivery ids, URL checks, how an
answer is classified, and one subscriber's outbox (coalescing, order by version, the batches it settles)
driven by a fake courier whose deliveries the test releases one by one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from prometheus_client import CollectorRegistry

from fanout.subscribers import (
    Change,
    Outbox,
    Subscriber,
    SubscriberMetrics,
    Ticket,
    WebhookError,
    attempt_result,
    change_of,
    check_url,
    delivery_id,
    refusal,
    retry_after,
    signature,
)
from schemas.stock_changed import StockChanged
from stocksync.retry import Outcome

NOW = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
SUB = Subscriber(id="sub_1", tenant="acme", url="https://agent.example/hook", secret="sswh_test")


def record(sku: str, version: int, available: int = 5) -> StockChanged:
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


def change(sku: str, version: int) -> Change:
    return change_of(record(sku, version), 5)


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    body = b'{"sku":"A"}'
    expected = hmac.new(b"sswh_test", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("sswh_test", 1_700_000_000, body) == f"sha256={expected}"
    assert signature("other", 1_700_000_000, body) != signature("sswh_test", 1_700_000_000, body)
    assert signature("sswh_test", 1_700_000_001, body) != signature("sswh_test", 1_700_000_000, body)


def test_a_delivery_id_is_stable_for_one_change_to_one_subscriber() -> None:
    one = delivery_id("sub_1", "acme", "A", 3)
    assert one == delivery_id("sub_1", "acme", "A", 3)
    assert one.startswith("dlv_")
    assert len({one, delivery_id("sub_2", "acme", "A", 3), delivery_id("sub_1", "acme", "A", 4)}) == 3


def test_the_body_is_what_agents_may_see() -> None:
    c = change_of(record("A", 7, available=40), 3)
    assert c.payload == {
        "tenant": "acme",
        "sku": "A",
        "available": 3,
        "status": "limited_stock",
        "version": 7,
        "as_of": "2026-05-01T09:30:00+00:00",
    }
    assert change_of(record("A", 7), 0).payload["status"] == "out_of_stock"
    assert change_of(record("A", 7), 6).payload["status"] == "in_stock"


@pytest.mark.parametrize(
    "url", ["https://agent.example/hook", "http://127.0.0.1:8080/x?token=1", "HTTPS://Agent.Example"]
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(f"  {url} ") == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("x", "not an http"),
        ("ftp://agent.example/hook", "not an http"),
        ("https:///path", "no host"),
        ("https://agent.example:notaport/", "not a URL"),
        ("https://agent.example/a b", "spaces"),
    ],
)
def test_other_urls_are_refused_with_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_url(url)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7", now=NOW) == 7.0
    assert retry_after(format_datetime(NOW + timedelta(seconds=12), usegmt=True), now=NOW) == 12.0
    assert retry_after(format_datetime(NOW - timedelta(seconds=12), usegmt=True), now=NOW) == 0.0
    assert retry_after("soon", now=NOW) is None
    assert retry_after(None, now=NOW) is None


@pytest.mark.parametrize(
    ("status", "retried", "result"),
    [
        (500, True, "server_error"),
        (503, True, "server_error"),
        (408, True, "timeout"),
        (429, True, "rate_limited"),
        (400, False, "client_error"),
        (401, False, "client_error"),
        (404, False, "client_error"),
        (410, False, "client_error"),
        (301, False, "client_error"),
    ],
)
def test_which_answers_are_retried(status: int, retried: bool, result: str) -> None:
    err = refusal(SUB, status, "nope", "3")
    assert err.retryable is retried
    assert err.retry_after_s == (3.0 if status in (429, 503) else None)
    assert attempt_result(err) == result
    assert "agent.example" in str(err)
    assert "/hook" not in str(err)


def test_network_failures_are_labelled() -> None:
    assert attempt_result(None) == "ok"
    assert attempt_result(TimeoutError()) == "timeout"
    assert attempt_result(ConnectionResetError()) == "network"


@dataclass
class FakeCourier:
    """Each delivery waits until the test answers it: True delivers, an exception fails it."""

    started: asyncio.Queue[tuple[Change, asyncio.Future[Outcome]]] = field(default_factory=asyncio.Queue)
    letters: list[tuple[Change, Outcome]] = field(default_factory=list)

    async def deliver(self, subscriber: Subscriber, change: Change) -> Outcome:
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self.started.put((change, answer))
        return await answer

    async def dead_letter(self, subscriber: Subscriber, change: Change, outcome: Outcome) -> None:
        self.letters.append((change, outcome))

    async def next(self) -> tuple[Change, asyncio.Future[Outcome]]:
        return await asyncio.wait_for(self.started.get(), 5)


def outbox(courier: FakeCourier, limit: int = 4) -> tuple[Outbox, CollectorRegistry]:
    registry = CollectorRegistry()
    return Outbox(SUB, courier, SubscriberMetrics(registry), limit=limit), registry


def sealed() -> Ticket:
    return Ticket({("t", 0): 1}, sealed=True)


async def settle(box: Outbox) -> None:
    """Until the outbox's tasks are done."""
    await asyncio.wait_for(asyncio.gather(*box.tasks), 5)


def count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("fanout_subscriber_deliveries_total", {"outcome": outcome}) or 0.0


async def test_a_slow_subscriber_gets_the_newest_version_not_every_step() -> None:
    courier = FakeCourier()
    box, registry = outbox(courier)
    tickets = [sealed(), sealed(), sealed()]
    box.offer(change("A", 1), tickets[0])
    box.pump()
    first, answer = await courier.next()
    assert first.version == 1
    box.offer(change("A", 2), tickets[1])
    box.offer(change("A", 3), tickets[2])
    box.pump()
    assert courier.started.empty()  # one in flight per SKU
    assert [t.settled for t in tickets] == [False, False, False]
    answer.set_result(Outcome(1))
    second, answer = await courier.next()
    assert second.version == 3
    assert [t.settled for t in tickets] == [True, False, False]  # the 2nd waits for 3, which replaced 2
    answer.set_result(Outcome(1))
    await settle(box)
    assert [t.settled for t in tickets] == [True, True, True]
    assert count(registry, "delivered") == 2
    assert count(registry, "coalesced") == 1


async def test_a_version_at_or_below_one_sent_is_never_sent() -> None:
    courier = FakeCourier()
    box, registry = outbox(courier)
    box.offer(change("A", 5), sealed())
    box.pump()
    _c, answer = await courier.next()
    late = sealed()
    box.offer(change("A", 4), late)  # older than the one in flight: it settles with it, unsent
    answer.set_result(Outcome(1))
    await settle(box)
    assert late.settled
    again = sealed()
    box.offer(change("A", 5), again)  # a redelivery
    box.offer(change("A", 2), again)
    box.pump()
    assert courier.started.empty()
    assert count(registry, "stale") == 3
    box.offer(change("A", 6), sealed())
    box.pump()
    newer, answer = await courier.next()
    assert newer.version == 6
    answer.set_result(Outcome(1))
    await settle(box)


async def test_skus_go_out_side_by_side_up_to_the_limit() -> None:
    courier = FakeCourier()
    box, _registry = outbox(courier, limit=2)
    ticket = Ticket({("t", 0): 9})
    for sku in "ABC":
        box.offer(change(sku, 1), ticket)
    ticket.sealed = True
    box.pump()
    a, answer_a = await courier.next()
    b, answer_b = await courier.next()
    assert {a.sku, b.sku} == {"A", "B"}
    assert courier.started.empty()
    answer_b.set_result(Outcome(1))
    c, answer_c = await courier.next()
    assert c.sku == "C"
    answer_a.set_result(Outcome(1))
    answer_c.set_result(Outcome(1))
    await settle(box)
    assert ticket.settled


async def test_a_failed_delivery_is_dead_lettered_and_the_next_change_goes_out() -> None:
    courier = FakeCourier()
    box, registry = outbox(courier)
    ticket = sealed()
    box.offer(change("A", 1), ticket)
    box.pump()
    _c, answer = await courier.next()
    failure = WebhookError("HTTP 500", status=500, retryable=True, retry_after_s=None)
    answer.set_result(Outcome(5, failure))
    await settle(box)
    assert ticket.settled
    assert [(c.version, o.attempts) for c, o in courier.letters] == [(1, 5)]
    assert count(registry, "dead_lettered") == 1
    box.offer(change("A", 1), sealed())  # not sent again
    box.offer(change("A", 2), sealed())
    box.pump()
    nxt, answer = await courier.next()
    assert nxt.version == 2
    answer.set_result(Outcome(1))
    await settle(box)


async def test_removing_the_subscriber_settles_what_it_was_owed() -> None:
    courier = FakeCourier()
    box, registry = outbox(courier)
    flying, queued = sealed(), sealed()
    box.offer(change("A", 1), flying)
    box.pump()
    await courier.next()
    box.offer(change("A", 2), queued)
    tasks = box.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert flying.settled
    assert queued.settled
    assert count(registry, "dropped") == 2
    assert courier.letters == []


async def test_stopping_leaves_the_batches_unacknowledged() -> None:
    courier = FakeCourier()
    box, _registry = outbox(courier)
    ticket = sealed()
    box.offer(change("A", 1), ticket)
    box.pump()
    await courier.next()
    await asyncio.gather(*box.stop(), return_exceptions=True)
    assert not ticket.settled  # delivered again after the restart
