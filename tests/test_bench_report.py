"""bench/report.py renders the benchmarks' and the soak's JSON into the report and the README table."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _soak_doc(mode: str, plot: str) -> dict[str, object]:
    return {
        "mode": mode, "seed": 7, "minutes": 1, "rate": 2000, "ok": True,
        "checks": {"destination equals source": {"ok": True, "detail": "12 tables | 0 differences"}},
        "lost_rows": 0, "duplicated_rows": 0, "emulator_missing": 0, "emulator_duplicates": 3,
        "dlq": {"poison_sent": 4, "poison_found": 4, "unexpected": 0},
        "latency_ms": {"p50": 120.4, "p99": 870.2, "max": 2400.0}, "changes_written": 120000,
        "fault_counts": {"kill_capture": 2, "broker_cut": 2}, "faults": [], "plots": [plot],
    }  # fmt: skip


def test_report_renders_figures_soak_and_readme_table(tmp_path: Path) -> None:
    report = _report_module()
    soak_dir = tmp_path / "bench" / "report" / "soak-logical"
    soak_dir.mkdir(parents=True)
    (soak_dir / "throughput.png").write_bytes(b"\x89PNG fake")
    logical = report.Run(_soak_doc("logical", "throughput.png"), 61.0)
    assert logical.figures is not None
    logical.figures["_dir"] = str(soak_dir)
    sink = report.Run(
        {
            "events": 200000,
            "workers": 2,
            "runs": {"copy": {"events_per_s": 52000}, "ceiling": {"events_per_s": 104000}},
        },
        30.0,
    )
    figures = report.sink_postgres_figures(sink) + report.capture_figures(None, None)
    out = tmp_path / "bench" / "REPORT.md"
    args = argparse.Namespace(quick=False)
    info = {"machine": {"cores": "2", "RAM": "8 GiB", "CPU": "test CPU"}, "versions": {"Python": "3.11"}}
    started = dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC)
    runs = {"sink_postgres": sink, "capture": None}
    soaks = {"logical": logical, "trigger": report.Run(None, 0.0, "`walbridge soak` is not available")}
    report.write_report(out, args, started, info, figures, runs, soaks, tmp_path / "bench" / "report")

    text = out.read_text()
    assert "| PostgreSQL sink | 200,000 events (70/25/5 % c/u/d), 1 process | 52,000 events/s | " in text
    assert "PostgreSQL's own COPY + upsert: 104,000 events/s | 0.50x | ≥ 50,000 events/s |" in text
    assert "| destination equals source | ok | 12 tables \\| 0 differences |" in text
    assert "| events missing / duplicated in the emulator | 0 / 3 |" in text
    assert "broker_cut x 2, kill_capture x 2" in text
    assert "![logical soak: throughput](report/soak-logical/throughput.png)" in text
    assert "soak not run (`walbridge soak` is not available)." in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "soak-trigger-lag.png").write_bytes(b"\x89PNG lag")
    trigger = report.Run({**_soak_doc("trigger", "soak-trigger-lag.png"), "_dir": str(elsewhere)}, 61.0)
    lines = report.soak_section("trigger", trigger, out, tmp_path / "bench" / "report")
    assert "![trigger soak: soak-trigger-lag](report/soak-trigger-lag.png)" in lines
    assert (tmp_path / "bench" / "report" / "soak-trigger-lag.png").read_bytes() == b"\x89PNG lag"
    assert "| capture | peak RSS | not measured |" in text

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nold table\n{report.README_END}\nafter\n")
    assert report.update_readme(readme, figures, started, info)
    updated = readme.read_text()
    assert (
        "old table" not in updated and updated.startswith("# x\n\nbefore\n") and updated.endswith("after\n")
    )
    assert "Measured 2026-11-30 by `bench/report.py`" in updated
    assert "| PostgreSQL sink | 200,000 events (70/25/5 % c/u/d), 1 process | 52,000 events/s |" in updated
    assert report.update_readme(readme, figures, started, info)  # markers kept: regenerates again


def test_report_reads_the_json_each_benchmark_writes(tmp_path: Path) -> None:
    """The --json documents the benchmarks write, as report.py reads them (no parsing of prints)."""
    report = _report_module()
    capture = {"rows": 1000, "snapshot_rows": 2000, "results": {
        "walbridge": {"backlog": 90000.0, "backlog_cpu": 10.0, "rss": 80.0},
        "debezium": {"backlog": 30000.0, "rss": 900.0}, "pg_recvlogical": {"backlog": 100000.0}}}  # fmt: skip
    trigger = {"rows": 1000, "clients": 2, "results": {
        "trigger": {"live_rate": 50000.0, "bulk_plain": 200000.0, "bulk_trigger": 120000.0,
                    "tps_plain": 10000.0, "tps_trigger": 9000.0},
        "logical": {"live_rate": 80000.0}}}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(capture))
    figures = report.capture_figures(report.Run(json.loads((tmp_path / "c.json").read_text()), 1.0), None)
    figures += report.trigger_figures(report.Run(trigger, 1.0), None)
    ratios = {f.what: f.ratio() for f in figures}
    assert ratios["backlog of 1,000 inserts + 1,000 updates, to Kafka ack"] == "0.90x"
    assert ratios["peak RSS"] == "11.25x less"
    assert ratios["source bulk inserts with the triggers (1,000-row transactions)"] == "0.60x"
    assert ratios["source single-row inserts with the triggers (pgbench, 2 clients)"] == "0.90x"
    assert ratios["1,000 live inserts: first commit → last ack"] == "0.62x"
