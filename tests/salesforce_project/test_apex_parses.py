"""Every Apex class and trigger of the SFDX project parses with the Apex ANTLR grammar (tools/apex-check)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "apex-check"
FORCE_APP = ROOT / "salesforce" / "force-app"


@pytest.fixture(scope="module")
def apex_check() -> list[str]:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the Apex parse check (CI installs nodejs)")
    if not (TOOL / "node_modules" / "@apexdevtools" / "apex-parser").is_dir():
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=TOOL, check=True, timeout=300)
    return [node, str(TOOL / "check.js")]


def test_project_apex_parses(apex_check: list[str]) -> None:
    result = subprocess.run([*apex_check, str(FORCE_APP)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 syntax error(s)" in result.stdout


def test_syntax_error_is_reported_with_position(apex_check: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "Broken.cls"
    broken.write_text("public class Broken {\n    void run( {\n    }\n}\n")
    result = subprocess.run([*apex_check, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"{broken}:2:15:" in result.stdout
