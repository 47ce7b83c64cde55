"""Unseen apps, held out across every source: a benign kind no calibration account shares.

``bench.eval``'s leave-one-population-out table calibrates on the other 23 *populations*
(bench/traffic/populations.py) and leaves the benchmark's original benign generator out of
it. Two benign kinds come from both sources (editing and re-sending users, for one), and the
generator has kinds no population has (summarisation and translation apps, support bots,
retrieval apps). This holds a kind out of the full calibration that ``bench.eval
--calibration both`` and the shipped calibration fit on, every source at once, and streams
every account of that kind (its calibration and test accounts) as a new account.

    python -m bench.unseen_kinds [--size default] [--kinds edit_resender,summarisation_app,...]

Without ``--kinds``: every kind of the calibration, one fit each (about a minute a kind at
default size on two cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=["quick", "default"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="", help="comma-separated kinds without 'benign:' (default: every kind)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from bench.eval import OPERATING_FPRS
    from bench.unseen import calibrated_engine, embedded_benchmark, levels_of, rates

    embedder, traffic, data = embedded_benchmark(args.size, args.seed)
    known = Counter(s.kind for s in traffic.calibration)
    kinds = [f"benign:{k}" for k in args.kinds.split(",") if k] or sorted(known)
    unknown = [k for k in kinds if k not in known]
    if unknown:
        print(f"no calibration account of kind {unknown}; kinds: {sorted(known)}", file=sys.stderr)
        return 2
    print(f"{'held-out kind':32s} {'accounts':>8s} {'% flag':>7s} {'% watch':>8s}  flag threshold  (fit s)")
    for kind in kinds:
        started = time.perf_counter()
        engine = calibrated_engine(
            [s for s in traffic.calibration if s.kind != kind],
            data.vectors_of,
            embedder,
            args.seed,
            *OPERATING_FPRS,
            f"bench.unseen_kinds: every calibration account but {kind}",
            campaigns=False,
        )
        held_out = [s for s in traffic.calibration + traffic.test_benign if s.kind == kind]
        got = rates(levels_of(engine, held_out, data.vectors_of, "unseen"))
        print(
            f"{kind:32s} {got['accounts']:8d} {got['flag']:7.1%} {got['watch']:8.1%}  "
            f"{engine.detector.flag_threshold:14.3f}  ({time.perf_counter() - started:.0f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
