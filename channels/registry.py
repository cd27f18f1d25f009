"""The one registry of channels: name -> ChannelSpec, built from each ``channels/<name>`` package's SPEC.
Its keys are exactly the marketplaces of ``schemas.base.Channel`` (tests/unit/test_channel_registry.py)."""

from __future__ import annotations

from channels import amazon, bigcommerce, ebay, etsy, flipkart, shopify, tiktok, walmart, woocommerce
from channels.spec import ChannelSpec

SPECS: dict[str, ChannelSpec] = {
    package.SPEC.name: package.SPEC
    for package in (shopify, amazon, ebay, etsy, woocommerce, walmart, tiktok, bigcommerce, flipkart)
}


def spec(channel: str) -> ChannelSpec:
    """The spec of `channel`; ValueError naming the known channels if there is none."""
    try:
        return SPECS[channel]
    except KeyError:
        raise ValueError(f"unknown channel {channel!r}; known: {', '.join(sorted(SPECS))}") from None
