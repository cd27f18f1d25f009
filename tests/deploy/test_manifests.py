"""The Kubernetes manifests pass kubeconform (strict, against the Kubernetes 1.33 OpenAPI schemas shipped in
the ``kubernetes-validate`` PyPI package, made standalone here because GitHub is out of reach), and the
Compose file passes the compose-spec JSON schema (vendored in ``check-jsonschema``): no Docker engine, and no
``docker compose`` plugin, on CI. Then what those validators cannot see: cross-references inside the files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DEFAULT_BIN, REPO, required, tool

K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "docker-compose.yml"
KUBERNETES_VERSION = "1.33.0"
SCHEMA_CACHE = DEFAULT_BIN.parent / "k8s-schemas"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)  # noqa: S603


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") != "Kustomization"]
    return docs


def _schema_source() -> Path:
    """kubernetes-validate's schema directory for KUBERNETES_VERSION (strict: no unknown fields)."""
    python = (
        Path(os.environ.get("STOCKSYNC_TOOLS_VENV", DEFAULT_BIN.parent / "tools-venv")) / "bin" / "python"
    )
    found = None
    if python.is_file():
        out = run(
            str(python), "-c", "import kubernetes_validate as k, os; print(os.path.dirname(k.__file__))"
        )
        if out.returncode == 0:
            found = (
                Path(out.stdout.strip()) / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
            )
    if found is None or not found.is_dir():
        message = (
            f"the Kubernetes {KUBERNETES_VERSION} JSON schemas are missing: bash .ci/run installs the "
            f"kubernetes-validate package into {python.parent.parent} (or set STOCKSYNC_TOOLS_VENV)"
        )
        if required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def standalone_schemas(kinds: set[tuple[str, str]]) -> Path:
    """kubeconform-ready schemas (``<kind>-<group>-<version>.json``) for the (kind, apiVersion) pairs given.

    The package's schemas refer to a shared ``/api/_definitions.json`` that kubeconform cannot resolve from a
    directory; each schema written here carries those definitions itself, so it stands alone.
    """
    source = _schema_source()
    target = SCHEMA_CACHE / f"v{KUBERNETES_VERSION}-standalone-strict"
    target.mkdir(parents=True, exist_ok=True)
    definitions: dict[str, Any] | None = None
    for kind, api_version in kinds:
        group, _, version = api_version.rpartition("/")
        suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
        name = f"{kind.lower()}{suffix}.json"
        if (target / name).is_file() or not (source / name).is_file():
            continue  # cached, or unknown to Kubernetes: kubeconform reports it
        if definitions is None:
            definitions = json.loads(_local_refs((source / "_definitions.json").read_text()))["$defs"]
        schema = json.loads(_local_refs((source / name).read_text()))
        schema.pop("$id", None)
        schema["$defs"] = definitions
        (target / name).write_text(json.dumps(schema))
    return target


def _local_refs(text: str) -> str:
    return text.replace('"/api/_definitions.json#/$defs/', '"#/$defs/')


def kubeconform(*paths: Path) -> subprocess.CompletedProcess[str]:
    docs = [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d] if paths else manifests()
    kinds = {(d["kind"], d["apiVersion"]) for d in docs if d.get("kind") != "Kustomization"}
    schemas = standalone_schemas(kinds)
    return run(
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-output",
        "text",
        "-kubernetes-version",
        KUBERNETES_VERSION,
        "-skip",
        "Kustomization",
        "-schema-location",
        f"{schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        *(map(str, paths) if paths else [str(K8S)]),
    )


def test_kubeconform_accepts_every_manifest() -> None:
    result = kubeconform()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"Valid: (\d+), Invalid: (\d+), Errors: (\d+)", output)
    assert summary, output
    valid, invalid, errors = map(int, summary.groups())
    assert (invalid, errors) == (0, 0), output
    assert valid == len(manifests()), output


def test_kubeconform_refuses_a_mistake(tmp_path: Path) -> None:
    """The validator is strict: a misspelt probe field is an error, not ignored."""
    broken = (K8S / "10-ingest.yaml").read_text().replace("periodSeconds: 10", "periodSecond: 10", 1)
    (tmp_path / "ingest.yaml").write_text(broken)
    result = kubeconform(tmp_path / "ingest.yaml")
    assert result.returncode != 0
    assert "periodSecond" in result.stdout + result.stderr


def workloads() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every Deployment, Job and CronJob."""
    out = []
    for d in manifests():
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in ("Deployment", "Job"):
            out.append((name, d["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            out.append((name, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


def test_k8s_services_probe_healthz_and_readyz_and_the_plan_is_complete() -> None:
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("HorizontalPodAutoscaler", "ingest") in kinds
    assert ("CronJob", "reconciler") in kinds
    assert ("Job", "stocksync-topics") in kinds
    fanouts = [n for k, n in kinds if k == "Deployment" and n.startswith("fanout-")]
    assert len(fanouts) >= 2, fanouts
    served: set[str] = set()
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", d["metadata"]["name"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", d["metadata"]["name"]
            args = c["command"]
            if "fanout" in args:
                served |= {args[i + 1] for i, a in enumerate(args) if a == "--channel"}
    channels = {
        p.name
        for p in (REPO / "channels").iterdir()
        if (p / "outbound.py").exists() or (p / "client.py").exists()
    }
    assert channels <= served, f"channels without a fan-out deployment: {sorted(channels - served)}"


def test_k8s_config_and_secrets_are_separate() -> None:
    docs = manifests()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    secretish = re.compile(r"(?i)password|secret|token|database_url|credential")
    assert not [k for k in config["data"] if secretish.search(k)], config["data"]
    assert not [v for v in config["data"].values() if "://" in v and "@" in v], "a URL with credentials"
    for name, spec in workloads():
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                assert ref.get("configMapRef", {}).get("name") == config["metadata"]["name"], name
            for env in c.get("env", []):
                key = env["valueFrom"]["secretKeyRef"]
                assert key["name"] == secret["metadata"]["name"], name
                assert key["key"] in secret["stringData"], (name, key)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                items = [i["key"] for i in volume["secret"].get("items", [])]
                assert set(items) <= set(secret["stringData"]), (name, items)


def test_compose_passes_the_compose_spec_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_refuses_a_mistake(tmp_path: Path) -> None:
    broken = COMPOSE.read_text().replace(
        "    depends_on:\n      - prometheus", "    depend_on:\n      - prometheus"
    )
    assert broken != COMPOSE.read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(tmp_path / "docker-compose.yml"),
    )
    assert result.returncode != 0
    assert "depend_on" in result.stdout + result.stderr


def test_compose_references_resolve() -> None:
    """What the schema cannot check: depends_on targets, named volumes, bind-mounted files, scrape targets."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services, volumes = compose["services"], set(compose.get("volumes", {}))
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                path = REPO / source
                if path.name == "connections.toml":
                    path = path.with_name("connections.example.toml")  # the operator copies the example
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
    for wanted in (
        "kafka",
        "postgres",
        "ingest",
        "processor",
        "fanout",
        "reconciler",
        "prometheus",
        "grafana",
    ):
        assert wanted in services, f"the stack has no {wanted}"
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            host, port = target.split(":")
            if host == "localhost":
                continue
            env = services[host]["environment"]
            assert port in {str(v) for k, v in env.items() if k.endswith("PORT")}, (job["job_name"], env)
