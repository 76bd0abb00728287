"""The cache lock: one process prepares an artifact at a time, the others wait, say who they wait
for, and give up after a bound.

A `flock` on a file beside the artifact; the kernel drops it when its holder exits, so a killed
preparer frees it. The holder writes its pid, host and process start time into the file, so that
a waiter can log whom it waits for and break a lock whose recorded holder is gone while the lock
is still held (a forked helper that inherited the descriptor outlived the preparer). Breaking
unlinks the file; a process that locked an unlinked file notices (its inode is no longer the
path's) and locks again, so two holders never coexist.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelError

log = logging.getLogger("ember.backends.artifact")

POLL_S = 0.1
"""How often a waiter tries the lock again."""
REPORT_EVERY_S = 10.0
"""How often a waiter logs that it is still waiting."""


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who holds a lock, as it wrote itself into the lock file."""

    pid: int
    host: str
    since: float
    """Wall-clock seconds when it took the lock."""
    start: str = ""
    """The process's start time in clock ticks (/proc), to tell a reused pid from its owner."""

    def gone(self) -> bool:
        """True only when the holder surely no longer runs: same host, and no process with its
        pid (or one started at another time). Another host's process cannot be checked."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process: alive
            return False
        return bool(self.start) and _start_time(self.pid) not in ("", self.start)

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"held by pid {self.pid}{where} for {time.time() - self.since:.0f} s"


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (after the parenthesised name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def read_holder(lock_file: Path) -> Holder | None:
    """The holder recorded in `lock_file`, or None (free, being written, or unreadable)."""
    try:
        data = json.loads(lock_file.read_text(encoding="utf-8"))
        return Holder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            since=float(data["since"]),
            start=str(data.get("start", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _try_lock(lock_file: Path) -> int | None:
    """A descriptor holding the lock on the file now at `lock_file`, or None if it is held."""
    import fcntl

    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        current = os.stat(lock_file).st_ino
    except FileNotFoundError:
        current = -1
    if current != os.fstat(fd).st_ino:  # broken (unlinked) after we opened it: not the lock
        os.close(fd)
        return None
    return fd


def _record(fd: int) -> None:
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.time(),
        "start": _start_time(os.getpid()),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)


@contextmanager
def cache_lock(
    lock_file: Path, *, what: str, timeout: float, report_every: float = REPORT_EVERY_S
) -> Iterator[None]:
    """Hold the lock at `lock_file` for the body; `what` names the artifact in log lines.

    Waiting is logged at once with the holder's pid and again every `report_every` seconds; after
    `timeout` seconds (0: never) a `ModelError` names the holder and the setting to raise (the
    caller names the model).
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reported = -report_every
    while (fd := _try_lock(lock_file)) is None:
        holder = read_holder(lock_file)
        if holder is not None and holder.gone():
            log.warning(
                "%s: breaking the prepare lock %s: its holder (pid %d) is gone",
                what,
                lock_file,
                holder.pid,
            )
            _break(lock_file, holder)
            continue
        waited = time.monotonic() - started
        who = holder.describe() if holder is not None else "held by a process not yet named"
        if timeout and waited >= timeout:
            raise ModelError(
                f"gave up after {waited:.0f} s waiting for another prepare of the same "
                f"artifact ({who}; lock {lock_file}); if that process hangs, stop it, or raise "
                "--prepare-lock-timeout"
            )
        if waited - reported >= report_every:
            reported = waited
            log.warning(
                "%s: waiting for another prepare of the same artifact (%s; lock %s)%s",
                what,
                who,
                lock_file,
                f"; giving up after {timeout:.0f} s" if timeout else "",
            )
        time.sleep(POLL_S)
    try:
        _record(fd)
        yield
    finally:
        try:
            os.ftruncate(fd, 0)  # free: a later waiter must not report a stale holder
        finally:
            os.close(fd)  # closing the last descriptor drops the flock


def _break(lock_file: Path, holder: Holder) -> None:
    """Unlink the lock file if it still names `holder`. Breakers take turns (a second flock), so
    one cannot unlink the file a new holder took after another breaker's unlink."""
    import fcntl

    fd = os.open(f"{lock_file}.break", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if read_holder(lock_file) == holder:
            lock_file.unlink(missing_ok=True)
    finally:
        os.close(fd)
