"""``stocksync feed …``: what AI shopping agents may see of a tenant's SKUs, as a file for the merchant's
catalogue feed to merge (issue 16), and the tenant's ``limited_stock`` threshold.

``stocksync feed export --tenant T [--format acp] [--out products.jsonl] [--delta]`` writes one JSON object
per line, one per SKU of the tenant's master record (table ``inventory``), sorted by SKU (bytewise)::

    {"id":"TSHIRT-M","availability":{"available":true,"status":"limited_stock"},"inventory_quantity":3,
     "updated_at":"2026-05-01T09:30:12.345678Z"}

**The fields, and why only these.** The Agentic Commerce Protocol's product feed (spec 2026-04-17,
``schema.feed.json``) describes a ``Product`` (id, title, media, ...) that groups purchasable ``Variant``
objects; a variant's stock is its ``availability``, ``{"available": bool, "status": ...}``, the status one
of in_stock, limited_stock, backorder, preorder, out_of_stock or discontinued. An inventory engine knows
nothing of the catalogue (titles, prices, which product a SKU belongs to), only how many units of each SKU
may be sold, so it writes the two Variant fields it is the source of truth for:

- ``id``, the spec's ``Variant.id`` (the stable identifier of a variant): the SKU, by which the merchant's
  catalogue feed finds the variant to merge the line into;
- ``availability``, the spec's ``Variant.availability`` as it is: ``status`` is
  ``allocation.availability.status`` of the units agents may see (``out_of_stock`` at 0, ``limited_stock``
  up to the tenant's threshold, ``in_stock`` above it; backorder, preorder and discontinued are catalogue
  decisions no count can make), and ``available`` is true unless the status is ``out_of_stock``;

and two the 2026-04-17 Variant has no field for (it admits no other properties), for the merge to read and
leave out of the ACP line:

- ``inventory_quantity`` (the name OpenAI's flat product feed gives the count): the units agents may see,
  ``allocation.availability.agent_visible``: under never_cancel what no marketplace was granted
  (``available - buffer - sum(allocations.granted)``), under mirror the count less the buffer; the policy
  and buffer are the SKU's or its tenant's (``allocation.policy.rules_for``), else ``--default-policy``
  (PROCESSOR_DEFAULT_POLICY, as the processor reads it);
- ``updated_at``: the later of the master row's last change and the SKU's grants' (RFC 3339, UTC).

The file is not an ACP ``products.jsonl`` to upload as it is: the protocol's file ingestion replaces a feed's
whole product set with Product lines (id, and variants with a title), which only the catalogue can write.

**Delta** (``--delta``): only the SKUs whose status differs from the one the last export of the tenant in
that format recorded (table ``feed_state``), SKUs new to the master record included; a SKU gone from it is
not written (and its record is dropped). That is what a feed with an update budget needs (issue 16: Google's
Merchant API's two updates per product a day): the changes of status, not every change of count. Every
export, full or delta, records the statuses it wrote in ``feed_state`` in the transaction that read them,
so a delta after a delta with no change between them writes an empty file, and says so. A delta is relative
to the last export whether or not that file was picked up: give each run its own ``--out``, or consume the
file before the next run.

**How.** One REPEATABLE READ transaction: the tenant's SKUs with their grants' sums and recorded statuses in
one statement, streamed through a server-side cursor in chunks of ``CHUNK`` (the rules of a chunk in one
statement, the statuses it wrote in one), so 100,000 SKUs cost neither memory nor a query per SKU. The
lines go to a temporary file beside ``--out``, renamed into place once complete; the statuses are committed
after the rename, so a failure between the two repeats changes in the next delta and never loses one.
Exports of one tenant and format run one at a time (a session advisory lock; a second one is refused).
A progress bar goes to stderr, the summary to stdout; PostgreSQL's errors are answered by the CLI's
boundary (cli/errors.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from psycopg import AsyncConnection, IsolationLevel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from allocation.availability import LIMITED_AT, Status, agent_visible, status
from allocation.policy import rules_for
from allocation.rules import DEFAULT_POLICY, POLICIES, Policy
from allocation.thresholds import limited_at_for, limited_at_set, set_limited_at
from stocksync.settings import PostgresSettings

CHUNK = 2000
"""SKUs fetched from the server-side cursor at a time."""

LOCK_CLASS = 0x5FEED
"""First key of the session advisory lock an export holds, per tenant and format (the second: their hash)."""

EXIT_FAILED = 1


class FeedFormat(StrEnum):
    """The formats ``feed export`` writes (and ``feed_state.format``, so each has its own delta)."""

    acp = "acp"


class ExportRefused(Exception):
    """An export that cannot be made as asked (nothing of it was written or recorded)."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    tenant: str
    format: FeedFormat
    out: Path
    delta: bool
    skus: int
    """SKUs of the tenant in the master record."""
    written: Counter[Status]
    """Lines written, per status."""
    limited_at: int
    previous: datetime | None
    """When the statuses of the last export of this tenant and format were recorded (None: no export yet)."""

    @property
    def lines(self) -> int:
        return sum(self.written.values())


def acp_line(sku: str, visible: int, state: Status, updated_at: datetime) -> str:
    """One line of the ``acp`` format (no newline)."""
    return json.dumps(
        {
            "id": sku,
            "availability": {"available": state != "out_of_stock", "status": state},
            "inventory_quantity": visible,
            "updated_at": updated_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


class StagedFile:
    """A text file written under a temporary name beside `target` and renamed onto it by ``publish``; removed
    if it never was. Created with the process's umask, as a plain ``open`` would."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self._published = False

    def write_line(self, line: str) -> None:
        self._file.write(line)
        self._file.write("\n")

    def publish(self) -> None:
        """Flush the file to disk and rename it onto the target."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, self.target)
        self._published = True
        if os.name == "posix":  # the rename itself survives a crash only once its directory is on disk
            directory = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._published:
            self._file.close()
            self.path.unlink(missing_ok=True)


# Each SKU's grants and recorded status are looked up by its key (a lateral aggregate, a scalar subquery), so
# the plan does not rest on statistics: a feed_state that the first export just filled has none, and a join
# planned on none (a nested loop over every recorded row per SKU) took minutes for 100,000 SKUs.
_SKUS = """
SELECT i.sku, i.available, greatest(i.updated_at, g.updated_at), coalesce(g.granted, 0),
       (SELECT f.status FROM feed_state f
        WHERE f.tenant = i.tenant AND f.format = %(format)s AND f.sku = i.sku)
FROM inventory i
CROSS JOIN LATERAL (
    SELECT sum(a.granted)::bigint AS granted, max(a.updated_at) AS updated_at
    FROM allocations a WHERE a.tenant = i.tenant AND a.sku = i.sku
) g
WHERE i.tenant = %(tenant)s
ORDER BY i.sku COLLATE "C"
"""

_RECORD = """
INSERT INTO feed_state (tenant, format, sku, status, exported_at)
SELECT %s, %s, w.sku, w.status, now() FROM unnest(%s::text[], %s::text[]) AS w(sku, status)
ON CONFLICT (tenant, format, sku) DO UPDATE SET status = EXCLUDED.status, exported_at = EXCLUDED.exported_at
"""

_FORGET_GONE = """
DELETE FROM feed_state f WHERE f.tenant = %s AND f.format = %s
AND NOT EXISTS (SELECT 1 FROM inventory i WHERE i.tenant = f.tenant AND i.sku = f.sku)
"""


async def export_feed(
    database_url: str,
    tenant: str,
    fmt: FeedFormat,
    out: Path,
    *,
    delta: bool = False,
    default_policy: Policy = DEFAULT_POLICY,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Exported:
    """Write the feed of `tenant` to `out` and record its statuses (see the module's docstring); `progress`
    is called with (SKUs done, SKUs in all) after each chunk. ExportRefused when the tenant has no SKU or
    another export of it in this format is running."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        # A session lock, taken before the transaction: its snapshot then sees what the last export recorded.
        # Closing the connection releases it.
        cur = await conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, f"{fmt.value}:{tenant}")
        )
        if not (row := await cur.fetchone()) or not row[0]:
            raise ExportRefused(
                f"another {fmt.value} export of tenant {tenant} is running; run this one once it is done"
            )
        await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM inventory WHERE tenant = %(tenant)s), "
                "(SELECT max(exported_at) FROM feed_state WHERE tenant = %(tenant)s AND format = %(format)s)",
                {"tenant": tenant, "format": fmt.value},
            )
            counted = await cur.fetchone()
            skus, previous = (int(counted[0]), counted[1]) if counted else (0, None)
            if skus == 0:
                raise ExportRefused(
                    f"tenant {tenant} has no SKU in the master record: is the name right? "
                    "(nothing was written)"
                )
            limited_at = (await limited_at_for(conn, [tenant]))[tenant]
            written: Counter[Status] = Counter()
            with StagedFile(out) as staged:
                async with conn.cursor(name="feed_export") as rows:
                    await rows.execute(_SKUS, {"tenant": tenant, "format": fmt.value})
                    done = 0
                    while chunk := await rows.fetchmany(CHUNK):
                        rules = await rules_for(conn, ((tenant, r[0]) for r in chunk), default=default_policy)
                        changed: list[tuple[str, Status]] = []
                        for sku, available, updated_at, granted, before in chunk:
                            rule = rules[(tenant, sku)]
                            visible = agent_visible(
                                available, policy=rule.policy, buffer=rule.buffer, granted=granted
                            )
                            now = status(visible, limited_at=limited_at)
                            if delta and now == before:
                                continue
                            staged.write_line(acp_line(sku, visible, now, updated_at))
                            changed.append((sku, now))
                            written[now] += 1
                        if changed:
                            await conn.execute(
                                _RECORD,
                                (tenant, fmt.value, [s for s, _ in changed], [st for _, st in changed]),
                            )
                        done += len(chunk)
                        progress(done, skus)
                await conn.execute(_FORGET_GONE, (tenant, fmt.value))
                staged.publish()
    return Exported(tenant, fmt, out, delta, skus, written, limited_at, previous)


# ---------------------------------------------------------------------------------------------------------
# The commands

feed_app = typer.Typer(
    help="The availability feed for AI shopping agents (Agentic Commerce Protocol): export it, whole or "
    "as the changes of status since the last export; set a tenant's limited_stock threshold.",
    no_args_is_help=True,
)
progress_console = Console(stderr=True, emoji=False, highlight=False)  # answers: plain typer.echo


def _policy(value: str) -> Policy:
    for known in POLICIES:
        if value == known:
            return known
    raise typer.BadParameter(f"{value!r} is not a policy; choose one of: {', '.join(POLICIES)}")


def _writable(out: Path) -> Path:
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; give the file to write", param_hint="--out")
    if not out.parent.is_dir():
        raise typer.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    return out


def _summary(done: Exported) -> str:
    counts = ", ".join(f"{n} {st}" for st, n in sorted(done.written.items())) or "nothing"
    limited = f"limited_stock at 1 to {done.limited_at} units" if done.limited_at else "no limited_stock"
    where = f"{done.out} ({done.format.value}; {limited})"
    if not done.delta:
        return f"wrote {done.lines} SKUs of tenant {done.tenant} to {where}: {counts}"
    if done.previous is None:
        return (
            f"no earlier {done.format.value} export of tenant {done.tenant}: the delta is every SKU; "
            f"wrote {done.lines} to {where}: {counts}"
        )
    since = f"since the {done.format.value} export of {done.previous.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if done.lines == 0:
        return (
            f"no SKU of tenant {done.tenant} changed status {since}: {done.out} is empty "
            f"({done.skus} SKUs checked)"
        )
    changed = f"{done.lines} of {done.skus} SKUs of tenant {done.tenant} changed status {since}"
    return f"{changed}: {counts}; in {where}"


@feed_app.command("export")
def export(
    tenant: Annotated[str, typer.Option(help="The tenant whose SKUs to export.")],
    format_: Annotated[
        FeedFormat,
        typer.Option(
            "--format", help="acp: the Agentic Commerce Protocol's Variant id and availability, per SKU."
        ),
    ] = FeedFormat.acp,
    out: Annotated[
        Path, typer.Option(help="The file to write (replaced once complete).", show_default=True)
    ] = Path("products.jsonl"),
    delta: Annotated[
        bool,
        typer.Option(
            "--delta",
            help="Only the SKUs whose status changed since the last export of the tenant in this format "
            "(and SKUs new since): the changes a feed with an update budget needs.",
        ),
    ] = False,
    default_policy: Annotated[
        str,
        typer.Option(
            envvar="PROCESSOR_DEFAULT_POLICY",
            help="The allocation policy of a SKU whose tenant set none, as the processor's.",
        ),
    ] = DEFAULT_POLICY,
) -> None:
    """Write what AI shopping agents may see of each SKU of the tenant (status and count), a JSON line per
    SKU sorted by SKU, for the merchant's catalogue feed to merge; record the statuses for a next --delta."""
    policy, target = _policy(default_policy), _writable(out)
    database_url = PostgresSettings().database_url
    columns = (
        TextColumn(f"exporting {tenant}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("SKUs"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=progress_console, transient=True) as bar:
            task = bar.add_task("export", total=None)

            def shown(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = asyncio.run(
                export_feed(
                    database_url, tenant, format_, target, delta=delta, default_policy=policy, progress=shown
                )
            )
    except ExportRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(_summary(result))


@feed_app.command("thresholds")
def thresholds(
    tenant: Annotated[str, typer.Option(help="The tenant whose threshold to set or show.")],
    limited_at: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="A SKU of which agents may see this many units or fewer (one at least) is limited_stock. "
            "Left out: show the threshold in force.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Set (or show) the limited_stock threshold of the tenant's feed; it applies from the next export."""
    database_url = PostgresSettings().database_url
    if limited_at is None:
        current = limited_at_set(database_url, tenant)
        shown = LIMITED_AT if current is None else current
        origin = " (the default: none set)" if current is None else ""
        typer.echo(f"tenant {tenant}: {_bands(shown)}{origin}")
        return
    set_limited_at(database_url, tenant, limited_at)
    typer.echo(f"tenant {tenant}: {_bands(limited_at)}, from the next export")


def _bands(limited_at: int) -> str:
    if limited_at == 0:
        return "limited_stock never (in_stock from 1 unit agents may see), out_of_stock at 0"
    return f"limited_stock at 1 to {limited_at} units agents may see, in_stock above, out_of_stock at 0"
