"""The processes the test bed starts: spawned in sessions of their own, known by pid and start time, waited for."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bed.base import TestbedError
from bed.state import State


def start_time(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot): with the pid, a unique identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def alive(pid: int, identity: str) -> bool:
    """Whether the process we started (pid and start time) still runs: pid reuse can't fool it."""
    return bool(identity) and start_time(pid) == identity


def exited(pid: int, identity: str) -> bool:
    """Whether all of a process's threads are gone (its leader turns zombie first, while the others still hold
    its sockets: a restart before then cannot bind the same port)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return not alive(pid, identity) and len(threads) <= 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def spawn(state: State, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start ``argv`` in a session of its own, its output in ``logs/<name>.log``, and record it in the state."""
    logs = Path(state.dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=state.dir,
        )
    state.pids[name] = proc.pid
    state.identities[name] = start_time(proc.pid)
    state.save()


def log_tail(state: State, name: str, lines: int = 30) -> str:
    """The last lines of a process's log."""
    path = Path(state.dir) / "logs" / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait(state: State, name: str, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail at once, with its log, if process ``name`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        pid = state.pids.get(name)
        if pid is not None and not alive(pid, state.identities[name]):
            raise TestbedError(f"{name} exited during start-up:\n{log_tail(state, name)}")
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TestbedError(f"{name}: {what} not ready after {timeout:.0f}s ({last})\n{log_tail(state, name)}")


def http_ok(url: str, token: str = "", ctx: ssl.SSLContext | None = None) -> bool:
    """Whether a GET of ``url`` answers 2xx."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
        return 200 <= int(resp.status) < 300
