"""Shared by the deployment tests: where the files are, and the external programs they run.

promtool and kubectl come from Debian's ``prometheus`` and ``kubernetes-client`` packages: ``./dev test``
unpacks them into the virtualenv's ``bin/`` (see ``ensure_deb_tools`` in ``./dev``). A test that needs one
skips, naming it, where it is missing, except in CI (``CI`` set), where a missing program is a failure: CI
must not pass without the check.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def program(name: str, debian_package: str) -> str:
    """The path of ``name``: the virtualenv's (where ./dev puts it), else the PATH's."""
    bundled = Path(sys.prefix) / "bin" / name
    found = str(bundled) if bundled.is_file() else shutil.which(name)
    if found:
        return found
    reason = f"{name} not found: `./dev test` unpacks it from Debian's {debian_package} package"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
