"""Log sequence numbers as a value type: parse and format ``X/Y``, order, add."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lsn"]


@dataclass(frozen=True, slots=True, order=True)
class Lsn:
    """A PostgreSQL WAL position (64-bit unsigned)."""

    value: int

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``16/B374D848`` form."""
        try:
            high, low = text.strip().split("/")
            return cls((int(high, 16) << 32) | int(low, 16))
        except ValueError:
            raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)") from None

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __int__(self) -> int:
        return self.value

    def __add__(self, other: int) -> Lsn:
        return Lsn(self.value + other)

    def __sub__(self, other: Lsn) -> int:
        return self.value - other.value

    def __bool__(self) -> bool:
        return self.value != 0


Lsn.ZERO = Lsn(0)  # type: ignore[attr-defined]
