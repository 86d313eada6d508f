"""CPU an idle embedded stack uses: every process `sendflowr up` started (the pid files in <home>/run) and all their
descendants (Dagster's daemon, code server and run workers, uvicorn), sampled from /proc for a while.

    SENDFLOWR_HOME=/tmp/x .venv/bin/python bench/idle_cpu.py [--seconds 120] [--interval 0.5]

Start the stack first (`sendflowr up` with that SENDFLOWR_HOME, on free ports: README "Configuration") and let it
settle. A process that starts and ends between two samples is missed, and one that ends loses at most one interval
of its CPU: keep the interval short. Prints each process's share of one core and the total; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sendflowr.settings import get_settings

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    shown = [w.rsplit("/", 1)[-1] if i == 0 or w.startswith("/") else w for i, w in enumerate(words)]
    return " ".join(shown)[:90]


def _tree(roots: set[int]) -> dict[int, float]:
    """CPU seconds of `roots` and every live descendant."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = stats[pid][1]
            todo += children.get(pid, [])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    run_dir = get_settings().run_dir
    roots = {int(p.read_text().strip()) for p in run_dir.glob("*.pid") if p.read_text().strip().isdigit()}
    if not roots:
        raise SystemExit(f"no pid files in {run_dir}: is the stack up with this SENDFLOWR_HOME?")
    first = _tree(roots)
    last, names, born = dict(first), {pid: _name(pid) for pid in first}, set()
    started = time.monotonic()
    while time.monotonic() - started < args.seconds:
        time.sleep(args.interval)
        for pid, cpu in _tree(roots).items():
            if pid not in names:
                names[pid], first[pid] = _name(pid), 0.0  # born during the window: all its CPU counts
                born.add(pid)
            last[pid] = cpu
    wall = time.monotonic() - started
    used = sorted(((last[pid] - first[pid], pid) for pid in last), reverse=True)
    for cpu, pid in used:
        if cpu > 0:
            print(f"{100 * cpu / wall:6.2f}%  {pid:>7}  {names[pid]}")
    total = sum(cpu for cpu, _ in used)
    print(f"total: {100 * total / wall:.2f}% of one core over {wall:.0f} s ({len(used)} processes, "
          f"{len(born)} started during the window)")


if __name__ == "__main__":
    main()
