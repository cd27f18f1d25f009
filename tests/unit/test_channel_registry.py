"""Every marketplace in the schema has one ChannelSpec with every part, in the one registry
(channels.registry) that the gateway, the fan-out and the reconciler read."""

from __future__ import annotations

import importlib
from typing import get_args

import pytest

from channels.registry import SPECS, spec
from channels.spec import ChannelSpec
from schemas.base import Channel

MARKETPLACES = {c for c in get_args(Channel) if c != "admin"}


def test_the_registry_and_the_schema_agree() -> None:
    assert set(SPECS) == MARKETPLACES


@pytest.mark.parametrize("name", sorted(MARKETPLACES))
def test_each_package_exports_its_spec_with_every_part(name: str) -> None:
    package = importlib.import_module(f"channels.{name}")
    assert package.SPEC is SPECS[name] is spec(name)
    s: ChannelSpec = package.SPEC
    assert s.name == name
    assert all(callable(part) for part in (s.verify, s.normalise, s.client, s.list_orders))
    assert s.auth_headers
    assert all(isinstance(h, str) and h for h in s.auth_headers)
    assert s.list_orders is importlib.import_module(f"channels.{name}.orders").list_orders
    assert s.normalise is importlib.import_module(f"channels.{name}.webhooks").normalise


def test_budgets_and_batches_are_sane() -> None:
    for s in SPECS.values():
        assert 0 < s.rate_limit_per_s <= 100, s
        assert s.rate_burst >= 1, s
        assert s.max_batch >= 1, s


def test_an_unknown_channel_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown channel 'nope'; known: amazon, bigcommerce"):
        spec("nope")
