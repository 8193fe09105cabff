"""walbridge: PostgreSQL change-data-capture through Kafka into the systems that need it."""

__version__ = "0.1.0"

__all__ = ["__version__"]
