"""Every marketplace in the schema has a webhook adapter and an outbound client with a budget."""

from __future__ import annotations

from typing import get_args

from channels.inbound import ADAPTERS
from channels.outbound import CHANNELS
from schemas.base import Channel

MARKETPLACES = {c for c in get_args(Channel) if c != "admin"}


def test_both_directions_cover_every_marketplace() -> None:
    assert set(ADAPTERS) == MARKETPLACES
    assert set(CHANNELS) == MARKETPLACES


def test_budgets_and_batches_are_sane() -> None:
    for spec in CHANNELS.values():
        assert 0 < spec.rate_limit_per_s <= 100, spec
        assert spec.rate_burst >= 1, spec
        assert spec.max_batch >= 1, spec
