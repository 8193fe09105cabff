"""Fixtures of the PostgreSQL sink tests (helpers live in ``pg_support``)."""

from pg_support import employees_db, pipeline

__all__ = ["employees_db", "pipeline"]
