"""deploy/Dockerfile builds reproducibly and runs as a numeric non-root user (checked offline: no Docker).

Base images pinned by digest, the build constrained to deploy/constraints.txt (every runtime dependency of
pyproject.toml pinned there, within its lower bound), and a setuptools that accepts ``license`` as an SPDX
expression.
"""

from __future__ import annotations

import re
import tomllib

from deploy_tools import DEPLOY, ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _image_references() -> list[str]:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.MULTILINE))
    refs = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    return [args.get(ref.strip("${}"), ref) for ref in refs if not ref.startswith("build")]


def test_base_images_are_pinned_by_digest() -> None:
    refs = _image_references()
    assert refs
    for ref in refs:
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", ref), f"{ref} is not pinned by digest"


def test_the_image_runs_as_a_numeric_user() -> None:
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] == "10001:10001", users


def test_the_build_uses_the_constraints_file() -> None:
    assert "PIP_CONSTRAINT=/src/deploy/constraints.txt" in DOCKERFILE
    assert "COPY deploy/constraints.txt" in DOCKERFILE
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/constraints.txt" in ignore, "the build context must include the constraints file"


def test_constraints_pin_every_runtime_dependency_within_its_bound() -> None:
    pins = _constraints()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"deploy/constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is not {req}"


def test_constraints_pin_the_build_backend_within_its_bound() -> None:
    pins = _constraints()
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        assert canonicalize_name(req.name) in pins, f"deploy/constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[canonicalize_name(req.name)])


def test_setuptools_bound_accepts_the_license_expression() -> None:
    # `license = "Apache-2.0"` (a PEP 639 SPDX string) needs setuptools 77 or newer.
    assert isinstance(PYPROJECT["project"]["license"], str)
    requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    (setuptools,) = [r for r in requires if r.name == "setuptools"]
    assert not setuptools.specifier.contains("76.1"), setuptools
    assert setuptools.specifier.contains("77.0.3"), setuptools
