"""The README's whole path (devstack → check → setup → capture → sinks → verify → status → teardown),
run exactly as written there, in a shell, on this machine."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_path_script() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- readme-path:begin -->\s*```bash\n(.*?)```\s*<!-- readme-path:end -->", text, re.S
    )
    assert block, "README.md lost its readme-path block"
    return block.group(1)


def test_the_readme_path_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "path.sh"
    script.write_text("set -euo pipefail\n" + readme_path_script())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the script left behind on failure
        subprocess.run(
            [sys.executable, "-m", "walbridge.cli", "devstack", "down", "--state-dir", ".walbridge/try"],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
    assert proc.returncode == 0, out[-6000:]
    for expected in (
        "the server is ready for logical capture",
        "created destination table inventory.customers",
        "created destination table inventory.orders",
        "2 table(s), 4 source rows compared: all agree",
        '"PostgreSQL_Data__e"',
        "dropped replication slot walbridge",
    ):
        assert expected in out, (expected, out[-6000:])
