"""``stocksync bench``: the three parts in turn on one local Kafka, one PostgreSQL and the nine simulators,
then agent reservations (lab.bench.agent) and a small real-time flash sale under ``never_cancel``
(lab.bench.flash)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from lab.bench.agent import agent_part
from lab.bench.config import BenchConfig
from lab.bench.e2e import SKUS, e2e_part, nine_marketplaces
from lab.bench.flash import flash_sale_row
from lab.bench.gateway import gateway_part
from lab.bench.processor import processor_part
from lab.bench.report import machine
from lab.bench.usage import infra_pids
from lab.local import local_kafka, local_postgres
from lab.local.process import make_run_dir


async def run_bench(console: Console, config: BenchConfig) -> dict[str, Any]:
    """Local Kafka and PostgreSQL, then the gateway, processor and end-to-end parts; the report as a dict."""
    console.rule("stocksync bench")
    started = time.monotonic()
    result: dict[str, Any] = {"machine": machine(), "started_at": datetime.now(UTC).isoformat()}
    with local_postgres() as pg, local_kafka() as kafka_endpoint:
        console.print(f"[dim]PostgreSQL: {pg.describe()}\nKafka: {kafka_endpoint.describe()}[/]")
        result["kafka"], result["postgres"] = kafka_endpoint.describe(), pg.describe()
        infra = infra_pids(kafka_endpoint, pg)
        usage: dict[str, Any] = {}
        async with nine_marketplaces() as (markets, connections_file):
            shopify = markets["shopify"].connection
            result["gateway"], usage["gateway"] = await gateway_part(
                console, config, kafka_endpoint, pg.url, connections_file, shopify, SKUS, infra
            )
            result["processor"], usage["processor"] = await processor_part(
                console, kafka_endpoint, pg, connections_file, infra, events=config.processor_events
            )
            e2e, e2e_usage = await e2e_part(
                console, config, kafka_endpoint, pg, markets, connections_file, infra
            )
            result.update(e2e)
            usage.update(e2e_usage)
        result["agent"] = await agent_part(console, kafka_endpoint, pg.url, make_run_dir("bench-agent"))
        result["services"] = usage
    # The flash sale under never_cancel, on infrastructure of its own (after the parts above released theirs).
    result["flash_sale"] = await flash_sale_row(lambda m: console.print(f"[dim]{m}[/]"))
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result
