"""All nine marketplace simulators behind one shape, for the multi-channel demo, tests and benchmark.

Each marketplace: a simulator served on its own loopback port, a connection to it (fresh secrets, listings for
the given SKUs), and what the channel shows read through its real outbound client, so every channel is
observed the same way whatever its simulator keys its counts by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from channels.connection import Connection, to_toml
from channels.registry import spec
from lab.local.process import free_port
from lab.local.stack import StackConfig
from lab.marketplaces import amazon as amazon
from lab.marketplaces import bigcommerce as bigcommerce
from lab.marketplaces import ebay as ebay
from lab.marketplaces import etsy as etsy
from lab.marketplaces import flipkart as flipkart
from lab.marketplaces import shopify as shopify
from lab.marketplaces import tiktok as tiktok
from lab.marketplaces import walmart as walmart
from lab.marketplaces import woocommerce as woocommerce
from lab.marketplaces.serve import serve
from stocksync.settings import KafkaSettings


class Simulator(Protocol):
    rate_limited: int

    @property
    def calls(self) -> list[Any]: ...

    def app(self) -> web.Application: ...

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]: ...


def _shopify(conn: Connection) -> Any:
    sim = shopify.ShopifySimulator(access_token=conn.access_token.get_secret_value())
    for listing in conn.listings.values():
        sim.available[listing.inventory_ref or ""] = 0
    return sim


def _adopted(factory: Callable[[], Any]) -> Callable[[Connection], Any]:
    def build(conn: Connection) -> Any:
        sim = factory()
        sim.adopt(conn, initial=0)
        return sim

    return build


# channel -> (connection factory, simulator factory for that connection)
BUILDERS: dict[str, tuple[Callable[..., Connection], Callable[[Connection], Any]]] = {
    "shopify": (shopify.sample_connection, _shopify),
    "amazon": (amazon.sample_connection, _adopted(lambda: amazon.AmazonSimulator(access_token=""))),
    "ebay": (ebay.sample_connection, ebay.EbaySimulator.for_connection),
    "etsy": (etsy.sample_connection, etsy.EtsySimulator.for_connection),
    "woocommerce": (woocommerce.sample_connection, woocommerce.WooCommerceSimulator.for_connection),
    "walmart": (walmart.sample_connection, walmart.WalmartSimulator.for_connection),
    "tiktok": (tiktok.sample_connection, _adopted(tiktok.TikTokSimulator)),
    "bigcommerce": (bigcommerce.sample_connection, _adopted(bigcommerce.BigCommerceSimulator)),
    "flipkart": (flipkart.sample_connection, _adopted(flipkart.FlipkartSimulator)),
}


@dataclass
class Marketplace:
    channel: str
    connection: Connection
    simulator: Simulator

    async def shows(self, session: aiohttp.ClientSession, skus: list[str]) -> dict[str, int]:
        """What the channel shows now, read through its outbound client (costs one call per read batch)."""
        return await spec(self.channel).client(session, self.connection).get_available(skus)


@asynccontextmanager
async def marketplaces(
    skus: tuple[str, ...], *, tenant: str, channels: tuple[str, ...] = tuple(BUILDERS)
) -> AsyncIterator[dict[str, Marketplace]]:
    """A simulator per channel, each served on its own loopback port, until the block ends."""
    async with AsyncExitStack() as stack:
        out: dict[str, Marketplace] = {}
        for channel in channels:
            make_connection, make_simulator = BUILDERS[channel]
            port = free_port()
            conn = make_connection(
                f"http://127.0.0.1:{port}", skus=skus, conn_id=f"{channel}-{tenant}", tenant=tenant
            )
            sim = make_simulator(conn)
            await stack.enter_async_context(serve(sim.app(), port=port))
            out[channel] = Marketplace(channel, conn, sim)
        yield out


def stack_config(
    markets: dict[str, Marketplace], kafka: KafkaSettings, database_url: str, connections_file: Path
) -> StackConfig:
    """The services for these marketplaces, one fan-out process serving every channel; writes the
    connections file the services read."""
    connections_file.write_text(to_toml(m.connection for m in markets.values()))
    return StackConfig(
        kafka.bootstrap_servers,
        database_url,
        connections_file,
        kafka.topic_prefix,
        kafka.partitions,
        channels=tuple(markets),
        fanout_together=True,
    )
