"""A view of channels.registry kept for the reconciler's call sites: ``order_source(channel)`` is the
channel's ``list_orders`` (ChannelSpec.list_orders); OrderBatch and ListOrders live in channels.spec."""

from __future__ import annotations

from channels.registry import spec
from channels.spec import ListOrders, OrderBatch


def order_source(channel: str) -> ListOrders:
    """The channel's order list (``channels.<channel>.orders.list_orders``); ValueError for an unknown one."""
    return spec(channel).list_orders


__all__ = ["ListOrders", "OrderBatch", "order_source"]
