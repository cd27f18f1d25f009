"""A seller's connection to one channel account: secrets, API endpoint, SKU mapping, sync options.

Connections are loaded from a TOML file (``[[connection]]`` tables) and/or the ``connections`` table
(channels.connection_store). A webhook for a connection may only produce events for that connection's
tenant, and an admin token only acts for its own tenant: that is how tenants stay isolated. ``[[tenant]]``
tables give each tenant's admin API token as a SHA-256 hex digest (``stocksync tenants add`` makes one).

``CHANNEL_OPTIONS`` is the one place that says which ``options`` each channel reads and which of them it
cannot work without; a connection missing a required option does not validate, so the command line, the
file and the table all refuse it with the same explanation.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schemas.base import Channel, Sku, Tenant

ConnectionId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class ChannelOption(NamedTuple):
    """One key of ``Connection.options`` that a channel's code reads."""

    name: str
    description: str
    required: bool = False


CHANNEL_OPTIONS: Mapping[str, tuple[ChannelOption, ...]] = {
    "shopify": (
        ChannelOption("location_id", "the Shopify location whose stock is synced (gid://shopify/Location/1)"),
    ),
    "amazon": (
        ChannelOption(
            "seller_id", "the seller's Amazon merchant token (seller id, e.g. A2EXAMPLE1234)", True
        ),
        ChannelOption(
            "sns_topic_arn",
            "the ARN of the SNS topic that carries the seller's ORDER_CHANGE notifications",
            True,
        ),
        ChannelOption("marketplace_id", "the Amazon marketplace (ATVPDKIKX0DER, amazon.com)"),
        ChannelOption("product_type", "the product type sent with quantity patches (PRODUCT)"),
        ChannelOption("fulfillment_channel_code", "the merchant-fulfilled stock written (DEFAULT)"),
    ),
    "ebay": (),
    "woocommerce": (),
    "walmart": (
        ChannelOption("partner_id", "the seller's Walmart partner id, checked against every webhook"),
        ChannelOption("ship_node", "the ship node whose stock is written (the seller's default node)"),
        ChannelOption("channel_type", "the WM_CONSUMER.CHANNEL.TYPE Walmart issued, if any"),
    ),
    "tiktok": (
        ChannelOption("app_key", "the TikTok Shop app key: it signs every webhook and API call", True),
        ChannelOption("shop_cipher", "the shop cipher sent with API calls (from Get Authorized Shops)"),
        ChannelOption("warehouse_id", "the warehouse whose stock is written"),
    ),
    "flipkart": (
        ChannelOption(
            "location_id", "the Flipkart fulfilment location whose stock is written (LOC...)", True
        ),
    ),
    "etsy": (
        ChannelOption("shop_id", "the Etsy shop's numeric id, checked against every webhook", True),
        ChannelOption("api_key", "the Etsy app's API key, as keystring:shared_secret", True),
    ),
    "bigcommerce": (
        ChannelOption("store_hash", "the store's API path id (the part after /stores/ in its API URL)", True),
    ),
    "admin": (),
}
"""Per channel, the ``options`` its code reads; required ones must be set for the connection to work."""

COMMON_OPTIONS: tuple[ChannelOption, ...] = (
    ChannelOption("orders_page_size", "orders per page when the reconciler lists orders (channel's default)"),
)
"""Options every channel understands."""


def known_options(channel: str) -> tuple[ChannelOption, ...]:
    """Every option `channel` reads: its own, then the common ones."""
    return CHANNEL_OPTIONS.get(channel, ()) + COMMON_OPTIONS


def unknown_options(channel: str, options: Mapping[str, str]) -> list[str]:
    """The keys of `options` that nothing of `channel` reads (kept, but probably a typo)."""
    names = {o.name for o in known_options(channel)}
    return [key for key in options if key not in names]


class Listing(BaseModel):
    """How one master SKU appears on the channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listing_id: str = Field(description="The channel's id of the sellable item (e.g. a Shopify variant id).")
    inventory_ref: str | None = Field(None, description="The channel's inventory handle, if separate.")


class Connection(BaseModel):
    # hide_input_in_errors: a refused connection is explained without echoing its secrets into logs
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

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
    options: dict[str, str] = Field(
        default_factory=dict,
        validate_default=True,  # a channel with required options must not slip through by leaving them out
        description="Channel settings: see CHANNEL_OPTIONS for what each channel reads.",
    )

    @field_validator("options")
    @classmethod
    def _required_options_present(cls, options: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        channel = info.data.get("channel")  # absent when the channel itself was refused
        if channel is None:
            return options
        missing = [o for o in CHANNEL_OPTIONS.get(channel, ()) if o.required and not options.get(o.name)]
        if missing:
            conn_id = info.data.get("id")
            needs = "; ".join(f"{o.name} ({o.description})" for o in missing)
            flags = " ".join(f"--option {o.name}=..." for o in missing)
            keys = ", ".join(f"options.{o.name}" for o in missing)
            raise PydanticCustomError(
                "missing_channel_option",
                "{who} needs {word} {needs}: pass {flags} to `stocksync connections add`, "
                "or set {keys} in the connections file",
                {
                    "who": f"{channel} connection {conn_id!r}" if conn_id else f"this {channel} connection",
                    "word": "option" if len(missing) == 1 else "options",
                    "needs": needs,
                    "flags": flags,
                    "keys": keys,
                },
            )
        return options

    def sku_for_listing(self, listing_id: str) -> str | None:
        for sku, listing in self.listings.items():
            if listing.listing_id == listing_id:
                return sku
        return None


class ConnectionsFileError(ValueError):
    """The connections file is unreadable or invalid; the message names the file and the problem."""


class ConnectionsFileUnreadable(ConnectionsFileError):
    """The connections file is missing or cannot be opened (as opposed to holding something invalid)."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.missing = isinstance(error, FileNotFoundError)
        self.reason = "it does not exist" if self.missing else (error.strerror or str(error))
        super().__init__(f"cannot read connections file {path}: {self.reason}")


class TenantToken(BaseModel):
    """A tenant of the admin API and the SHA-256 (hex) of its bearer token; the token itself is not kept."""

    model_config = ConfigDict(frozen=True)

    id: Tenant
    admin_token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def channel_quantity(available: int, *, buffer: int, allocation: float) -> int:
    """What a connection may show: the master count less its safety buffer, times its share, never < 0."""
    return math.floor(max(0, available - buffer) * allocation)


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
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConnectionsFileUnreadable(path, exc) from exc
        except UnicodeDecodeError as exc:
            raise ConnectionsFileError(f"connections file {path} is not UTF-8 text: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConnectionsFileError(f"connections file {path} is not valid TOML: {exc}") from exc
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
