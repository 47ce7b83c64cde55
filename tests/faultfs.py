"""A fault-injecting file layer under one data directory (imported by tests, not collected).

:class:`FaultyDisk` sits under every file opened for writing below its root (``open`` and
``os.fdopen``, which the journal and the snapshot writer use) and under ``os.fsync`` of files
and folders there. Armed with a :class:`Fault`, it makes them misbehave:

- ``short``: every write takes a random part (1..n-1 bytes) of what it was given;
- ``enospc``: writes take ``room`` more bytes in all (the write that crosses it is short), then
  fail with ENOSPC, as a disk that fills up does;
- ``eio``: the ``nth`` fsync of a file (of a folder with ``dirs=True``) fails with EIO, once or
  from then on (``persistent``).

Everything else passes through. It also keeps what a power cut would leave
(:meth:`FaultyDisk.power_cut_image`): each file as of its last successful fsync, with the bytes
that were dirty when an fsync failed as zeros (the kernel drops them), and in each folder only
the names present at its last successful fsync. A write to a file after an fsync of it failed
is recorded in ``writes_after_failed_fsync``.
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import io
import os
import random
import shutil
import stat
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import probewatch

PACKAGE_DIR = os.path.dirname(probewatch.__file__)
KINDS = ("short", "enospc", "eio")
TARGETS = ("journal", "snapshots", "")  # "" is the whole data directory


@dataclass
class Fault:
    kind: str
    target: str = ""  # the data directory's subfolder it hits: journal, snapshots, or "" for all
    room: int = 0  # enospc: bytes the disk still takes
    nth: int = 1  # eio: the nth matching fsync fails (1 = the next one)
    dirs: bool = False  # eio: on fsyncs of folders instead of files
    persistent: bool = False  # eio: every matching fsync from the nth on fails
    site: str = ""  # only while this probewatch function is on the stack ("" for anywhere)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, got {self.kind!r}")
        if self.target not in TARGETS:
            raise ValueError(f"fault target must be one of {TARGETS}, got {self.target!r}")

    @property
    def label(self) -> str:
        what = {"short": "short writes", "enospc": "ENOSPC", "eio": "EIO on fsync"}[self.kind]
        if self.kind == "eio" and self.dirs:
            what += " of the folder"
        return f"{what} under {self.target or 'the whole data directory'}" + (f" in {self.site}" if self.site else "")


class _FaultyFile(io.RawIOBase):
    """A raw file whose writes go through the disk's fault rules (the journal uses it as is,
    the snapshot writer through an ``io.BufferedWriter``)."""

    def __init__(self, inner: io.FileIO, disk: FaultyDisk, path: str):
        super().__init__()
        self._inner, self._disk, self.path = inner, disk, path
        self.fsync_failed = False
        info = os.fstat(inner.fileno())
        self.inode = info.st_ino
        disk._opened(self, fresh=info.st_size == 0)

    def write(self, data) -> int:
        return self._disk._write(self, data)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return self._inner.seekable()

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        return self._inner.seek(pos, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def name(self):
        return self._inner.name

    def close(self) -> None:
        if not self.closed:
            self._disk._closing(self)
            try:
                self._inner.close()
            finally:
                super().close()


class FaultyDisk:
    def __init__(self, root: Path, seed: int = 0):
        self.root = Path(root).resolve()
        self.fault: Fault | None = None
        self.injected: Counter = Counter()  # "<fault label> in <probewatch function>" -> count
        self.writes_after_failed_fsync: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._fsyncs_seen = 0
        self._touched: set[int] = set()  # inodes written through the layer
        self._durable: dict[int, bytes] = {}  # inode -> content at its last successful fsync
        self._lost: dict[int, list[tuple[int, int]]] = {}  # inode -> byte ranges dropped by a failed fsync
        self._open_files: dict[int, _FaultyFile] = {}  # fd -> file, while open
        self._durable_names: dict[str, set[str]] = {}  # folder -> names at its last successful fsync
        self._real_open = builtins.open
        self._real_fdopen = os.fdopen
        self._real_fsync = os.fsync

    # -- control ------------------------------------------------------------------------------
    def install(self, monkeypatch) -> FaultyDisk:
        for folder, _, files in os.walk(self.root):  # what is there already counts as durable
            self._durable_names[folder] = set(files)
        monkeypatch.setattr(builtins, "open", self._open)
        monkeypatch.setattr(os, "fdopen", self._fdopen)
        monkeypatch.setattr(os, "fsync", self._fsync)
        return self

    def arm(self, fault: Fault) -> None:
        with self._lock:  # a copy: its room is used up here, and the caller's stays as given
            self.fault, self._fsyncs_seen = dataclasses.replace(fault), 0

    def disarm(self) -> None:
        with self._lock:
            self.fault = None

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    # -- interception -------------------------------------------------------------------------
    def _opened(self, file: _FaultyFile, fresh: bool) -> None:
        with self._lock:
            self._open_files[file.fileno()] = file
            self._touched.add(file.inode)
            if fresh:  # a new file, maybe on the inode of one deleted earlier: nothing of it is durable yet
                self._durable.pop(file.inode, None)
                self._lost.pop(file.inode, None)

    def _closing(self, file: _FaultyFile) -> None:
        with self._lock:
            self._open_files.pop(file.fileno(), None)

    def _path_of_fd(self, fd: int) -> str | None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        except OSError:
            return None
        return path if path.startswith(str(self.root) + os.sep) or path == str(self.root) else None

    def _under_root(self, file) -> str | None:
        if isinstance(file, int):
            return None
        path = os.path.abspath(os.fsdecode(os.fspath(file)))
        return path if path.startswith(str(self.root) + os.sep) else None

    @staticmethod
    def _plain_write_mode(mode: str) -> bool:
        return "b" in mode and "+" not in mode and any(c in mode for c in "wax")

    def _open(self, file, mode="r", buffering=-1, *args, **kwargs):
        path = self._under_root(file) if self._plain_write_mode(mode) else None
        if path is None:
            return self._real_open(file, mode, buffering, *args, **kwargs)
        faulty = _FaultyFile(self._real_open(file, mode, 0, *args, **kwargs), self, path)
        return faulty if buffering == 0 else io.BufferedWriter(faulty)

    def _fdopen(self, fd, mode="r", buffering=-1, *args, **kwargs):
        path = self._path_of_fd(fd) if isinstance(fd, int) and self._plain_write_mode(mode) else None
        if path is None:
            return self._real_fdopen(fd, mode, buffering, *args, **kwargs)
        faulty = _FaultyFile(io.FileIO(fd, mode.replace("b", ""), closefd=kwargs.get("closefd", True)), self, path)
        return faulty if buffering == 0 else io.BufferedWriter(faulty)

    def _matches(self, path: str) -> bool:
        fault = self.fault
        if fault is None or (fault.target and not path.startswith(str(self.root / fault.target) + os.sep)):
            return False
        return not fault.site or fault.site in self._product_functions()

    @staticmethod
    def _product_functions() -> list[str]:
        """Names of the probewatch functions on the stack, innermost first."""
        names, frame = [], sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.startswith(PACKAGE_DIR):
                names.append(frame.f_code.co_name)
            frame = frame.f_back
        return names

    def _inject(self, what: str) -> None:
        functions = self._product_functions()
        self.injected[f"{what} (at {functions[0] if functions else '?'})"] += 1

    def _write(self, file: _FaultyFile, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        with self._lock:
            if file.fsync_failed:
                self.writes_after_failed_fsync.append(os.path.basename(file.path))
            fault = self.fault if self.fault and self._matches(file.path) else None
            if fault is not None and fault.kind == "short" and n > 1:
                n = self._rng.randint(1, n - 1)
                self._inject(fault.label)
            elif fault is not None and fault.kind == "enospc":
                if fault.room <= 0:
                    self._inject(fault.label)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if n > fault.room:
                    n = fault.room
                    self._inject(fault.label + " (short write first)")
                fault.room -= n
            return file._inner.write(view[:n])

    def _fsync(self, fd: int) -> None:
        path = self._path_of_fd(fd)
        if path is None:
            return self._real_fsync(fd)
        info = os.fstat(fd)
        is_dir = stat.S_ISDIR(info.st_mode)
        with self._lock:
            fault = self.fault
            if fault is not None and fault.kind == "eio" and fault.dirs == is_dir and self._matches(path + os.sep):
                self._fsyncs_seen += 1
                if self._fsyncs_seen == fault.nth or (fault.persistent and self._fsyncs_seen > fault.nth):
                    if not is_dir:  # what was dirty never reaches the disk, whatever comes later
                        start = len(self._durable.get(info.st_ino, b""))
                        self._lost.setdefault(info.st_ino, []).append((start, info.st_size))
                        if fd in self._open_files:
                            self._open_files[fd].fsync_failed = True
                    self._inject(fault.label)
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
            self._real_fsync(fd)
            if is_dir:
                self._durable_names[path] = set(os.listdir(path))
            else:
                with self._real_open(f"/proc/self/fd/{fd}", "rb") as fh:
                    content = bytearray(fh.read())
                for start, end in self._lost.get(info.st_ino, []):
                    content[start:end] = bytes(len(content[start:end]))
                self._durable[info.st_ino] = bytes(content)

    # -- what is left -------------------------------------------------------------------------
    def power_cut_image(self, dest: Path) -> Path:
        """A copy of the root as a power cut now would leave it (see the module docstring)."""
        with self._lock:
            for folder, _, files in os.walk(self.root):
                out = Path(dest) / os.path.relpath(folder, self.root)
                out.mkdir(parents=True, exist_ok=True)
                durable_names = self._durable_names.get(folder, set())
                for name in files:
                    src = os.path.join(folder, name)
                    inode = os.stat(src).st_ino
                    if name not in durable_names:
                        continue  # its folder entry was never made durable
                    if inode in self._touched:
                        (out / name).write_bytes(self._durable.get(inode, b""))
                    else:
                        shutil.copyfile(src, out / name)
        return Path(dest)
