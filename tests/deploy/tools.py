"""External validators the deployment tests run: promtool, prometheus, kubeconform, check-jsonschema.

Looked up in ``STOCKSYNC_TOOLS_BIN`` (``.ci/run`` installs into ``~/.cache/stocksync/bin``), then on PATH.
A missing tool fails the test under CI (``CI=true``) or with ``STOCKSYNC_REQUIRE_TOOLS=1``; elsewhere it
skips; either way the message says how to install it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = Path(os.environ.get("STOCKSYNC_CACHE_DIR", Path.home() / ".cache" / "stocksync")) / "bin"

INSTALL = {
    "promtool": "apt-get install -y prometheus   (Debian's package: the server and promtool)",
    "prometheus": "apt-get install -y prometheus   (Debian's package: the server and promtool)",
    "kubeconform": "GOBIN=~/.cache/stocksync/bin go install "
    "github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0",
    "check-jsonschema": "bash .ci/run installs it (a venv in ~/.cache/stocksync/tools-venv, linked into "
    "~/.cache/stocksync/bin); or pip install check-jsonschema==0.39.0",
}


def required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("STOCKSYNC_REQUIRE_TOOLS") == "1"


def tool(name: str) -> str:
    """The path of tool `name`; fails (CI) or skips (elsewhere) the calling test when it is missing."""
    for directory in (os.environ.get("STOCKSYNC_TOOLS_BIN"), str(DEFAULT_BIN)):
        if directory and (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    found = shutil.which(name)
    if found:
        return found
    message = (
        f"{name} is not installed (looked in $STOCKSYNC_TOOLS_BIN, {DEFAULT_BIN} and PATH). "
        f"Install it with: {INSTALL.get(name, 'see .ci/run')}"
    )
    if required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
