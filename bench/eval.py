"""The detection benchmark: probewatch and the published baselines on labelled account traffic.

    python -m bench.eval --size quick --out bench/out/quick
    probewatch eval --size default --detectors probewatch,prada

Protocol (the README of bench/traffic describes the traffic):

1. build the traffic for ``(size, seed)`` and embed every distinct prompt once (on-disk cache);
2. fit every detector on the benign *calibration* accounts only, and take its thresholds at
   0.1 % and 1 % account-level false-positive rate from that same benign data: probewatch's
   own calibrated ``flag`` and ``watch`` thresholds, and for each baseline
   :meth:`StreamingBaseline.calibrated_threshold` over its calibration score streams;
3. stream every test account (the benign test pool and every attack scenario) through each
   detector in time order, one fresh account at a time, recording a score after every query;
4. compare each scenario's attack accounts with the benign test pool (``bench/metrics.py``)
   and write report.md, results.json and plots (``bench/report.py``) to ``--out``;
5. (``--unseen``, on by default) probewatch on apps its calibration never saw: leave one
   benign population out, learning the provider's normal, and a poisoned warm-up
   (``bench/unseen.py``).

Calibration (``--calibration both``, the default, as the shipped calibration) is
``build_traffic``'s calibration accounts plus the calibration half of every benign population
of ``bench/traffic/populations.py``; the populations' test half joins the benign test pool.
``--calibration populations`` leaves ``build_traffic``'s calibration out (its benign test
accounts are then a generator the calibration never saw); ``--calibration traffic`` uses
``build_traffic``'s alone (no populations, no ``--unseen``).
"""

from __future__ import annotations

import abc
import argparse
import random
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.embedcache import add_embed_backend_flag, embed_backend_words
from bench.metrics import account_score, delay_summary, flagged_share, queries_until_detection, roc_auc
from bench.traffic import (
    HARD_BENIGN,
    HELDOUT_MIXED_SHARES,
    LONG_BENIGN,
    MIXED_SHARES,
    STRATEGIES,
    AccountStream,
    MissingDataPackageError,
    Traffic,
    build_traffic,
)
from bench.traffic.build import keep_disjoint
from bench.unseen import calibrated_engine, verdicts_as_new_account
from probewatch.detect.boilerplate import read_texts

PROBEWATCH = "probewatch"
BENIGN_POOL = "test_benign"
# The two account-level false-positive rates every detector is operated at; the first is the
# headline (probewatch's flag level), the second probewatch's watch level.
OPERATING_FPRS = (0.001, 0.01)
PRIMARY_FPR = OPERATING_FPRS[0]
# Texts per embedding call: each call writes one cache shard, so progress is saved this often.
EMBED_CHUNK = 512
# Accounts whose probewatch risk is traced query by query for the risk-over-time plot.
TRACED_ATTACK_SCENARIOS = ("template_sweep", "perturbation_chain", "coverage_kcenter", "mixed_10pct")
TRACED_BENIGN_KINDS = ("benign:power_user", "benign:edit_resender", "benign:rag_app", LONG_BENIGN)


# the scenarios the poisoning measurement replays: every pure strategy and every mixed share
PURE_AND_MIXED = (*STRATEGIES, *MIXED_SHARES)


def fpr_key(fpr: float) -> str:
    """JSON key of an operating point: 0.001 -> "0.001"."""
    return f"{fpr:g}"


def fpr_label(fpr: float) -> str:
    """Human label of an operating point: 0.001 -> "0.1%"."""
    return f"{fpr * 100:g}%"


# -- embedded traffic --------------------------------------------------------------------------
@dataclass
class EmbeddedTraffic:
    """The traffic plus one unit vector per distinct prompt text."""

    traffic: Traffic
    vectors: np.ndarray  # (n distinct texts, dim) float32
    row_of: dict[str, int]
    # embeds texts no stream of the traffic reads (streams built later, such as the poisoned
    # warm-up's, read some of their prompts otherwise); None: every text must be in row_of
    embed: Callable[[list[str]], np.ndarray] | None = None

    def vectors_of(self, stream: AccountStream) -> np.ndarray:
        """The stream's vectors as the engine embeds its prompts (``boilerplate.read_texts``)."""
        read = read_texts(stream.prompts)
        missing = list(dict.fromkeys(t for t in read if t not in self.row_of))
        if missing and self.embed is not None:
            self.row_of.update({t: len(self.vectors) + k for k, t in enumerate(missing)})
            self.vectors = np.concatenate([self.vectors, np.asarray(self.embed(missing), dtype=self.vectors.dtype)])
        return self.vectors[[self.row_of[text] for text in read]]

    def test_pools(self) -> dict[str, list[AccountStream]]:
        """Every stream that is scored: the benign test pool first, then each attack scenario."""
        return {BENIGN_POOL: list(self.traffic.test_benign), **self.traffic.attacks}


def embed_traffic(traffic: Traffic, cache, show_progress: bool = True) -> EmbeddedTraffic:
    """Embed every distinct prompt once; texts already in ``cache`` are read back, not re-encoded."""
    texts = traffic.all_texts()
    missing = [text for text in texts if text not in cache]
    with tqdm(
        total=len(missing), desc="embedding", unit="text", mininterval=1.0, disable=not show_progress or not missing
    ) as bar:
        for start in range(0, len(missing), EMBED_CHUNK):
            part = missing[start : start + EMBED_CHUNK]
            cache.embed(part)
            bar.update(len(part))
    vectors = cache.embed(texts)
    return EmbeddedTraffic(traffic, vectors, {text: row for row, text in enumerate(texts)}, cache.embed)


def with_populations(traffic: Traffic, populations, keep_traffic_calibration: bool = True) -> Traffic:
    """``traffic`` calibrated on every population's calibration half (and its own calibration
    accounts unless ``keep_traffic_calibration`` is False), with the populations' test half
    added to the benign test pool. A test or attack prompt that equals a calibration prompt is
    re-edited (``keep_disjoint``), as ``build_traffic`` does for its own split."""
    calibration = [s for streams in populations.calibration.values() for s in streams]
    if keep_traffic_calibration:
        calibration += list(traffic.calibration)
    test_benign = list(traffic.test_benign) + [s for streams in populations.test.values() for s in streams]
    attacks = {name: list(streams) for name, streams in traffic.attacks.items()}
    others = test_benign + [s for streams in attacks.values() for s in streams]
    keep_disjoint(random.Random(f"{traffic.size}:{traffic.seed}:populations"), calibration, others)
    return Traffic(traffic.size, traffic.seed, calibration, test_benign, attacks)


# -- detectors under test -------------------------------------------------------------------
@dataclass
class StreamScores:
    """One account's scores after each of its queries, plus probewatch's extras."""

    scores: np.ndarray  # float64 (n,); NaN while the detector cannot score yet
    risks: np.ndarray | None = None  # probewatch: verdict.risk per query
    reasons: dict[float, list[str]] = field(default_factory=dict)  # operating fpr -> reasons when first reached


class DetectorUnderTest(abc.ABC):
    """Common face of probewatch and the baselines: fit on calibration, then score streams."""

    name: str

    def __init__(self) -> None:
        self.thresholds: dict[float, float] = {}  # operating fpr -> score threshold, from calibration only
        self.fitted_accounts: list[str] = []

    @abc.abstractmethod
    def fit(self, calibration: list[AccountStream], data: EmbeddedTraffic, on_account: Callable[[], None]) -> None:
        """Fit on benign calibration streams and set ``thresholds``; calls ``on_account`` per stream done."""

    @abc.abstractmethod
    def score(self, stream: AccountStream, data: EmbeddedTraffic) -> StreamScores:
        """Scores of one account's stream as a fresh account, in time order."""


class ProbewatchUnderTest(DetectorUnderTest):
    """The engine, calibrated from scratch on the calibration accounts; its own thresholds."""

    name = PROBEWATCH

    def __init__(self, embedder, seed: int, storage: str | None = None) -> None:
        super().__init__()
        self.embedder = embedder
        self.seed = seed
        self.storage = storage  # None: the engine's default
        self.engine = None
        self._fresh = 0

    def fit(self, calibration, data, on_account) -> None:
        self.engine = calibrated_engine(
            calibration,
            data.vectors_of,
            self.embedder,
            self.seed,
            OPERATING_FPRS[0],
            OPERATING_FPRS[1],
            "bench.eval calibration accounts",
            **({} if self.storage is None else {"storage": self.storage}),
        )
        detector = self.engine.detector
        self.thresholds = {
            OPERATING_FPRS[0]: float(detector.flag_threshold),
            OPERATING_FPRS[1]: float(detector.watch_threshold),
        }
        self.fitted_accounts = [s.account for s in calibration]
        for _ in calibration:
            on_account()

    def score(self, stream, data) -> StreamScores:
        self._fresh += 1
        account = f"eval-{self._fresh}"  # never seen by the engine before
        verdicts = verdicts_as_new_account(self.engine, stream, data.vectors_of(stream), account)
        scores = np.array([v.score for v in verdicts], dtype=np.float64)
        reasons = {}
        for fpr, threshold in self.thresholds.items():
            first = queries_until_detection(scores, threshold)
            if first is not None:
                reasons[fpr] = [r.feature for r in verdicts[first - 1].reasons]
        return StreamScores(scores, np.array([v.risk for v in verdicts], dtype=np.float64), reasons)


class BaselineUnderTest(DetectorUnderTest):
    """A :class:`StreamingBaseline` with thresholds from its calibration score streams."""

    def __init__(self, baseline) -> None:
        super().__init__()
        self.baseline = baseline
        self.name = baseline.name

    def fit(self, calibration, data, on_account) -> None:
        self.baseline.fit([data.vectors_of(s) for s in calibration])
        benign_streams = []
        for stream in calibration:
            benign_streams.append(self.baseline.score_stream(data.vectors_of(stream)))
            on_account()
        self.thresholds = {
            fpr: float(self.baseline.calibrated_threshold(benign_streams, fpr)) for fpr in OPERATING_FPRS
        }
        self.fitted_accounts = [s.account for s in calibration]

    def score(self, stream, data) -> StreamScores:
        return StreamScores(np.asarray(self.baseline.score_stream(data.vectors_of(stream)), dtype=np.float64))


def detector_names(seed: int = 0) -> list[str]:
    from bench.baselines import all_baselines

    return [PROBEWATCH] + [b.name for b in all_baselines(seed)]


def make_detectors(names: Sequence[str], embedder, seed: int, storage: str | None = None) -> list[DetectorUnderTest]:
    from bench.baselines import all_baselines

    baselines = {b.name: b for b in all_baselines(seed)}
    return [
        ProbewatchUnderTest(embedder, seed, storage) if name == PROBEWATCH else BaselineUnderTest(baselines[name])
        for name in names
    ]


# -- running ---------------------------------------------------------------------------------
@dataclass
class DetectorRun:
    """Everything one detector produced: thresholds, what it was fitted on, per-stream scores."""

    name: str
    thresholds: dict[float, float]
    fitted_accounts: list[str]
    scores: dict[str, StreamScores]  # test account id -> scores
    fit_seconds: float
    score_seconds: float


def run_detector(detector: DetectorUnderTest, data: EmbeddedTraffic, show_progress: bool = True) -> DetectorRun:
    calibration = data.traffic.calibration
    tests = [s for streams in data.test_pools().values() for s in streams]
    calibration_ids = {s.account for s in calibration}
    leaked = calibration_ids & {s.account for s in tests}
    if leaked:  # the protocol's one hard rule; the traffic build guarantees it, this proves it per run
        raise RuntimeError(f"{len(leaked)} calibration accounts are also test accounts, e.g. {sorted(leaked)[:3]}")
    with tqdm(
        total=len(calibration) + len(tests),
        desc=f"{detector.name:>14}",
        unit="acct",
        mininterval=1.0,
        disable=not show_progress,
    ) as bar:
        bar.set_postfix_str("fitting on calibration")
        started = time.perf_counter()
        detector.fit(calibration, data, lambda: bar.update(1))
        fit_seconds = time.perf_counter() - started
        if set(detector.fitted_accounts) != calibration_ids:
            raise RuntimeError(f"{detector.name} was fitted on accounts other than the calibration accounts")
        bar.set_postfix_str("scoring test accounts")
        started = time.perf_counter()
        scores = {}
        for stream in tests:
            scores[stream.account] = detector.score(stream, data)
            bar.update(1)
        score_seconds = time.perf_counter() - started
    return DetectorRun(
        detector.name, dict(detector.thresholds), list(detector.fitted_accounts), scores, fit_seconds, score_seconds
    )


# -- metrics ---------------------------------------------------------------------------------
def account_records(data: EmbeddedTraffic, runs: list[DetectorRun]) -> list[dict[str, Any]]:
    """One record per scored account: ground truth, and per detector its account score and
    queries until detection at each operating point (None = never detected)."""
    records = []
    for pool, streams in data.test_pools().items():
        for stream in streams:
            record: dict[str, Any] = {
                "account": stream.account,
                "pool": pool,
                "kind": stream.kind,
                "label": stream.label,
                "campaign": stream.campaign,
                "queries": len(stream),
                "attack_queries": int(sum(stream.is_attack)),
                "score": {},
                "queries_until_detection": {},
            }
            for run in runs:
                stream_scores = run.scores[stream.account]
                record["score"][run.name] = account_score(stream_scores.scores)
                record["queries_until_detection"][run.name] = {
                    fpr_key(fpr): queries_until_detection(stream_scores.scores, threshold)
                    for fpr, threshold in run.thresholds.items()
                }
                if stream_scores.reasons:
                    record["reasons"] = {fpr_key(fpr): names for fpr, names in stream_scores.reasons.items()}
            records.append(record)
    return records


def scenario_metrics(benign: list[dict], attack: list[dict], run: DetectorRun) -> dict[str, Any]:
    """AUC, TPR and queries until detection of one detector on one scenario vs the benign pool."""
    name = run.name
    benign_scores = [r["score"][name] for r in benign]
    attack_scores = [r["score"][name] for r in attack]
    out: dict[str, Any] = {
        "auc": roc_auc(benign_scores, attack_scores),
        "tpr": {fpr_key(f): flagged_share(attack_scores, t) for f, t in run.thresholds.items()},
        "benign_fpr": {fpr_key(f): flagged_share(benign_scores, t) for f, t in run.thresholds.items()},
        "queries_until_detection": {
            fpr_key(f): delay_summary(r["queries_until_detection"][name][fpr_key(f)] for r in attack)
            for f in run.thresholds
        },
    }
    campaigns = sorted({r["campaign"] for r in attack if r["campaign"]})
    if campaigns:
        out["campaigns"] = {}
        for campaign in campaigns:
            members = [r["score"][name] for r in attack if r["campaign"] == campaign]
            out["campaigns"][campaign] = {
                "accounts": len(members),
                "flagged_share": {fpr_key(f): flagged_share(members, t) for f, t in run.thresholds.items()},
                "detected": {fpr_key(f): bool(max(members) >= t) for f, t in run.thresholds.items()},
            }
    return out


def benign_metrics(benign: list[dict], run: DetectorRun) -> dict[str, Any]:
    """Realised false-positive rate on the benign test pool, overall and per benign class, with
    (for probewatch) the most frequent reasons of the flagged accounts."""
    kinds = ["benign:normal", *list(HARD_BENIGN)]
    kinds += sorted({r["kind"] for r in benign} - set(kinds))

    def block(records: list[dict]) -> dict[str, Any]:
        scores = [r["score"][run.name] for r in records]
        out: dict[str, Any] = {
            "accounts": len(records),
            "fpr": {fpr_key(f): flagged_share(scores, t) for f, t in run.thresholds.items()},
            "flagged": {fpr_key(f): int(sum(s >= t for s in scores)) for f, t in run.thresholds.items()},
        }
        if run.name == PROBEWATCH:
            out["top_reasons"] = {}
            for fpr, threshold in run.thresholds.items():
                counts = Counter(
                    name
                    for r in records
                    if r["score"][run.name] >= threshold
                    for name in r.get("reasons", {}).get(fpr_key(fpr), [])
                )
                out["top_reasons"][fpr_key(fpr)] = [[name, n] for name, n in counts.most_common(3)]
        return out

    result = block(benign)
    result["by_kind"] = {
        kind: block([r for r in benign if r["kind"] == kind])
        for kind in kinds
        if any(r["kind"] == kind for r in benign)
    }
    return result


def risk_traces(data: EmbeddedTraffic, runs: list[DetectorRun], records: list[dict]) -> list[dict[str, Any]]:
    """probewatch's risk after every query for a few attack and hard-benign accounts."""
    run = next((r for r in runs if r.name == PROBEWATCH), None)
    if run is None:
        return []
    pools = data.test_pools()
    picked: list[tuple[AccountStream, str]] = []
    for scenario in TRACED_ATTACK_SCENARIOS:
        if pools.get(scenario):
            picked.append((pools[scenario][0], scenario))
    score_of = {r["account"]: r["score"][PROBEWATCH] for r in records}
    for kind in TRACED_BENIGN_KINDS:
        members = [s for s in pools[BENIGN_POOL] if s.kind == kind]
        if members:  # the class member probewatch finds most suspicious: the hard case
            picked.append((max(members, key=lambda s: score_of[s.account]), BENIGN_POOL))
    traces = []
    for stream, pool in picked:
        risks = run.scores[stream.account].risks
        traces.append(
            {
                "account": stream.account,
                "pool": pool,
                "kind": stream.kind,
                "label": stream.label,
                "risk": [float(x) for x in risks],
                "is_attack": [bool(x) for x in stream.is_attack],
            }
        )
    return traces


def blended_metrics(records: list[dict], runs: list[DetectorRun]) -> dict[str, Any]:
    """Each mixed scenario against the benign users of its own length (``LONG_BENIGN``, built as
    the mixed accounts' benign part is): per detector the AUC, the median mixed account score and
    the highest long benign one. Empty when the traffic has no such users."""
    longs = [r for r in records if r["pool"] == BENIGN_POOL and r["kind"] == LONG_BENIGN]
    if not longs:
        return {}
    out: dict[str, Any] = {"long_benign_accounts": len(longs), "scenarios": {}}
    for scenario in (*MIXED_SHARES, *HELDOUT_MIXED_SHARES):
        mixed = [r for r in records if r["pool"] == scenario]
        if not mixed:
            continue
        per_detector = {}
        for run in runs:
            long_scores = [r["score"][run.name] for r in longs]
            mixed_scores = [r["score"][run.name] for r in mixed]
            per_detector[run.name] = {
                "auc": roc_auc(long_scores, mixed_scores),
                "median_mixed_score": float(np.nanmedian(mixed_scores)),
                "max_long_benign_score": float(np.nanmax(long_scores)),
            }
        out["scenarios"][scenario] = per_detector
    return out


# A benign class needs this many test accounts before it can be called a scenario's double.
MIN_DOUBLE_ACCOUNTS = 10


def benign_doubles(records: list[dict], detector: str, min_accounts: int = MIN_DOUBLE_ACCOUNTS) -> dict[str, Any]:
    """Per attack scenario, the benign test class that ``detector`` tells apart from it worst
    (lowest AUC of that class against the scenario's accounts), with that AUC, the share of the
    class scoring at or above the scenario's median account and the AUC against every benign
    account: which benign traffic a scenario looks like, measured rather than assumed. Returns
    ``{"min_accounts": ..., "scenarios": {scenario: {...}}}``."""
    benign = [r for r in records if r["pool"] == BENIGN_POOL]
    classes: dict[str, list[float]] = {}
    for r in benign:
        classes.setdefault(r["kind"], []).append(r["score"][detector])
    classes = {kind: scores for kind, scores in classes.items() if len(scores) >= min_accounts}
    everyone = [r["score"][detector] for r in benign]
    out: dict[str, Any] = {}
    for scenario in dict.fromkeys(r["pool"] for r in records if r["pool"] != BENIGN_POOL):
        attack = [r["score"][detector] for r in records if r["pool"] == scenario]
        if not attack or not classes:
            continue
        aucs = {kind: roc_auc(scores, attack) for kind, scores in classes.items()}
        kind = min(aucs, key=lambda k: (aucs[k], k))
        median = float(np.nanmedian(attack))
        scores = np.asarray(classes[kind], dtype=np.float64)
        out[scenario] = {
            "double": kind,
            "double_accounts": len(scores),
            "auc_vs_double": aucs[kind],
            "double_share_at_or_above_median": float(np.mean(np.nan_to_num(scores, nan=-np.inf) >= median)),
            "auc_vs_all_benign": roc_auc(everyone, attack),
        }
    return {"min_accounts": min_accounts, "scenarios": out}


def compute_results(data: EmbeddedTraffic, runs: list[DetectorRun]) -> dict[str, Any]:
    records = account_records(data, runs)
    benign = [r for r in records if r["pool"] == BENIGN_POOL]
    scenarios = {}
    for scenario, _streams in data.traffic.attacks.items():
        attack = [r for r in records if r["pool"] == scenario]
        scenarios[scenario] = {
            "accounts": len(attack),
            "kinds": sorted({r["kind"] for r in attack}),
            "queries": int(sum(r["queries"] for r in attack)),
            "attack_queries": int(sum(r["attack_queries"] for r in attack)),
            "detectors": {run.name: scenario_metrics(benign, attack, run) for run in runs},
        }
    return {
        "blended": blended_metrics(records, runs),
        "doubles": benign_doubles(records, PROBEWATCH) if any(run.name == PROBEWATCH for run in runs) else {},
        "detectors": {
            run.name: {
                "thresholds": {fpr_key(f): t for f, t in run.thresholds.items()},
                "fit_seconds": run.fit_seconds,
                "score_seconds": run.score_seconds,
                "fitted_accounts": sorted(run.fitted_accounts),
                "benign": benign_metrics(benign, run),
            }
            for run in runs
        },
        "scenarios": scenarios,
        "accounts": records,
        "risk_traces": risk_traces(data, runs, records),
    }


def run_unseen(data: EmbeddedTraffic, populations, embedder, seed: int, show_progress: bool) -> dict[str, Any]:
    """bench/unseen.py's three measurements over the embedded traffic."""
    from bench import unseen

    factory = unseen.EngineFactory(data.vectors_of, embedder, seed, OPERATING_FPRS[0], OPERATING_FPRS[1])
    with tqdm(total=len(populations.calibration), desc="unseen apps", unit="pop", disable=not show_progress) as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        by_population = unseen.leave_one_population_out(
            factory, populations.calibration, populations.test, seed, progress=step
        )
    chat_users = [s for s in data.traffic.test_benign if s.kind == "benign:normal"]
    attacks = {name: data.traffic.attacks[name] for name in PURE_AND_MIXED if name in data.traffic.attacks}
    poisoning = unseen.poisoning(factory, populations.calibration, populations.test, chat_users, attacks, seed)
    return {"populations": by_population, "poisoning": poisoning}


# -- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.eval",
        description="Detection benchmark: probewatch and published baselines on labelled account traffic.",
    )
    parser.add_argument(
        "--size",
        choices=("quick", "default"),
        default="quick",
        help="traffic size: quick (~1.7k distinct texts, CI) or default (~44k)",
    )
    parser.add_argument("--seed", type=int, default=0, help="traffic and detector seed")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default bench/out/<size>)")
    parser.add_argument(
        "--detectors",
        default=None,
        help="comma-separated detectors to run (default: all): " + ",".join(detector_names()),
    )
    parser.add_argument(
        "--calibration",
        choices=("both", "populations", "traffic"),
        default="both",
        help="calibration accounts: build_traffic's and every benign population's calibration half (both, the "
        "default, as the shipped calibration), the populations' only, or build_traffic's only",
    )
    parser.add_argument(
        "--unseen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run leave-one-population-out, warm-up and poisoning (bench/unseen.py; default on)",
    )
    add_embed_backend_flag(parser)
    parser.add_argument(
        "--storage",
        default=None,
        help="probewatch's history storage, float16 (the engine's default), float32 or int8",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    known = detector_names(args.seed)
    if args.detectors is None:
        args.detectors = known
    else:
        args.detectors = [name.strip() for name in args.detectors.split(",") if name.strip()]
        unknown = [name for name in args.detectors if name not in known]
        if unknown or not args.detectors:
            parser.error(f"unknown detector(s) {unknown or args.detectors}; choose from {','.join(known)}")
        args.detectors = list(dict.fromkeys(args.detectors))  # keep order, drop repeats
    if args.out is None:
        args.out = Path("bench") / "out" / args.size
    return args


def reproducing_command(args: argparse.Namespace) -> str:
    words = ["--size", args.size, "--seed", str(args.seed), "--out", str(args.out)]
    words += ["--detectors", ",".join(args.detectors), "--calibration", args.calibration]
    words += embed_backend_words(args.embed_backend)
    if getattr(args, "storage", None) is not None:
        words += ["--storage", args.storage]
    return "python -m bench.eval " + shlex.join(words + ([] if args.unseen else ["--no-unseen"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench import report
    from bench.embedcache import EmbeddingCache

    timings: dict[str, float] = {}
    show = not args.quiet
    started = time.perf_counter()
    import probewatch as pw

    embedder = pw.Embedder(device="cpu", backend=args.embed_backend)
    cache = EmbeddingCache(embedder)
    timings["load_model"] = time.perf_counter() - started

    mark = time.perf_counter()
    try:
        traffic = build_traffic(args.size, args.seed, embed=cache.embed)
        populations = None
        if args.calibration in ("populations", "both"):
            from bench.traffic.populations import build_populations

            populations = build_populations(args.size, args.seed)
    except MissingDataPackageError as exc:
        print(f"bench.eval: {exc}", file=sys.stderr)
        return 2
    if populations is not None:
        traffic = with_populations(traffic, populations, keep_traffic_calibration=args.calibration == "both")
    timings["build_traffic"] = time.perf_counter() - mark

    mark = time.perf_counter()
    cached_before = sum(text in cache for text in traffic.all_texts())
    data = embed_traffic(traffic, cache, show)
    timings["embed"] = time.perf_counter() - mark

    runs = []
    for detector in make_detectors(args.detectors, embedder, args.seed, args.storage):
        runs.append(run_detector(detector, data, show))
    mark = time.perf_counter()
    results = compute_results(data, runs)
    timings["metrics"] = time.perf_counter() - mark
    if args.unseen and populations is not None:
        mark = time.perf_counter()
        results["unseen"] = run_unseen(data, populations, embedder, args.seed, show)
        timings["unseen"] = time.perf_counter() - mark
    timings["detectors"] = sum(r.fit_seconds + r.score_seconds for r in runs)

    results["meta"] = {
        "size": args.size,
        "seed": args.seed,
        "detectors": list(args.detectors),
        "operating_fprs": [fpr_key(f) for f in OPERATING_FPRS],
        "primary_fpr": fpr_key(PRIMARY_FPR),
        "command": reproducing_command(args),
        "embedding_model": embedder.model_id,
        "distinct_texts": len(data.row_of),
        "distinct_texts_cached_before": cached_before,
        "calibration_accounts": len(traffic.calibration),
        "benign_test_accounts": len(traffic.test_benign),
        "attack_accounts": sum(len(s) for s in traffic.attacks.values()),
        "traffic": traffic.describe(),
        "timings_seconds": timings,
    }
    results["protocol"] = {
        "calibration_accounts": sorted(s.account for s in traffic.calibration),
        "scored_accounts": sorted(r["account"] for r in results["accounts"]),
    }
    mark = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    written = report.write_all(results, args.out)
    timings["report"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    report.write_text_outputs(results, args.out)  # again, with the final timings

    print()
    print(report.main_table(results))
    print()
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
