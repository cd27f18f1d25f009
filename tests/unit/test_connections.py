"""Connections file: round trip, and errors that name the problem; channel options declared and required;
the file optional."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from channels.connection import (
    CHANNEL_OPTIONS,
    Connection,
    ConnectionRegistry,
    ConnectionsFileError,
    ConnectionsFileUnreadable,
    TenantToken,
    known_options,
    to_toml,
    token_digest,
    unknown_options,
)
from channels.connection_store import load_all, load_for_service
from fanout.settings import FanoutSettings
from ingest.settings import IngestSettings
from lab.marketplaces.shopify import sample_connection
from lab.marketplaces.tiktok import sample_connection as tiktok_connection
from processor.settings import ProcessorSettings
from reconciler.settings import ReconcilerSettings


def test_round_trip_through_toml(tmp_path: Path) -> None:
    conn = sample_connection("http://127.0.0.1:9/x", skus=("SKU-1", "SKU-2", "SKU-3"))
    path = tmp_path / "c.toml"
    path.write_text(to_toml([conn]))
    loaded = ConnectionRegistry.from_file(path).get("shop-acme")
    assert loaded == conn
    assert loaded.sku_for_listing(conn.listings["SKU-2"].listing_id) == "SKU-2"
    assert loaded.sku_for_listing("nope") is None


def test_invalid_files_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[connection]]\nid = "Bad Id"\n')
    with pytest.raises(ConnectionsFileError, match=r"invalid connection or tenant in .*c\.toml"):
        ConnectionRegistry.from_file(path)
    with pytest.raises(ConnectionsFileError, match="cannot read connections file"):
        ConnectionRegistry.from_file(tmp_path / "missing.toml")
    twice = to_toml([sample_connection("http://x", skus=("SKU-1", "SKU-2", "SKU-3"))] * 2)
    path.write_text(twice)
    with pytest.raises(ConnectionsFileError, match="defined twice"):
        ConnectionRegistry.from_file(path)


def test_secrets_with_newlines_quotes_and_control_characters_survive_the_file(tmp_path: Path) -> None:
    pem = '-----BEGIN CERTIFICATE-----\nMIIB\\x"q"\t\x01\x7f\n-----END CERTIFICATE-----\n'
    conn = sample_connection("http://x", skus=("SKU-1",)).model_copy(
        update={"webhook_secret": SecretStr(pem)}
    )
    path = tmp_path / "c.toml"
    path.write_text(to_toml([conn]))
    loaded = ConnectionRegistry.from_file(path).get(conn.id)
    assert loaded is not None
    assert loaded.webhook_secret.get_secret_value() == pem


def test_admin_tokens_are_kept_as_digests_and_map_to_their_tenant(tmp_path: Path) -> None:
    conn = sample_connection("http://x", skus=("SKU-1",))
    tenants = [TenantToken(id="acme", admin_token_sha256=token_digest("tok-acme"))]
    path = tmp_path / "c.toml"
    path.write_text(to_toml([conn], tenants))
    assert "tok-acme" not in path.read_text()
    registry = ConnectionRegistry.from_file(path)
    assert registry.tenant_for_token("tok-acme") == "acme"
    assert registry.tenant_for_token("tok-acme ") is None
    assert registry.tenant_for_token("") is None
    other = ConnectionRegistry(
        [conn.model_copy(update={"enabled": False})],
        [TenantToken(id="globex", admin_token_sha256=token_digest("tok-globex"))],
    )
    merged = registry.merged(other)
    overridden = merged.get(conn.id)
    assert overridden is not None
    assert not overridden.enabled
    assert {t.id for t in merged.tenants} == {"acme", "globex"}


# Channel options: declared once (CHANNEL_OPTIONS), required ones enforced by validation.

CHANNELS_DIR = Path(__file__).resolve().parents[2] / "channels"
SIMULATED = sorted(p.parent.name for p in CHANNELS_DIR.glob("*/webhooks.py"))


def sample_of(channel: str) -> Connection:
    module = importlib.import_module(f"lab.marketplaces.{channel}")
    sample: Connection = module.sample_connection("http://127.0.0.1:9", skus=("SKU-1", "SKU-2"))
    return sample


def without(conn: Connection, option: str) -> dict[str, object]:
    """The connection as a file or row would hold it, minus one option."""
    data = conn.model_dump(mode="json")
    data["webhook_secret"] = "the-webhook-secret"
    data["access_token"] = "the-access-token"
    data["options"] = {k: v for k, v in conn.options.items() if k != option}
    return data


def test_every_channel_declares_its_options_and_every_sample_connection_has_the_required_ones() -> None:
    assert set(SIMULATED) == set(CHANNEL_OPTIONS) - {"admin"}
    for channel in SIMULATED:
        conn = sample_of(channel)
        assert Connection.model_validate(without(conn, "")).channel == channel
        assert not unknown_options(channel, {o.name: "x" for o in known_options(channel)})


def test_the_declaration_lists_every_option_the_channels_code_reads() -> None:
    read = re.compile(r"""options(?:\.get\(|\[)\s*["']([A-Za-z0-9_]+)["']""")
    for channel in SIMULATED:
        declared = {o.name for o in known_options(channel)}
        for source in (CHANNELS_DIR / channel).glob("*.py"):
            used = set(read.findall(source.read_text()))
            assert used <= declared, (
                f"{source} reads options {sorted(used - declared)} not in CHANNEL_OPTIONS"
            )


@pytest.mark.parametrize(
    ("channel", "option"),
    [(c, o.name) for c, opts in CHANNEL_OPTIONS.items() for o in opts if o.required],
)
def test_a_connection_missing_a_required_option_is_refused_with_what_to_do(channel: str, option: str) -> None:
    described = next(o for o in CHANNEL_OPTIONS[channel] if o.name == option)
    with pytest.raises(ValidationError) as refused:
        Connection.model_validate(without(sample_of(channel), option))
    message = str(refused.value)
    assert channel in message
    assert f"--option {option}=" in message
    assert described.description in message
    assert "the-webhook-secret" not in message
    assert "the-access-token" not in message
    empty = {**without(sample_of(channel), option), "options": {option: ""}}
    with pytest.raises(ValidationError, match=option):
        Connection.model_validate(empty)


def test_the_toml_loader_refuses_a_connection_missing_a_required_option(tmp_path: Path) -> None:
    conn = tiktok_connection("http://x", skus=("SKU-1",))
    keyless = conn.model_copy(update={"options": {"shop_cipher": "c"}})  # model_copy skips validation
    path = tmp_path / "c.toml"
    path.write_text(to_toml([keyless]))
    with pytest.raises(ConnectionsFileError, match="app_key") as refused:
        ConnectionRegistry.from_file(path)
    assert str(path) in str(refused.value)
    assert "--option app_key=" in str(refused.value)
    assert conn.webhook_secret.get_secret_value() not in str(refused.value)
    assert conn.access_token.get_secret_value() not in str(refused.value)


def test_unknown_options_are_named_against_the_known_ones() -> None:
    assert unknown_options("tiktok", {"app_key": "k", "appkey": "k", "orders_page_size": "5"}) == ["appkey"]
    assert [o.name for o in known_options("ebay")] == ["orders_page_size"]


# An optional connections file: unset means the database only; named but missing is said, not fatal.


def test_an_unset_or_missing_file_gives_no_connections_and_says_what_to_do(tmp_path: Path) -> None:
    notices: list[str] = []
    assert list(load_all(None, None, notice=notices.append)) == []
    assert notices == []
    missing = tmp_path / "missing.toml"
    assert list(load_all(missing, None, setting="INGEST_CONNECTIONS_FILE", notice=notices.append)) == []
    assert len(notices) == 1
    assert str(missing) in notices[0]
    assert "does not exist" in notices[0]
    assert "unset INGEST_CONNECTIONS_FILE" in notices[0]
    with pytest.raises(ConnectionsFileUnreadable):
        ConnectionRegistry.from_file(missing)


def test_a_file_holding_something_invalid_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[[connection]\n")
    with pytest.raises(ConnectionsFileError, match="not valid TOML"):
        load_for_service(path, None, service="ingest", setting="INGEST_CONNECTIONS_FILE")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConnectionsFileError, match="not UTF-8"):
        load_for_service(path, None, service="ingest", setting="INGEST_CONNECTIONS_FILE")


def test_a_service_starting_with_no_connections_says_how_to_add_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="channels.connection_store")
    missing = tmp_path / "missing.toml"
    assert list(load_for_service(missing, None, service="fanout", setting="FANOUT_CONNECTIONS_FILE")) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if str(missing) in m and "FANOUT_CONNECTIONS_FILE" in m]) == 1
    advice = [m for m in messages if "no connections" in m]
    assert len(advice) == 1
    assert "stocksync connections add" in advice[0]

    caplog.clear()
    file = tmp_path / "c.toml"
    file.write_text(to_toml([sample_connection("http://x", skus=("SKU-1",))]))
    assert [c.id for c in load_for_service(file, None, service="fanout")] == ["shop-acme"]
    assert caplog.records == []


@pytest.mark.parametrize("settings", [IngestSettings, FanoutSettings, ReconcilerSettings, ProcessorSettings])
def test_the_connections_file_setting_is_optional(
    settings: type[IngestSettings | FanoutSettings | ReconcilerSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"{settings.model_config['env_prefix']}CONNECTIONS_FILE"
    monkeypatch.delenv(variable, raising=False)
    assert settings().connections_file is None
    monkeypatch.setenv(variable, "")
    assert settings().connections_file is None
    monkeypatch.setenv(variable, "/etc/stocksync/connections.toml")
    assert settings().connections_file == Path("/etc/stocksync/connections.toml")
