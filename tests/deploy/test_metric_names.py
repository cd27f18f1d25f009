"""Every metric the alert rules and the Grafana dashboard use is registered by the code, and the README's
metrics catalogue lists exactly what the code registers: renaming a metric fails here, not in production.

The registries are built from the services' own metrics modules (every class there that takes a registry),
so a metric added or renamed in code is seen without editing this file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.deploy.tools import REPO

SERVICES = ("ingest", "processor", "fanout", "reconciler")
RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}  # made by Prometheus itself

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def service_registry(service: str) -> CollectorRegistry | None:
    """A registry holding every metric of `service`'s metrics module; None if the service has none yet."""
    try:
        module = importlib.import_module(f"{service}.metrics")
    except ModuleNotFoundError:
        return None
    registry = CollectorRegistry()
    for _name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__ and "registry" in inspect.signature(cls).parameters:
            make: Callable[..., object] = cls
            make(registry=registry)
    return registry


def families() -> dict[str, tuple[str, str, str]]:
    """Family name -> (type, service, help) of every metric the services register."""
    out: dict[str, tuple[str, str, str]] = {}
    for service in SERVICES:
        registry = service_registry(service)
        if registry is None:
            continue
        for family in registry.collect():
            out[family.name] = (family.type, service, family.documentation)
    return out


def label_names() -> dict[str, tuple[str, ...]]:
    """Family name -> label names, from the metric objects themselves."""
    out: dict[str, tuple[str, ...]] = {}
    for service in SERVICES:
        registry = service_registry(service)
        if registry is None:
            continue
        for family in registry.collect():
            out[family.name] = ()
        for collector in getattr(registry, "_collector_to_names", {}):
            name = getattr(collector, "_name", None)
            if name is not None:
                out[name] = tuple(getattr(collector, "_labelnames", ()))
    return out


def series_names(fams: dict[str, tuple[str, str, str]]) -> set[str]:
    """Series names a scrape can show for these families (counter x: x_total; histogram: x_bucket...)."""
    return {name + suffix for name, (kind, _, _) in fams.items() for suffix in SUFFIXES[kind]}


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are neither functions, keywords, label names
    nor durations."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    return {m.group(1) for m in _IDENT.finditer(text) if not m.group(2) and m.group(1) not in _KEYWORDS}


def rule_expressions() -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) of every rule, and the names the recording rules define."""
    exprs, recorded = [], set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                where = f"{path.name}: {rule.get('alert') or rule.get('record')}"
                exprs.append((where, str(rule["expr"])))
                if "record" in rule:
                    recorded.add(rule["record"])
    return exprs, recorded


def dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (channel, le) (rate(sync_lag_seconds_bucket{job="x", le!="1"}[5m])))'
        " > 5 and on (channel) max without (instance) (consumer_lag_records offset 10m) unless "
        "time() - max(reconcile_last_success_timestamp_seconds) > 2 * 3600 or absent(up) or level:rec:p99"
    )
    assert metric_names(expr) == {
        "sync_lag_seconds_bucket",
        "consumer_lag_records",
        "reconcile_last_success_timestamp_seconds",
        "up",
        "level:rec:p99",
    }


def test_every_service_registers_metrics() -> None:
    fams = families()
    by_service = {service for _, service, _ in fams.values()}
    assert {"ingest", "processor", "fanout"} <= by_service, by_service
    assert fams.get("sync_lag_seconds", ("",))[0] == "histogram"


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_used_exists_in_the_code(source: str) -> None:
    exprs, recorded = rule_expressions()
    if source == "dashboard":
        exprs = dashboard_expressions()
    assert len(exprs) >= 10, f"only {len(exprs)} {source} expressions found: is the file there?"
    known = series_names(families()) | recorded | BUILTIN
    missing = {
        f"{where}: {name}" for where, expr in exprs for name in metric_names(expr) if name not in known
    }
    assert not missing, "metrics used but not registered by any service (renamed?):\n" + "\n".join(
        sorted(missing)
    )


def test_a_renamed_metric_is_caught() -> None:
    known = series_names(families())
    assert "sync_lag_seconds_bucket" in known
    assert metric_names("rate(sync_lag_secs_bucket[5m])") - known == {"sync_lag_secs_bucket"}


def catalogue() -> dict[str, tuple[str, str]]:
    """Name -> (type, labels) from the README's "Metrics catalogue" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Metrics catalogue", 1)
    assert len(section) == 2, "README.md has no '## Metrics catalogue' section"
    body = section[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_the_readme_catalogue_matches_the_registries() -> None:
    fams, rows = families(), catalogue()
    exposed = {
        (name + "_total" if kind == "counter" else name): (kind, service)
        for name, (kind, service, _) in fams.items()
    }
    assert set(rows) == set(exposed), (
        f"in code, not in the README: {sorted(set(exposed) - set(rows))}; "
        f"in the README, not in code: {sorted(set(rows) - set(exposed))}"
    )
    wrong_type = {n: (rows[n][0], exposed[n][0]) for n in rows if rows[n][0] != exposed[n][0]}
    assert not wrong_type, f"README type differs from the code (README, code): {wrong_type}"
    labels = {
        (name + "_total" if fams[name][0] == "counter" else name): ", ".join(f"`{x}`" for x in names) or "—"
        for name, names in label_names().items()
    }
    wrong_labels = {n: (rows[n][1], labels[n]) for n in rows if rows[n][1] != labels[n]}
    assert not wrong_labels, f"README labels differ from the code (README, code): {wrong_labels}"
