"""Hydra campaigns benchmark: many light accounts, blended traffic, reasoning harvesting.

    python -m bench.hydra_eval --size quick --out bench/out/hydra-quick
    python -m bench.hydra_eval --size default --out docs/benchmark/hydra

Protocol (``bench/traffic/README.md``, "Hydra campaigns", describes the traffic):

1. build the hydra traffic for ``(size, seed)`` and embed every distinct prompt once;
2. fit every detector on the benign *calibration* accounts only; thresholds at 0.1 % account
   FPR from that benign data (probewatch: its own calibrated ``flag`` level for accounts and
   for groups);
3. replay, for each of three runs, the whole benign test traffic (ordinary users and every
   benign look-alike crowd) with every attack scenario of the run interleaved in time
   through ONE probewatch engine: run ``content`` holds the campaigns whose members share
   no infrastructure (rotating residential proxies), run ``meta`` their twins with shared
   infrastructure (same prompts, other accounts and metadata), run ``split`` the main
   benchmark's split campaigns (``bench.eval`` scores those accounts one at a time).
   Per-account detectors (probewatch with its campaign layer off, and the baselines)
   score each account alone;
4. per scenario: share of campaigns detected (a member flagged within the first
   ``DETECTION_BUDGET`` campaign queries), member recall and precision, campaign queries
   until detection; per benign scenario: account FPR and the share of crowds with a member
   flagged through a campaign.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.embedcache import add_embed_backend_flag, embed_backend_words
from bench.eval import OPERATING_FPRS, PRIMARY_FPR, BaselineUnderTest, fpr_label
from bench.traffic import AccountStream, Traffic, build_traffic
from bench.traffic.hydra import HYDRA_ATTACKS, HydraTraffic, build_hydra
from probewatch.cli.args import above
from probewatch.detect.boilerplate import BoilerplateMemory, read_texts

DAY = 86_400.0

PROBEWATCH = "probewatch"
PER_ACCOUNT = "probewatch (per-account only)"
DETECTION_BUDGET = 2000  # campaign queries within which a campaign counts as detected (issue 9)
REPLAY_BATCH = 64
SALT = "70726f62657761746368" * 2  # fixed metadata key: runs are reproducible
RUNS = {
    "content": tuple(HYDRA_ATTACKS),
    "meta": tuple(f"{a}_meta" for a in HYDRA_ATTACKS),
    "split": ("split_10", "split_50", "split_200"),  # bench.eval's split campaigns, replayed interleaved
}


@dataclass
class Embedded:
    """Hydra traffic plus one unit vector per distinct prompt."""

    traffic: HydraTraffic
    vectors: np.ndarray
    row_of: dict[str, int]

    def vectors_of(self, stream: AccountStream) -> np.ndarray:
        return self.vectors[[self.row_of[t] for t in read_texts(stream.prompts)]]


def add_split_campaigns(traffic: HydraTraffic, main: Traffic) -> None:
    """The main benchmark's split campaigns (one strategy dealt out in slices to 10, 50 or
    200 quiet accounts, no metadata) as attack scenarios here, moved into the test period:
    bench.eval scores their accounts one by one; here they meet the benign traffic."""
    offset = traffic.period[0] + DAY - min(t for name in RUNS["split"] for s in main.attacks[name] for t in s.ts)
    for name in RUNS["split"]:
        traffic.attacks[name] = [
            dataclasses.replace(s, ts=[t + offset for t in s.ts], meta=None) for s in main.attacks[name]
        ]


def embed(traffic: HydraTraffic, cache) -> Embedded:
    texts = traffic.all_texts()
    vectors = cache.embed(texts)
    return Embedded(traffic, vectors, {t: i for i, t in enumerate(texts)})


# -- probewatch with its campaign layer, replayed interleaved ------------------------------
def fit_probewatch(data: Embedded, embedder, seed: int, **overrides):
    import probewatch as pw

    calibration = data.traffic.calibration
    return pw.Engine.from_benign_embeddings(
        [s.account for s in calibration for _ in s.prompts],
        np.concatenate([data.vectors_of(s) for s in calibration]),
        [t for s in calibration for t in s.ts],
        prompts=[p for s in calibration for p in s.prompts],
        device="cpu",
        embedder=embedder,
        seed=seed,
        target_fpr=OPERATING_FPRS[0],
        watch_fpr=OPERATING_FPRS[1],
        population_update_every=0,
        campaign_salt=SALT,
        source="bench.hydra_eval calibration accounts",
        **overrides,
    )


@dataclass
class Replay:
    """What one interleaved replay produced."""

    first_flag: dict[str, int]  # account -> its query count when first seen at flag
    watched: set[str]  # accounts seen at watch or flag at some point
    flagged_via_campaign: set[str]  # accounts whose flag came with a campaign at flag
    campaign_queries_until_detection: dict[str, int | None]  # true campaign id -> its queries seen
    seconds: float
    queries: int
    campaigns: list[dict[str, Any]]  # probewatch's campaigns at the end


def replay(engine, data: Embedded, scenarios: Sequence[str], show: bool = True) -> Replay:
    events = data.traffic.events(list(scenarios))
    first_flag: dict[str, int] = {}
    watched: set[str] = set()
    via: set[str] = set()
    seen_per_campaign: dict[str, int] = {}
    detected_at: dict[str, int | None] = {c: None for s in scenarios for c in _campaign_ids(data, s)}
    member_of = {s.account: s.campaign for name in scenarios for s in data.traffic.test_streams([name]) if s.campaign}
    started = time.perf_counter()
    bar = tqdm(total=len(events), desc="replay", unit="q", mininterval=10.0, disable=not show)
    boilerplate = BoilerplateMemory()  # what Engine.embed_batch would read of each prompt, in replay order
    for start in range(0, len(events), REPLAY_BATCH):
        chunk = events[start : start + REPLAY_BATCH]
        read = boilerplate.read([e[1] for e in chunk], [e[2] for e in chunk])
        vectors = data.vectors[[data.row_of[t] for t in read]]
        verdicts = engine.observe_embeddings(
            [e[1] for e in chunk],
            vectors,
            [e[0] for e in chunk],
            metas=[e[3] for e in chunk],
            prompts=[e[2] for e in chunk],
        )
        bar.update(len(chunk))
        for event, verdict in zip(chunk, verdicts, strict=True):
            account = event[1]
            campaign = member_of.get(account)
            if campaign is not None:
                seen_per_campaign[campaign] = seen_per_campaign.get(campaign, 0) + 1
            if verdict.level != "ok":  # watch or flag
                watched.add(account)
            if verdict.flagged and account not in first_flag:
                first_flag[account] = verdict.n_queries
                if verdict.campaign is not None and verdict.campaign.level == "flag":
                    via.add(account)
                if campaign is not None and detected_at[campaign] is None:
                    detected_at[campaign] = seen_per_campaign[campaign]
    bar.close()
    # members raised by their campaign after their last query are flagged too
    watched.update(engine.accounts("watch"), engine.accounts("flag"))
    for account in engine.accounts("flag"):
        if account not in first_flag:
            first_flag[account] = engine.report(account).n_queries
            via.add(account)
            campaign = member_of.get(account)
            if campaign is not None and detected_at[campaign] is None:
                detected_at[campaign] = seen_per_campaign.get(campaign, 0)
    return Replay(
        first_flag,
        watched,
        via,
        detected_at,
        time.perf_counter() - started,
        len(events),
        [{k: v for k, v in c.to_dict().items() if k != "members"} | {"size": c.size} for c in engine.campaigns()],
    )


def _campaign_ids(data: Embedded, scenario: str) -> list[str]:
    return sorted({s.campaign for s in data.traffic.attacks.get(scenario, []) if s.campaign})


# -- per-account detectors ----------------------------------------------------------------------
def per_account_flags(detector, data: Embedded, streams: list[AccountStream]) -> dict[str, int | None]:
    """account -> queries until its score first reaches the 0.1 % threshold (None: never)."""
    from bench.metrics import queries_until_detection

    threshold = detector.thresholds[PRIMARY_FPR]
    return {s.account: queries_until_detection(detector.score(s, data).scores, threshold) for s in streams}


# -- metrics --------------------------------------------------------------------------------------
def scenario_metrics(
    data: Embedded,
    scenario: str,
    flagged: dict[str, int | None],
    via: set[str] | None,
    detected,
    watched: set[str] | None = None,
):
    streams = data.traffic.attacks[scenario]
    campaigns = _campaign_ids(data, scenario)
    members = [s.account for s in streams]
    hit = [a for a in members if flagged.get(a) is not None]
    out = {
        "campaigns": len(campaigns),
        "members": len(members),
        "member_recall": len(hit) / len(members) if members else None,
        # probewatch only: members seen at watch or flag (an analyst's list, not an action)
        "member_recall_watch": (sum(a in watched for a in members) / len(members) if members else None)
        if watched is not None
        else None,
        "campaigns_detected": None,
        "queries_until_detection": None,
    }
    if detected is not None:
        within = [c for c in campaigns if detected.get(c) is not None and detected[c] <= DETECTION_BUDGET]
        out["campaigns_detected"] = len(within) / len(campaigns) if campaigns else None
        delays = [detected[c] for c in campaigns if detected.get(c) is not None]
        out["queries_until_detection"] = sorted(delays)
    else:  # per-account detectors: a campaign is detected when any member is (no query budget known)
        out["campaigns_detected"] = (
            sum(any(flagged.get(s.account) is not None for s in streams if s.campaign == c) for c in campaigns)
            / len(campaigns)
            if campaigns
            else None
        )
    if via is not None:
        out["flagged_via_campaign"] = sum(a in via for a in hit)
    return out


def benign_metrics(
    data: Embedded, flagged: dict[str, int | None], via: set[str] | None, watched: set[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total = flagged_total = via_total = watched_total = 0
    for name, streams in data.traffic.test_benign.items():
        accounts = [s.account for s in streams]
        hit = [a for a in accounts if flagged.get(a) is not None]
        row = {"accounts": len(accounts), "flagged": len(hit), "fpr": len(hit) / len(accounts) if accounts else None}
        if watched is not None:
            row["watch_or_flag"] = sum(a in watched for a in accounts)
            watched_total += row["watch_or_flag"]
        if via is not None:
            through = [a for a in hit if a in via]
            row["flagged_via_campaign"] = len(through)
            groups = {s.campaign or s.account for s in streams if s.account in set(through)}
            row["groups_with_a_campaign_flag"] = len(groups)
            via_total += len(through)
        out[name] = row
        total += len(accounts)
        flagged_total += len(hit)
    out["all"] = {"accounts": total, "flagged": flagged_total, "fpr": flagged_total / total if total else None}
    if watched is not None:
        out["all"]["watch_or_flag"] = watched_total
    if via is not None:
        out["all"]["flagged_via_campaign"] = via_total
        out["all"]["fpr_via_campaign"] = via_total / total if total else None
    return out


def precision(data: Embedded, scenarios: Sequence[str], flagged: dict[str, int | None], via: set[str]) -> float | None:
    """Of the accounts flagged through a campaign in this run, the share that are attack members."""
    attack = {s.account for name in scenarios for s in data.traffic.attacks[name]}
    through = [a for a, q in flagged.items() if q is not None and a in via]
    return sum(a in attack for a in through) / len(through) if through else None


# -- report ---------------------------------------------------------------------------------------
def _fmt(x, pct=True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f} %" if pct else f"{x}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Hydra campaigns: detection report",
        "",
        f"Traffic `{meta['size']}` (seed {meta['seed']}), {meta['accounts']} accounts, {meta['queries']} queries, "
        f"{meta['distinct_texts']} distinct texts; operating point {fpr_label(PRIMARY_FPR)} benign account FPR "
        f"(probewatch's flag level for accounts and groups, fitted on calibration accounts only). Reproduce: "
        f"`{meta['command']}`.",
        "",
        "A campaign counts as detected when one of its members is flagged within its first "
        f"{DETECTION_BUDGET} queries (probewatch) or at all (per-account detectors, scored account by account).",
        "",
        "## Attack scenarios",
        "",
        "| scenario | detector | campaigns detected | member recall | via campaign | members at watch or flag "
        "| median campaign queries to detection |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, by_detector in results["scenarios"].items():
        for name, m in by_detector.items():
            delays = m.get("queries_until_detection")
            median = f"{int(np.median(delays))}" if delays else "n/a"
            lines.append(
                f"| {scenario} | {name} | {_fmt(m['campaigns_detected'])} | {_fmt(m['member_recall'])} | "
                f"{m.get('flagged_via_campaign', '')} | "
                f"{_fmt(m['member_recall_watch']) if m.get('member_recall_watch') is not None else ''} | "
                f"{median if name == PROBEWATCH else ''} |"
            )
    lines += ["", "## Member precision (probewatch, accounts flagged through a campaign)", ""]
    for run, value in results["precision"].items():
        lines.append(f"- run `{run}`: {_fmt(value)}")
    lines += [
        "",
        "## Benign scenarios",
        "",
        "| scenario | detector | accounts | flagged | FPR | flagged via a campaign | crowds with a campaign flag "
        "| at watch or flag |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_detector in results["benign"].items():
        for detector, rows in by_detector.items():
            for scenario, row in rows.items():
                lines.append(
                    f"| {scenario} | {detector} ({name}) | {row['accounts']} | {row['flagged']} | {_fmt(row['fpr'])} | "
                    f"{row.get('flagged_via_campaign', '')} | {row.get('groups_with_a_campaign_flag', '')} | "
                    f"{row.get('watch_or_flag', '')} |"
                )
    lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in meta["timings"].items()), ""]
    return "\n".join(lines)


def plot_detection(results: dict[str, Any], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for scenario, by_detector in results["scenarios"].items():
        m = by_detector.get(PROBEWATCH)
        if not m or not m["campaigns"]:
            continue
        delays = sorted(m["queries_until_detection"] or [])
        xs = np.arange(0, DETECTION_BUDGET + 1, 25)
        ys = [sum(d <= x for d in delays) / m["campaigns"] for x in xs]
        ax.plot(xs, ys, label=scenario)
    ax.set_xlabel("campaign queries observed")
    ax.set_ylabel("share of campaigns detected")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"hydra campaigns detected at {fpr_label(PRIMARY_FPR)} benign account FPR")
    path = out / "hydra_detection.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -----------------------------------------------------------------------------------------
def run(
    size: str, seed: int, detectors: Sequence[str], embedder, cache, show=True, **engine_overrides
) -> dict[str, Any]:
    from bench.eval import make_detectors

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    traffic = build_hydra(size, seed, embed=cache.embed)
    add_split_campaigns(traffic, build_traffic(size, seed, embed=cache.embed))
    timings["build_traffic"] = time.perf_counter() - mark
    mark = time.perf_counter()
    data = embed(traffic, cache)
    timings["embed"] = time.perf_counter() - mark

    results: dict[str, Any] = {"scenarios": {}, "benign": {}, "precision": {}, "campaigns_found": {}}
    benign_names = list(traffic.test_benign)
    for run_name, attack_names in RUNS.items():
        mark = time.perf_counter()
        engine = fit_probewatch(data, embedder, seed, **engine_overrides)
        outcome = replay(engine, data, [*benign_names, *attack_names], show)
        timings[f"probewatch_{run_name}"] = time.perf_counter() - mark
        flagged = dict(outcome.first_flag)
        for scenario in attack_names:
            results["scenarios"].setdefault(scenario, {})[PROBEWATCH] = scenario_metrics(
                data,
                scenario,
                flagged,
                outcome.flagged_via_campaign,
                outcome.campaign_queries_until_detection,
                outcome.watched,
            )
        results["benign"].setdefault(run_name, {})[PROBEWATCH] = benign_metrics(
            data, flagged, outcome.flagged_via_campaign, outcome.watched
        )
        results["precision"][run_name] = precision(data, attack_names, flagged, outcome.flagged_via_campaign)
        results["campaigns_found"][run_name] = outcome.campaigns
        timings[f"replay_{run_name}_ms_per_query"] = 1000 * outcome.seconds / max(outcome.queries, 1)

    # per-account detectors score each account alone: one pass covers both runs
    streams = traffic.test_streams()
    for name in detectors:
        mark = time.perf_counter()
        if name == PER_ACCOUNT:
            detector = _PerAccountProbewatch(embedder, seed)
        else:
            (detector,) = make_detectors([name], embedder, seed)
            if not isinstance(detector, BaselineUnderTest):
                continue
        detector.fit(traffic.calibration, data, lambda: None)
        flagged = per_account_flags(detector, data, streams)
        timings[name] = time.perf_counter() - mark
        for scenario in traffic.attacks:
            results["scenarios"].setdefault(scenario, {})[name] = scenario_metrics(data, scenario, flagged, None, None)
        results["benign"].setdefault("content", {})[name] = benign_metrics(data, flagged, None)
    results["meta"] = {
        "size": size,
        "seed": seed,
        "accounts": len(traffic.test_streams()),
        "queries": sum(len(s) for s in traffic.test_streams()),
        "distinct_texts": len(data.row_of),
        "traffic": traffic.describe(),
        "timings": timings,
    }
    return results


class _PerAccountProbewatch:
    """probewatch with its campaign layer off, scored account by account like the baselines."""

    def __init__(self, embedder, seed: int):
        from bench.eval import ProbewatchUnderTest

        self.inner = ProbewatchUnderTest(embedder, seed)
        self.name = PER_ACCOUNT

    @property
    def thresholds(self):
        return self.inner.thresholds

    def fit(self, calibration, data, on_account) -> None:
        self.inner.fit(calibration, data, on_account)
        self.inner.engine.config = self.inner.engine.config.replace(campaigns=False)
        self.inner.engine.pipeline.campaigns = None

    def score(self, stream, data):
        return self.inner.score(stream, data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hydra_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("quick", "default"), default="quick")
    parser.add_argument("--seed", type=int, default=0)
    add_embed_backend_flag(parser)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--campaign-fpr-share",
        type=above(0),
        default=None,
        help="engine campaign_fpr_share (default: the engine's); the group flag rate is target_fpr times this",
    )
    parser.add_argument(
        "--detectors",
        default=None,
        help="comma-separated per-account detectors to compare (default: probewatch per-account and every baseline)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import probewatch as pw
    from bench.baselines import all_baselines
    from bench.embedcache import EmbeddingCache

    known = [PER_ACCOUNT] + [b.name for b in all_baselines(args.seed)]
    detectors = known if args.detectors is None else [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = [d for d in detectors if d not in known]
    if unknown:
        parser.error(f"unknown detector(s) {unknown}; choose from {known}")
    out = args.out or Path("bench") / "out" / f"hydra-{args.size}"
    started = time.perf_counter()
    embedder = pw.Embedder(device="cpu", backend=args.embed_backend)
    cache = EmbeddingCache(embedder)
    overrides = {} if args.campaign_fpr_share is None else {"campaign_fpr_share": args.campaign_fpr_share}
    results = run(args.size, args.seed, detectors, embedder, cache, **overrides)
    command = f"python -m bench.hydra_eval --size {args.size} --seed {args.seed} --out {out}"
    command += "".join(f" {word}" for word in embed_backend_words(args.embed_backend))
    if overrides:
        command += f" --campaign-fpr-share {args.campaign_fpr_share}"
    if args.detectors is not None:
        command += f" --detectors {','.join(detectors)}"
    results["meta"]["command"] = command
    results["meta"]["timings"]["total"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "hydra_results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    (out / "hydra_report.md").write_text(markdown(results), encoding="utf-8")
    plot_detection(results, out)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
