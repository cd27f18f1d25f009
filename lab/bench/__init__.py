"""``stocksync bench``: one command, one run, real local infrastructure; ``reports/bench.json`` and tables.

Three parts, each against real Kafka and PostgreSQL with the services as their own processes:

- **gateway**: the ingest process alone (no processor or fan-out competing for the two cores), signed Shopify
  ``orders/create`` webhooks from 64 concurrent keep-alive connections for a fixed duration after a warm-up;
  webhooks/s and the time to the durable 200 (p50/p99). The load generator speaks HTTP/1.1 over plain asyncio
  streams so that it costs the shared CPU as little as possible. The same load against a bare aiohttp app
  (``lab.bench.bare``) and the same rate produced straight to Kafka are the gateway's yardsticks; each run's
  event-loop thread is clocked from Linux's scheduler statistics. ``--profile`` samples the gateway with
  py-spy meanwhile and summarises where its time goes.
- **processor** (``lab.bench.processor``, 8 partitions): one worker process over a pre-filled topic at batch
  sizes 1, 100 and 1,000, then one and two workers in one group; the same events applied straight into
  PostgreSQL by ``apply_batch`` and by the bare set-based ceiling (``lab.bench.ceiling``), Faust's stream
  alone (``lab.bench.faust_floor``) and a bare confluent-kafka consume of the same topic.
- **end to end** (``lab.bench.e2e``): gateway, processor and one fan-out process for all nine channel
  simulators, at 50 orders a minute, 200/s and 2,000/s; latency from the webhook POST until every channel
  confirmed a count that includes the order, oversells and duplicates.

CPU and memory of every process (services, broker, database, and this process, which runs the load generator
and the simulators) are sampled with psutil during each part.
"""

from lab.bench.config import BenchConfig
from lab.bench.report import print_tables, write_report
from lab.bench.run import run_bench

__all__ = ["BenchConfig", "print_tables", "run_bench", "write_report"]
