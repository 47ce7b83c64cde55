"""The sidecar's journal: the hand-written segmented log against SQLite, same workload, same guarantee.

Both sides make every append call durable before it returns (what the sidecar needs before it
answers a micro-batch):

* **journal**: :class:`probewatch.serve.journal.Journal` with fsync policy ``batch`` (one
  unbuffered write and one fsync per call; every line carries a CRC32).
* **sqlite**: one table ``journal(seq INTEGER PRIMARY KEY, record BLOB)`` in WAL mode with
  ``synchronous=FULL`` (the WAL is fsynced at every commit), one transaction per call.

Workload: micro-batches of 1, 32 and 256 observation records with ~300-character prompts (the
JSON the sidecar journals); records/s and p50/p99 latency of one append call. Then replay:
read back 100,000 records (parse and check each) from a fresh handle.

    python -m bench.journal_store [--dir PATH] [--calls-1 N] [--replay N]

``--dir`` should be on the disk the sidecar's data directory lives on (fsync cost is the disk's);
the default is a temporary folder under the current directory.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probewatch.serve.journal import Journal

BATCH_SIZES = (1, 32, 256)
PROMPT_CHARS = 300
_WORDS = [
    "tide",
    "estuary",
    "salinity",
    "gradient",
    "river",
    "ocean",
    "current",
    "basin",
    "delta",
    "sediment",
    "flow",
    "moon",
]


def make_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Observation records as the sidecar journals them (``op``, account, ~300-char prompt, ts)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < PROMPT_CHARS:
            words.append(rng.choice(_WORDS))
        out.append(
            {"op": "observe", "account": f"acct-{rng.randrange(5000)}", "prompt": " ".join(words), "ts": 1.7e9 + i}
        )
    return out


class SqliteJournal:
    """The minimal SQLite journal the comparison is about: seq is the row id, one commit per call."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, record BLOB NOT NULL)")
        row = self.db.execute("SELECT max(seq) FROM journal").fetchone()
        self.last_seq = row[0] or 0

    def append(self, records: list[dict[str, Any]]) -> int:
        rows = []
        for record in records:
            self.last_seq += 1
            record["seq"] = self.last_seq
            rows.append((self.last_seq, json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()))
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO journal (seq, record) VALUES (?, ?)", rows)
        self.db.execute("COMMIT")
        return self.last_seq

    def replay(self, after_seq: int):
        for _seq, blob in self.db.execute("SELECT seq, record FROM journal WHERE seq > ? ORDER BY seq", (after_seq,)):
            yield json.loads(blob)

    def close(self) -> None:
        self.db.close()


def _time_appends(append: Callable[[list[dict]], int], batches: list[list[dict]]) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        append([dict(r) for r in batch])
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    latencies.sort()
    n_records = sum(len(b) for b in batches)
    return {
        "records_per_s": n_records / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "calls": len(batches),
    }


def _open_journal(folder: Path) -> Journal:
    journal = Journal(folder, "batch")
    journal.open(1)
    return journal


def measure(root: Path, calls_by_size: dict[int, int], replay_n: int) -> dict[str, Any]:
    results: dict[str, Any] = {"append": [], "replay": {}}
    pool = make_records(max(replay_n, max(s * c for s, c in calls_by_size.items())))
    for size, calls in calls_by_size.items():
        batches = [pool[i * size : (i + 1) * size] for i in range(calls)]
        for store in ("journal", "sqlite"):
            folder = root / f"{store}-{size}"
            folder.mkdir()
            if store == "journal":
                handle = _open_journal(folder)
            else:
                handle = SqliteJournal(folder / "journal.db")
            row = _time_appends(handle.append, batches)
            handle.close()
            results["append"].append({"store": store, "batch": size, **row})
    # replay: write replay_n records in batches of 256, then read them back from a fresh handle
    for store in ("journal", "sqlite"):
        folder = root / f"{store}-replay"
        folder.mkdir()
        handle = _open_journal(folder) if store == "journal" else SqliteJournal(folder / "journal.db")
        for i in range(0, replay_n, 256):
            handle.append([dict(r) for r in pool[i : i + 256]])
        handle.close()
        fresh = Journal(folder, "batch") if store == "journal" else SqliteJournal(folder / "journal.db")
        t0 = time.perf_counter()
        n = sum(1 for _ in fresh.replay(0))
        wall = time.perf_counter() - t0
        if store == "sqlite":
            fresh.close()
        if n != replay_n:
            raise RuntimeError(f"{store} replay read {n} records, expected {replay_n}")
        size = sum(p.stat().st_size for p in folder.iterdir())
        results["replay"][store] = {"records": n, "seconds": wall, "records_per_s": n / wall, "bytes": size}
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"{'store':<8} {'batch':>5} {'calls':>6} {'records/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for row in results["append"]:
        print(
            f"{row['store']:<8} {row['batch']:>5} {row['calls']:>6} {row['records_per_s']:>11,.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    print(f"\n{'replay':<8} {'records':>8} {'seconds':>8} {'records/s':>11} {'MB on disk':>10}")
    for store, row in results["replay"].items():
        print(
            f"{store:<8} {row['records']:>8,} {row['seconds']:>8.2f} {row['records_per_s']:>11,.0f} "
            f"{row['bytes'] / 1e6:>10.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_store", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temporary folder under the current directory)")
    parser.add_argument("--calls-1", type=int, default=500, help="append calls of 1 record")
    parser.add_argument("--calls-32", type=int, default=300, help="append calls of 32 records")
    parser.add_argument("--calls-256", type=int, default=100, help="append calls of 256 records")
    parser.add_argument("--replay", type=int, default=100_000, help="records to replay")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    calls = {1: args.calls_1, 32: args.calls_32, 256: args.calls_256}
    if min(calls.values()) < 1 or args.replay < 1:
        parser.error(f"call counts and --replay must be at least 1; got {calls} and {args.replay}")
    if args.dir is not None and not Path(args.dir).is_dir():
        parser.error(f"--dir must be an existing folder; got {args.dir!r}")
    root = Path(tempfile.mkdtemp(prefix="journal-store-", dir=args.dir or "."))
    try:
        results = measure(root, calls, args.replay)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
