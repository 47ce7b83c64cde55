"""Payload space: does scoring each query minus its account's recent mean catch template sweeps?

A template sweep wraps every dataset item in one fixed instruction, and MiniLM puts the
instruction's direction into every vector: the account's queries sit close together, as the
queries of a benign single-purpose app do, and the look-alike search cannot tell them apart
(issue 10: template sweeps 30 % at 0.1 %, their nearest benign class a summarisation app).
Subtracting the mean of the account's previous ``--window`` queries from each query and
renormalising (:func:`centred`) removes what the account keeps sending and leaves what each
query adds: a sweep's payloads then look like a corpus sweep, which probewatch catches.

This calibrates probewatch twice on the benchmark's calibration accounts, once on the raw
vectors and once on centred ones (the campaign layer off: each account judged alone), streams
the benign test pool and every attack scenario through both, and prints per scenario the ROC
AUC against the benign test pool, the share flagged at each engine's own calibrated 0.1 %
threshold, and the shares above the benign test pool's 0.2 % and 1 % quantiles (every column
at the same realised false-positive rate). A third column, ``both``, scores each query by the
lower of its two scores, each divided by its engine's flag threshold: an account must look
unusual in both spaces at once. It has no calibrated threshold of its own (that would need the
fused score cross-fitted on calibration accounts, as the engine fits its own), so it shows
quantile columns only. ``--lopo`` also holds the named benign kinds out of both calibrations
and streams their accounts as unseen apps.

    python -m bench.payload_space [--size default] [--window 16] [--lopo translation_app,classification]

About 2.5 minutes per engine at default size on two cores, and a minute per held-out kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

# A centred row shorter than this is a query that nearly repeats the account's recent mean (an
# exact re-send by an account that sends one prompt): it has no payload of its own and is kept raw.
MIN_PAYLOAD_NORM = 0.05


def centred(vectors: np.ndarray, window: int) -> np.ndarray:
    """Each row minus the mean of the ``window`` rows before it, renormalised (causal: a row
    never depends on later ones). The first row, and rows within MIN_PAYLOAD_NORM of that
    mean, are kept as they were."""
    if window < 1:
        raise ValueError(f"window must be at least 1 query, got {window}")
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a (queries, dim) array, got shape {x.shape}")
    sums = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    row = np.arange(len(x))
    first = np.maximum(0, row - window)
    mean = (sums[row] - sums[first]) / np.maximum(row - first, 1)[:, None]
    payload = x - mean
    norm = np.linalg.norm(payload, axis=1, keepdims=True)
    out = np.where(norm > MIN_PAYLOAD_NORM, payload / np.maximum(norm, 1e-12), x)
    return out.astype(np.float32)


def _streamed(engine, streams: Sequence, vectors_of: Callable) -> list[tuple[np.ndarray, str]]:
    """Each stream as a new account: its score after every query, and its level at the end."""
    from bench.unseen import verdicts_as_new_account

    out = []
    for i, stream in enumerate(streams):
        verdicts = verdicts_as_new_account(engine, stream, vectors_of(stream), f"payload-space-{i}")
        scores = np.array([v.score for v in verdicts], dtype=np.float64)
        out.append((scores, verdicts[-1].level.value if verdicts else "ok"))
    return out


def _peak(scores: np.ndarray) -> float:
    return float(np.nanmax(scores)) if len(scores) and not np.isnan(scores).all() else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=["quick", "default"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=16, help="earlier queries whose mean is removed (default 16)")
    parser.add_argument("--lopo", default="", help="comma-separated benign kinds (without 'benign:') to hold out")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.window < 1:
        print(f"--window must be at least 1, got {args.window}", file=sys.stderr)
        return 2

    from bench.eval import OPERATING_FPRS
    from bench.metrics import roc_auc
    from bench.unseen import calibrated_engine, embedded_benchmark, levels_of, rates

    embedder, traffic, data = embedded_benchmark(args.size, args.seed)
    known = Counter(s.kind for s in traffic.calibration)
    held_kinds = [f"benign:{k}" for k in args.lopo.split(",") if k]
    unknown = [k for k in held_kinds if k not in known]
    if unknown:
        print(f"no calibration account of kind {unknown}; kinds: {sorted(known)}", file=sys.stderr)
        return 2

    memo: dict[str, np.ndarray] = {}

    def centred_of(stream) -> np.ndarray:
        if stream.account not in memo:
            memo[stream.account] = centred(data.vectors_of(stream), args.window)
        return memo[stream.account]

    spaces = {"raw": data.vectors_of, f"centred ({args.window})": centred_of}
    scenarios = sorted(traffic.attacks)
    results, thresholds = {}, {}
    for name, vectors_of in spaces.items():
        started = time.perf_counter()
        engine = calibrated_engine(
            traffic.calibration,
            vectors_of,
            embedder,
            args.seed,
            *OPERATING_FPRS,
            f"bench.payload_space {name}",
            campaigns=False,
        )
        thresholds[name] = engine.detector.flag_threshold
        benign = _streamed(engine, traffic.test_benign, vectors_of)
        attacks = {s: _streamed(engine, traffic.attacks[s], vectors_of) for s in scenarios}
        results[name] = (benign, attacks)
        print(
            f"{name}: calibrated and scored in {time.perf_counter() - started:.0f} s "
            f"(flag threshold {thresholds[name]:.3f})",
            flush=True,
        )

    raw_name, centred_name = spaces

    def fused(a: list, b: list) -> list:
        return [
            (np.minimum(np.nan_to_num(x) / thresholds[raw_name], np.nan_to_num(y) / thresholds[centred_name]), "-")
            for (x, _), (y, _) in zip(a, b, strict=True)
        ]

    columns = dict(results)
    columns["both"] = (
        fused(results[raw_name][0], results[centred_name][0]),
        {s: fused(results[raw_name][1][s], results[centred_name][1][s]) for s in scenarios},
    )
    print(
        "\nper scenario: AUC against the benign test pool / flagged at the engine's 0.1 % threshold / "
        "above the benign test pool's 0.2 % and 1 % quantiles"
    )
    print(f"{'scenario':30s}" + "".join(f"{name:>30s}" for name in columns))
    for scenario in scenarios:
        line = f"{scenario:30s}"
        for name, (benign, attacks) in columns.items():
            b = np.array([_peak(x) for x, _ in benign])
            a = np.array([_peak(x) for x, _ in attacks[scenario]])
            flagged = (
                f"{np.mean([level == 'flag' for _, level in attacks[scenario]]):5.0%}" if name != "both" else "    -"
            )
            q2, q10 = np.quantile(b, [0.998, 0.99])
            line += f"{roc_auc(b, a):>12.3f} {flagged} {np.mean(a > q2):5.0%} {np.mean(a > q10):5.0%}"
        print(line)
    kinds = [s.kind for s in traffic.test_benign]
    for name in spaces:
        benign, _ = results[name]
        flagged = Counter(kind for kind, (_, level) in zip(kinds, benign, strict=True) if level == "flag")
        watched = Counter(kind for kind, (_, level) in zip(kinds, benign, strict=True) if level in ("flag", "watch"))
        print(
            f"{name}: benign test accounts flagged {sum(flagged.values())} of {len(benign)} {dict(flagged)}; "
            f"at watch or flag {sum(watched.values())}"
        )
    b = np.array([_peak(x) for x, _ in columns["both"][0]])
    top = Counter(kinds[i] for i in np.argsort(-b)[: max(1, len(b) // 100)])
    print(f"both: the benign test pool's top 1 % by kind {dict(top)}")

    if held_kinds:
        print(
            f"\n{'held-out kind':32s} {'accounts':>8s}" + "".join(f"{name + ' flag / watch':>34s}" for name in spaces)
        )
    for kind in held_kinds:
        held_out = [s for s in traffic.calibration + traffic.test_benign if s.kind == kind]
        line = f"{kind:32s} {len(held_out):8d}"
        for name, vectors_of in spaces.items():
            engine = calibrated_engine(
                [s for s in traffic.calibration if s.kind != kind],
                vectors_of,
                embedder,
                args.seed,
                *OPERATING_FPRS,
                f"bench.payload_space {name} without {kind}",
                campaigns=False,
            )
            got = rates(levels_of(engine, held_out, vectors_of, "payload-space-unseen"))
            line += f"{got['flag']:>26.1%} / {got['watch']:5.1%}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
