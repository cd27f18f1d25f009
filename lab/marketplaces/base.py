"""The shell every marketplace simulator shares: injected failures and outages, the budget gate (a token
bucket answering 429 with Retry-After) and the credential check, in the order the channel applies them.
A subclass supplies its app() and how the channel words its refusals (credentials, throttled, failed)."""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from channels.ratelimit import TokenBucket


def retry_after(wait: float) -> str:
    """A Retry-After value for `wait` seconds: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))


@dataclass(kw_only=True)
class MarketplaceSimulator:
    """Failure injection (`fail_next`, `fail_for`), the 429 count (`rate_limited`) and `gate`: credentials,
    then the budget and the injected failures (failures first where the channel checks them first)."""

    FAILURES_BEFORE_BUDGET: ClassVar[bool] = False

    failures: list[int] = field(default_factory=list)  # statuses to answer the next requests with
    rate_limited: int = 0  # requests answered 429 by the budget
    failing_until: float = 0.0  # time.monotonic() until which every request fails (an outage)
    failing_status: int = 503

    def app(self) -> web.Application:
        """The channel's HTTP API as an aiohttp application."""
        raise NotImplementedError

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next `times` requests that pass the credential check with `status`."""
        self.failures.extend([status] * times)

    def fail_for(self, status: int, seconds: float) -> None:
        """Answer every request with `status` for the next `seconds` (an outage)."""
        self.failing_status, self.failing_until = status, time.monotonic() + seconds

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        """The channel's answer to a request with wrong credentials, or None if they hold."""
        return None

    def throttled(self, wait: float) -> web.Response:
        """The channel's 429 when its budget is spent for `wait` more seconds (with Retry-After)."""
        return web.json_response(
            {"error": "Too many requests"}, status=429, headers={"Retry-After": retry_after(wait)}
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        """The channel's error answer for an injected failure (`outage`: inside a fail_for window)."""
        return web.json_response(
            {"error": "injected outage" if outage else "injected failure"}, status=status
        )

    def spend(self, bucket: TokenBucket) -> web.Response | None:
        """One token from `bucket`: None, or the 429 (counted in `rate_limited`) if it is spent."""
        wait = bucket.take()
        if wait > 0:
            self.rate_limited += 1
            return self.throttled(wait)
        return None

    def injected_failure(self) -> web.Response | None:
        """The outage's answer while one lasts, else the next failure asked for by fail_next, else None."""
        if time.monotonic() < self.failing_until:
            return self.injected(self.failing_status, outage=True)
        if self.failures:
            return self.injected(self.failures.pop(0), outage=False)
        return None

    def gate(self, request: web.Request, bucket: TokenBucket) -> web.Response | None:
        """Credentials, then the budget and injected failures in the channel's order; None lets it through."""
        refused = self.refuse_credentials(request)
        if refused is None and self.FAILURES_BEFORE_BUDGET:
            refused = self.injected_failure()
        if refused is None:
            refused = self.spend(bucket)
        if refused is None and not self.FAILURES_BEFORE_BUDGET:
            refused = self.injected_failure()
        return refused


def basic_credentials(value: str) -> tuple[str, str] | None:
    """(login, password) from an ``Authorization: Basic …`` header value, or None if it is not one."""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        login, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None
