"""A small real-time flash sale under ``never_cancel``, for ``stocksync bench``: the demo's machinery
(lab.demo.run) on its own local Kafka and PostgreSQL, one tenant, nine simulators, the services as processes.

`skus` SKUs with 5 to 40 units each and `orders` buyers' orders in a rush at the opening (the demo's
generator), played by the wall clock over `seconds`. A storefront takes an order only while its own count
(its grant) covers it; the figures are the demo's: orders, accepted (taken and applied by the master),
cancellations (taken, refused by the master: the target is 0), units sold (applied), sell-through (units sold
/ sum over SKUs of min(stock, units asked)), propagation p50/p99 (the fan-out's sync_lag_seconds over the
sale and its settling) and the wall-clock seconds of the whole row, start-up included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import Progress

from lab.demo.model import DemoOptions, flash_sale
from lab.demo.report import event_driven_dict
from lab.demo.run import pipeline, play, seed_stock, tally_event_driven
from lab.marketplaces import BUILDERS


async def flash_sale_row(
    say: Callable[[str], None], *, skus: int = 10, orders: int = 600, seconds: float = 20.0, seed: int = 8
) -> dict[str, Any]:
    """Play the sale (see the module) and return its figures; raises if the pipeline does not take every sale
    or settle in time (lab.local.process.eventually)."""
    started = time.monotonic()
    options = DemoOptions(skus=skus, orders=orders, seconds=seconds, sale_minutes=seconds / 60, seed=seed)
    stock, stream = flash_sale(options, list(BUILDERS))
    async with pipeline(list(stock), say, policies=("never_cancel",), label="flash") as p:
        shop = p.shops["never_cancel"]
        with Progress(disable=True) as progress:
            await seed_stock(p, stock, progress)
            say(
                f"flash sale: {orders} orders for {sum(stock.values())} units of {skus} SKUs in {seconds:g} s"
            )
            run = await play(p, shop, options, stock, stream, progress)
        tally_event_driven(p, shop, run, stock, stream, options)
    ed = run.result
    if ed.skus_out_of_sync:
        say(f"not at their grants at the end: {'; '.join(ed.skus_out_of_sync[:5])}")
    figures = event_driven_dict(ed)
    keys = ("orders", "accepted", "cancellations", "units_sold", "sell_through", "p50_ms", "p99_ms")
    return {**{k: figures[k] for k in keys}, "elapsed_s": round(time.monotonic() - started, 1)}
