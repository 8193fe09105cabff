"""The package's import graph points down only: no module imports from a layer above its own.

The layers, bottom to top (docs/architecture.md draws them). A module may import from any lower layer,
and within its own layer only from its own room: capture, the sinks and the emulator are peers that never
import each other. Imports inside functions count too. A new module must be placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[list[str]] = [
    # foundation: facts with no walbridge dependencies
    [
        "walbridge",
        "walbridge.errors",
        "walbridge.lsn",
        "walbridge.edge_values",
        "walbridge.unavailable",
        "walbridge.urls",
        "walbridge.metrics",
        "walbridge.signals",
        "walbridge.pubsub_api",
        "walbridge.liveness",
        "walbridge.accel",  # picks the compiled hot path (walbridge._accel, built from _accel.c)
    ],
    # the event model, PostgreSQL error mapping, logging
    ["walbridge.events", "walbridge.pgerrors", "walbridge.logs"],
    # settings, and what they define over events
    ["walbridge.config", "walbridge.truncates"],
    # clients and servers every stage uses
    ["walbridge.kafka", "walbridge.web", "walbridge.pgcatalog"],
    ["walbridge.admin"],
    # the stages: peers
    ["walbridge.capture", "walbridge.sinks", "walbridge.emulator"],
    # tools over several stages
    ["walbridge.verify", "walbridge.status"],
    # commands and development tools: one room
    ["commands"],
]


def _is_command(module: str) -> bool:
    return (
        module in ("walbridge.cli", "walbridge.__main__")
        or module.startswith(("walbridge.cli_", "walbridge.dev", "walbridge.soak"))
        or module.endswith(".cli")
    )


def place(module: str) -> tuple[int, str]:
    """(layer, room) of a module: the longest room name it is or lies under."""
    if _is_command(module):
        return len(LAYERS) - 1, "commands"
    found = [
        (len(room), index, room)
        for index, rooms in enumerate(LAYERS)
        for room in rooms
        if module == room or (room != "walbridge" and module.startswith(room + "."))
    ]
    if not found:
        raise AssertionError(f"{module} is in no layer: place it in tests/test_layers.py")
    _, index, room = max(found)
    return index, room


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "walbridge").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "walbridge")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "walbridge":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module: str) -> None:
    layer, room = place(module)
    upward = []
    for imported in sorted(_imports(MODULES[module])):
        other_layer, other_room = place(imported)
        if other_layer > layer or (other_layer == layer and other_room != room):
            upward.append(f"{imported} ({other_room}, layer {other_layer})")
    assert not upward, f"{module} ({room}, layer {layer}) imports upward: {', '.join(upward)}"


def test_runtime_never_imports_dev_tools() -> None:
    runtime = [m for m in MODULES if not _is_command(m)]
    offenders = [m for m in runtime if any(i.startswith("walbridge.dev") for i in _imports(MODULES[m]))]
    assert not offenders
