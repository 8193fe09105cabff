"""Change capture from PostgreSQL: protocol decoding, value conversion, catalog lookups, capture modes."""
