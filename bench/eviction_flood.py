"""Eviction flood: does a flagged account keep its level while a flood of new accounts passes
through a small memory budget? (issue 11, target "eviction flood")

An attacker who has been flagged could try to shed the flag by making the engine evict it:
stream enough fresh single-query accounts through a small ``memory_budget_bytes`` and the
account's history is dropped. probewatch evicts idle accounts at ``ok`` first and keeps a
compact record (level, peak score and risk) for any account at watch or flag it has to evict.

The run: an engine calibrated on synthetic topical benign accounts (precomputed vectors, no
embedding model), one account flagged by a scatter of random queries, then ``--accounts``
single-query accounts in batches of ``--batch``. Reported: the flagged account's level, peak
risk and reasons before the flood and when it returns after it, whether it stayed resident or
came back from its eviction record, wall time, evictions and eviction records.

``--flood-queries K`` (K > 1) makes the flood itself suspicious: each new account sends K
random queries (a scatter like the attacker's), so flagged accounts fill the budget and the
attacker has to be evicted; it then comes back from its record.

    python -m bench.eviction_flood [--accounts 100000] [--budget-mib 1] [--batch 256] [--flood-queries 1]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DIM = 48
SCATTER_QUERIES = 120  # random queries: flagged well before this many
ATTACKER = "sweeper"


@dataclass
class Standing:
    level: str
    peak_risk: float
    reasons: list[str]
    n_queries: int


@dataclass
class FloodResult:
    accounts: int
    flood_queries: int
    budget_bytes: int
    wall_s: float
    accounts_per_s: float
    evictions: int
    evicted_records: int
    resident_at_end: int
    peak_bytes_held: int
    attacker_resident_at_end: bool  # False: it was evicted and came back from its record
    before: Standing
    after: Standing  # on its first query after the flood

    @property
    def kept_level(self) -> bool:
        return self.after.level == self.before.level and self.after.peak_risk >= self.before.peak_risk

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_level": self.kept_level}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _topical_accounts(rng: np.random.Generator, topics: np.ndarray, n_accounts: int, queries=(10, 40)):
    """Benign-looking accounts: each stays near one topic."""
    accounts: list[str] = []
    rows = []
    for a in range(n_accounts):
        centre = topics[rng.integers(len(topics))] + 0.35 * rng.standard_normal(DIM)
        n = int(rng.integers(queries[0], queries[1] + 1))
        rows.append(centre + rng.uniform(0.7, 1.1) * rng.standard_normal((n, DIM)))
        accounts += [f"calibration-{a}"] * n
    return accounts, _unit(np.concatenate(rows))


def calibrated_engine(budget_bytes: int, seed: int = 0, target_fpr: float = 0.01, watch_fpr: float = 0.05):
    """An engine calibrated on 150 synthetic topical accounts (``DIM``-d vectors), with the budget."""
    import probewatch as pw

    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((24, DIM))
    accounts, vectors = _topical_accounts(rng, topics, 150)
    engine = pw.Engine.from_benign_embeddings(
        accounts,
        vectors,
        device="cpu",
        memory_budget_bytes=budget_bytes,
        target_fpr=target_fpr,
        watch_fpr=watch_fpr,
    )
    return engine, topics


def _standing(engine) -> Standing:
    report = engine.report(ATTACKER)
    return Standing(
        level=report.level.value,
        peak_risk=float(report.peak_risk),
        reasons=[r.feature for r in report.reasons],
        n_queries=int(report.n_queries),
    )


def run_flood(
    n_accounts: int, budget_bytes: int = 1024**2, batch: int = 256, seed: int = 0, flood_queries: int = 1
) -> FloodResult:
    if n_accounts < 1 or batch < 1 or flood_queries < 1:
        raise ValueError(
            f"accounts, batch and flood_queries must be at least 1; got {n_accounts}, {batch}, {flood_queries}"
        )
    engine, topics = calibrated_engine(budget_bytes, seed)
    rng = np.random.default_rng(seed + 1)
    scatter = _unit(rng.standard_normal((SCATTER_QUERIES + 1, DIM)))
    engine.observe_embeddings([ATTACKER] * SCATTER_QUERIES, scatter[:SCATTER_QUERIES])
    before = _standing(engine)
    if before.level != "flag":
        raise RuntimeError(f"the scatter account should be flagged before the flood; it is at {before.level}")

    peak = 0
    started = time.perf_counter()
    per_call = max(1, batch // flood_queries)  # accounts per observe call
    for first in range(0, n_accounts, per_call):
        ids = [f"flood-{i}" for i in range(first, min(first + per_call, n_accounts))]
        if flood_queries == 1:  # ordinary single-query accounts near a topic
            centres = topics[rng.integers(len(topics), size=len(ids))]
            engine.observe_embeddings(ids, _unit(centres + rng.standard_normal((len(ids), DIM))))
        else:  # each account a scatter of its own, in time order
            rows = _unit(rng.standard_normal((len(ids) * flood_queries, DIM)))
            engine.observe_embeddings([a for a in ids for _ in range(flood_queries)], rows)
        peak = max(peak, engine.pipeline.held_bytes())
    wall = time.perf_counter() - started
    stats = engine.stats()
    resident = ATTACKER in engine.pipeline.states

    # the attacker returns with one more random query
    engine.observe_embeddings([ATTACKER], scatter[SCATTER_QUERIES:])
    after = _standing(engine)
    return FloodResult(
        accounts=n_accounts,
        flood_queries=flood_queries,
        budget_bytes=budget_bytes,
        wall_s=wall,
        accounts_per_s=n_accounts / wall,
        evictions=stats.evicted,
        evicted_records=stats.evicted_records,
        resident_at_end=stats.accounts,
        peak_bytes_held=peak,
        attacker_resident_at_end=resident,
        before=before,
        after=after,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eviction_flood", description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="single-query accounts in the flood")
    parser.add_argument("--budget-mib", type=float, default=1.0, help="engine memory_budget_bytes, in MiB (>= 1)")
    parser.add_argument("--batch", type=int, default=256, help="accounts per observe call")
    parser.add_argument("--flood-queries", type=int, default=1, help="random queries per flood account")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if min(args.accounts, args.batch, args.flood_queries) < 1 or args.budget_mib < 1:
        parser.error(
            "--accounts, --batch and --flood-queries must be >= 1 and --budget-mib >= 1; got "
            f"{args.accounts}, {args.batch}, {args.flood_queries}, {args.budget_mib}"
        )
    result = run_flood(args.accounts, int(args.budget_mib * 1024**2), args.batch, args.seed, args.flood_queries)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.kept_level else 1
    b, a = result.before, result.after
    print(
        f"{result.accounts:,} accounts of {result.flood_queries} queries through a {result.budget_bytes / 1024**2:g} MiB budget in "
        f"{result.wall_s:.1f}s ({result.accounts_per_s:,.0f} accounts/s); {result.evictions:,} evictions, "
        f"{result.evicted_records} eviction records, {result.resident_at_end} accounts resident at the end, "
        f"peak {result.peak_bytes_held:,} bytes held"
    )
    print(f"{ATTACKER} before: {b.level}, peak risk {b.peak_risk:.4f}, {b.n_queries} queries, reasons {b.reasons}")
    where = "still resident" if result.attacker_resident_at_end else "evicted, back from its eviction record"
    print(
        f"{ATTACKER} after ({where}): {a.level}, peak risk {a.peak_risk:.4f}, {a.n_queries} queries, reasons {a.reasons}"
    )
    print("kept its level" if result.kept_level else "LOST ITS LEVEL")
    return 0 if result.kept_level else 1


if __name__ == "__main__":
    raise SystemExit(main())
