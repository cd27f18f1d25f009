"""promtool (Debian's prometheus package) accepts the scrape config and the alert rules, and the rules' unit
tests pass: every alert has a case where it fires and one where it stays quiet."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.tools import REPO, tool

PROM = REPO / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [tool("promtool"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    rules = promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = promtool("check", "config", "--syntax-only", str(PROM / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(PROM / "tests" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {
        rule["alert"]
        for path in (PROM / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts, "no alert rules found"
    assert alerts - firing == set(), f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"alerts never tested quiet: {sorted(alerts - quiet)}"


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests are sharp: a sync-lag threshold below what the quiet case shows fails them."""
    root = tmp_path
    (root / "rules").mkdir()
    (root / "tests").mkdir()
    rules = (PROM / "rules" / "stocksync-alerts.yml").read_text()
    assert "channel:sync_lag_seconds:p99_5m > 5\n" in rules
    (root / "rules" / "stocksync-alerts.yml").write_text(
        rules.replace("channel:sync_lag_seconds:p99_5m > 5\n", "channel:sync_lag_seconds:p99_5m > 0.5\n")
    )
    (root / "tests" / "alerts_test.yml").write_text((PROM / "tests" / "alerts_test.yml").read_text())
    result = promtool("test", "rules", str(root / "tests" / "alerts_test.yml"))
    assert result.returncode != 0
    assert "SyncLagP99High" in result.stdout + result.stderr
