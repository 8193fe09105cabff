"""The type matrix (every built-in type with its edge values, ``tests/type_matrix.py``) end to end
through the CLI, in both capture modes and both readable decimal modes: snapshot rows and streamed
rows reach the destination equal to the source, and ``walbridge verify`` agrees."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import type_matrix
from e2e_harness import MODES, CliPipeline, both, execute

TABLE = "type_matrix"


@pytest.mark.parametrize("decimal_mode", ["string", "precise"])
@pytest.mark.parametrize("mode", MODES)
def test_type_matrix_round_trips(
    make_pipeline: Callable[..., CliPipeline], pg_dsn: str, dst_dsn: str, mode: str, decimal_mode: str
) -> None:
    both(pg_dsn, dst_dsn, type_matrix.ddl(TABLE))
    inserts = type_matrix.inserts(TABLE)
    half = len(inserts) // 2
    execute(pg_dsn, *inserts[:half])  # through the snapshot
    events = {"decimal_handling_mode": decimal_mode, "schemas_enable": decimal_mode == "precise"}
    pipe = make_pipeline(mode, [TABLE], events=events)
    pipe.start_all()
    execute(pg_dsn, *inserts[half:])  # through the stream
    pipe.roundtrip()
    pipe.assert_clean_stop()
