"""Heavy benign accounts: does the 0.1 % promise hold past the calibrated history length?

The benchmark's benign test accounts are all shorter than 512 queries, while the mixed
scenarios' accounts send 1,100 to 2,000: the false-positive rate of long accounts is not
measured by ``bench.eval``. This builds heavy benign users from the benign test pool, each
the test accounts of one kind sent one after another by one account (in time order, every
prompt once), until it passes ``--min-queries``; probewatch is calibrated exactly as
``bench.eval --calibration both`` calibrates it, and each heavy user is streamed as a new
account. Stitching different users of one kind gives a more varied heavy user than one
person would be, so this errs towards more false positives; it is a measurement of where the
calibration runs out, not a benign class of its own.

Then learning the provider's normal (:mod:`probewatch.detect.learning`): half of each kind's
heavy users are live accounts the engine learns from, the other half are scored after the
refit. Once with the default rules (accounts that reached ``watch`` never teach, so heavy
users the calibration cannot place teach nothing), once with the teaching half vouched for
up front (``Engine.mark_benign``: a provider marking the app-backend keys it knows).

    python -m bench.heavy_users [--size default] [--min-queries 512] [--per-kind 10]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from bench.traffic import AccountStream
from bench.traffic.shared_keys import stitched_heavy_users
from probewatch.cli.args import at_least


def learned_rates(benign, heavy: Sequence[AccountStream], vectors_of, embedder, seed: int, vouch: bool) -> dict:
    """Learn from every other heavy user of each kind (vouched for first when ``vouch``), then
    the sticky levels of the rest as new accounts; the warm-up rule is lowered to the number of
    teachers, since a benchmark has tens of heavy users where a provider has thousands."""
    import probewatch as pw
    from bench.unseen import NEVER, levels_of, rates, warm_up

    teach = [s for i, s in enumerate(heavy) if i % 2 == 0]
    score = [s for i, s in enumerate(heavy) if i % 2 == 1]
    engine = pw.Engine(
        embedder=embedder,
        benign=benign,
        device="cpu",
        seed=seed,
        campaigns=False,
        population_update_every=NEVER,
        population_min_accounts=len(teach),
    )
    if vouch:
        for k, stream in enumerate(teach):  # warm_up names its accounts "teach-<k>"
            engine.observe_embeddings([f"teach-{k}"], vectors_of(stream)[:1], stream.ts[:1])
            engine.mark_benign(f"teach-{k}")
        teach = [replace(s, prompts=s.prompts[1:], ts=s.ts[1:], is_attack=s.is_attack[1:]) for s in teach]
    learned = warm_up(engine, teach, vectors_of, "teach")
    return {**rates(levels_of(engine, score, vectors_of, "scored")), "warm_up": learned}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=["quick", "default"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-queries",
        type=at_least(2),
        default=None,
        help="default: 512 (100 with --size quick, whose accounts are shorter)",
    )
    parser.add_argument("--per-kind", type=at_least(1), default=10)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.min_queries is None:
        args.min_queries = 100 if args.size == "quick" else 512

    from bench.eval import OPERATING_FPRS
    from bench.unseen import calibrated_engine, embedded_benchmark, levels_of, rates

    embedder, traffic, data = embedded_benchmark(args.size, args.seed)
    heavy = stitched_heavy_users(traffic.test_benign, args.min_queries, args.per_kind, args.seed)
    if not heavy:
        print(f"no benign kind has {args.min_queries} queries of test accounts to stitch", file=sys.stderr)
        return 2
    engine = calibrated_engine(
        traffic.calibration, data.vectors_of, embedder, args.seed, *OPERATING_FPRS, "bench.heavy_users calibration"
    )
    levels = levels_of(engine, heavy, data.vectors_of, "heavy")
    lengths = sorted(len(s) for s in heavy)
    print(
        f"{len(heavy)} heavy benign users ({lengths[0]}-{lengths[-1]} queries), calibrated on "
        f"{len(traffic.calibration)} accounts; flag threshold {engine.detector.flag_threshold:.3f}"
    )
    overall = rates(levels)
    print(f"all: {overall['flag']:.1%} flagged, {overall['watch']:.1%} at watch or above (targets 0.1 % / 1 %)")
    for kind, count in sorted(Counter(s.kind for s in heavy).items()):
        mine = rates([lv for lv, s in zip(levels, heavy, strict=True) if s.kind == kind])
        print(f"  {kind:32s} {count:3d}  {mine['flag']:6.1%} flagged  {mine['watch']:6.1%} watch+")
    benign = engine.pipeline.benign
    for vouch in (False, True):
        after = learned_rates(benign, heavy, data.vectors_of, embedder, args.seed, vouch)
        how = "the teaching half vouched for" if vouch else "default rules"
        print(
            f"after learning ({how}; {after['warm_up']}): {after['flag']:.1%} flagged, "
            f"{after['watch']:.1%} at watch or above, of {after['accounts']} other heavy users"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
