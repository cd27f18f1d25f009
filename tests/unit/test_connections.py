"""Connections file: round trip, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from channels.connection import ConnectionRegistry, ConnectionsFileError, TenantToken, to_toml, token_digest
from channels.shopify.simulator import sample_connection


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
