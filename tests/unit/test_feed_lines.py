"""The agent feed's line and file (cli/feed.py), without a database: an ACP line carries the Variant's id and
availability object and the count in UTC-stamped JSON; the file replaces its target only once published."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from allocation.availability import Status
from cli.feed import StagedFile, acp_line


def test_an_acp_line_is_the_variant_id_and_availability_with_the_count_and_time_in_utc() -> None:
    at = datetime(2026, 5, 1, 11, 30, 12, 345678, tzinfo=timezone(timedelta(hours=2)))
    line = acp_line("TSHIRT-M", 3, "limited_stock", at)
    assert "\n" not in line
    assert json.loads(line) == {
        "id": "TSHIRT-M",
        "availability": {"available": True, "status": "limited_stock"},
        "inventory_quantity": 3,
        "updated_at": "2026-05-01T09:30:12.345678Z",
    }


@pytest.mark.parametrize(("state", "available"), [("in_stock", True), ("out_of_stock", False)])
def test_available_is_false_only_out_of_stock(state: Status, available: bool) -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    line = json.loads(acp_line("S", 0 if state == "out_of_stock" else 9, state, at))
    assert line["availability"] == {"available": available, "status": state}


def test_a_sku_is_written_as_it_is() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    assert json.loads(acp_line('Café "grande"/1', 1, "limited_stock", at))["id"] == 'Café "grande"/1'
    assert "Café" in acp_line("Café", 1, "limited_stock", at)  # UTF-8, not \\u escapes


def test_a_published_file_replaces_its_target_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "products.jsonl"
    target.write_text("old\n")
    with StagedFile(target) as staged:
        staged.write_line('{"id":"A"}')
        assert target.read_text() == "old\n"  # not before it is complete
        staged.publish()
    assert target.read_text() == '{"id":"A"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["products.jsonl"]


def test_an_unpublished_file_is_removed_and_the_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "products.jsonl"
    target.write_text("old\n")

    def fail_halfway() -> None:
        with StagedFile(target) as staged:
            staged.write_line('{"id":"A"}')
            raise RuntimeError("the export failed")

    with pytest.raises(RuntimeError, match="the export failed"):
        fail_halfway()
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["products.jsonl"]


def test_the_file_gets_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with StagedFile(tmp_path / "products.jsonl") as staged:
            staged.publish()
    finally:
        os.umask(umask)
    assert (tmp_path / "products.jsonl").stat().st_mode & 0o777 == 0o644
