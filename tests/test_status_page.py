"""The live /status page in a real headless Chromium: what it shows equals /metrics; a screenshot is kept."""

from __future__ import annotations

import html
import logging
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from walbridge import metrics
from walbridge.config import MetricsSettings
from walbridge.web import start_ops

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: ./dev test installs Debian's chromium package")
    return found


def _browse(url: str, profile: Path, *extra: str) -> str:
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=6000", *extra]
    result = subprocess.run(
        [_chromium(), *flags, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _prometheus(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match and not line.startswith("#"):
            values[match[1] + (match[2] or "")] = float(match[3])
    return values


def test_status_page_shows_the_numbers_of_metrics(tmp_path: Path) -> None:
    table = f"public.page_{tmp_path.name[-6:]}"
    metrics.capture.events.labels(table=table, op="c").inc(1234)
    metrics.capture.events.labels(table=table, op="u").inc(56)
    metrics.capture.snapshot_rows.labels(table=table).inc(1290)
    metrics.capture.producer_queue.set(17)
    ops = start_ops(MetricsSettings(port=0), "capture", lambda: {"mode": "logical", "uptime_s": 12.5})
    assert ops is not None
    logging.getLogger("walbridge.test").warning("destination unreachable: connection refused (page test)")
    try:
        dom = _browse(f"{ops.url}/status", tmp_path / "profile", "--dump-dom")
        scrape = _prometheus(httpx.get(f"{ops.url}/metrics").text)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        _browse(f"{ops.url}/status", tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1100")
    finally:
        ops.stop()
    assert re.search(r'<body[^>]*data-rendered="[1-9]', dom), dom[:500]
    shown = {
        html.unescape(key): float(value.replace(",", ""))
        for key, value in re.findall(r'data-metric="([^"]+)">([^<]*)<', dom)
    }
    for key in (
        f'walbridge_capture_events_total{{op="c",table="{table}"}}',
        f'walbridge_capture_events_total{{op="u",table="{table}"}}',
        f'walbridge_capture_snapshot_rows_total{{table="{table}"}}',
        "walbridge_capture_producer_queue_depth",
    ):
        assert key in shown, sorted(shown)[:20]
    assert all(shown[key] == pytest.approx(scrape[key], rel=1e-3) for key in shown)
    assert len(shown) >= 4
    assert "destination unreachable: connection refused (page test)" in dom
    assert 'class="ok">healthy' in dom and "capture (logical)" in dom
    assert shot.stat().st_size > 10_000
