"""Which source table lands in which destination table of a PostgreSQL sink (for verify and setup)."""

from __future__ import annotations

from walbridge.config import PostgresSinkSettings, Settings
from walbridge.errors import ConfigError
from walbridge.events import split_topic

__all__ = ["table_pairs"]


def table_pairs(
    settings: Settings, sink: PostgresSinkSettings, tables: list[str] | None, needed_by: str
) -> list[tuple[str, str]]:
    """``(source schema.table, destination schema.table)``: ``tables``, else ``source.tables``, else
    the sink's topics, mapped through ``table_map``. Wildcards are refused (``needed_by`` says who)."""
    names = list(tables or settings.source.tables)
    if not names:
        names = [".".join(split_topic(t)) for t in sink.topics]
    if not names or any("*" in n for n in names):
        raise ConfigError(
            f"{needed_by} needs explicit tables: --table schema.table or source.tables without wildcards"
        )
    qualified = [n if "." in n else f"public.{n}" for n in names]
    return [(n, sink.table_map.get(n, n)) for n in qualified]
