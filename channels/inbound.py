"""A view of channels.registry kept for the gateway's call sites (ingest/app.py): ``ADAPTERS[name]`` is the
channel's ChannelSpec (verify_for, normalise, auth_headers, expand, ping). A dict of its own, so a test may
``monkeypatch.setitem`` one entry for the gateway without touching the registry."""

from __future__ import annotations

from channels.registry import SPECS
from channels.spec import ChannelSpec, Expand, Normalise, Verify

WebhookAdapter = ChannelSpec
ADAPTERS: dict[str, ChannelSpec] = dict(SPECS)

__all__ = ["ADAPTERS", "Expand", "Normalise", "Verify", "WebhookAdapter"]
