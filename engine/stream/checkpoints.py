"""Per-partition checkpoints of engine state, each named by the partition's next offset.

Layout under the store URL: ``<group>/<topic>/p<partition>/<next offset, 20 digits>.npz``,
each file an engine snapshot (:mod:`probewatch.io.persistence`). ``file://`` URLs (and plain
paths) are written atomically and fsynced before :meth:`CheckpointStore.save` returns, so the
worker may commit the offset right after. Other URLs go through ``fsspec`` (``s3://``,
``gs://``, ``memory://`` ...): the snapshot is written locally, then uploaded in one put,
which object stores make visible whole or not at all.

A checkpoint's state is the state after processing every offset below its name, whoever
wrote it: processing is deterministic in the partition's order, so a late writer (a worker
that lost its partitions and did not know yet) writes a true state too.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ..errors import ConfigError, SnapshotError
from ..io.persistence import write_snapshot

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("probewatch.stream")
_NAME = re.compile(r"^(\d{20})\.npz$")


@dataclass(frozen=True)
class Loaded:
    """The newest readable checkpoint of a partition: its engine, next offset and size, and
    what was skipped on the way (newer files that could not be read, with the reason)."""

    engine: Engine
    offset: int
    nbytes: int
    skipped: tuple[str, ...]


class CheckpointStore:
    def __init__(self, url: str, keep: int = 3):
        if keep < 1:
            raise ConfigError(f"checkpoint_keep must be >= 1; got {keep}")
        self.url = url
        self.keep = keep
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            relative = url.startswith("file://./")
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost") and not relative:
                raise ConfigError(
                    f"state_url {url!r}: a file URL names a local path (file:///abs/path or file://./relative); "
                    f"got host {parsed.netloc!r}"
                )
            path = unquote(parsed.path) if parsed.scheme == "file" else url
            if relative:
                path = url[len("file://") :]
            self._fs: Any = None
            self._root = str(Path(path))
        else:
            try:
                import fsspec
            except ImportError as exc:
                raise ConfigError(
                    f"state_url {url!r} needs fsspec (pip install fsspec, plus the store's package, e.g. s3fs); "
                    "or use a file:// URL on a shared volume"
                ) from exc
            try:
                self._fs, self._root = fsspec.core.url_to_fs(url)
            except (ValueError, ImportError) as exc:
                raise ConfigError(f"state_url {url!r} cannot be opened by fsspec: {exc}") from exc
            self._root = self._root.rstrip("/")

    def _folder(self, group: str, topic: str, partition: int) -> str:
        return f"{self._root}/{_safe(group)}/{_safe(topic)}/p{partition:05d}"

    def offsets(self, group: str, topic: str, partition: int) -> list[int]:
        """Offsets of the partition's checkpoints, newest first."""
        folder = self._folder(group, topic, partition)
        if self._fs is None:
            names = os.listdir(folder) if os.path.isdir(folder) else []
        else:
            names = [p.rsplit("/", 1)[-1] for p in self._fs.ls(folder, detail=False)] if self._fs.exists(folder) else []
        found = (_NAME.match(name) for name in names)
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def path(self, group: str, topic: str, partition: int, offset: int) -> str:
        return f"{self._folder(group, topic, partition)}/{offset:020d}.npz"

    def save(self, group: str, topic: str, partition: int, offset: int, engine: Engine) -> int:
        """Write the engine's state as the checkpoint at ``offset``; durable on return. Returns its size in bytes."""
        folder = self._folder(group, topic, partition)
        target = self.path(group, topic, partition, offset)
        if self._fs is None:
            os.makedirs(folder, exist_ok=True)
            write_snapshot(target, engine.state_dict())
            nbytes = os.path.getsize(target)
        else:
            with tempfile.TemporaryDirectory(prefix="probewatch-ckpt-") as tmp:
                local = os.path.join(tmp, "state.npz")
                write_snapshot(local, engine.state_dict())
                nbytes = os.path.getsize(local)
                self._fs.makedirs(folder, exist_ok=True)
                self._fs.put_file(local, target)
        self._prune(group, topic, partition)
        return nbytes

    def _prune(self, group: str, topic: str, partition: int) -> None:
        for old in self.offsets(group, topic, partition)[self.keep :]:
            path = self.path(group, topic, partition, old)
            try:
                if self._fs is None:
                    os.unlink(path)
                else:
                    self._fs.rm_file(path)
            except OSError as exc:  # a concurrent writer pruned it first; the next save retries
                log.debug("could not remove old checkpoint %s: %s", path, exc)

    def load_newest(self, group: str, topic: str, partition: int, **engine_kwargs: Any) -> Loaded | None:
        """The newest checkpoint that reads back whole (None when there is none); an unreadable
        newer one is logged as a warning and skipped, so replay starts from the one before."""
        from ..engine import Engine

        skipped: list[str] = []
        for offset in self.offsets(group, topic, partition):
            path = self.path(group, topic, partition, offset)
            try:
                if self._fs is None:
                    engine, nbytes = Engine.load(path, **engine_kwargs), os.path.getsize(path)
                else:
                    with tempfile.TemporaryDirectory(prefix="probewatch-ckpt-") as tmp:
                        local = os.path.join(tmp, "state.npz")
                        self._fs.get_file(path, local)
                        engine, nbytes = Engine.load(local, **engine_kwargs), os.path.getsize(local)
            except (SnapshotError, OSError) as exc:
                skipped.append(f"{path}: {exc}")
                log.warning(
                    "partition %s: checkpoint %s is unreadable, falling back to an older one: %s", partition, path, exc
                )
                continue
            return Loaded(engine, offset, nbytes, tuple(skipped))
        if skipped:
            log.warning("partition %s: no readable checkpoint; starting from the partition's first offset", partition)
        return None


def _safe(name: str) -> str:
    """A topic or group name as one path segment (Kafka names are [a-zA-Z0-9._-] already)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
