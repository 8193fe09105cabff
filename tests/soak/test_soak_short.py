"""The 60-second soak: ``walbridge soak`` as a user runs it, with a few faults, and its real end-state checks.

The soak starts its own source and destination PostgreSQL, broker (behind a proxy) and emulator, because
it restarts and cuts them. Its report is the contract ``bench/report.py`` reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from walbridge.soak.output import REPORT_KEYS

FAULTS = ["capture_kill", "sink_worker_kill", "source_restart", "emulator_503", "poison", "add_column"]


def test_one_minute_soak_under_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    argv = [sys.executable, "-m", "walbridge.cli", "--log-format", "plain", "soak", "--mode", "logical",
            "--minutes", "1", "--rate", "300", "--seed", "7", "--faults", ",".join(FAULTS),
            "--fault-repeat", "1", "--drain-timeout", "90", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    report_path = out / "soak-logical.json"
    assert report_path.exists(), (
        f"no report (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
    )
    report = json.loads(report_path.read_text())
    failed = {name: check["detail"] for name, check in report["checks"].items() if not check["ok"]}
    logs = out / "soak-logical-run" / "logs"
    tails = "".join(
        f"\n== {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log"))
    )
    assert done.returncode == 0 and report["ok"], f"failed checks: {failed}\n{done.stderr[-3000:]}{tails}"
    assert set(REPORT_KEYS) <= report.keys()
    assert report["lost_rows"] == 0 and report["duplicated_rows"] == 0
    assert report["emulator_missing"] == 0
    assert report["dlq"] == {"poison_sent": 1, "poison_found": 1, "unexpected": 0}
    assert report["fault_counts"] == dict.fromkeys(FAULTS, 1)
    assert [f["kind"] for f in report["faults"]] and all(f["t_s"] > 0 for f in report["faults"])
    assert report["changes_written"] > 5_000
    assert report["latency_ms"]["p50"] is not None
    assert sorted(report["plots"]) == [
        f"soak-logical-{n}.png" for n in ("lag", "latency", "rss", "throughput")
    ]
    assert all((out / name).stat().st_size > 10_000 for name in report["plots"])
