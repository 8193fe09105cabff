"""The soak's results: the JSON file, the summary table, the PNG plots.

Contract (``bench/report.py`` reads it): ``write_json`` writes ``DIR/soak-<mode>.json`` with at least the
keys of :data:`REPORT_KEYS`; ``write_plots`` writes ``DIR/soak-<mode>-<name>.png`` for throughput,
latency, lag and RSS over time, each with a dashed marker at every fault, and returns the file names.
Plots need the ``soak`` extra (matplotlib); without it they are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.table import Table

from walbridge.soak.sampling import Sample

__all__ = ["REPORT_KEYS", "summary_table", "write_json", "write_plots"]

log = logging.getLogger(__name__)

REPORT_KEYS = (
    "mode",
    "seed",
    "minutes",
    "rate",
    "ok",
    "checks",
    "lost_rows",
    "duplicated_rows",
    "emulator_missing",
    "emulator_duplicates",
    "dlq",
    "latency_ms",
    "changes_written",
    "fault_counts",
    "faults",
    "plots",
)


def write_json(out_dir: Path, report: dict[str, Any]) -> Path:
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"soak report lacks {missing}")
    path = out_dir / f"soak-{report['mode']}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def summary_table(report: dict[str, Any]) -> Table:
    verdict = "[green]PASS[/]" if report["ok"] else "[bold red]FAIL[/]"
    table = Table(title=f"walbridge soak, {report['mode']} mode: {verdict}", show_lines=False)
    table.add_column("check")
    table.add_column("", justify="center")
    table.add_column("detail", overflow="fold")
    for name, check in report["checks"].items():
        table.add_row(name, "[green]✓[/]" if check["ok"] else "[red]✗[/]", check["detail"])
    lat = report["latency_ms"]
    table.add_row("latency (ms)", "", f"p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}")
    table.add_row(
        "load",
        "",
        f"{report['changes_written']} changes in {report['load_s']:.0f}s "
        f"({report['achieved_rate']:.0f}/s of {report['rate']}/s asked)",
    )
    faults = ", ".join(f"{k}x{n}" for k, n in sorted(report["fault_counts"].items())) or "none"
    table.add_row("faults", "", faults)
    return table


def _markers(axes: Any, faults: list[dict[str, Any]]) -> None:
    for fault in faults:
        axes.axvline(fault["t_s"], color="grey", linestyle="--", linewidth=0.6, alpha=0.7)
    if faults:
        top = axes.get_ylim()[1]
        for fault in faults:
            axes.text(
                fault["t_s"], top, fault["kind"], rotation=90, fontsize=6, va="top", ha="right", alpha=0.8
            )


def _rates(samples: list[Sample], attr: str) -> tuple[list[float], list[float]]:
    times, rates = [], []
    previous: Sample | None = None
    for sample in samples:
        value = getattr(sample, attr)
        if previous is not None and value is not None and getattr(previous, attr) is not None:
            span = sample.t_s - previous.t_s
            if span > 0:
                times.append(sample.t_s)
                rates.append(max(0.0, (value - getattr(previous, attr)) / span))
        if value is not None:
            previous = sample
    return times, rates


def write_plots(
    out_dir: Path,
    mode: str,
    samples: list[Sample],
    latency: list[tuple[float, float]],
    faults: list[dict[str, Any]],
) -> list[str]:
    """``latency``: (seconds since the load started, ms) per destination row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no plots: install walbridge[soak] (matplotlib)")
        return []
    names = []

    def figure(name: str, title: str, ylabel: str, draw: Any) -> None:
        fig, axes = plt.subplots(figsize=(11, 4))
        draw(axes)
        axes.set_title(f"{title} ({mode} mode)")
        axes.set_xlabel("seconds since the load started")
        axes.set_ylabel(ylabel)
        _markers(axes, faults)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        file = f"soak-{mode}-{name}.png"
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        names.append(file)

    def throughput(axes: Any) -> None:
        for attr, label in (
            ("written", "changes written/s"),
            ("in_kafka", "records into Kafka/s"),
            ("applied_pg", "records applied by the PostgreSQL sink/s"),
        ):
            axes.plot(*_rates(samples, attr), label=label, linewidth=0.9)

    def latency_plot(axes: Any) -> None:
        if latency:
            axes.scatter([t for t, _ in latency], [ms for _, ms in latency], s=2, alpha=0.4, label="row")
            axes.set_yscale("log")

    def lag_plot(axes: Any) -> None:
        for attr, label in (("lag_pg", "PostgreSQL sink"), ("lag_sf", "Salesforce sink")):
            points = [(s.t_s, getattr(s, attr)) for s in samples if getattr(s, attr) is not None]
            axes.plot([t for t, _ in points], [v for _, v in points], label=label, linewidth=0.9)

    def rss_plot(axes: Any) -> None:
        points = [(s.t_s, s.capture_rss_mb) for s in samples if s.capture_rss_mb is not None]
        axes.plot([t for t, _ in points], [v for _, v in points], label="capture RSS", linewidth=0.9)

    figure("throughput", "Throughput", "per second", throughput)
    figure("latency", "Commit → destination row latency", "ms (log)", latency_plot)
    figure("lag", "Kafka consumer lag", "records", lag_plot)
    figure("rss", "Capture resident memory", "MiB", rss_plot)
    return names
