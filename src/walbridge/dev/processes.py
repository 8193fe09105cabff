"""Child processes of the dev stack: start as another user, stop reliably, reap, never leak.

Processes run in their own session so that Ctrl-C reaches only the Python process, which then
stops them in order; a reaper stops whatever is still running at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "ManagedProcess",
    "as_user",
    "child_pids",
    "free_port",
    "is_zombie",
    "log_tail",
    "pid_alive",
    "reaper",
    "send_signal",
    "wait_dead",
]

log = logging.getLogger("walbridge.dev.devstack")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (an unreaped dead process holds no resources)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_dead(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Reaper:
    """Stops every service still registered when the interpreter exits."""

    def __init__(self) -> None:
        self._services: dict[int, Callable[[], None]] = {}
        atexit.register(self.stop_all)

    def add(self, owner: object, stop: Callable[[], None]) -> None:
        self._services[id(owner)] = stop

    def discard(self, owner: object) -> None:
        self._services.pop(id(owner), None)

    def stop_all(self) -> None:
        for stop in list(self._services.values()):
            with contextlib.suppress(Exception):
                stop()
        self._services.clear()


reaper = Reaper()


class ManagedProcess:
    """One long-running child process: spawn, signal, reap. Also attaches to a pid from an earlier run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def spawn(self, argv: list[str], log_path: Path, *, user: pwd.struct_passwd | None, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LISTENER_", "ADVERTISED_"))}
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        with open(log_path, "ab") as out:
            # A new session: Ctrl-C in a terminal reaches us only, and we shut services down in order.
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                **as_user(user),
            )
        self.pid = self.popen.pid

    def attach(self, pid: int) -> None:
        self.popen, self.pid = None, pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def terminate(self, sig: signal.Signals, timeout_s: float) -> bool:
        """Send ``sig``, wait up to ``timeout_s``, SIGKILL if still alive. True if it stopped in time."""
        if self.pid is None or not self.alive():
            self.forget()
            return True
        send_signal(self.pid, sig)
        graceful = self._wait(timeout_s)
        if not graceful:
            log.warning("%s (pid %s) ignored %s, killing it", self.name, self.pid, sig.name)
            send_signal(self.pid, signal.SIGKILL)
            self._wait(10.0)
        self.forget()
        return graceful

    def _wait(self, timeout_s: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        return self.pid is not None and wait_dead([self.pid], timeout_s)

    def forget(self) -> None:
        self.popen, self.pid = None, None


def as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
