"""Background processes of the embedded stack: spawn detached with a pid file and a log, wait, stop."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or f"(log {path} is empty)"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now (tests and benchmarks run private services on such ports), below the
    kernel's ephemeral range: a port the kernel may hand to any outgoing connection as its source port can be taken
    between a service's stop and its restart (and stays blocked in TIME_WAIT for a minute after). Never the same
    port twice in one process."""
    low = max(1024, _EPHEMERAL_LOW - 12_000)
    for _ in range(200):
        port = random.randrange(low, _EPHEMERAL_LOW)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as probe:  # nothing free below the range: any port the kernel gives
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def require_free_port(host: str, port: int, setting: str) -> None:
    if port_in_use(host, port):
        raise SendflowrError(
            f"port {port} on {host} is already in use by another process; stop it or choose another port "
            f"with {setting}"
        )


def pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.log_dir / f"{name}.log"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def running_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if is_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


# What a child started with inherit_env=False keeps of our environment: how to find programs and libraries,
# locale and time zone; never a credential that happens to be exported in the shell.
OS_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
                  "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SYSTEMROOT")


def os_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in OS_ENVIRONMENT or k.startswith("LC_")}


def spawn(settings: Settings, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
          cwd: Path | None = None, inherit_env: bool = True) -> int:
    """Start argv detached from our terminal (own session), logging to <home>/logs/<name>.log. With
    inherit_env=False the child sees only `env` and OS_ENVIRONMENT."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = log_file(settings, name)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**(os.environ if inherit_env else os_environment()), **(env or {})}, cwd=cwd,
            start_new_session=True,
        )
    pid_file(settings, name).write_text(str(proc.pid))
    return proc.pid


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str, pid: int | None = None,
               log: Path | None = None, interval: float = 0.25) -> None:
    """Poll `ready` until it holds; fail with the log's tail when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not is_alive(pid):
            tail = log_tail(log) if log else ""
            raise SendflowrError(f"{what} exited before it was ready. Last lines of {log}:\n{tail}")
        time.sleep(interval)
    tail = log_tail(log) if log else ""
    raise SendflowrError(f"{what} was not ready after {timeout:.0f}s. Last lines of {log}:\n{tail}")


def stop(settings: Settings, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM the process group, SIGKILL after timeout. True when something was running."""
    pid = running_pid(settings, name)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive(pid):
        time.sleep(0.1)
    if is_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while is_alive(pid):
            time.sleep(0.05)
    pid_file(settings, name).unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
