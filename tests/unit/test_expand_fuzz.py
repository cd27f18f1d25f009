"""Thin payloads (Etsy, TikTok, BigCommerce, Flipkart): whatever a signed body holds, the gateway's expand
then normalise ends in events, a PayloadError (quarantine) or a channel/network error (503), never a crash.

The channel's API is unreachable here (a closed loopback port), so every fetch expand attempts is a network
error: what is under test is how expand reads the body, not the channel's answer.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.errors import ChannelError, PayloadError
from channels.registry import SPECS
from lab.marketplaces import BUILDERS
from tests.channel_kit import json_values, mutate, published

THIN = ("etsy", "tiktok", "bigcommerce", "flipkart")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
UNREACHABLE = "http://127.0.0.1:1"
SKUS = ("SKU-1", "SKU-2")


def realistic(channel: str) -> tuple[Any, dict[str, str], Any]:
    """The channel's own connection, one webhook its simulator signs for an order (as JSON), its headers."""
    make_connection, make_simulator = BUILDERS[channel]
    connection = make_connection(UNREACHABLE, skus=SKUS, conn_id=f"{channel}-fuzz", tenant="fuzz")
    simulator = make_simulator(connection)
    body, headers = simulator.place_order(connection, 77, [("SKU-1", 2), ("SKU-2", 1)], NOW)
    return connection, headers, json.loads(body)


SAMPLES = {channel: realistic(channel) for channel in THIN}


async def expand_then_normalise(channel: str, body: bytes) -> None:
    connection, headers, _ = SAMPLES[channel]
    adapter = SPECS[channel]
    assert adapter.expand is not None
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            expanded = await adapter.expand(session, connection, body, headers)
        except (ChannelError, aiohttp.ClientError, TimeoutError):
            return  # the gateway answers 503: the channel delivers it again
        except PayloadError:
            return  # quarantined with the reason
    assert isinstance(expanded, bytes)
    events = published(lambda: adapter.normalise(connection, expanded, headers, NOW))
    if events is None:
        return  # quarantined with the reason
    assert all(e.sku in connection.listings and e.tenant == "fuzz" for e in events)


@st.composite
def bodies(draw: st.DrawFn, channel: str) -> bytes:
    kind = draw(st.sampled_from(["mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "json":
        return json.dumps(draw(json_values())).encode()
    document = copy.deepcopy(SAMPLES[channel][2])
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(document, dict | list) or not document:
            break
        mutate(draw(st.data()), document, json_values(max_leaves=6))
    return json.dumps(document).encode()


@pytest.mark.parametrize("channel", THIN)
def test_expand_and_normalise_never_crash_on_a_signed_body(channel: str) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies(channel))
    def check(body: bytes) -> None:
        asyncio.run(expand_then_normalise(channel, body))

    check()


def test_an_unparseable_receipt_url_is_a_payload_error_not_a_crash() -> None:
    """Found by the fuzz test: urlparse raises ValueError on an unclosed IPv6 bracket."""
    connection, headers, document = SAMPLES["etsy"]
    document = {**document, "resource_url": "http://[x/v3/application/shops/1/receipts/2"}
    document.pop("receipt", None)

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            expand = SPECS["etsy"].expand
            assert expand is not None
            with pytest.raises(PayloadError, match="not an Etsy receipt URL"):
                await expand(session, connection, json.dumps(document).encode(), headers)

    asyncio.run(run())
