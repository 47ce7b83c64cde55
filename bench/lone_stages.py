"""Where a lone query's detection time goes: one account with a long history, one query per
call (precomputed vectors, the embedding model out of it), a timer around each stage.

    python -m bench.lone_stages                      # 10k history, float16, 3,000 calls
    python -m bench.lone_stages --history 100000 --storage int8

Prints the median, mean and fastest call and each stage's mean share. The timers add about a
microsecond per stage; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import sys
import time
from collections.abc import Sequence

from probewatch.cli.args import at_least


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=at_least(1), default=10_000, help="queries the account holds")
    parser.add_argument("--storage", choices=("float16", "int8", "float32"), default="float16")
    parser.add_argument("--calls", type=at_least(100), default=3_000, help="timed lone calls")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import probewatch.engine as engine_module
    from bench.test_perf import _engine_with_history

    engine, fresh = _engine_with_history(args.history, storage=args.storage)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] += time.perf_counter() - started

        setattr(owner, name, wrapper)

    pipeline = engine.pipeline
    timed(engine_module, "check_vectors", "input checks")
    timed(engine_module, "check_items", "input checks")
    timed(pipeline.stream.reference, "query_stats", "benign reference (bank product)")
    timed(pipeline.stream.store, "search_then_add", "history search and add")
    timed(pipeline.stream, "_fold", "fold into the account's state")
    timed(pipeline.detector, "judge_with_evidence", "scoring (look-alike search, reasons)")
    if pipeline.campaigns is not None:
        timed(pipeline.campaigns, "observe", "campaign layer")
    queries = itertools.cycle(fresh[:, None, :])
    for _ in range(300):  # warm-up
        engine.observe_embeddings(["big"], next(queries))
    spent.clear()
    times = []
    for _ in range(args.calls):
        started = time.perf_counter()
        engine.observe_embeddings(["big"], next(queries))
        times.append(time.perf_counter() - started)
    total = sum(times)
    print(
        f"lone query at a {args.history:,} history ({args.storage}): median {1e3 * statistics.median(times):.3f} ms, "
        f"mean {1e3 * total / args.calls:.3f} ms, fastest {1e3 * min(times):.3f} ms ({args.calls:,} calls)"
    )
    for label, seconds in spent.most_common():
        print(f"  {label:<40} {1e3 * seconds / args.calls:.3f} ms  ({seconds / total:.0%})")
    rest = total - sum(spent.values())
    print(f"  {'the rest (verdicts, locks, bookkeeping)':<40} {1e3 * rest / args.calls:.3f} ms  ({rest / total:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
