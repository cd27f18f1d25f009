"""``stocksync policy …``: the allocation policy of a tenant or one of its SKUs (allocation/policy.py).

never_cancel (the default): the channels together may never sell more than the master holds, so no order a
marketplace took is refused; mirror: every channel shows the whole count (fast, and able to oversell while a
change propagates). A change applies from each SKU's next event. PostgreSQL's errors are answered by the
CLI's boundary (cli.errors).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from allocation.policy import clear_policy, list_policies, set_policy
from allocation.rules import DEFAULT_SPREAD, POLICIES, Policy
from stocksync.settings import PostgresSettings

policy_app = typer.Typer(
    help="Allocation policies: never_cancel (escrow, the default) or mirror, per tenant or per SKU.",
    no_args_is_help=True,
)
console = Console()


def _policy(value: str) -> Policy:
    for known in POLICIES:
        if value == known:
            return known
    raise typer.BadParameter(f"{value!r} is not a policy; choose one of: {', '.join(POLICIES)}")


@policy_app.command("set")
def set_(
    tenant: str,
    policy: Annotated[str, typer.Argument(help=f"One of: {', '.join(POLICIES)}.")],
    sku: Annotated[str | None, typer.Option(help="Only this SKU (overrides the tenant's policy).")] = None,
    buffer: Annotated[int, typer.Option(min=0, help="Units of each SKU shown on no channel.")] = 0,
    spread: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=1.0,
            help="never_cancel: the share of the sellable units spread over the channels at once; the rest "
            "refills those that sell out.",
        ),
    ] = DEFAULT_SPREAD,
) -> None:
    """Set the policy of TENANT (or of one of its SKUs); it applies from each SKU's next event."""
    set_policy(
        PostgresSettings().database_url, tenant, _policy(policy), sku=sku, buffer=buffer, spread=spread
    )
    what = f"{tenant}/{sku}" if sku else f"tenant {tenant}"
    console.print(f"{what}: {policy} (buffer {buffer}, spread {spread:g}), from each SKU's next event")


@policy_app.command("show")
def show(tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None) -> None:
    """The policies set; a tenant with none follows PROCESSOR_DEFAULT_POLICY (never_cancel by default)."""
    rows = list_policies(PostgresSettings().database_url, tenant)
    if not rows:
        console.print(
            "no policy set: every tenant follows PROCESSOR_DEFAULT_POLICY (never_cancel by default)"
        )
        return
    table = Table(title="allocation policies")
    for col in ("tenant", "sku", "policy", "buffer", "spread"):
        table.add_column(col)
    for t, s, p, b, sp in rows:
        table.add_row(t, s or "(every SKU)", p, str(b), f"{sp:g}")
    console.print(table)


@policy_app.command("clear")
def clear(
    tenant: str, sku: Annotated[str | None, typer.Option(help="Only this SKU's override.")] = None
) -> None:
    """Remove a tenant's policy (it then follows the default) or a SKU's override (it follows its tenant)."""
    if not clear_policy(PostgresSettings().database_url, tenant, sku=sku):
        console.print(f"no policy was set for {tenant}/{sku}" if sku else f"no policy was set for {tenant}")
        raise typer.Exit(1)
    console.print(f"cleared: {tenant}/{sku}" if sku else f"cleared: tenant {tenant}")
