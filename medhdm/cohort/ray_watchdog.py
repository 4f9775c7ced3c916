"""A watchdog that kills the processes of a local Ray cluster once the driver that started it is gone.

Ray ties its node processes (``gcs_server``, ``raylet``, monitor, dashboard, log monitor) to
the driver that started them, but the agents that ``raylet`` starts (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) and its workers outlive a driver killed with SIGKILL, the agents
for a minute or more. :class:`~medhdm.cohort.ray_engine.RayEngine` therefore runs this file
as a script (``python -I ray_watchdog.py ROOT_PID ...``, standard library only, in a session
of its own so that a Ctrl-C at the terminal does not reach it) with a pipe on its stdin whose
write end only the driver holds. The watchdog

1. records the given root processes (the ones ``ray.init`` started) and, every 0.5 s, every
   process that descends from a recorded one (its pid and start time, so that a reused
   pid is never mistaken for it),
2. on end of file on stdin (the driver closed the pipe, or died: the kernel closes it even
   on SIGKILL) sends SIGKILL to every recorded process that still runs, then exits.

Linux only (it reads ``/proc``); the engine starts it where ``/proc`` exists.
"""

from __future__ import annotations

import os
import select
import signal
import sys

__all__ = ["children", "main", "process_table"]

#: seconds between two looks at the process table
INTERVAL = 0.5


def _stat(pid: int) -> tuple[int, int, str] | None:
    """``(parent pid, start time in clock ticks, state)`` of a process, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (name) ": state, ppid, ... (field 3 on)
    return int(fields[1]), int(fields[19]), fields[0].decode()


def process_table() -> dict[int, tuple[int, int, str]]:
    """Every live process: ``{pid: (parent pid, start time, state)}`` (zombies left out)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[2] not in ("Z", "X"):
                table[int(name)] = stat
    return table


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    return {child for child, (parent, _, _) in process_table().items() if parent == pid}


def _record_descendants(known: dict[int, int]) -> None:
    """Add to ``known`` (``{pid: start time}``) every live process whose parent is a known one."""
    table = process_table()
    grown = True
    while grown:
        grown = False
        for pid, (parent, start, _) in table.items():
            if pid not in known and parent in known and table.get(parent, (0, None, ""))[1] == known[parent]:
                known[pid] = start
                grown = True


def _kill(known: dict[int, int]) -> None:
    for pid, start in known.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start and stat[2] not in ("Z", "X"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone in between, or not ours to signal
                pass


def main(argv: list[str]) -> int:
    """Watch the processes ``argv`` names (and their descendants) until stdin ends, then kill them."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    known: dict[int, int] = {}
    for pid in (int(a) for a in argv):
        stat = _stat(pid)
        if stat is not None:
            known[pid] = stat[1]
    while True:
        _record_descendants(known)
        readable, _, _ = select.select([0], [], [], INTERVAL)
        if readable and not os.read(0, 4096):
            break
    _kill(known)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
