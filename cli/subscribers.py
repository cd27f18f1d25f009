"""``stocksync subscribers …``: the subscribers of a tenant's availability changes, kept in the database
(``DATABASE_URL``, table ``agent_subscribers``) and sent signed webhooks by ``python -m fanout --subscribers``
(fanout/subscribers.py, whose docstring says how a receiver verifies them). PostgreSQL's errors are answered
by the CLI's boundary (cli.errors).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fanout.subscribers import (
    add_subscriber,
    check_sku,
    check_tenant,
    check_url,
    list_subscribers,
    remove_subscriber,
)
from stocksync.settings import PostgresSettings

subscribers_app = typer.Typer(
    help="Subscribers of a tenant's availability changes (storefronts, AI agents): signed webhooks sent by "
    "`python -m fanout --subscribers`.",
    no_args_is_help=True,
)
console = Console(emoji=False)


@subscribers_app.command("add")
def add(
    tenant: Annotated[str, typer.Option(help="The tenant whose availability changes are sent.")],
    url: Annotated[str, typer.Option(help="The subscriber's http:// or https:// URL, POSTed each change.")],
    sku: Annotated[
        list[str] | None,
        typer.Option("--sku", help="Only this SKU; repeat for several (default: every SKU of the tenant)."),
    ] = None,
) -> None:
    """Add a subscriber of TENANT's availability changes; prints its id and its signing secret, once."""
    try:
        tenant = check_tenant(tenant)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tenant") from exc
    try:
        url = check_url(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from exc
    try:
        skus = None if not sku else [check_sku(s) for s in sku]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sku") from exc
    subscriber = add_subscriber(PostgresSettings().database_url, tenant, url, skus)
    what = "every SKU" if subscriber.skus is None else f"{len(subscriber.skus)} SKU(s)"
    console.print(
        f"added subscriber [bold]{subscriber.id}[/] of tenant {tenant} ({what}): {escape(url)}\n"
        "running `python -m fanout --subscribers` workers start sending to it within "
        "FANOUT_SUBSCRIBER_REFRESH_S (30 s)"
    )
    if url.lower().startswith("http://"):
        console.print(
            "[yellow]note: http:// sends the availability unencrypted (the signature still proves it came "
            "from stocksync); prefer https://[/]"
        )
    console.print(
        "signing secret, shown only now: keep it where the receiver can read it (it verifies "
        "X-Stocksync-Signature); it cannot be shown again (remove the subscriber and add it anew)"
    )
    typer.echo(subscriber.secret)  # plain, so it can be piped into a secret store


@subscribers_app.command("list")
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's subscribers.")] = None) -> None:
    """The subscribers (of TENANT), oldest first; secrets are never shown."""
    rows = list_subscribers(PostgresSettings().database_url, tenant)
    table = Table("id", "tenant", "url", "SKUs", "enabled", "created")
    for s in rows:
        skus = "(every SKU)" if s.skus is None else ", ".join(sorted(s.skus))
        created = s.created_at.isoformat(timespec="seconds") if s.created_at else ""
        table.add_row(s.id, s.tenant, escape(s.url), escape(skus), "yes" if s.enabled else "no", created)
    console.print(table)
    if not rows:
        console.print("[dim]no subscribers yet: `stocksync subscribers add --help`[/]")


@subscribers_app.command("remove")
def remove(subscriber_id: Annotated[str, typer.Argument(metavar="ID", help="The subscriber's id.")]) -> None:
    """Remove a subscriber; running workers stop sending to it at their next refresh."""
    if not remove_subscriber(PostgresSettings().database_url, subscriber_id):
        console.print(
            f"[red]no subscriber {escape(subscriber_id)}[/]: `stocksync subscribers list` shows them"
        )
        raise typer.Exit(1)
    console.print(
        f"removed subscriber {escape(subscriber_id)}; running workers send it nothing more within "
        "FANOUT_SUBSCRIBER_REFRESH_S (30 s)"
    )
