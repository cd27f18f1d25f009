"""A seller's connection to one channel account: secrets, API endpoint, SKU mapping, sync options.

Connections are loaded from a TOML file (``[[connection]]`` tables) and/or the ``connections`` table
(stocksync.connections). A webhook for a connection may only produce events for that connection's tenant, and
an admin token only acts for its own tenant: that is how tenants stay isolated. ``[[tenant]]`` tables give
each tenant's admin API token as a SHA-256 hex digest (``stocksync tenants add`` makes one).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError

from schemas.base import Channel, Sku, Tenant

ConnectionId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class Listing(BaseModel):
    """How one master SKU appears on the channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listing_id: str = Field(description="The channel's id of the sellable item (e.g. a Shopify variant id).")
    inventory_ref: str | None = Field(None, description="The channel's inventory handle, if separate.")


class Connection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: ConnectionId
    tenant: Tenant
    channel: Channel
    webhook_secret: SecretStr
    api_base_url: str
    access_token: SecretStr = SecretStr("")
    listings: dict[Sku, Listing] = Field(default_factory=dict)
    enabled: bool = True
    safety_buffer: int = Field(0, ge=0, description="Units held back from this channel.")
    allocation: float = Field(
        1.0, gt=0, le=1, description="Share of the sellable count this channel may show."
    )
    rate_limit_per_s: float | None = Field(None, gt=0, description="API budget; default: the channel's.")
    rate_burst: float | None = Field(
        None, ge=1, description="Calls that may be saved up; default: the channel's."
    )
    options: dict[str, str] = Field(default_factory=dict)

    def sku_for_listing(self, listing_id: str) -> str | None:
        for sku, listing in self.listings.items():
            if listing.listing_id == listing_id:
                return sku
        return None


class ConnectionsFileError(ValueError):
    """The connections file is unreadable or invalid; the message names the file and the problem."""


class TenantToken(BaseModel):
    """A tenant of the admin API and the SHA-256 (hex) of its bearer token; the token itself is not kept."""

    model_config = ConfigDict(frozen=True)

    id: Tenant
    admin_token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConnectionRegistry:
    """Look-ups over the configured connections and admin tokens; immutable once built."""

    def __init__(self, connections: Iterable[Connection], tenants: Iterable[TenantToken] = ()) -> None:
        self._by_id: dict[str, Connection] = {}
        for c in connections:
            if c.id in self._by_id:
                raise ConnectionsFileError(f"connection id {c.id!r} is defined twice")
            self._by_id[c.id] = c
        self._tenants = {t.id: t for t in tenants}
        # Look-ups go by the token's digest, so the time they take says nothing about any real token.
        self._by_digest: Mapping[str, str] = {t.admin_token_sha256: t.id for t in self._tenants.values()}

    def tenant_for_token(self, token: str) -> str | None:
        """The tenant whose admin token this is, or None."""
        return self._by_digest.get(token_digest(token))

    @property
    def tenants(self) -> list[TenantToken]:
        return list(self._tenants.values())

    def merged(self, other: ConnectionRegistry) -> ConnectionRegistry:
        """This registry with `other`'s connections and tenants added; `other` wins where ids collide."""
        return ConnectionRegistry(
            {**self._by_id, **other._by_id}.values(), {**self._tenants, **other._tenants}.values()
        )

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(self._by_id.values())

    def for_channel(self, channel: str) -> list[Connection]:
        return [c for c in self._by_id.values() if c.channel == channel and c.enabled]

    @classmethod
    def from_file(cls, path: Path) -> ConnectionRegistry:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConnectionsFileError(f"cannot read connections file {path}: {exc}") from exc
        try:
            return cls(
                [Connection.model_validate(c) for c in data.get("connection", [])],
                [TenantToken.model_validate(t) for t in data.get("tenant", [])],
            )
        except ValidationError as exc:
            raise ConnectionsFileError(f"invalid connection or tenant in {path}:\n{exc}") from exc


def to_toml(connections: Iterable[Connection], tenants: Iterable[TenantToken] = ()) -> str:
    """Render connections as a TOML connections file (secrets included: write it with care)."""
    out: list[str] = []
    for t in tenants:
        out += ["[[tenant]]", f"id = {_q(t.id)}", f"admin_token_sha256 = {_q(t.admin_token_sha256)}", ""]
    for c in connections:
        out.append("[[connection]]")
        for key in ("id", "tenant", "channel", "api_base_url"):
            out.append(f"{key} = {_q(getattr(c, key))}")
        out.append(f"webhook_secret = {_q(c.webhook_secret.get_secret_value())}")
        out.append(f"access_token = {_q(c.access_token.get_secret_value())}")
        out.append(f"enabled = {'true' if c.enabled else 'false'}")
        out.append(f"safety_buffer = {c.safety_buffer}")
        out.append(f"allocation = {c.allocation}")
        if c.rate_limit_per_s is not None:
            out.append(f"rate_limit_per_s = {c.rate_limit_per_s}")
        if c.rate_burst is not None:
            out.append(f"rate_burst = {c.rate_burst}")
        if c.options:
            out.append("options = { " + ", ".join(f"{_q(k)} = {_q(v)}" for k, v in c.options.items()) + " }")
        for sku, listing in c.listings.items():
            out.append(f"[connection.listings.{_q(sku)}]")
            out.append(f"listing_id = {_q(listing.listing_id)}")
            if listing.inventory_ref is not None:
                out.append(f"inventory_ref = {_q(listing.inventory_ref)}")
        out.append("")
    return "\n".join(out)


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _q(value: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped (PEM secrets span lines)."""
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
