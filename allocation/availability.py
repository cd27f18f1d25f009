"""What an AI shopping agent or a headless storefront may be shown of a SKU, and its status (issue 16).

An agent checkout is a connection of its own: under ``never_cancel`` it may hold only units that no
marketplace connection has been granted, so a hold can never take a unit a storefront may still sell. Its
visible count is therefore the allocation's slack, ``available - buffer - sum(granted)``; under ``mirror``
every connection shows the master count less the buffer, and so does the agent. The same function decides
whether the processor accepts a hold (processor/rules.py) and what the read API and the stream show (ingest),
so what an agent sees is what it can reserve.

Status thresholds follow the Agentic Commerce Protocol's availability values that an inventory count can
decide: ``out_of_stock`` at 0, ``limited_stock`` at or below the tenant's threshold, else ``in_stock``.
"""

from __future__ import annotations

from typing import Literal

from allocation.rules import Policy

Status = Literal["in_stock", "limited_stock", "out_of_stock"]

LIMITED_AT = 5
"""Default threshold of ``limited_stock`` (units an agent may see), as fanout/budget.py's LOW_STOCK band."""


def agent_visible(available: int, *, policy: Policy, buffer: int = 0, granted: int = 0) -> int:
    """Units an agent may see and hold: the slack under ``never_cancel`` (`granted` is the sum of the
    marketplace connections' grants), the count less the buffer under ``mirror``; never below 0."""
    spendable = available - buffer - (granted if policy == "never_cancel" else 0)
    return max(0, spendable)


def status(visible: int, *, limited_at: int = LIMITED_AT) -> Status:
    """The availability status of `visible` units."""
    if visible <= 0:
        return "out_of_stock"
    return "limited_stock" if visible <= limited_at else "in_stock"
