"""Logging set-up shared by the services' entry points: one JSON object per line on stderr.

Every record carries ``ts``, ``level``, ``service``, ``logger`` and ``message``, and, where known, the
pipeline's keys ``event_id``, ``tenant``, ``sku`` and ``connection``: passed per call
(``log.info("...", extra={"sku": sku})``) or bound for a block of work with :func:`bound`, so every line
logged inside (including by libraries) carries them. ``LOG_FORMAT=text`` gives plain lines for a terminal;
``LOG_LEVEL`` sets the level (INFO).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

KEYS = ("event_id", "tenant", "sku", "connection")
"""The pipeline's correlation keys, in the order they appear in a line."""

_KEY_SET = frozenset(KEYS)
_bound: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("stocksync_log_keys", default={})  # noqa: B039 - never mutated, only replaced


class _Bound:
    """What :func:`bound` returns: a class rather than a generator, being entered once per webhook."""

    __slots__ = ("_keys", "_token")

    def __init__(self, keys: dict[str, str | None]) -> None:
        self._keys = keys

    def __enter__(self) -> None:
        keys = self._keys
        if not _KEY_SET.issuperset(keys):
            raise ValueError(f"unknown log keys {sorted(set(keys) - _KEY_SET)}; use one of {KEYS}")
        self._token = _bound.set({**_bound.get(), **{k: v for k, v in keys.items() if v is not None}})

    def __exit__(self, *_exc: object) -> None:
        _bound.reset(self._token)


def bound(**keys: str | None) -> AbstractContextManager[None]:
    """Within the block, every log line of this task carries `keys` (None values are left out)."""
    return _Bound(keys)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; correlation keys from ``extra=`` win over bound ones."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        keys = _bound.get()
        for key in KEYS:
            value = getattr(record, key, None)
            if value is None:
                value = keys.get(key)
            if value is not None:
                line[key] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure(service: str) -> None:
    """Send every logger's records to stderr, as JSON lines (or text with ``LOG_FORMAT=text``)."""
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def dict_config(service: str) -> dict[str, Any]:
    """The same set-up as a ``logging.config.dictConfig`` mapping, for frameworks that configure logging
    themselves at start-up (Faust: ``faust.App(..., logging_config=logs.dict_config("processor"))``)."""
    text = os.environ.get("LOG_FORMAT", "json").lower() == "text"
    formatter: dict[str, Any] = (
        {"format": f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"}
        if text
        else {"()": JsonFormatter, "service": service}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"stocksync": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "stocksync",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": os.environ.get("LOG_LEVEL", "INFO").upper()},
    }
