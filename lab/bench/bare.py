"""``python -m lab.bench.bare --port N``: the HTTP ceiling the gateway is held against in ``make bench``.

A bare aiohttp application on uvloop, in a process of its own, that reads each webhook's body and answers a
small JSON, as the gateway does, with none of its work (no signature, no normalising, no Kafka). Driven by
the same load generator as the gateway, its throughput is what this machine's HTTP stack allows.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


async def _webhook(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"status": "accepted", "bytes": len(body)})


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_bare_app() -> web.Application:
    """The gateway's routes with nothing behind them: ``POST /webhooks/{connection_id}``, ``/healthz``."""
    app = web.Application()
    app.router.add_post("/webhooks/{connection_id}", _webhook)
    app.router.add_get("/healthz", _healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.bare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Served as the gateway is (ingest/__main__.py): no access log, uvloop.
    web.run_app(
        build_bare_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
