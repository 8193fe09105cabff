"""The sink side of the ``walbridge`` command line, run as a subprocess: dlq list|show|replay, verify,
and the mounted ``sink salesforce`` command."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import yaml
from pg_support import EMPLOYEES_DDL, Pipeline, change, employee, rows

from helpers import run_cli, wait_until
from walbridge.config import PostgresSinkSettings, Settings, SourceSettings
from walbridge.events import KafkaRecord
from walbridge.sinks.dlq import read_dlq

SALARIES = "SELECT emp_id, salary FROM employees ORDER BY emp_id"
WIDE = {"COLUMNS": "250"}  # rich tables: room for every column in a captured stdout


def write_config(path: Path, settings: Settings) -> tuple[str, dict[str, str]]:
    """The settings as a file (DSNs, which hold a password here, through the environment) and its env."""
    doc = settings.model_dump(mode="json")
    env = {**WIDE, "WB_TEST_SOURCE_DSN": doc["source"]["dsn"]}
    doc["source"]["dsn"] = "env:WB_TEST_SOURCE_DSN"
    for i, sink in enumerate(doc["sinks"]):
        env[f"WB_TEST_SINK_DSN_{i}"] = sink["dsn"]
        sink["dsn"] = f"env:WB_TEST_SINK_DSN_{i}"
    path.write_text(yaml.safe_dump(doc))
    return str(path), env


def test_dlq_list_show_replay(pipeline: Pipeline, employees_db: str, tmp_path: Path) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees ADD CONSTRAINT salary_cap CHECK (salary < 100000)")
    pipeline.start()
    pipeline.send_raw(KafkaRecord(pipeline.topic, b'{"emp_id": 7}', b"\x00\xffnot json"))
    pipeline.send(change("c", None, employee(8)), change("c", None, employee(9, salary=500_000)))
    dlq_topic = pipeline.topic + ".dlq"
    wait_until(lambda: len(read_dlq(pipeline.settings, [dlq_topic])) == 2, timeout_s=30)
    wait_until(lambda: rows(employees_db, "SELECT emp_id FROM employees") == [(8,)])
    config, env = write_config(tmp_path / "sink.yaml", pipeline.settings)

    code, out, err = run_cli("dlq", "list", "--config", config, "--topic", dlq_topic, env=env)
    assert code == 0, err
    *lines, total = out.splitlines()
    assert total == "2 dead letter(s) in 1 DLQ topic(s)" and len(lines) == 2, out
    garbage = next(line for line in lines if '{"emp_id": 7}' in line)
    assert garbage.startswith(f"{dlq_topic}[0]@") and f"  {pipeline.topic}[" in garbage
    assert "  postgres  " in garbage and "not JSON" in garbage
    assert any("salary_cap" in line for line in lines)
    code, out, err = run_cli("dlq", "list", "--config", config, "--topic", dlq_topic, "--json", env=env)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert sorted(json.loads(e["original_key"])["emp_id"] for e in listed) == [7, 9]
    assert {e["sink"] for e in listed} == {"postgres"} and all(e["dlq_topic"] == dlq_topic for e in listed)
    code, out, _ = run_cli(
        "dlq", "list", "--config", config, "--topic", dlq_topic, "--where", "error~nomatch", env=env
    )
    assert code == 0 and out.strip() == "0 dead letter(s) in 0 DLQ topic(s)"

    code, out, err = run_cli(
        "dlq", "show", "--config", config, "--topic", dlq_topic, "--where", "key~7", env=env
    )
    assert code == 0, err
    (shown,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert shown["original_topic"] == pipeline.topic
    assert json.loads(shown["original_key"]) == {"emp_id": 7}
    assert "not JSON" in shown["error"]
    assert {"original_value", "partition", "offset", "timestamp"} <= shown.keys()

    code, out, err = run_cli("dlq", "replay", "--help", env=env)
    assert code == 0 and "destination only" in out and "superseded" in out, err
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees DROP CONSTRAINT salary_cap")
    code, out, err = run_cli("dlq", "replay", "--config", config, "--topic", dlq_topic, "--dry-run", env=env)
    assert code == 1 and "dry run: applied 1, superseded 0" in out, (out, err)
    assert rows(employees_db, "SELECT emp_id FROM employees ORDER BY 1") == [(8,)]
    # The sink keeps running; the replay applies row 9 itself; the garbage record fails again (exit 1).
    code, out, err = run_cli("dlq", "replay", "--config", config, "--topic", dlq_topic, env=env)
    assert code == 1, err
    assert "applied 1, superseded 0" in out and "failed 1" in out and "not JSON" in out, out
    assert rows(employees_db, SALARIES) == [(8, 50_000), (9, 500_000)]
    code, out, err = run_cli("dlq", "replay", "--config", config, "--topic", dlq_topic, env=env)
    assert code == 1, err
    assert "applied 0" in out and "failed 1" in out and "already replayed 1" in out, out
    assert rows(employees_db, SALARIES) == [(8, 50_000), (9, 500_000)]


def test_verify_names_missing_extra_and_different_keys(employees_db: str, tmp_path: Path) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute(EMPLOYEES_DDL.replace("public.employees", "src.employees"))
        for emp_id in (1, 2, 3):
            conn.execute("INSERT INTO src.employees (emp_id, salary) VALUES (%s, 10)", (emp_id,))
        conn.execute("INSERT INTO public.employees (emp_id, salary) VALUES (1, 10), (2, 99), (4, 10)")
    settings = Settings(
        source=SourceSettings(dsn=employees_db, tables=["src.employees"]),
        sinks=[
            PostgresSinkSettings(
                dsn=employees_db, topics=["x.src.employees"], table_map={"src.employees": "public.employees"}
            )
        ],
    )
    config, env = write_config(tmp_path / "verify.yaml", settings)

    code, out, err = run_cli("verify", "--config", config, env=env)
    assert code == 1, (out, err)
    assert "src.employees" in out and "public.employees" in out
    assert "missing (3,)" in out and "extra (4,)" in out and "different (2,)" in out
    assert "1 table(s), " in out and "source rows compared: 1 table(s) differ" in out

    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("DELETE FROM public.employees")
        conn.execute("INSERT INTO public.employees SELECT * FROM src.employees")
    code, out, err = run_cli("verify", "--config", config, env=env)
    assert code == 0, (out, err)
    assert "clean" in out and "source rows compared: all agree" in out


def test_sink_salesforce_is_mounted() -> None:
    code, out, _ = run_cli("sink", "--help", env=WIDE)
    assert code == 0 and "postgres" in out and "salesforce" in out
    code, out, _ = run_cli("sink", "salesforce", "--help", env=WIDE)
    assert code == 0 and "--config" in out and "--metrics-port" in out
