"""``stocksync connections …`` and ``stocksync tenants …``: manage channel connections and admin tokens in the
database (``DATABASE_URL``), beside the TOML connections file. PostgreSQL's errors are answered by the
CLI's boundary (cli.errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from channels.connection import (
    CHANNEL_OPTIONS,
    Connection,
    ConnectionRegistry,
    ConnectionsFileError,
    Listing,
    known_options,
    unknown_options,
)
from channels.connection_store import add_tenant, load_database, save_connection
from stocksync.settings import PostgresSettings

connections_app = typer.Typer(help="Channel connections kept in the database.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants of the admin API and their bearer tokens.", no_args_is_help=True)
console = Console()


def _database_url() -> str:
    return PostgresSettings().database_url


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/]")  # escaped: "[...]" in a message is text, not markup
    return typer.Exit(1)


def _explain(exc: ValidationError) -> str:
    """One line per problem, named by the field it is about (the input is not echoed: it holds secrets)."""
    return "\n".join(
        f"  {'.'.join(str(part) for part in e['loc']) or 'connection'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


def _listing(spec: str) -> tuple[str, Listing]:
    """``SKU=LISTING_ID`` or ``SKU=LISTING_ID:INVENTORY_REF``."""
    sku, sep, rest = spec.partition("=")
    if not sep or not sku or not rest:
        raise typer.BadParameter(f"{spec!r}: expected SKU=LISTING_ID or SKU=LISTING_ID:INVENTORY_REF")
    listing_id, _, ref = rest.partition(":")
    return sku, Listing(listing_id=listing_id, inventory_ref=ref or None)


def _options(specs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs (the value may itself hold ``=``); a key given twice is refused."""
    options: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{spec!r}: expected KEY=VALUE, e.g. --option app_key=...")
        if key in options:
            raise typer.BadParameter(f"option {key!r} is given twice; give it once")
        options[key] = value
    return options


_CHANNELS = ", ".join(name for name in CHANNEL_OPTIONS if name != "admin")
_REQUIRED = "; ".join(
    f"{channel} " + ", ".join(o.name for o in opts if o.required)
    for channel, opts in CHANNEL_OPTIONS.items()
    if any(o.required for o in opts)
)


@connections_app.command("list")
def list_connections(
    file: Annotated[Path | None, typer.Option(help="Also show a connections file's entries.")] = None,
) -> None:
    """The connections in the database (and in FILE if given); secrets are never shown."""
    rows: list[tuple[str, Connection]] = []
    try:
        if file is not None:
            rows += [("file", c) for c in ConnectionRegistry.from_file(file)]
        rows += [("table", c) for c in load_database(_database_url())]
    except ConnectionsFileError as exc:  # PostgreSQL's errors are answered by cli.errors
        raise _fail(f"cannot list connections: {str(exc).strip()}") from exc
    table = Table("id", "tenant", "channel", "enabled", "listings", "API base URL", "buffer", "source")
    for source, c in rows:
        table.add_row(
            c.id,
            c.tenant,
            c.channel,
            "yes" if c.enabled else "no",
            str(len(c.listings)),
            c.api_base_url,
            str(c.safety_buffer),
            source,
        )
    console.print(table)
    if not rows:
        console.print("[dim]no connections yet: `stocksync connections add --help`[/]")


@connections_app.command("add")
def add_connection(
    id: Annotated[str, typer.Option("--id", help="Connection id; webhooks go to /webhooks/<id>.")],
    tenant: Annotated[str, typer.Option(help="The seller this channel account belongs to.")],
    channel: Annotated[str, typer.Option(help=f"One of {_CHANNELS}.")],
    api_base_url: Annotated[str, typer.Option(help="The channel API's base URL for this account.")],
    webhook_secret: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, envvar="STOCKSYNC_WEBHOOK_SECRET", help="Signing secret."),
    ],
    access_token: Annotated[
        str, typer.Option(envvar="STOCKSYNC_ACCESS_TOKEN", help="API credential for inventory writes.")
    ] = "",
    listing: Annotated[
        list[str] | None, typer.Option(help="SKU=LISTING_ID[:INVENTORY_REF]; repeat for each SKU.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help=f"KEY=VALUE channel setting; repeat for each. Required: {_REQUIRED}.",
        ),
    ] = None,
    safety_buffer: Annotated[int, typer.Option(help="Units held back from this channel.")] = 0,
    rate_limit_per_s: Annotated[
        float | None, typer.Option(help="API budget (default: the channel's).")
    ] = None,
    disabled: Annotated[
        bool, typer.Option(help="Store it, but take no webhooks and send no updates.")
    ] = False,
) -> None:
    """Add or replace a connection in the database; running gateways pick it up within their refresh time.
    A channel's required settings (e.g. TikTok's --option app_key=...) must be given, or nothing is saved."""
    options = _options(option or [])
    try:
        connection = Connection(
            id=id,
            tenant=tenant,
            channel=channel,  # validated by pydantic
            webhook_secret=SecretStr(webhook_secret),
            api_base_url=api_base_url,
            access_token=SecretStr(access_token),
            listings=dict(_listing(spec) for spec in listing or []),
            options=options,
            safety_buffer=safety_buffer,
            rate_limit_per_s=rate_limit_per_s,
            enabled=not disabled,
        )
    except ValidationError as exc:
        raise _fail(f"invalid connection, nothing saved:\n{_explain(exc)}") from exc
    unknown = unknown_options(connection.channel, connection.options)
    if unknown:
        known = ", ".join(o.name for o in known_options(connection.channel))
        console.print(
            f"[yellow]warning: {connection.channel} reads no option {', '.join(unknown)} (stored anyway; "
            f"check the spelling). Options {connection.channel} reads: {known}[/]"
        )
    new = save_connection(_database_url(), connection)
    console.print(
        f"{'added' if new else 'replaced'} connection [bold]{id}[/] ({channel}, tenant {tenant}); "
        f"point the channel's webhooks at [bold]/webhooks/{id}[/] on the gateway"
    )


@connections_app.command("import")
def import_connections(file: Annotated[Path, typer.Argument(help="A TOML connections file.")]) -> None:
    """Copy every connection and tenant of a connections file into the database (replacing same ids)."""
    try:
        registry = ConnectionRegistry.from_file(file)
        url = _database_url()
        for c in registry:
            save_connection(url, c)
        with psycopg.connect(url) as db:
            for t in registry.tenants:
                db.execute(
                    """INSERT INTO tenants (id, admin_token_sha256) VALUES (%s, %s)
                       ON CONFLICT (id) DO UPDATE SET admin_token_sha256 = EXCLUDED.admin_token_sha256""",
                    (t.id, t.admin_token_sha256),
                )
    except ConnectionsFileError as exc:  # PostgreSQL's errors are answered by cli.errors
        raise _fail(f"import stopped: {str(exc).strip()}") from exc
    console.print(
        f"imported {len(list(registry))} connections and {len(registry.tenants)} tenants from {file}"
    )


@tenants_app.command("add")
def add_tenant_command(tenant: Annotated[str, typer.Argument(help="Tenant id (the seller).")]) -> None:
    """Create a tenant of the admin API (or give it a new token); prints the token once."""
    try:
        token = add_tenant(_database_url(), tenant)
    except ValidationError as exc:
        raise _fail(f"invalid tenant id {tenant!r}:\n{exc}") from exc
    console.print(f"admin token for tenant [bold]{tenant}[/] (shown once; only its SHA-256 is kept):")
    typer.echo(token)  # plain, so it can be piped into a secret store
