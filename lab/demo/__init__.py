"""``stocksync demo``: a flash sale on nine marketplaces, event-driven through the real pipeline and polled.

Real local Kafka and PostgreSQL, the gateway, the processor and one fan-out process for all nine channels as
separate processes, and a simulator of each marketplace on loopback. The seller records a small stock of each
SKU; then thousands of buyers order across the channels, most of them for a few popular SKUs. A storefront
takes an order only while it shows enough units (its own count, which the fan-out keeps set to the master),
takes them off its own count and posts the signed webhook, as the real channel does; the master refuses any
sale beyond the stock. The same orders are then played against the polling baseline (``lab.polling``):
every channel sells from its own count, and a sync job copies the master out every N minutes.

The sale lasts ``sale_minutes`` of simulated time, played in ``seconds`` of real time (every gap between two
orders is shortened by the same factor, which makes the pipeline's propagation look that many times slower
in sale time); the baseline runs on the sale's time axis.

Reports: a table on the console, ``<out>/demo.json`` and ``<out>/demo.png``.
"""

from lab.demo.model import DemoOptions
from lab.demo.run import run_demo

__all__ = ["DemoOptions", "run_demo"]
