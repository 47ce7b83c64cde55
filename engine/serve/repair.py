"""``probewatch repair-state``: what a damaged data directory loses, and dropping it so the sidecar can start.

The sidecar refuses to start (unready, :class:`~probewatch.serve.service.StateDamagedError`)
rather than serve part of its acknowledged state. The operator decides to accept the loss:

    probewatch repair-state --data-dir D        # dry run: what would be dropped, nothing changed
    probewatch repair-state --data-dir D --yes  # drop it

What the sidecar restores is the newest readable snapshot (covering journal seq S) plus the
journal records S+1, S+2, ... with no gap. Repair keeps exactly that and drops the rest:
unreadable snapshots newer than it, damaged journal lines, the missing records of a gap and
every record after the gap (replaying them without what came before would give accounts a
partial history), and torn last lines (cut back; never acknowledged).

Sequence numbers never go backwards: repair writes the high-water mark (a seq above every
seq ever written, dropped ones included) to ``repair.json`` in the data directory. The
sidecar hands out seqs above it and, at its first start after a repair, writes a snapshot at
that seq, so the dropped range is never read as a gap again.

Stop the sidecar before repairing: repair rewrites journal segments in place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SnapshotError
from ..io.persistence import fsync_dir
from .journal import SEGMENT_PREFIX, SEGMENT_SUFFIX, _parse_line, _whole_record_in_tail, sequence_of

REPAIR_FILE = "repair.json"


class RepairFileError(SnapshotError):
    """``repair.json`` in the data directory does not read back."""


@dataclass
class Drop:
    """One thing repair drops: ``kind`` is ``unreadable_snapshot``, ``damaged_line``,
    ``missing_records``, ``after_gap``, ``duplicate_seq`` or ``torn_tail``."""

    kind: str
    file: str  # the snapshot or journal segment, relative to the data directory
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<20} {self.file}: {self.detail}"


@dataclass
class RepairPlan:
    """What :func:`plan_repair` found; :func:`apply_repair` carries it out."""

    data_path: Path
    snapshot_seq: int  # seq the newest readable snapshot covers (0: none, a new engine)
    snapshot: str | None  # its file name
    kept_through: int  # the last journal seq the state holds after repair
    high_water: int  # above every seq ever written; the next seq handed out is greater
    previous: RepairRecord  # what earlier repairs dropped (not gaps)
    drops: list[Drop] = field(default_factory=list)
    delete: list[Path] = field(default_factory=list)
    rewrite: dict[Path, bytes] = field(default_factory=dict)  # segment -> the lines it keeps

    @property
    def clean(self) -> bool:
        return not self.drops

    def describe(self) -> str:
        base = f"snapshot {self.snapshot} (seq {self.snapshot_seq})" if self.snapshot else "a new engine (seq 0)"
        head = f"state after repair: {base} + journal records through seq {self.kept_through}"
        if self.clean:
            return f"{self.data_path}: nothing to drop; {head}"
        lines = [f"{self.data_path}: {len(self.drops)} things to drop", *(f"  {d}" for d in self.drops)]
        lines.append(f"{head}; the next seq handed out will be {self.high_water + 1}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RepairRecord:
    """What earlier repairs left in ``repair.json``: the high-water seq and the seq ranges they
    dropped (read by the sidecar at start: those ranges are not gaps)."""

    high_water: int = 0
    dropped: tuple[tuple[int, int], ...] = ()

    def skip(self, seq: int) -> int:
        """``seq``, or the seq after the dropped range that holds it."""
        moved = True
        while moved:
            moved = False
            for low, high in self.dropped:
                if low <= seq <= high:
                    seq, moved = high + 1, True
        return seq


def read_repair_record(data_path: str | os.PathLike) -> RepairRecord:
    """The :class:`RepairRecord` in ``data_path`` (empty when no repair ever ran there)."""
    path = Path(data_path) / REPAIR_FILE
    if not path.exists():
        return RepairRecord()
    try:
        doc = json.loads(path.read_bytes())
        high_water = doc["high_water_seq"]
        dropped = tuple((int(low), int(high)) for low, high in doc.get("dropped_ranges", []))
        if not isinstance(high_water, int) or high_water < 0:
            raise ValueError(f"high_water_seq must be a non-negative integer, got {high_water!r}")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise RepairFileError(
            f"{path} does not read back ({type(exc).__name__}: {exc}); it records what `probewatch repair-state` "
            "dropped and the sequence number it reached: restore it from a backup"
        ) from exc
    return RepairRecord(high_water, dropped)


def plan_repair(data_path: str | os.PathLike) -> RepairPlan:
    """What the sidecar cannot restore from ``data_path`` and would have to drop; changes nothing."""
    from ..engine import Engine  # heavy; the command line imports this module for --help
    from .service import snapshot_seq  # the service imports this module

    data_path = Path(data_path)
    if not data_path.is_dir():
        raise FileNotFoundError(f"no data directory {data_path} (the sidecar's data_dir / --data-dir)")
    snapshot_dir, journal_dir = data_path / "snapshots", data_path / "journal"
    previous = read_repair_record(data_path)
    high_water = previous.high_water
    drops: list[Drop] = []
    delete: list[Path] = []

    snapshots = sorted(
        ((snapshot_seq(p), p) for p in _listing(snapshot_dir) if snapshot_seq(p) is not None), reverse=True
    )
    base_seq, base_name = 0, None
    for seq, path in snapshots:
        high_water = max(high_water, seq)
        if base_name is not None:
            continue  # older than the one restored: the sidecar never reads it
        try:
            Engine.load(path, device="cpu")  # what the sidecar does at start; the device is no damage
        except (SnapshotError, OSError, ValueError) as exc:
            drops.append(Drop("unreadable_snapshot", _rel(path, data_path), f"seq {seq}: {exc}"))
            delete.append(path)
            continue
        base_seq, base_name = seq, path.name

    plan = RepairPlan(data_path, base_seq, base_name, base_seq, high_water, previous, drops, delete)
    _plan_journal(plan, journal_dir)
    return plan


def _plan_journal(plan: RepairPlan, journal_dir: Path) -> None:
    """Walk the segments in seq order, keeping records <= the snapshot's seq and the gapless
    run after it; everything else is a drop."""
    segments = sorted(
        (s, p) for p in _listing(journal_dir) if (s := sequence_of(p, SEGMENT_PREFIX, SEGMENT_SUFFIX)) is not None
    )
    expected = plan.previous.skip(plan.snapshot_seq + 1)  # the next seq the state needs
    broken = False  # a record went missing: nothing after it can be replayed
    uncertain = 0  # lines whose seq cannot be read: each may hold one seq above the highest read
    for first, path in segments:
        name = _rel(path, plan.data_path)
        plan.high_water = max(plan.high_water, first - 1)  # a segment opens at the seq after the last assigned
        if not broken and first > expected:
            plan.drops.append(
                Drop(
                    "missing_records",
                    name,
                    f"seqs {expected}-{first - 1} are in no segment and no readable snapshot "
                    f"(this segment starts at {first}, the state reaches seq {expected - 1})",
                )
            )
            broken = True
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()
        whole = _whole_record_in_tail(tail)
        if whole is not None:  # only the newline is missing: the sidecar keeps it, and so does repair
            lines.append(whole)
            tail = b""
        kept: list[bytes] = []
        after_gap: list[int] = []
        previous_seq: int | None = None
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            record = _parse_line(raw)
            if record is None:
                uncertain += 1
                plan.drops.append(
                    Drop("damaged_line", name, f"line {lineno} ({_damaged_seq(raw, previous_seq)}, {len(raw)} bytes)")
                )
                continue
            seq = int(record["seq"])
            previous_seq = seq
            plan.high_water = max(plan.high_water, seq)
            if seq <= plan.snapshot_seq:
                kept.append(raw)  # the snapshot holds it already; harmless to keep
            elif not broken and seq < expected:  # a second copy of a seq (two writers): the first stays
                plan.drops.append(Drop("duplicate_seq", name, f"line {lineno}: a second record with seq {seq}"))
            elif not broken and seq == expected:
                kept.append(raw)
                expected = plan.previous.skip(expected + 1)
            else:
                if not broken:
                    plan.drops.append(
                        Drop("missing_records", name, f"seqs {expected}-{seq - 1} are missing before line {lineno}")
                    )
                    broken = True
                after_gap.append(seq)
        if after_gap:
            plan.drops.append(
                Drop(
                    "after_gap",
                    name,
                    f"{len(after_gap)} records, seqs {min(after_gap)}-{max(after_gap)} "
                    "(acknowledged, but they follow missing records)",
                )
            )
        if tail.strip():
            uncertain += 1
            plan.drops.append(Drop("torn_tail", name, f"{len(tail)} bytes after the last newline (never acknowledged)"))
        new = b"".join(line + b"\n" for line in kept)
        if new != data:
            if new:
                plan.rewrite[path] = new
            else:
                plan.delete.append(path)
    plan.kept_through = expected - 1
    plan.high_water += uncertain


def _damaged_seq(raw: bytes, previous_seq: int | None) -> str:
    after = f"after seq {previous_seq}" if previous_seq is not None else "before the segment's first readable record"
    try:
        claimed = int(json.loads(raw.partition(b"\t")[0])["seq"])
    except (ValueError, KeyError, TypeError):
        return f"seq unreadable, {after}"
    return f"claims seq {claimed} but its checksum does not match, {after}"


def apply_repair(plan: RepairPlan) -> None:
    """Drop what ``plan`` lists: the high-water mark first (so seqs never go back even if this
    is interrupted), then rewritten segments (temporary file, fsync, rename), then deletions."""
    if plan.clean:
        return
    _write_repair_file(plan)
    for path, content in plan.rewrite.items():
        tmp = path.with_name(path.name + ".repair-tmp")
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    for path in plan.delete:
        path.unlink(missing_ok=True)
    for folder in {p.parent for p in [*plan.rewrite, *plan.delete]}:
        fsync_dir(folder)


def record_lost_tail(
    data_path: Path, previous: RepairRecord, kept_through: int, lost_through: int, snapshot_seq: int
) -> None:
    """Record in ``repair.json`` that journal seqs ``kept_through + 1 .. lost_through`` are gone
    for good: an unsynced tail lost to a power loss (``journal_fsync`` interval or never) whose
    seqs the alert outbox had already seen. The sidecar hands out seqs after them, and later
    starts read the range as dropped, not as a gap."""
    plan = RepairPlan(data_path, snapshot_seq, None, kept_through, lost_through, previous)
    plan.drops.append(
        Drop(
            "lost_tail",
            "journal",
            f"seqs {kept_through + 1}-{lost_through}: the alert outbox saw them, the journal's unsynced tail lost them",
        )
    )
    _write_repair_file(plan)


def _write_repair_file(plan: RepairPlan) -> None:
    path = plan.data_path / REPAIR_FILE
    history: list[dict[str, Any]] = []
    if path.exists():
        history = list(json.loads(path.read_bytes()).get("repairs", []))
    dropped = [list(r) for r in plan.previous.dropped]
    if plan.kept_through < plan.high_water:
        dropped.append([plan.kept_through + 1, plan.high_water])
    history.append(
        {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "snapshot_seq": plan.snapshot_seq,
            "kept_through": plan.kept_through,
            "high_water_seq": plan.high_water,
            "dropped": [str(d) for d in plan.drops],
        }
    )
    tmp = path.with_name(REPAIR_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"high_water_seq": plan.high_water, "dropped_ranges": dropped, "repairs": history}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(plan.data_path)


def _listing(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))
