"""Which hot path runs: the optional compiled one (``walbridge._accel``, built from ``_accel.c`` on
install where a C compiler is present) or the pure-Python one, which is always there.

Each compiled function has a pure-Python twin of the same name with a ``_py`` suffix, defined next
to its callers; :func:`pick` returns the compiled twin where it was built. The differential tests
hold both to the same results. Set ``WALBRIDGE_PURE_PYTHON=1`` to run on the pure path.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Final, TypeVar, cast

__all__ = ["ACCELERATED", "PURE_PYTHON_ENV", "describe", "pick"]

PURE_PYTHON_ENV: Final = "WALBRIDGE_PURE_PYTHON"

_Function = TypeVar("_Function", bound=Callable[..., object])


def _refused() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def _load() -> ModuleType | None:
    if _refused():
        return None
    try:
        return importlib.import_module("walbridge._accel")
    except ImportError:
        return None


_COMPILED: Final = _load()
ACCELERATED: Final = _COMPILED is not None
"""Whether the compiled hot path is in use."""


def pick(pure: _Function) -> _Function:
    """The compiled twin of ``pure`` (its name without ``_py``) where it is in use, else ``pure``."""
    if _COMPILED is None:
        return pure
    return cast(_Function, getattr(_COMPILED, pure.__name__.removesuffix("_py")))


def describe() -> str:
    """The hot path in use, for ``walbridge --version`` and the benchmarks."""
    if _COMPILED is not None:
        return "compiled"
    if _refused():
        return f"pure Python ({PURE_PYTHON_ENV} is set)"
    return "pure Python (the compiled part was not built)"
