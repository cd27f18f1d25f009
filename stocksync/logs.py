"""Logging set-up shared by the services' entry points."""

from __future__ import annotations

import logging
import os


def configure(service: str) -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
