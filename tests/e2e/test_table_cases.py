"""Issue 9's tables end to end, through the CLI a user runs: ``walbridge setup``, ``capture``,
``sink postgres`` (topics of 3 partitions), then the destination compared with the source by SQL,
row for row, and ``walbridge verify`` after each case. Both capture modes wherever the case applies.

Rows written before ``capture`` starts reach the destination through the snapshot, rows written after
through the stream; most cases do both. Destination tables are created from the source's DDL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from e2e_harness import MODES, CliPipeline, both, execute, wait_for
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from helpers import with_dbname
from walbridge.dev.devstack import drop_database

Make = Callable[..., CliPipeline]


# ----------------------------------------------------------- verify itself

PLAIN = "CREATE TABLE plain (id int PRIMARY KEY, name text, amount numeric(12, 2))"


def test_verify_reports_a_planted_difference(make_pipeline: Make, pg_dsn: str, dst_dsn: str) -> None:
    both(pg_dsn, dst_dsn, PLAIN)
    execute(pg_dsn, "INSERT INTO plain SELECT g, 'n' || g, g * 1.5 FROM generate_series(1, 20) g")
    pipe = make_pipeline("logical", ["plain"])
    pipe.start_all()
    execute(pg_dsn, "INSERT INTO plain SELECT g, 'n' || g, g * 1.5 FROM generate_series(21, 30) g")
    pipe.roundtrip()
    pipe.assert_clean_stop()

    execute(dst_dsn, "DELETE FROM plain WHERE id = 7", "UPDATE plain SET name = 'changed' WHERE id = 8")
    code, output = pipe.verify()
    assert code == 1, output
    assert "public.plain" in output
    assert not pipe.compare()[0].equal


# ----------------------------------------------------------- 1. unchanged TOAST values


def toast_table(name: str, identity_full: bool) -> list[str]:
    """Columns stored out of line, uncompressed (``STORAGE EXTERNAL``): every large value is TOASTed."""
    ddl = [
        f"CREATE TABLE {name} (id int PRIMARY KEY, n int, b bytea, ia int[], ta text[], t text, j jsonb)",
        f"ALTER TABLE {name} ALTER b SET STORAGE EXTERNAL, ALTER ia SET STORAGE EXTERNAL, "
        "ALTER ta SET STORAGE EXTERNAL, ALTER t SET STORAGE EXTERNAL, ALTER j SET STORAGE EXTERNAL",
    ]
    if identity_full:
        ddl.append(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
    return ddl


def insert_toasted(name: str, first: int, last: int) -> str:
    """Rows whose bytea, int[], text[], text and jsonb are each ~10 kB (deterministic)."""
    return f"""
        INSERT INTO {name}
        SELECT g, 0,
          (SELECT decode(string_agg(md5(g || ':' || i), ''), 'hex') FROM generate_series(1, 600) i),
          (SELECT array_agg(i * g) FROM generate_series(1, 2500) i),
          (SELECT array_agg(md5(i || ':' || g)) FROM generate_series(1, 300) i),
          (SELECT string_agg(md5(g || '/' || i), '') FROM generate_series(1, 300) i),
          (SELECT jsonb_object_agg('k' || i, md5(i || '-' || g)) FROM generate_series(1, 300) i)
        FROM generate_series({first}, {last}) g"""


@pytest.mark.parametrize("mode", MODES)
def test_unchanged_toasted_columns(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str) -> None:
    tables = ["toast_default", "toast_full"]
    for name in tables:
        both(pg_dsn, dst_dsn, *toast_table(name, identity_full=name == "toast_full"))
        execute(pg_dsn, insert_toasted(name, 1, 3))
    pipe = make_pipeline(mode, tables)
    pipe.start_all()
    for name in tables:
        execute(
            pg_dsn,
            insert_toasted(name, 4, 6),
            f"UPDATE {name} SET n = n + 1",  # touches no TOASTed column
            f"UPDATE {name} SET n = n + 10 WHERE id IN (1, 4)",
            f"UPDATE {name} SET t = t || 'x', n = n + 100 WHERE id = 2",  # one TOASTed column changes
            f"UPDATE {name} SET ia = ia || 7, b = b || '\\x00'::bytea WHERE id = 5",
            f"DELETE FROM {name} WHERE id = 3",
        )
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 2. values at the edge of their type

EDGE_DDL = """
CREATE TABLE edge (
    id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, ts3 timestamp(3),
    num numeric, num_s numeric(20, 4), f8 float8, f4 float4
)"""

EDGE_ROWS = """
INSERT INTO edge VALUES
 (1, 'infinity', 'infinity', 'infinity', 'infinity', 'NaN', 'NaN', 'NaN', 'NaN'),
 (2, '-infinity', '-infinity', '-infinity', '-infinity', 'Infinity', 1.5, 'Infinity', 'Infinity'),
 (3, '0044-03-15 BC', '0044-03-15 12:30:00.123456 BC', '0001-01-01 00:00:00+00 BC',
     '4713-01-01 00:00:00 BC', '-Infinity', -0.0001, '-Infinity', '-Infinity'),
 (4, '10000-01-01', '12345-06-07 08:09:10.5', '20000-01-01 00:00:00.000001+00', '99999-12-31 23:59:59.999',
     '123456789012345678901234567890.123456789', 9999999999999999.9999, '-0', 3.4e38),
 (5, '2024-02-29', '2024-02-29 23:59:59.999999', '1970-01-01 00:00:00+00', '1999-12-31 23:59:59.999',
     0, 0, 1e-300, 1e-30),
 (6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


@pytest.mark.parametrize("decimal_mode", ["precise", "string"])
@pytest.mark.parametrize("mode", MODES)
def test_edge_values(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str, decimal_mode: str) -> None:
    both(pg_dsn, dst_dsn, EDGE_DDL)
    execute(pg_dsn, EDGE_ROWS)
    events = {"decimal_handling_mode": decimal_mode, "schemas_enable": decimal_mode == "precise"}
    pipe = make_pipeline(mode, ["edge"], events=events)
    pipe.start_all()
    execute(
        pg_dsn,
        "INSERT INTO edge SELECT id + 100, d, ts, tstz, ts3, num, num_s, f8, f4 FROM edge",
        "UPDATE edge SET f8 = 'NaN', num = 'NaN', d = 'infinity' WHERE id = 105",
        "UPDATE edge SET tstz = '-infinity', num_s = 'NaN' WHERE id = 104",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 3. partitioned tables

PARTITIONED_DDL = [
    "CREATE TABLE parts (id int PRIMARY KEY, region text, v text) PARTITION BY RANGE (id)",
    "CREATE TABLE parts_a PARTITION OF parts FOR VALUES FROM (0) TO (100)",
    "CREATE TABLE parts_b PARTITION OF parts FOR VALUES FROM (100) TO (200)",
]
PARTITIONED_DESTINATION = "CREATE TABLE parts (id int PRIMARY KEY, region text, v text)"


def insert_parts(ids: range, v: str = "v") -> str:
    rows = f"generate_series({ids.start}, {ids.stop - 1}) g"
    return f"INSERT INTO parts SELECT g, 'r' || (g / 100), '{v}' || g FROM {rows}"


@pytest.mark.parametrize("mode", MODES)
def test_partitioned_table(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str) -> None:
    execute(pg_dsn, *PARTITIONED_DDL, insert_parts(range(1, 6)), insert_parts(range(101, 106)))
    execute(dst_dsn, PARTITIONED_DESTINATION)
    pipe = make_pipeline(mode, ["parts"])
    pipe.start_all()
    execute(
        pg_dsn,
        insert_parts(range(6, 11), "s"),
        insert_parts(range(106, 111), "s"),
        "UPDATE parts SET v = 'updated' WHERE id IN (2, 102)",
        "UPDATE parts SET id = 150 WHERE id = 5",  # moves the row to the other partition
        "DELETE FROM parts WHERE id IN (3, 103)",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


@pytest.mark.parametrize("mode", MODES)
def test_partitions_attached_and_detached_while_capturing(
    make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str
) -> None:
    execute(pg_dsn, *PARTITIONED_DDL, insert_parts(range(1, 6)), insert_parts(range(101, 106)))
    execute(dst_dsn, PARTITIONED_DESTINATION)
    pipe = make_pipeline(mode, ["parts"])
    pipe.start_all()
    pipe.wait_converged()
    execute(
        pg_dsn,
        # a new, empty partition: rows written to it through the root arrive
        "CREATE TABLE parts_c (id int NOT NULL, region text, v text)",
        "ALTER TABLE parts ATTACH PARTITION parts_c FOR VALUES FROM (200) TO (300)",
        insert_parts(range(200, 206), "c"),
        "UPDATE parts SET v = 'moved-to-c', id = 250 WHERE id = 104",
        "DELETE FROM parts WHERE id = 201",
        # a partition emptied, then detached: what is written to it afterwards is not the root's
        "DELETE FROM parts WHERE id >= 100 AND id < 200",
        "ALTER TABLE parts DETACH PARTITION parts_b",
        "INSERT INTO parts_b VALUES (150, 'detached', 'not in parts')",
        insert_parts(range(6, 9), "after"),
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 4. TRUNCATE and partitions


@pytest.mark.parametrize(("mode", "workers"), [("logical", 1), ("logical", 2), ("trigger", 1)])
def test_truncate_interleaved_with_inserts(
    make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str, workers: int
) -> None:
    both(pg_dsn, dst_dsn, "CREATE TABLE trunc (id int PRIMARY KEY, v text)")
    pipe = make_pipeline(mode, ["trunc"])
    pipe.start_all(workers=workers)

    def inserts(first: int, count: int) -> list[tuple[str, tuple[int, str]]]:
        return [("INSERT INTO trunc VALUES (%s, %s)", (i, f"v{i}")) for i in range(first, first + count)]

    execute(pg_dsn, *inserts(1, 300), "TRUNCATE trunc", *inserts(1001, 150))
    pipe.wait_converged()
    execute(
        pg_dsn,
        "TRUNCATE trunc",
        *inserts(2001, 40),
        "TRUNCATE trunc",
        "TRUNCATE trunc",
        *inserts(3001, 25),
        "UPDATE trunc SET v = 'last' WHERE id = 3001",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 5. REPLICA IDENTITY USING INDEX

IDENTITY_INDEX_DDL = [
    "CREATE TABLE idx_t (id int PRIMARY KEY, code text NOT NULL, v text)",
    "CREATE UNIQUE INDEX idx_t_code ON idx_t (code)",
    "ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_code",
]


def identity_index_workload(table: str) -> list[str]:
    return [
        f"INSERT INTO {table} SELECT g, 'c' || g, 'after' FROM generate_series(11, 15) g",
        f"UPDATE {table} SET v = 'changed' WHERE id IN (2, 12)",
        f"UPDATE {table} SET code = 'recoded-3' WHERE id = 3",  # the identity column changes
        f"UPDATE {table} SET code = 'recoded-13', v = 'both' WHERE id = 13",
        f"DELETE FROM {table} WHERE id IN (4, 14)",
        f"DELETE FROM {table} WHERE code = 'recoded-3'",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_replica_identity_using_index(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str) -> None:
    both(pg_dsn, dst_dsn, *IDENTITY_INDEX_DDL)
    execute(pg_dsn, "INSERT INTO idx_t SELECT g, 'c' || g, 'before' FROM generate_series(1, 10) g")
    pipe = make_pipeline(mode, ["idx_t"])
    pipe.start_all()
    execute(pg_dsn, *identity_index_workload("idx_t"))
    pipe.roundtrip()
    pipe.assert_clean_stop()


def test_replica_identity_index_without_primary_key(make_pipeline: Make, pg_dsn: str, dst_dsn: str) -> None:
    """The unique index is the only key: the events' key, the sink's and ``verify``'s."""
    both(
        pg_dsn,
        dst_dsn,
        "CREATE TABLE idx_nopk (id int NOT NULL, code text NOT NULL, v text)",
        "CREATE UNIQUE INDEX idx_nopk_code ON idx_nopk (code)",
        "ALTER TABLE idx_nopk REPLICA IDENTITY USING INDEX idx_nopk_code",
    )
    execute(pg_dsn, "INSERT INTO idx_nopk SELECT g, 'c' || g, 'before' FROM generate_series(1, 10) g")
    pipe = make_pipeline("logical", ["idx_nopk"])
    pipe.start_all()
    execute(pg_dsn, *identity_index_workload("idx_nopk"))
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 6. a row larger than 1 MB

BIG_TEXT = "(SELECT string_agg(md5(i::text || %s), '') FROM generate_series(1, 100000) i)"  # 3.2 MB


@pytest.mark.parametrize("mode", MODES)
def test_row_of_3_mb(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str) -> None:
    both(pg_dsn, dst_dsn, "CREATE TABLE big (id int PRIMARY KEY, n int, t text)")
    execute(pg_dsn, (f"INSERT INTO big VALUES (1, 0, {BIG_TEXT})", ("snapshot",)))
    pipe = make_pipeline(mode, ["big"])
    pipe.start_all()
    execute(
        pg_dsn,
        (f"INSERT INTO big VALUES (2, 0, {BIG_TEXT})", ("stream",)),
        (f"UPDATE big SET t = {BIG_TEXT}, n = 1 WHERE id = 1", ("updated",)),
        "INSERT INTO big VALUES (3, 0, 'small')",
    )
    pipe.roundtrip(timeout_s=45)
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 7. where the snapshot decision lives


@pytest.mark.parametrize("mode", MODES)
def test_setup_and_capture_from_different_directories(
    make_pipeline: Make, pg_dsn: str, dst_dsn: str, tmp_path: Path, mode: str
) -> None:
    """``state_dir`` is the default (relative to the working directory), so the two commands see
    different local state: rows written before capture must still arrive."""
    both(pg_dsn, dst_dsn, "CREATE TABLE snap (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO snap SELECT g, 'before setup' FROM generate_series(1, 40) g")
    pipe = make_pipeline(mode, ["snap"])
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    pipe.start_sink()
    pipe.setup(cwd=host_a)
    execute(pg_dsn, "INSERT INTO snap SELECT g, 'between' FROM generate_series(41, 45) g")
    pipe.start_capture(cwd=host_b)
    execute(pg_dsn, "INSERT INTO snap SELECT g, 'streamed' FROM generate_series(46, 50) g")
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 8. destination-wide errors


ROLE_PASSWORD = "e2e-sink"


@pytest.fixture
def sink_role(pg_admin_dsn: str, dst_dsn: str) -> Iterator[str]:
    """A login role that may create the sink's offsets schema in the destination; its name."""
    role = f"e2e_sink_{uuid.uuid4().hex[:12]}"
    dbname = conninfo_to_dict(dst_dsn)["dbname"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(ROLE_PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(role))
        )
    try:
        yield role
    finally:
        with psycopg.connect(dst_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def assert_stopped_with_one_clear_line(pipe: CliPipeline, *words: str) -> None:
    """The sink stopped (not waiting on the DLQ: the first dead letter fails at once), non-zero, with
    a line naming ``words`` and no traceback, and wrote nothing to the DLQ."""
    wait_for(
        lambda: pipe.exited("sink") is not None or pipe.dead_letters(),
        "the sink stops on a destination-wide error",
        pipe,
    )
    log = pipe.log("sink")
    assert pipe.exited("sink") not in (None, 0), pipe.report()
    assert pipe.dead_letters() == [], pipe.report()
    assert "Traceback" not in log, pipe.report()
    assert any(all(w in line for w in words) for line in log.splitlines()), pipe.report()


ORDERS = "CREATE TABLE orders (id int PRIMARY KEY, v text)"


def test_missing_destination_table_stops_the_sink(make_pipeline: Make, pg_dsn: str, dst_dsn: str) -> None:
    execute(pg_dsn, ORDERS, "INSERT INTO orders SELECT g, 'v' FROM generate_series(1, 10) g")
    pipe = make_pipeline("logical", ["orders"])
    pipe.start_all()
    execute(pg_dsn, "INSERT INTO orders SELECT g, 's' FROM generate_series(11, 20) g")
    assert_stopped_with_one_clear_line(pipe, "orders")

    execute(dst_dsn, ORDERS)  # the operator creates it: nothing was skipped
    pipe.start_sink()
    pipe.roundtrip()
    pipe.assert_clean_stop()


def test_revoked_privilege_stops_the_sink(
    make_pipeline: Make, pg_dsn: str, dst_dsn: str, sink_role: str
) -> None:
    both(pg_dsn, dst_dsn, ORDERS)
    grant = f"GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {sink_role}"
    execute(dst_dsn, grant)
    execute(pg_dsn, "INSERT INTO orders SELECT g, 'v' FROM generate_series(1, 10) g")
    pipe = make_pipeline(
        "logical", ["orders"], sink_dsn=make_conninfo(dst_dsn, user=sink_role, password=ROLE_PASSWORD)
    )
    pipe.start_all()
    pipe.wait_converged()

    execute(dst_dsn, f"REVOKE INSERT, UPDATE, DELETE ON orders FROM {sink_role}")
    execute(
        pg_dsn,
        "INSERT INTO orders SELECT g, 's' FROM generate_series(11, 20) g",
        "DELETE FROM orders WHERE id = 1",
    )
    assert_stopped_with_one_clear_line(pipe, "orders")

    execute(dst_dsn, grant)
    pipe.start_sink()
    pipe.roundtrip()
    pipe.assert_clean_stop()


# ----------------------------------------------------------- 9. generated columns, ALTER TABLE, encodings

GENERATED_DDL = """
CREATE TABLE gen (
    id int PRIMARY KEY, a int, b int,
    total int GENERATED ALWAYS AS (a * b) STORED,
    label text GENERATED ALWAYS AS ('#' || id || ':' || coalesce(a, 0)) STORED
)"""


@pytest.mark.parametrize("mode", MODES)
def test_generated_columns(make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str) -> None:
    both(pg_dsn, dst_dsn, GENERATED_DDL)
    execute(pg_dsn, "INSERT INTO gen (id, a, b) SELECT g, g, 2 FROM generate_series(1, 10) g")
    pipe = make_pipeline(mode, ["gen"])
    pipe.start_all()
    execute(
        pg_dsn,
        "INSERT INTO gen (id, a, b) SELECT g, g, 3 FROM generate_series(11, 20) g",
        "UPDATE gen SET a = a + 100 WHERE id IN (2, 12)",
        "DELETE FROM gen WHERE id IN (3, 13)",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


@pytest.mark.parametrize("mode", MODES)
def test_add_column_mid_stream_with_schemas(
    make_pipeline: Make, pg_dsn: str, dst_dsn: str, mode: str
) -> None:
    """``precise`` decimals are only readable with the ``schema`` block: a stale block loses them."""
    both(pg_dsn, dst_dsn, "CREATE TABLE evolve (id int PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO evolve SELECT g, 'n' || g FROM generate_series(1, 5) g")
    pipe = make_pipeline(
        mode, ["evolve"], events={"schemas_enable": True, "decimal_handling_mode": "precise"}
    )
    pipe.start_all()
    execute(pg_dsn, "INSERT INTO evolve SELECT g, 'n' || g FROM generate_series(6, 10) g")
    pipe.wait_converged()  # the encoder has seen the old shape

    alter = "ALTER TABLE evolve ADD COLUMN price numeric(10, 2), ADD COLUMN note text"
    execute(dst_dsn, alter)
    execute(
        pg_dsn,
        alter,
        "INSERT INTO evolve SELECT g, 'n' || g, g * 1.25, 'new' FROM generate_series(11, 15) g",
        "UPDATE evolve SET price = 99.99, note = 'old row' WHERE id IN (1, 6)",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()


@pytest.fixture
def latin1_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"latin1_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        yield with_dbname(pg_admin_dsn, name)
    finally:
        drop_database(pg_admin_dsn, name)


LATIN1_TEXT = ["Ångström", "façade", "señor Müller", "naïve ½ § ± µ ÿ", "plain ascii"]


@pytest.mark.parametrize("mode", MODES)
def test_latin1_source_database(make_pipeline: Make, latin1_dsn: str, dst_dsn: str, mode: str) -> None:
    ddl = "CREATE TABLE words (id int PRIMARY KEY, w text, wv varchar(40), wa text[], wj jsonb)"
    both(latin1_dsn, dst_dsn, ddl)
    row = "INSERT INTO words VALUES (%s, %s, %s, ARRAY[%s, 'x'], jsonb_build_object('w', %s::text))"
    execute(latin1_dsn, *[(row, (i, w, w, w, w)) for i, w in enumerate(LATIN1_TEXT)])
    pipe = make_pipeline(mode, ["words"], source_dsn=latin1_dsn)
    pipe.start_all()
    execute(
        latin1_dsn,
        *[(row, (100 + i, w, w[::-1], w, w)) for i, w in enumerate(LATIN1_TEXT)],
        "UPDATE words SET w = w || ' é' WHERE id IN (0, 100)",
    )
    pipe.roundtrip()
    pipe.assert_clean_stop()
