"""One process at a time on a data_dir: an exclusive ``flock`` on ``<data_dir>/.lock``.

Two sidecars on one data_dir hand out the same journal seqs into the same segments and write
snapshots under the same names: acknowledged records of one are lost at the next start. The
kernel releases the lock when its process exits, however it exits (kill -9 included), so a lock
never outlives its holder and there is nothing stale to clean up.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the sidecar targets Linux)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class DataDirLock:
    """``acquire()`` takes the lock or says who holds it; ``release()`` gives it back."""

    def __init__(self, data_path: str | os.PathLike):
        self.path = Path(data_path) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        """None once this process holds the lock; else who holds it (for the message)."""
        if self._fd is not None or fcntl is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            return holder
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def in_use_message(data_path: Path, holder: str) -> str:
    return (
        f"data_dir {data_path} is in use by another probewatch process ({holder}): two on one data_dir would "
        "reuse journal seqs and lose acknowledged records. Give each sidecar its own data_dir, or stop the other"
    )
