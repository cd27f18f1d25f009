"""``stocksync demo``: a flash sale on nine marketplaces, in real time, three ways on the same orders: through
the real pipeline under policy ``never_cancel`` (escrow allocation), under ``mirror`` (every channel shows the
master count), and polled every 1, 5 and 15 minutes.

Real local Kafka and PostgreSQL, the gateway, the processor and one fan-out process for every channel as
separate processes, and a simulator of each marketplace on loopback for each of two tenants (one per policy;
both sets of connections in the one connections file the services read at start). The seller records a small
stock of each SKU; then thousands of buyers order across the channels, most of them for a few popular SKUs,
in a rush at the opening. A storefront takes an order only while its own count covers it (under mirror the
fan-out keeps that count set to the master's; under never_cancel to the connection's grant), takes the units
off its count and posts the signed webhook, as the real channel does; otherwise the buyer is refused and goes
away. The master refuses any sale beyond the stock: each such order is one the seller must cancel. The two
policies play the same orders one after the other (the fan-out's propagation histogram is per channel, not
per tenant, so each run is measured in a window of its own); then the polling baseline (``lab.polling``).

The sale's clock is the wall clock: ``sale_minutes`` (1 by default) played in ``seconds`` (60 by default).
Other values are accepted, with a warning that the run is not real time (the channels' budgets and the
pipeline keep the wall clock, so a compressed sale makes propagation look slower in sale time).

Headline: orders to cancel and sell-through (units sold / sum over SKUs of min(stock, units asked)), target 0
and at least 97 % under never_cancel. Reports: tables on the console, ``<out>/demo.json`` and
``<out>/demo.png``.
"""

from lab.demo.model import DemoOptions
from lab.demo.run import run_demo

__all__ = ["DemoOptions", "run_demo"]
