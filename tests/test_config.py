"""Settings: file + environment, secrets only from the environment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from walbridge.config import SourceSettings, load_settings
from walbridge.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "walbridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_with_env_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRC_DSN", "postgresql://u:secret@db/x")
    cfg = write(
        tmp_path, "source: {dsn: 'env:SRC_DSN', tables: [inventory.customers]}\nkafka: {partitions: 6}\n"
    )
    settings = load_settings(cfg)
    assert settings.source.dsn == "postgresql://u:secret@db/x"
    assert settings.kafka.partitions == 6
    assert settings.source.tables == ["inventory.customers"]


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, "kafka: {bootstrap_servers: 'a:9092', partitions: 6}\n")
    monkeypatch.setenv("WALBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "b:9092")
    settings = load_settings(cfg)
    assert settings.kafka.bootstrap_servers == "b:9092"
    assert settings.kafka.partitions == 6


def test_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[events]\ntopic_prefix = "shop"\nunwrap = true\n', "walbridge.toml")
    assert load_settings(cfg).events.encoding_options().unwrap


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("source: {dsn: 'postgresql://u:hunter2@db/x'}", "source.dsn: the DSN holds a password"),
        ("source: {dsn: 'host=db password=hunter2'}", "source.dsn: the DSN holds a password"),
        ("source: {dsn: 'postgresql://u@db/x?password=hunter2'}", "source.dsn: the DSN holds a password"),
        (
            "sinks: [{type: postgres, dsn: 'postgresql://db/x?sslmode=require&password=hunter2'}]",
            "sinks[0].dsn: the DSN holds a password",
        ),
        ("sinks: [{type: salesforce, client_secret: abc}]", "sinks[0].client_secret: secrets must come"),
        ("source: {dsn: 'env:NOPE_NOT_SET'}", "environment variable NOPE_NOT_SET is not set"),
        ("source: {snapshot: sometimes}", "source.snapshot"),
        ("kafka: {partitions: many}", "kafka.partitions"),
        ("sourec: {}", "sourec"),
        ("source: [1, 2", "not valid"),
    ],
)
def test_clear_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert needle in str(info.value)
    assert "hunter2" not in str(info.value)


def test_debezium_unwrap_spelling() -> None:
    settings = load_settings(events={"delete_tombstone_handling_mode": "rewrite-with-tombstone"})
    opts = settings.events.encoding_options()
    assert opts.unwrap and opts.tombstones_on_delete
    assert (
        not load_settings(events={"delete_tombstone_handling_mode": "rewrite"})
        .events.encoding_options()
        .tombstones_on_delete
    )


CAPTURE_AND_SINK = """
source: {dsn: 'env:CFG_TEST_SOURCE_DSN', tables: [public.t]}
sinks:
  - {type: postgres, dsn: 'env:CFG_TEST_DEST_DSN', topics: [x.public.t]}
  - {type: salesforce, client_id: id, client_secret: 'env:CFG_TEST_SF_SECRET', topics: [x.public.t]}
"""


def test_a_command_needs_only_the_variables_of_the_sections_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path, CAPTURE_AND_SINK)
    monkeypatch.setenv("CFG_TEST_SOURCE_DSN", "postgresql://capture@src/db")
    capture = load_settings(cfg, uses=("source", "events", "kafka", "metrics"))
    assert capture.source.dsn == "postgresql://capture@src/db"
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.dsn: environment variable CFG_TEST_DEST_DSN"):
        load_settings(cfg, uses=("kafka", "sinks.postgres"))
    monkeypatch.setenv("CFG_TEST_DEST_DSN", "postgresql://sink@dst/db")
    sink = load_settings(cfg, uses=("kafka", "sinks.postgres"))
    assert sink.sink("postgres").dsn == "postgresql://sink@dst/db"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="CFG_TEST_SF_SECRET is not set"):
        load_settings(cfg)  # every section


def test_excluded_columns_are_read_per_table() -> None:
    """One parser of ``source.exclude_columns`` serves both capture modes and the trigger installer."""
    source = SourceSettings(exclude_columns=["public.accounts.secret", "public.accounts_x.pin", "a.b.c"])
    assert source.excluded_columns("public", "accounts") == ["secret"]
    assert source.excluded_columns("a", "b") == ["c"]
    assert source.excluded_columns("public", "account") == []


def test_secrets_never_show_in_repr_or_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """client_secret, private_key and Kafka's passwords are SecretStr; DSNs stay out of repr."""
    monkeypatch.setenv("SF_SECRET", "s3cret-client-value")
    monkeypatch.setenv("SASL_PW", "s3cret-sasl-value")
    monkeypatch.setenv("DEST_DSN", "postgresql://u:s3cret-dsn-value@db/x")
    path = tmp_path / "w.yaml"
    body = """
kafka: {options: {sasl.password: env:SASL_PW, security.protocol: SASL_SSL}}
sinks:
  - {type: salesforce, client_id: app, client_secret: env:SF_SECRET, topics: [t]}
  - {type: postgres, dsn: env:DEST_DSN, topics: [t]}
"""
    path.write_text(body)
    settings = load_settings(path)
    shown = repr(settings) + str(settings)
    assert "s3cret" not in shown
    sf = settings.sink("salesforce")
    assert sf.client_secret is not None and sf.client_secret.get_secret_value() == "s3cret-client-value"
    assert settings.kafka.client_options()["sasl.password"] == "s3cret-sasl-value"
    path.write_text(body + "dlq: {max_attempts: many}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "max_attempts" in err.value.message and "s3cret" not in err.value.message
