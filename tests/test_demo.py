"""The README's demo command runs the whole pipeline and ends with source and replica in agreement."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import run_cli


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    code, out, err = run_cli("demo", "--duration", "14", "--state-dir", str(tmp_path / "demo"), timeout=180)
    text = out + err
    assert code == 0, text[-3000:]  # the demo exits non-zero when any stage reported an error
    assert "source and replica agree" in text
    published = [int(n) for n in re.findall(r"(\d+) PostgreSQL_Data__e events", text)]
    assert published and published[-1] >= 4, text[-3000:]  # 3 snapshot/insert rows + 1 update of customers
    lines = text.splitlines()
    # Not a terminal (a pipe, a CI log): one line per step, no wrapped DSN, nothing glued to the footer.
    assert any(line.startswith("demo: scripted changes applied") for line in lines), text[-3000:]
    [hint] = [line for line in lines if "make your own changes" in line]
    assert re.search(r"psql 'postgresql://[^']+/ecommerce_db' {3}· {3}Ctrl-C stops$", hint), hint
    starting = "walbridge demo: starting PostgreSQL, the Kafka-protocol broker and the Salesforce emulator…"
    assert starting in lines
    assert lines[-1].startswith("✓ source and replica agree")
