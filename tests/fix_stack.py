"""A Shopify simulator on loopback, a connections file pointing at it, and the pipeline's processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from channels.connection import Connection, to_toml
from lab.local.stack import Stack
from lab.marketplaces.serve import serve
from lab.marketplaces.shopify import ShopifySimulator, sample_connection
from lab.sandbox import Sandbox
from stocksync.settings import KafkaSettings


@dataclass
class ShopifyWorld:
    simulator: ShopifySimulator
    connection: Connection
    connections_file: Path

    def item(self, sku: str) -> str:
        ref = self.connection.listings[sku].inventory_ref
        assert ref is not None
        return ref


@pytest.fixture
async def shopify_world(tmp_path: Path) -> AsyncIterator[ShopifyWorld]:
    simulator = ShopifySimulator(access_token="")
    async with serve(simulator.app()) as base_url:
        connection = sample_connection(base_url, skus=("SKU-1", "SKU-2", "SKU-3"))
        simulator.access_token = connection.access_token.get_secret_value()
        for listing in connection.listings.values():
            assert listing.inventory_ref is not None
            simulator.available[listing.inventory_ref] = 0
        path = tmp_path / "connections.toml"
        path.write_text(to_toml([connection]))
        yield ShopifyWorld(simulator, connection, path)


@pytest.fixture
async def pipeline(
    kafka: KafkaSettings, database_url: str, shopify_world: ShopifyWorld
) -> AsyncIterator[Stack]:
    """ingest + processor + fan-out(shopify) as separate processes on the test's topics and database."""
    async with Sandbox(kafka, database_url) as box:
        yield await box.start(shopify_world.connections_file, ready_timeout_s=30)
