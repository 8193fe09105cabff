"""docs/architecture.md stays true: every ``file::function`` it names exists, every package it draws is in
the README's layout line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
REFERENCE = re.compile(r"`(walbridge/[\w/]+\.py)::([\w.]+)`")


def _defines(tree: ast.AST, qualname: str) -> bool:
    scope: list[ast.stmt] = list(getattr(tree, "body", []))
    for part in qualname.split("."):
        found = [
            node
            for node in scope
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == part
        ]
        if not found:
            return False
        scope = found[0].body
    return True


def test_every_named_function_exists() -> None:
    references = REFERENCE.findall(DOC)
    assert len(references) > 30
    missing = []
    for path, qualname in sorted(set(references)):
        source = ROOT / "src" / path
        if not source.is_file() or not _defines(ast.parse(source.read_text()), qualname):
            missing.append(f"{path}::{qualname}")
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_readme_layout_names_the_packages() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n- Layout", 1)[1].split("\n- ", 1)[0].split("\n\n", 1)[0]
    packages = sorted(p.name for p in (ROOT / "src" / "walbridge").iterdir() if (p / "__init__.py").is_file())
    assert "capture" in packages and "dev" in packages
    for name in packages:
        assert f"{name}/" in layout, name
    assert "docs/architecture.md" in layout
