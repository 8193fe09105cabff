"""The type matrix (every built-in type with its edge values, ``tests/type_matrix.py``) end to end
through the CLI, in both capture modes and both readable decimal modes: snapshot rows and streamed
rows reach the destination equal to the source, and ``walbridge verify`` agrees."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from e2e_harness import MODES, CliPipeline, both, execute

import type_matrix


@pytest.mark.parametrize("decimal_mode", ["string", "precise"])
@pytest.mark.parametrize("mode", MODES)
def test_type_matrix_round_trips(
    make_pipeline: Callable[..., CliPipeline], pg_dsn: str, dst_dsn: str, mode: str, decimal_mode: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        version, xml = conn.info.server_version, type_matrix.xml_supported(conn)
    both(pg_dsn, dst_dsn, *type_matrix.schema_statements(version, xml=xml))
    execute(pg_dsn, *type_matrix.snapshot_statements(version, xml=xml))  # through the snapshot
    events = {
        **type_matrix.EVENTS_OPTIONS,
        "decimal_handling_mode": decimal_mode,
        "schemas_enable": decimal_mode == "precise",
    }
    pipe = make_pipeline(mode, list(type_matrix.TABLES), events=events)
    pipe.start_all()
    execute(pg_dsn, *type_matrix.change_statements(version, xml=xml))  # through the stream
    pipe.roundtrip()
    pipe.assert_clean_stop()
