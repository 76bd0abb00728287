"""The file the workers of `ember serve --workers N` share (ember.workers): one slot per
worker with its stage code and heartbeat, and the clean-up of files whose supervisor died."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import time
from pathlib import Path

_CODES = {"starting": 1, "loading": 2, "warming": 3, "ready": 4, "failed": 5, "draining": 6}
_READY = _CODES["ready"]
_PREFIX = "ember-workers-"
_SLOT = 16  # per worker: its stage code (byte 0) and its last heartbeat (bytes 8-16, monotonic)
_FRESH_SECONDS = 1.0  # a ready worker counts for /ready only with a heartbeat this recent


class SharedState:
    """The file the workers share: one slot per worker with its stage code and heartbeat.
    `time.monotonic` is CLOCK_MONOTONIC, one clock for every process of the machine."""

    def __init__(self, path: Path, *, workers: int) -> None:
        self.path = path
        self.workers = workers
        self._fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, *, workers: int) -> SharedState:
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        remove_orphans(folder)
        fd, name = tempfile.mkstemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=folder)
        os.write(fd, bytes(_SLOT * workers))
        os.close(fd)
        return cls(Path(name), workers=workers)

    def publish(self, index: int, code: int) -> None:
        os.pwrite(self._fd, bytes([code]), _SLOT * index)

    def beat(self, index: int, at: float) -> None:
        os.pwrite(self._fd, struct.pack("d", at), _SLOT * index + 8)

    def clear(self, index: int) -> None:
        os.pwrite(self._fd, bytes(_SLOT), _SLOT * index)

    def read(self) -> list[tuple[int, float]]:
        """(stage code, last heartbeat) per worker."""
        raw = os.pread(self._fd, _SLOT * self.workers, 0)
        return [
            (raw[i * _SLOT], struct.unpack_from("d", raw, i * _SLOT + 8)[0])
            for i in range(self.workers)
        ]

    def ready_count(self) -> int:
        now = time.monotonic()
        return sum(code == _READY and now - beat < _FRESH_SECONDS for code, beat in self.read())

    def close(self, *, remove: bool) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the shared files of supervisors that no longer run (killed outright)."""
    removed = []
    for path in folder.glob(f"{_PREFIX}*"):
        try:
            pid = int(path.name[len(_PREFIX) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed.append(path)
        except (ValueError, PermissionError):
            continue  # not ours, or another user's live supervisor
    return removed
