"""The compose files read as docker compose reads them: ``${VAR}`` interpolation and the overlay merge."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from deploy_tools import DEPLOY, load_yaml

BASE = DEPLOY / "docker-compose.yml"
TLS = DEPLOY / "docker-compose.tls.yml"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def example_env() -> dict[str, str]:
    """The variables of deploy/.env.example (the commented-out ones too)."""
    env = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z0-9_]+)=(.*)$", line)
        if match and match.group(1) not in env:
            env[match.group(1)] = match.group(2)
    return env


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        if name in env and (env[name] or not op or not op.startswith(":")):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return _VAR.sub(one, value)


@cache
def _services(path: Path) -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(path)["services"]
    return services


def merged_service(name: str, env: dict[str, str], *files: Path) -> dict[str, Any]:
    """Service ``name`` of ``files`` merged in order (mappings merge, ``secrets`` append, scalars replace)."""
    merged: dict[str, Any] = {}
    for path in files:
        service = _services(path).get(name, {})
        for key, value in service.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif key == "secrets" and isinstance(merged.get(key), list):
                merged[key] = merged[key] + value
            else:
                merged[key] = value
    merged["environment"] = {k: interpolate(str(v), env) for k, v in merged.get("environment", {}).items()}
    return merged


def secret_targets(service: dict[str, Any]) -> set[str]:
    """The file names under /run/secrets of a service."""
    return {s if isinstance(s, str) else s.get("target", s["source"]) for s in service.get("secrets", [])}
