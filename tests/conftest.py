"""Session fixtures for the whole suite: one real PostgreSQL and one real Kafka-protocol broker.

Fixtures (names are stable; other tests rely on them):

- ``pg_server`` (session): a ``walbridge.dev.devstack.PostgresServer`` (fsync=off) in a temporary directory,
  or ``None`` when ``WALBRIDGE_TEST_PG_DSN`` names a running server to reuse (a superuser DSN).
- ``pg_admin_dsn`` (session): a superuser DSN of that server (database ``postgres``).
- ``pg_dsn`` (function): a fresh database ``test_<random>`` per test; its DSN. Dropped (FORCE) after.
- ``dest_dsn`` (function): another fresh database, for a destination.
- ``kafka_bootstrap`` (session): ``host:port`` of a ``KafkaBroker``, or of ``WALBRIDGE_TEST_KAFKA``.
- ``topic_prefix`` (function): a unique prefix per test, so tests never see each other's topics.

Services start once per session. ``WALBRIDGE_PG_BINARIES`` picks the PostgreSQL binaries: system, embedded,
a major version (14 ... 18) or a directory (``walbridge.dev.pgbinaries``). Test modules import the helpers as
``from helpers import consume_all, wait_until, ...``.

The ``pg_versions`` marker selects the focused round-trip suite that ``./dev test`` runs on every other tested
PostgreSQL major after the full suite: the modules in ``PG_VERSIONS_SUITE``, plus any test marked by hand.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test modules in subdirectories import `helpers` by name, whatever pytest's import mode and rootdir are.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from helpers import scratch_database
from walbridge.dev.devstack import KafkaBroker, PostgresServer, find_pg_binaries
from walbridge.errors import WalbridgeError


def pytest_configure(config: pytest.Config) -> None:
    # A private base directory per run: pytest's rotation of /tmp/pytest-of-<user>/pytest-N would
    # otherwise delete the data directory of a PostgreSQL that a concurrent run still uses.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="walbridge-tests-")
        config._walbridge_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    made = getattr(config, "_walbridge_basetemp", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)


PG_DSN_ENV = "WALBRIDGE_TEST_PG_DSN"
KAFKA_ENV = "WALBRIDGE_TEST_KAFKA"

# Capture (logical and trigger), catalog and sink against a real server, each pipeline ending in an SQL
# comparison; kept to about a minute per version. Paths relative to tests/.
PG_VERSIONS_SUITE = (
    "capture/test_catalog.py",
    "capture/test_logical.py",
    "capture/test_logical_events.py",
    "capture/test_logical_ops.py",
    "capture/test_trigger.py",
    "capture/test_trigger_pipeline.py",
    "sinks/test_ecommerce_pipeline.py",
    "sinks/test_postgres_sink.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.path.relative_to(here).as_posix() in PG_VERSIONS_SUITE:
            item.add_marker(pytest.mark.pg_versions)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get(PG_DSN_ENV):
        return f"PostgreSQL: the running server of {PG_DSN_ENV}"
    try:
        binaries = find_pg_binaries()
    except WalbridgeError as exc:
        return f"PostgreSQL: {exc}"
    return f"PostgreSQL: {binaries.version()} ({binaries.source}, {binaries.bindir})"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer | None]:
    if os.environ.get(PG_DSN_ENV):
        yield None
        return
    server = PostgresServer(
        tmp_path_factory.mktemp("postgres"), fsync=False, synchronous_commit=False, full_page_writes=False
    )
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: PostgresServer | None) -> str:
    return pg_server.dsn() if pg_server is not None else os.environ[PG_DSN_ENV]


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with scratch_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def dest_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A second fresh database, ``dst_<random>``, for a pipeline's destination. Modules that need
    tables in it override this fixture, asking for it by the same name, and create them."""
    with scratch_database(pg_admin_dsn, "dst") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if bootstrap := os.environ.get(KAFKA_ENV):
        yield bootstrap
        return
    broker = KafkaBroker(Path(tmp_path_factory.mktemp("kafka")))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
