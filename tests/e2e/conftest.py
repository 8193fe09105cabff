"""Fixtures of the end-to-end tests: a destination database and a factory of CLI pipelines.

- ``dst_dsn``: a fresh destination database beside the source (same server), dropped after.
- ``make_pipeline(mode, tables, **options)``: a :class:`CliPipeline` on ``pg_dsn`` → ``dst_dsn`` with
  this test's topic prefix; its processes are stopped after the test, and their logs printed when the
  test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import CliPipeline


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def dst_dsn(dest_dsn: str) -> str:
    return dest_dsn


@pytest.fixture
def make_pipeline(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pg_dsn: str,
    dst_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> Iterator[Callable[..., CliPipeline]]:
    made: list[CliPipeline] = []

    def make(mode: str, tables: list[str], **options: Any) -> CliPipeline:
        options.setdefault("source_dsn", pg_dsn)
        source_dsn = options.pop("source_dsn")
        pipeline = CliPipeline(
            tmp_path / f"p{len(made)}",
            source_dsn,
            dst_dsn,
            kafka_bootstrap,
            f"{topic_prefix}{len(made) or ''}",
            mode,
            tables,
            **options,
        )
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        try:
            pipeline.stop()
        finally:
            if request.node.stash.get(_FAILED, False):
                print(pipeline.report())
