"""Install, check and remove trigger-mode capture objects (this module does I/O).

Everything lives in the ``walbridge`` schema of the source database:

- ``walbridge.change_log``: one row per changed row (``op`` ``c``/``u``/``d``) or truncated table
  (``t``): the writing transaction's id (``txid``, xid8), the table, ``before``/``after`` as jsonb
  objects of column name → PostgreSQL **text output** (so values convert exactly as in logical mode),
  the transaction's start time and the change's wall-clock time.
- ``walbridge.capture_change()``: the one trigger function. ``SECURITY DEFINER`` (writers need no
  privilege on the log), pinned ``search_path`` and the text-format settings capture expects
  (``values.SESSION_SETTINGS``). Columns named in ``source.exclude_columns`` are passed as trigger
  arguments and never reach the log. It builds the jsonb with the ``hstore`` extension (C, exact
  type output, trusted since PostgreSQL 13), installed into ``walbridge`` unless already present.
- Per table, the statement trigger ``walbridge_capture_insert`` (AFTER INSERT, with a transition
  table: one ``INSERT … SELECT`` into the log per statement instead of one per row, which cut its cost
  on bulk inserts several times), the row trigger ``walbridge_capture`` (AFTER UPDATE OR DELETE) and
  the statement trigger ``walbridge_capture_truncate`` (AFTER TRUNCATE). Deletes stay row-level: a
  DELETE on a table with inheritance children also deletes the children's rows, and a statement
  trigger's transition table would hold those too, with nothing saying which table each came from.
  A partitioned table keeps one row trigger for all three (AFTER INSERT/UPDATE/DELETE): row triggers
  are cloned onto every partition, statement triggers of the parent do not fire for writes into a
  partition.
- ``walbridge.capture_offset``: the confirmed position of each capture (see ``trigger.py``).

:func:`install_trigger_capture` is idempotent and needs only ordinary privileges: CREATE on the
database (schema, trusted extension) and ownership or TRIGGER on each table. :func:`check_trigger_capture`
names what is missing first. A table without a primary key is accepted: its events have a null key
(as in Debezium), so sinks that upsert by key cannot apply them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from walbridge.capture.catalog import Problem, RelationInfo, resolve_tables
from walbridge.capture.values import SESSION_SETTINGS
from walbridge.config import Settings
from walbridge.errors import ConfigError
from walbridge.pgerrors import map_pg_error

__all__ = [
    "CHANGE_LOG",
    "OFFSET_TABLE",
    "SCHEMA",
    "capture_relations",
    "check_trigger_capture",
    "drop_schema_if_unused",
    "install_trigger_capture",
    "installed_tables",
    "uninstall_trigger_capture",
]

log = logging.getLogger(__name__)

SCHEMA = "walbridge"
CHANGE_LOG = "change_log"
OFFSET_TABLE = "capture_offset"
FUNCTION = "capture_change"
ROW_TRIGGER = "walbridge_capture"
INSERT_TRIGGER = "walbridge_capture_insert"
TRUNCATE_TRIGGER = "walbridge_capture_truncate"
_TRIGGERS = (ROW_TRIGGER, INSERT_TRIGGER, TRUNCATE_TRIGGER)
NEW_ROWS = "walbridge_new_rows"
"""Transition table names of the statement triggers."""
_MIN_SERVER = 130000  # xid8, pg_current_snapshot(), pg_visible_in_snapshot()

_TABLES_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.{CHANGE_LOG} (
    id            bigserial PRIMARY KEY,
    txid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    op            text NOT NULL,
    before        jsonb,
    after         jsonb,
    tx_started_at timestamptz NOT NULL DEFAULT now(),
    changed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS {CHANGE_LOG}_txid ON {SCHEMA}.{CHANGE_LOG} (txid);
CREATE TABLE IF NOT EXISTS {SCHEMA}.{OFFSET_TABLE} (
    name       text PRIMARY KEY,
    lo         pg_snapshot NOT NULL,
    hi         pg_snapshot,
    after_id   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

# {h} is the hstore extension's schema. Only the TG_ARGV "minus" is conditional: most tables exclude nothing.
ROOT_MARK = "walbridge:partitioned-root"
"""First trigger argument on a partitioned table: the next two name it. Its row trigger is cloned onto
every partition (present and future), and a change is logged under the partitioned table's name."""

# {h} is the hstore extension's schema; the trigger arguments are the excluded columns, after the
# partitioned table's name when there is one. Most tables have no argument: that path tests one NULL.
# A transition table's row is ``n.*`` / ``o.*``: a bare ``n`` would be a column of that name, if any; and
# the variables win over the columns of a transition table named like them (variable_conflict).
_FUNCTION_BODY = """
#variable_conflict use_variable
DECLARE
    image jsonb;
    rel_schema text := TG_TABLE_SCHEMA;
    rel_name text := TG_TABLE_NAME;
    excluded text[];
BEGIN
    IF TG_NARGS > 0 THEN
        excluded := TG_ARGV;
        IF TG_ARGV[0] = '{mark}' THEN
            rel_schema := TG_ARGV[1];
            rel_name := TG_ARGV[2];
            excluded := CASE WHEN TG_NARGS > 3 THEN TG_ARGV[3:] END;
        END IF;
    END IF;
    IF TG_LEVEL = 'STATEMENT' THEN
        IF TG_OP = 'INSERT' THEN
            IF excluded IS NULL THEN
                INSERT INTO {s}.{log} (schema_name, table_name, op, after)
                SELECT rel_schema, rel_name, 'c', {h}.hstore_to_jsonb({h}.hstore(n.*)) FROM {new} n;
            ELSE
                INSERT INTO {s}.{log} (schema_name, table_name, op, after)
                SELECT rel_schema, rel_name, 'c',
                       {h}.hstore_to_jsonb({h}.hstore(n.*) OPERATOR({h}.-) excluded)
                FROM {new} n;
            END IF;
        ELSE
            INSERT INTO {s}.{log} (schema_name, table_name, op) VALUES (rel_schema, rel_name, 't');
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF excluded IS NULL THEN
            image := {h}.hstore_to_jsonb({h}.hstore(NEW));
        ELSE
            image := {h}.hstore_to_jsonb({h}.hstore(NEW) OPERATOR({h}.-) excluded);
        END IF;
        INSERT INTO {s}.{log} (schema_name, table_name, op, after)
        VALUES (rel_schema, rel_name, 'c', image);
    ELSIF TG_OP = 'UPDATE' THEN
        IF excluded IS NULL THEN
            INSERT INTO {s}.{log} (schema_name, table_name, op, before, after)
            VALUES (rel_schema, rel_name, 'u',
                    {h}.hstore_to_jsonb({h}.hstore(OLD)), {h}.hstore_to_jsonb({h}.hstore(NEW)));
        ELSE
            INSERT INTO {s}.{log} (schema_name, table_name, op, before, after)
            VALUES (rel_schema, rel_name, 'u',
                    {h}.hstore_to_jsonb({h}.hstore(OLD) OPERATOR({h}.-) excluded),
                    {h}.hstore_to_jsonb({h}.hstore(NEW) OPERATOR({h}.-) excluded));
        END IF;
    ELSE
        IF excluded IS NULL THEN
            image := {h}.hstore_to_jsonb({h}.hstore(OLD));
        ELSE
            image := {h}.hstore_to_jsonb({h}.hstore(OLD) OPERATOR({h}.-) excluded);
        END IF;
        INSERT INTO {s}.{log} (schema_name, table_name, op, before)
        VALUES (rel_schema, rel_name, 'd', image);
    END IF;
    RETURN NULL;
END
"""


def _function_ddl(hstore_schema: str) -> str:
    ident = _quote_ident
    body = _FUNCTION_BODY.format(
        s=SCHEMA, log=CHANGE_LOG, h=ident(hstore_schema), mark=ROOT_MARK, new=NEW_ROWS
    )
    settings = "".join(f"\n    SET {name} = '{value}'" for name, value in SESSION_SETTINGS.items())
    return (
        f"CREATE OR REPLACE FUNCTION {SCHEMA}.{FUNCTION}() RETURNS trigger\n"
        f"    LANGUAGE plpgsql SECURITY DEFINER\n"
        f"    SET search_path = pg_catalog, pg_temp{settings}\n"
        f"AS $walbridge$\n{body}$walbridge$"
    )


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- tables


def capture_relations(conn: psycopg.Connection[Any], settings: Settings) -> list[RelationInfo]:
    """The configured tables (never walbridge's own); ConfigError naming any that do not exist."""
    source = settings.source
    include = source.tables or ["*.*"]
    exclude = [*source.exclude_tables, f"{SCHEMA}.*"]
    relations = resolve_tables(conn, include, exclude)
    found = {rel.qualified_name for rel in relations}
    missing = [name for name in include if not _is_pattern(name) and _qualified(name) not in found]
    if missing:
        raise ConfigError(
            f"source table(s) {', '.join(missing)} do not exist in database {conn.info.dbname} "
            "(or are not ordinary tables): create them or fix source.tables"
        )
    if not relations:
        raise ConfigError(f"source.tables {include} match no table in database {conn.info.dbname}")
    return relations


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _qualified(name: str) -> str:
    return name if "." in name else f"public.{name}"


def _excluded_columns(settings: Settings, rel: RelationInfo) -> list[str]:
    """Excluded columns of ``rel``; key columns are never excluded (events need their key)."""
    names = settings.source.excluded_columns(rel.schema, rel.table)
    return [name for name in names if name not in rel.key_columns]


def installed_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool]]:
    """(schema, table, all its capture triggers enabled) for every table with walbridge triggers.

    All: the truncate trigger and row trigger, plus the insert statement trigger on a table that is
    not partitioned.
    """
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname,
               count(*) FILTER (WHERE t.tgenabled <> 'D') = CASE WHEN c.relkind = 'p' THEN 2 ELSE 3 END
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.tgname = ANY(%s) AND NOT t.tgisinternal AND t.tgparentid = 0
        GROUP BY n.nspname, c.relname, c.relkind ORDER BY 1, 2
        """,
        (list(_TRIGGERS),),
    ).fetchall()
    return [(str(schema), str(table), bool(ok)) for schema, table, ok in rows]


# ----------------------------------------------------------------------------- checks


def _hstore_state(conn: psycopg.Connection[Any]) -> tuple[str | None, bool]:
    """(schema where hstore is installed or None, whether the server offers it at all)."""
    row = conn.execute(
        """
        SELECT (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'hstore'),
               EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'hstore')
        """
    ).fetchone()
    assert row is not None
    return row[0], bool(row[1])


def _database_problems(conn: psycopg.Connection[Any]) -> list[Problem]:
    problems: list[Problem] = []
    if conn.info.server_version < _MIN_SERVER:
        problems.append(
            Problem(
                "PostgreSQL version",
                str(conn.info.server_version),
                "trigger mode needs PostgreSQL 13 or newer",
            )
        )
        return problems
    row = conn.execute(
        """
        SELECT rolsuper, has_database_privilege(current_database(), 'CREATE'),
               (SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace WHERE nspname = %s)
        FROM pg_roles WHERE rolname = current_user
        """,
        (SCHEMA,),
    ).fetchone()
    superuser, can_create, owns_schema = row if row else (False, False, None)
    db = _quote_ident(conn.info.dbname)
    if not (superuser or can_create) and not owns_schema:
        problems.append(
            Problem(
                f"CREATE privilege on database {conn.info.dbname}",
                "missing",
                f"GRANT CREATE ON DATABASE {db} TO <capture role> (needed for the {SCHEMA} schema)",
            )
        )
    hstore_schema, available = _hstore_state(conn)
    if hstore_schema is None and not available:
        problems.append(
            Problem("extension hstore", "not available", "install PostgreSQL's contrib package on the server")
        )
    elif hstore_schema is None and not (superuser or can_create):
        problems.append(
            Problem(
                "extension hstore",
                "not installed",
                f"CREATE EXTENSION hstore (or GRANT CREATE ON DATABASE {db} TO <capture role>)",
            )
        )
    return problems


def _table_problems(conn: psycopg.Connection[Any], relations: Iterable[RelationInfo]) -> list[Problem]:
    problems: list[Problem] = []
    for rel in relations:
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'TRIGGER'), has_table_privilege(%s, 'SELECT')", (rel.oid, rel.oid)
        ).fetchone()
        trigger_ok, select_ok = row if row else (False, False)
        target = f"{_quote_ident(rel.schema)}.{_quote_ident(rel.table)}"
        if not trigger_ok:
            problems.append(
                Problem(
                    f"TRIGGER privilege on {rel.qualified_name}",
                    "missing",
                    f"GRANT TRIGGER ON {target} TO <capture role> (or run setup as the table's owner)",
                )
            )
        if not select_ok:
            problems.append(
                Problem(
                    f"SELECT privilege on {rel.qualified_name}",
                    "missing",
                    f"GRANT SELECT ON {target} TO <capture role> (the initial snapshot reads it)",
                )
            )
    return problems


def _installation_problems(conn: psycopg.Connection[Any], relations: Iterable[RelationInfo]) -> list[Problem]:
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regprocedure(%s) IS NOT NULL",
        (f"{SCHEMA}.{CHANGE_LOG}", f"{SCHEMA}.{FUNCTION}()"),
    ).fetchone()
    if not exists or not all(exists):
        return [Problem("trigger capture", "not installed", "run `walbridge setup --mode trigger`")]
    state = {(schema, table): ok for schema, table, ok in installed_tables(conn)}
    problems = []
    for rel in relations:
        ok = state.get((rel.schema, rel.table))
        if not ok:
            found = "missing" if ok is None else "disabled or incomplete"
            problems.append(
                Problem(
                    f"walbridge triggers on {rel.qualified_name}",
                    found,
                    "run `walbridge setup --mode trigger`",
                )
            )
    return problems


def check_trigger_capture(
    conn: psycopg.Connection[Any], settings: Settings, *, installed: bool = False
) -> list[Problem]:
    """What keeps trigger capture of the configured tables from being set up (or, with
    ``installed=True``, from running: schema objects and triggers in place). Empty when ready.

    Raises ConfigError for configured tables that do not exist.
    """
    try:
        problems = _database_problems(conn)
        if problems and conn.info.server_version < _MIN_SERVER:
            return problems
        relations = capture_relations(conn, settings)
        problems += _table_problems(conn, relations)
        if installed:
            problems += _installation_problems(conn, relations)
    except psycopg.Error as exc:
        raise map_pg_error(exc, "checking trigger capture") from exc
    return problems


# ----------------------------------------------------------------------------- install / uninstall


def install_trigger_capture(conn: psycopg.Connection[Any], settings: Settings) -> list[str]:
    """Create (or complete) trigger capture for the configured tables in one transaction.

    Returns what was done, one line per step. Raises ConfigError listing every missing
    privilege or table before changing anything.
    """
    problems = check_trigger_capture(conn, settings)
    if problems:
        raise ConfigError("trigger capture cannot be set up: " + "; ".join(str(p) for p in problems))
    done: list[str] = []
    try:
        with conn.transaction():
            relations = capture_relations(conn, settings)
            done += _install_schema(conn)
            for rel in relations:
                done += _install_triggers(conn, rel, _excluded_columns(settings, rel))
                if not rel.key_columns:
                    log.warning("%s has no primary key: its events will have a null key", rel.qualified_name)
                    done.append(f"warning: {rel.qualified_name} has no primary key (events get a null key)")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(f"trigger capture setup was refused: {exc.diag.message_primary}") from exc
    except psycopg.Error as exc:
        raise map_pg_error(exc, "installing trigger capture") from exc
    return done


def _install_schema(conn: psycopg.Connection[Any]) -> list[str]:
    done = []
    if conn.execute("SELECT to_regnamespace(%s) IS NULL", (SCHEMA,)).fetchone() == (True,):
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        done.append(f"created schema {SCHEMA}")
    hstore_schema, _ = _hstore_state(conn)
    if hstore_schema is None:
        conn.execute(f"CREATE EXTENSION hstore SCHEMA {SCHEMA}")
        hstore_schema = SCHEMA
        done.append(f"installed extension hstore in schema {SCHEMA}")
    if conn.execute("SELECT to_regclass(%s) IS NULL", (f"{SCHEMA}.{CHANGE_LOG}",)).fetchone() == (True,):
        done.append(f"created {SCHEMA}.{CHANGE_LOG} and {SCHEMA}.{OFFSET_TABLE}")
    conn.execute(_TABLES_DDL)
    conn.execute(_function_ddl(hstore_schema))
    # Offsets and the log are private to the capture role; writers go through the SECURITY DEFINER function.
    conn.execute(f"REVOKE ALL ON {SCHEMA}.{CHANGE_LOG}, {SCHEMA}.{OFFSET_TABLE} FROM PUBLIC")
    return done


def _trigger_args(conn: psycopg.Connection[Any], rel: RelationInfo) -> dict[str, tuple[list[str], int]]:
    """Name → (arguments, ``tgtype``: the events and level it fires for) of the table's capture triggers."""
    rows = conn.execute(
        "SELECT tgname, tgargs, tgnargs, tgtype FROM pg_trigger WHERE tgrelid = %s AND tgname = ANY(%s)",
        (rel.oid, list(_TRIGGERS)),
    ).fetchall()
    return {str(name): (_split_tgargs(bytes(args), nargs), int(tgtype)) for name, args, nargs, tgtype in rows}


def _split_tgargs(raw: bytes, nargs: int) -> list[str]:
    return [part.decode() for part in raw.split(b"\x00")[:nargs]]


# pg_trigger.tgtype bits (PostgreSQL's trigger.h).
_TGTYPE_ROW, _TGTYPE_INSERT, _TGTYPE_DELETE, _TGTYPE_UPDATE = 1, 4, 8, 16


def _wanted_triggers(rel: RelationInfo, table: sql.Composable) -> dict[str, tuple[int, sql.Composable]]:
    """Name → (``tgtype``, its CREATE TRIGGER clause up to EXECUTE) of each row-change trigger."""
    if rel.partitioned:
        events = _TGTYPE_ROW | _TGTYPE_INSERT | _TGTYPE_UPDATE | _TGTYPE_DELETE
        return {
            ROW_TRIGGER: (
                events,
                sql.SQL("AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW").format(table),
            )
        }
    return {
        ROW_TRIGGER: (
            _TGTYPE_ROW | _TGTYPE_UPDATE | _TGTYPE_DELETE,
            sql.SQL("AFTER UPDATE OR DELETE ON {} FOR EACH ROW").format(table),
        ),
        INSERT_TRIGGER: (
            _TGTYPE_INSERT,
            sql.SQL("AFTER INSERT ON {} REFERENCING NEW TABLE AS {} FOR EACH STATEMENT").format(
                table, sql.Identifier(NEW_ROWS)
            ),
        ),
    }


def _install_triggers(conn: psycopg.Connection[Any], rel: RelationInfo, excluded: list[str]) -> list[str]:
    existing = _trigger_args(conn, rel)
    table = sql.Identifier(rel.schema, rel.table)
    function = sql.Identifier(SCHEMA, FUNCTION)
    done = []
    wanted = [ROOT_MARK, rel.schema, rel.table, *excluded] if rel.partitioned else excluded
    args = sql.SQL(", ").join(sql.Literal(name) for name in wanted)
    triggers = _wanted_triggers(rel, table)
    for name in (INSERT_TRIGGER,):
        if name in existing and name not in triggers:  # the table became partitioned
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), table))
    for name, (tgtype, clause) in triggers.items():
        if existing.get(name) == (wanted, tgtype):
            continue
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table))
        conn.execute(
            sql.SQL("CREATE TRIGGER {} {} EXECUTE FUNCTION {}({})").format(
                sql.Identifier(name), clause, function, args
            )
        )
        done.append(f"created trigger {name} on {rel.qualified_name}")
    if TRUNCATE_TRIGGER not in existing:
        conn.execute(
            sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                sql.Identifier(TRUNCATE_TRIGGER), table, function
            )
        )
        done.append(f"created truncate trigger on {rel.qualified_name}")
    return done


def uninstall_trigger_capture(conn: psycopg.Connection[Any], settings: Settings | None = None) -> list[str]:
    """Drop the triggers on every table that has them, the change log, the offsets and the function.

    The ``walbridge`` schema itself is dropped only when nothing else is left in it (other walbridge
    parts may keep tables there); hstore goes with it only when it was installed there.
    """
    done: list[str] = []
    try:
        with conn.transaction():
            for schema, table, _ok in installed_tables(conn):
                target = sql.Identifier(schema, table)
                for name in _TRIGGERS:
                    conn.execute(
                        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), target)
                    )
                done.append(f"dropped triggers on {schema}.{table}")
            if conn.execute("SELECT to_regnamespace(%s) IS NULL", (SCHEMA,)).fetchone() == (True,):
                return done
            conn.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{CHANGE_LOG}, {SCHEMA}.{OFFSET_TABLE}")
            conn.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.{FUNCTION}()")
            done.append(f"dropped {SCHEMA}.{CHANGE_LOG}, {SCHEMA}.{OFFSET_TABLE} and {SCHEMA}.{FUNCTION}()")
            done += drop_schema_if_unused(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(f"trigger capture teardown was refused: {exc.diag.message_primary}") from exc
    except psycopg.Error as exc:
        raise map_pg_error(exc, "removing trigger capture") from exc
    return done


def drop_schema_if_unused(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the ``walbridge`` schema (and hstore installed there) when nothing else is left in it."""
    hstore_schema, _ = _hstore_state(conn)
    others = conn.execute(
        """
        SELECT count(*) FROM pg_depend d
        WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = to_regnamespace(%s)
          AND d.deptype = 'n' AND d.classid <> 'pg_extension'::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid
                          AND e.deptype = 'e')
        """,
        (SCHEMA,),
    ).fetchone()
    if others and others[0]:
        return [f"kept schema {SCHEMA}: it holds other objects"]
    if hstore_schema == SCHEMA:
        conn.execute("DROP EXTENSION hstore")
    conn.execute(f"DROP SCHEMA {SCHEMA}")
    return [f"dropped schema {SCHEMA}"]
